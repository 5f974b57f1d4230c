//! imgfleet-http: what every imgfleet HTTP server shares: one error type with one JSON shape and the
//! extractors that reject with it, API keys with scopes, and serving within bounds.

pub mod auth;
pub mod error;
pub mod extract;
pub mod ops;
pub mod server;

pub use auth::{ApiKeys, Scope};
pub use error::{AppError, AppResult, ErrorBody, ErrorDetail, json_errors};
pub use extract::{ApiJson, ApiPath, ApiQuery, optional_json};
pub use server::ServerLimits;
