//! imgfleet-worker-cpu: the CPU stages of the pipeline, each an `imgfleet_core::stage::Stage`:
//! [`scan`] (`ScanStage`) walks a folder ([`walk`]) or lists a bucket prefix ([`list`]) and queues a task per file; [`prepare`]
//! (`PrepareStage`) hashes each file, claims its content against duplicates and prepares the
//! models' pixels. The image work itself is `imgfleet-imaging`; [`config`] holds the flags.

pub mod bench;
pub mod config;
pub mod corpus;
pub mod list;
pub mod prepare;
pub mod scan;
pub mod walk;

pub use config::{CpuStageConfig, PreparedLimit};
pub use prepare::PrepareStage;
pub use scan::ScanStage;
pub use walk::{SymlinkPolicy, Walk, WalkItem};
