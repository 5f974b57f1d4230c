//! The four ports of DESIGN.md. The pipeline talks only to these traits; each has an embedded
//! adapter (in this crate) and a distributed one.

pub mod encoder;
pub mod queue;
pub mod state;
pub mod vectors;

pub use encoder::{Encoder, EncoderError};
pub use queue::{
    DeadLetter, Delivery, GivenUpHook, PublishAck, QueueDepth, QueueError, Settle, Settler, WorkQueue, publish_attempt, retry_backoff,
};
pub use state::{Claim, DedupEntry, StateError, StateStore};
pub use vectors::{VectorError, VectorStore};
