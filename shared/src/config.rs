//! Flags every imgfleet binary shares (each with an `IMGFLEET_*` environment variable), and
//! what the processes of a fleet build from them: the queue, the state store, the vector
//! store, the models' geometry.
//!
//! Every process of one fleet must be given the same models and queue settings: the CPU
//! workers size the images they prepare from the models' configs, the API takes the vector
//! size from CLIP's, and the first process to start creates the streams and consumers with its
//! queue settings (the others update them to theirs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Deserialize;

use crate::adapters::{NatsQueue, NatsQueueConfig, QdrantVectorStore, RedisStateStore};
use crate::model_dir::{ModelDir, ModelError};
use crate::ports::StateStore;

/// Where the fleet's queue, state and vectors are, and how the queue behaves.
#[derive(Args, Clone)]
pub struct FleetArgs {
    /// NATS server URL (JetStream on), e.g. nats://nats:4222; several (a cluster) separated by
    /// commas.
    #[arg(long, env = "IMGFLEET_NATS_URL")]
    pub nats_url: Option<String>,

    /// Redis URL for dedup claims and job state, e.g. redis://redis:6379/0 (a password goes in
    /// the URL: redis://:secret@host:6379/0; it is never logged).
    #[arg(long, env = "IMGFLEET_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "IMGFLEET_REDIS_PREFIX", default_value = "imgfleet")]
    pub redis_prefix: String,

    /// Qdrant server gRPC URL, e.g. http://qdrant:6334. Absent: the embedded store in
    /// --data-dir, which only one process (the API) may open.
    #[arg(long, env = "IMGFLEET_QDRANT_URL")]
    pub qdrant_url: Option<String>,

    /// API key of the Qdrant server.
    #[arg(long, env = "IMGFLEET_QDRANT_API_KEY")]
    pub qdrant_api_key: Option<String>,

    /// A delivery not settled within this many seconds is delivered again (a worker died).
    #[arg(long, env = "IMGFLEET_ACK_WAIT_SECS", default_value_t = 60)]
    pub ack_wait_secs: u64,

    /// Deliveries of one message before it is dead-lettered (the stages fail the image, with
    /// the reason, on the last one).
    #[arg(long, env = "IMGFLEET_MAX_DELIVER", default_value_t = 5)]
    pub max_deliver: u32,

    /// Messages of one stream in flight at once over all its workers; at least workers × batch.
    #[arg(long, env = "IMGFLEET_MAX_ACK_PENDING", default_value_t = 1000)]
    pub max_ack_pending: u32,

    /// Replicas of every stream: 1, or 3 on a three-node NATS cluster.
    #[arg(long, env = "IMGFLEET_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,

    /// How long to keep trying to reach NATS and Redis at start before giving up.
    #[arg(long, env = "IMGFLEET_CONNECT_RETRY_SECS", default_value_t = 120)]
    pub connect_retry_secs: u64,
}

impl std::fmt::Debug for FleetArgs {
    /// Secrets hidden: Redis passwords in URLs, the Qdrant API key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetArgs")
            .field("nats_url", &self.nats_url.as_deref().map(hide_password))
            .field("redis_url", &self.redis_url.as_deref().map(hide_password))
            .field("redis_prefix", &self.redis_prefix)
            .field("qdrant_url", &self.qdrant_url.as_deref().map(hide_password))
            .field("qdrant_api_key", &self.qdrant_api_key.as_ref().map(|_| "<hidden>"))
            .field("ack_wait_secs", &self.ack_wait_secs)
            .field("max_deliver", &self.max_deliver)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("nats_replicas", &self.nats_replicas)
            .field("connect_retry_secs", &self.connect_retry_secs)
            .finish()
    }
}

