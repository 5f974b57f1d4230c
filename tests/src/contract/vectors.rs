//! `VectorStore` contract.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use imgfleet_core::domain::{CollectionName, CollectionSpec, Distance, ImagePoint, ListQuery, SearchQuery};
use imgfleet_core::filter::{FilterExpr, SortSpec};
use imgfleet_core::ports::{VectorError, VectorStore};
use serde_json::{Value, json};
use uuid::Uuid;

/// Opens the adapter under test; a second `open` after the first store is dropped must see
/// the same data.
#[async_trait]
pub trait VectorFixture: Send + Sync {
    async fn open(&self) -> Arc<dyn VectorStore>;
}

#[macro_export]
macro_rules! vector_store_contract {
    ($fixture:expr) => {
        $crate::contract_case!(collections_lifecycle, $crate::contract::vectors::collections_lifecycle, $fixture);
        $crate::contract_case!(upsert_get_count_delete, $crate::contract::vectors::upsert_get_count_delete, $fixture);
        $crate::contract_case!(bad_vectors_and_unknown_collections, $crate::contract::vectors::bad_vectors_and_unknown_collections, $fixture);
        $crate::contract_case!(search_nearest_first, $crate::contract::vectors::search_nearest_first, $fixture);
        $crate::contract_case!(filters_match_exactly, $crate::contract::vectors::filters_match_exactly, $fixture);
        $crate::contract_case!(list_pages_and_sorts, $crate::contract::vectors::list_pages_and_sorts, $fixture);
        $crate::contract_case!(scroll_walks_everything_once, $crate::contract::vectors::scroll_walks_everything_once, $fixture);
        $crate::contract_case!(random_returns_members, $crate::contract::vectors::random_returns_members, $fixture);
        $crate::contract_case!(set_payload_merges, $crate::contract::vectors::set_payload_merges, $fixture);
        $crate::contract_case!(persists_across_reopen, $crate::contract::vectors::persists_across_reopen, $fixture);
    };
}

pub fn spec(name: &str, size: usize, distance: Distance) -> CollectionSpec {
    CollectionSpec { name: CollectionName::parse(name).unwrap(), vector_size: size, distance }
}

/// A point with a payload shaped like an ingested image.
pub fn point(n: u32, vector: Vec<f32>) -> ImagePoint {
    let camera = ["Canon", "Nikon", "Sony"][(n % 3) as usize];
    let payload = json!({
        "sha256": format!("{n:064x}"),
        "path": format!("/photos/{n}.jpg"),
        "paths": [format!("/photos/{n}.jpg"), format!("/copies/{n}.jpg")],
        "filename": format!("{n}.jpg"),
        "width": 100 + n,
        "height": 50 + (n % 7),
        "format": if n % 2 == 0 { "jpeg" } else { "png" },
        "bytes": 1000 * u64::from(n),
        "taken_at": format!("2024-01-{:02}T12:00:00Z", 1 + n % 28),
        "camera_make": camera,
        "caption": if n % 5 == 0 { format!("a dog number {n} on a beach") } else { format!("a cat number {n} indoors") },
        "ingested_at": "2026-01-01T00:00:00Z",
    });
    let Value::Object(map) = payload else { unreachable!() };
    ImagePoint { id: Uuid::from_u128(u128::from(n) + 1), vector, payload: map }
}

/// A unit-ish vector in 4 dimensions, distinct per n.
pub fn vec4(n: u32) -> Vec<f32> {
    let a = n as f32 * 0.37;
    vec![a.cos(), a.sin(), (a * 0.5).cos(), 0.1 * (n % 3) as f32]
}

fn filter(v: Value) -> FilterExpr {
    FilterExpr::parse(&v).unwrap().unwrap()
}

fn ids(records: impl IntoIterator<Item = Uuid>) -> Vec<Uuid> {
    records.into_iter().collect()
}

async fn seeded(store: &dyn VectorStore, name: &str, n: u32) {
    store.create_collection(&spec(name, 4, Distance::Cosine)).await.unwrap();
    store.upsert(name, (0..n).map(|i| point(i, vec4(i))).collect()).await.unwrap();
}

