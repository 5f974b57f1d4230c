//! Originals and thumbnails are served only from regular files inside the ingest roots that
//! are still the stored image: a FIFO does not hang the server, a symlink swapped in does not
//! lead out of the roots, a changed file is not served as the image (another copy is, if one
//! is left), and any file name gives a valid `Content-Disposition`.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use imgfleet_core::domain::ImagePoint;
use imgfleet_imaging::hash::read_and_hash;
use imgfleet_imaging::prepare::{PrepareOptions, prepare, sniff_file};
use imgfleet_tests::contract::vectors::vec4;
use imgfleet_tests::harness::{ApiOptions, ApiServer};
use reqwest::{Client, StatusCode};
use serde_json::Value;

fn png(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, seed]));
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Stores the image at `path` as ingest would (its payload from the CPU stage), with `copies`
/// as further paths of the same content; returns its id.
async fn ingest(server: &ApiServer, path: &Path, copies: &[&Path], n: u32) -> String {
    let file = read_and_hash(path, u64::MAX).unwrap();
    let format = sniff_file(&file).unwrap();
    let mut payload = prepare(path, &file, format, PrepareOptions::default()).unwrap().payload;
    payload.paths.extend(copies.iter().map(|c| c.display().to_string()));
    let point = ImagePoint::from_payload(vec4(n), &payload);
    let id = point.id.to_string();
    server.vectors.upsert("images", vec![point]).await.unwrap();
    id
}

struct Served {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Served {
    fn error(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn fetch(server: &ApiServer, path: &str) -> Served {
    let response = Client::new().get(server.url(path)).timeout(Duration::from_secs(20)).send().await.unwrap();
    Served { status: response.status(), headers: response.headers().clone(), body: response.bytes().await.unwrap().to_vec() }
}

async fn start(root: &Path) -> (tempfile::TempDir, ApiServer) {
    let data = tempfile::tempdir().unwrap();
    let options = ApiOptions { ingest_roots: vec![root.to_owned()], thumbnails: true, ..ApiOptions::default() };
    let server = ApiServer::start_with(data.path(), options).await;
    (data, server)
}

fn set_mtime(path: &Path, time: SystemTime) {
    std::fs::File::options().write(true).open(path).unwrap().set_modified(time).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_served_only_while_it_is_still_the_stored_image() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let (_data, server) = start(&root).await;
    let original = png(1);
    let first = root.join("first.png");
    let copy = root.join("copy.png");
    std::fs::write(&first, &original).unwrap();
    std::fs::write(&copy, &original).unwrap();
    let id = ingest(&server, &first, &[&copy], 1).await;

    let served = fetch(&server, &format!("/api/v1/images/{id}/file")).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.body, original);
    assert_eq!(served.headers["content-type"], "image/png");
    assert_eq!(served.headers["content-length"], original.len().to_string().as_str());
    assert_eq!(fetch(&server, &format!("/api/v1/images/{id}/thumbnail?size=16")).await.status, StatusCode::OK);

    // Touched but unchanged: its content still matches, so it is served.
    set_mtime(&first, SystemTime::now() - Duration::from_secs(3600));
    assert_eq!(fetch(&server, &format!("/api/v1/images/{id}/file")).await.body, original);

    // Rewritten with other pixels of the same size: not the image any more; the copy is served.
    // Same size and a fresh mtime: only the content tells them apart.
    let mut other = original.clone();
    let middle = other.len() / 2;
    other[middle] ^= 0xff;
    std::fs::write(&first, &other).unwrap();
    let served = fetch(&server, &format!("/api/v1/images/{id}/file")).await;
    assert_eq!((served.status, served.body == original), (StatusCode::OK, true), "served from the copy");
    let thumb = fetch(&server, &format!("/api/v1/images/{id}/thumbnail")).await;
    assert_eq!(thumb.status, StatusCode::OK, "{}", thumb.error());
    // Cached by content: a client holding it revalidates to a 304, nothing read or rendered.
    let etag = thumb.headers.get("etag").and_then(|v| v.to_str().ok()).expect("a thumbnail has an ETag").to_owned();
    assert!(thumb.headers.get("cache-control").is_some());
    let again = Client::new().get(server.url(&format!("/api/v1/images/{id}/thumbnail"))).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers().get("etag").and_then(|v| v.to_str().ok()), Some(etag.as_str()));
    let other_size = Client::new().get(server.url(&format!("/api/v1/images/{id}/thumbnail?size=64"))).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(other_size.status(), StatusCode::OK, "another size is another thumbnail");

