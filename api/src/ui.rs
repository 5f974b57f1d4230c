//! The web UI at `/` and the offline `/docs` page: plain HTML, CSS and ES modules from `api/ui/`
//! (no build step), embedded in the binary, so the server needs no files beside it and the pages
//! need nothing from elsewhere (no CDN, no web font).
//!
//! Every URL the pages use is relative (`ui/…`, `api/v1/…`): the page is always the root of
//! wherever the server is mounted, so a reverse proxy may put it under a path prefix.
//!
//! Caching: assets live under `ui/<version>/…`, where the version is a digest of every asset.
//! Modules import each other relatively, so the whole tree inherits the versioned folder and
//! can be cached as immutable; only the page at `/` (which names the version) is revalidated on
//! each visit. Every response carries an `ETag` (a digest of its bytes, computed on first use)
//! and answers `If-None-Match` with 304.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::error::AppError;
use crate::state::AppState;

/// Redoc's folder under `ui/`, named with its version (see `api/ui/vendor/README.md`).
const REDOC_DIR: &str = "vendor/redoc-2.5.4";

struct Asset {
    /// Path under `api/ui/`, as the pages request it under `ui/<version>/`.
    path: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($path:literal),* $(,)?) => {
        &[$(Asset { path: $path, bytes: include_bytes!(concat!("../ui/", $path)) }),*]
    };
}

/// Everything served under `ui/`. A file missing from this list is not served (and a test
/// checks that every module's imports are in it).
const ASSETS: &[Asset] = assets![
    "app.js",
    "app.css",
    "icon.svg",
    "lib/api.js",
    "lib/dom.js",
    "lib/filters.js",
    "lib/images.js",
    "lib/router.js",
    "views/detail.js",
    "views/duplicates.js",
    "views/fleet.js",
    "views/gallery.js",
    "views/jobs.js",
    "views/search.js",
    "vendor/redoc-2.5.4/redoc.standalone.js",
    "vendor/redoc-2.5.4/redoc.standalone.js.LICENSE.txt",
    "vendor/redoc-2.5.4/LICENSE",
];

/// The page at `/`, with `{{VERSION}}` (the assets' folder) and `{{BOOT}}` (the inline script)
/// filled in on first use.
const INDEX_TEMPLATE: &str = include_str!("../ui/index.html");
/// Runs before the page draws (trailing-slash fix behind a proxy, saved theme); inlined so it
/// costs no request, and allowed by its hash in the page's Content-Security-Policy.
const BOOT_SCRIPT: &str = include_str!("../ui/boot.js");

/// Revalidated on every use (cheap: a 304 without a body).
const REVALIDATE: &str = "no-cache";
/// Assets under the current version never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// What is computed once, on first use: digests, the version, the filled-in pages.
struct Catalog {
    /// First 12 hex digits of a digest over every asset.
    version: String,
    /// ETag of `ASSETS[i]`.
    etags: Vec<HeaderValue>,
    index: Vec<u8>,
    index_etag: HeaderValue,
    index_csp: HeaderValue,
    docs: String,
}

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    let etags = ASSETS.iter().map(|asset| etag(asset.bytes)).collect();
    let mut all = Sha256::new();
    for asset in ASSETS {
        all.update(asset.path.as_bytes());
        all.update((asset.bytes.len() as u64).to_le_bytes());
        all.update(asset.bytes);
    }
    let version = hex(&all.finalize())[..12].to_owned();
    let index = INDEX_TEMPLATE
        .replace("{{VERSION}}", &version)
        .replace("{{BOOT}}", &format!("<script>{BOOT_SCRIPT}</script>"))
        .into_bytes();
    let index_csp = format!(
        "default-src 'none'; script-src 'self' 'sha256-{}'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; \
         manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        base64(&Sha256::digest(BOOT_SCRIPT.as_bytes()))
    );
    let docs = DOCS_TEMPLATE.replace("{{UI}}", &format!("ui/{version}")).replace("{{REDOC}}", REDOC_DIR);
    Catalog {
        index_etag: etag(&index),
        index_csp: HeaderValue::from_str(&index_csp).expect("the policy is ASCII"),
        etags,
        version,
        index,
        docs,
    }
});

/// `/` (the page) and `/ui/…` (its assets). Merge into the app's router beside `/api/v1`.
pub fn routes() -> Router<AppState> {
    router()
}

fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/ui/{*path}", get(asset))
}

/// The `/docs` page: Redoc, served from inside the binary, rendering `api/v1/openapi.json`.
pub fn docs_page() -> Html<&'static str> {
    Html(CATALOG.docs.as_str())
}

