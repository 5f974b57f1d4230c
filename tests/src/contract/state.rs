//! `StateStore` contract.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imgfleet_core::domain::{ItemOutcome, JobRecord, JobStatus, WatchRecord};
use imgfleet_core::source::SourceEntry;
use imgfleet_core::ports::state::{MAX_JOB_LOG_LINES, MAX_LOG_LINE_CHARS};
use imgfleet_core::ports::{Claim, DedupEntry, StateError, StateStore};

#[async_trait]
pub trait StateFixture: Send + Sync {
    /// Opens the store; a second `open` after the first is dropped sees the same data.
    async fn open(&self) -> Arc<dyn StateStore>;
}

#[macro_export]
macro_rules! state_store_contract {
    ($fixture:expr) => {
        $crate::contract_case!(claim_lifecycle, $crate::contract::state::claim_lifecycle, $fixture);
        $crate::contract_case!(expired_claim_is_retaken, $crate::contract::state::expired_claim_is_retaken, $fixture);
        $crate::contract_case!(release_and_clear, $crate::contract::state::release_and_clear, $fixture);
        $crate::contract_case!(concurrent_claims_have_one_winner, $crate::contract::state::concurrent_claims_have_one_winner, $fixture);
        $crate::contract_case!(job_lifecycle, $crate::contract::state::job_lifecycle, $fixture);
        $crate::contract_case!(counters_exact_under_redelivery, $crate::contract::state::counters_exact_under_redelivery, $fixture);
        $crate::contract_case!(concurrent_counters_exact, $crate::contract::state::concurrent_counters_exact, $fixture);
        $crate::contract_case!(completion_detected_once, $crate::contract::state::completion_detected_once, $fixture);
        $crate::contract_case!(state_persists_across_reopen, $crate::contract::state::state_persists_across_reopen, $fixture);
        $crate::contract_case!(clears_refuse_older_done_marks, $crate::contract::state::clears_refuse_older_done_marks, $fixture);
        $crate::contract_case!(stale_done_entries_are_forgotten, $crate::contract::state::stale_done_entries_are_forgotten, $fixture);
        $crate::contract_case!(active_jobs_and_purge, $crate::contract::state::active_jobs_and_purge, $fixture);
        $crate::contract_case!(an_ended_job_claims_nothing, $crate::contract::state::an_ended_job_claims_nothing, $fixture);
        $crate::contract_case!(source_index_counts_updates_and_removals, $crate::contract::state::source_index_counts_updates_and_removals, $fixture);
        $crate::contract_case!(source_index_pages_in_path_order, $crate::contract::state::source_index_pages_in_path_order, $fixture);
        $crate::contract_case!(clears_forget_source_indexes, $crate::contract::state::clears_forget_source_indexes, $fixture);
        $crate::contract_case!(discovered_among_and_remove_dedup, $crate::contract::state::discovered_among_and_remove_dedup, $fixture);
        $crate::contract_case!(watches_oldest_first, $crate::contract::state::watches_oldest_first, $fixture);
    };
}

const TTL: Duration = Duration::from_secs(60);

fn job(id: &str) -> JobRecord {
    JobRecord::new(id.to_owned(), "c".into(), "/photos".into())
}

/// Claims `sha` in `collection` for `owner`, expecting to get it; returns the token.
pub async fn acquire(s: &dyn StateStore, collection: &str, sha: &str, owner: &str) -> String {
    match s.claim(collection, sha, owner, TTL, None).await.unwrap() {
        Claim::Acquired { token } => token,
        other => panic!("{owner} expected to acquire {collection}/{sha}, got {other:?}"),
    }
}

/// Claims and marks `sha` done as `point`.
pub async fn store_done(s: &dyn StateStore, collection: &str, sha: &str, point: &str) {
    let token = acquire(s, collection, sha, "indexer-test").await;
    assert!(s.mark_done(collection, sha, point, &token).await.unwrap());
}

