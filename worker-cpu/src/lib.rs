//! imgfleet-worker-cpu: the CPU stage of the pipeline — streaming scan, SHA-256, dedup claims,
//! decode with limits, EXIF orientation and metadata, resize to model inputs.
//!
//! Not built yet: this crate holds its place in the workspace; the CPU-stage issue fills it.
