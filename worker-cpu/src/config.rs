//! Configuration of the CPU stage and the scanner: one clap group, every flag with an
//! environment variable.

use std::time::Duration;

use imgfleet_core::pixel_codec::PixelCodec;

use crate::walk::SymlinkPolicy;
use imgfleet_imaging::decode::DecodeLimits;
use imgfleet_imaging::prepare::{PrepareOptions, prepared_message_bound};

/// How many prepared images may wait for the encoders (`--max-prepared-waiting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreparedLimit {
    /// Follow the live encoders: [`PREPARED_PER_ENCODER_IMAGE`] × the sum of their batches, at
    /// least [`MIN_PREPARED_WAITING`].
    Auto,
    Fixed(u64),
    Unlimited,
}

/// Prepared images let wait per image the live encoders take in a batch: one batch being
/// encoded, one ready for the next fetch.
pub const PREPARED_PER_ENCODER_IMAGE: u64 = 2;
/// What `auto` lets wait while no encoder is heard from (so the first one starts at once).
pub const MIN_PREPARED_WAITING: u64 = 32;
/// What `auto` lets wait where the stage has no view of the encoders.
pub const BLIND_PREPARED_WAITING: u64 = 1024;

impl PreparedLimit {
    /// The limit for encoders that take `encoder_batches` images at once (`None`: unknown);
    /// `None` for no limit.
    pub fn limit(self, encoder_batches: Option<usize>) -> Option<u64> {
        match self {
            Self::Unlimited => None,
            Self::Fixed(n) => Some(n),
            Self::Auto => Some(match encoder_batches {
                Some(total) => (PREPARED_PER_ENCODER_IMAGE * total as u64).max(MIN_PREPARED_WAITING),
                None => BLIND_PREPARED_WAITING,
            }),
        }
    }
}

impl std::str::FromStr for PreparedLimit {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            "0" => Ok(Self::Unlimited),
            n => n.parse().map(Self::Fixed).map_err(|_| format!("{text:?} is neither `auto` nor a number of images")),
        }
    }
}

impl std::fmt::Display for PreparedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Unlimited => f.write_str("0"),
        }
    }
}

