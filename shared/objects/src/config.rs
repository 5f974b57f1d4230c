//! The S3 flags (`--s3-endpoint`, `--s3-region`, `--s3-allow-http`) and the credentials, resolved
//! once at start into an [`S3Config`] that builds a client per bucket.
//!
//! Credentials, first found wins: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+
//! `AWS_SESSION_TOKEN`); else the profile `AWS_PROFILE` (default `default`) of the shared
//! credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`); else, on AWS
//! itself (no endpoint), the instance's role through its metadata service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imgfleet_core::secret::Secret;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

/// Region when neither the flag nor `AWS_REGION`/`AWS_DEFAULT_REGION` names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Longest a single request may take, body included (a 256 MiB original on a slow link).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries inside one call are few and short: the pipeline retries a failed file itself, with
/// backoff, and a listing that fails is resumed by the scan's own retry.
const MAX_RETRIES: usize = 2;
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// Object storage flags, shared by every binary that reads buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct S3Args {
    /// URL of an S3-compatible server (MinIO, Ceph, R2, s3s-fs, ...), addressed path-style
    /// (ENDPOINT/bucket/key). Default: AWS S3 of --s3-region.
    #[arg(long = "s3-endpoint", env = "IMGFLEET_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Region of the buckets. Default: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long = "s3-region", env = "IMGFLEET_S3_REGION")]
    pub region: Option<String>,
    /// Allow a plain-http --s3-endpoint (requests and content travel unencrypted; signatures
    /// still hide the secret key). Refused without this flag.
    #[arg(long = "s3-allow-http", env = "IMGFLEET_S3_ALLOW_HTTP")]
    pub allow_http: bool,
}

/// A configuration that cannot work, said at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct S3ConfigError(pub String);

/// Static credentials (the secret parts hide themselves in logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// Where they came from, for the start-up log.
    pub origin: String,
}

/// [`S3Args`] resolved: what every client of this process is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: String,
    pub allow_http: bool,
    /// `None`: the instance's role (AWS only).
    pub credentials: Option<Credentials>,
}

impl S3Args {
    /// Resolves region and credentials from this process's environment and files.
    pub fn resolve(&self) -> Result<S3Config, S3ConfigError> {
        self.resolve_with(|name| std::env::var(name).ok().filter(|v| !v.is_empty()), |path| std::fs::read_to_string(path))
    }

    /// [`Self::resolve`] with the environment and the file system given (`env` answers `None`
    /// for an unset or empty variable).
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
        read_file: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<S3Config, S3ConfigError> {
        let endpoint = match self.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            None => None,
            Some(endpoint) => Some(check_endpoint(endpoint, self.allow_http)?),
        };
        let region = self
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let credentials = match credentials_from_env(&env)? {
            Some(credentials) => Some(credentials),
            None => credentials_from_file(&env, &read_file)?,
        };
        if credentials.is_none() && endpoint.is_some() {
            return Err(S3ConfigError(
                "--s3-endpoint is set but no S3 credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in \
                 ~/.aws/credentials (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE)"
                    .into(),
            ));
        }
        Ok(S3Config { endpoint, region, allow_http: self.allow_http, credentials })
    }
}

/// `http(s)://host[:port][/path]`, without a trailing `/`; plain http only when allowed.
fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<String, S3ConfigError> {
    let endpoint = endpoint.trim_end_matches('/');
    match endpoint.split_once("://") {
        Some(("https", rest)) if !rest.is_empty() => Ok(endpoint.to_owned()),
        Some(("http", rest)) if !rest.is_empty() => {
            if allow_http {
                Ok(endpoint.to_owned())
            } else {
                Err(S3ConfigError(format!(
                    "--s3-endpoint {endpoint} is plain http: requests and content would travel unencrypted; add --s3-allow-http \
                     (IMGFLEET_S3_ALLOW_HTTP=true) to allow it, or use https"
                )))
            }
        }
        _ => Err(S3ConfigError(format!("--s3-endpoint {endpoint:?} is not an http:// or https:// URL"))),
    }
}

