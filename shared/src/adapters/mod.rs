//! Adapters of the ports. Embedded ones live here; distributed ones join them later.

pub mod edge_vectors;
pub mod file_state;
pub mod memory_queue;

pub use edge_vectors::{EdgeStoreOptions, EdgeVectorStore, ShardStats};
pub use file_state::FileStateStore;
pub use memory_queue::{MemoryQueue, MemoryQueueConfig};