pub async fn claim_lifecycle(f: &dyn StateFixture) {
    let s = f.open().await;
    let token = acquire(s.as_ref(), "c", "h1", "a").await;
    match s.claim("c", "h1", "b", TTL, None).await.unwrap() {
        Claim::HeldByOther { owner, expires_in } => {
            assert_eq!(owner, "a");
            assert!(expires_in <= TTL && expires_in > TTL / 2);
        }
        other => panic!("expected HeldByOther, got {other:?}"),
    }
    assert_eq!(acquire(s.as_ref(), "c", "h1", "a").await, token, "the holder renews the same acquisition");
    let other = acquire(s.as_ref(), "other", "h1", "b").await;
    assert_ne!(other, token, "collections are independent, and tokens unique");
    assert!(matches!(s.dedup_entry("c", "h1").await.unwrap(), Some(DedupEntry::Claimed { ref owner, .. }) if owner == "a"));
    assert!(s.mark_done("c", "h1", "p1", &token).await.unwrap());
    for who in ["a", "b"] {
        assert_eq!(s.claim("c", "h1", who, TTL, None).await.unwrap(), Claim::Done { point_id: "p1".into(), token: token.clone() });
    }
    assert_eq!(s.dedup_entry("c", "h1").await.unwrap(), Some(DedupEntry::Done { point_id: "p1".into() }));
    assert_eq!(s.dedup_entry("c", "never").await.unwrap(), None);
    s.release("c", "h1", &token).await.unwrap();
    assert!(matches!(s.claim("c", "h1", "b", TTL, None).await.unwrap(), Claim::Done { .. }), "done is final");
}

pub async fn expired_claim_is_retaken(f: &dyn StateFixture) {
    let s = f.open().await;
    // The holder "dies" holding a short claim; after its TTL another task takes it over.
    let dead = match s.claim("c", "h", "dead-task", Duration::from_millis(150), None).await.unwrap() {
        Claim::Acquired { token } => token,
        other => panic!("{other:?}"),
    };
    assert!(matches!(s.claim("c", "h", "b", TTL, None).await.unwrap(), Claim::HeldByOther { .. }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.dedup_entry("c", "h").await.unwrap(), None, "an expired claim is no entry");
    let token = acquire(s.as_ref(), "c", "h", "b").await;
    assert_ne!(token, dead, "a new acquisition has a new token");
    assert!(matches!(s.claim("c", "h", "dead-task", TTL, None).await.unwrap(), Claim::HeldByOther { ref owner, .. } if owner == "b"));
    s.release("c", "h", &dead).await.unwrap();
    assert!(matches!(s.claim("c", "h", "x", TTL, None).await.unwrap(), Claim::HeldByOther { .. }), "an old token releases nothing");
}

pub async fn release_and_clear(f: &dyn StateFixture) {
    let s = f.open().await;
    let token = acquire(s.as_ref(), "c", "h", "a").await;
    s.release("c", "h", "not-the-token").await.unwrap();
    assert!(matches!(s.claim("c", "h", "b", TTL, None).await.unwrap(), Claim::HeldByOther { .. }), "only the holder's token releases");
    s.release("c", "h", &token).await.unwrap();
    let again = acquire(s.as_ref(), "c", "h", "a").await;
    assert_ne!(again, token, "claimed again after a release: a new attempt");
    store_done(s.as_ref(), "c", "d1", "p").await;
    store_done(s.as_ref(), "c", "d2", "p").await;
    store_done(s.as_ref(), "x", "d1", "p").await;
    assert_eq!(s.clear_dedup(Some("c")).await.unwrap(), 3);
    assert_eq!(s.dedup_entry("c", "d1").await.unwrap(), None);
    assert!(s.dedup_entry("x", "d1").await.unwrap().is_some());
    assert_eq!(s.clear_dedup(None).await.unwrap(), 1);
    assert_eq!(s.dedup_entry("x", "d1").await.unwrap(), None);
}

/// A done mark for a claim taken before a clear (of its collection, or of all) is refused: the
/// point it names may be in a deleted collection, and the clear must forget it.
pub async fn clears_refuse_older_done_marks(f: &dyn StateFixture) {
    let s = f.open().await;
    let before = acquire(s.as_ref(), "c", "h", "a").await;
    let elsewhere = acquire(s.as_ref(), "x", "h", "a").await;
    s.clear_dedup(Some("c")).await.unwrap();
    assert!(!s.mark_done("c", "h", "p", &before).await.unwrap(), "cleared since the claim");
    assert_eq!(s.dedup_entry("c", "h").await.unwrap(), None, "nothing written");
    assert!(s.mark_done("x", "h", "p", &elsewhere).await.unwrap(), "another collection's clear changes nothing here");
    let after = acquire(s.as_ref(), "c", "h", "b").await;
    assert!(s.mark_done("c", "h", "p", &after).await.unwrap());
    let pending = acquire(s.as_ref(), "c", "h2", "a").await;
    s.clear_dedup(None).await.unwrap();
    assert!(!s.mark_done("c", "h2", "p", &pending).await.unwrap(), "a clear of every collection counts too");
    assert!(!s.mark_done("c", "h3", "p", "").await.unwrap(), "a token without a generation is refused");
}

pub async fn stale_done_entries_are_forgotten(f: &dyn StateFixture) {
    let s = f.open().await;
    store_done(s.as_ref(), "c", "h", "p").await;
    let Claim::Done { token, .. } = s.claim("c", "h", "t", TTL, None).await.unwrap() else { panic!("done") };
    assert!(!s.forget_done("c", "h", "another").await.unwrap(), "only that entry");
    assert!(s.forget_done("c", "h", &token).await.unwrap());
    assert!(!s.forget_done("c", "h", &token).await.unwrap());
    assert!(s.claim("c", "h", "t", TTL, None).await.unwrap().is_acquired(), "processed again");
}

pub async fn active_jobs_and_purge(f: &dyn StateFixture) {
    let s = f.open().await;
    for id in ["a", "b", "c"] {
        s.create_job(&job(id)).await.unwrap();
    }
    s.set_job_status("b", JobStatus::Running, None).await.unwrap();
    s.set_job_status("c", JobStatus::Cancelled, None).await.unwrap();
    let mut active: Vec<String> = s.active_jobs().await.unwrap().into_iter().map(|j| j.job_id).collect();
    active.sort();
    assert_eq!(active, ["a", "b"]);
    s.record_discovered("b", "/x").await.unwrap();
    s.mark_scan_complete("b").await.unwrap();
    s.record_outcome("b", "/x", &ItemOutcome::Processed).await.unwrap();
    assert!(s.complete_if_done("b").await.unwrap().is_some());
    assert_eq!(s.active_jobs().await.unwrap().into_iter().map(|j| j.job_id).collect::<Vec<_>>(), ["a"]);
    assert_eq!(s.purge_finished_jobs(Duration::from_secs(3600)).await.unwrap(), 0, "nothing that old");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.purge_finished_jobs(Duration::from_millis(10)).await.unwrap(), 2);
    assert_eq!(s.job("b").await.unwrap(), None);
    assert_eq!(s.job("c").await.unwrap(), None);
    assert!(s.unsettled_items("b").await.unwrap().is_empty());
    let listed: Vec<String> = s.list_jobs(10).await.unwrap().into_iter().map(|j| j.job_id).collect();
    assert_eq!(listed, ["a"], "only the running job is left");
    assert!(matches!(s.record_outcome("b", "/x", &ItemOutcome::Processed).await, Err(StateError::JobNotFound(_))));
    assert_eq!(s.purge_finished_jobs(Duration::ZERO).await.unwrap(), 0);
}

