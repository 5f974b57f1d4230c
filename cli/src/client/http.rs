//! The HTTP side of the client: the options every command takes ([`ClientArgs`]), the server's
//! URL, the `Api` client that sends a request and reads the JSON answer, and [`ClientError`], why
//! a request failed (the server's `{"error": {"code", "message"}}` among others).

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::{Client, Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use super::format::clip;

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of the imgfleet server.
    #[arg(long, env = "IMGFLEET_SERVER", default_value = "http://127.0.0.1:8000", value_name = "URL")]
    pub server: String,
    /// API key, sent as `x-api-key` (needed when the server was started with --api-key).
    #[arg(long, env = "IMGFLEET_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Print the server's JSON response instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No connection could be made.
    Unreachable { server: String },
    /// The server answered with an error.
    Api { status: StatusCode, code: String, message: String },
    /// Anything else: timeouts, broken connections, bodies that are not JSON.
    Other(String),
}

impl ClientError {
    /// Worth retrying while following a job.
    pub(super) fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Other(_) => true,
            Self::Api { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { server } => write!(
                f,
                "cannot reach the imgfleet server at {server}: is `imgfleet serve` running? (--server / IMGFLEET_SERVER)"
            ),
            Self::Api { status, code, message } => {
                write!(f, "{message} ({code}, HTTP {})", status.as_u16())?;
                if *status == StatusCode::UNAUTHORIZED {
                    write!(f, "; pass a key with --api-key / IMGFLEET_API_KEY")?;
                }
                Ok(())
            }
            Self::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ClientError {}

/// The error a non-2xx answer stands for: the server's `{"error": {"code", "message"}}`, or the
/// status and the start of the body when it is something else (a proxy's page, …).
pub fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { error }) => ClientError::Api { status, code: error.code, message: error.message },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("request failed").to_owned()
            } else {
                clip(text, 300)
            };
            ClientError::Api { status, code: "http_error".into(), message }
        }
    }
}

/// The server's base URL from `--server`: `http://` is assumed when no scheme is given.
pub fn server_url(server: &str) -> anyhow::Result<Url> {
    let text = server.trim();
    let with_scheme = if text.contains("://") { text.to_owned() } else { format!("http://{text}") };
    let url = Url::parse(&with_scheme).with_context(|| format!("--server {server:?} is not a URL"))?;
    match url.scheme() {
        "http" => {}
        "https" => bail!("--server {server}: this build talks plain http only; put the server behind http or use a tunnel"),
        other => bail!("--server {server}: unsupported scheme {other:?}; use http://HOST:PORT"),
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        bail!("--server {server:?} is not an http://HOST:PORT URL");
    }
    Ok(url)
}

/// `base` + `/api/v1/` + `segments`, each segment percent-encoded.
pub fn api_url(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .expect("server_url checked that the URL can be a base")
        .pop_if_empty()
        .extend(["api", "v1"])
        .extend(segments);
    url
}

/// Requests to the server `--server` names, with the `--api-key` if one was given.
pub(super) struct Api {
    client: Client,
    base: Url,
    api_key: Option<String>,
}

impl Api {
    pub(super) fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let base = server_url(&args.server)?;
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Text and image search run the encoders; a cold model on CPU takes a while.
            .timeout(Duration::from_secs(300))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Self { client, base, api_key: args.api_key.clone().filter(|k| !k.is_empty()) })
    }

    pub(super) fn url(&self, segments: &[&str]) -> Url {
        api_url(&self.base, segments)
    }

    fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// A request about one job: a 404 says there is no such job.
    pub(super) async fn job_request(&self, method: Method, segments: &[&str], job: &str) -> anyhow::Result<Value> {
        match self.request(method, segments, None).await {
            Ok(raw) => Ok(raw),
            Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) => bail!("no job {job}"),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn request(&self, method: Method, segments: &[&str], body: Option<&Value>) -> Result<Value, ClientError> {
        self.send(method, self.url(segments), body).await
    }

    pub(super) async fn send(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Value, ClientError> {
        let what = format!("{method} {}", url.path());
        let mut request = self.client.request(method, url).header("accept", "application/json");
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&what, e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport_error(&what, e))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Other(format!(
                "{what}: the server at {} answered HTTP {} with a body that is not JSON ({e}): {}",
                self.server(),
                status.as_u16(),
                clip(&String::from_utf8_lossy(&bytes), 200)
            ))
        })
    }

    /// Posts a multipart form (an upload) and reads the JSON answer.
    pub(super) async fn send_multipart(&self, url: Url, form: reqwest::multipart::Form) -> Result<Value, ClientError> {
        let what = format!("POST {}", url.path());
        let mut request = self.client.post(url).header("accept", "application/json").multipart(form);
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&what, e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport_error(&what, e))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Other(format!("{what}: the answer is not JSON ({e})")))
    }

    fn transport_error(&self, what: &str, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            return ClientError::Unreachable { server: self.server() };
        }
        if e.is_timeout() {
            return ClientError::Other(format!("{what}: the server at {} did not answer in time", self.server()));
        }
        // The chain says what failed (reset connection, bad response, …).
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        ClientError::Other(format!("{what} to {}: {text}", self.server()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::exit_code;

    #[test]
    fn urls() {
        let base = server_url("http://127.0.0.1:8000").unwrap();
        assert_eq!(api_url(&base, &["ingest", "status", "j-1"]).as_str(), "http://127.0.0.1:8000/api/v1/ingest/status/j-1");
        assert_eq!(api_url(&base, &["ingest", "status", "a/b c"]).as_str(), "http://127.0.0.1:8000/api/v1/ingest/status/a%2Fb%20c");
        let prefixed = server_url("http://example.org/imgfleet/").unwrap();
        assert_eq!(api_url(&prefixed, &["search"]).as_str(), "http://example.org/imgfleet/api/v1/search");
        assert_eq!(server_url("localhost:8000").unwrap().as_str(), "http://localhost:8000/");
        assert!(server_url("https://example.org").is_err());
        assert!(server_url("ftp://example.org").is_err());
        assert!(server_url("http://").is_err());
    }

    #[test]
    fn errors_read_the_server_error_shape() {
        let body = br#"{"error": {"code": "not_found", "message": "job \"x\" not found"}}"#;
        let error = api_error(StatusCode::NOT_FOUND, body);
        assert_eq!(error.to_string(), r#"job "x" not found (not_found, HTTP 404)"#);
        let error = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(error.to_string(), "<html>bad gateway</html> (http_error, HTTP 502)");
        assert!(error.is_transient());
        let error = api_error(StatusCode::INTERNAL_SERVER_ERROR, b"");
        assert_eq!(error.to_string(), "Internal Server Error (http_error, HTTP 500)");
        let unauthorized = api_error(StatusCode::UNAUTHORIZED, br#"{"error": {"code": "unauthorized", "message": "missing x-api-key"}}"#);
        assert!(unauthorized.to_string().contains("--api-key"), "{unauthorized}");
        assert!(!unauthorized.is_transient());
        let unreachable = ClientError::Unreachable { server: "http://127.0.0.1:1".into() };
        assert_eq!(
            unreachable.to_string(),
            "cannot reach the imgfleet server at http://127.0.0.1:1: is `imgfleet serve` running? (--server / IMGFLEET_SERVER)"
        );
        assert_eq!(exit_code(Err(unreachable.into())), 1);
        assert_eq!(exit_code(Ok(130)), 130);
    }
}
