//! Keeping a collection in line with its sources (see the README, "Sync: ingesting a source
//! again"). The source index remembers, per path, the content last stored from it:
//!
//! - When an image is stored or a duplicate path added, each path that is not an upload moves to
//!   its new content in the index ([`SourceSync::record_sources`]); a path that held other
//!   content leaves that old image first (counted as `updated`).
//! - When a job's walk is complete, its [`SweepRequest`] removes the paths under the source's
//!   prefix that the job did not discover (the files vanished; counted as `removed`), then marks
//!   the scan complete ([`SourceSync::sweep`]).
//!
//! A path leaving an image: it is taken out of `paths` (and `path`, the first one, moves to the
//! next); an image with no path left is deleted with its dedup entry, or (a sweep with
//! `keep_orphans`) kept and marked `orphaned: true`. A path beyond
//! [`MAX_PATHS_PER_IMAGE`](imgfleet_core::domain::MAX_PATHS_PER_IMAGE) is
//! only counted in `more_paths`, so its removal changes nothing, and an image whose listed paths
//! are all gone but that counts more is kept.
//!
//! Every step is safe to repeat: the vectors are edited first and the index last, so a
//! redelivery finds the work still to do, or nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use imgfleet_core::domain::point_id_for;
use imgfleet_core::job_status::{JobStatusCache, complete_if_done};
use imgfleet_core::messages::SweepRequest;
use imgfleet_core::ports::{Delivery, Settle, StateStore, VectorError, VectorStore, WorkQueue, publish_attempt};
use imgfleet_core::source::{Location, SourceEntry, location};
use imgfleet_core::stage::StageError;
use serde_json::Value;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::index::PathList;

/// Source index entries read per sweep step.
const SWEEP_PAGE: usize = 512;

/// How often a waiting sweep looks at its job again.
const SWEEP_POLL: Duration = Duration::from_millis(200);

/// How often a waiting sweep tells the queue it is still on its delivery.
const SWEEP_HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a sweep waits on one delivery for its job's files to settle before it hands itself
/// on as a new message: an indexer killed while holding it costs that message a delivery, and a
/// long job must not use up the queue's deliveries of one.
const SWEEP_HOLD: Duration = Duration::from_secs(30);

/// A path that was stored with its content and the version read, to record in the source index.
pub(crate) struct SourcedPath<'a> {
    pub job_id: &'a str,
    pub path: &'a str,
    pub sha256: &'a str,
    pub marker: Option<&'a str>,
}

/// The source index and the vector edits that follow it (see the module docs).
#[derive(Clone)]
pub(crate) struct SourceSync {
    pub queue: Arc<dyn WorkQueue>,
    pub state: Arc<dyn StateStore>,
    pub vectors: Arc<dyn VectorStore>,
}

