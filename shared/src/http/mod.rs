//! What every imgfleet HTTP server shares: one error type with one JSON shape and the
//! extractors that reject with it.

pub mod error;
pub mod extract;
pub mod image_input;
pub mod ops;

pub use error::{AppError, AppResult, ErrorBody, ErrorDetail};
pub use extract::{ApiJson, ApiQuery, optional_json};
