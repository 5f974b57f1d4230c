//! One test binary (one link) for every integration test.

mod api;
mod edge_store;
mod embedded_contracts;
mod serve;