    // The copy changes too: no file is the image; 404 with a code that says so.
    std::fs::write(&copy, b"something else entirely").unwrap();
    for path in [format!("/api/v1/images/{id}/file"), format!("/api/v1/images/{id}/thumbnail")] {
        let served = fetch(&server, &path).await;
        assert_eq!(served.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(served.error()["error"]["code"], "original_changed", "{path}: {}", served.error());
    }
    // Both gone: plain not_found.
    std::fs::remove_file(&first).unwrap();
    std::fs::remove_file(&copy).unwrap();
    let served = fetch(&server, &format!("/api/v1/images/{id}/file")).await;
    assert_eq!((served.status, served.error()["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_swapped_symlink_is_never_served() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (_data, server) = start(&root).await;
    let bytes = png(3);
    let path = root.join("photo.png");
    std::fs::write(&path, &bytes).unwrap();
    let id = ingest(&server, &path, &[], 3).await;
    assert_eq!(fetch(&server, &format!("/api/v1/images/{id}/file")).await.status, StatusCode::OK);

    // A FIFO where the image was: answered at once, no thread waits on it.
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success());
    for what in ["file", "thumbnail"] {
        let start = Instant::now();
        let served = fetch(&server, &format!("/api/v1/images/{id}/{what}")).await;
        assert!(start.elapsed() < Duration::from_secs(5), "{what} took {:?}", start.elapsed());
        assert_eq!(served.status, StatusCode::NOT_FOUND, "{what}");
        let message = served.error()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("no longer a regular file"), "{what}: {message}");
    }

    // A symlink to an outside file with the very same content: not served (403).
    std::fs::remove_file(&path).unwrap();
    let secret: PathBuf = outside.path().join("photo.png");
    std::fs::write(&secret, &bytes).unwrap();
    std::os::unix::fs::symlink(&secret, &path).unwrap();
    for what in ["file", "thumbnail"] {
        let served = fetch(&server, &format!("/api/v1/images/{id}/{what}")).await;
        assert_eq!(served.status, StatusCode::FORBIDDEN, "{what}");
        assert_eq!(served.error()["error"]["code"], "path_not_allowed", "{what}");
        assert!(served.error()["error"]["message"].as_str().unwrap().contains("really"), "{}", served.error());
    }
    assert_eq!(fetch(&server, "/healthz").await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_file_name_gives_a_valid_content_disposition() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let (_data, server) = start(&root).await;
    for (n, name) in ["tab\there.png", "bell\u{7}\"quoted\".png", "new\nline.png", "写真 ü.png", "back\\slash.png"].iter().enumerate() {
        let path = root.join(name);
        std::fs::write(&path, png(10 + n as u8)).unwrap();
        let id = ingest(&server, &path, &[], 10 + n as u32).await;
        let served = fetch(&server, &format!("/api/v1/images/{id}/file")).await;
        assert_eq!(served.status, StatusCode::OK, "{name:?}: {}", served.error());
        let disposition = served.headers["content-disposition"].to_str().unwrap();
        assert!(disposition.starts_with("inline; filename=\"") && disposition.contains("filename*=UTF-8''"), "{disposition}");
        assert_eq!(served.headers["x-content-type-options"], "nosniff");
    }
    server.stop().await;
}
