//! imgfleet-worker-cpu: the CPU stage of the pipeline — streaming scan, SHA-256, dedup claims,
//! decode with limits, EXIF orientation and metadata, resize to model inputs.
//!
//! One file per step: [`scan`] (walk + `Scanner`), [`hash`], [`sniff`], [`decode`],
//! [`metadata`], [`resize`], [`prepare`] (the steps for one file, without the queue) and
//! [`stage`] (`CpuStage`: the queue consumer that dedups and publishes).

pub mod bench;
pub mod config;
pub mod corpus;
pub mod decode;
pub mod failure;
pub mod hash;
pub mod metadata;
pub mod prepare;
pub mod resize;
pub mod scan;
pub mod sniff;
pub mod stage;
pub mod thumbnail;

pub use config::{CpuStageConfig, PreparedLimit};
pub use failure::{FailureKind, FileFailure};
pub use prepare::{PrepareOptions, PreparedPixels};
pub use scan::{Scanner, SymlinkPolicy, Walk, WalkItem};
pub use stage::CpuStage;