/// `scheme://user:password@host` → `scheme://user:<hidden>@host`, for every URL of a list.
pub fn hide_password(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
            let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or("", |(u, _)| u);
                    if userinfo.contains(':') {
                        format!("{user}:<hidden>@{host}")
                    } else {
                        format!("<hidden>@{host}")
                    }
                }
                None => authority.to_owned(),
            };
            match path {
                Some(p) => format!("{scheme}://{authority}/{p}"),
                None => format!("{scheme}://{authority}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl FleetArgs {
    /// The NATS URL, or an error naming what `binary` needs it for.
    pub fn require_nats(&self, binary: &str) -> anyhow::Result<&str> {
        self.nats_url.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "{binary} is a fleet process: give --nats-url (or IMGFLEET_NATS_URL) and --redis-url; \
                 to run everything in one process without servers, use `imgfleet serve`"
            )
        })
    }

    pub fn require_redis(&self, binary: &str) -> anyhow::Result<&str> {
        self.redis_url.as_deref().ok_or_else(|| {
            anyhow::anyhow!("{binary} needs --redis-url (or IMGFLEET_REDIS_URL) for dedup claims and job state")
        })
    }

    pub fn connect_retry(&self) -> Duration {
        Duration::from_secs(self.connect_retry_secs)
    }

    /// The queue adapter's settings from these flags; `name` is shown by the server.
    pub fn nats_config(&self, url: &str, name: &str) -> NatsQueueConfig {
        let mut config = NatsQueueConfig::new(url);
        config.name = Some(name.to_owned());
        config.ack_wait = Duration::from_secs(self.ack_wait_secs.max(1));
        config.max_deliver = self.max_deliver;
        config.max_ack_pending = self.max_ack_pending;
        config.replicas = self.nats_replicas.max(1);
        config
    }

    /// Connects to NATS (creating or updating the streams), retrying for
    /// `--connect-retry-secs` while the server cannot be reached.
    pub async fn connect_queue(&self, binary: &str) -> anyhow::Result<Arc<NatsQueue>> {
        let url = self.require_nats(binary)?;
        let name = format!("{binary}-{}", std::process::id());
        let config = self.nats_config(url, &name);
        let queue = retry_connect("nats", &hide_password(url), self.connect_retry(), || NatsQueue::connect(config.clone())).await?;
        Ok(Arc::new(queue))
    }

    /// Connects to Redis, retrying for `--connect-retry-secs` while it cannot be reached.
    pub async fn connect_state(&self, binary: &str) -> anyhow::Result<Arc<RedisStateStore>> {
        let url = self.require_redis(binary)?;
        let prefix = self.redis_prefix.clone();
        let store =
            retry_connect("redis", &hide_password(url), self.connect_retry(), || RedisStateStore::connect(url, &prefix)).await?;
        Ok(Arc::new(store))
    }

    /// The Qdrant server, when `--qdrant-url` is given.
    pub async fn connect_qdrant(&self) -> anyhow::Result<Option<Arc<QdrantVectorStore>>> {
        let Some(url) = self.qdrant_url.as_deref() else { return Ok(None) };
        let key = self.qdrant_api_key.clone();
        let store = retry_connect("qdrant", &hide_password(url), self.connect_retry(), || {
            QdrantVectorStore::connect(url, key.clone(), Duration::from_secs(30))
        })
        .await?;
        Ok(Some(Arc::new(store)))
    }
}

/// A duration written as a number and a unit: `s`, `m`, `h` or `d` (`90s`, `12h`, `7d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration; write e.g. 90s, 30m, 12h or 7d"))?;
    let seconds = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} has no unit; write e.g. 90s, 30m, 12h or 7d")),
    };
    number.checked_mul(seconds).map(Duration::from_secs).ok_or_else(|| format!("{text:?} is too long"))
}

/// A size in bytes, plain or with a binary unit: `K`/`KiB`, `M`/`MiB`, `G`/`GiB` (`512MiB`, `2G`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size; write e.g. 268435456, 256MiB or 1GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?} has an unknown unit; write e.g. 256MiB or 1GiB")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// Makes `queue` account for the images of messages it gives up on in `state`
/// ([`crate::job_status::fail_given_up`]), so a job whose worker keeps dying on one file still
/// completes, with that file failed and why.
pub fn account_given_up(queue: &NatsQueue, state: Arc<dyn StateStore>) {
    queue.on_given_up(crate::job_status::given_up_hook(state));
}

/// Calls `connect` until it succeeds or `patience` has passed, logging each failure.
pub async fn retry_connect<T, E, F, Fut>(what: &str, url: &str, patience: Duration, mut connect: F) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match connect().await {
            Ok(value) => return Ok(value),
            Err(e) if start.elapsed() + delay < patience => {
                tracing::warn!(%url, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach {what} yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => anyhow::bail!("cannot reach {what} at {url} (tried for {} s): {e}", start.elapsed().as_secs()),
        }
    }
}

