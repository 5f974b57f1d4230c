//! One test binary (one link) for every integration test.

mod api;
mod blip;
mod clip;
mod cpu_stage;
mod edge_store;
mod embedded_contracts;
mod ml_api;
mod serve;
