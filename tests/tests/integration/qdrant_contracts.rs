//! The Qdrant server adapter against the vector store contract.
//!
//! The contract needs a real server: set `QDRANT_URL` to its gRPC endpoint (e.g.
//! `http://127.0.0.1:6334`; `QDRANT_API_KEY` if it wants one). Without it every contract case
//! prints a notice and passes. Each case keeps its collections under a prefix of its own, so
//! cases run in parallel on one server and leave nothing behind.
//!
//! The connection-failure cases below need no server and always run.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imgfleet_shared::adapters::QdrantVectorStore;
use imgfleet_shared::ports::{VectorError, VectorStore};
use imgfleet_tests::contract::vectors::VectorFixture;

const SKIPPED: &str = "skipped: QDRANT_URL not set (the Qdrant adapter's contract runs against a real server)";
const TIMEOUT: Duration = Duration::from_secs(10);

pub fn skip() {
    println!("{SKIPPED}");
}

/// A prefix of collections on the server given by `QDRANT_URL`.
pub struct QdrantFixture {
    url: String,
    api_key: Option<String>,
    prefix: String,
}

impl QdrantFixture {
    /// `None` when `QDRANT_URL` is unset or empty.
    pub fn from_env() -> Option<Self> {
        let url = std::env::var("QDRANT_URL").ok().filter(|u| !u.trim().is_empty())?;
        let api_key = std::env::var("QDRANT_API_KEY").ok().filter(|k| !k.is_empty());
        let prefix = format!("imgfleet-test-{}_", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Some(Self { url, api_key, prefix })
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

mod qdrant_vector_store {
    use super::QdrantFixture;

    imgfleet_tests::vector_store_contract!(match QdrantFixture::from_env() {
        Some(fixture) => fixture,
        None => return super::skip(),
    });
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
