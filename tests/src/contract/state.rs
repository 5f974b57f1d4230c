//! `StateStore` contract.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imgfleet_core::domain::{ItemOutcome, JobRecord, JobStatus};
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
