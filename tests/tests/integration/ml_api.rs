//! The tch encoder behind the `Encoder` port, and the seed's ML inference API served on port 0.

use std::io::Cursor;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use imgfleet_core::domain::RgbImage;
use imgfleet_core::ports::Encoder;
use imgfleet_tests::contract::encoder::{EncoderFixture, picture};
use imgfleet_worker_gpu::http::{MlState, router};
use imgfleet_worker_gpu::runtime::{RuntimeOptions, TchEncoder};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::clip::fixture;

async fn encoder(cpu_batch: usize) -> Arc<TchEncoder> {
    encoder_with(cpu_batch, None).await
}

async fn encoder_with(cpu_batch: usize, blip: Option<&str>) -> Arc<TchEncoder> {
    let options = RuntimeOptions {
        clip_model: fixture("clip-tiny-a").to_string_lossy().into_owned(),
        blip_model: blip.map(|name| fixture(name).to_string_lossy().into_owned()),
        device: tch::Device::Cpu,
        dtype: imgfleet_worker_gpu::precision::Dtype::Auto,
        max_batch: cpu_batch,
        max_waiting: 8,
        caption_sub_batch: 0,
        search_first: true,
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

/// CLIP and BLIP on the same model thread; a batch of 2 makes 3 captions two passes.
struct TchCaptioningFixture;

#[async_trait]
impl EncoderFixture for TchCaptioningFixture {
    async fn open(&self) -> Arc<dyn Encoder> {
        encoder_with(2, Some("blip-tiny-a")).await
    }
}

mod tch_captioning_encoder_contract {
    use super::TchCaptioningFixture;
    imgfleet_tests::encoder_contract!(TchCaptioningFixture);
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
    serve_with(None).await
}

async fn serve_with(blip: Option<&str>) -> MlServer {
    let encoder = encoder_with(4, blip).await;
    let state = MlState::new(Arc::clone(&encoder) as Arc<dyn Encoder>, imgfleet_http::ApiKeys::default(), 64_000_000);
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
    let args: Vec<String> = ["--port", "0", "--device", "cpu", "--encoder-batch", "3", "--clip-model", &model]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let blip = fixture("blip-tiny-a").to_string_lossy().into_owned();
    let args: Vec<String> = args.into_iter().chain(["--blip-model".to_owned(), blip.clone()]).collect();
    let worker = imgfleet_tests::harness::ChildProcess::spawn("imgfleet-worker-gpu", &args);
    let caps: Value = Client::new().get(worker.url("/api/v1/capabilities")).send().await.unwrap().json().await.unwrap();
    assert_eq!((caps["safe_clip_batch"].as_u64(), caps["embedding_dim"].as_u64()), (Some(3), Some(24)));
    assert_eq!((caps["safe_blip_batch"].as_u64(), caps["blip_model"].as_str()), (Some(3), Some(blip.as_str())));
    let image = picture(60, 40, 3);
    let response = Client::new()
        .post(worker.url("/api/v1/caption"))
        .json(&json!({"image_base64": png_base64(&image), "filename": "p.png"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.json::<Value>().await.unwrap()["caption"].is_string());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caption_endpoints_answer_what_the_encoder_computes_and_isolate_a_bad_image() {
    let server = serve_with(Some("blip-tiny-a")).await;
    let caps: Value = Client::new().get(format!("{}/api/v1/capabilities", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(caps["safe_blip_batch"], 4);
    assert!(caps["blip_model"].as_str().unwrap().ends_with("blip-tiny-a"), "{caps}");

    let images = [picture(64, 48, 1), picture(32, 32, 2), picture(100, 30, 3)];
    let direct_captions = server.encoder.caption_images(images.to_vec()).await.unwrap();
    let direct_embeddings = server.encoder.embed_images(images.to_vec()).await.unwrap();
    let (status, body) = post(&server, "/api/v1/caption", json!({"image_base64": png_base64(&images[0]), "filename": "a.png"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["caption"], direct_captions[0].as_str());

    let bad = base64::engine::general_purpose::STANDARD.encode(b"not an image at all");
    let request = json!({"images": [
        {"unique_id": "one", "image_base64": png_base64(&images[0]), "filename": "one.png"},
        {"unique_id": "bad", "image_base64": bad, "filename": "bad.jpg"},
        {"unique_id": "two", "image_base64": png_base64(&images[1]), "filename": "two.png"},
        {"unique_id": "three", "image_base64": png_base64(&images[2])},
    ]});
    let (status, body) = post(&server, "/api/v1/batch_embed_and_caption", request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    let ids: Vec<&str> = results.iter().map(|r| r["unique_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["one", "bad", "two", "three"], "rows keep request order");
    let bad_row = &results[1];
    assert!(bad_row["error"].as_str().unwrap().contains("bad.jpg"), "{bad_row}");
    assert!(bad_row.get("embedding").is_none() && bad_row.get("caption").is_none(), "{bad_row}");
    for (row, i) in [(0, 0), (2, 1), (3, 2)] {
        let result = &results[row];
        assert!(result.get("error").is_none(), "{result}");
        assert_eq!(result["caption"], direct_captions[i].as_str(), "row {row}");
        let embedding: Vec<f32> = serde_json::from_value(result["embedding"].clone()).unwrap();
        assert!(close(&embedding, &direct_embeddings[i]), "row {row}: embedding equals the encoder's");
    }
    assert_eq!(results[0]["filename"], "one.png");
    assert_eq!(results[3]["filename"], Value::Null);

    // The multipart form: the same images as they are, the same answer row for row.
    let png = |image: &imgfleet_core::domain::RgbImage| base64::engine::general_purpose::STANDARD.decode(png_base64(image)).unwrap();
    let form = reqwest::multipart::Form::new()
        .part("one", reqwest::multipart::Part::bytes(png(&images[0])).file_name("one.png"))
        .part("bad", reqwest::multipart::Part::bytes(b"not an image at all".to_vec()).file_name("bad.jpg"))
        .part("two", reqwest::multipart::Part::bytes(png(&images[1])).file_name("two.png"))
        .part("three", reqwest::multipart::Part::bytes(png(&images[2])));
    let response = Client::new().post(format!("{}/api/v1/batch_embed_and_caption_multipart", server.url)).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let multipart: Value = response.json().await.unwrap();
    let rows = multipart["results"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["unique_id"].as_str().unwrap()).collect::<Vec<_>>(), ["one", "bad", "two", "three"]);
    assert!(rows[1]["error"].as_str().unwrap().contains("bad.jpg"), "{}", rows[1]);
    for (row, i) in [(0, 0), (2, 1), (3, 2)] {
        assert_eq!(rows[row]["caption"], direct_captions[i].as_str(), "multipart row {row}");
        let embedding: Vec<f32> = serde_json::from_value(rows[row]["embedding"].clone()).unwrap();
        assert!(close(&embedding, &direct_embeddings[i]), "multipart row {row}: embedding equals the encoder's");
    }
    let empty = Client::new()
        .post(format!("{}/api/v1/batch_embed_and_caption_multipart", server.url))
        .multipart(reqwest::multipart::Form::new())
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let (status, body) = post(&server, "/api/v1/batch_embed_and_caption", json!({"images": []})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_blip_model_captions_are_unavailable_and_batches_still_embed() {
    let server = serve().await;
    let image = png_base64(&picture(40, 40, 4));
    let (status, body) = post(&server, "/api/v1/caption", json!({"image_base64": image, "filename": "a.png"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--blip-model"), "{body}");
    let (status, body) =
        post(&server, "/api/v1/batch_embed_and_caption", json!({"images": [{"unique_id": "x", "image_base64": image}]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let row = &body["results"][0];
    assert_eq!(row["embedding"].as_array().unwrap().len(), 24);
    assert!(row.get("caption").is_none(), "{row}");
}
