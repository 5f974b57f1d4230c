//! Every stream, subject and consumer name. No other crate spells one.

/// Message id of the file task for `path` in `job_id`: a replayed scan publishes the same ids,
/// which the queue drops (the task is queued or handled already). A task queued again for
/// another reason extends it with what makes that attempt new.
pub fn file_task_id(job_id: &str, path: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(path.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("file:{job_id}:{hex}")
}

/// A work stream of the pipeline. Each has one durable consumer shared by all its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// "Walk this directory" requests, one per job.
    Scan,
    /// One file task per candidate file.
    Files,
    /// Decoded, model-ready images.
    Prepared,
    /// Embeddings and captions waiting to be indexed.
    Encoded,
}

impl Stream {
    pub const ALL: [Stream; 4] = [Stream::Scan, Stream::Files, Stream::Prepared, Stream::Encoded];

    /// JetStream stream name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scan => "IMGFLEET_SCAN",
            Self::Files => "IMGFLEET_FILES",
            Self::Prepared => "IMGFLEET_PREPARED",
            Self::Encoded => "IMGFLEET_ENCODED",
        }
    }

    /// Subject messages of this stream are published on.
    pub fn subject(self) -> &'static str {
        match self {
            Self::Scan => "imgfleet.scan",
            Self::Files => "imgfleet.files",
            Self::Prepared => "imgfleet.prepared",
            Self::Encoded => "imgfleet.encoded",
        }
    }

    /// Durable pull consumer shared by every worker of this stage.
    pub fn consumer(self) -> &'static str {
        match self {
            Self::Scan => "scanners",
            Self::Files => "cpu-workers",
            Self::Prepared => "gpu-workers",
            Self::Encoded => "indexers",
        }
    }

    /// Subject its dead letters are recorded on, in [`DEAD_LETTER_STREAM`].
    pub fn dead_letter_subject(self) -> &'static str {
        match self {
            Self::Scan => "imgfleet.dead.scan",
            Self::Files => "imgfleet.dead.files",
            Self::Prepared => "imgfleet.dead.prepared",
            Self::Encoded => "imgfleet.dead.encoded",
        }
    }

    /// JetStream's advisory, published when this stream's consumer gives up on a message after
    /// its max deliveries: `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`.
    pub fn max_deliveries_advisory(self) -> String {
        format!("{MAX_DELIVERIES_ADVISORY_PREFIX}.{}.{}", self.name(), self.consumer())
    }

    /// Short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Scan => "scan",
            Self::Files => "files",
            Self::Prepared => "prepared",
            Self::Encoded => "encoded",
        }
    }
}

/// Stream that records messages terminated as poison, with the reason.
pub const DEAD_LETTER_STREAM: &str = "IMGFLEET_DEAD";
pub const DEAD_LETTER_SUBJECT: &str = "imgfleet.dead";
/// Subjects of [`DEAD_LETTER_STREAM`]: one per work stream, [`Stream::dead_letter_subject`].
pub const DEAD_LETTER_SUBJECTS: &str = "imgfleet.dead.>";
/// Queue group of the processes turning max-deliveries advisories into dead letters (one of
/// them handles each advisory).
pub const DEAD_LETTER_QUEUE_GROUP: &str = "imgfleet-dead-letters";
/// Prefix of JetStream's max-deliveries advisories (see [`Stream::max_deliveries_advisory`]).
pub const MAX_DELIVERIES_ADVISORY_PREFIX: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES";

/// Request/reply subjects served by GPU workers in one queue group.
pub const ENCODE_TEXT_SUBJECT: &str = "imgfleet.rpc.embed_text";
pub const ENCODE_IMAGE_SUBJECT: &str = "imgfleet.rpc.embed_image";
pub const ENCODE_CAPABILITIES_SUBJECT: &str = "imgfleet.rpc.capabilities";
pub const ENCODER_QUEUE_GROUP: &str = "imgfleet-encoders";

/// Core NATS subject (no stream) the encoder workers' heartbeats go out on; every process that
/// follows the fleet's capacity subscribes to it.
pub const WORKER_HEARTBEAT_SUBJECT: &str = "imgfleet.workers.heartbeat";

/// Prefix of every Prometheus metric.
pub const METRIC_PREFIX: &str = "imgfleet";

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_distinct() {
        let names: HashSet<_> = Stream::ALL.iter().map(|s| s.name()).collect();
        let subjects: HashSet<_> = Stream::ALL.iter().map(|s| s.subject()).collect();
        let consumers: HashSet<_> = Stream::ALL.iter().map(|s| s.consumer()).collect();
        assert_eq!((names.len(), subjects.len(), consumers.len()), (4, 4, 4));
        assert!(!names.contains(DEAD_LETTER_STREAM));
        let dead: HashSet<_> = Stream::ALL.iter().map(|s| s.dead_letter_subject()).collect();
        assert_eq!(dead.len(), 4);
        let prefix = DEAD_LETTER_SUBJECTS.trim_end_matches('>');
        assert!(dead.iter().all(|d| d.starts_with(prefix) && d.starts_with(DEAD_LETTER_SUBJECT)));
        assert!(subjects.iter().all(|s| !s.starts_with(prefix)), "work subjects outside the dead-letter stream");
    }
}
