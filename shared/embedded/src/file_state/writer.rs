//! The writer thread: every write of the store runs on one thread, in a transaction shared with
//! the other writes waiting then (group commit), and the database handle it reopens after an I/O
//! error. Also how the store's calls get there: `write` / `write_lease` hand a closure to the
//! thread and wait for the commit, `read` runs one in a read transaction on the blocking pool.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase};

use imgfleet_core::ports::state::StateError;

use super::{FileStateStore, internal};

/// The open database, replaced when redb asks to be reopened after an I/O error.
pub(super) struct DbSlot {
    pub(super) path: PathBuf,
    pub(super) db: RwLock<Option<Arc<Database>>>,
}

impl DbSlot {
    fn get(&self) -> Result<Arc<Database>, StateError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StateError::Unavailable("the state file is being reopened after a write error".into()))
    }

    /// Closes the database once its readers are done and opens it again (redb refuses every
    /// write after an I/O error until then). Blocking; called by the writer thread only.
    fn reopen(&self) -> Result<(), StateError> {
        let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(old) = old {
            // Readers hold clones for the length of one read transaction.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if std::time::Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(still_shared) => {
                        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(still_shared);
                        return Err(StateError::Unavailable("the state file is still in use; cannot reopen it yet".into()));
                    }
                }
            }
        }
        let db = Database::create(&self.path).map_err(internal)?;
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        tracing::info!(path = %self.path.display(), "state file reopened after a write error");
        Ok(())
    }
}

/// One caller's mutation: `run` executes it inside the shared write transaction and says
/// whether it failed after possibly changing something (the group must then be rolled back);
/// `finish` answers the caller once the transaction has ended (or was never started).
pub(super) struct WriteRequest {
    /// Must be on disk when the caller hears back (everything but dedup claims, which are
    /// leases voided at every start).
    durable: bool,
    run: Box<dyn FnOnce(&redb::WriteTransaction) -> bool + Send>,
    finish: Box<dyn FnOnce(Option<StateError>) + Send>,
}

/// Most callers' writes committed together.
const MAX_WRITES_PER_COMMIT: usize = 512;

/// The writer thread: group commit. Every write waiting when a transaction starts joins it, so
/// under load one fsync covers hundreds of claims and counter updates, and a lone write still
/// commits at once.
pub(super) fn write_loop(slot: Arc<DbSlot>, requests: std::sync::mpsc::Receiver<WriteRequest>) {
    let mut needs_reopen = false;
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_WRITES_PER_COMMIT {
            match requests.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        if needs_reopen {
            match slot.reopen() {
                Ok(()) => needs_reopen = false,
                Err(e) => {
                    tracing::warn!(error = %e, "reopening the state file failed; writes fail until it works");
                    for request in group {
                        (request.finish)(Some(e.clone()));
                    }
                    continue;
                }
            }
        }
        let durable = group.iter().any(|r| r.durable);
        let txn = match slot.get().and_then(|db| db.begin_write().map_err(internal)) {
            Ok(mut txn) => {
                if !durable {
                    // Claims only: skip the fsync. The next durable commit persists them too.
                    let _ = txn.set_durability(redb::Durability::None);
                }
                txn
            }
            Err(e) => {
                tracing::error!(error = %e, writes = group.len(), "cannot start a state transaction");
                needs_reopen |= wants_reopen(&e);
                for request in group {
                    (request.finish)(Some(e.clone()));
                }
                continue;
            }
        };
        let mut finishes = Vec::with_capacity(group.len());
        let mut failed_midway = false;
        for request in group {
            failed_midway |= (request.run)(&txn);
            finishes.push(request.finish);
        }
        let outcome = if failed_midway {
            let _ = txn.abort();
            Some(StateError::Internal("a state write failed midway; its transaction was rolled back, retry".into()))
        } else {
            txn.commit().err().map(internal)
        };
        if let Some(e) = &outcome {
            needs_reopen |= wants_reopen(e);
            if matches!(e, StateError::StorageFull(_)) {
                tracing::error!(error = %e, "the disk under the state file is full; writes fail until space is made");
            }
        }
        for finish in finishes {
            finish(outcome.clone());
        }
    }
}

/// Whether redb needs the file reopened before it writes again.
fn wants_reopen(e: &StateError) -> bool {
    matches!(e, StateError::StorageFull(_) | StateError::Unavailable(_))
}

impl FileStateStore {
    /// Runs `f` in a write transaction on the writer thread, together with the other writes
    /// waiting then (group commit), and returns its result once that transaction is durable.
    /// `f` must check before it changes anything: an `Err` other than `Internal` /
    /// `StorageFull` leaves the shared transaction as it found it; those roll the group back.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, StateError> + Send + 'static,
    {
        self.write_with(true, f).await
    }

    /// [`Self::write`] for dedup claims: not fsync'd by itself (a claim is a lease, and every
    /// embedded start voids the claims of the run before), persisted by the next durable
    /// commit. A crash can only lose such a claim, which the restart would void anyway.
    pub(super) async fn write_lease<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, StateError> + Send + 'static,
    {
        self.write_with(false, f).await
    }

    async fn write_with<T, F>(&self, durable: bool, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, StateError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, StateError>>();
        let result: Arc<Mutex<Option<Result<T, StateError>>>> = Arc::new(Mutex::new(None));
        let written = Arc::clone(&result);
        let run = Box::new(move |txn: &redb::WriteTransaction| {
            let out = f(txn);
            let failed_midway = matches!(out, Err(StateError::Internal(_) | StateError::StorageFull(_)));
            *written.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
            failed_midway
        });
        let finish = Box::new(move |ended: Option<StateError>| {
            let out = result.lock().unwrap_or_else(|p| p.into_inner()).take();
            let _ = reply.send(match (ended, out) {
                // The caller's own error (e.g. a full disk) says more than the group's.
                (Some(_), Some(Err(own @ StateError::StorageFull(_)))) => Err(own),
                (Some(e), _) => Err(e),
                (None, Some(out)) => out,
                (None, None) => Err(StateError::Unavailable("the state write did not run".into())),
            });
        });
        let request = WriteRequest { durable, run, finish };
        {
            let writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
            let sender = writes.as_ref().ok_or_else(|| StateError::Unavailable("the state store is closed".into()))?;
            sender
                .send(request)
                .map_err(|_| StateError::Unavailable("the state writer thread has stopped".into()))?;
        }
        answer
            .await
            .map_err(|_| StateError::Unavailable("the state store could not start a transaction".into()))?
    }

    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, StateError> + Send + 'static,
    {
        let db = self.slot.get()?;
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(internal)?;
            f(&txn)
        })
        .await
        .map_err(internal)?
    }
}
