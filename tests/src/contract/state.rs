//! `StateStore` contract.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imgfleet_shared::domain::{ItemOutcome, JobRecord, JobStatus};
use imgfleet_shared::ports::state::MAX_JOB_LOG_LINES;
use imgfleet_shared::ports::{Claim, DedupEntry, StateError, StateStore};

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
    };
}

const TTL: Duration = Duration::from_secs(60);

fn job(id: &str) -> JobRecord {
    JobRecord::new(id.to_owned(), "c".into(), "/photos".into())
}

pub async fn claim_lifecycle(f: &dyn StateFixture) {
    let s = f.open().await;
    assert_eq!(s.claim("c", "h1", "a", TTL).await.unwrap(), Claim::Acquired);
    match s.claim("c", "h1", "b", TTL).await.unwrap() {
        Claim::HeldByOther { owner, expires_in } => {
            assert_eq!(owner, "a");
            assert!(expires_in <= TTL && expires_in > TTL / 2);
        }
        other => panic!("expected HeldByOther, got {other:?}"),
    }
    assert_eq!(s.claim("c", "h1", "a", TTL).await.unwrap(), Claim::Acquired, "the holder may renew");
    assert_eq!(s.claim("other", "h1", "b", TTL).await.unwrap(), Claim::Acquired, "collections are independent");
    assert!(matches!(s.dedup_entry("c", "h1").await.unwrap(), Some(DedupEntry::Claimed { ref owner, .. }) if owner == "a"));
    s.mark_done("c", "h1", "p1").await.unwrap();
    for who in ["a", "b"] {
        assert_eq!(s.claim("c", "h1", who, TTL).await.unwrap(), Claim::Done { point_id: "p1".into() });
    }
    assert_eq!(s.dedup_entry("c", "h1").await.unwrap(), Some(DedupEntry::Done { point_id: "p1".into() }));
    assert_eq!(s.dedup_entry("c", "never").await.unwrap(), None);
    s.release("c", "h1", "a").await.unwrap();
    assert!(matches!(s.claim("c", "h1", "b", TTL).await.unwrap(), Claim::Done { .. }), "done is final");
}

pub async fn expired_claim_is_retaken(f: &dyn StateFixture) {
    let s = f.open().await;
    // The holder "dies" holding a short claim; after its TTL another worker takes it over.
    assert_eq!(s.claim("c", "h", "dead-worker", Duration::from_millis(150)).await.unwrap(), Claim::Acquired);
    assert!(matches!(s.claim("c", "h", "b", TTL).await.unwrap(), Claim::HeldByOther { .. }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.dedup_entry("c", "h").await.unwrap(), None, "an expired claim is no entry");
    assert_eq!(s.claim("c", "h", "b", TTL).await.unwrap(), Claim::Acquired);
    assert!(matches!(s.claim("c", "h", "dead-worker", TTL).await.unwrap(), Claim::HeldByOther { ref owner, .. } if owner == "b"));
}

pub async fn release_and_clear(f: &dyn StateFixture) {
    let s = f.open().await;
    s.claim("c", "h", "a", TTL).await.unwrap();
    s.release("c", "h", "b").await.unwrap();
    assert!(matches!(s.claim("c", "h", "b", TTL).await.unwrap(), Claim::HeldByOther { .. }), "only the holder releases");
    s.release("c", "h", "a").await.unwrap();
    assert_eq!(s.claim("c", "h", "b", TTL).await.unwrap(), Claim::Acquired);
    s.mark_done("c", "d1", "p").await.unwrap();
    s.mark_done("c", "d2", "p").await.unwrap();
    s.mark_done("x", "d1", "p").await.unwrap();
    assert_eq!(s.clear_dedup(Some("c")).await.unwrap(), 3);
    assert_eq!(s.dedup_entry("c", "d1").await.unwrap(), None);
    assert!(s.dedup_entry("x", "d1").await.unwrap().is_some());
    assert_eq!(s.clear_dedup(None).await.unwrap(), 1);
    assert_eq!(s.dedup_entry("x", "d1").await.unwrap(), None);
}

pub async fn concurrent_claims_have_one_winner(f: &dyn StateFixture) {
    let s = f.open().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.claim("c", "same", &format!("w{i}"), TTL).await.unwrap() })
        })
        .collect();
    let mut acquired = 0;
    for t in tasks {
        if t.await.unwrap() == Claim::Acquired {
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
        s.mark_done("c", "h", "p").await.unwrap();
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