pub async fn collections_lifecycle(f: &dyn VectorFixture) {
    let store = f.open().await;
    assert!(store.list_collections().await.unwrap().is_empty());
    store.create_collection(&spec("b", 3, Distance::Dot)).await.unwrap();
    store.create_collection(&spec("a", 4, Distance::Cosine)).await.unwrap();
    assert!(matches!(store.create_collection(&spec("a", 4, Distance::Cosine)).await, Err(VectorError::CollectionExists(_))));
    let listed = store.list_collections().await.unwrap();
    let summary: Vec<_> = listed.iter().map(|c| (c.name.as_str(), c.vector_size, c.distance, c.points)).collect();
    assert_eq!(summary, vec![("a", 4, Distance::Cosine, 0), ("b", 3, Distance::Dot, 0)]);
    store.delete_collection("a").await.unwrap();
    assert!(matches!(store.collection("a").await, Err(VectorError::CollectionNotFound(_))));
    assert!(matches!(store.delete_collection("a").await, Err(VectorError::CollectionNotFound(_))));
    assert_eq!(store.list_collections().await.unwrap().len(), 1);
    // A deleted name can be created again, empty.
    store.create_collection(&spec("a", 2, Distance::Euclid)).await.unwrap();
    assert_eq!(store.collection("a").await.unwrap().vector_size, 2);
    assert_eq!(store.collection("a").await.unwrap().points, 0);
}

pub async fn upsert_get_count_delete(f: &dyn VectorFixture) {
    let store = f.open().await;
    seeded(&*store, "c", 3).await;
    assert_eq!(store.count("c", None).await.unwrap(), 3);
    let missing = Uuid::from_u128(999);
    let asked = [point(2, vec![]).id, missing, point(0, vec![]).id];
    let got = store.get("c", &asked, true).await.unwrap();
    assert_eq!(ids(got.iter().map(|r| r.id)), vec![asked[0], asked[2]]);
    assert_eq!(got[0].payload["filename"], "2.jpg");
    let v = got[0].vector.as_ref().expect("vector asked for");
    let expected = vec4(2);
    let norm: f32 = expected.iter().map(|x| x * x).sum::<f32>().sqrt();
    // Cosine stores may normalise; the direction must be kept.
    let cos: f32 = v.iter().zip(&expected).map(|(a, b)| a * b).sum::<f32>() / norm / v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((cos - 1.0).abs() < 1e-5, "stored vector changed direction: {cos}");
    // Upsert by the same id replaces.
    let mut replaced = point(1, vec4(1));
    replaced.payload.insert("caption".into(), json!("replaced"));
    store.upsert("c", vec![replaced.clone()]).await.unwrap();
    assert_eq!(store.count("c", None).await.unwrap(), 3);
    let got = store.get("c", &[replaced.id], false).await.unwrap();
    assert_eq!(got[0].payload["caption"], "replaced");
    assert!(got[0].vector.is_none());
    store.delete_points("c", &[replaced.id]).await.unwrap();
    assert_eq!(store.count("c", None).await.unwrap(), 2);
    assert!(store.get("c", &[replaced.id], false).await.unwrap().is_empty());
    assert_eq!(store.collection("c").await.unwrap().points, 2);
}

pub async fn bad_vectors_and_unknown_collections(f: &dyn VectorFixture) {
    let store = f.open().await;
    seeded(&*store, "c", 2).await;
    let wrong = store.upsert("c", vec![point(9, vec![1.0, 2.0])]).await;
    assert!(matches!(wrong, Err(VectorError::Invalid(ref m)) if m.contains("dimensions")), "{wrong:?}");
    let nan = store.upsert("c", vec![point(9, vec![1.0, f32::NAN, 0.0, 0.0])]).await;
    assert!(matches!(nan, Err(VectorError::Invalid(_))), "{nan:?}");
    assert_eq!(store.count("c", None).await.unwrap(), 2, "a rejected batch writes nothing");
    let query = SearchQuery { vector: vec![1.0; 5], filter: None, limit: 3, offset: 0, score_threshold: None, with_vector: false };
    assert!(matches!(store.search("c", &query).await, Err(VectorError::Invalid(_))));
    let nf = |r: Result<(), VectorError>| assert!(matches!(r, Err(VectorError::CollectionNotFound(ref n)) if n == "nope"), "{r:?}");
    nf(store.upsert("nope", vec![point(1, vec4(1))]).await);
    nf(store.search("nope", &SearchQuery { vector: vec4(1), ..query.clone() }).await.map(|_| ()));
    nf(store.list("nope", &ListQuery { filter: None, sort: None, offset: 0, limit: 1 }).await.map(|_| ()));
    nf(store.count("nope", None).await.map(|_| ()));
    nf(store.get("nope", &[Uuid::nil()], false).await.map(|_| ()));
    nf(store.random("nope", 1, None).await.map(|_| ()));
    nf(store.scroll("nope", None, 1, false).await.map(|_| ()));
    nf(store.delete_points("nope", &[Uuid::nil()]).await);
}