/// Largest message the queue carries (nats.conf `max_payload: 4MB`).
pub const MAX_QUEUE_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CpuStageConfig {
    /// Files prepared at once; each holds one file and its decoded pixels in memory.
    /// 0 = one per CPU core.
    #[arg(long = "cpu-concurrency", env = "IMGFLEET_CPU_CONCURRENCY", default_value_t = 0)]
    pub concurrency: usize,
    /// File tasks fetched from the queue per batch.
    #[arg(long = "cpu-batch", env = "IMGFLEET_CPU_BATCH", default_value_t = 32)]
    pub batch: usize,
    /// Side of the CLIP input (shortest side resized to it, centre-cropped square); from the
    /// CLIP model's `image_size`.
    #[arg(long, env = "IMGFLEET_CLIP_SIZE", default_value_t = 224)]
    pub clip_size: u32,
    /// Side of the BLIP input (squashed square); from the BLIP model's `image_size`.
    /// 0 = captioning off, no BLIP pixels.
    #[arg(long, env = "IMGFLEET_BLIP_SIZE", default_value_t = 384)]
    pub blip_size: u32,
    /// Files larger than this fail as too large without being read.
    #[arg(long, env = "IMGFLEET_MAX_FILE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_file_bytes: u64,
    /// Images declaring more pixels (width × height) fail as too large before decoding.
    #[arg(long, env = "IMGFLEET_MAX_PIXELS", default_value_t = 100_000_000)]
    pub max_pixels: u64,
    /// Largest buffer one decode may allocate.
    #[arg(long, env = "IMGFLEET_MAX_DECODE_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_decode_bytes: u64,
    /// How long a dedup claim lives without being marked done. A dead worker's claims do not
    /// wait for it: its tasks come back after the queue's ack wait and take them back at once;
    /// this only bounds a claim whose task is gone for good.
    #[arg(long, env = "IMGFLEET_CLAIM_TTL_SECS", default_value_t = 600)]
    pub claim_ttl_secs: u64,
    /// Wait before re-checking a file whose content another worker is preparing right now.
    #[arg(long, env = "IMGFLEET_HELD_RETRY_MS", default_value_t = 5_000)]
    pub held_retry_ms: u64,
    /// Delayed re-checks of a held file per delivery chain; after that the task is published
    /// again under a new message id (and the old delivery acked), so a long wait never runs
    /// into the queue's `max_deliver`, which must be at least this + 1.
    #[arg(long, env = "IMGFLEET_HELD_RETRIES", default_value_t = 3)]
    pub held_retries: u32,
    /// First retry delay after a transient error (doubles per delivery, at most 30 s).
    #[arg(long, env = "IMGFLEET_RETRY_BASE_MS", default_value_t = 500)]
    pub retry_base_ms: u64,
    /// Longest wait for a batch before checking for shutdown again.
    #[arg(long, env = "IMGFLEET_FETCH_WAIT_MS", default_value_t = 1_000)]
    pub fetch_wait_ms: u64,
    /// Symlinks met while scanning: `inside-root` follows those whose target stays inside the
    /// scanned directory (loops are skipped); `never` follows none.
    #[arg(long, env = "IMGFLEET_SYMLINKS", value_enum, default_value_t = SymlinkPolicy::InsideRoot)]
    pub symlinks: SymlinkPolicy,
    /// Prepared images waiting for the encoders (or being encoded) beyond which this stage
    /// stops taking file tasks: it bounds the queue's storage and how long a dedup claim
    /// waits for its image to be stored (keep that well under --claim-ttl-secs). `auto`:
    /// twice the sum of the batches the live encoder workers pull (from their heartbeats), at
    /// least 32; a number: that many; 0: no limit.
    #[arg(long, env = "IMGFLEET_MAX_PREPARED_WAITING", default_value_t = PreparedLimit::Auto)]
    pub max_prepared_waiting: PreparedLimit,
    /// How prepared images' pixels travel to the encoders: `lossless` (predicted and
    /// zstd-compressed: the same pixels in about a third of the bytes of photos) or `raw` (RGB8
    /// as they are, which encoder workers of every version read).
    #[arg(long, env = "IMGFLEET_PREPARED_CODEC", default_value_t = PixelCodec::Lossless)]
    pub prepared_codec: PixelCodec,
    /// This worker's name in logs; default `cpu-<hostname>-<pid>`. (Dedup claims belong to
    /// tasks, not workers: a worker restarted under any name loses nothing.)
    #[arg(long, env = "IMGFLEET_WORKER_ID")]
    pub worker_id: Option<String>,
}

