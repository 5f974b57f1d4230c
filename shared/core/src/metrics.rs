//! The process-wide Prometheus registry. Every crate registers its metrics here, named
//! `imgfleet_*`, and `/metrics` renders it.

use std::sync::LazyLock;

use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::names::METRIC_PREFIX;

static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry::new_custom(Some(METRIC_PREFIX.to_owned()), None).expect("valid prefix"));

pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Registers a collector once; a second registration of the same metric is a programming error.
pub fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    registry().register(Box::new(collector.clone())).expect("metric registered once");
    collector
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry().gather(), &mut out).expect("text encoding cannot fail");
    String::from_utf8(out).expect("prometheus text is utf-8")
}

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metrics of the pipeline stages, shared by every process that runs one.
pub struct PipelineMetrics {
    /// Images leaving a stage, by stage (`scan`, `cpu`, `encoder`, `indexer`) and outcome
    /// (`discovered`, `prepared`, `duplicate`, `failed`, `encoded`, `stored`).
    pub images: IntCounterVec,
    /// Images run through a model (`clip`, `blip`): what a re-ingest of known content must
    /// leave unchanged.
    pub model_images: IntCounterVec,
    /// Items per batch, by stage.
    pub batch_size: HistogramVec,
    /// Time to handle one batch, by stage.
    pub batch_seconds: HistogramVec,
    /// Messages waiting (`pending`) and being worked on (`in_flight`) per stream: the
    /// autoscaling signal.
    pub queue_depth: IntGaugeVec,
    /// Jobs that ended, by final status.
    pub jobs_finished: IntCounterVec,
    /// Publishes the queue answered as duplicates of an earlier publish of the same attempt
    /// (work redelivered after its output was published), by stream.
    pub duplicate_publishes: IntCounterVec,
    /// Messages given up on and recorded as dead letters, by stream (every stream starts at
    /// 0, so a healthy fleet reports 0 rather than nothing).
    pub dead_letters: IntCounterVec,
    /// Items per batch over the batch the stage asked for (1 = full), by stage.
    pub batch_fill: HistogramVec,
    /// Time from a message's publish to its first delivery to a worker, by stream: for
    /// `prepared`, how long a prepared image waits before a GPU worker takes it.
    pub queue_wait_seconds: HistogramVec,
}

pub static PIPELINE: LazyLock<PipelineMetrics> = LazyLock::new(|| PipelineMetrics {
    images: register(
        IntCounterVec::new(Opts::new("pipeline_images_total", "Images leaving a pipeline stage, by stage and outcome"), &["stage", "outcome"])
            .expect("valid metric"),
    ),
    model_images: register(
        IntCounterVec::new(Opts::new("model_images_total", "Images run through a model (clip, blip)"), &["model"]).expect("valid metric"),
    ),
    batch_size: register(
        HistogramVec::new(
            HistogramOpts::new("pipeline_batch_size", "Items per batch, by stage")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            &["stage"],
        )
        .expect("valid metric"),
    ),
    batch_seconds: register(
        HistogramVec::new(
            HistogramOpts::new("pipeline_batch_duration_seconds", "Time to handle one batch, by stage")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["stage"],
        )
        .expect("valid metric"),
    ),
    queue_depth: register(
        IntGaugeVec::new(Opts::new("queue_depth", "Messages per stream, pending or in flight"), &["stream", "state"]).expect("valid metric"),
    ),
    jobs_finished: {
        let jobs_finished = register(
            IntCounterVec::new(Opts::new("jobs_finished_total", "Jobs that ended, by final status"), &["status"]).expect("valid metric"),
        );
        // Series from the start: a counter first scraped at 1 shows no increase.
        for status in ["completed", "failed", "cancelled"] {
            jobs_finished.with_label_values(&[status]);
        }
        jobs_finished
    },
    duplicate_publishes: register(
        IntCounterVec::new(
            Opts::new("queue_duplicate_publishes_total", "Publishes answered as a duplicate of the same attempt, by stream"),
            &["stream"],
        )
        .expect("valid metric"),
    ),
    dead_letters: {
        let dead_letters = register(
            IntCounterVec::new(Opts::new("dead_letters_total", "Messages dead-lettered after their last delivery, by stream"), &["stream"])
                .expect("valid metric"),
        );
        for stream in crate::names::Stream::ALL {
            dead_letters.with_label_values(&[stream.label()]);
        }
        dead_letters
    },
    batch_fill: register(
        HistogramVec::new(
            HistogramOpts::new("pipeline_batch_fill_ratio", "Items per batch over the batch asked for (1 = full), by stage")
                .buckets(vec![0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]),
            &["stage"],
        )
        .expect("valid metric"),
    ),
    queue_wait_seconds: register(
        HistogramVec::new(
            HistogramOpts::new("queue_wait_seconds", "Time from a message's publish to its first delivery, by stream")
                .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0]),
            &["stream"],
        )
        .expect("valid metric"),
    ),
});

/// Publishes the depth of every stream to the `queue_depth` gauge every `every`, until `stop`.
pub async fn export_queue_depth(queue: std::sync::Arc<dyn crate::ports::WorkQueue>, every: std::time::Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        for stream in crate::names::Stream::ALL {
            if let Ok(depth) = queue.depth(stream).await {
                PIPELINE.queue_depth.with_label_values(&[stream.label(), "pending"]).set(depth.pending as i64);
                PIPELINE.queue_depth.with_label_values(&[stream.label(), "in_flight"]).set(depth.in_flight as i64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}