pub async fn search_nearest_first(f: &dyn VectorFixture) {
    let store = f.open().await;
    seeded(&*store, "c", 40).await;
    let target = point(17, vec4(17));
    let query = SearchQuery { vector: vec4(17), filter: None, limit: 5, offset: 0, score_threshold: None, with_vector: false };
    let hits = store.search("c", &query).await.unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0].id, target.id, "exact match first");
    assert!((hits[0].score - 1.0).abs() < 1e-4, "identical vector scores 1, got {}", hits[0].score);
    assert_eq!(hits[0].payload["filename"], "17.jpg");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "scores descend");
    // Offset continues the same ranking.
    let next = store.search("c", &SearchQuery { offset: 5, ..query.clone() }).await.unwrap();
    let all = store.search("c", &SearchQuery { limit: 10, ..query.clone() }).await.unwrap();
    assert_eq!(ids(hits.iter().chain(&next).map(|h| h.id)), ids(all.iter().map(|h| h.id)));
    // Threshold and filter.
    let cut = hits[2].score;
    let above = store.search("c", &SearchQuery { limit: 40, score_threshold: Some(cut), ..query.clone() }).await.unwrap();
    assert!(above.len() >= 3 && above.iter().all(|h| h.score >= cut - 1e-6), "cut {cut}: {:?}", above.iter().map(|h| h.score).collect::<Vec<_>>());
    let filtered = store
        .search("c", &SearchQuery { limit: 40, filter: Some(filter(json!({"format": "png"}))), ..query.clone() })
        .await
        .unwrap();
    assert_eq!(filtered.len(), 20);
    assert!(filtered.iter().all(|h| h.payload["format"] == "png"));
}

pub async fn filters_match_exactly(f: &dyn VectorFixture) {
    let store = f.open().await;
    seeded(&*store, "c", 30).await;
    let count = |v: Value| {
        let store = Arc::clone(&store);
        async move { store.count("c", Some(&filter(v))).await.unwrap() }
    };
    let expect = |pred: &dyn Fn(u32) -> bool| (0..30u32).filter(|&n| pred(n)).count() as u64;
    assert_eq!(count(json!({"format": "jpeg"})).await, expect(&|n| n % 2 == 0));
    assert_eq!(count(json!({"camera_make": ["Canon", "Sony"]})).await, expect(&|n| n % 3 != 1));
    assert_eq!(count(json!({"width": {"gte": 110, "lt": 120}})).await, 10);
    assert_eq!(count(json!({"width": 105})).await, 1);
    assert_eq!(count(json!({"taken_at": {"lt": "2024-01-05T00:00:00Z"}})).await, expect(&|n| 1 + n % 28 < 5));
    assert_eq!(count(json!({"caption": "dog beach"})).await, expect(&|n| n % 5 == 0));
    assert_eq!(count(json!({"not": {"format": "jpeg"}})).await, expect(&|n| n % 2 == 1));
    assert_eq!(count(json!({"any": [{"width": 100}, {"width": 101}]})).await, 2);
    assert_eq!(count(json!({"path": "/copies/7.jpg"})).await, 1, "path matches any of an image's paths");
    assert_eq!(
        count(json!({"all": [{"format": "png"}, {"not": {"caption": "dog"}}], "bytes": {"gt": 10000}})).await,
        expect(&|n| n % 2 == 1 && n % 5 != 0 && 1000 * n > 10000)
    );
}

