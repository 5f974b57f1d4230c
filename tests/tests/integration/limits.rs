//! Bounded requests: the server's deadlines, connection limit and bounded shutdown; expensive
//! work admitted before it is done (a full model queue, the pixel budget, text length,
//! duplicates' threshold); every error in the JSON shape; metrics labels that cannot grow.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use imgfleet_core::domain::{Capabilities, Distance, RgbImage};
use imgfleet_core::ports::{Encoder, EncoderError};
use imgfleet_http::{ApiKeys, ServerLimits};
use imgfleet_tests::contract::vectors::{point, spec, vec4};
use imgfleet_tests::harness::ApiServer;
use imgfleet_worker_gpu::http::{MlState, router};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test router served with `limits`; the returned sender stops it, the handle ends with it.
async fn serve_test_router(limits: ServerLimits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let router = Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route("/slow", get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "slow"
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        imgfleet_http::server::serve(listener, router, limits, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop, task)
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buffer[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_slow_requests_are_cut_off() {
    let limits = ServerLimits { header_timeout_secs: 1, request_timeout_secs: 1, ..ServerLimits::default() };
    let (addr, stop, task) = serve_test_router(limits).await;
    // Headers never finished: the connection is closed after the header deadline.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = Instant::now();
    assert!(read_until_closed(&mut slow, Duration::from_secs(5)).await.is_some(), "still open after 5 s");
    assert!(start.elapsed() >= Duration::from_millis(900), "closed before the deadline: {:?}", start.elapsed());
    // A handler past the request deadline: 503 `timeout` in the JSON shape.
    let start = Instant::now();
    let response = Client::new().get(format!("http://{addr}/slow")).send().await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "timeout");
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_for_a_free_one() {
    let limits = ServerLimits { max_connections: 1, ..ServerLimits::default() };
    let (addr, stop, task) = serve_test_router(limits).await;
    let idle = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buffer = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(700), waiting.read(&mut buffer)).await;
    assert!(early.is_err(), "answered while the only connection slot was taken");
    drop(idle);
    let answer = read_until_closed(&mut waiting, Duration::from_secs(5)).await.expect("answered once the slot is free");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("fast"), "{answer}");
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_requests_only_for_its_grace_period() {
    let limits = ServerLimits { shutdown_grace_secs: 1, ..ServerLimits::default() };
    let (addr, stop, task) = serve_test_router(limits).await;
    let request = tokio::spawn(async move { Client::new().get(format!("http://{addr}/slow")).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve returned within the grace period").unwrap();
    assert!(start.elapsed() >= Duration::from_millis(900), "the request in flight got its grace period");
    assert!(request.await.unwrap().is_err(), "the unfinished request's connection was closed");
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_rejections_have_the_json_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path()).await;
    let client = Client::new();
    let cases: Vec<(Method, &str, Option<String>, StatusCode)> = vec![
        (Method::GET, "/api/v1/images/%FF", None, StatusCode::UNPROCESSABLE_ENTITY),
        (Method::GET, "/api/v1/images/%FF/file", None, StatusCode::UNPROCESSABLE_ENTITY),
        (Method::GET, "/api/v1/collections/%FF%FE", None, StatusCode::UNPROCESSABLE_ENTITY),
        (Method::DELETE, "/api/v1/collections/%C3%28", None, StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/ingest/status/%FF", None, StatusCode::UNPROCESSABLE_ENTITY),
        // The harness' body limit is 1 MiB; /duplicates reads its body as bytes. Just over it:
        // the server answers 413 without reading the body and closes the connection, and a body
        // much larger than the socket's buffers could still be being written then (the client
        // sees a broken pipe instead of the answer, seen once on a loaded machine).
        (Method::POST, "/api/v1/duplicates", Some("x".repeat(1024 * 1024 + 16 * 1024)), StatusCode::PAYLOAD_TOO_LARGE),
        (Method::PATCH, "/api/v1/collections", None, StatusCode::METHOD_NOT_ALLOWED),
        (Method::from_bytes(b"BREW").unwrap(), "/api/v1/search", None, StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/nowhere", None, StatusCode::NOT_FOUND),
    ];
    for (method, path, body, expected) in cases {
        let mut request = client.request(method.clone(), server.url(path));
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let allow = response.headers().get("allow").cloned();
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert!(content_type.starts_with("application/json"), "{method} {path}: {content_type}");
        assert!(body["error"]["code"].is_string() && body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: {body}");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(allow.is_some(), "{method} {path}: a 405 names the allowed methods");
        }
    }
    // Made-up methods are counted as `other`, routes by template.
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let requests: Vec<&str> = metrics.lines().filter(|l| l.starts_with("imgfleet_http_requests_total{")).collect();
    assert!(requests.iter().any(|l| l.contains("method=\"other\"")), "{requests:?}");
    assert!(!requests.iter().any(|l| l.contains("BREW")), "{requests:?}");
    assert!(requests.iter().any(|l| l.contains("route=\"/api/v1/images/{id}\"")), "{requests:?}");
    assert!(!requests.iter().any(|l| l.contains("%FF")), "{requests:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_length_and_duplicates_threshold_are_checked_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path()).await;
    let client = Client::new();
    let post = |path: &'static str, body: Value| {
        let client = client.clone();
        let url = server.url(path);
        async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = post("/api/v1/search", json!({"text": "x".repeat(1001)})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("1000"), "{body}");
    let (status, body) = post("/api/v1/search", json!({"embedding": [1.0, 2.0]})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("vector_size_mismatch")), "{body}");

    for (name, distance) in [("cos", Distance::Cosine), ("dot", Distance::Dot), ("euc", Distance::Euclid)] {
        server.vectors.create_collection(&spec(name, 4, distance)).await.unwrap();
        server.vectors.upsert(name, (0..3).map(|n| point(n, vec4(n))).collect()).await.unwrap();
    }
    for (collection, threshold, expected) in [
        ("cos", 1.5, StatusCode::UNPROCESSABLE_ENTITY),
        ("cos", -1.01, StatusCode::UNPROCESSABLE_ENTITY),
        ("cos", -1.0, StatusCode::OK),
        ("cos", 1.0, StatusCode::OK),
        ("dot", 1.5, StatusCode::OK),
        ("euc", 0.5, StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, body) = post("/api/v1/duplicates", json!({"collection": collection, "threshold": threshold})).await;
        assert_eq!(status, expected, "{collection} {threshold}: {body}");
    }
    server.stop().await;
}

/// An encoder that answers at once, and can claim to be full.
struct FakeEncoder {
    saturated: AtomicBool,
    images_seen: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Encoder for FakeEncoder {
    async fn embed_images(&self, images: Vec<RgbImage>) -> Result<Vec<Vec<f32>>, EncoderError> {
        self.images_seen.fetch_add(images.len(), Ordering::SeqCst);
        Ok(images.iter().map(|_| vec![1.0, 0.0, 0.0, 0.0]).collect())
    }
    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EncoderError> {
        Ok(texts.iter().map(|_| vec![0.0, 1.0, 0.0, 0.0]).collect())
    }
    async fn caption_images(&self, images: Vec<RgbImage>) -> Result<Vec<String>, EncoderError> {
        Ok(images.iter().map(|_| "a caption".to_owned()).collect())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { safe_clip_batch: 4, safe_blip_batch: 0, embedding_dim: 4, device: "cpu".into(), clip_model: "fake".into(), blip_model: None }
    }
    fn is_saturated(&self) -> bool {
        self.saturated.load(Ordering::SeqCst)
    }
}

fn png_base64(width: u32, height: u32) -> String {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([10, 200, 30]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ml_api_admits_work_before_doing_it() {
    let encoder = Arc::new(FakeEncoder { saturated: AtomicBool::new(false), images_seen: Default::default() });
    // A budget of 3,000 pixels a request: two 40x30 images fit, three do not.
    let state = MlState::new(encoder.clone(), ApiKeys::default(), 3_000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state, 8 * 1024 * 1024)).await.unwrap() });
    let client = Client::new();
    let post = |path: &str, body: Value| {
        let request = client.post(format!("{url}{path}")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let batch = |n: usize| json!({"images": (0..n).map(|i| json!({"unique_id": i.to_string(), "image_base64": png_base64(40, 30)})).collect::<Vec<_>>()});
    let (status, body) = post("/api/v1/batch_embed_and_caption", batch(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = encoder.images_seen.load(Ordering::SeqCst);
    let (status, body) = post("/api/v1/batch_embed_and_caption", batch(3)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("3600 pixels"), "{body}");
    assert_eq!(encoder.images_seen.load(Ordering::SeqCst), seen, "nothing of the refused batch reached the model");
    let (status, body) = post("/api/v1/embed", json!({"image_base64": png_base64(100, 100)})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "one image over the budget: {body}");
    let (status, body) = post("/api/v1/embed_text", json!({"texts": ["ok", "y".repeat(1001)]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("text 1"), "{body}");

    // A full model queue answers 429 before decoding: even an upload that is not an image.
    encoder.saturated.store(true, Ordering::SeqCst);
    for (path, body) in [
        ("/api/v1/embed", json!({"image_base64": "%%% not base64"})),
        ("/api/v1/caption", json!({"image_base64": "%%% not base64"})),
        ("/api/v1/batch_embed_and_caption", json!({"images": [{"unique_id": "x", "image_base64": "%%%"}]})),
        ("/api/v1/embed_text", json!({"texts": ["a dog"]})),
    ] {
        let (status, response) = post(path, body).await;
        assert_eq!((status, response["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("overloaded")), "{path}: {response}");
    }
}
