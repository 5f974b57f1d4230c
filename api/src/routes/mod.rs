pub mod collections;
pub mod docs;
pub mod duplicates;
pub mod health;
pub mod images;
pub mod ingest;
pub mod search;
pub mod workers;