pub async fn list_pages_and_sorts(f: &dyn VectorFixture) {
    let store = f.open().await;
    seeded(&*store, "c", 25).await;
    let page = |offset, sort: Option<SortSpec>, filter_v: Option<Value>| {
        let store = Arc::clone(&store);
        async move {
            let query = ListQuery { filter: filter_v.map(filter), sort, offset, limit: 10 };
            store.list("c", &query).await.unwrap()
        }
    };
    let (p1, p2, p3) = (page(0, None, None).await, page(10, None, None).await, page(20, None, None).await);
    assert_eq!((p1.total, p2.total, p3.total), (25, 25, 25));
    assert_eq!((p1.items.len(), p2.items.len(), p3.items.len()), (10, 10, 5), "last page is short");
    let seen: HashSet<Uuid> = p1.items.iter().chain(&p2.items).chain(&p3.items).map(|r| r.id).collect();
    assert_eq!(seen.len(), 25, "pages are disjoint and cover everything");

    for (order, expect_first) in [("asc", 100), ("desc", 124)] {
        let sort = SortSpec::parse("width", Some(order)).unwrap();
        let mut widths = Vec::new();
        for offset in [0, 10, 20] {
            let p = page(offset, Some(sort.clone()), None).await;
            widths.extend(p.items.iter().map(|r| r.payload["width"].as_u64().unwrap()));
        }
        assert_eq!(widths.len(), 25);
        assert_eq!(widths[0], expect_first);
        let mut sorted = widths.clone();
        sorted.sort();
        if order == "desc" {
            sorted.reverse();
        }
        assert_eq!(widths, sorted, "{order} order across pages");
    }

    let sort = SortSpec::parse("taken_at", Some("desc")).unwrap();
    let filtered = page(0, Some(sort), Some(json!({"format": "png"}))).await;
    assert_eq!(filtered.total, 12);
    assert!(filtered.items.iter().all(|r| r.payload["format"] == "png"));
    let times: Vec<&str> = filtered.items.iter().map(|r| r.payload["taken_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
}

pub async fn scroll_walks_everything_once(f: &dyn VectorFixture) {
    let store = f.open().await;
    seeded(&*store, "c", 23).await;
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.scroll("c", after, 7, true).await.unwrap();
        assert!(page.items.len() <= 7);
        assert!(page.items.iter().all(|r| r.vector.as_ref().is_some_and(|v| v.len() == 4)));
        seen.extend(page.items.iter().map(|r| r.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (23, 23));
}

pub async fn random_returns_members(f: &dyn VectorFixture) {
    let store = f.open().await;
    store.create_collection(&spec("empty", 4, Distance::Cosine)).await.unwrap();
    assert!(store.random("empty", 1, None).await.unwrap().is_empty());
    seeded(&*store, "c", 12).await;
    let members: HashSet<Uuid> = (0..12).map(|n| point(n, vec![]).id).collect();
    let mut drawn = HashSet::new();
    for _ in 0..20 {
        let picked = store.random("c", 1, None).await.unwrap();
        assert_eq!(picked.len(), 1);
        assert!(members.contains(&picked[0].id));
        drawn.insert(picked[0].id);
    }
    assert!(drawn.len() > 1, "20 draws from 12 images gave one image every time");
    let pngs = store.random("c", 3, Some(&filter(json!({"format": "png"})))).await.unwrap();
    assert_eq!(pngs.len(), 3);
    assert!(pngs.iter().all(|r| r.payload["format"] == "png"));
}

pub async fn set_payload_merges(f: &dyn VectorFixture) {
    let store = f.open().await;
    seeded(&*store, "c", 2).await;
    let id = point(1, vec![]).id;
    let mut extra = serde_json::Map::new();
    extra.insert("paths".into(), json!(["/photos/1.jpg", "/elsewhere/1.jpg"]));
    store.set_payload("c", id, extra).await.unwrap();
    let got = store.get("c", &[id], false).await.unwrap();
    assert_eq!(got[0].payload["paths"], json!(["/photos/1.jpg", "/elsewhere/1.jpg"]));
    assert_eq!(got[0].payload["filename"], "1.jpg", "other keys are kept");
    assert_eq!(store.count("c", Some(&filter(json!({"path": "/elsewhere/1.jpg"})))).await.unwrap(), 1);
    let missing = store.set_payload("c", Uuid::from_u128(777), serde_json::Map::new()).await;
    assert!(matches!(missing, Err(VectorError::Invalid(_))), "{missing:?}");
}

pub async fn persists_across_reopen(f: &dyn VectorFixture) {
    {
        let store = f.open().await;
        seeded(&*store, "kept", 5).await;
        store.create_collection(&spec("gone", 4, Distance::Cosine)).await.unwrap();
        store.delete_collection("gone").await.unwrap();
    }
    let store = f.open().await;
    let names: Vec<String> = store.list_collections().await.unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(names, vec!["kept"]);
    assert_eq!(store.count("kept", None).await.unwrap(), 5);
    let hits = store
        .search("kept", &SearchQuery { vector: vec4(3), filter: None, limit: 1, offset: 0, score_threshold: None, with_vector: false })
        .await
        .unwrap();
    assert_eq!(hits[0].id, point(3, vec![]).id);
}
