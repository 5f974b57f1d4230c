//! The web UI in a real headless Chromium, driven over WebDriver (chromedriver, through
//! fantoccini), against a real `imgfleet serve` on the tiny fixture models: search by words, by
//! a picked file and by a dropped image, an image's detail view with the arrow keys and Escape,
//! "more like this", the gallery's infinite scroll, duplicate groups (exact and near), an ingest
//! and an upload followed live to the end, the fleet page, the offline `/docs`; and a server
//! that wants an API key (the prompt, a wrong key, the right one, thumbnails through `fetch`).
//!
//! Needs `chromedriver` and Chromium (Debian: `apt-get install chromium chromium-driver`):
//! `IMGFLEET_TEST_CHROMEDRIVER` names the driver, else it is looked up on PATH;
//! `IMGFLEET_TEST_CHROME` may name the browser binary. Without a driver each test fails, saying
//! how to install one; `scripts/test` skips them (and counts them as skipped) where there is none.
//!
//! A PNG of each page is saved under `IMGFLEET_SCREENSHOTS` (default: `screenshots/` in Cargo's
//! temp dir for tests, `target/tmp`), one folder per test; a wait that times out saves one
//! named `FAILED-…` first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use imgfleet_tests::harness::{ChildProcess, fixture_models};
use imgfleet_tests::process::{free_port, http_ok, wait_ready};
use imgfleet_worker_cpu::corpus::{self, CorpusSpec, picture};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// WebDriver key codes (the spec's private-use code points).
const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";
const ARROW_RIGHT: &str = "\u{E014}";

const WAIT: Duration = Duration::from_secs(60);
const JOB_WAIT: Duration = Duration::from_secs(180);

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|path| path.is_file())
}

fn chromedriver() -> PathBuf {
    std::env::var_os("IMGFLEET_TEST_CHROMEDRIVER")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| on_path("chromedriver"))
        .expect("chromedriver not found: apt-get install chromium chromium-driver (scripts/setup does), or set IMGFLEET_TEST_CHROMEDRIVER")
}

