//! API configuration: one clap struct, each flag also an `IMGFLEET_*` environment variable.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use imgfleet_core::secret::Secret;
use imgfleet_http::ServerLimits;
use imgfleet_http::auth::{ApiKeys, KeyConfigError, check_exposure};

/// The flag keys are given with, as error messages name it.
pub const API_KEY_FLAG: &str = "--api-key (IMGFLEET_API_KEYS)";

#[derive(Args, Debug, Clone)]
pub struct ApiConfig {
    /// Address to listen on (0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "IMGFLEET_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, env = "IMGFLEET_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Directory holding the embedded state (jobs, dedup) and vector store (collections).
    #[arg(long, env = "IMGFLEET_DATA_DIR", default_value = "imgfleet-data")]
    pub data_dir: PathBuf,

    /// Collection used until another is selected; created at start if missing.
    #[arg(long, env = "IMGFLEET_COLLECTION", default_value = "images")]
    pub collection: String,

    /// API key required in the `x-api-key` header of `/api/v1` requests, as SCOPE:KEY with
    /// scope read, write or admin (a bare KEY is admin); repeat the flag (or comma-separate
    /// the variable) for several. None: the API is open, which only a loopback --host allows
    /// unless --allow-unauthenticated.
    #[arg(long = "api-key", env = "IMGFLEET_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<Secret>,

    /// Serve without API keys on a non-loopback --host (something in front checks callers).
    #[arg(long, env = "IMGFLEET_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Directory that ingest paths must lie in (symlinks resolved; original files are served
    /// only from inside these), or bucket prefix `s3://bucket[/prefix]` that ingested bucket
    /// prefixes must lie in. Repeat the flag (or comma-separate the variable) for several.
    /// Default: the directory the server was started in.
    #[arg(long = "ingest-root", env = "IMGFLEET_INGEST_ROOTS", value_delimiter = ',')]
    pub ingest_roots: Vec<PathBuf>,

    /// Where uploaded originals are kept: a folder, or a bucket prefix `s3://bucket/prefix` (a
    /// fleet: every CPU worker reads the uploads from it; give them the same --blob-store).
    /// Default: `<data dir>/blobs` for `imgfleet serve`; `imgfleet-api` takes no uploads
    /// without it.
    #[arg(long, env = "IMGFLEET_BLOB_STORE")]
    pub blob_store: Option<String>,

    /// Object storage: the buckets of `s3://` ingest roots and of an `s3://` --blob-store.
    #[command(flatten)]
    pub s3: imgfleet_objects::S3Args,

    /// Largest uploaded file accepted (bigger ones are failed files of their job): `512MiB`,
    /// `2GiB`, or bytes.
    #[arg(long, env = "IMGFLEET_MAX_UPLOAD_BYTES", default_value = "256MiB", value_parser = imgfleet_core::units::parse_bytes)]
    pub max_upload_bytes: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "IMGFLEET_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// The embedded vector store stops writing (answers 507, the pipeline waits) while the disk
    /// under --data-dir has less free space than this: `512MiB`, `2GiB`, or bytes.
    #[arg(long, env = "IMGFLEET_MIN_FREE_DISK", default_value = "256MiB", value_parser = imgfleet_core::units::parse_bytes)]
    pub min_free_disk: u64,

    /// How long finished jobs (and their per-file records and logs) are kept: a number with a
    /// unit, `s`, `m`, `h` or `d` (e.g. `12h`, `30d`).
    #[arg(long, env = "IMGFLEET_JOB_RETENTION", default_value = "7d", value_parser = imgfleet_core::units::parse_duration)]
    pub job_retention: std::time::Duration,

    /// Do not run the watches here (`/api/v1/watches` still edits them): with several API
    /// processes on one fleet, one runs them.
    #[arg(long, env = "IMGFLEET_NO_WATCHES")]
    pub no_watches: bool,

    /// Log JSON lines instead of text.
    #[arg(long, env = "IMGFLEET_LOG_JSON")]
    pub log_json: bool,

    #[command(flatten)]
    pub limits: ServerLimits,
}

impl ApiConfig {
    /// Options of the embedded vector store under `--data-dir`.
    pub fn edge_store_options(&self) -> imgfleet_embedded::EdgeStoreOptions {
        imgfleet_embedded::EdgeStoreOptions { min_free_bytes: self.min_free_disk, ..Default::default() }
    }

    /// The uploads of this server: the blob store named by `--blob-store` (a folder, or a
    /// bucket prefix on the object storage `s3`), else the folder `default`, else none.
    pub fn uploads(&self, default: Option<PathBuf>, s3: &imgfleet_objects::S3Config) -> std::io::Result<Option<crate::Uploads>> {
        use imgfleet_core::source::Source;
        let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
        let folder = match (self.blob_store.as_deref().map(str::trim), default) {
            (Some(spec), _) if spec.starts_with(imgfleet_core::source::S3_SCHEME) => {
                let location = match Source::parse(spec) {
                    Ok(Source::Bucket(location)) => location,
                    Ok(Source::Directory(_)) => return Err(invalid(format!("--blob-store {spec:?} is not a bucket prefix"))),
                    Err(e) => return Err(invalid(format!("--blob-store: {e}"))),
                };
                let store = imgfleet_objects::ObjectBlobStore::new(s3, location).map_err(|e| invalid(format!("--blob-store: {e}")))?;
                // Parts are streamed to a local file, then sent to the bucket in parts.
                let staging_dir = self.data_dir.join("upload-staging");
                std::fs::create_dir_all(&staging_dir)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("upload staging folder {}: {e}", staging_dir.display())))?;
                return Ok(Some(crate::Uploads { blobs: std::sync::Arc::new(store), staging_dir, max_file_bytes: self.max_upload_bytes }));
            }
            (Some(""), _) => return Err(invalid("--blob-store is empty".into())),
            (Some(spec), _) => PathBuf::from(spec),
            (None, Some(folder)) => folder,
            (None, None) => return Ok(None),
        };
        let store = imgfleet_embedded::FolderBlobStore::open(&folder)
            .map_err(|e| std::io::Error::new(e.kind(), format!("blob store {}: {e}", folder.display())))?;
        let staging_dir = store.staging_dir();
        Ok(Some(crate::Uploads { blobs: std::sync::Arc::new(store), staging_dir, max_file_bytes: self.max_upload_bytes }))
    }

    /// How old an upload job whose request is gone must be before it is ended with the files
    /// it had: longer than any upload request may last.
    pub fn upload_abandoned_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.limits.request_timeout_secs.max(1) + 30)
    }

    /// The ingest roots, or the current directory when none is given.
    pub fn ingest_roots_or_cwd(&self) -> std::io::Result<Vec<PathBuf>> {
        if self.ingest_roots.is_empty() { Ok(vec![std::env::current_dir()?]) } else { Ok(self.ingest_roots.clone()) }
    }

    /// The API keys, checked: none empty, and none missing on an address other machines reach
    /// (unless --allow-unauthenticated).
    pub fn access_keys(&self) -> Result<ApiKeys, KeyConfigError> {
        let keys = ApiKeys::parse(self.api_keys.iter().map(Secret::expose), API_KEY_FLAG)?;
        check_exposure(self.host, &keys, self.allow_unauthenticated, API_KEY_FLAG)?;
        Ok(keys)
    }
}
