//! Where ingest may read: the `--ingest-root`s, directories and bucket prefixes, both given to
//! the same flag. A directory root covers what lies inside it once symlinks are resolved (the
//! API and the scan canonicalise); a bucket root `s3://bucket/prefix` covers the keys under the
//! folder `prefix/` (`s3://bucket` the whole bucket), never a sibling such as `prefix2/`.

use std::path::PathBuf;

use crate::source::{ObjectPrefix, S3_SCHEME, Source};

/// The ingest roots of one process, split by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestRoots {
    /// As given (not canonicalised here).
    pub directories: Vec<PathBuf>,
    pub buckets: Vec<ObjectPrefix>,
}

impl IngestRoots {
    /// Splits flag values: `s3://...` are bucket roots, everything else a directory.
    pub fn split(values: &[PathBuf]) -> Result<Self, String> {
        let mut roots = Self::default();
        for value in values {
            match value.to_str().filter(|text| text.starts_with(S3_SCHEME)) {
                Some(text) => match Source::parse(text)? {
                    Source::Bucket(prefix) => roots.buckets.push(prefix),
                    Source::Directory(_) => unreachable!("an s3:// value parses as a bucket"),
                },
                None => roots.directories.push(value.clone()),
            }
        }
        Ok(roots)
    }

    /// The prefix to list for `requested` when a bucket root covers it (see
    /// [`bucket_root_covers`]), else `None`.
    pub fn covering_bucket(&self, requested: &ObjectPrefix) -> Option<ObjectPrefix> {
        self.buckets.iter().find_map(|root| bucket_root_covers(root, requested))
    }

    /// The bucket roots, comma-separated, for messages.
    pub fn shown_buckets(&self) -> String {
        self.buckets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// Whether `root` covers `requested`, and the prefix to list then: `requested` itself when it
/// lies under the root's folder; the folder (`prefix/`) when `requested` names the root
/// without its `/` (listing the bare `prefix` would list `prefix2/` too).
pub fn bucket_root_covers(root: &ObjectPrefix, requested: &ObjectPrefix) -> Option<ObjectPrefix> {
    if root.bucket != requested.bucket {
        return None;
    }
    let folder = root.prefix.trim_end_matches('/');
    if folder.is_empty() {
        return Some(requested.clone());
    }
    let folder = format!("{folder}/");
    if requested.prefix.starts_with(&folder) {
        return Some(requested.clone());
    }
    if format!("{}/", requested.prefix) == folder {
        return Some(ObjectPrefix { bucket: requested.bucket.clone(), prefix: folder });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(bucket: &str, prefix: &str) -> ObjectPrefix {
        ObjectPrefix { bucket: bucket.into(), prefix: prefix.into() }
    }

    #[test]
    fn roots_split_by_kind() {
        let roots = IngestRoots::split(&["/photos".into(), "s3://bkt/in".into(), "s3://other".into()]).unwrap();
        assert_eq!(roots.directories, vec![PathBuf::from("/photos")]);
        assert_eq!(roots.buckets, vec![prefix("bkt", "in"), prefix("other", "")]);
        assert_eq!(roots.shown_buckets(), "s3://bkt/in, s3://other/");
        assert!(IngestRoots::split(&["s3://BAD/x".into()]).is_err());
    }

    #[test]
    fn bucket_roots_cover_their_folder_only() {
        let root = prefix("bkt", "photos");
        assert_eq!(bucket_root_covers(&root, &prefix("bkt", "photos/2024")), Some(prefix("bkt", "photos/2024")));
        assert_eq!(bucket_root_covers(&root, &prefix("bkt", "photos/")), Some(prefix("bkt", "photos/")));
        assert_eq!(bucket_root_covers(&root, &prefix("bkt", "photos")), Some(prefix("bkt", "photos/")), "the root itself is listed as a folder");
        assert_eq!(bucket_root_covers(&root, &prefix("bkt", "photos2/x")), None);
        assert_eq!(bucket_root_covers(&root, &prefix("bkt", "")), None);
        assert_eq!(bucket_root_covers(&root, &prefix("bkt", "pho")), None);
        assert_eq!(bucket_root_covers(&root, &prefix("other", "photos/x")), None);
        let whole = prefix("bkt", "");
        assert_eq!(bucket_root_covers(&whole, &prefix("bkt", "any")), Some(prefix("bkt", "any")));
        assert_eq!(bucket_root_covers(&prefix("bkt", "photos/"), &prefix("bkt", "photos")), Some(prefix("bkt", "photos/")));
    }
}
