//! Prepared-image codecs on photo-like data: each photo prepared as the CPU stage does (CLIP
//! 224² + BLIP 384² pixels), then each codec's message size and its encode and decode time per
//! image on this CPU (one thread), against the raw envelope.

use std::path::{Path, PathBuf};
use std::time::Instant;

use imgfleet_core::domain::SCHEMA_VERSION;
use imgfleet_core::messages::{PreparedImage, decode_prepared, encode_prepared_with};
use imgfleet_core::pixel_codec::PixelCodec;
use imgfleet_imaging::hash::read_and_hash;
use imgfleet_imaging::prepare::{prepare, sniff_file};
use imgfleet_worker_cpu::config::CpuStageConfig;

/// The prepared messages of `files`, as the CPU stage makes them.
fn prepared(files: &[PathBuf]) -> anyhow::Result<Vec<PreparedImage>> {
    let options = CpuStageConfig::default().prepare_options();
    let mut out = Vec::new();
    for path in files {
        let file = read_and_hash(path, u64::MAX).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let format = sniff_file(&file).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let pixels = prepare(path, &file, format, options).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        out.push(PreparedImage {
            schema_version: SCHEMA_VERSION,
            job_id: "bench".into(),
            collection: "bench".into(),
            payload: pixels.payload,
            clip_size: options.clip_size,
            clip_pixels: pixels.clip_pixels,
            blip_size: options.blip_size,
            blip_pixels: pixels.blip_pixels,
            claim_token: "0.bench".into(),
            marker: None,
        });
    }
    Ok(out)
}

/// One line per codec for `label`'s photos: bytes per message, ratio to raw, µs to encode and
/// to decode a message.
pub fn report(label: &str, files: &[PathBuf]) -> anyhow::Result<String> {
    let images = prepared(files)?;
    anyhow::ensure!(!images.is_empty(), "no photos for {label}");
    let mut out = format!("  {label} ({} photos):\n", images.len());
    let mut raw_bytes = 0.0;
    for codec in PixelCodec::ALL {
        let started = Instant::now();
        let messages: Vec<Vec<u8>> = images.iter().map(|i| encode_prepared_with(i, codec)).collect();
        let encode_us = started.elapsed().as_secs_f64() * 1e6 / images.len() as f64;
        let started = Instant::now();
        for (message, image) in messages.iter().zip(&images) {
            let back = decode_prepared(message)?;
            anyhow::ensure!(back.clip_pixels == image.clip_pixels && back.blip_pixels == image.blip_pixels, "{codec} changed the pixels");
        }
        let decode_us = started.elapsed().as_secs_f64() * 1e6 / images.len() as f64;
        let bytes = messages.iter().map(Vec::len).sum::<usize>() as f64 / images.len() as f64;
        if codec == PixelCodec::Raw {
            raw_bytes = bytes;
        }
        out += &format!(
            "    {:<10} {bytes:>10.0} B/image  {:>5.2}x smaller  encode {encode_us:>7.0} µs  decode {decode_us:>7.0} µs\n",
            codec.as_str(),
            raw_bytes / bytes
        );
    }
    Ok(out)
}

/// The photo fixtures of the repository (real JPEG and PNG files).
pub fn fixture_photos() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cpu_stage");
    ["photo_1024x768.jpg", "photo_320x240.png"].iter().map(|f| dir.join(f)).filter(|p| p.exists()).collect()
}
