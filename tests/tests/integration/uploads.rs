//! Uploads from anywhere: `imgfleet upload` against a running, key-protected `imgfleet serve`
//! (only new contents go up; a second run uploads nothing already there), the originals served
//! back byte for byte from the blob store, `DELETE /images/{id}`, and the multipart endpoint's
//! edge cases (a part that is not an image or is too large is a failed file, not a failed
//! request).

use std::path::Path;
use std::time::Duration;

use imgfleet_tests::harness::{ChildProcess, fixture_models, workspace_binary};
use imgfleet_worker_cpu::corpus::picture;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "write-key-for-uploads";

fn jpeg(seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&picture(96, 72, seed)).unwrap();
    out
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn serve(data_dir: &Path, extra: &[&str]) -> ChildProcess {
    let models = fixture_models();
    let clip = models.join("clip-tiny-224").display().to_string();
    let mut args = vec!["--clip-model", clip.as_str(), "--no-caption", "--device", "cpu", "--api-key", "write-key-for-uploads"];
    args.extend_from_slice(extra);
    ChildProcess::serve(data_dir, &args)
}

/// Runs `imgfleet upload … --json` and returns its exit code and summary.
async fn upload(server: &ChildProcess, args: &[&str]) -> (i32, Value) {
    let output = tokio::process::Command::new(workspace_binary("imgfleet"))
        .arg("upload")
        .args(args)
        .args(["--server", &server.url(""), "--api-key", KEY, "--json"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap_or(-1), summary)
}

fn keyed(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request.header("x-api-key", KEY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_uploads_only_new_contents_and_the_originals_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("laptop/trip");
    std::fs::create_dir_all(photos.join("day2")).unwrap();
    let originals: Vec<Vec<u8>> = (0..4).map(|seed| jpeg(seed + 100)).collect();
    for (i, bytes) in originals.iter().enumerate().take(3) {
        std::fs::write(photos.join(format!("p{i}.jpg")), bytes).unwrap();
    }
    std::fs::write(photos.join("day2/copy-of-p0.jpg"), &originals[0]).unwrap();
    std::fs::write(photos.join("day2/broken.jpg"), b"this is not a picture, only text in a .jpg").unwrap();
    let server = serve(&dir.path().join("data"), &[]);
    let client = Client::new();

    // Without a key nothing goes in.
    let refused = client.post(server.url("/api/v1/ingest/upload")).multipart(reqwest::multipart::Form::new()).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let (code, first) = upload(&server, &[photos.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["found"], 5, "{first}");
    assert_eq!(first["same_content_here"], 1, "the copy goes up once: {first}");
    assert_eq!(first["already_there"], 0, "{first}");
    assert_eq!(first["uploaded"], 4, "{first}");
    assert_eq!(first["processed"], 3, "{first}");
    let failed = first["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{first}");
    assert!(failed[0].as_str().unwrap().contains("broken.jpg") && failed[0].as_str().unwrap().contains("not-an-image"), "{first}");

    let images = all_images_keyed(&client, &server).await;
    assert_eq!(images.len(), 3);
    for image in &images {
        let path = image["payload"]["path"].as_str().unwrap();
        let sha = image["payload"]["sha256"].as_str().unwrap();
        assert!(path.starts_with(&format!("upload://{sha}/trip/")), "{path}");
        let id = image["id"].as_str().unwrap();
        let file = keyed(client.get(server.url(&format!("/api/v1/images/{id}/file")))).send().await.unwrap();
        assert_eq!(file.status(), StatusCode::OK);
        let bytes = file.bytes().await.unwrap();
        assert_eq!(sha256(&bytes), sha, "the original comes back byte for byte");
        assert!(originals.iter().any(|o| o[..] == bytes[..]));
        let thumbnail = keyed(client.get(server.url(&format!("/api/v1/images/{id}/thumbnail?size=32")))).send().await.unwrap();
        assert_eq!(thumbnail.status(), StatusCode::OK);
    }

    // Resumable: a second run finds every image there; only the broken file (never stored) goes again.
    std::fs::write(photos.join("day2/p3.jpg"), &originals[3]).unwrap();
    let (code, second) = upload(&server, &[photos.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["already_there"], 3, "{second}");
    assert_eq!(second["uploaded"], 2, "the new picture and the broken file: {second}");
    assert_eq!(second["processed"], 1, "{second}");

    // Which contents are there.
    let asked = json!({"sha256": [sha256(&originals[0]), sha256(&originals[3]).to_uppercase(), sha256(b"never uploaded")]});
    let exists: Value = keyed(client.post(server.url("/api/v1/images/exists"))).json(&asked).send().await.unwrap().json().await.unwrap();
    assert_eq!(exists["existing"], json!([sha256(&originals[0]), sha256(&originals[3])]));
    assert_eq!(exists["missing"], json!([sha256(b"never uploaded")]));
    let bad = keyed(client.post(server.url("/api/v1/images/exists"))).json(&json!({"sha256": ["xyz"]})).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Deleting an image removes its point, its dedup entry and its blob: the content goes up again.
    let victim = all_images_keyed(&client, &server).await.into_iter().find(|i| i["payload"]["sha256"] == sha256(&originals[1])).unwrap();
    let id = victim["id"].as_str().unwrap().to_owned();
    let deleted = keyed(client.delete(server.url(&format!("/api/v1/images/{id}")))).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(deleted["blob_removed"], true, "{deleted}");
    let gone = keyed(client.get(server.url(&format!("/api/v1/images/{id}")))).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let again = keyed(client.delete(server.url(&format!("/api/v1/images/{id}")))).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let (code, third) = upload(&server, &[photos.join("p1.jpg").to_str().unwrap()]).await;
    assert_eq!(code, 0, "{third}");
    assert_eq!((third["uploaded"].as_u64(), third["processed"].as_u64()), (Some(1), Some(1)), "{third}");
    assert_eq!(all_images_keyed(&client, &server).await.len(), 4);
    assert!(server.terminate().success());
}

async fn all_images_keyed(client: &Client, server: &ChildProcess) -> Vec<Value> {
    let page: Value = keyed(client.get(server.url("/api/v1/images?per_page=500"))).send().await.unwrap().json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parts_are_failed_files_and_bad_forms_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("data"), &["--max-upload-bytes", "20000"]);
    let client = Client::new();
    let form = || reqwest::multipart::Form::new();
    let part = |bytes: Vec<u8>, name: &str| reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned());
    let small = jpeg(7);
    assert!(small.len() < 20_000, "{}", small.len());
    let mut big = jpeg(8);
    big.resize(30_000, 0);

    let sent = form()
        .text("collection", "uploads")
        .part("file", part(small.clone(), "ok.jpg"))
        .part("file", part(b"plain text".to_vec(), "notes.jpg"))
        .part("file", part(big, "huge.jpg"))
        .part("file", part(Vec::new(), "empty.png"))
        .part("file", part(small.clone(), "ok.jpg"));
    let accepted = keyed(client.post(server.url("/api/v1/ingest/upload"))).multipart(sent).send().await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!(accepted["collection"], "uploads");
    let outcomes: Vec<(&str, &str)> =
        accepted["files"].as_array().unwrap().iter().map(|f| (f["name"].as_str().unwrap(), f["outcome"].as_str().unwrap())).collect();
    assert_eq!(outcomes, [("ok.jpg", "queued"), ("notes.jpg", "failed"), ("huge.jpg", "failed"), ("empty.png", "failed"), ("ok.jpg", "queued")]);
    let reasons: Vec<&str> = accepted["files"].as_array().unwrap().iter().filter_map(|f| f["reason"].as_str()).collect();
    assert!(reasons[0].starts_with("not-an-image") && reasons[1].starts_with("too-large") && reasons[2].starts_with("zero-byte"), "{reasons:?}");
    let paths: Vec<&str> = accepted["files"].as_array().unwrap().iter().filter_map(|f| f["path"].as_str()).collect();
    assert_eq!(paths, [format!("upload://{}/ok.jpg", sha256(&small)), format!("upload://{}/ok.jpg#2", sha256(&small))]);

    let job_id = accepted["job_id"].as_str().unwrap();
    let job = wait_until_ended_keyed(&client, &server, job_id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["counts"], json!({"discovered": 5, "processed": 1, "duplicates": 1, "failed": 3, "updated": 0, "removed": 0}), "{job}");
    let images: Value = keyed(client.get(server.url("/api/v1/images?collection=uploads"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(images["total"], 1);
    assert_eq!(images["items"][0]["payload"]["paths"].as_array().unwrap().len(), 2, "both names are on the image");

    // The collection after a file, no file at all, an unknown field, a bad collection name.
    for form in [
        form().part("file", part(small.clone(), "a.jpg")).text("collection", "late"),
        form().text("collection", "uploads"),
        form().text("note", "x"),
        form().text("collection", "bad name!").part("file", part(small.clone(), "a.jpg")),
    ] {
        let response = keyed(client.post(server.url("/api/v1/ingest/upload"))).multipart(form).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_client_error(), "{status} {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    let not_multipart = keyed(client.post(server.url("/api/v1/ingest/upload"))).json(&json!({})).send().await.unwrap();
    assert!(not_multipart.status().is_client_error());
    assert!(server.terminate().success());
}

async fn wait_until_ended_keyed(client: &Client, server: &ChildProcess, job_id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let job: Value = keyed(client.get(server.url(&format!("/api/v1/ingest/status/{job_id}")))).send().await.unwrap().json().await.unwrap();
        if job["status"] != "queued" && job["status"] != "running" {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
