//! Fixtures opening the embedded adapters in a temp dir.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imgfleet_core::ports::{StateStore, VectorStore, WorkQueue};
use imgfleet_embedded::{EdgeVectorStore, FileStateStore, MemoryQueue, MemoryQueueConfig};
use tempfile::TempDir;

use crate::contract::queue::QueueFixture;
use crate::contract::state::StateFixture;
use crate::contract::vectors::VectorFixture;

pub struct EdgeFixture {
    pub dir: TempDir,
}

impl EdgeFixture {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }
}

#[async_trait]
impl VectorFixture for EdgeFixture {
    async fn open(&self) -> Arc<dyn VectorStore> {
        EdgeVectorStore::open(self.dir.path()).expect("open edge store")
    }
}

pub struct FileStateFixture {
    pub dir: TempDir,
}

impl FileStateFixture {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }
}

#[async_trait]
impl StateFixture for FileStateFixture {
    async fn open(&self) -> Arc<dyn StateStore> {
        Arc::new(FileStateStore::open(self.dir.path()).expect("open state store"))
    }
}

pub struct MemoryQueueFixture;

const ACK_WAIT: Duration = Duration::from_millis(300);
const MAX_DELIVER: u32 = 3;

#[async_trait]
impl QueueFixture for MemoryQueueFixture {
    async fn open(&self) -> Arc<dyn WorkQueue> {
        Arc::new(MemoryQueue::new(MemoryQueueConfig {
            ack_wait: ACK_WAIT,
            max_deliver: MAX_DELIVER,
            ..MemoryQueueConfig::default()
        }))
    }

    fn ack_wait(&self) -> Duration {
        ACK_WAIT
    }

    fn max_deliver(&self) -> u32 {
        MAX_DELIVER
    }
}