fn screenshots(test: &str) -> PathBuf {
    let root = std::env::var_os("IMGFLEET_SCREENSHOTS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
    let dir = root.join(test);
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

/// chromedriver in its own process group, killed (with the browsers it started) on drop.
struct Driver {
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group: chromedriver and every Chromium process under it.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One headless Chromium session on the UI of the server at `base` (`http://ADDR/`).
struct Browser {
    client: Client,
    base: String,
    shots: PathBuf,
    _driver: Driver,
}

impl Browser {
    async fn start(base: String, test: &str) -> Self {
        let driver = chromedriver();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("imgfleet-chromedriver-{port}.log"));
        let mut command = Command::new(&driver);
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("chromedriver log"));
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        wait_ready(&mut child, "chromedriver", &log, Duration::from_secs(30), Duration::from_millis(100), || http_ok(port, "/status", &[]))
            .unwrap_or_else(|e| panic!("{e}"));
        let driver = Driver { child };

        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900", "--lang=en-US"],
        });
        if let Some(chrome) = std::env::var_os("IMGFLEET_TEST_CHROME").filter(|p| !p.is_empty()) {
            options["binary"] = json!(chrome.to_string_lossy());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        let mut builder = ClientBuilder::native();
        builder.capabilities(capabilities);
        let client = builder.connect(&format!("http://127.0.0.1:{port}")).await.unwrap_or_else(|e| panic!("a WebDriver session: {e}"));
        Self { client, base, shots: screenshots(test), _driver: driver }
    }

    /// Opens `path` (relative to the server's root, e.g. `#/gallery`).
    async fn go(&self, path: &str) {
        self.client.goto(&format!("{}{path}", self.base)).await.unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` until it returns something truthy, and returns that; on timeout saves a
    /// screenshot and fails with `what`.
    async fn wait_until(&self, what: &str, timeout: Duration, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.js(script, args.clone()).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let name = format!("FAILED-{}", what.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
                self.shot(&name).await;
                let status = self.js(STATUS_TEXT, vec![]).await;
                panic!("timed out after {timeout:?} waiting for {what} (screenshot {name}.png); page: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        self.wait_until(what, WAIT, script, args).await
    }

    async fn click(&self, css: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.click().await.unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Real key presses into the element (WebDriver "element send keys"); for a file input,
    /// the path of a file to pick.
    async fn keys(&self, css: &str, text: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.send_keys(text).await.unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    async fn shot(&self, name: &str) {
        match self.client.screenshot().await {
            Ok(png) => std::fs::write(self.shots.join(format!("{name}.png")), png).expect("writing a screenshot"),
            Err(e) => eprintln!("no screenshot {name}: {e}"),
        }
    }

    async fn close(self) {
        let Browser { client, _driver, .. } = self;
        let _ = client.close().await;
    }
}

/// What a failed wait reports: the URL and every status line on the page.
const STATUS_TEXT: &str = r#"
return location.href + ' | ' + [...document.querySelectorAll('.status, [data-testid=toast], .key-reason, [data-testid=job-row]')]
  .map(e => e.textContent.trim()).filter(Boolean).join(' | ');
"#;

/// Ids of the elements matching `css`, in page order (`data-id`).
const IDS: &str = "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset.id)";

fn jpeg(seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&picture(120, 90, seed)).unwrap();
    out
}

async fn api(client: &reqwest::Client, server: &ChildProcess, key: Option<&str>, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut request = client.request(method, server.url(path));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// Ingests `dir` through the API and waits for the job to complete.
async fn ingest(client: &reqwest::Client, server: &ChildProcess, key: Option<&str>, dir: &Path) -> Value {
    let accepted = api(client, server, key, reqwest::Method::POST, "/api/v1/ingest/", Some(json!({"directory_path": dir.display().to_string()}))).await;
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let job = api(client, server, key, reqwest::Method::GET, &format!("/api/v1/ingest/status/{job_id}"), None).await;
        if job["status"] != "queued" && job["status"] != "running" {
            assert_eq!(job["status"], "completed", "{job}");
            return job;
        }
        assert!(Instant::now() < deadline, "job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `path -> id` of every stored image.
async fn ids_by_path(client: &reqwest::Client, server: &ChildProcess, key: Option<&str>) -> std::collections::BTreeMap<String, String> {
    let page = api(client, server, key, reqwest::Method::GET, "/api/v1/images?per_page=500", None).await;
    let mut out = std::collections::BTreeMap::new();
    for item in page["items"].as_array().unwrap() {
        for path in item["payload"]["paths"].as_array().unwrap() {
            out.insert(path.as_str().unwrap().to_owned(), item["id"].as_str().unwrap().to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_searches_browses_reviews_duplicates_and_follows_jobs() {
    chromedriver();
    let root = tempfile::tempdir().unwrap();
    let root_dir = root.path().canonicalize().unwrap();
    let data = tempfile::tempdir().unwrap();
    // 45 distinct pictures, 5 exact copies (one image with two paths each), 2 broken files,
    // and one picture twice in two encodings (two images that look the same: near duplicates).
    let library = root_dir.join("library");
    let spec = CorpusSpec { unique: 45, duplicates: 5, broken: 2, min_side: 64, max_side: 160, seed: 17 };
    let corpus = corpus::generate(&library, &spec).unwrap();
    let twin = picture(120, 90, 4242);
    std::fs::create_dir_all(library.join("near")).unwrap();
    image::DynamicImage::ImageRgb8(twin.clone()).save(library.join("near/twin.png")).unwrap();
    let mut twin_jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut twin_jpeg, 95).encode_image(&twin).unwrap();
    std::fs::write(library.join("near/twin.jpg"), twin_jpeg).unwrap();
    // Ingested from the UI later: 6 pictures and a file that is not one.
    let later = root_dir.join("later");
    std::fs::create_dir_all(&later).unwrap();
    for seed in 0..6 {
        std::fs::write(later.join(format!("later_{seed}.jpg")), jpeg(900 + seed)).unwrap();
    }
    std::fs::write(later.join("broken.jpg"), b"not a picture at all").unwrap();
    // Uploaded from the UI: outside the ingest root, as a user's own file would be.
    let upload = tempfile::tempdir().unwrap();
    let upload_file = upload.path().join("from-my-laptop.jpg");
    std::fs::write(&upload_file, jpeg(7777)).unwrap();

    let server = ChildProcess::serve_tiny(data.path(), Some(root_dir.as_path()), true);
    let http = reqwest::Client::new();
    let job = ingest(&http, &server, None, &library).await;
    let distinct = spec.unique + 2;
    assert_eq!(job["counts"]["processed"], distinct, "{job}");
    let ids = ids_by_path(&http, &server, None).await;
    let id_of = |path: &PathBuf| ids[&path.display().to_string()].clone();
    let twins = [id_of(&library.join("near/twin.png")), id_of(&library.join("near/twin.jpg"))];

    let ui = Browser::start(server.url("/"), "ui-main").await;

    // Search by words (Enter submits).
    ui.go("").await;
    ui.wait("the search page", "return location.hash === '#/search' && document.querySelector('[data-testid=search-input]')", vec![]).await;
    ui.keys("[data-testid=search-input]", &format!("a photo of a red circle{ENTER}")).await;
    let found = ui.wait("text results", "return document.querySelectorAll('[data-testid=search-result]').length", vec![]).await;
    assert!(found.as_u64().unwrap() >= 10, "{found}");
    let scores = ui.js("return [...document.querySelectorAll('[data-testid=result-score]')].map(e => Number(e.textContent))", vec![]).await;
    let scores: Vec<f64> = scores.as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "nearest first: {scores:?}");
    assert!(ui.js("return location.hash", vec![]).await.as_str().unwrap().starts_with("#/search?q="), "the query is in the URL");
    ui.wait("thumbnails", "return [...document.querySelectorAll('[data-testid=search-result] img')].some(i => i.naturalWidth > 0)", vec![]).await;
    ui.shot("01-search-words").await;

    // Search by a picked file: the stored image itself comes first.
    let picked = &corpus.unique[3];
    ui.keys("[data-testid=search-file]", &picked.display().to_string()).await;
    // A new query empties the results at once and names itself in the URL: wait for both.
    let first = "return location.hash.includes(arguments[1]) && document.querySelector('[data-testid=search-result]')?.dataset.id === arguments[0]";
    ui.wait("the picked image first", first, vec![json!(id_of(picked)), json!(format!("image={}", picked.file_name().unwrap().to_string_lossy()))]).await;
    ui.shot("02-search-picked-file").await;

    // Search by a dropped image (a synthetic drop event carrying a real file).
    let dropped = &corpus.unique[7];
    let dropped_id = id_of(dropped);
    ui.js(
        r#"
        const [id] = arguments;
        fetch('api/v1/images/' + id + '/file').then(r => r.blob()).then(blob => {
          const data = new DataTransfer();
          data.items.add(new File([blob], 'dropped-image', { type: blob.type }));
          document.querySelector('[data-testid=drop-zone]').dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
        });
        return true;
        "#,
        vec![json!(dropped_id)],
    )
    .await;
    ui.wait("the dropped image first", first, vec![json!(dropped_id), json!("image=dropped-image")]).await;
    let results = ui.js(IDS, vec![json!("[data-testid=search-result]")]).await;
    let results: Vec<String> = serde_json::from_value(results).unwrap();

    // Open the first result: its detail over the list; → goes to the next result, Escape back.
    ui.click("[data-testid=search-result] [data-testid=result-open]").await;
    let detail = "return document.querySelector('#detail-dialog[open] [data-testid=detail-view]')?.dataset.id === arguments[0] && document.querySelector('[data-testid=detail-paths] li')?.textContent";
    let paths = ui.wait("the detail view", detail, vec![json!(dropped_id)]).await;
    assert!(paths.as_str().unwrap().contains(&dropped.display().to_string()), "{paths}");
    ui.wait("the similar images", "return document.querySelectorAll('[data-testid=similar-item]').length", vec![]).await;
    ui.wait("the large image", "return document.querySelector('[data-testid=detail-image]').naturalWidth", vec![]).await;
    ui.shot("03-detail").await;
    ui.keys("[data-testid=detail-view]", ARROW_RIGHT).await;
    ui.wait("the next result", detail, vec![json!(results[1])]).await;
    ui.keys("[data-testid=detail-view]", ESCAPE).await;
    ui.wait("back to the results", "return !document.querySelector('#detail-dialog[open]') && location.hash.startsWith('#/search')", vec![]).await;
    assert_eq!(ui.js(IDS, vec![json!("[data-testid=search-result]")]).await, json!(results), "the list is kept as it was");

    // More like this on another result (not one of the twins, whose vectors are all but equal:
    // either could come first): that image comes first.
    let like = results.iter().position(|id| *id != dropped_id && !twins.contains(id)).unwrap();
    ui.click(&format!("[data-testid=search-result]:nth-child({}) [data-testid=more-like-this]", like + 1)).await;
    ui.wait("more like this", first, vec![json!(results[like]), json!(format!("like={}", results[like]))]).await;
    ui.shot("04-more-like-this").await;

    // The gallery, 20 a page: scrolling loads the next pages until every image is there.
    // In id order: a stable order for paging (every image has an id; ties cannot reorder pages).
    // (The browser keeps 250 resource timings by default: make room to count the page requests.)
    ui.js("performance.setResourceTimingBufferSize(100000); performance.clearResourceTimings(); return true", vec![]).await;
    ui.go("#/gallery?per_page=20&sort=id").await;
    // The first page, and maybe the next ones already: they load while the end of the grid is
    // within a screen of the viewport.
    ui.wait("the first page", "return document.querySelectorAll('[data-testid=gallery-item]').length >= 20", vec![]).await;
    let total = ui.wait("the total", "return document.querySelector('[data-testid=gallery-total]').textContent.match(/^\\d+/)?.[0]", vec![]).await;
    assert_eq!(total, json!(distinct.to_string()));
    ui.wait("thumbnails", "return [...document.querySelectorAll('[data-testid=gallery-item] img')].some(i => i.naturalWidth > 0)", vec![]).await;
    ui.shot("05-gallery").await;
    let scroll = "document.querySelector('[data-testid=gallery-sentinel]').scrollIntoView(); return document.querySelectorAll('[data-testid=gallery-item]').length";
    ui.wait("a second page", &format!("{scroll} > 20"), vec![]).await;
    ui.wait("every page", &format!("{scroll} === {distinct}"), vec![]).await;
    ui.wait("the end", "return document.querySelector('[data-testid=gallery-end]').textContent.includes('End')", vec![]).await;
    // Page by page, 20 at a time: never the whole collection in one request.
    let pages = ui.js("return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/api/v1/images?')).map(n => new URL(n).searchParams).filter(p => p.get('per_page') === '20').map(p => Number(p.get('page')))", vec![]).await;
    let mut pages: Vec<u64> = serde_json::from_value(pages).unwrap();
    pages.sort_unstable();
    assert_eq!(pages, [1, 2, 3], "one request per page");
    let listed = ui.js(IDS, vec![json!("[data-testid=gallery-item]")]).await;
    let mut listed: Vec<String> = serde_json::from_value(listed).unwrap();
    listed.sort();
    listed.dedup();
    assert_eq!(listed.len(), distinct, "each image once");
    ui.shot("06-gallery-scrolled").await;

    // Exact copies: the 5 images found under two paths.
    ui.go("#/duplicates").await;
    ui.wait("the scan", "return !document.querySelector('[data-testid=dup-exact-more]').disabled && document.querySelector('[data-testid=dup-exact-status]').textContent.includes('copies')", vec![]).await;
    let groups = ui.js(IDS, vec![json!("[data-testid=dup-exact-group]")]).await;
    let mut groups: Vec<String> = serde_json::from_value(groups).unwrap();
    groups.sort();
    let mut copied: Vec<String> = corpus.duplicates.iter().map(|(_, original)| id_of(original)).collect();
    copied.sort();
    assert_eq!(groups, copied);
    let two = ui.js("return [...document.querySelectorAll('[data-testid=dup-exact-group]')].every(g => g.querySelectorAll('.paths li').length === 2)", vec![]).await;
    assert_eq!(two, json!(true));
    ui.shot("07-duplicates-exact").await;

    // Near duplicates: the two encodings of one picture are in one group; mark it reviewed.
    ui.click("[data-testid=dup-tab-near]").await;
    ui.click("[data-testid=dup-find]").await;
    ui.wait("the groups", "return document.querySelector('[data-testid=dup-status]').textContent.includes('examined')", vec![]).await;
    let twin_group = r#"
      return [...document.querySelectorAll('[data-testid=dup-near-group]')]
        .findIndex(g => arguments[0].every(id => g.dataset.ids.split(',').includes(id))) + 1
    "#;
    // Ten groups a page, largest first: page on until the twins' group shows.
    let position = loop {
        let position = ui.js(twin_group, vec![json!(twins)]).await.as_u64().unwrap();
        if position > 0 {
            break position;
        }
        let more = ui.js("const next = document.querySelector('[data-testid=dup-next]'); return !next.closest('[hidden]') && !next.disabled", vec![]).await;
        assert_eq!(more, json!(true), "no group holds both encodings of the twin picture: {}", ui.js(STATUS_TEXT, vec![]).await);
        ui.click("[data-testid=dup-next]").await;
    };
    let group = format!("[data-testid=dup-near-group]:nth-child({position})");
    ui.wait("sizes and dates", &format!("return [...document.querySelectorAll('{group} [data-testid=dup-item-details]')].every(d => d.textContent.includes('×'))"), vec![]).await;
    ui.click(&format!("{group} [data-testid=dup-mark-reviewed]")).await;
    ui.wait("reviewed", &format!("return document.querySelector('{group}').dataset.reviewed === 'true'"), vec![]).await;
    ui.shot("08-duplicates-near").await;

    // An ingest started from the UI, followed live to its end, with its failure and reason.
    ui.go("#/jobs").await;
    ui.keys("[data-testid=ingest-path]", &later.display().to_string()).await;
    ui.click("[data-testid=ingest-start]").await;
    let row = "[...document.querySelectorAll('[data-testid=job-row]')].find(r => r.dataset.dir === arguments[0])";
    ui.wait("the job's row", &format!("return {row}"), vec![json!(later.display().to_string())]).await;
    ui.shot("09-jobs-running").await;
    let counts = ui
        .wait_until("the job to complete", JOB_WAIT, &format!("const r = {row}; return r?.dataset.status === 'completed' && r.querySelector('[data-testid=job-counts]').textContent"), vec![json!(later.display().to_string())])
        .await;
    let counts = counts.as_str().unwrap();
    assert!(counts.contains("7 found") && counts.contains("6 processed") && counts.contains("1 failed"), "{counts}");
    let failures = ui.js(&format!("return {row}.querySelector('[data-testid=job-failures]').textContent"), vec![json!(later.display().to_string())]).await;
    assert!(failures.as_str().unwrap().contains("broken.jpg"), "{failures}");
    assert_eq!(ui.js(&format!("return {row}.querySelector('progress').value"), vec![json!(later.display().to_string())]).await, json!(100));
    ui.shot("10-jobs-completed").await;

    // An upload from the page: the file is taken, its job completes, the image is there.
    ui.keys("[data-testid=upload-input]", &upload_file.display().to_string()).await;
    ui.wait("the upload's answer", "return document.querySelector('[data-testid=upload-result][data-outcome=queued]')?.textContent", vec![]).await;
    ui.wait_until("the upload job", JOB_WAIT, "return [...document.querySelectorAll('[data-testid=job-row]')].some(r => r.dataset.dir === 'upload://' && r.dataset.status === 'completed')", vec![]).await;
    ui.shot("11-jobs-upload").await;
    let all = ids_by_path(&http, &server, None).await;
    assert!(all.keys().any(|p| p.starts_with("upload://") && p.ends_with("/from-my-laptop.jpg")), "{all:?}");

    // The fleet page: the in-process encoder and the queue depths.
    ui.go("#/fleet").await;
    ui.wait("the workers", "return !document.querySelector('[data-testid=fleet-totals]').textContent.startsWith('Loading')", vec![]).await;
    ui.wait("the queues", "return document.querySelectorAll('[data-testid=fleet-queue]').length", vec![]).await;
    ui.shot("12-fleet").await;

    // Dark theme (the toggle goes auto → light → dark).
    ui.click("[data-testid=theme-toggle]").await;
    ui.click("[data-testid=theme-toggle]").await;
    assert_eq!(ui.js("return document.documentElement.dataset.theme", vec![]).await, json!("dark"));
    ui.go("#/gallery").await;
    ui.wait("thumbnails", "return [...document.querySelectorAll('[data-testid=gallery-item] img')].some(i => i.naturalWidth > 0)", vec![]).await;
    ui.shot("13-gallery-dark").await;

    // /docs renders the API reference from inside the binary.
    ui.go("docs").await;
    ui.wait("the API reference", "return document.querySelector('redoc') && document.body.textContent.includes('/api/v1/search')", vec![]).await;
    let script = ui.js("return document.querySelector('script[src]').src", vec![]).await;
    assert!(script.as_str().unwrap().starts_with(&server.url("/ui/")), "{script}");
    ui.shot("14-docs").await;

    ui.close().await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_asks_for_the_api_key_and_then_works() {
    chromedriver();
    const KEY: &str = "ui-test-key";
    let root = tempfile::tempdir().unwrap();
    let root_dir = root.path().canonicalize().unwrap();
    let data = tempfile::tempdir().unwrap();
    let photos = root_dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for seed in 0..6 {
        std::fs::write(photos.join(format!("p{seed}.jpg")), jpeg(500 + seed)).unwrap();
    }
    let models = fixture_models();
    let clip = models.join("clip-tiny-224").display().to_string();
    let root_arg = root_dir.display().to_string();
    let server = ChildProcess::serve(data.path(), &["--clip-model", clip.as_str(), "--no-caption", "--device", "cpu", "--ingest-root", root_arg.as_str(), "--api-key", KEY]);
    let http = reqwest::Client::new();
    let refused = http.get(server.url("/api/v1/collections")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // The page itself is public: only the API behind it wants the key.
    assert_eq!(http.get(server.url("/")).send().await.unwrap().status(), StatusCode::OK);
    ingest(&http, &server, Some(KEY), &photos).await;

    let ui = Browser::start(server.url("/"), "ui-api-key").await;
    ui.go("#/gallery").await;
    ui.wait("the key prompt", "return document.querySelector('#key-dialog[open]')", vec![]).await;
    ui.shot("20-key-prompt").await;

    // A wrong key: refused, asked again.
    ui.keys("[data-testid=key-input]", &format!("not-the-key{ENTER}")).await;
    ui.wait("the prompt again", "return document.querySelector('#key-dialog[open]') && document.querySelector('[data-testid=key-reason]').textContent.includes('refused')", vec![]).await;
    // The right one: the gallery loads, thumbnails come through fetch with the header.
    ui.keys("[data-testid=key-input]", &format!("{KEY}{ENTER}")).await;
    ui.wait("the gallery", "return !document.querySelector('#key-dialog[open]') && document.querySelectorAll('[data-testid=gallery-item]').length === 6", vec![]).await;
    ui.wait("thumbnails through fetch", "return [...document.querySelectorAll('[data-testid=gallery-item] img')].some(i => i.src.startsWith('blob:') && i.naturalWidth > 0)", vec![]).await;
    assert_eq!(ui.js("return localStorage.getItem('imgfleet.apiKey')", vec![]).await, json!(KEY));
    ui.shot("21-gallery-with-key").await;

    // The key is kept: a fresh page load works without a prompt, search included.
    ui.go("#/search?q=a%20picture").await;
    ui.client.refresh().await.unwrap();
    ui.wait("results", "return document.querySelectorAll('[data-testid=search-result]').length", vec![]).await;
    assert_eq!(ui.js("return !!document.querySelector('#key-dialog[open]')", vec![]).await, json!(false));
    ui.click("[data-testid=search-result] [data-testid=result-open]").await;
    ui.wait("the large image", "return document.querySelector('#detail-dialog[open] [data-testid=detail-image]')?.naturalWidth", vec![]).await;
    ui.shot("22-detail-with-key").await;

    ui.close().await;
    assert!(server.terminate().success());
}
