//! Logging: `RUST_LOG`-style filter (default `info`), text or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call is a no-op (tests start several servers).
pub fn init(json: bool) {
    // qdrant-edge warns on every shard open about process-wide settings that only the Qdrant
    // server's main sets (its feature flags, an mmap probe); the engine's defaults apply.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,qdrant_edge::common::flags=error,qdrant_edge::common::mmap=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