pub async fn concurrent_claims_have_one_winner(f: &dyn StateFixture) {
    let s = f.open().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.claim("c", "same", &format!("w{i}"), TTL, None).await.unwrap() })
        })
        .collect();
    let mut acquired = 0;
    for t in tasks {
        if t.await.unwrap().is_acquired() {
            acquired += 1;
        }
    }
    assert_eq!(acquired, 1);
}

pub async fn job_lifecycle(f: &dyn StateFixture) {
    let s = f.open().await;
    s.create_job(&job("j1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.create_job(&job("j2")).await.unwrap();
    assert!(matches!(s.create_job(&job("j1")).await, Err(StateError::JobExists(_))));
    let got = s.job("j1").await.unwrap().unwrap();
    assert_eq!((got.status, got.started_at.is_none()), (JobStatus::Queued, true));
    assert_eq!(s.job("nope").await.unwrap(), None);
    let listed: Vec<String> = s.list_jobs(10).await.unwrap().into_iter().map(|j| j.job_id).collect();
    assert_eq!(listed, vec!["j2", "j1"], "newest first");
    assert_eq!(s.list_jobs(1).await.unwrap().len(), 1);

    let running = s.set_job_status("j1", JobStatus::Running, None).await.unwrap();
    assert!(running.started_at.is_some() && running.finished_at.is_none());
    let failed = s.set_job_status("j1", JobStatus::Failed, Some("disk gone".into())).await.unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("disk gone"));
    assert!(failed.finished_at.is_some());
    let after = s.set_job_status("j1", JobStatus::Running, None).await.unwrap();
    assert_eq!(after.status, JobStatus::Failed, "a final status is never left");
    assert!(matches!(s.set_job_status("nope", JobStatus::Running, None).await, Err(StateError::JobNotFound(_))));
    assert!(matches!(s.record_discovered("nope", "x").await, Err(StateError::JobNotFound(_))));
    s.append_log("j2", "hello").await.unwrap();
    assert_eq!(s.job("j2").await.unwrap().unwrap().logs, vec!["hello"]);
}

pub async fn counters_exact_under_redelivery(f: &dyn StateFixture) {
    let s = f.open().await;
    s.create_job(&job("j")).await.unwrap();
    assert!(s.record_discovered("j", "/a").await.unwrap());
    assert!(!s.record_discovered("j", "/a").await.unwrap(), "a redelivered discovery is not counted");
    assert!(s.record_discovered("j", "/b").await.unwrap());
    assert!(s.record_outcome("j", "/a", &ItemOutcome::Processed).await.unwrap());
    assert!(!s.record_outcome("j", "/a", &ItemOutcome::Processed).await.unwrap());
    assert!(!s.record_outcome("j", "/a", &ItemOutcome::Failed { reason: "late".into() }).await.unwrap(), "first outcome wins");
    assert!(s.record_outcome("j", "/b", &ItemOutcome::Failed { reason: "truncated JPEG".into() }).await.unwrap());
    // An item that fails before it was reported as discovered still counts as discovered.
    assert!(s.record_outcome("j", "/c", &ItemOutcome::Duplicate { existing_id: "p9".into() }).await.unwrap());
    let j = s.job("j").await.unwrap().unwrap();
    assert_eq!((j.counts.discovered, j.counts.processed, j.counts.failed, j.counts.duplicates), (3, 1, 1, 1));
    assert!(s.record_discovered("j", "/d").await.unwrap());
    assert!(s.record_discovered("j", "/e").await.unwrap());
    let mut unsettled = s.unsettled_items("j").await.unwrap();
    unsettled.sort();
    assert_eq!(unsettled, ["/d", "/e"], "discovered and not settled");
    assert!(s.record_outcome("j", "/d", &ItemOutcome::Processed).await.unwrap());
    assert_eq!(s.unsettled_items("j").await.unwrap(), ["/e"]);
    assert!(j.logs.iter().any(|l| l.contains("/b") && l.contains("truncated JPEG")), "{:?}", j.logs);
    assert!(j.logs.iter().any(|l| l.contains("/c") && l.contains("p9")), "{:?}", j.logs);
    for i in 0..MAX_JOB_LOG_LINES + 10 {
        s.append_log("j", &format!("line {i}")).await.unwrap();
    }
    let logs = s.job("j").await.unwrap().unwrap().logs;
    assert_eq!(logs.len(), MAX_JOB_LOG_LINES);
    assert_eq!(logs.last().unwrap(), &format!("line {}", MAX_JOB_LOG_LINES + 9), "newest kept");
    // Lines are bounded too, however they come (a path, a reason, an error).
    let long = "x".repeat(MAX_LOG_LINE_CHARS * 3);
    s.append_log("j", &long).await.unwrap();
    s.record_outcome("j", &format!("/{long}"), &ItemOutcome::Failed { reason: long.clone() }).await.unwrap();
    s.set_job_status("j", JobStatus::Failed, Some(long.clone())).await.unwrap();
    let j = s.job("j").await.unwrap().unwrap();
    for line in j.logs.iter().rev().take(3) {
        assert!(line.chars().count() <= MAX_LOG_LINE_CHARS + 1, "{} chars", line.chars().count());
    }
    assert!(j.error.unwrap().chars().count() <= MAX_LOG_LINE_CHARS + 1);
}

pub async fn concurrent_counters_exact(f: &dyn StateFixture) {
    let s = f.open().await;
    s.create_job(&job("j")).await.unwrap();
    // 8 "workers" each report every one of 40 items, as redeliveries would.
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                for i in 0..40 {
                    let item = format!("/img/{i}");
                    s.record_discovered("j", &item).await.unwrap();
                    let outcome = if i % 4 == 0 {
                        ItemOutcome::Failed { reason: format!("worker {w}") }
                    } else {
                        ItemOutcome::Processed
                    };
                    s.record_outcome("j", &item, &outcome).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let c = s.job("j").await.unwrap().unwrap().counts;
    assert_eq!((c.discovered, c.processed, c.failed, c.duplicates), (40, 30, 10, 0));
}

pub async fn completion_detected_once(f: &dyn StateFixture) {
    let s = f.open().await;
    s.create_job(&job("j")).await.unwrap();
    s.set_job_status("j", JobStatus::Running, None).await.unwrap();
    for i in 0..3 {
        s.record_discovered("j", &format!("/{i}")).await.unwrap();
    }
    s.record_outcome("j", "/0", &ItemOutcome::Processed).await.unwrap();
    s.record_outcome("j", "/1", &ItemOutcome::Processed).await.unwrap();
    s.record_outcome("j", "/2", &ItemOutcome::Processed).await.unwrap();
    assert_eq!(s.complete_if_done("j").await.unwrap(), None, "not before the scan is complete");
    s.mark_scan_complete("j").await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.complete_if_done("j").await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(job) = t.await.unwrap() {
            winners.push(job);
        }
    }
    assert_eq!(winners.len(), 1, "completion is reported exactly once");
    assert_eq!(winners[0].status, JobStatus::Completed);
    assert!(winners[0].finished_at.is_some());
    assert_eq!(s.job("j").await.unwrap().unwrap().status, JobStatus::Completed);

    s.create_job(&job("k")).await.unwrap();
    s.record_discovered("k", "/x").await.unwrap();
    s.mark_scan_complete("k").await.unwrap();
    assert_eq!(s.complete_if_done("k").await.unwrap(), None, "not while an item is unsettled");
}

pub async fn state_persists_across_reopen(f: &dyn StateFixture) {
    {
        let s = f.open().await;
        s.set_active_collection("holiday").await.unwrap();
        store_done(s.as_ref(), "c", "h", "p").await;
        s.create_job(&job("j")).await.unwrap();
        s.record_outcome("j", "/a", &ItemOutcome::Processed).await.unwrap();
    }
    let s = f.open().await;
    assert_eq!(s.active_collection().await.unwrap().as_deref(), Some("holiday"));
    assert_eq!(s.dedup_entry("c", "h").await.unwrap(), Some(DedupEntry::Done { point_id: "p".into() }));
    let j = s.job("j").await.unwrap().unwrap();
    assert_eq!(j.counts.processed, 1);
    assert!(!s.record_outcome("j", "/a", &ItemOutcome::Processed).await.unwrap(), "item marks survive too");
    let ids: HashSet<String> = s.list_jobs(5).await.unwrap().into_iter().map(|j| j.job_id).collect();
    assert!(ids.contains("j"));
}

pub async fn an_ended_job_claims_nothing(f: &dyn StateFixture) {
    let s = f.open().await;
    s.create_job(&job("run")).await.unwrap();
    assert!(s.claim("c", "h", "t1", TTL, Some("run")).await.unwrap().is_acquired());
    s.set_job_status("run", JobStatus::Cancelled, None).await.unwrap();
    assert_eq!(s.claim("c", "h2", "t2", TTL, Some("run")).await.unwrap(), Claim::JobEnded);
    assert_eq!(s.claim("c", "h2", "t2", TTL, Some("never-created")).await.unwrap(), Claim::JobEnded);
    assert_eq!(s.dedup_entry("c", "h2").await.unwrap(), None, "nothing taken");
    assert!(s.claim("c", "h2", "t2", TTL, None).await.unwrap().is_acquired(), "without a job, as before");
}

fn entry(sha: &str, marker: &str) -> SourceEntry {
    SourceEntry { sha256: sha.to_owned(), marker: marker.to_owned() }
}

/// `put_source_entry` returns the entry it replaced and counts `updated` only when that named
/// other content, once however often it is repeated; `remove_source_entries` counts `removed`
/// by how many existed.
pub async fn source_index_counts_updates_and_removals(f: &dyn StateFixture) {
    let s = f.open().await;
    s.create_job(&job("j")).await.unwrap();
    let paths = ["/p/a.jpg".to_owned(), "/p/b.jpg".to_owned()];
    assert_eq!(s.source_entries("c", &paths).await.unwrap(), vec![None, None]);
    assert_eq!(s.put_source_entry("j", "c", "/p/a.jpg", &entry("aa", "f:1:1")).await.unwrap(), None);
    assert_eq!(s.put_source_entry("j", "c", "/p/a.jpg", &entry("aa", "f:1:1")).await.unwrap(), Some(entry("aa", "f:1:1")));
    // Same content, newer version (touched): not an update.
    assert_eq!(s.put_source_entry("j", "c", "/p/a.jpg", &entry("aa", "f:1:2")).await.unwrap(), Some(entry("aa", "f:1:1")));
    assert_eq!(s.job("j").await.unwrap().unwrap().counts.updated, 0);
    assert_eq!(s.put_source_entry("j", "c", "/p/a.jpg", &entry("bb", "f:2:3")).await.unwrap(), Some(entry("aa", "f:1:2")));
    // The redelivery finds the new entry and counts nothing.
    assert_eq!(s.put_source_entry("j", "c", "/p/a.jpg", &entry("bb", "f:2:3")).await.unwrap(), Some(entry("bb", "f:2:3")));
    assert_eq!(s.job("j").await.unwrap().unwrap().counts.updated, 1);
    s.put_source_entry("j", "c", "/p/b.jpg", &entry("aa", "f:1:1")).await.unwrap();
    assert_eq!(s.source_entries("c", &paths).await.unwrap(), vec![Some(entry("bb", "f:2:3")), Some(entry("aa", "f:1:1"))]);
    assert_eq!(s.source_entries("other", &paths).await.unwrap(), vec![None, None], "per collection");
    assert!(matches!(s.put_source_entry("nope", "c", "/p/x.jpg", &entry("aa", "f:1:1")).await, Err(StateError::JobNotFound(_))));
    assert_eq!(s.source_entries("c", &["/p/x.jpg".to_owned()]).await.unwrap(), vec![None], "nothing written for a missing job");

    let gone = ["/p/a.jpg".to_owned(), "/p/never.jpg".to_owned()];
    assert_eq!(s.remove_source_entries(Some("j"), "c", &gone).await.unwrap(), 1);
    assert_eq!(s.remove_source_entries(Some("j"), "c", &gone).await.unwrap(), 0, "a repeat removes and counts nothing");
    assert_eq!(s.remove_source_entries(None, "c", &["/p/b.jpg".to_owned()]).await.unwrap(), 1);
    let j = s.job("j").await.unwrap().unwrap();
    assert_eq!((j.counts.updated, j.counts.removed), (1, 1));
    assert_eq!(s.source_entries("c", &paths).await.unwrap(), vec![None, None]);
    assert_eq!(s.source_entries_under("c", "/", None, 10).await.unwrap(), vec![], "gone from the listing too");
    drop(s);
    let s = f.open().await;
    let j = s.job("j").await.unwrap().unwrap();
    assert_eq!((j.counts.updated, j.counts.removed), (1, 1), "the counts persist");
}

/// Listing under a prefix: in path order, never a sibling with a longer name, paged.
pub async fn source_index_pages_in_path_order(f: &dyn StateFixture) {
    let s = f.open().await;
    s.create_job(&job("j")).await.unwrap();
    let mut paths: Vec<String> = (0..25).map(|i| format!("/lib/a/{i:02}.jpg")).collect();
    paths.extend(["/lib/a/é.jpg".to_owned(), "/lib/a/sub/z.jpg".to_owned()]);
    for (i, path) in paths.iter().enumerate().rev() {
        s.put_source_entry("j", "c", path, &entry(&format!("{i:064x}"), "f:1:1")).await.unwrap();
    }
    for other in ["/lib/ab/x.jpg", "/lib/a", "/lib/", "/lib/Z.jpg"] {
        s.put_source_entry("j", "c", other, &entry("ff", "f:1:1")).await.unwrap();
    }
    s.put_source_entry("j", "d", "/lib/a/00.jpg", &entry("ff", "f:1:1")).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.source_entries_under("c", "/lib/a/", after.as_deref(), 10).await.unwrap();
        assert!(page.len() <= 10);
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        seen.extend(page.into_iter().map(|(path, e)| {
            assert_eq!(e.marker, "f:1:1");
            path
        }));
    }
    let mut expected = paths.clone();
    expected.sort();
    assert_eq!(seen, expected, "every path under the prefix once, in byte order, nothing else");
    assert_eq!(s.source_entries_under("c", "/lib/a/", Some("/lib/a/é.jpg"), 10).await.unwrap(), vec![], "é sorts last (byte order)");
    assert_eq!(s.source_entries_under("c", "/lib/a/", None, 0).await.unwrap(), vec![]);
    assert_eq!(s.source_entries_under("c", "", None, 100).await.unwrap().len(), paths.len() + 4, "an empty prefix is everything");
    assert_eq!(s.source_entries_under("c", "/nothing/", None, 10).await.unwrap(), vec![]);
}