impl Default for CpuStageConfig {
    fn default() -> Self {
        Self {
            concurrency: 0,
            batch: 32,
            clip_size: 224,
            blip_size: 384,
            max_file_bytes: imgfleet_imaging::hash::DEFAULT_MAX_FILE_BYTES,
            max_pixels: 100_000_000,
            max_decode_bytes: 512 * 1024 * 1024,
            claim_ttl_secs: 600,
            held_retry_ms: 5_000,
            held_retries: 3,
            retry_base_ms: 500,
            fetch_wait_ms: 1_000,
            symlinks: SymlinkPolicy::InsideRoot,
            max_prepared_waiting: PreparedLimit::Auto,
            prepared_codec: PixelCodec::Lossless,
            worker_id: None,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("clip size must be at least 1")]
    ClipSize,
    #[error("cpu batch must be at least 1")]
    Batch,
    #[error("a prepared image may take {bound} bytes with clip size {clip} and blip size {blip}; the queue carries at most {max}")]
    MessageTooLarge { bound: usize, clip: u32, blip: u32, max: usize },
}

impl CpuStageConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.clip_size == 0 {
            return Err(ConfigError::ClipSize);
        }
        if self.batch == 0 {
            return Err(ConfigError::Batch);
        }
        let bound = prepared_message_bound(self.clip_size, self.blip_size);
        if bound > MAX_QUEUE_MESSAGE_BYTES {
            return Err(ConfigError::MessageTooLarge {
                bound,
                clip: self.clip_size,
                blip: self.blip_size,
                max: MAX_QUEUE_MESSAGE_BYTES,
            });
        }
        Ok(())
    }

    pub fn prepare_options(&self) -> PrepareOptions {
        PrepareOptions {
            clip_size: self.clip_size,
            blip_size: self.blip_size,
            limits: DecodeLimits { max_pixels: self.max_pixels, max_alloc_bytes: self.max_decode_bytes },
        }
    }

    /// Concurrency with 0 resolved to the number of cores.
    pub fn effective_concurrency(&self) -> usize {
        if self.concurrency > 0 {
            return self.concurrency;
        }
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }

    pub fn effective_worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
            format!("cpu-{host}-{}", std::process::id())
        })
    }

    pub fn claim_ttl(&self) -> Duration {
        Duration::from_secs(self.claim_ttl_secs)
    }

    pub fn held_retry(&self) -> Duration {
        Duration::from_millis(self.held_retry_ms)
    }

    pub fn fetch_wait(&self) -> Duration {
        Duration::from_millis(self.fetch_wait_ms)
    }

    /// Delay before the next delivery after a transient error on delivery number `deliveries`.
    pub fn retry_delay(&self, deliveries: u32) -> Duration {
        imgfleet_core::ports::retry_backoff(Duration::from_millis(self.retry_base_ms), deliveries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_oversized_inputs_do_not() {
        assert_eq!(CpuStageConfig::default().validate(), Ok(()));
        let huge = CpuStageConfig { blip_size: 1024, clip_size: 1024, ..CpuStageConfig::default() };
        assert!(matches!(huge.validate(), Err(ConfigError::MessageTooLarge { .. })));
        let no_clip = CpuStageConfig { clip_size: 0, ..CpuStageConfig::default() };
        assert_eq!(no_clip.validate(), Err(ConfigError::ClipSize));
    }

    #[test]
    fn retry_delay_doubles_up_to_a_cap() {
        let config = CpuStageConfig::default();
        assert_eq!(config.retry_delay(1), Duration::from_millis(500));
        assert_eq!(config.retry_delay(2), Duration::from_millis(1000));
        assert_eq!(config.retry_delay(40), Duration::from_secs(30));
    }

    #[test]
    fn clap_defaults_equal_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: CpuStageConfig,
        }
        // Only the defaults are compared: the IMGFLEET_* environment is not set in unit tests.
        let parsed = Cli::try_parse_from(["test"]).unwrap().config;
        assert_eq!(parsed, CpuStageConfig::default());
    }
}

#[cfg(test)]
mod prepared_limit_tests {
    use super::*;

    #[test]
    fn the_prepared_limit_follows_the_live_encoders() {
        assert_eq!("auto".parse::<PreparedLimit>(), Ok(PreparedLimit::Auto));
        assert_eq!("0".parse::<PreparedLimit>(), Ok(PreparedLimit::Unlimited));
        assert_eq!("128".parse::<PreparedLimit>(), Ok(PreparedLimit::Fixed(128)));
        assert!("lots".parse::<PreparedLimit>().unwrap_err().contains("neither `auto` nor a number"));
        for limit in [PreparedLimit::Auto, PreparedLimit::Fixed(7), PreparedLimit::Unlimited] {
            assert_eq!(limit.to_string().parse::<PreparedLimit>(), Ok(limit));
        }
        // Four workers pulling 512 are never starved: 4,096 may wait.
        assert_eq!(PreparedLimit::Auto.limit(Some(4 * 512)), Some(4096));
        assert_eq!(PreparedLimit::Auto.limit(Some(0)), Some(MIN_PREPARED_WAITING));
        assert_eq!(PreparedLimit::Auto.limit(None), Some(BLIND_PREPARED_WAITING));
        assert_eq!(PreparedLimit::Fixed(128).limit(Some(4096)), Some(128));
        assert_eq!(PreparedLimit::Unlimited.limit(Some(4)), None);
    }
}
