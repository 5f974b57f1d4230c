//! imgfleet-objects: object storage on the `object_store` crate, for the ports of
//! `imgfleet_core::ports::objects`: [`S3Sources`] (the buckets jobs ingest from, any
//! S3-compatible server) and [`ObjectBlobStore`] (uploaded originals in a bucket, for a fleet).
//! [`S3Args`] are the flags every binary that reads buckets takes.

pub mod blobs;
pub mod config;
pub mod s3;
pub mod sources;

pub use blobs::ObjectBlobStore;
pub use config::{Credentials, S3Args, S3Config, S3ConfigError};
pub use sources::S3Sources;
