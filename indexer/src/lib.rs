//! imgfleet-indexer: the last stage of the pipeline — it stores what the encoders produced in the
//! vector store and counts each job's progress ([`index`]). The `imgfleet-indexer` binary runs it
//! on its own for fleets whose vectors live on a Qdrant server; `imgfleet-api` and
//! `imgfleet serve` run it in-process beside the embedded store.

pub mod index;
mod sync;

pub use index::{IndexConfig, IndexStage};
