//! One collection of the store: its qdrant-edge shard and the vector size and distance it was
//! created with, opened at start (waiting a little for a lock this process is giving back) or,
//! when it cannot be read, set aside under `<data dir>/damaged/` so the others still open.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use qdrant_edge::{CountRequest, EdgeShard};

use imgfleet_core::domain::{CollectionInfo, Distance, VECTOR_NAME};
use imgfleet_core::ports::vectors::VectorError;

use super::conversions::our_distance;
use super::internal;

/// One collection: its shard, opened, and what the store checks writes against.
pub(super) struct Collection {
    pub(super) name: String,
    pub(super) shard: EdgeShard,
    pub(super) vector_size: usize,
    pub(super) distance: Distance,
    /// Written since the last optimisation.
    pub(super) dirty: AtomicBool,
}

impl Collection {
    pub(super) fn open(path: &Path, name: &str) -> Result<Self, VectorError> {
        let shard = EdgeShard::load(path, None)
            .map_err(|e| VectorError::Unavailable(format!("cannot open collection {name:?} at {}: {e}", path.display())))?;
        let (vector_size, distance) = {
            let config = shard.config();
            let params = config.vectors.get(VECTOR_NAME).ok_or_else(|| {
                VectorError::Internal(format!("collection {name:?} has no {VECTOR_NAME:?} vector"))
            })?;
            (params.size, our_distance(params.distance))
        };
        Ok(Self { name: name.to_owned(), shard, vector_size, distance, dirty: AtomicBool::new(false) })
    }

    pub(super) fn info(&self) -> Result<CollectionInfo, VectorError> {
        let points = self.shard.count(CountRequest { filter: None, exact: true }).map_err(internal)?;
        Ok(CollectionInfo {
            name: self.name.clone(),
            vector_size: self.vector_size,
            distance: self.distance,
            points: points as u64,
        })
    }

    pub(super) fn check_vector(&self, vector: &[f32]) -> Result<(), VectorError> {
        if vector.len() != self.vector_size {
            return Err(VectorError::Invalid(format!(
                "vector has {} dimensions; collection {:?} holds {}-dimensional vectors",
                vector.len(),
                self.name,
                self.vector_size
            )));
        }
        if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
            return Err(VectorError::Invalid(format!("vector element {i} is not a finite number")));
        }
        Ok(())
    }
}

/// Opens a collection found at start. One that cannot be read (damaged files, a panic in the
/// engine) is logged and moved to `<data dir>/damaged/<name>-<time>`, so the server starts and
/// the other collections work; `None` then. Another process holding it is still an error.
pub(super) fn open_or_set_aside(data_dir: &Path, path: &Path, name: &str) -> Result<Option<Collection>, VectorError> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_when_free(path, name)));
    let error = match opened {
        Ok(Ok(collection)) => return Ok(Some(collection)),
        Ok(Err(VectorError::Unavailable(message))) if message.contains("WouldBlock") => {
            return Err(VectorError::Unavailable(format!(
                "collection {name:?} is open in another process ({message}); a data directory belongs to one process"
            )));
        }
        Ok(Err(e)) => e.to_string(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the engine panicked".into()),
    };
    let aside = data_dir.join("damaged").join(format!("{name}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")));
    let moved = std::fs::create_dir_all(aside.parent().expect("has a parent")).and_then(|()| std::fs::rename(path, &aside));
    match moved {
        Ok(()) => tracing::error!(collection = name, error, moved_to = %aside.display(), "a collection cannot be opened; it was set aside"),
        Err(e) => {
            return Err(VectorError::Unavailable(format!(
                "collection {name:?} cannot be opened ({error}) nor moved aside to {}: {e}",
                aside.display()
            )));
        }
    }
    Ok(None)
}

/// How long opening waits for a shard's lock to be given back.
const OPEN_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens a collection, waiting a little while its write-ahead log is locked: a store of this
/// process that was just dropped can still be finishing a background optimisation, and it
/// gives the lock back when that ends. Another process holding it still fails, after the wait.
fn open_when_free(path: &Path, name: &str) -> Result<Collection, VectorError> {
    let deadline = std::time::Instant::now() + OPEN_LOCK_WAIT;
    loop {
        match Collection::open(path, name) {
            Err(VectorError::Unavailable(message)) if message.contains("WouldBlock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
