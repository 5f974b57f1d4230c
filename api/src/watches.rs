//! Watches: sources kept in sync with a collection. The runner starts a sync job (an ingest of
//! the source, which brings the collection in line with it: see the README, Sync) for a watch
//! when
//! - it has not synced since this process started (so a restart picks up what changed while
//!   the server was down),
//! - the file system reported a change under its directory (inotify, through the `notify`
//!   crate) and nothing more happened for [`DEBOUNCE`],
//! - or its interval has passed since its last sync (buckets, network mounts whose changes no
//!   notification reports),
//!
//! and never while its previous sync job still runs. Watches live in the state store, so they
//! survive restarts; with several API processes on one fleet, run the runner in one of them
//! (`--no-watches` on the others).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imgfleet_core::domain::{JobStatus, WatchRecord, now_rfc3339};
use imgfleet_core::source::Source;
use notify::Watcher as _;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::state::AppState;

/// Quiet time after the last file-system event before a sync starts.
pub const DEBOUNCE: Duration = Duration::from_secs(2);
/// How often the runner looks at the watches.
const TICK: Duration = Duration::from_millis(500);

/// What the runner knows of a watch beyond its record.
#[derive(Default)]
struct Live {
    /// Last file-system event seen under it.
    last_event: Option<Instant>,
    /// When this runner started its last sync.
    last_start: Option<Instant>,
}

/// Runs the watches of `app` until `stop` (see the module docs).
pub async fn run(app: AppState, mut stop: watch::Receiver<bool>) {
    let live: Arc<Mutex<HashMap<String, Live>>> = Arc::default();
    let mut watchers: HashMap<String, notify::RecommendedWatcher> = HashMap::new();
    let mut unavailable: HashSet<String> = HashSet::new();
    while !*stop.borrow_and_update() {
        match app.state.watches().await {
            Ok(watches) => {
                // File-system notifications for the directories watched (added and dropped as
                // watches come and go).
                let ids: HashSet<&str> = watches.iter().map(|w| w.watch_id.as_str()).collect();
                watchers.retain(|id, _| ids.contains(id.as_str()));
                live.lock().expect("live lock").retain(|id, _| ids.contains(id.as_str()));
                for record in &watches {
                    if watchers.contains_key(&record.watch_id) || unavailable.contains(&record.watch_id) {
                        continue;
                    }
                    if let Ok(Source::Directory(dir)) = Source::parse(&record.source) {
                        match notify_on(&dir, record.watch_id.clone(), live.clone()) {
                            Ok(watcher) => {
                                watchers.insert(record.watch_id.clone(), watcher);
                            }
                            Err(e) => {
                                warn!(watch_id = %record.watch_id, dir = %dir.display(), error = %e, "no file-system notifications for this watch; it rescans every interval");
                                unavailable.insert(record.watch_id.clone());
                            }
                        }
                    }
                }
                for record in watches {
                    if let Err(e) = tend(&app, record, &live).await {
                        debug!(error = %e.message, "a watch could not be looked after; next tick");
                    }
                }
            }
            Err(e) => debug!(error = %e, "listing watches failed; next tick"),
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => {}
        }
    }
}

/// A notify watcher on `dir` (recursive) that stamps events on `watch_id`.
fn notify_on(dir: &std::path::Path, watch_id: String, live: Arc<Mutex<HashMap<String, Live>>>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => !matches!(event.kind, notify::EventKind::Access(_)),
            // An overflow or error: safer to sync.
            Err(_) => true,
        };
        if relevant {
            live.lock().expect("live lock").entry(watch_id.clone()).or_default().last_event = Some(Instant::now());
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Records how its last sync ended, and starts the next one when it is due.
async fn tend(app: &AppState, mut record: WatchRecord, live: &Mutex<HashMap<String, Live>>) -> crate::error::AppResult<()> {
    let mut changed = false;
    let mut running = false;
    if let Some(job_id) = record.last_job_id.clone() {
        match app.state.job(&job_id).await? {
            Some(job) if !job.status.is_final() => running = true,
            Some(job) if record.last_counts.is_none() => {
                let counts = job.counts;
                if counts.processed + counts.updated + counts.removed > 0 {
                    record.last_change_at = job.finished_at.clone().or_else(|| Some(now_rfc3339()));
                }
                if job.status != JobStatus::Completed {
                    warn!(watch_id = %record.watch_id, job_id, status = ?job.status, error = ?job.error, "a watch's sync did not complete");
                }
                record.last_counts = Some(counts);
                changed = true;
            }
            Some(_) => {}
            // Purged after its retention: nothing to record.
            None => {}
        }
    }
    let due = {
        let mut live = live.lock().expect("live lock");
        let state = live.entry(record.watch_id.clone()).or_default();
        let interval = Duration::from_secs(record.interval_secs.max(1));
        let first = state.last_start.is_none();
        let event = state.last_event.is_some_and(|at| at.elapsed() >= DEBOUNCE && state.last_start.is_none_or(|start| at > start));
        let timer = state.last_start.is_some_and(|start| start.elapsed() >= interval);
        let due = !running && (first || event || timer);
        if due {
            state.last_start = Some(Instant::now());
        }
        due.then_some(if first { "first sync since start" } else if event { "files changed" } else { "interval" })
    };
    if let Some(why) = due {
        match crate::routes::ingest::queue_ingest(app, &record.collection, &record.source, record.keep_orphans).await {
            Ok(job_id) => {
                info!(watch_id = %record.watch_id, job_id, why, "watch syncing");
                record.last_job_id = Some(job_id);
                record.last_sync_at = Some(now_rfc3339());
                record.last_counts = None;
                changed = true;
            }
            Err(e) => warn!(watch_id = %record.watch_id, error = %e.message, "a watch's sync could not start; next interval"),
        }
    }
    if changed {
        app.state.put_watch(&record).await?;
    }
    Ok(())
}

/// Spawns [`run`] unless the process was asked not to run watches.
pub fn spawn(app: AppState, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(app, stop))
}

/// Makes sure a watch of `dir` into `collection` exists (for `imgfleet serve --watch`): an
/// existing one for the same source and collection is kept.
pub async fn ensure(app: &AppState, dir: &std::path::Path, collection: &str, interval: Duration) -> crate::error::AppResult<WatchRecord> {
    let source = crate::routes::ingest::resolve_source(app, &dir.to_string_lossy()).await?;
    if let Some(existing) = app.state.watches().await?.into_iter().find(|w| w.source == source && w.collection == collection) {
        return Ok(existing);
    }
    let record = new_record(source, collection.to_owned(), interval.as_secs().max(1), false);
    app.state.put_watch(&record).await?;
    Ok(record)
}

/// A watch that has never synced.
pub fn new_record(source: String, collection: String, interval_secs: u64, keep_orphans: bool) -> WatchRecord {
    WatchRecord {
        watch_id: uuid::Uuid::new_v4().to_string(),
        source,
        collection,
        interval_secs,
        keep_orphans,
        created_at: now_rfc3339(),
        last_job_id: None,
        last_sync_at: None,
        last_change_at: None,
        last_counts: None,
    }
}
