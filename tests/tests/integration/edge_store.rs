//! qdrant-edge specifics beyond the contract: background optimisation builds HNSW and
//! search stays exact through it.

use imgfleet_core::domain::{Distance, SearchQuery};
use imgfleet_core::filter::FilterExpr;
use imgfleet_core::ports::VectorStore;
use imgfleet_embedded::{EdgeStoreOptions, EdgeVectorStore};
use imgfleet_tests::contract::vectors::{point, spec};
use serde_json::json;

fn vector(n: u32) -> Vec<f32> {
    // Deterministic pseudo-random 32-d vectors: distinct enough that each is its own nearest.
    let mut x = n.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimisation_builds_hnsw_and_search_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeVectorStore::open_with(dir.path(), EdgeStoreOptions { indexing_threshold_kb: Some(16), ..EdgeStoreOptions::default() }).unwrap();
    store.create_collection(&spec("big", 32, Distance::Cosine)).await.unwrap();
    for chunk in (0..3000u32).collect::<Vec<_>>().chunks(500) {
        store.upsert("big", chunk.iter().map(|&n| point(n, vector(n))).collect()).await.unwrap();
    }
    assert_eq!(store.stats("big").unwrap().indexed_vectors, 0, "writes alone build no index");

    // The background task optimises a collection once writes stop (checked every 2 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.stats("big").unwrap().indexed_vectors == 0 {
        assert!(std::time::Instant::now() < deadline, "no HNSW index within 60 s: {:?}", store.stats("big"));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let stats = store.stats("big").unwrap();
    assert_eq!(stats.points, 3000);
    assert!(stats.indexed_vectors > 0, "{stats:?}");

    assert_eq!(store.count("big", None).await.unwrap(), 3000);
    for n in (0..3000).step_by(97) {
        let hits = store
            .search("big", &SearchQuery { vector: vector(n), filter: None, limit: 1, offset: 0, score_threshold: None, with_vector: false })
            .await
            .unwrap();
        assert_eq!(hits[0].id, point(n, vec![]).id, "point {n} is its own nearest neighbour after indexing");
    }
    let pngs = FilterExpr::parse(&json!({"format": "png", "width": {"lt": 200}})).unwrap();
    assert_eq!(store.count("big", pngs.as_ref()).await.unwrap(), 50);
}
