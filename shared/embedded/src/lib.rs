//! imgfleet-embedded: the adapters of one process — the in-process queue, the redb state file
//! and the qdrant-edge vector store — behind the ports of `imgfleet-core`.

pub mod edge_vectors;
pub mod file_state;
pub mod memory_queue;

pub use edge_vectors::{EdgeStoreOptions, EdgeVectorStore, ShardStats};
pub use file_state::FileStateStore;
pub use memory_queue::{MemoryQueue, MemoryQueueConfig};
