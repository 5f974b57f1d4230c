//! One test binary (one link) for every integration test.

mod api;
mod blip;
mod cli;
mod clip;
mod cpu_stage;
mod edge_store;
mod embedded_contracts;
mod fleet;
mod ingest;
mod limits;
mod ml_api;
mod monitoring;
mod nats_contracts;
mod object_contracts;
mod object_ingest;
mod originals;
mod precision;
mod qdrant_contracts;
mod redis_contracts;
mod security;
mod serve;
mod settling;
mod sync;
mod uploads;
mod watches;
mod workers;
