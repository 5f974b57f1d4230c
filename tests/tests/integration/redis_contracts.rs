//! The Redis state adapter against the state contract suite, plus what only a server shows:
//! restarts, several connections, keyspace walks, prefixes.

mod contract {
    use imgfleet_tests::redis_server::RedisFixture;
    imgfleet_tests::state_store_contract!(RedisFixture::new());
}

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgfleet_core::domain::{ItemOutcome, JobRecord, JobStatus};
use imgfleet_core::ports::state::MAX_JOB_LOG_LINES;
use imgfleet_core::ports::{DedupEntry, StateError, StateStore};
use imgfleet_fleet::redis_state::{RedisStateOptions, RedisStateStore};
use imgfleet_tests::contract::state::store_done;
use imgfleet_tests::redis_server::RedisServer;

const TTL: Duration = Duration::from_secs(60);

fn job(id: &str) -> JobRecord {
    JobRecord::new(id.to_owned(), "c".into(), "/photos".into())
}

async fn connect(server: &RedisServer, prefix: &str) -> RedisStateStore {
    RedisStateStore::connect(&server.url(), prefix).await.expect("connect to redis")
}

/// Retries `f` while Redis answers `Unavailable`, for `within` at most.
async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StateError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(StateError::Unavailable(e)) if Instant::now() < deadline => {
                eprintln!("still unavailable: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no success within {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_working_across_a_redis_restart() {
    let mut server = RedisServer::start_durable();
    let options = RedisStateOptions { command_timeout: Duration::from_secs(1), connect_timeout: Duration::from_millis(500) };
    let s = RedisStateStore::connect_with(&server.url(), "imgfleet:", options).await.unwrap();
    s.create_job(&job("j")).await.unwrap();
    s.set_job_status("j", JobStatus::Running, None).await.unwrap();
    for item in ["/a", "/b", "/c"] {
        assert!(s.record_discovered("j", item).await.unwrap());
    }
    assert!(s.record_outcome("j", "/a", &ItemOutcome::Processed).await.unwrap());
    store_done(&s, "c", "h1", "p1").await;
    s.set_active_collection("holiday").await.unwrap();

    tokio::task::block_in_place(|| server.stop());
    // During the outage calls fail fast with Unavailable; they never hang.
    for _ in 0..3 {
        let started = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(10), s.record_outcome("j", "/b", &ItemOutcome::Processed))
            .await
            .expect("a call during the outage must not hang");
        assert!(matches!(got, Err(StateError::Unavailable(_))), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
    let got = tokio::time::timeout(Duration::from_secs(10), s.claim("c", "h2", "w", TTL, None)).await.expect("no hang");
    assert!(matches!(got, Err(StateError::Unavailable(_))), "{got:?}");

    tokio::task::block_in_place(|| server.start_again());
    // The same store (its ConnectionManager) reconnects by itself.
    let j = eventually(Duration::from_secs(20), || s.job("j")).await.expect("the job survived the restart");
    assert_eq!((j.status, j.counts.discovered, j.counts.processed), (JobStatus::Running, 3, 1));
    assert_eq!(s.dedup_entry("c", "h1").await.unwrap(), Some(DedupEntry::Done { point_id: "p1".into() }));
    assert_eq!(s.active_collection().await.unwrap().as_deref(), Some("holiday"));
    // Item flags survived: nothing is counted twice after the restart.
    assert!(!s.record_outcome("j", "/a", &ItemOutcome::Processed).await.unwrap());
    assert!(s.record_outcome("j", "/b", &ItemOutcome::Processed).await.unwrap());
    assert!(s.record_outcome("j", "/c", &ItemOutcome::Failed { reason: "bad".into() }).await.unwrap());
    s.mark_scan_complete("j").await.unwrap();
    let done = s.complete_if_done("j").await.unwrap().expect("completes");
    assert_eq!((done.counts.discovered, done.counts.processed, done.counts.failed), (3, 2, 1));
    assert!(s.claim("c", "h2", "w", TTL, None).await.unwrap().is_acquired());

    // A second restart with the store idle in between.
    tokio::task::block_in_place(|| server.restart());
    let j = eventually(Duration::from_secs(20), || s.job("j")).await.unwrap();
    assert_eq!(j.status, JobStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_a_server_is_unavailable() {
    let mut server = RedisServer::start();
    let url = server.url();
    tokio::task::block_in_place(|| server.stop());
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(20), RedisStateStore::connect(&url, "imgfleet:"))
        .await
        .expect("connect must not hang");
    assert!(matches!(got, Err(StateError::Unavailable(_))), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let got = RedisStateStore::connect("http://not-redis", "imgfleet:").await;
    assert!(matches!(got, Err(StateError::Internal(_))), "a bad url is no outage: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_exact_with_8_writers_over_2_connections() {
    let server = RedisServer::start();
    let stores: [Arc<RedisStateStore>; 2] =
        [Arc::new(connect(&server, "imgfleet:").await), Arc::new(connect(&server, "imgfleet:").await)];
    stores[0].create_job(&job("j")).await.unwrap();
    stores[1].set_job_status("j", JobStatus::Running, None).await.unwrap();
    const ITEMS: usize = 200;
    let outcome = |i: usize, w: usize| match i % 5 {
        0 => ItemOutcome::Failed { reason: format!("worker {w}") },
        1 => ItemOutcome::Duplicate { existing_id: format!("p{i}") },
        _ => ItemOutcome::Processed,
    };
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let s = Arc::clone(&stores[w % 2]);
            tokio::spawn(async move {
                let (mut discovered, mut settled) = (0u64, 0u64);
                // Each writer reports every item twice, in its own order, as redeliveries would.
                for round in 0..2 {
                    for k in 0..ITEMS {
                        let i = (k * (w + 1) + round * 7) % ITEMS;
                        let item = format!("/img/{i}");
                        if w % 3 != 0 {
                            discovered += u64::from(s.record_discovered("j", &item).await.unwrap());
                        }
                        settled += u64::from(s.record_outcome("j", &item, &outcome(i, w)).await.unwrap());
                    }
                }
                (discovered, settled)
            })
        })
        .collect();
    let (mut discovered, mut settled) = (0, 0);
    for t in tasks {
        let (d, s) = t.await.unwrap();
        discovered += d;
        settled += s;
    }
    assert_eq!(settled, ITEMS as u64, "each item was counted settled by exactly one call");
    assert!(discovered <= ITEMS as u64);
    for s in &stores {
        let j = s.job("j").await.unwrap().unwrap();
        let c = j.counts;
        assert_eq!((c.discovered, c.processed, c.duplicates, c.failed), (200, 120, 40, 40));
        assert_eq!(j.logs.len(), MAX_JOB_LOG_LINES.min(80), "one line per failure or duplicate");
        assert!(s.unsettled_items("j").await.unwrap().is_empty());
    }

    // Completion across both connections is reported once.
    stores[0].mark_scan_complete("j").await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let s = Arc::clone(&stores[w % 2]);
            tokio::spawn(async move { s.complete_if_done("j").await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(winners, 1);

    // One claim winner across both connections.
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let s = Arc::clone(&stores[w % 2]);
            tokio::spawn(async move { s.claim("c", "same", &format!("w{w}"), TTL, None).await.unwrap() })
        })
        .collect();
    let mut acquired = 0;
    for t in tasks {
        acquired += usize::from(t.await.unwrap().is_acquired());
    }
    assert_eq!(acquired, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_items_walks_a_big_job() {
    let server = RedisServer::start();
    let s = connect(&server, "imgfleet:").await;
    assert!(s.unsettled_items("nope").await.unwrap().is_empty());
    s.create_job(&job("j")).await.unwrap();
    // Big enough for a real hash table (not a listpack), so HSCAN takes several steps.
    let mut expected = BTreeSet::new();
    for i in 0..2500 {
        let item = format!("/p/{i:05}");
        s.record_discovered("j", &item).await.unwrap();
        if i % 3 == 0 {
            s.record_outcome("j", &item, &ItemOutcome::Processed).await.unwrap();
        } else {
            expected.insert(item);
        }
    }
    // An outcome for an undiscovered item settles it: never unsettled.
    s.record_outcome("j", "/late", &ItemOutcome::Failed { reason: "x".into() }).await.unwrap();
    let got = s.unsettled_items("j").await.unwrap();
    assert_eq!(got, expected.into_iter().collect::<Vec<_>>(), "unsettled items, in key order");
    let j = s.job("j").await.unwrap().unwrap();
    assert_eq!((j.counts.discovered, j.counts.settled()), (2501, 835));
}

/// Deletes those of KEYS that hold a claim (not a done entry); returns how many.
const VOID_CLAIMS_LUA: &str = r"
local n = 0
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, 2) == 'c:' then
    n = n + redis.call('DEL', key)
  end
end
return n
";

/// Voids every live dedup claim under `prefix` (walked with `SCAN`; done entries stay), as an
/// operator could once a whole fleet is stopped. No fleet process does this (a claim of a
/// running worker would be voided too), so it lives here rather than in `RedisStateStore`: the
/// test below checks that the store takes claims voided under it as gone. Returns how many.
async fn void_claims(server: &RedisServer, prefix: &str) -> u64 {
    let mut con = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(VOID_CLAIMS_LUA);
    // The prefix as a SCAN MATCH pattern: its glob characters escaped.
    let escaped: String = prefix.chars().flat_map(|c| ["*?[]\\".contains(c).then_some('\\'), Some(c)]).flatten().collect();
    let pattern = format!("{escaped}dedup:*");
    let mut voided = 0u64;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(&mut con).await.unwrap();
        if !keys.is_empty() {
            let mut inv = script.prepare_invoke();
            for key in &keys {
                inv.key(key.as_slice());
            }
            voided += inv.invoke_async::<u64>(&mut con).await.unwrap();
        }
        cursor = next;
        if cursor == 0 {
            return voided;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn void_claims_keeps_done_entries_and_other_prefixes() {
    let server = RedisServer::start();
    let s = connect(&server, "imgfleet:").await;
    let other = connect(&server, "other:").await;
    for i in 0..1500 {
        let coll = if i % 2 == 0 { "c" } else { "d" };
        assert!(s.claim(coll, &format!("h{i}"), "dead-worker", TTL, None).await.unwrap().is_acquired());
    }
    for i in 0..10 {
        store_done(&s, "c", &format!("done{i}"), &format!("p{i}")).await;
    }
    other.claim("c", "h0", "someone", TTL, None).await.unwrap();
    assert_eq!(void_claims(&server, "imgfleet:").await, 1500);
    assert_eq!(void_claims(&server, "imgfleet:").await, 0);
    assert_eq!(s.dedup_entry("c", "h0").await.unwrap(), None);
    assert!(s.claim("c", "h0", "new-worker", TTL, None).await.unwrap().is_acquired());
    assert_eq!(s.dedup_entry("c", "done3").await.unwrap(), Some(DedupEntry::Done { point_id: "p3".into() }));
    assert!(matches!(other.dedup_entry("c", "h0").await.unwrap(), Some(DedupEntry::Claimed { ref owner, .. }) if owner == "someone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_dedup_is_scoped_by_collection_and_prefix() {
    let server = RedisServer::start();
    // Prefixes and names with glob characters must not match more than themselves.
    let s = connect(&server, "img*:").await;
    let other = connect(&server, "imgx:").await;
    for i in 0..2500 {
        store_done(&s, "c", &format!("h{i}"), "p").await;
    }
    store_done(&s, "c*", "h", "p").await;
    store_done(&s, "c:x", "h", "p").await;
    store_done(&s, "cx", "h", "p").await;
    store_done(&other, "c", "h1", "p").await;
    s.claim("c", "claimed", "w", TTL, None).await.unwrap();

    assert_eq!(s.clear_dedup(Some("c")).await.unwrap(), 2501);
    assert_eq!(s.dedup_entry("c", "h7").await.unwrap(), None);
    for coll in ["c*", "c:x", "cx"] {
        assert!(s.dedup_entry(coll, "h").await.unwrap().is_some(), "{coll} untouched");
    }
    assert_eq!(s.clear_dedup(Some("c*")).await.unwrap(), 1);
    assert!(s.dedup_entry("cx", "h").await.unwrap().is_some());
    assert_eq!(s.clear_dedup(None).await.unwrap(), 2);
    assert_eq!(other.dedup_entry("c", "h1").await.unwrap(), Some(DedupEntry::Done { point_id: "p".into() }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_separate_jobs_and_settings() {
    let server = RedisServer::start();
    let a = connect(&server, "a:").await;
    let b = connect(&server, "b:").await;
    a.create_job(&job("j")).await.unwrap();
    a.set_active_collection("alpha").await.unwrap();
    assert_eq!(b.job("j").await.unwrap(), None);
    assert!(b.list_jobs(10).await.unwrap().is_empty());
    assert_eq!(b.active_collection().await.unwrap(), None);
    b.create_job(&job("j")).await.unwrap();
    b.record_discovered("j", "/x").await.unwrap();
    assert_eq!(a.job("j").await.unwrap().unwrap().counts.discovered, 0);
    assert_eq!(a.list_jobs(0).await.unwrap(), Vec::new());

    // Ids and items with separators and odd characters stay distinct.
    a.create_job(&job("j:items")).await.unwrap();
    a.record_discovered("j:items", "weird item: *?[]").await.unwrap();
    assert_eq!(a.unsettled_items("j:items").await.unwrap(), vec!["weird item: *?[]"]);
    assert!(a.unsettled_items("j").await.unwrap().is_empty());
    assert_eq!(a.list_jobs(10).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_job_goes_as_a_whole() {
    let server = RedisServer::start();
    let s = connect(&server, "imgfleet:").await;
    for id in ["old", "new"] {
        s.create_job(&job(id)).await.unwrap();
        s.record_discovered(id, "/a").await.unwrap();
        s.append_log(id, "line").await.unwrap();
    }
    s.set_job_status("old", JobStatus::Failed, Some("gone".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.purge_finished_jobs(Duration::from_millis(10)).await.unwrap(), 1);
    assert_eq!(s.job("old").await.unwrap(), None);
    assert!(s.unsettled_items("old").await.unwrap().is_empty(), "item flags went with the record");
    let listed: Vec<String> = s.list_jobs(10).await.unwrap().into_iter().map(|j| j.job_id).collect();
    assert_eq!(listed, vec!["new"]);
    let mut con = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS").arg("imgfleet:job:old*").query_async(&mut con).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    let finished: u64 = redis::cmd("ZCARD").arg("imgfleet:jobs:finished").query_async(&mut con).await.unwrap();
    assert_eq!(finished, 0);
    // The id can be used again, from scratch.
    s.create_job(&job("old")).await.unwrap();
    assert!(s.record_discovered("old", "/a").await.unwrap());
    assert_eq!(s.job("old").await.unwrap().unwrap().logs, Vec::<String>::new());
}

/// A job record that cannot be read is set aside: listed jobs skip it, and the other jobs'
/// reads and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_job_record_is_set_aside() {
    let server = RedisServer::start();
    let s = connect(&server, "imgfleet:").await;
    for id in ["good", "bad"] {
        s.create_job(&job(id)).await.unwrap();
    }
    let mut con = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET").arg("imgfleet:job:bad").arg("base").arg("{not json").query_async(&mut con).await.unwrap();
    let listed: Vec<String> = s.list_jobs(10).await.unwrap().into_iter().map(|j| j.job_id).collect();
    assert_eq!(listed, vec!["good"]);
    assert_eq!(s.job("bad").await.unwrap(), None);
    assert!(s.record_discovered("good", "/a").await.unwrap());
    assert_eq!(s.active_jobs().await.unwrap().into_iter().map(|j| j.job_id).collect::<Vec<_>>(), ["good"]);
    let kept: bool = redis::cmd("EXISTS").arg("imgfleet:damaged:job:bad").query_async(&mut con).await.unwrap();
    assert!(kept, "the damaged record is kept for a look");
}
