//! One test binary (one link) for every integration test.

mod api;
mod embedded_contracts;
mod serve;
