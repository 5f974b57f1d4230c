//! imgfleet-fleet: the adapters of a fleet — NATS JetStream (queue, worker heartbeats, the
//! encoder's request/reply), Redis (state) and, with the `qdrant` feature, the Qdrant server —
//! the flags that connect a process to them ([`connect::FleetArgs`]) and the life of a fleet
//! process ([`process::FleetProcess`]: connect, spawn, serve, stop).

pub mod connect;
pub mod nats_auth;
pub mod nats_encoder;
pub mod nats_queue;
pub mod nats_workers;
pub mod process;
#[cfg(feature = "qdrant")]
pub mod qdrant_vectors;
pub mod redis_state;

pub use connect::FleetArgs;
pub use nats_encoder::NatsEncoder;
pub use nats_queue::{GivenUpHook, NatsQueue, NatsQueueConfig};
pub use process::FleetProcess;
#[cfg(feature = "qdrant")]
pub use qdrant_vectors::QdrantVectorStore;
pub use redis_state::{RedisStateOptions, RedisStateStore};
