//! imgfleet-imaging: everything imgfleet does to an image's bytes, synchronous and free of
//! queues — [`sniff`] the format, [`hash`] while reading, [`decode`] within limits, read
//! [`metadata`] (EXIF), [`resize`] to the models' inputs ([`geometry`] says to what size),
//! [`prepare`] one file end to end, render [`thumbnail`]s, and decode search [`upload`]s.

#[cfg(feature = "files")]
pub mod decode;
pub mod failure;
pub mod geometry;
#[cfg(feature = "files")]
pub mod hash;
#[cfg(feature = "files")]
pub mod metadata;
#[cfg(feature = "files")]
pub mod prepare;
#[cfg(feature = "files")]
pub mod resize;
pub mod sniff;
#[cfg(feature = "files")]
pub mod thumbnail;
pub mod upload;

pub use failure::{FailureKind, FileFailure};
#[cfg(feature = "files")]
pub use prepare::{PrepareOptions, PreparedPixels};
