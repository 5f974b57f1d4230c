//! The `imgfleet serve` binary: data and the selected collection survive a restart.

use imgfleet_core::ports::VectorStore;
use imgfleet_embedded::EdgeVectorStore;
use imgfleet_tests::contract::vectors::{point, vec4};
use imgfleet_tests::harness::ChildProcess;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_collections_points_and_selection_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let serve = ChildProcess::serve_tiny(dir.path(), None, false);
    let created = client
        .post(serve.url("/api/v1/collections"))
        .json(&json!({"collection_name": "holiday", "vector_size": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let selected = client
        .post(serve.url("/api/v1/collections/select"))
        .json(&json!({"collection_name": "holiday"}))
        .send()
        .await
        .unwrap();
    assert_eq!(selected.status(), StatusCode::OK);
    assert!(serve.terminate().success(), "SIGTERM ends serve cleanly");

    // Points go in through the store while the server is down (the store is single-process).
    {
        let store = EdgeVectorStore::open(dir.path()).unwrap();
        store.upsert("holiday", (0..7).map(|n| point(n, vec4(n))).collect()).await.unwrap();
    }

    for round in 0..2 {
        let serve = ChildProcess::serve_tiny(dir.path(), None, false);
        let names: Value = client.get(serve.url("/api/v1/collections")).send().await.unwrap().json().await.unwrap();
        assert_eq!(names, json!(["holiday", "images"]), "round {round}");
        let page: Value = client.get(serve.url("/api/v1/images?per_page=100")).send().await.unwrap().json().await.unwrap();
        assert_eq!(page["total"], 7, "round {round}: the selected collection and its points survive");
        let hits: Value = client
            .post(serve.url("/api/v1/search"))
            .json(&json!({"embedding": vec4(5), "limit": 1}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(hits[0]["id"], point(5, vec![]).id.to_string(), "round {round}");
        assert!(serve.terminate().success());
    }
}
