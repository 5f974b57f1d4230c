//! [`ObjectBlobStore`]: uploaded originals in a bucket prefix (`--blob-store s3://bucket/prefix`),
//! for a fleet, where every worker must read what the API stored.

use std::path::Path as FsPath;
use std::sync::Arc;

use async_trait::async_trait;
use imgfleet_core::ports::{BlobStore, ObjectError};
use imgfleet_core::source::ObjectPrefix;
use object_store::aws::AmazonS3;
use object_store::buffered::BufWriter;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt as _;

use crate::config::S3Config;
use crate::s3::{delete_prefix, key_path, map_error, read_bounded};

/// Bytes sent per request: a file up to this size is one PUT, a bigger one a multipart upload
/// of parts this size (S3's smallest part is 5 MiB).
pub const UPLOAD_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once: memory per upload is this × the part size.
const UPLOAD_PARTS_IN_FLIGHT: usize = 2;

/// [`BlobStore`] on a prefix of an S3 bucket.
#[derive(Debug)]
pub struct ObjectBlobStore {
    store: Arc<AmazonS3>,
    location: ObjectPrefix,
    describe: String,
}

impl ObjectBlobStore {
    /// The blob store under `location` (`s3://bucket/prefix`); keys are `prefix/key`.
    pub fn new(config: &S3Config, location: ObjectPrefix) -> Result<Self, ObjectError> {
        let store = config.client(&location.bucket).map_err(|e| map_error(e, &location.to_string()))?;
        let describe = format!("{location} on {}", config.describe());
        Ok(Self { store: Arc::new(store), location, describe })
    }

    /// The object key of blob `key`.
    fn object_key(&self, key: &str) -> String {
        let prefix = self.location.prefix.trim_end_matches('/');
        if prefix.is_empty() { key.to_owned() } else { format!("{prefix}/{key}") }
    }

    fn what(&self, key: &str) -> String {
        self.location.object_path(&self.object_key(key))
    }
}

/// An I/O error of the upload: `object_store`'s own inside it, else the local file's.
fn upload_error(error: std::io::Error, what: &str) -> ObjectError {
    match error.into_inner().map(|inner| inner.downcast::<object_store::Error>()) {
        Some(Ok(store_error)) => map_error(*store_error, what),
        Some(Err(other)) => ObjectError::Internal(format!("uploading {what}: {other}")),
        None => ObjectError::Internal(format!("uploading {what}: i/o error")),
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put_file(&self, key: &str, file: &FsPath) -> Result<(), ObjectError> {
        let what = self.what(key);
        let path = key_path(&self.object_key(key), &what)?;
        let mut source = tokio::fs::File::open(file).await.map_err(|e| ObjectError::Internal(format!("opening {}: {e}", file.display())))?;
        // Streamed in parts: never more than UPLOAD_PARTS_IN_FLIGHT parts of the file in memory.
        let store: Arc<dyn ObjectStore> = self.store.clone();
        let mut writer = BufWriter::with_capacity(store, path, UPLOAD_PART_BYTES).with_max_concurrency(UPLOAD_PARTS_IN_FLIGHT);
        let copied = match tokio::io::copy(&mut source, &mut writer).await {
            Ok(_) => writer.shutdown().await,
            Err(e) => Err(e),
        };
        if let Err(e) = copied {
            // An unfinished multipart upload would keep its parts (and their cost) on the server.
            let _ = writer.abort().await;
            return Err(upload_error(e, &what));
        }
        tokio::fs::remove_file(file).await.map_err(|e| ObjectError::Internal(format!("removing {} after its upload: {e}", file.display())))
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, ObjectError> {
        let what = self.what(key);
        let (bytes, _) = read_bounded(&self.store, &key_path(&self.object_key(key), &what)?, max_bytes, &what).await?;
        Ok(bytes)
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        let what = self.what(key);
        match self.store.head(&key_path(&self.object_key(key), &what)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => match map_error(e, &what) {
                ObjectError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let what = self.what(key);
        match self.store.delete(&key_path(&self.object_key(key), &what)?).await {
            Ok(()) => Ok(()),
            Err(e) => match map_error(e, &what) {
                ObjectError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError> {
        let full = self.object_key(prefix);
        delete_prefix(self.store.clone(), full.clone(), self.location.object_path(&full)).await
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
