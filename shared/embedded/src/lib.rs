//! imgfleet-embedded: the adapters of one process — the in-process queue, the redb state file,
//! the qdrant-edge vector store and the folder of uploaded blobs — behind the ports of `imgfleet-core`.

pub mod blob_folder;
pub mod edge_vectors;
pub mod file_state;
pub mod memory_queue;

pub use blob_folder::FolderBlobStore;
pub use edge_vectors::{EdgeStoreOptions, EdgeVectorStore, ShardStats};
pub use file_state::FileStateStore;
pub use memory_queue::{MemoryQueue, MemoryQueueConfig};