/// Relative URLs, as in the UI: `/docs` resolves them against the server's root (or prefix).
/// The policy keeps the page to this server: Redoc's sidebar shows a logo from its CDN, which
/// the policy blocks (Redoc then hides it) so the page makes no outside request. Redoc needs
/// inline styles (styled-components) and a worker from a blob (its search index).
const DOCS_TEMPLATE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>imgfleet API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'">
<link rel="icon" href="{{UI}}/icon.svg" type="image/svg+xml">
<style>body { margin: 0; }</style>
</head>
<body>
<noscript>The raw OpenAPI document is at <a href="api/v1/openapi.json">api/v1/openapi.json</a>.</noscript>
<redoc spec-url="api/v1/openapi.json"></redoc>
<script src="{{UI}}/{{REDOC}}/redoc.standalone.js"></script>
</body>
</html>
"#;

async fn index(request: HeaderMap) -> Response {
    let catalog = &*CATALOG;
    let mut response = respond(&request, &catalog.index, "text/html; charset=utf-8", &catalog.index_etag, REVALIDATE);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, catalog.index_csp.clone());
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

async fn asset(uri: Uri, request: HeaderMap) -> Response {
    let catalog = &*CATALOG;
    let path = uri.path().strip_prefix("/ui/").unwrap_or_default();
    // `ui/<version>/app.js`; a plain `ui/app.js` is served too (uncached), for tools and links.
    let (cache, path) = match path.split_once('/') {
        Some((version, rest)) if is_version(version) => (if version == catalog.version { IMMUTABLE } else { REVALIDATE }, rest),
        _ => (REVALIDATE, path),
    };
    match ASSETS.iter().position(|asset| asset.path == path) {
        Some(i) => respond(&request, ASSETS[i].bytes, content_type(path), &catalog.etags[i], cache),
        None => AppError::not_found(format!("no UI file {path:?}")).into_response(),
    }
}