/// Clearing a collection's dedup forgets its source index too; clearing all forgets every one.
pub async fn clears_forget_source_indexes(f: &dyn StateFixture) {
    let s = f.open().await;
    s.create_job(&job("j")).await.unwrap();
    for c in ["c", "d", "e"] {
        s.put_source_entry("j", c, "/p/a.jpg", &entry("aa", "f:1:1")).await.unwrap();
    }
    s.clear_dedup(Some("c")).await.unwrap();
    let one = ["/p/a.jpg".to_owned()];
    assert_eq!(s.source_entries("c", &one).await.unwrap(), vec![None]);
    assert_eq!(s.source_entries_under("c", "/p/", None, 10).await.unwrap(), vec![]);
    assert_eq!(s.source_entries("d", &one).await.unwrap(), vec![Some(entry("aa", "f:1:1"))], "other collections keep theirs");
    s.clear_dedup(None).await.unwrap();
    for c in ["d", "e"] {
        assert_eq!(s.source_entries(c, &one).await.unwrap(), vec![None]);
        assert_eq!(s.source_entries_under(c, "/", None, 10).await.unwrap(), vec![]);
    }
}

pub async fn discovered_among_and_remove_dedup(f: &dyn StateFixture) {
    let s = f.open().await;
    s.create_job(&job("j")).await.unwrap();
    s.record_discovered("j", "/a").await.unwrap();
    s.record_outcome("j", "/b", &ItemOutcome::Processed).await.unwrap();
    let items: Vec<String> = ["/a", "/b", "/c"].map(str::to_owned).to_vec();
    assert_eq!(s.discovered_among("j", &items).await.unwrap(), vec![true, true, false]);
    assert_eq!(s.discovered_among("other", &items).await.unwrap(), vec![false, false, false]);

    store_done(s.as_ref(), "c", "h", "p").await;
    acquire(s.as_ref(), "c", "h2", "a").await;
    s.remove_dedup("c", "h").await.unwrap();
    s.remove_dedup("c", "h2").await.unwrap();
    s.remove_dedup("c", "never").await.unwrap();
    assert_eq!(s.dedup_entry("c", "h").await.unwrap(), None);
    assert_eq!(s.dedup_entry("c", "h2").await.unwrap(), None, "whatever it is");
    assert!(s.claim("c", "h", "b", TTL, None).await.unwrap().is_acquired(), "processed again when next seen");
}

