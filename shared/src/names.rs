//! Every stream, subject and consumer name. No other crate spells one.

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

/// Request/reply subjects served by GPU workers in one queue group.
pub const ENCODE_TEXT_SUBJECT: &str = "imgfleet.rpc.embed_text";
pub const ENCODE_IMAGE_SUBJECT: &str = "imgfleet.rpc.embed_image";
pub const ENCODER_QUEUE_GROUP: &str = "imgfleet-encoders";

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
    }
}
