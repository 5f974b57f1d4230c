//! The CPU work for one file, synchronous and free of I/O beyond the read: sniff, decode with
//! limits, EXIF orientation and metadata, resize to both model inputs. The stage runs it off
//! the async runtime; the benchmark runs it on plain threads.

use std::path::Path;

use imgfleet_core::domain::{ImagePayload, now_rfc3339};

use crate::decode::{self, DecodeLimits};
use crate::failure::{FailureKind, FileFailure};
use crate::hash::ReadFile;
use crate::metadata::read_exif;
use crate::resize::{blip_input, clip_input};
use crate::sniff::{SniffedFormat, sniff};

/// What to make of each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOptions {
    /// CLIP input side (shortest side resized to it, then centre-cropped square).
    pub clip_size: u32,
    /// BLIP input side (squashed square); 0 = no BLIP pixels (captioning off).
    pub blip_size: u32,
    pub limits: DecodeLimits,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self { clip_size: 224, blip_size: 384, limits: DecodeLimits::default() }
    }
}

/// An image ready for the models: its payload and pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedPixels {
    pub payload: ImagePayload,
    pub clip_pixels: Vec<u8>,
    pub blip_pixels: Vec<u8>,
    /// The JPEG DCT scale the decode used (1 = full size).
    pub scale_denominator: u32,
}

/// The image format of a read file, or `not-an-image`.
pub fn sniff_file(file: &ReadFile) -> Result<SniffedFormat, FileFailure> {
    sniff(&file.bytes).ok_or_else(|| FileFailure::new(FailureKind::NotAnImage, "content is not a known image format"))
}

/// Decodes, orients and resizes `file` (read from `path`, sniffed as `format`).
pub fn prepare(path: &Path, file: &ReadFile, format: SniffedFormat, options: PrepareOptions) -> Result<PreparedPixels, FileFailure> {
    let exif = read_exif(&file.bytes);
    let min_side = options.clip_size.max(options.blip_size);
    let decoded = decode::decode(&file.bytes, format, min_side, options.limits)?;
    let (width, height) = if decode::orientation_swaps_sides(exif.orientation) {
        (decoded.height, decoded.width)
    } else {
        (decoded.width, decoded.height)
    };
    let upright = decode::apply_orientation(decoded.pixels, exif.orientation);
    let clip_pixels = clip_input(&upright, options.clip_size);
    let blip_pixels = if options.blip_size == 0 { Vec::new() } else { blip_input(&upright, options.blip_size) };
    let path_text = path.to_string_lossy().into_owned();
    let payload = ImagePayload {
        sha256: file.sha256.clone(),
        path: path_text.clone(),
        paths: vec![path_text],
        more_paths: 0,
        filename: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        width,
        height,
        format: format.name().to_owned(),
        bytes: file.bytes.len() as u64,
        mtime: file.mtime.map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        taken_at: exif.taken_at,
        camera_make: exif.camera_make,
        camera_model: exif.camera_model,
        gps: exif.gps,
        caption: None,
        job_id: None,
        // The indexer stamps the write time; until then, when the pixels were prepared.
        ingested_at: now_rfc3339(),
    };
    Ok(PreparedPixels { payload, clip_pixels, blip_pixels, scale_denominator: decoded.scale_denominator })
}

/// Largest path a payload carries (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// Upper bound of an encoded `PreparedImage` in bytes, either form (the binary envelope the stage
/// sends is smaller than this JSON bound): both pixel buffers in base64 plus 64 KiB
/// for the JSON payload (a `PATH_MAX` path twice, even if every byte needs a `\u00XX` escape,
/// a 255-byte file name, clipped EXIF strings, numbers).
pub fn prepared_message_bound(clip_size: u32, blip_size: u32) -> usize {
    let base64 = |side: u32| (side as usize * side as usize * 3).div_ceil(3) * 4;
    base64(clip_size) + base64(blip_size) + 64 * 1024
}

#[cfg(test)]
mod tests {
    use imgfleet_core::messages::{PreparedImage, encode, encode_prepared};

    use super::*;

    #[test]
    fn default_message_fits_nats_max_payload() {
        // nats.conf: max_payload 4MB.
        assert!(prepared_message_bound(224, 384) < 4 * 1024 * 1024);
        assert_eq!(prepared_message_bound(224, 384), 200_704 + 589_824 + 65_536);
    }

    #[test]
    fn worst_case_payload_stays_under_the_bound() {
        // A PATH_MAX path of control characters: each byte is escaped as \u00XX in JSON.
        let path = "\u{1}".repeat(MAX_PATH_BYTES);
        let text = "x".repeat(crate::metadata::MAX_EXIF_TEXT);
        let message = PreparedImage {
            schema_version: 1,
            job_id: "j".repeat(64),
            collection: "c".repeat(64),
            payload: ImagePayload {
                sha256: "f".repeat(64),
                path: path.clone(),
                paths: vec![path],
                more_paths: 0,
                filename: "\u{1}".repeat(255),
                width: u32::MAX,
                height: u32::MAX,
                format: "jpeg".into(),
                bytes: u64::MAX,
                mtime: Some(now_rfc3339()),
                taken_at: Some(now_rfc3339()),
                camera_make: Some(text.clone()),
                camera_model: Some(text),
                gps: Some(imgfleet_core::domain::GeoPoint { lat: -89.123456789, lon: -179.123456789 }),
                caption: None,
                job_id: Some("j".repeat(64)),
                ingested_at: now_rfc3339(),
            },
            clip_size: 224,
            clip_pixels: vec![255; 224 * 224 * 3],
            blip_size: 384,
            blip_pixels: vec![255; 384 * 384 * 3],
            marker: Some(imgfleet_core::source::object_marker(u64::MAX, Some(&"\u{1}".repeat(1000)))),
            claim_token: format!("{}.{}", u64::MAX, "0".repeat(32)),
        };
        // The JSON form (base64 pixels) is the larger of the two; the stage sends the envelope.
        let encoded = encode(&message).len();
        assert!(encoded <= prepared_message_bound(224, 384), "{encoded} bytes");
        assert!(encode_prepared(&message).len() < encoded);
    }
}
