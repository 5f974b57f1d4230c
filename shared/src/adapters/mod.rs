//! Adapters of the ports: embedded (in-process queue, redb state file, qdrant-edge) and
//! distributed (NATS JetStream, Redis, Qdrant server).

pub mod edge_vectors;
pub mod file_state;
pub mod memory_queue;
pub mod nats_auth;
pub mod nats_encoder;
pub mod nats_queue;
pub mod nats_workers;
pub mod qdrant_vectors;
pub mod redis_state;

pub use edge_vectors::{EdgeStoreOptions, EdgeVectorStore, ShardStats};
pub use file_state::FileStateStore;
pub use memory_queue::{MemoryQueue, MemoryQueueConfig};
pub use nats_encoder::NatsEncoder;
pub use nats_queue::{GivenUpHook, NatsQueue, NatsQueueConfig};
pub use qdrant_vectors::QdrantVectorStore;
pub use redis_state::{RedisStateOptions, RedisStateStore};