/// The models of the fleet.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// CLIP checkpoint: a local directory (config.json, model.safetensors, tokenizer.json,
    /// preprocessor_config.json) or a Hugging Face repo id, downloaded once into the Hugging
    /// Face cache (~600 MB for the default; processes without models fetch only its config).
    /// Offline: give a directory, or set HF_HUB_OFFLINE=1 to use only what the cache holds.
    #[arg(long, env = "IMGFLEET_CLIP_MODEL", default_value = "openai/clip-vit-base-patch32")]
    pub clip_model: String,

    /// BLIP captioning checkpoint, a local directory or a Hugging Face repo id (~1 GB for the
    /// default).
    #[arg(long, env = "IMGFLEET_BLIP_MODEL", default_value = "Salesforce/blip-image-captioning-base")]
    pub blip_model: String,

    /// Do not caption: BLIP is neither loaded nor downloaded, images are stored without captions.
    #[arg(long, env = "IMGFLEET_NO_CAPTION")]
    pub no_caption: bool,
}

impl ModelArgs {
    /// The captioning model, unless captions are off.
    pub fn captioner(&self) -> Option<&str> {
        (!self.no_caption).then_some(self.blip_model.as_str())
    }

    /// The sizes the models' configs declare (only config.json is read or fetched).
    pub fn geometry(&self) -> Result<ModelGeometry, ModelError> {
        ModelGeometry::read(&self.clip_model, self.captioner())
    }
}

/// What processes without the models need to know of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelGeometry {
    /// Size of CLIP's embeddings (`projection_dim`).
    pub embedding_dim: usize,
    /// Side of CLIP's square image input.
    pub clip_size: u32,
    /// Side of BLIP's square image input; `None` when captioning is off.
    pub blip_size: Option<u32>,
}

#[derive(Deserialize)]
struct VisionConfig {
    image_size: u32,
}

#[derive(Deserialize)]
struct ClipConfig {
    projection_dim: usize,
    vision_config: VisionConfig,
}

#[derive(Deserialize)]
struct BlipConfig {
    vision_config: VisionConfig,
}

impl ModelGeometry {
    pub fn read(clip: &str, blip: Option<&str>) -> Result<Self, ModelError> {
        let clip_config: ClipConfig = ModelDir::resolve(clip, &["config.json"])?.json("config.json")?;
        let blip_size = match blip {
            Some(blip) => Some(ModelDir::resolve(blip, &["config.json"])?.json::<BlipConfig>("config.json")?.vision_config.image_size),
            None => None,
        };
        Ok(Self { embedding_dim: clip_config.projection_dim, clip_size: clip_config.vision_config.image_size, blip_size })
    }
}

/// Reads the geometry off the async runtime (a hub id may be fetched).
pub async fn model_geometry(models: &ModelArgs) -> anyhow::Result<ModelGeometry> {
    let models = models.clone();
    let geometry = tokio::task::spawn_blocking(move || models.geometry()).await??;
    Ok(geometry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("1TB").is_err());
        assert!(parse_bytes("MiB").is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_duration("12").unwrap_err().contains("no unit"));
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(hide_password("redis://:s3cret@redis:6379/0"), "redis://:<hidden>@redis:6379/0");
        assert_eq!(hide_password("nats://bob:pw@a:4222,nats://b:4222"), "nats://bob:<hidden>@a:4222,nats://b:4222");
        assert_eq!(hide_password("nats://token@a:4222"), "nats://<hidden>@a:4222");
        assert_eq!(hide_password("http://qdrant:6334"), "http://qdrant:6334");
    }

    #[test]
    fn fleet_args_debug_hides_secrets() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            fleet: FleetArgs,
        }
        let cli = Cli::try_parse_from(["x", "--redis-url", "redis://:pw@r:6379", "--qdrant-api-key", "k3y"]).unwrap();
        let shown = format!("{:?}", cli.fleet);
        assert!(!shown.contains("pw@") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("<hidden>"));
    }

    #[test]
    fn geometry_comes_from_the_configs() {
        let dir = tempfile_dir();
        let clip = dir.join("clip");
        let blip = dir.join("blip");
        std::fs::create_dir_all(&clip).unwrap();
        std::fs::create_dir_all(&blip).unwrap();
        std::fs::write(clip.join("config.json"), r#"{"projection_dim": 24, "vision_config": {"image_size": 64}}"#).unwrap();
        std::fs::write(blip.join("config.json"), r#"{"vision_config": {"image_size": 96}}"#).unwrap();
        let g = ModelGeometry::read(clip.to_str().unwrap(), Some(blip.to_str().unwrap())).unwrap();
        assert_eq!(g, ModelGeometry { embedding_dim: 24, clip_size: 64, blip_size: Some(96) });
        let g = ModelGeometry::read(clip.to_str().unwrap(), None).unwrap();
        assert_eq!(g.blip_size, None);
        std::fs::write(clip.join("config.json"), r#"{"vision_config": {}}"#).unwrap();
        let e = ModelGeometry::read(clip.to_str().unwrap(), None).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("imgfleet-geometry-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
