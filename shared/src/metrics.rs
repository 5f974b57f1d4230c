//! The process-wide Prometheus registry. Every crate registers its metrics here, named
//! `imgfleet_*`, and `/metrics` renders it.

use std::sync::LazyLock;

use prometheus::{Encoder as _, Registry, TextEncoder};

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