fn watch(id: &str, created_at: &str) -> WatchRecord {
    WatchRecord {
        watch_id: id.to_owned(),
        source: "/photos".into(),
        collection: "c".into(),
        interval_secs: 60,
        keep_orphans: false,
        created_at: created_at.to_owned(),
        last_job_id: None,
        last_sync_at: None,
        last_change_at: None,
        last_counts: None,
    }
}

pub async fn watches_oldest_first(f: &dyn StateFixture) {
    let s = f.open().await;
    assert_eq!(s.watches().await.unwrap(), vec![]);
    s.put_watch(&watch("w-b", "2026-01-02T00:00:00.000Z")).await.unwrap();
    s.put_watch(&watch("w-a", "2026-01-03T00:00:00.000Z")).await.unwrap();
    s.put_watch(&watch("w-c", "2026-01-01T00:00:00.000Z")).await.unwrap();
    let mut replaced = watch("w-b", "2026-01-02T00:00:00.000Z");
    replaced.last_job_id = Some("j9".into());
    replaced.last_counts = Some(imgfleet_core::domain::JobCounts { discovered: 3, updated: 1, removed: 2, ..Default::default() });
    s.put_watch(&replaced).await.unwrap();
    let ids: Vec<String> = s.watches().await.unwrap().into_iter().map(|w| w.watch_id).collect();
    assert_eq!(ids, ["w-c", "w-b", "w-a"], "oldest first");
    drop(s);
    let s = f.open().await;
    assert_eq!(s.watches().await.unwrap()[1], replaced, "replaced whole, and persisted");
    assert!(s.delete_watch("w-b").await.unwrap());
    assert!(!s.delete_watch("w-b").await.unwrap());
    assert_eq!(s.watches().await.unwrap().len(), 2);
}
