//! Object ports: the blob store that keeps uploaded originals (content-addressed, a folder under
//! the data dir embedded, a bucket in a fleet), and the buckets a job ingests from. Both are
//! implemented on the `object_store` crate by `imgfleet-objects`.

use std::path::Path;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::source::ObjectPrefix;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjectError {
    #[error("{0} not found")]
    NotFound(String),
    /// Bigger than the caller's limit.
    #[error("{what} is {bytes} bytes; the limit is {limit}")]
    TooLarge { what: String, bytes: u64, limit: u64 },
    /// Credentials refused, bucket not allowed.
    #[error("access denied: {0}")]
    Denied(String),
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    #[error("object store error: {0}")]
    Internal(String),
}

/// Content-addressed storage of uploaded originals; keys from [`crate::source::blob_key`].
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the local file `file` under `key` (the file is consumed: moved or copied, then
    /// removed). Durable when it returns; storing a key again replaces it (same content).
    async fn put_file(&self, key: &str, file: &Path) -> Result<(), ObjectError>;

    /// The blob, whole; `TooLarge` beyond `max_bytes`.
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, ObjectError>;

    /// Its size, or `None` when there is no such blob.
    async fn size(&self, key: &str) -> Result<Option<u64>, ObjectError>;

    /// No error when there is none.
    async fn delete(&self, key: &str) -> Result<(), ObjectError>;

    /// Deletes every blob whose key starts with `prefix`; returns how many.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError>;

    /// Where the blobs are, for logs (no secret in it).
    fn describe(&self) -> String;
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// An object read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectBytes {
    pub bytes: Vec<u8>,
    pub etag: Option<String>,
    pub last_modified: Option<std::time::SystemTime>,
}

/// The buckets jobs ingest from (any S3-compatible server).
#[async_trait]
pub trait ObjectSource: Send + Sync + 'static {
    /// Every object under the prefix, as the server pages them (never the whole listing in
    /// memory).
    fn list<'a>(&'a self, prefix: &'a ObjectPrefix) -> BoxStream<'a, Result<ObjectInfo, ObjectError>>;

    /// The object, whole; `TooLarge` beyond `max_bytes`.
    async fn read(&self, bucket: &str, key: &str, max_bytes: u64) -> Result<ObjectBytes, ObjectError>;
}
