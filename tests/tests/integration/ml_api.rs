//! The tch encoder behind the `Encoder` port, and the seed's ML inference API served on port 0.

use std::io::Cursor;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use imgfleet_shared::domain::RgbImage;
use imgfleet_shared::ports::Encoder;
use imgfleet_tests::contract::encoder::{EncoderFixture, picture};
use imgfleet_worker_gpu::http::{MlState, router};
use imgfleet_worker_gpu::runtime::{RuntimeOptions, TchEncoder};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::clip::fixture;

async fn encoder(cpu_batch: usize) -> Arc<TchEncoder> {
    let options = RuntimeOptions {
        clip_model: fixture("clip-tiny-a").to_string_lossy().into_owned(),
        device: tch::Device::Cpu,
        cpu_batch,
        max_waiting: 8,
    };
    Arc::new(tokio::task::spawn_blocking(move || TchEncoder::start(options)).await.unwrap().unwrap())
}

struct TchFixture;

#[async_trait]
impl EncoderFixture for TchFixture {
    async fn open(&self) -> Arc<dyn Encoder> {
        // A batch of 2 makes the contract's 3-image requests span two forward passes.
        encoder(2).await
    }
}

mod tch_encoder_contract {
    use super::TchFixture;
    imgfleet_tests::encoder_contract!(TchFixture);
}

fn png_base64(image: &RgbImage) -> String {
    let buffer = image::RgbImage::from_raw(image.width, image.height, image.data.clone()).unwrap();
    let mut bytes = Vec::new();
    buffer.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

struct MlServer {
    url: String,
    encoder: Arc<TchEncoder>,
}

async fn serve() -> MlServer {
    let encoder = encoder(4).await;
    let state = MlState { encoder: Arc::clone(&encoder) as Arc<dyn Encoder> };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state, 2 * 1024 * 1024)).await.unwrap() });
    MlServer { url, encoder }
}

async fn post(server: &MlServer, path: &str, body: Value) -> (StatusCode, Value) {
    let response = Client::new().post(format!("{}{path}", server.url)).json(&body).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_endpoints_answer_what_the_encoder_computes() {
    let server = serve().await;
    let image = picture(50, 40, 7);
    let (status, body) = post(&server, "/api/v1/embed", json!({"image_base64": png_base64(&image), "filename": "x.png"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["embedding_shape"], json!([1, 24]));
    let got: Vec<f32> = serde_json::from_value(body["embedding"].clone()).unwrap();
    let direct = server.encoder.embed_images(vec![image]).await.unwrap();
    assert!(close(&got, &direct[0]), "HTTP embedding equals the encoder's");

    let texts = ["a dog on a beach", "a cat"];
    let (status, body) = post(&server, "/api/v1/embed_text", json!({"texts": texts})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"].clone()).unwrap();
    let direct = server.encoder.embed_texts(texts.map(String::from).to_vec()).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(close(&got[0], &direct[0]) && close(&got[1], &direct[1]));

    let caps: Value = Client::new().get(format!("{}/api/v1/capabilities", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(caps["safe_clip_batch"], 4);
    assert_eq!(caps["embedding_dim"], 24);
    assert_eq!(caps["device"], "cpu");
    let health = Client::new().get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_4xx_with_a_message() {
    let server = serve().await;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let too_many: Vec<String> = (0..1025).map(|i| format!("text {i}")).collect();
    let cases = [
        ("/api/v1/embed", json!({"image_base64": "%%% not base64", "filename": "a.jpg"}), "base64"),
        ("/api/v1/embed", json!({"image_base64": b64(b"just some text, not an image"), "filename": "a.jpg"}), "not an image"),
        ("/api/v1/embed", json!({"image_base64": "", "filename": "a.jpg"}), "empty"),
        ("/api/v1/embed", json!({"image_base64": b64(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0]), "filename": "cut.png"}), "cut.png"),
        ("/api/v1/embed", json!({"filename": "a.jpg"}), "image_base64"),
        ("/api/v1/embed_text", json!({"texts": []}), "empty"),
        ("/api/v1/embed_text", json!({"texts": too_many}), "1024"),
        ("/api/v1/embed_text", json!({"texts": "not a list"}), "texts"),
    ];
    for (path, body, needle) in cases {
        let (status, response) = post(&server, path, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {response}");
        assert_eq!(response["error"]["code"], "invalid_request");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{path}: {message:?} should mention {needle:?}");
    }
    let response = Client::new()
        .post(format!("{}/api/v1/embed", server.url))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "invalid_json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_binary_serves_the_ml_api_and_stops_on_sigterm() {
    let model = fixture("clip-tiny-a").to_string_lossy().into_owned();
    let args: Vec<String> = ["--port", "0", "--device", "cpu", "--cpu-batch", "3", "--clip-model", &model]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let worker = imgfleet_tests::harness::ChildProcess::spawn("imgfleet-worker-gpu", &args);
    let caps: Value = Client::new().get(worker.url("/api/v1/capabilities")).send().await.unwrap().json().await.unwrap();
    assert_eq!((caps["safe_clip_batch"].as_u64(), caps["embedding_dim"].as_u64()), (Some(3), Some(24)));
    let response = Client::new()
        .post(worker.url("/api/v1/embed_text"))
        .json(&json!({"texts": ["hello"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(worker.terminate().success());
}

#[test]
fn a_missing_model_stops_the_worker_with_a_message_naming_it() {
    let output = std::process::Command::new(imgfleet_tests::harness::workspace_binary("imgfleet-worker-gpu"))
        .args(["--port", "0", "--device", "cpu", "--clip-model", "/no/such/model-dir"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/no/such/model-dir"), "{stderr}");
}