/// A version segment: 12 lowercase hex digits. An older page (cached before an upgrade) asking
/// for its version gets today's file, revalidated rather than cached for a year.
fn is_version(segment: &str) -> bool {
    segment.len() == 12 && segment.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn respond(request: &HeaderMap, body: &'static [u8], content_type: &'static str, etag: &HeaderValue, cache: &'static str) -> Response {
    let mut response = if not_modified(request, etag) { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let ok = response.status() == StatusCode::OK;
    let headers = response.headers_mut();
    if ok {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// `If-None-Match` lists `etag` (weak or strong: a GET compares weakly) or is `*`.
fn not_modified(request: &HeaderMap, etag: &HeaderValue) -> bool {
    etag_matches(request, etag.to_str().unwrap_or_default())
}

/// Whether the request's `If-None-Match` lists `ours` (compared weakly) or is `*`: the UI's
/// assets and the thumbnails answer it with 304.
pub(crate) fn etag_matches(request: &HeaderMap, ours: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("html") => "text/html; charset=utf-8",
        Some("png") => "image/png",
        // LICENSE, *.LICENSE.txt
        _ => "text/plain; charset=utf-8",
    }
}

/// A strong ETag: the first 16 hex digits of the bytes' SHA-256, quoted.
fn etag(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", &hex(&Sha256::digest(bytes))[..16])).expect("hex is a valid header")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding (CSP hash sources); the API crate has no base64 dependency.
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8) | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= chunk.len() { TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router::<()>().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    fn header_of<'a>(response: &'a Response, name: header::HeaderName) -> &'a str {
        response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[tokio::test]
    async fn the_page_names_its_versioned_assets_and_allows_only_its_own_inline_script() {
        let response = get("/", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header_of(&response, header::CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(header_of(&response, header::CACHE_CONTROL), REVALIDATE);
        let csp = header_of(&response, header::CONTENT_SECURITY_POLICY).to_owned();
        assert!(csp.contains(&format!("'sha256-{}'", base64(&Sha256::digest(BOOT_SCRIPT.as_bytes())))), "{csp}");
        let etag = header_of(&response, header::ETAG).to_owned();
        let page = String::from_utf8(to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();
        assert!(!page.contains("{{"), "every placeholder is filled: {page}");
        let version = &CATALOG.version;
        assert!(page.contains(&format!("src=\"ui/{version}/app.js\"")), "{page}");
        assert!(page.contains(&format!("<script>{BOOT_SCRIPT}</script>")), "the hashed script is inlined byte for byte");
        assert_eq!(get("/", Some(etag.as_str())).await.status(), StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn assets_have_their_type_an_etag_and_answer_304() {
        let version = CATALOG.version.clone();
        for (asset, kind) in [("app.js", "text/javascript; charset=utf-8"), ("app.css", "text/css; charset=utf-8"), ("icon.svg", "image/svg+xml")] {
            let response = get(&format!("/ui/{version}/{asset}"), None).await;
            assert_eq!(response.status(), StatusCode::OK, "{asset}");
            assert_eq!(header_of(&response, header::CONTENT_TYPE), kind);
            assert_eq!(header_of(&response, header::CACHE_CONTROL), IMMUTABLE);
            assert_eq!(header_of(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            let etag = header_of(&response, header::ETAG).to_owned();
            assert!(etag.starts_with('"') && etag.len() == 18, "{etag}");
            for tag in [etag.clone(), format!("W/{etag}"), format!("\"other\", {etag}"), "*".to_owned()] {
                let again = get(&format!("/ui/{version}/{asset}"), Some(tag.as_str())).await;
                assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{asset} {tag}");
                assert_eq!(header_of(&again, header::ETAG), etag);
                assert!(to_bytes(again.into_body(), usize::MAX).await.unwrap().is_empty());
            }
            assert_eq!(get(&format!("/ui/{version}/{asset}"), Some("\"other\"")).await.status(), StatusCode::OK);
        }
        // Unversioned, or an older version: served, but revalidated.
        for path in ["/ui/app.js".to_owned(), "/ui/0123456789ab/app.js".to_owned()] {
            let response = get(&path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header_of(&response, header::CACHE_CONTROL), REVALIDATE, "{path}");
        }
        for missing in [format!("/ui/{version}/nope.js"), format!("/ui/{version}/../src/ui.rs"), "/ui/".to_owned()] {
            assert_eq!(get(&missing, None).await.status(), StatusCode::NOT_FOUND, "{missing}");
        }
    }

    #[test]
    fn every_import_of_every_module_is_an_embedded_asset() {
        for asset in ASSETS.iter().filter(|a| a.path.ends_with(".js") && !a.path.starts_with("vendor/")) {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            let dir = asset.path.rsplit_once('/').map_or("", |(dir, _)| dir);
            for quote in ['\'', '"'] {
                for (at, _) in text.match_indices(&format!("from {quote}")) {
                    let rest = &text[at + 6..];
                    let target = &rest[..rest.find(quote).unwrap()];
                    assert!(target.starts_with("./") || target.starts_with("../"), "{}: import {target:?} must be relative", asset.path);
                    let resolved = resolve(dir, target);
                    assert!(ASSETS.iter().any(|a| a.path == resolved), "{}: imports {target:?} ({resolved}), which is not embedded", asset.path);
                }
            }
        }
    }

    fn resolve(dir: &str, target: &str) -> String {
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for part in target.split('/') {
            match part {
                "." => {}
                ".." => {
                    parts.pop();
                }
                other => parts.push(other),
            }
        }
        parts.join("/")
    }

    /// A URL starting with `/` would escape a reverse proxy's path prefix.
    #[test]
    fn the_pages_use_relative_urls_only() {
        let ours = ASSETS.iter().filter(|a| !a.path.starts_with("vendor/")).map(|a| (a.path, std::str::from_utf8(a.bytes).unwrap()));
        let pages = [("index.html", INDEX_TEMPLATE), ("boot.js", BOOT_SCRIPT), ("docs", DOCS_TEMPLATE)];
        for (path, text) in ours.chain(pages) {
            for absolute in ["\"/api", "'/api", "`/api", "src=\"/", "href=\"/", "url(/", "'/ui/", "\"/ui/", "`/ui/", "http://", "https://", "//cdn"] {
                let allowed = absolute == "http://" && path == "icon.svg"; // the SVG namespace
                assert!(allowed || !text.contains(absolute), "{path} contains {absolute:?}");
            }
        }
    }

    #[test]
    fn docs_use_the_vendored_redoc_and_the_local_document() {
        let page = docs_page().0;
        let script = format!("ui/{}/{REDOC_DIR}/redoc.standalone.js", CATALOG.version);
        assert!(page.contains(&format!("<script src=\"{script}\">")), "{page}");
        assert!(ASSETS.iter().any(|a| format!("ui/{}/{}", CATALOG.version, a.path) == script));
        assert!(page.contains("spec-url=\"api/v1/openapi.json\""));
        assert!(!page.contains("{{"), "every placeholder is filled: {page}");
    }
}
