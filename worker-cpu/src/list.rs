//! The listing of a bucket prefix, as the scan's walk: the same items over the same bounded
//! channel ([`WalkItem::Listed`] for each candidate), page by page from the `ObjectSource`, so
//! a bucket of millions of objects never sits in memory and never runs far ahead of the stage.
//!
//! Candidates: keys with an image extension (sniffing an object would cost a request each);
//! keys ending in `/` (folder markers) are left out.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use imgfleet_core::ports::{ObjectInfo, ObjectSource};
use imgfleet_core::source::{ObjectPrefix, object_marker};
use imgfleet_imaging::sniff::has_image_extension;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::walk::{ScanError, WalkItem};

/// The walk item of one listed object, or `None` when it is no candidate.
pub fn listed_item(prefix: &ObjectPrefix, object: &ObjectInfo) -> Option<WalkItem> {
    if object.key.ends_with('/') || !has_image_extension(Path::new(&object.key)) {
        return None;
    }
    Some(WalkItem::Listed { path: prefix.object_path(&object.key), marker: object_marker(object.size, object.etag.as_deref()) })
}

/// Lists `prefix` on a task, sending its candidates (and, at the end, a listing error if one
/// stops it) to `sender`; ends early when the receiver is gone.
pub fn spawn_listing(objects: Arc<dyn ObjectSource>, prefix: ObjectPrefix, sender: mpsc::Sender<Result<WalkItem, ScanError>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut listing = objects.list(&prefix);
        while let Some(object) = listing.next().await {
            let item = match object {
                Ok(object) => match listed_item(&prefix, &object) {
                    Some(item) => Ok(item),
                    None => continue,
                },
                Err(source) => Err(ScanError::Listing { prefix: prefix.to_string(), source }),
            };
            let failed = item.is_err();
            // The receiver is gone when publishing failed: stop listing.
            if sender.send(item).await.is_err() || failed {
                return;
            }
        }
    })
}

/// Refuses the listing at once (the bucket is outside the roots, no object storage): the one
/// item is the error.
pub fn spawn_refusal(error: ScanError, sender: mpsc::Sender<Result<WalkItem, ScanError>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = sender.send(Err(error)).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_image_keys_are_candidates() {
        let prefix = ObjectPrefix { bucket: "bkt".into(), prefix: "in/".into() };
        let object = |key: &str| ObjectInfo { key: key.into(), size: 7, etag: Some("\"e1\"".into()) };
        assert_eq!(
            listed_item(&prefix, &object("in/a/cat.JPG")),
            Some(WalkItem::Listed { path: "s3://bkt/in/a/cat.JPG".into(), marker: "o:7:e1".into() })
        );
        assert_eq!(listed_item(&prefix, &object("in/notes.txt")), None);
        assert_eq!(listed_item(&prefix, &object("in/folder.jpg/")), None);
        assert_eq!(listed_item(&prefix, &object("in/README")), None);
    }
}
