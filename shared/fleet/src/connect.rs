//! Flags every fleet process shares (each with an `IMGFLEET_*` environment variable), and
//! what the processes build from them: the queue, the state store, the vector store.
//!
//! Every process of one fleet must be given the same models and queue settings: the CPU
//! workers size the images they prepare from the models' configs, the API takes the vector
//! size from CLIP's, and the first process to start creates the streams and consumers with its
//! queue settings (the others update them to theirs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use imgfleet_core::ports::StateStore;
use imgfleet_core::secret::{Secret, SecretUrl, without_password};

use crate::nats_queue::{NatsQueue, NatsQueueConfig};
#[cfg(feature = "qdrant")]
use crate::qdrant_vectors::QdrantVectorStore;
use crate::redis_state::RedisStateStore;

/// Where the fleet's queue, state and vectors are, and how the queue behaves.
#[derive(Args, Clone, Debug)]
pub struct FleetArgs {
    /// NATS server URL (JetStream on), e.g. nats://nats:4222; several (a cluster) separated by
    /// commas.
    #[arg(long, env = "IMGFLEET_NATS_URL")]
    pub nats_url: Option<SecretUrl>,

    /// Redis URL for dedup claims and job state, e.g. redis://redis:6379/0 (a password goes in
    /// the URL: redis://:secret@host:6379/0; it is never logged).
    #[arg(long, env = "IMGFLEET_REDIS_URL")]
    pub redis_url: Option<SecretUrl>,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "IMGFLEET_REDIS_PREFIX", default_value = "imgfleet")]
    pub redis_prefix: String,

    /// Qdrant server gRPC URL, e.g. http://qdrant:6334. Absent: the embedded store in
    /// --data-dir, which only one process (the API) may open.
    #[arg(long, env = "IMGFLEET_QDRANT_URL")]
    pub qdrant_url: Option<SecretUrl>,

    /// API key of the Qdrant server.
    #[arg(long, env = "IMGFLEET_QDRANT_API_KEY")]
    pub qdrant_api_key: Option<Secret>,

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

impl FleetArgs {
    /// The NATS URL, or an error naming what `binary` needs it for.
    pub fn require_nats(&self, binary: &str) -> anyhow::Result<&str> {
        self.nats_url.as_ref().map(SecretUrl::expose).ok_or_else(|| {
            anyhow::anyhow!(
                "{binary} is a fleet process: give --nats-url (or IMGFLEET_NATS_URL) and --redis-url; \
                 to run everything in one process without servers, use `imgfleet serve`"
            )
        })
    }

    pub fn require_redis(&self, binary: &str) -> anyhow::Result<&str> {
        self.redis_url.as_ref().map(SecretUrl::expose).ok_or_else(|| {
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
        let queue = retry_connect("nats", &without_password(url), self.connect_retry(), || NatsQueue::connect(config.clone())).await?;
        Ok(Arc::new(queue))
    }

    /// Connects to Redis, retrying for `--connect-retry-secs` while it cannot be reached.
    pub async fn connect_state(&self, binary: &str) -> anyhow::Result<Arc<RedisStateStore>> {
        let url = self.require_redis(binary)?;
        let prefix = self.redis_prefix.clone();
        let store =
            retry_connect("redis", &without_password(url), self.connect_retry(), || RedisStateStore::connect(url, &prefix)).await?;
        Ok(Arc::new(store))
    }

    /// The Qdrant server, when `--qdrant-url` is given.
    #[cfg(feature = "qdrant")]
    pub async fn connect_qdrant(&self) -> anyhow::Result<Option<Arc<QdrantVectorStore>>> {
        let Some(url) = self.qdrant_url.as_ref().map(SecretUrl::expose) else { return Ok(None) };
        let key = self.qdrant_api_key.as_ref().map(|k| k.expose().to_owned());
        let store = retry_connect("qdrant", &without_password(url), self.connect_retry(), || {
            QdrantVectorStore::connect(url, key.clone(), Duration::from_secs(30))
        })
        .await?;
        Ok(Some(Arc::new(store)))
    }
}

/// Makes `queue` account for the images of messages it gives up on in `state`
/// ([`imgfleet_core::job_status::fail_given_up`]), so a job whose worker keeps dying on one file still
/// completes, with that file failed and why.
pub fn account_given_up(queue: &NatsQueue, state: Arc<dyn StateStore>) {
    queue.on_given_up(imgfleet_core::job_status::given_up_hook(state));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
