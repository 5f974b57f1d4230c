//! `BlobStore` contract: every blob store (a bucket prefix in a fleet, a folder embedded) keeps,
//! bounds, sizes and deletes blobs the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use imgfleet_core::ports::{BlobStore, ObjectError};

/// Opens the adapter under test, empty.
#[async_trait]
pub trait BlobFixture: Send + Sync {
    async fn open(&self) -> Arc<dyn BlobStore>;
    /// A folder for the files to upload (the store consumes them).
    fn scratch(&self) -> &Path;
}

#[macro_export]
macro_rules! blob_store_contract {
    ($fixture:expr) => {
        $crate::contract_case!(put_get_size_delete, $crate::contract::blobs::put_get_size_delete, $fixture);
        $crate::contract_case!(big_files_stream, $crate::contract::blobs::big_files_stream, $fixture);
        $crate::contract_case!(delete_prefix_counts, $crate::contract::blobs::delete_prefix_counts, $fixture);
    };
}

fn scratch_file(f: &dyn BlobFixture, name: &str, bytes: &[u8]) -> PathBuf {
    let path = f.scratch().join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    path
}

pub async fn put_get_size_delete(f: &dyn BlobFixture) {
    let store = f.open().await;
    assert!(!store.describe().is_empty());
    assert_eq!(store.size("c1/none").await.unwrap(), None);
    assert!(matches!(store.get("c1/none", 100).await, Err(ObjectError::NotFound(_))));
    let file = scratch_file(f, "a", b"hello blob");
    store.put_file("c1/aaa", &file).await.unwrap();
    assert!(!file.exists(), "put_file consumes the file");
    assert_eq!(store.size("c1/aaa").await.unwrap(), Some(10));
    assert_eq!(store.get("c1/aaa", 10).await.unwrap(), b"hello blob");
    match store.get("c1/aaa", 9).await {
        Err(ObjectError::TooLarge { bytes, limit, .. }) => assert_eq!((bytes, limit), (10, 9)),
        other => panic!("a blob over the limit: {other:?}"),
    }
    // Stored again (same key, same content): replaced, no error.
    store.put_file("c1/aaa", &scratch_file(f, "a2", b"hello blob")).await.unwrap();
    assert_eq!(store.size("c1/aaa").await.unwrap(), Some(10));
    store.delete("c1/aaa").await.unwrap();
    assert_eq!(store.size("c1/aaa").await.unwrap(), None);
    store.delete("c1/aaa").await.expect("deleting what is not there is no error");
}

pub async fn big_files_stream(f: &dyn BlobFixture) {
    let store = f.open().await;
    // Over one upload part (8 MiB in the bucket store): a multipart upload there.
    let bytes: Vec<u8> = (0..9 * 1024 * 1024 + 123).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    store.put_file("c1/big", &scratch_file(f, "big", &bytes)).await.unwrap();
    assert_eq!(store.size("c1/big").await.unwrap(), Some(bytes.len() as u64));
    let back = store.get("c1/big", bytes.len() as u64).await.unwrap();
    assert!(back == bytes, "the big blob comes back as it was stored");
}

pub async fn delete_prefix_counts(f: &dyn BlobFixture) {
    let store = f.open().await;
    for (i, key) in ["c1/x", "c1/y", "c10/z", "c2/w"].into_iter().enumerate() {
        store.put_file(key, &scratch_file(f, &format!("f{i}"), key.as_bytes())).await.unwrap();
    }
    assert_eq!(store.delete_prefix("c1/").await.unwrap(), 2);
    assert_eq!(store.size("c1/x").await.unwrap(), None);
    assert_eq!(store.size("c10/z").await.unwrap(), Some(5), "a sibling prefix is kept");
    assert_eq!(store.size("c2/w").await.unwrap(), Some(4));
    assert_eq!(store.delete_prefix("c1/").await.unwrap(), 0);
}
