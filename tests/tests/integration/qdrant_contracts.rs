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
use imgfleet_core::ports::{VectorError, VectorStore};
use imgfleet_fleet::QdrantVectorStore;
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

/// The indexer and a Qdrant server that goes away: its deliveries are kept alive while it waits,
/// the outage spends none of them (one allowed delivery here), and the image is stored once the
/// server is back.
mod qdrant_server_outage {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use imgfleet_core::stage::Stage as _;
    use imgfleet_indexer::{IndexConfig, IndexStage};
    use imgfleet_embedded::{FileStateStore, MemoryQueue, MemoryQueueConfig};
    use imgfleet_fleet::QdrantVectorStore;
    use imgfleet_core::domain::{CollectionName, CollectionSpec, Distance, ImagePayload, JobRecord, SCHEMA_VERSION};
    use imgfleet_core::messages::{self, EncodedImage};
    use imgfleet_core::names::Stream;
    use imgfleet_core::ports::{Claim, StateStore, VectorStore, WorkQueue};
    use imgfleet_tests::qdrant_server::QdrantServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_indexer_waits_out_a_qdrant_restart_without_spending_deliveries() {
        let mut server = QdrantServer::start();
        let vectors: Arc<dyn VectorStore> =
            Arc::new(QdrantVectorStore::connect(&server.url(), Some(server.api_key().to_owned()), super::TIMEOUT).await.unwrap());
        let name = CollectionName::parse("images").unwrap();
        vectors.create_collection(&CollectionSpec { name, vector_size: 4, distance: Distance::Cosine }).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(dir.path()).unwrap());
        state.create_job(&JobRecord::new("job-1".into(), "images".into(), "/photos".into())).await.unwrap();
        let sha256 = "ab".repeat(32);
        let Claim::Acquired { token } = state.claim("images", &sha256, "task-1", Duration::from_secs(600), Some("job-1")).await.unwrap() else {
            panic!("a fresh content is claimed")
        };
        let queue_config = MemoryQueueConfig { ack_wait: Duration::from_secs(2), max_deliver: 1, ..MemoryQueueConfig::default() };
        let queue: Arc<dyn WorkQueue> = Arc::new(MemoryQueue::new(queue_config));
        let payload = ImagePayload { sha256: sha256.clone(), path: "/photos/a.jpg".into(), paths: vec!["/photos/a.jpg".into()], ..ImagePayload::default() };
        let image = EncodedImage {
            schema_version: SCHEMA_VERSION,
            job_id: "job-1".into(),
            collection: "images".into(),
            payload,
            embedding: vec![0.5, 0.5, 0.5, 0.5],
            claim_token: token.clone(),
            marker: None,
        };
        queue.publish(Stream::Encoded, "enc-1", messages::encode(&image)).await.unwrap();

        server.kill();
        let config = IndexConfig { max_deliver: 1, retry_base: Duration::from_millis(50), ..IndexConfig::default() };
        let indexer = IndexStage::new(queue.clone(), state.clone(), vectors.clone(), config);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { indexer.run(stop).await });
        // Longer than the queue's ack wait: only the progress notes keep the delivery.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(state.job("job-1").await.unwrap().unwrap().counts.settled(), 0, "nothing settles while the store is away");
        server.start_again();

        let deadline = Instant::now() + Duration::from_secs(60);
        while state.job("job-1").await.unwrap().unwrap().counts.processed == 0 {
            assert!(Instant::now() < deadline, "the image was not stored after the server came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop_tx.send(true);
        running.await.unwrap();
        let counts = state.job("job-1").await.unwrap().unwrap().counts;
        assert_eq!((counts.processed, counts.failed), (1, 0), "{counts:?}");
        assert_eq!(vectors.count("images", None).await.unwrap(), 1);
        let again = state.claim("images", &sha256, "task-2", Duration::from_secs(600), Some("job-1")).await.unwrap();
        assert!(matches!(again, Claim::Done { .. }), "the content is marked stored: {again:?}");
        let depth = queue.depth(Stream::Encoded).await.unwrap();
        assert_eq!((depth.pending, depth.in_flight), (0, 0), "{depth:?}");
        let dead = queue.dead_letters(Stream::Encoded, 10).await.unwrap();
        assert!(dead.is_empty(), "the outage spent the only delivery: {dead:?}");
    }
}
