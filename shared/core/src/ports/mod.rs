//! The ports of the architecture: the four of the pipeline, and the object ports (uploaded
//! blobs, buckets to ingest). The pipeline talks only to these traits; each has an
//! embedded adapter (`imgfleet-embedded`, or the model thread for the encoder) and a distributed
//! one (`imgfleet-fleet`).

pub mod encoder;
pub mod objects;
pub mod queue;
pub mod state;
pub mod vectors;

pub use encoder::{Encoder, EncoderError};
pub use objects::{BlobStore, ObjectBytes, ObjectError, ObjectInfo, ObjectSource};
pub use queue::{
    DeadLetter, Delivery, GivenUpHook, PublishAck, QueueDepth, QueueError, Settle, Settler, WorkQueue, publish_attempt, retry_backoff,
};
pub use state::{Claim, DedupEntry, StateError, StateStore};
pub use vectors::{VectorError, VectorStore};