impl SourceSync {
    /// Moves each path (not an upload, with a marker, of a job still running) to its new
    /// content in the source index; a path whose entry named other content leaves that image
    /// first. One index read for the batch. A replay arriving after its job ended changes
    /// nothing, so it never moves a path back that a later sync moved on.
    pub(crate) async fn record_sources(&self, jobs: &JobStatusCache, collection: &str, items: &[SourcedPath<'_>]) -> Result<(), StageError> {
        let mut wanted: Vec<(&SourcedPath<'_>, &str)> = Vec::new();
        for item in items {
            let Some(marker) = item.marker else { continue };
            if matches!(location(item.path), Location::Upload { .. }) || jobs.is_ended(self.state.as_ref(), item.job_id).await? {
                continue;
            }
            wanted.push((item, marker));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let paths: Vec<String> = wanted.iter().map(|(item, _)| item.path.to_owned()).collect();
        let entries = self.state.source_entries(collection, &paths).await?;
        let moved: Vec<(String, String)> = wanted
            .iter()
            .zip(&entries)
            .filter_map(|((item, _), entry)| entry.as_ref().filter(|e| e.sha256 != item.sha256).map(|e| (item.path.to_owned(), e.sha256.clone())))
            .collect();
        if !moved.is_empty() {
            self.remove_paths(collection, &moved, false).await?;
        }
        let put = futures::future::join_all(wanted.iter().zip(&entries).filter(|((item, marker), entry)| {
            // Unchanged entries are not written again.
            entry.as_ref().is_none_or(|e| e.sha256 != item.sha256 || e.marker != *marker)
        })
        .map(|((item, marker), _)| {
            let entry = SourceEntry { sha256: item.sha256.to_owned(), marker: (*marker).to_owned() };
            async move { self.state.put_source_entry(item.job_id, collection, item.path, &entry).await }
        }))
        .await;
        for result in put {
            result?;
        }
        Ok(())
    }

    /// Takes each `(path, sha256)` out of the image of that content; an image left with no path
    /// is deleted with its dedup entry, or with `keep_orphans` kept and marked `orphaned: true`.
    pub(crate) async fn remove_paths(&self, collection: &str, removals: &[(String, String)], keep_orphans: bool) -> Result<(), StageError> {
        let mut by_point: BTreeMap<Uuid, (&str, Vec<&str>)> = BTreeMap::new();
        for (path, sha) in removals {
            by_point.entry(point_id_for(sha)).or_insert_with(|| (sha.as_str(), Vec::new())).1.push(path.as_str());
        }
        let ids: Vec<Uuid> = by_point.keys().copied().collect();
        let existing = match self.vectors.get(collection, &ids, false).await {
            Ok(found) => found,
            Err(VectorError::CollectionNotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for record in existing {
            let (sha, gone) = &by_point[&record.id];
            let mut paths = PathList::of(&record.payload);
            let mut changed = false;
            for path in gone {
                changed |= paths.remove(path);
            }
            if !changed {
                continue;
            }
            if paths.is_empty() && !keep_orphans {
                self.vectors.delete_points(collection, &[record.id]).await?;
                // After the point: a redelivery finds the point gone and nothing to do.
                self.state.remove_dedup(collection, sha).await?;
                debug!(collection, sha, "an image with no path left was deleted");
                continue;
            }
            let mut update = serde_json::Map::new();
            let first = paths.first().map(str::to_owned);
            let orphaned = paths.is_empty();
            paths.write_to(&mut update);
            let current = record.payload.get("path").and_then(Value::as_str);
            if let Some(first) = first.filter(|_| current.is_none_or(|c| gone.contains(&c))) {
                update.insert("path".into(), Value::from(first));
            }
            if orphaned {
                update.insert("orphaned".into(), Value::from(true));
            }
            self.vectors.set_payload(collection, record.id, update).await?;
        }
        Ok(())
    }

    /// Removes the paths under the sweep's prefix that its job did not discover, then marks the
    /// job's scan complete (and the job completed when everything is settled). Nothing is
    /// removed for a job that has ended.
    pub(crate) async fn sweep(&self, sweep: &SweepRequest) -> Result<(), StageError> {
        let job_id = sweep.job_id.as_str();
        if self.state.job(job_id).await?.is_none_or(|job| job.status.is_final()) {
            return Ok(());
        }
        let mut after: Option<String> = None;
        let mut removed = 0usize;
        loop {
            let page = self.state.source_entries_under(&sweep.collection, &sweep.prefix, after.as_deref(), SWEEP_PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let paths: Vec<String> = page.iter().map(|(path, _)| path.clone()).collect();
            let discovered = self.state.discovered_among(job_id, &paths).await?;
            let vanished: Vec<(String, String)> =
                page.into_iter().zip(discovered).filter(|(_, seen)| !seen).map(|((path, entry), _)| (path, entry.sha256)).collect();
            if !vanished.is_empty() {
                self.remove_paths(&sweep.collection, &vanished, sweep.keep_orphans).await?;
                let paths: Vec<String> = vanished.into_iter().map(|(path, _)| path).collect();
                removed += paths.len();
                self.state.remove_source_entries(Some(job_id), &sweep.collection, &paths).await?;
            }
            if paths.len() < SWEEP_PAGE {
                break;
            }
        }
        if removed > 0 {
            self.state.append_log(job_id, &format!("sync: {removed} paths of the source vanished and left their images")).await?;
        }
        self.state.mark_scan_complete(job_id).await?;
        complete_if_done(self.state.as_ref(), job_id).await?;
        info!(job_id, prefix = %sweep.prefix, removed, "sweep done");
        Ok(())
    }

    /// Runs a sweep once every file its job discovered is settled (so a file that moved is on
    /// its image under the new path before the old path is taken off, and the image is not
    /// deleted in between), keeping the delivery alive while it waits. Runs beside the stage,
    /// which goes on storing the files the sweep waits for.
    pub(crate) fn start_sweep(&self, delivery: Delivery, sweep: SweepRequest, retry: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let how = this.wait_and_sweep(&delivery, &sweep, retry).await;
            delivery.settle_or_warn(how).await;
        });
    }

    async fn wait_and_sweep(&self, delivery: &Delivery, sweep: &SweepRequest, retry: Duration) -> Settle {
        let held_since = std::time::Instant::now();
        let mut last_heartbeat = held_since;
        loop {
            let result = match self.state.job(&sweep.job_id).await {
                Ok(None) => return Settle::Ack,
                Ok(Some(job)) if job.status.is_final() => return Settle::Ack,
                Ok(Some(job)) if job.counts.settled() < job.counts.discovered => Ok(false),
                Ok(Some(_)) => self.sweep(sweep).await.map(|()| true),
                Err(e) => Err(StageError::from(e)),
            };
            match result {
                Ok(true) => return Settle::Ack,
                Ok(false) if held_since.elapsed() >= SWEEP_HOLD => match self.hand_on(delivery, sweep).await {
                    Ok(()) => return Settle::Ack,
                    Err(e) => warn!(job_id = %sweep.job_id, error = %e, "handing the sweep on failed; it goes on waiting here"),
                },
                Ok(false) => {}
                Err(e) if e.pause().is_some() => {
                    warn!(job_id = %sweep.job_id, error = %e, "sweep waits for a store");
                    tokio::time::sleep(e.pause().unwrap_or(SWEEP_POLL)).await;
                }
                Err(e) => {
                    warn!(job_id = %sweep.job_id, error = %e, "sweep failed; it will be retried");
                    return Settle::Retry(retry);
                }
            }
            if last_heartbeat.elapsed() >= SWEEP_HEARTBEAT {
                let _ = delivery.in_progress().await;
                last_heartbeat = std::time::Instant::now();
            }
            tokio::time::sleep(SWEEP_POLL).await;
        }
    }
}

impl SourceSync {
    /// Publishes the sweep again as its next attempt (`…:wait{n}`, named after this message, so a
    /// redelivery publishes the same one), to be acked in its place.
    async fn hand_on(&self, delivery: &Delivery, sweep: &SweepRequest) -> Result<(), StageError> {
        let mut next = sweep.clone();
        next.attempt += 1;
        let base = match delivery.message_id.rsplit_once(":wait") {
            Some((base, n)) if n.parse::<u32>().is_ok() => base,
            _ => delivery.message_id.as_str(),
        };
        let id = format!("{base}:wait{}", next.attempt);
        publish_attempt(self.queue.as_ref(), imgfleet_core::names::Stream::Encoded, &id, imgfleet_core::messages::encode(&next)).await?;
        debug!(job_id = %sweep.job_id, attempt = next.attempt, "the job's files are still settling; the sweep is handed on");
        Ok(())
    }
}

/// Whether `payload` is marked as having no path left.
pub(crate) fn is_orphaned(payload: &serde_json::Map<String, Value>) -> bool {
    payload.get("orphaned").and_then(Value::as_bool).unwrap_or(false)
}
