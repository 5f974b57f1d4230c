//! The object ports on a real S3 server (s3s-fs, see `imgfleet_tests::s3_server`): the
//! `BlobStore` contract on a bucket prefix, and `S3Sources` listing and reading buckets.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use imgfleet_core::ports::{BlobStore, ObjectError, ObjectInfo, ObjectSource};
use imgfleet_core::source::{ObjectPrefix, object_marker};
use imgfleet_objects::{ObjectBlobStore, S3Config, S3Sources};
use imgfleet_tests::contract::blobs::BlobFixture;
use imgfleet_tests::s3_server::S3Server;
use tempfile::TempDir;

struct BucketBlobs {
    server: S3Server,
    scratch: TempDir,
}

impl BucketBlobs {
    fn new() -> Self {
        let server = S3Server::start();
        server.create_bucket("blobs");
        Self { server, scratch: tempfile::tempdir().unwrap() }
    }
}

#[async_trait]
impl BlobFixture for BucketBlobs {
    async fn open(&self) -> Arc<dyn BlobStore> {
        Arc::new(ObjectBlobStore::new(&self.server.config(), prefix("blobs", "uploads/")).unwrap())
    }

    fn scratch(&self) -> &Path {
        self.scratch.path()
    }
}

mod bucket_blob_store_contract {
    use super::BucketBlobs;

    imgfleet_tests::blob_store_contract!(BucketBlobs::new());
}

fn prefix(bucket: &str, prefix: &str) -> ObjectPrefix {
    ObjectPrefix { bucket: bucket.into(), prefix: prefix.into() }
}

async fn listed(source: &S3Sources, bucket: &str, key_prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
    let prefix = prefix(bucket, key_prefix);
    source.list(&prefix).try_collect().await
}

#[tokio::test]
async fn bucket_blobs_lie_under_the_store_prefix() {
    let fixture = BucketBlobs::new();
    let store = fixture.open().await;
    let file = fixture.scratch().join("f");
    std::fs::write(&file, b"abc").unwrap();
    store.put_file("coll/0123", &file).await.unwrap();
    assert_eq!(std::fs::read(fixture.server.object_file("blobs", "uploads/coll/0123")).unwrap(), b"abc");
    assert!(store.describe().contains("s3://blobs/uploads/"), "{}", store.describe());
}

/// Listings go page by page (pages of 7 here, 30 objects), keep to the raw prefix (`a/` is not
/// `ab/`) and give each object's size; the marker names size and ETag.
#[tokio::test]
async fn s3_sources_list_every_page_within_the_prefix() {
    let server = S3Server::start();
    let mut expected = BTreeMap::new();
    for i in 0..30 {
        let key = format!("a/{:02}/img-{i}.jpg", i % 4);
        let bytes = vec![b'x'; i + 1];
        server.put_object("photos", &key, &bytes);
        expected.insert(key, (i + 1) as u64);
    }
    server.put_object("photos", "ab/outside.jpg", b"no");
    server.put_object("photos", "b/other.jpg", b"no");
    let source = server.sources().with_page_size(7);
    let objects = listed(&source, "photos", "a/").await.unwrap();
    let got: BTreeMap<String, u64> = objects.iter().map(|o| (o.key.clone(), o.size)).collect();
    assert_eq!(got, expected, "every object under a/ once, with its size");
    assert_eq!(objects.len(), 30, "no object listed twice across pages");
    assert_eq!(listed(&source, "photos", "").await.unwrap().len(), 32, "an empty prefix lists the whole bucket");
    assert_eq!(listed(&source, "photos", "a").await.unwrap().len(), 31, "a raw prefix, as S3 lists it");
    assert!(listed(&source, "photos", "zzz/").await.unwrap().is_empty());
    let marker = object_marker(objects[0].size, objects[0].etag.as_deref());
    assert!(marker.starts_with(&format!("o:{}:", objects[0].size)), "{marker}");
}

#[tokio::test]
async fn s3_sources_read_within_limits_and_say_what_went_wrong() {
    let server = S3Server::start();
    server.put_object("photos", "x/cat.jpg", b"0123456789");
    let source = server.sources();
    let object = source.read("photos", "x/cat.jpg", 10).await.unwrap();
    assert_eq!(object.bytes, b"0123456789");
    assert!(object.etag.is_some() && object.last_modified.is_some(), "{object:?}");
    match source.read("photos", "x/cat.jpg", 9).await {
        Err(ObjectError::TooLarge { what, bytes, limit }) => {
            assert_eq!((what.as_str(), bytes, limit), ("s3://photos/x/cat.jpg", 10, 9));
        }
        other => panic!("an object over the limit: {other:?}"),
    }
    assert!(matches!(source.read("photos", "x/none.jpg", 10).await, Err(ObjectError::NotFound(w)) if w == "s3://photos/x/none.jpg"));
    assert!(matches!(source.read("no-such-bucket", "x/cat.jpg", 10).await, Err(ObjectError::NotFound(_))));
    assert!(matches!(listed(&source, "no-such-bucket", "").await, Err(ObjectError::NotFound(_))));
}

#[tokio::test]
async fn wrong_credentials_are_denied_and_a_dead_server_is_unavailable() {
    let mut server = S3Server::start();
    server.put_object("photos", "x/cat.jpg", b"0123456789");
    let wrong = S3Sources::new(server.config_with_secret("not-the-secret"));
    match wrong.read("photos", "x/cat.jpg", 100).await {
        Err(ObjectError::Denied(detail)) => assert!(!detail.contains(server.secret_key()), "{detail}"),
        other => panic!("a wrong secret: {other:?}"),
    }
    assert!(matches!(listed(&wrong, "photos", "").await, Err(ObjectError::Denied(_))));
    let config: S3Config = server.config();
    server.kill();
    let source = S3Sources::new(config);
    let started = std::time::Instant::now();
    assert!(matches!(source.read("photos", "x/cat.jpg", 100).await, Err(ObjectError::Unavailable(_))));
    assert!(matches!(listed(&source, "photos", "").await, Err(ObjectError::Unavailable(_))));
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "a refused connection is retried briefly: {:?}", started.elapsed());
}
