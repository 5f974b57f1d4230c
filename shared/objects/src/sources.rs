//! [`S3Sources`]: the buckets jobs ingest from, through one client per bucket.

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use imgfleet_core::ports::{ObjectBytes, ObjectError, ObjectInfo, ObjectSource};
use imgfleet_core::source::ObjectPrefix;

use crate::config::{Clients, S3Config};
use crate::s3::{DEFAULT_PAGE_SIZE, key_path, list_pages, map_error, read_bounded};

/// [`ObjectSource`] on S3 or an S3-compatible server.
#[derive(Debug)]
pub struct S3Sources {
    clients: Clients,
    page_size: usize,
}

impl S3Sources {
    pub fn new(config: S3Config) -> Self {
        Self { clients: Clients::new(config), page_size: DEFAULT_PAGE_SIZE }
    }

    /// Keys per listing request (default 1,000, S3's maximum); tests list with small pages.
    pub fn with_page_size(mut self, keys: usize) -> Self {
        self.page_size = keys.clamp(1, DEFAULT_PAGE_SIZE);
        self
    }

    /// Where the buckets are, for logs (no secret in it).
    pub fn describe(&self) -> String {
        self.clients.config().describe()
    }
}

#[async_trait]
impl ObjectSource for S3Sources {
    fn list<'a>(&'a self, prefix: &'a ObjectPrefix) -> BoxStream<'a, Result<ObjectInfo, ObjectError>> {
        let what = prefix.to_string();
        let store = match self.clients.get(&prefix.bucket) {
            Ok(store) => store,
            Err(e) => return futures::stream::once(async move { Err(map_error(e, &what)) }).boxed(),
        };
        list_pages(store, prefix.prefix.clone(), self.page_size, what)
            .map(|meta| meta.map(|m| ObjectInfo { key: m.location.to_string(), size: m.size, etag: m.e_tag }))
            .boxed()
    }

    async fn read(&self, bucket: &str, key: &str, max_bytes: u64) -> Result<ObjectBytes, ObjectError> {
        let what = format!("{}{bucket}/{key}", imgfleet_core::source::S3_SCHEME);
        let store = self.clients.get(bucket).map_err(|e| map_error(e, &what))?;
        let (bytes, meta) = read_bounded(&store, &key_path(key, &what)?, max_bytes, &what).await?;
        Ok(ObjectBytes { bytes, etag: meta.e_tag, last_modified: Some(meta.last_modified.into()) })
    }
}
