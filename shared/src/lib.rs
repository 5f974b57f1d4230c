//! imgfleet-shared: what every imgfleet process agrees on — domain types, the filter language,
//! queue names and messages, the four ports and their adapters, telemetry and metrics.

pub mod adapters;
pub mod config;
pub mod domain;
pub mod filter;
pub mod http;
pub mod job_status;
pub mod messages;
pub mod metrics;
pub mod model_dir;
pub mod names;
pub mod pixel_codec;
pub mod ports;
pub mod telemetry;
pub mod workers;

pub use domain::*;
