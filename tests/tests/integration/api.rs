//! The API served on port 0 over qdrant-edge and redb in a temp dir; points are put in
//! through the store, everything else goes through HTTP.

use std::collections::HashSet;

use imgfleet_core::domain::{Distance, ImagePoint};
use imgfleet_tests::contract::vectors::{point, spec, vec4};
use imgfleet_tests::harness::ApiServer;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

async fn seeded(n: u32) -> (tempfile::TempDir, ApiServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path()).await;
    server.vectors.upsert("images", (0..n).map(|i| point(i, vec4(i))).collect()).await.unwrap();
    (dir, server)
}

async fn get(server: &ApiServer, path: &str) -> (StatusCode, Value) {
    let response = Client::new().get(server.url(path)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(server: &ApiServer, path: &str, body: Value) -> (StatusCode, Value) {
    let response = Client::new().post(server.url(path)).json(&body).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post_raw(server: &ApiServer, path: &str, body: &str) -> (StatusCode, Value) {
    let response = Client::new()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every error has `{"error": {"code", "message"}}` with a non-empty message.
fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

fn id_of(n: u32) -> String {
    point(n, vec![]).id.to_string()
}

fn query(v: &Value) -> String {
    url_escape(&v.to_string())
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_returns_the_exact_neighbour_first_with_its_score() {
    let (_dir, server) = seeded(40).await;
    let (status, hits) = post(&server, "/api/v1/search", json!({"embedding": vec4(17), "limit": 3})).await;
    assert_eq!(status, StatusCode::OK, "{hits}");
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["id"], id_of(17));
    assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4, "{}", hits[0]);
    assert_eq!(hits[0]["payload"]["filename"], "17.jpg");

    let (_, filtered) =
        post(&server, "/api/v1/search", json!({"embedding": vec4(17), "limit": 50, "filters": {"format": "jpeg", "width": {"lt": 120}}})).await;
    let filtered = filtered.as_array().unwrap();
    assert_eq!(filtered.len(), 10, "even n below 20");
    assert!(filtered.iter().all(|h| h["payload"]["format"] == "jpeg" && h["payload"]["width"].as_u64().unwrap() < 120));

    let (_, page2) = post(&server, "/api/v1/search", json!({"embedding": vec4(17), "limit": 3, "offset": 3})).await;
    let (_, six) = post(&server, "/api/v1/search", json!({"embedding": vec4(17), "limit": 6})).await;
    assert_eq!(page2.as_array().unwrap()[..], six.as_array().unwrap()[3..]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_pages_filters_and_sorts() {
    let (_dir, server) = seeded(45).await;
    let (status, p1) = get(&server, "/api/v1/images?page=1&per_page=20").await;
    assert_eq!(status, StatusCode::OK, "{p1}");
    let (_, p2) = get(&server, "/api/v1/images?page=2&per_page=20").await;
    let (_, p3) = get(&server, "/api/v1/images?page=3&per_page=20").await;
    assert_eq!((p1["total"].as_u64(), p1["total_pages"].as_u64()), (Some(45), Some(3)));
    let ids = |p: &Value| p["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!((ids(&p1).len(), ids(&p2).len(), ids(&p3).len()), (20, 20, 5), "the last page is short");
    let all: HashSet<String> = ids(&p1).into_iter().chain(ids(&p2)).chain(ids(&p3)).collect();
    assert_eq!(all.len(), 45, "page 2 differs from page 1 and pages cover everything");
    let (_, past) = get(&server, "/api/v1/images?page=4&per_page=20").await;
    assert!(past["items"].as_array().unwrap().is_empty());
    assert_eq!(past["depth_limited"], false);
    // Listing stops at the first 100,000 images of an ordering: deeper pages are empty, and say why.
    let (status, deep) = get(&server, "/api/v1/images?page=1000&per_page=500").await;
    assert_eq!(status, StatusCode::OK, "{deep}");
    assert_eq!((deep["depth_limited"].as_bool(), deep["total"].as_u64()), (Some(true), Some(45)), "{deep}");
    assert!(deep["items"].as_array().unwrap().is_empty());
    // Without sort_by the order is by id, whatever sort_order says.
    let (status, by_id) = get(&server, "/api/v1/images?per_page=20&sort_order=desc").await;
    assert_eq!((status, ids(&by_id)), (StatusCode::OK, ids(&p1)));

    for (order, first, last) in [("asc", 100, 144), ("desc", 144, 100)] {
        let mut widths = Vec::new();
        for page in 1..=3 {
            let (_, p) = get(&server, &format!("/api/v1/images?page={page}&per_page=20&sort_by=width&sort_order={order}")).await;
            widths.extend(p["items"].as_array().unwrap().iter().map(|i| i["payload"]["width"].as_u64().unwrap()));
        }
        assert_eq!((widths.len(), widths[0], widths[44]), (45, first, last), "{order}: {widths:?}");
        assert!(widths.windows(2).all(|w| if order == "asc" { w[0] <= w[1] } else { w[0] >= w[1] }), "{order}: {widths:?}");
    }

    let f = query(&json!({"camera_make": "Nikon", "caption": "dog"}));
    let (status, nikon_dogs) = get(&server, &format!("/api/v1/images?filters={f}&per_page=100")).await;
    assert_eq!(status, StatusCode::OK, "{nikon_dogs}");
    let expected = (0..45u32).filter(|n| n % 3 == 1 && n % 5 == 0).count() as u64;
    assert_eq!(nikon_dogs["total"].as_u64(), Some(expected));
    assert_eq!(nikon_dogs["items"].as_array().unwrap().len() as u64, expected);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_returns_a_member_and_single_images_resolve() {
    let (_dir, server) = seeded(10).await;
    let members: HashSet<String> = (0..10).map(id_of).collect();
    for _ in 0..5 {
        let (status, body) = get(&server, "/api/v1/random").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = body["image"]["id"].as_str().unwrap();
        assert!(members.contains(id));
        assert_eq!(body["metadata"]["filename"], body["image"]["filename"]);
    }
    let (status, image) = get(&server, &format!("/api/v1/images/{}", id_of(3))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(image["payload"]["filename"], "3.jpg");
    let (status, body) = get(&server, &format!("/api/v1/images/{}", Uuid::nil())).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = get(&server, "/api/v1/images/not-a-uuid").await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");

    server.vectors.create_collection(&spec("empty", 4, Distance::Cosine)).await.unwrap();
    let (status, body) = get(&server, "/api/v1/random?collection=empty").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_groups_planted_near_duplicates_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path()).await;
    // 30 spread-out images; three of them get near-copies (two copies for one of them).
    let base = |n: u32| {
        let a = n as f32 * 0.21;
        vec![a.cos(), a.sin(), 0.0, 0.0]
    };
    let mut points: Vec<ImagePoint> = (0..30).map(|n| point(n, base(n))).collect();
    let copies = [(100, 4, 0.01), (101, 17, 0.012), (102, 17, -0.008), (103, 25, 0.015)];
    for &(id, of, jitter) in &copies {
        let mut v = base(of);
        v[2] = jitter;
        points.push(point(id, v));
    }
    server.vectors.upsert("images", points).await.unwrap();

    let (status, body) = post(&server, "/api/v1/duplicates", json!({"threshold": 0.999})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut groups: Vec<Vec<String>> = body["duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let mut ids: Vec<String> = g["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
            ids.sort();
            ids
        })
        .collect();
    groups.sort();
    let mut expected: Vec<Vec<String>> = vec![
        vec![id_of(4), id_of(100)],
        vec![id_of(17), id_of(101), id_of(102)],
        vec![id_of(25), id_of(103)],
    ]
    .into_iter()
    .map(|mut g| {
        g.sort();
        g
    })
    .collect();
    expected.sort();
    assert_eq!(groups, expected, "each planted group once, nothing else");
    assert_eq!((body["scanned"].as_u64(), body["complete"].as_bool()), (Some(34), Some(true)));
    assert_eq!(body["duplicates"][0]["items"].as_array().unwrap().len(), 3, "largest group first");

    // An empty body uses the defaults; a bad threshold type is a 422.
    let response = Client::new().post(server.url("/api/v1/duplicates")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = post(&server, "/api/v1/duplicates", json!({"threshold": "high"})).await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_lifecycle_and_selection_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path()).await;
    let (_, names) = get(&server, "/api/v1/collections").await;
    assert_eq!(names, json!(["images"]), "the default collection exists from the start");
    let (status, body) = post(&server, "/api/v1/collections", json!({"collection_name": "holiday", "vector_size": 4, "distance": "cosine"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, json!({"message": "created", "collection_name": "holiday"}));
    let (status, body) = post(&server, "/api/v1/collections", json!({"collection_name": "holiday", "vector_size": 4})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "collection_exists");
    let (_, body) = post(&server, "/api/v1/collections", json!({"collection_name": "scratch", "vector_size": 4})).await;
    assert_eq!(body["message"], "created");
    let (_, info) = get(&server, "/api/v1/collections/holiday").await;
    assert_eq!(info, json!({"name": "holiday", "vector_size": 4, "distance": "Cosine", "points": 0}));

    let (status, body) = post(&server, "/api/v1/collections/select", json!({"collection_name": "holiday"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"message": "selected", "collection_name": "holiday"}));
    server.vectors.upsert("holiday", vec![point(1, vec4(1))]).await.unwrap();
    let (_, page) = get(&server, "/api/v1/images").await;
    assert_eq!(page["total"], 1, "requests without a collection use the selected one");

    let response = Client::new().delete(server.url("/api/v1/collections/scratch")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"message": "deleted", "collection_name": "scratch"}));
    let (_, names) = get(&server, "/api/v1/collections").await;
    assert_eq!(names, json!(["holiday", "images"]));
    let (status, body) = get(&server, "/api/v1/images?collection=scratch").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let (status, body) = post(&server, "/api/v1/collections/cache/clear", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["message"], "cache cleared");

    server.stop().await;
    let server = ApiServer::start(dir.path()).await;
    let (_, page) = get(&server, "/api/v1/images").await;
    assert_eq!(page["total"], 1, "the selection and the points survive a restart");
    assert_eq!(page["items"][0]["id"], id_of(1));
    // Deleting the selected collection falls back to the default one.
    let response = Client::new().delete(server.url("/api/v1/collections/holiday")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, page) = get(&server, "/api/v1/images").await;
    assert_eq!((status, page["total"].as_u64()), (StatusCode::OK, Some(0)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_the_error_shape_never_a_500() {
    let (_dir, server) = seeded(5).await;
    let search = "/api/v1/search";
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (json!({"embedding": [1.0, 2.0]}), StatusCode::CONFLICT, "vector_size_mismatch"),
        (json!({"embedding": [1e39, 0, 0, 0]}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": vec4(1), "score_threshold": 1e39}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": vec4(1), "text": "both"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"like_id": "0b6e2c4a3f1e4d2b9c8a7f6e5d4c3b2a"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": []}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": "NaN"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": [1, 2, 3, "x"]}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": vec4(1), "collection": "nope"}), StatusCode::NOT_FOUND, "not_found"),
        (json!({"embedding": vec4(1), "limit": 0}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": vec4(1), "limit": 1_000_000}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": vec4(1), "filters": {"colour": "red"}}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": vec4(1), "filters": {"width": "wide"}}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": vec4(1), "filters": {"width": {"near": 1}}}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": vec4(1), "surprise": true}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (json!({"embedding": vec4(1), "collection": "../etc"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
    ];
    for (body, expected, code) in cases {
        let (status, response) = post(&server, search, body.clone()).await;
        assert_error(status, &response, expected, code);
        println!("{body} -> {}", response["error"]["message"]);
    }
    for raw in ["{\"embedding\": [NaN, 1, 2, 3]}", "{\"embedding\": [1,", "not json"] {
        let (status, response) = post_raw(&server, search, raw).await;
        assert_error(status, &response, StatusCode::BAD_REQUEST, "invalid_json");
    }
    let response = Client::new().post(server.url(search)).body("{}").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    for q in [
        "per_page=0",
        "per_page=1000000",
        "page=0",
        "page=abc",
        "page=100001",
        "sort_by=caption",
        "sort_by=width&sort_order=sideways",
        "sort_order=up",
        "filters=%7Bnope",
        "filters=%7B%22taken_at%22%3A%7B%22gte%22%3A%22soon%22%7D%7D",
        "bogus=1",
    ] {
        let (status, body) = get(&server, &format!("/api/v1/images?{q}")).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }

    let long = "x".repeat(10 * 1024);
    for name in ["a/b", "..", "-x", "", long.as_str(), "spaces are bad", "ünïcode"] {
        let (status, body) = post(&server, "/api/v1/collections", json!({"collection_name": name, "vector_size": 4})).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
        let (status, body) = post(&server, "/api/v1/collections/select", json!({"collection_name": name})).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    for (body, what) in [
        (json!({"collection_name": "ok", "vector_size": 0}), "zero size"),
        (json!({"collection_name": "ok", "vector_size": 10_000_000}), "huge size"),
        (json!({"collection_name": "ok", "distance": "l2"}), "unknown distance"),
        (json!({"collection_name": 7}), "wrong type"),
        (json!({}), "missing name"),
    ] {
        let (status, response) = post(&server, "/api/v1/collections", body).await;
        assert_error(status, &response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
        println!("{what}: {}", response["error"]["message"]);
    }
    let client = Client::new();
    let encoded_long = format!("/api/v1/collections/{long}");
    for (path, expected, code) in [
        ("/api/v1/collections/a/b", StatusCode::NOT_FOUND, "not_found"),
        ("/api/v1/collections/%2E%2E%2Fetc", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (encoded_long.as_str(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("/api/v1/collections/nope", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let response = client.delete(server.url(path)).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_error(status, &body, expected, code);
    }
    let (status, body) = post(&server, "/api/v1/collections/select", json!({"collection_name": "nope"})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = get(&server, "/api/v1/no/such/route").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let response = client.put(server.url("/api/v1/search")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    // A body past the limit (1 MiB in this harness).
    let huge = format!("{{\"embedding\": [{}]}}", vec!["0.5"; 400_000].join(","));
    let (status, body) = post_raw(&server, search, &huge).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Nothing above was a server error.
    let (_, metrics) = (StatusCode::OK, client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap());
    assert!(!metrics.lines().any(|l| l.starts_with("imgfleet_http_requests_total") && l.contains("status=\"5")), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_openapi() {
    let (_dir, server) = seeded(2).await;
    let client = Client::new();
    assert_eq!(get(&server, "/healthz").await, (StatusCode::OK, json!({"status": "ok"})));
    assert_eq!(get(&server, "/readyz").await, (StatusCode::OK, json!({"status": "ready"})));
    get(&server, "/api/v1/collections").await;
    let response = client.get(server.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("imgfleet_http_requests_total{")
            && l.contains("route=\"/api/v1/collections\"")
            && l.contains("status=\"200\"")),
        "{text}"
    );
    assert!(text.contains("imgfleet_http_request_duration_seconds_bucket"));

    let (status, doc) = get(&server, "/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/api/v1/collections", "/api/v1/collections/{name}", "/api/v1/collections/select", "/api/v1/collections/cache/clear", "/api/v1/search", "/api/v1/images", "/api/v1/random", "/api/v1/duplicates", "/api/v1/workers"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"]["SearchRequest"]["properties"]["embedding"].is_object());
    let docs = client.get(server.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let page = docs.text().await.unwrap();
    assert!(page.contains("spec-url=\"api/v1/openapi.json\""), "{page}");
    // Offline: the page's script is served by this server, nothing comes from elsewhere.
    assert!(!page.contains("https://") && !page.contains("http://"), "{page}");
    let script = page.split("<script src=\"").nth(1).and_then(|rest| rest.split('"').next()).expect("the page loads a script");
    let redoc = client.get(server.url(&format!("/{script}"))).send().await.unwrap();
    assert_eq!(redoc.status(), StatusCode::OK, "{script}");
    assert!(redoc.bytes().await.unwrap().len() > 100_000, "Redoc itself is served");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_protect_the_api_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_with_keys(dir.path(), vec!["s3cret".into()]).await;
    let client = Client::new();
    let response = client.get(server.url("/api/v1/collections")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    let response = client.get(server.url("/api/v1/collections")).header("x-api-key", "wrong").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client.get(server.url("/api/v1/collections")).header("x-api-key", "s3cret").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(client.get(server.url("/healthz")).send().await.unwrap().status(), StatusCode::OK, "probes stay open");
    server.stop().await;
}