fn credentials_from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Option<Credentials>, S3ConfigError> {
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret)) => Ok(Some(Credentials {
            access_key_id,
            secret_access_key: Secret::new(secret),
            session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
            origin: "the environment (AWS_ACCESS_KEY_ID)".into(),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(S3ConfigError("AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY".into())),
        (None, Some(_)) => Err(S3ConfigError("AWS_SECRET_ACCESS_KEY is set without AWS_ACCESS_KEY_ID".into())),
    }
}

/// The profile's keys from the shared credentials file. A missing file is no error unless a
/// profile or a file was named explicitly; a named profile missing from the file is.
fn credentials_from_file(
    env: &impl Fn(&str) -> Option<String>,
    read_file: &impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Option<Credentials>, S3ConfigError> {
    let named_file = env("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from);
    let named_profile = env("AWS_PROFILE");
    let Some(path) = named_file.clone().or_else(|| env("HOME").map(|home| Path::new(&home).join(".aws").join("credentials"))) else {
        return Ok(None);
    };
    let profile = named_profile.clone().unwrap_or_else(|| "default".to_owned());
    let text = match read_file(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && named_file.is_none() && named_profile.is_none() => return Ok(None),
        Err(e) => return Err(S3ConfigError(format!("the AWS credentials file {}: {e}", path.display()))),
    };
    let Some(section) = ini_section(&text, &profile) else {
        if named_profile.is_some() {
            return Err(S3ConfigError(format!("AWS_PROFILE {profile:?} is not in {}", path.display())));
        }
        return Ok(None);
    };
    let value = |key: &str| section.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    match (value("aws_access_key_id"), value("aws_secret_access_key")) {
        (Some(access_key_id), Some(secret)) => Ok(Some(Credentials {
            access_key_id,
            secret_access_key: Secret::new(secret),
            session_token: value("aws_session_token").map(Secret::new),
            origin: format!("profile {profile:?} of {}", path.display()),
        })),
        _ => Err(S3ConfigError(format!(
            "profile {profile:?} of {} needs aws_access_key_id and aws_secret_access_key",
            path.display()
        ))),
    }
}

/// The `key = value` pairs of `[name]` in an INI text (keys lowercased; `#` and `;` start
/// comment lines); `None` when there is no such section.
fn ini_section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut current_matches = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current_matches = header.trim() == name;
            if current_matches && found.is_none() {
                found = Some(Vec::new());
            }
            continue;
        }
        if current_matches && let Some((key, value)) = line.split_once('=') {
            found.get_or_insert_with(Vec::new).push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    found
}

impl S3Config {
    /// A client of `bucket`.
    pub fn client(&self, bucket: &str) -> Result<AmazonS3, object_store::Error> {
        let options = ClientOptions::new()
            .with_allow_http(self.allow_http)
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let retry = RetryConfig { max_retries: MAX_RETRIES, retry_timeout: RETRY_TIMEOUT, backoff: BackoffConfig::default() };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&self.region)
            .with_allow_http(self.allow_http)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(endpoint) = &self.endpoint {
            // Path style: an S3-compatible server rarely has a DNS name per bucket.
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        if let Some(credentials) = &self.credentials {
            builder = builder
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(credentials.secret_access_key.expose());
            if let Some(token) = &credentials.session_token {
                builder = builder.with_token(token.expose());
            }
        }
        builder.build()
    }

    /// Where the buckets are, for logs (no secret in it).
    pub fn describe(&self) -> String {
        let endpoint = self.endpoint.as_deref().unwrap_or("AWS S3");
        let credentials = self.credentials.as_ref().map_or("the instance's role", |c| c.origin.as_str());
        format!("{endpoint} (region {}, credentials from {credentials})", self.region)
    }
}

/// A client per bucket, built on first use and kept.
#[derive(Debug)]
pub(crate) struct Clients {
    config: S3Config,
    built: std::sync::Mutex<std::collections::HashMap<String, Arc<AmazonS3>>>,
}

impl Clients {
    pub(crate) fn new(config: S3Config) -> Self {
        Self { config, built: Default::default() }
    }

    pub(crate) fn config(&self) -> &S3Config {
        &self.config
    }

    pub(crate) fn get(&self, bucket: &str) -> Result<Arc<AmazonS3>, object_store::Error> {
        let mut built = self.built.lock().expect("clients lock");
        if let Some(client) = built.get(bucket) {
            return Ok(client.clone());
        }
        let client = Arc::new(self.config.client(bucket)?);
        built.insert(bucket.to_owned(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: &S3Args, vars: &[(&str, &str)], files: &[(&str, &str)]) -> Result<S3Config, S3ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let files: HashMap<PathBuf, String> = files.iter().map(|(k, v)| (PathBuf::from(k), v.to_string())).collect();
        args.resolve_with(
            |name| vars.get(name).cloned(),
            |path| files.get(path).cloned().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)),
        )
    }

    const FILE: &str = "# comment\n[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s3cret-default\n\n[ci]\n; another\nAWS_ACCESS_KEY_ID=AKCI\naws_secret_access_key= s3cret-ci \naws_session_token = tok\n";

    #[test]
    fn region_defaults_follow_the_aws_variables() {
        let args = S3Args::default();
        assert_eq!(resolve(&args, &[], &[]).unwrap().region, DEFAULT_REGION);
        assert_eq!(resolve(&args, &[("AWS_DEFAULT_REGION", "eu-west-1")], &[]).unwrap().region, "eu-west-1");
        assert_eq!(resolve(&args, &[("AWS_REGION", "eu-central-1"), ("AWS_DEFAULT_REGION", "x")], &[]).unwrap().region, "eu-central-1");
        let flagged = S3Args { region: Some("ap-south-1".into()), ..S3Args::default() };
        assert_eq!(resolve(&flagged, &[("AWS_REGION", "eu-central-1")], &[]).unwrap().region, "ap-south-1");
    }

    #[test]
    fn plain_http_endpoints_need_the_flag() {
        let keys = [("AWS_ACCESS_KEY_ID", "ak"), ("AWS_SECRET_ACCESS_KEY", "sk")];
        let http = S3Args { endpoint: Some("http://127.0.0.1:9000/".into()), ..S3Args::default() };
        let error = resolve(&http, &keys, &[]).unwrap_err().0;
        assert!(error.contains("--s3-allow-http"), "{error}");
        let allowed = S3Args { allow_http: true, ..http };
        assert_eq!(resolve(&allowed, &keys, &[]).unwrap().endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let https = S3Args { endpoint: Some("https://minio.example".into()), ..S3Args::default() };
        assert!(resolve(&https, &keys, &[]).is_ok());
        let bad = S3Args { endpoint: Some("minio:9000".into()), ..S3Args::default() };
        assert!(resolve(&bad, &keys, &[]).unwrap_err().0.contains("not an http"));
        // An endpoint has no instance role to fall back on.
        assert!(resolve(&https, &[], &[]).unwrap_err().0.contains("no S3 credentials"));
    }

    #[test]
    fn credentials_from_the_environment_then_the_profile() {
        let args = S3Args::default();
        let env = resolve(&args, &[("AWS_ACCESS_KEY_ID", "AKENV"), ("AWS_SECRET_ACCESS_KEY", "s3cret-env"), ("HOME", "/h")], &[("/h/.aws/credentials", FILE)])
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!((env.access_key_id.as_str(), env.secret_access_key.expose()), ("AKENV", "s3cret-env"));
        let default = resolve(&args, &[("HOME", "/h")], &[("/h/.aws/credentials", FILE)]).unwrap().credentials.unwrap();
        assert_eq!((default.access_key_id.as_str(), default.secret_access_key.expose(), default.session_token), ("AKDEFAULT", "s3cret-default", None));
        let ci = resolve(&args, &[("AWS_PROFILE", "ci"), ("AWS_SHARED_CREDENTIALS_FILE", "/etc/creds")], &[("/etc/creds", FILE)])
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!((ci.access_key_id.as_str(), ci.secret_access_key.expose()), ("AKCI", "s3cret-ci"));
        assert_eq!(ci.session_token.as_ref().map(Secret::expose), Some("tok"));
        assert!(resolve(&args, &[("HOME", "/nowhere")], &[]).unwrap().credentials.is_none());
        assert!(resolve(&args, &[("AWS_PROFILE", "prod"), ("HOME", "/h")], &[("/h/.aws/credentials", FILE)]).unwrap_err().0.contains("\"prod\""));
        assert!(resolve(&args, &[("AWS_ACCESS_KEY_ID", "AK")], &[]).unwrap_err().0.contains("without AWS_SECRET_ACCESS_KEY"));
    }

    #[test]
    fn secrets_never_show() {
        let config = resolve(&S3Args::default(), &[("AWS_ACCESS_KEY_ID", "AKENV"), ("AWS_SECRET_ACCESS_KEY", "s3cret-env"), ("AWS_SESSION_TOKEN", "t0ken")], &[]).unwrap();
        let shown = format!("{config:?} {}", config.describe());
        assert!(!shown.contains("s3cret") && !shown.contains("t0ken"), "{shown}");
    }
}
