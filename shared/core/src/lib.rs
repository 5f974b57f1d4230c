//! imgfleet-core: what every imgfleet process agrees on, with no adapter in it — the domain
//! types, the filter language, queue names and messages, the four ports (queue, state,
//! vectors, encoder) and what is built on them alone (job accounting, the worker registry,
//! metrics).

pub mod domain;
pub mod filter;
pub mod ingest_roots;
pub mod job_status;
pub mod messages;
pub mod metrics;
pub mod names;
pub mod pixel_codec;
pub mod ports;
pub mod secret;
pub mod source;
pub mod stage;
pub mod telemetry;
pub mod units;
pub mod workers;
