//! Watches, with the real `imgfleet serve`: files added while it runs are picked up through
//! file-system notifications (well before the rescan interval), files added and deleted while
//! it is down are picked up after the restart, and the watch API refuses what it should.

use std::path::Path;
use std::time::{Duration, Instant};

use imgfleet_tests::harness::{ChildProcess, fixture_models};
use imgfleet_worker_cpu::corpus::picture;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

fn write_jpeg(path: &Path, seed: u64) {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&picture(80, 60, seed)).unwrap();
    // Written beside, then renamed: a watcher never sees half a file.
    let part = path.with_extension("part");
    std::fs::write(&part, out).unwrap();
    std::fs::rename(&part, path).unwrap();
}

fn serve(data_dir: &Path, root: &Path, watch: Option<&Path>) -> ChildProcess {
    let models = fixture_models();
    let clip = models.join("clip-tiny-224").display().to_string();
    let root = root.display().to_string();
    let mut args = vec!["--clip-model", clip.as_str(), "--no-caption", "--device", "cpu", "--ingest-root", root.as_str()];
    let watch = watch.map(|w| w.display().to_string());
    if let Some(watch) = &watch {
        // The interval is far longer than the test: only notifications and the restart sync.
        args.extend(["--watch", watch.as_str(), "--watch-interval", "3600"]);
    }
    ChildProcess::serve(data_dir, &args)
}

/// The sorted paths of the collection's images, once they equal `want` (or the time is up).
async fn paths_become(client: &Client, server: &ChildProcess, want: &[String], limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let page: Value = client.get(server.url("/api/v1/images?per_page=500")).send().await.unwrap().json().await.unwrap();
        let mut paths: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|i| i["payload"]["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()))
            .collect();
        paths.sort();
        if paths == want || Instant::now() > deadline {
            return paths;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_folder_stays_in_sync_while_running_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let photos = root.join("photos");
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    let photos = photos.canonicalize().unwrap();
    write_jpeg(&photos.join("a.jpg"), 1);
    write_jpeg(&photos.join("sub/b.jpg"), 2);
    let data = dir.path().join("data");
    let client = Client::new();
    let path = |name: &str| photos.join(name).display().to_string();

    let server = serve(&data, &root, Some(&photos));
    let want = vec![path("a.jpg"), path("sub/b.jpg")];
    assert_eq!(paths_become(&client, &server, &want, Duration::from_secs(90)).await, want, "the first sync at start");

    // Added while running: a notification, not the hour-long interval, brings it in.
    write_jpeg(&photos.join("sub/c.jpg"), 3);
    let want = vec![path("a.jpg"), path("sub/b.jpg"), path("sub/c.jpg")];
    assert_eq!(paths_become(&client, &server, &want, Duration::from_secs(60)).await, want, "a file added while running");
    let watches: Value = client.get(server.url("/api/v1/watches")).send().await.unwrap().json().await.unwrap();
    let watch = &watches["watches"][0];
    assert_eq!(watches["watches"].as_array().unwrap().len(), 1, "{watches}");
    assert_eq!(watch["source"], photos.display().to_string());
    assert!(watch["last_job_id"].is_string(), "{watch}");
    assert!(server.terminate().success());

    // Changed while the server is down: one added, one deleted.
    write_jpeg(&photos.join("d.jpg"), 4);
    std::fs::remove_file(photos.join("a.jpg")).unwrap();
    let server = serve(&data, &root, Some(&photos));
    let want = vec![path("d.jpg"), path("sub/b.jpg"), path("sub/c.jpg")];
    assert_eq!(paths_become(&client, &server, &want, Duration::from_secs(90)).await, want, "what changed while down");
    let watches: Value = client.get(server.url("/api/v1/watches")).send().await.unwrap().json().await.unwrap();
    assert_eq!(watches["watches"].as_array().unwrap().len(), 1, "--watch again keeps the one watch: {watches}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let watch = loop {
        let watches: Value = client.get(server.url("/api/v1/watches")).send().await.unwrap().json().await.unwrap();
        let watch = watches["watches"][0].clone();
        if watch["last_counts"].is_object() || Instant::now() > deadline {
            break watch;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(watch["last_counts"]["processed"], 1, "{watch}");
    assert_eq!(watch["last_counts"]["removed"], 1, "{watch}");
    assert!(watch["last_change_at"].is_string(), "{watch}");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_api_refuses_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("photos")).unwrap();
    std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
    let server = serve(&dir.path().join("data"), &root, None);
    let client = Client::new();
    let photos = root.join("photos").canonicalize().unwrap().display().to_string();
    let post = |body: Value| client.post(server.url("/api/v1/watches")).json(&body).send();

    let created = post(json!({"directory_path": photos, "interval_seconds": 60})).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["interval_secs"], 60);
    let id = created["watch_id"].as_str().unwrap().to_owned();
    for (body, status) in [
        (json!({"directory_path": photos}), StatusCode::CONFLICT),
        (json!({"source": photos, "collection": "other"}), StatusCode::CREATED),
        (json!({"directory_path": photos, "source": photos}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"directory_path": photos, "interval_seconds": 1}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"directory_path": dir.path().join("elsewhere").display().to_string()}), StatusCode::FORBIDDEN),
        (json!({"directory_path": "/no/such/dir/at/all"}), StatusCode::NOT_FOUND),
        (json!({"directory_path": "relative/dir"}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let response = post(body.clone()).await.unwrap();
        let status_got = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status_got, status, "{body}: {answer}");
        if !status.is_success() {
            assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
        }
    }
    let one: Value = client.get(server.url(&format!("/api/v1/watches/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["watch_id"], id.as_str());
    let deleted = client.delete(server.url(&format!("/api/v1/watches/{id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let gone = client.get(server.url(&format!("/api/v1/watches/{id}"))).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let list: Value = client.get(server.url("/api/v1/watches")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["watches"].as_array().unwrap().len(), 1, "{list}");
    assert!(server.terminate().success());
}
