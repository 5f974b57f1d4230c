//! The Qdrant server adapter against the vector store contract.
//!
//! The contract runs against a real server: the one `QDRANT_URL` names (its gRPC endpoint, e.g.
//! `http://127.0.0.1:6334`; `QDRANT_API_KEY` if it wants one), else one started per case from
//! `IMGFLEET_TEST_QDRANT_BIN` (which scripts/test sets when it finds a qdrant binary; without
//! either it skips these cases and counts them as skipped). Each case keeps its collections under
//! a prefix of its own, so cases can share one server and leave nothing behind.
//!
//! The connection-failure cases below need no server and always run.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imgfleet_shared::adapters::QdrantVectorStore;
use imgfleet_shared::ports::{VectorError, VectorStore};
use imgfleet_tests::contract::vectors::VectorFixture;
use imgfleet_tests::qdrant_server::QdrantServer;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A prefix of collections on a real Qdrant server.
pub struct QdrantFixture {
    url: String,
    api_key: Option<String>,
    prefix: String,
    /// The server this fixture started (none when `QDRANT_URL` named one).
    _server: Option<QdrantServer>,
}

impl QdrantFixture {
    /// On the server `QDRANT_URL` names, else on a new one.
    pub fn new() -> Self {
        let prefix = format!("imgfleet-test-{}_", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        if let Some(url) = std::env::var("QDRANT_URL").ok().filter(|u| !u.trim().is_empty()) {
            let api_key = std::env::var("QDRANT_API_KEY").ok().filter(|k| !k.is_empty());
            return Self { url, api_key, prefix, _server: None };
        }
        let server = QdrantServer::start();
        Self { url: server.url(), api_key: Some(server.api_key().to_owned()), prefix, _server: Some(server) }
    }

    async fn connect(&self) -> Result<QdrantVectorStore, VectorError> {
        QdrantVectorStore::connect(&self.url, self.api_key.clone(), TIMEOUT).await?.with_prefix(&self.prefix)
    }
}

#[async_trait]
impl VectorFixture for QdrantFixture {
    async fn open(&self) -> Arc<dyn VectorStore> {
        Arc::new(self.connect().await.unwrap_or_else(|e| panic!("connect to Qdrant at {}: {e}", self.url)))
    }
}

impl Drop for QdrantFixture {
    /// Deletes this fixture's collections, on a runtime of its own (drop cannot await).
    fn drop(&mut self) {
        let (url, api_key, prefix) = (self.url.clone(), self.api_key.clone(), self.prefix.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                let Ok(store) = QdrantVectorStore::connect(&url, api_key, TIMEOUT).await else { return };
                let Ok(store) = store.with_prefix(&prefix) else { return };
                for collection in store.list_collections().await.unwrap_or_default() {
                    let _ = store.delete_collection(&collection.name).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Named `qdrant_server…` like every test that needs a server (scripts/test skips by that name).
mod qdrant_server_contract {
    use super::QdrantFixture;

    imgfleet_tests::vector_store_contract!(QdrantFixture::new());
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let err = QdrantVectorStore::connect("http://127.0.0.1:1", None, Duration::from_secs(3)).await.unwrap_err();
    assert!(matches!(err, VectorError::Unavailable(ref m) if m.contains("127.0.0.1:1")), "{err:?}");
}

#[tokio::test]
async fn malformed_urls_are_invalid() {
    for url in ["not a url", "ftp://127.0.0.1:6334"] {
        let err = QdrantVectorStore::connect(url, None, Duration::from_secs(3)).await.unwrap_err();
        assert!(matches!(err, VectorError::Invalid(ref m) if m.contains("Qdrant URL")), "{url}: {err:?}");
    }
}
