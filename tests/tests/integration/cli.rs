//! The client commands of the `imgfleet` binary (`ingest`, `status`, `jobs`, `search`) run as
//! child processes against `imgfleet serve` on the tiny fixture models, and without a server.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use image::{ImageFormat, Rgb, RgbImage};
use imgfleet_tests::harness::{ChildProcess, workspace_binary};
use serde_json::Value;

/// `imgfleet serve` on the tiny CLIP and BLIP, ingesting under `root`.
fn serve(data_dir: &Path, root: &Path) -> ChildProcess {
    ChildProcess::serve_tiny(data_dir, Some(root), true)
}

/// What a client command printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `imgfleet ARGS` (5 minutes at most), without the caller's IMGFLEET_* client settings.
async fn imgfleet(args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(workspace_binary("imgfleet"));
    command
        .args(args)
        .env_remove("IMGFLEET_SERVER")
        .env_remove("IMGFLEET_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output: Output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .unwrap_or_else(|_| panic!("imgfleet {args:?} did not finish within 5 minutes"))
        .expect("run imgfleet");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Five different small pictures and one JPEG cut in half, in `dir`; returns the broken file.
fn write_images(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for n in 0..5u32 {
        let picture = RgbImage::from_fn(96, 64, |x, y| {
            let wave = ((x as f32 * 0.2 + n as f32).sin() * 60.0) as i32;
            Rgb([
                (x * 2 + n * 40) as i32 + wave,
                (y * 3) as i32 - wave + (n * 25) as i32,
                (255 - (n * 50) as i32) - (x as i32 / 2),
            ]
            .map(|v| v.clamp(0, 255) as u8))
        });
        picture.save_with_format(dir.join(format!("picture-{n}.png")), ImageFormat::Png).unwrap();
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&RgbImage::from_pixel(64, 64, Rgb([200, 100, 50])))
        .unwrap();
    let broken = dir.join("broken.jpg");
    std::fs::write(&broken, &jpeg[..jpeg.len() / 2]).unwrap();
    broken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_status_jobs_and_search_through_the_client_commands() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let dir = root_path.join("photos");
    let broken = write_images(&dir);
    let server = serve(data.path(), &root_path);
    let url = format!("http://{}", server.addr);

    // ingest follows the job to its end; stdout is not a terminal, so no bar, just the summary.
    let dir_text = dir.display().to_string();
    let ingest = imgfleet(&["ingest", &dir_text, "--server", &url, "--poll-ms", "100"]).await;
    assert_eq!(ingest.code, Some(0), "{}", ingest.describe());
    let first = ingest.stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with("job ") && first.contains(" queued: "), "{}", ingest.describe());
    let job_id = first.split_whitespace().nth(1).unwrap().to_owned();
    assert!(ingest.stdout.contains(&format!("job {job_id} completed")), "{}", ingest.describe());
    assert!(ingest.stdout.contains("processed 5"), "{}", ingest.describe());
    assert!(ingest.stdout.contains("failed 1"), "{}", ingest.describe());
    assert!(
        ingest.stdout.contains(&format!("failed: {}: ", broken.display())),
        "the failure is listed with its reason: {}",
        ingest.describe()
    );
    assert!(!ingest.stdout.contains('\r') && !ingest.stderr.contains('\r'), "no progress bar redraws: {}", ingest.describe());

    // status: text, then JSON.
    let status = imgfleet(&["status", &job_id, "--server", &url]).await;
    assert_eq!(status.code, Some(0), "{}", status.describe());
    assert!(status.stdout.contains("completed (100.0%)"), "{}", status.describe());
    assert!(status.stdout.contains("processed 5 · duplicates 0 · failed 1"), "{}", status.describe());
    let status = imgfleet(&["status", &job_id, "--server", &url, "--json"]).await;
    assert_eq!(status.code, Some(0), "{}", status.describe());
    let job: Value = serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", status.describe()));
    assert_eq!(job["job_id"], job_id.as_str());
    assert_eq!(job["status"], "completed");
    assert_eq!(job["counts"]["processed"], 5);
    assert_eq!(job["counts"]["failed"], 1);

    // An unknown job is an error that says so.
    let unknown = imgfleet(&["status", "no-such-job", "--server", &url]).await;
    assert_eq!(unknown.code, Some(1), "{}", unknown.describe());
    assert!(unknown.stderr.contains("error: no job no-such-job"), "{}", unknown.describe());

    // jobs lists it.
    let jobs = imgfleet(&["jobs", "--server", &url]).await;
    assert_eq!(jobs.code, Some(0), "{}", jobs.describe());
    assert!(jobs.stdout.starts_with("JOB "), "{}", jobs.describe());
    assert!(jobs.stdout.lines().any(|l| l.starts_with(&job_id) && l.contains("completed")), "{}", jobs.describe());
    let jobs = imgfleet(&["jobs", "--server", &url, "--json", "--limit", "5"]).await;
    let list: Value = serde_json::from_str(&jobs.stdout).unwrap_or_else(|e| panic!("{e}: {}", jobs.describe()));
    assert!(list["jobs"].as_array().unwrap().iter().any(|j| j["job_id"] == job_id.as_str()), "{list}");

    // search: text (JSON), text (lines), more like a stored image, and by an image file.
    let search = imgfleet(&["search", "a photo", "--limit", "3", "--json", "--server", &url]).await;
    assert_eq!(search.code, Some(0), "{}", search.describe());
    let hits: Value = serde_json::from_str(&search.stdout).unwrap_or_else(|e| panic!("{e}: {}", search.describe()));
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 3, "{}", search.describe());
    for hit in hits {
        let path = hit["payload"]["path"].as_str().unwrap();
        assert!(path.starts_with(&dir_text), "{path}");
        assert!(hit["score"].is_number(), "{hit}");
    }

    let search = imgfleet(&["search", "a photo", "--limit", "2", "--server", &url]).await;
    assert_eq!(search.code, Some(0), "{}", search.describe());
    let lines: Vec<&str> = search.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", search.describe());
    assert!(lines[0].trim_start().starts_with("1. ") && lines[0].contains(&dir_text), "{}", search.describe());

    let first_id = hits[0]["id"].as_str().unwrap();
    let like = imgfleet(&["search", "--like", first_id, "--limit", "1", "--json", "--server", &url]).await;
    assert_eq!(like.code, Some(0), "{}", like.describe());
    let like: Value = serde_json::from_str(&like.stdout).unwrap();
    assert_eq!(like[0]["id"], first_id, "an image is most like itself: {like}");

    let picture = dir.join("picture-3.png").display().to_string();
    let by_image = imgfleet(&["search", "--image", &picture, "--limit", "1", "--json", "--server", &url]).await;
    assert_eq!(by_image.code, Some(0), "{}", by_image.describe());
    let by_image: Value = serde_json::from_str(&by_image.stdout).unwrap();
    assert_eq!(by_image[0]["payload"]["path"], picture.as_str(), "a stored image finds itself: {by_image}");

    // A server error comes back as the server's message, code and status.
    let bad = imgfleet(&["search", "--like", "not-a-point-id", "--server", &url]).await;
    assert_eq!(bad.code, Some(1), "{}", bad.describe());
    assert!(bad.stderr.starts_with("error: ") && bad.stderr.contains(", HTTP 4"), "{}", bad.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_of_a_missing_directory_fails_before_any_request() {
    let missing = tempfile::tempdir().unwrap().path().join("not-here");
    let missing_text = missing.display().to_string();
    // Port 1 has no server: the message must be about the directory, not the connection.
    let run = imgfleet(&["ingest", &missing_text, "--server", "http://127.0.0.1:1"]).await;
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(run.stderr.contains(&format!("cannot ingest {missing_text}: no such directory")), "{}", run.describe());
    assert!(!run.stderr.contains("cannot reach"), "{}", run.describe());

    let file = tempfile::NamedTempFile::new().unwrap();
    let file_text = file.path().display().to_string();
    let run = imgfleet(&["ingest", &file_text, "--server", "http://127.0.0.1:1"]).await;
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(run.stderr.contains("not a directory"), "{}", run.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported_with_how_to_point_at_one() {
    let dir = tempfile::tempdir().unwrap();
    let dir_text = dir.path().display().to_string();
    let expected = "cannot reach the imgfleet server at http://127.0.0.1:1: is `imgfleet serve` running? (--server / IMGFLEET_SERVER)";
    for args in [
        vec!["status", "some-job", "--server", "http://127.0.0.1:1"],
        vec!["ingest", dir_text.as_str(), "--server", "http://127.0.0.1:1"],
        vec!["jobs", "--server", "http://127.0.0.1:1"],
        vec!["search", "a photo", "--server", "http://127.0.0.1:1"],
    ] {
        let run = imgfleet(&args).await;
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.describe());
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.describe());
    }
    // IMGFLEET_SERVER is the default of --server.
    let mut command = tokio::process::Command::new(workspace_binary("imgfleet"));
    let output = command.args(["jobs"]).env("IMGFLEET_SERVER", "http://127.0.0.1:1").output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains(expected));
}
