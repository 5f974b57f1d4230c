//! Shared by imgfleet's integration tests: the ports' contract suites, fixtures for the
//! embedded adapters, and harnesses that run servers on free ports.

pub mod checks;
pub mod contract;
pub mod embedded;
pub mod fleet;
pub mod harness;
pub mod nats_server;
pub mod process;
pub mod prometheus_server;
pub mod qdrant_server;
pub mod redis_server;
pub mod s3_server;
