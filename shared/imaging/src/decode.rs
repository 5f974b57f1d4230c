//! Decode with limits. JPEG is decoded at 1/2, 1/4 or 1/8 scale by shrinking the inverse DCT —
//! far cheaper than decoding everything and resizing, and where most of this stage's time goes:
//! headers are read with `jpeg-decoder`, pixels come from libjpeg-turbo (the `mozjpeg` crate,
//! built from source), whose entropy decoder is the fastest available; CMYK JPEGs, which
//! libjpeg cannot turn into RGB, are decoded (scaled too) by `jpeg-decoder`. Every other format
//! goes through `image`. HEIF and AVIF fail as unsupported: no maintained decoder builds here.

use std::io::{self, Cursor};

use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};
use jpeg_decoder::PixelFormat;

use crate::failure::{FailureKind, FileFailure};
use crate::sniff::SniffedFormat;

/// What a decode may cost. Checked from the header, before any pixel is decoded, so a
/// decompression bomb fails early and memory stays bounded by `max_alloc_bytes` per decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width × height an image may declare.
    pub max_pixels: u64,
    /// Largest buffer the decoder may allocate.
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 100_000_000, max_alloc_bytes: 512 * 1024 * 1024 }
    }
}

/// Decoded pixels, possibly at reduced scale, as stored (EXIF orientation not yet applied).
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub pixels: RgbImage,
    /// Full-resolution size, as stored.
    pub width: u32,
    pub height: u32,
    /// 1, 2, 4 or 8: the pixels are the full image scaled by 1/this.
    pub scale_denominator: u32,
}

/// Decodes `bytes` (already sniffed as `format`). With JPEG, the decode is scaled down as far as
/// it can while both sides stay at least `min_side` (the largest model input), and only when the
/// image is at least twice that.
pub fn decode(bytes: &[u8], format: SniffedFormat, min_side: u32, limits: DecodeLimits) -> Result<DecodedImage, FileFailure> {
    match format {
        SniffedFormat::Jpeg => decode_jpeg(bytes, min_side, limits),
        SniffedFormat::Heif | SniffedFormat::Avif => Err(FileFailure::new(
            FailureKind::Unsupported,
            format!("{} images are not supported (no maintained decoder builds here)", format.name()),
        )),
        SniffedFormat::Png => decode_with_image(bytes, ImageFormat::Png, limits),
        SniffedFormat::Gif => decode_with_image(bytes, ImageFormat::Gif, limits),
        SniffedFormat::Webp => decode_with_image(bytes, ImageFormat::WebP, limits),
        SniffedFormat::Bmp => decode_with_image(bytes, ImageFormat::Bmp, limits),
        SniffedFormat::Tiff => decode_with_image(bytes, ImageFormat::Tiff, limits),
    }
}

/// The DCT scale denominator (1, 2, 4 or 8) for a `width`×`height` JPEG whose sides must stay
/// at least `min_side` after decoding.
pub fn choose_jpeg_scale(width: u32, height: u32, min_side: u32) -> u32 {
    let short = width.min(height);
    if min_side == 0 {
        return 8;
    }
    [8, 4, 2].into_iter().find(|&d| short.div_ceil(d) >= min_side).unwrap_or(1)
}

fn check_pixels(width: u32, height: u32, limits: DecodeLimits) -> Result<(), FileFailure> {
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 {
        return Err(FileFailure::new(FailureKind::Corrupt, format!("image declares a size of {width}x{height}")));
    }
    if pixels > limits.max_pixels {
        return Err(FileFailure::new(
            FailureKind::TooLarge,
            format!("image declares {width}x{height} = {pixels} pixels; the limit is {}", limits.max_pixels),
        ));
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8], min_side: u32, limits: DecodeLimits) -> Result<DecodedImage, FileFailure> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc_bytes).unwrap_or(usize::MAX));
    decoder.read_info().map_err(jpeg_failure)?;
    let info = decoder.info().ok_or_else(|| FileFailure::new(FailureKind::Corrupt, "jpeg header without a frame"))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_pixels(width, height, limits)?;
    // jpeg-decoder reads past the end as zero bits, so a cut file would "decode" as grey.
    if jpeg_end_marker_present(bytes) == Some(false) {
        return Err(FileFailure::new(FailureKind::Truncated, "jpeg data ends before its end-of-image marker"));
    }
    let denominator = choose_jpeg_scale(width, height, min_side);
    if info.pixel_format != PixelFormat::CMYK32 {
        let (rgb, out_w, out_h) = decode_jpeg_libjpeg(bytes, denominator)?;
        let pixels = RgbImage::from_raw(out_w, out_h, rgb)
            .ok_or_else(|| FileFailure::new(FailureKind::Corrupt, "jpeg decoder returned a short buffer"))?;
        return Ok(DecodedImage { pixels, width, height, scale_denominator: denominator });
    }
    if denominator > 1 {
        let (w, h) = (width.div_ceil(denominator), height.div_ceil(denominator));
        decoder.scale(w as u16, h as u16).map_err(jpeg_failure)?;
    }
    let data = decoder.decode().map_err(jpeg_failure)?;
    let info = decoder.info().ok_or_else(|| FileFailure::new(FailureKind::Corrupt, "jpeg frame vanished"))?;
    let (out_w, out_h) = (u32::from(info.width), u32::from(info.height));
    let rgb = match info.pixel_format {
        PixelFormat::RGB24 => data,
        PixelFormat::L8 => data.iter().flat_map(|&l| [l, l, l]).collect(),
        PixelFormat::L16 => data.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        // Adobe CMYK JPEGs store inverted ink values, so multiplying by K gives RGB directly.
        PixelFormat::CMYK32 => data
            .chunks_exact(4)
            .flat_map(|p| {
                let k = u32::from(p[3]);
                [p[0], p[1], p[2]].map(|c| (u32::from(c) * k / 255) as u8)
            })
            .collect(),
    };
    let pixels = RgbImage::from_raw(out_w, out_h, rgb)
        .ok_or_else(|| FileFailure::new(FailureKind::Corrupt, "jpeg decoder returned a short buffer"))?;
    Ok(DecodedImage { pixels, width, height, scale_denominator: denominator })
}

/// RGB pixels of a JPEG at 1/`denominator` scale, by libjpeg-turbo.
fn decode_jpeg_libjpeg(bytes: &[u8], denominator: u32) -> Result<(Vec<u8>, u32, u32), FileFailure> {
    // libjpeg reports fatal errors by unwinding (mozjpeg's error manager), not by return value.
    let decoded = std::panic::catch_unwind(|| -> io::Result<(Vec<u8>, u32, u32)> {
        let mut decompress = mozjpeg::Decompress::new_mem(bytes)?;
        decompress.scale((8 / denominator) as u8);
        let mut started = decompress.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let rgb = started.read_scanlines::<u8>()?;
        // Trailing bytes or a missing end marker are the truncation check's business.
        let _ = started.finish();
        Ok((rgb, w, h))
    });
    match decoded {
        Ok(Ok(decoded)) => Ok(decoded),
        Ok(Err(e)) => Err(FileFailure::new(FailureKind::Corrupt, format!("jpeg: {}", e.to_string().to_lowercase()))),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("libjpeg error");
            Err(FileFailure::new(FailureKind::Corrupt, format!("jpeg: {}", message.to_lowercase())))
        }
    }
}

fn jpeg_failure(e: jpeg_decoder::Error) -> FileFailure {
    match e {
        jpeg_decoder::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            FileFailure::new(FailureKind::Truncated, "jpeg data ends early")
        }
        jpeg_decoder::Error::Unsupported(feature) => {
            FileFailure::new(FailureKind::Unsupported, format!("jpeg feature not supported: {feature:?}"))
        }
        jpeg_decoder::Error::Format(text) if text.contains("maximum") || text.contains("too large") => {
            FileFailure::new(FailureKind::TooLarge, format!("jpeg: {}", text.to_lowercase()))
        }
        other => FileFailure::new(FailureKind::Corrupt, format!("jpeg: {}", other.to_string().to_lowercase())),
    }
}

/// Whether a JPEG's end-of-image marker follows its first scan; `None` when the marker
/// structure cannot be followed (the decoder then reports what is wrong).
pub fn jpeg_end_marker_present(bytes: &[u8]) -> Option<bool> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    loop {
        if i + 1 >= bytes.len() {
            return Some(false);
        }
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        match marker {
            0xFF => i += 1,
            0xD9 => return Some(true),
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                if i + 4 > bytes.len() {
                    return Some(false);
                }
                let length = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
                if length < 2 {
                    return None;
                }
                if marker == 0xDA {
                    // Entropy-coded data never holds FF D9 (an FF there is stuffed as FF 00).
                    let rest = bytes.get(i + 2 + length..).unwrap_or(&[]);
                    // Searched from the end, where the marker of a complete file is.
                    return Some(rest.windows(2).rev().any(|w| w == [0xFF, 0xD9]));
                }
                i += 2 + length;
            }
        }
    }
}

fn decode_with_image(bytes: &[u8], format: ImageFormat, limits: DecodeLimits) -> Result<DecodedImage, FileFailure> {
    let name = format.extensions_str().first().copied().unwrap_or("image");
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| image_failure(name, e))?;
    check_pixels(width, height, limits)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits);
    let image: DynamicImage = reader.decode().map_err(|e| image_failure(name, e))?;
    Ok(DecodedImage { pixels: image.into_rgb8(), width, height, scale_denominator: 1 })
}

fn image_failure(format: &str, e: image::ImageError) -> FileFailure {
    use image::ImageError;
    let text = e.to_string().to_lowercase();
    let looks_truncated = ["eof", "end of file", "unexpected end", "truncat", "no more data", "not enough data"]
        .iter()
        .any(|hint| text.contains(hint));
    match e {
        ImageError::Limits(_) => FileFailure::new(FailureKind::TooLarge, format!("{format}: {text}")),
        ImageError::Unsupported(_) => FileFailure::new(FailureKind::Unsupported, format!("{format}: {text}")),
        ImageError::IoError(ref io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            FileFailure::new(FailureKind::Truncated, format!("{format} data ends early"))
        }
        _ if looks_truncated => FileFailure::new(FailureKind::Truncated, format!("{format}: {text}")),
        _ => FileFailure::new(FailureKind::Corrupt, format!("{format}: {text}")),
    }
}

/// Turns stored pixels upright as EXIF `orientation` (1–8) says.
pub fn apply_orientation(pixels: RgbImage, orientation: Option<u8>) -> RgbImage {
    let Some(orientation) = orientation.and_then(image::metadata::Orientation::from_exif) else { return pixels };
    if orientation == image::metadata::Orientation::NoTransforms {
        return pixels;
    }
    let mut image = DynamicImage::ImageRgb8(pixels);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

/// Whether an EXIF orientation swaps width and height (the 90° turns).
pub fn orientation_swaps_sides(orientation: Option<u8>) -> bool {
    matches!(orientation, Some(5..=8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_scale_keeps_both_sides_at_least_the_target() {
        assert_eq!(choose_jpeg_scale(4000, 3000, 384), 4, "3000/8 = 375 < 384");
        assert_eq!(choose_jpeg_scale(1920, 1080, 384), 2);
        assert_eq!(choose_jpeg_scale(4000, 3000, 224), 8);
        assert_eq!(choose_jpeg_scale(700, 500, 384), 1, "less than 2x larger: full decode");
        assert_eq!(choose_jpeg_scale(100, 100, 224), 1);
        for (w, h, side) in [(4000, 3000, 384), (1921, 1081, 384), (800, 6000, 224), (769, 769, 384)] {
            let d = choose_jpeg_scale(w, h, side);
            assert!(w.min(h).div_ceil(d) >= side);
        }
    }

    #[test]
    fn jpeg_end_marker() {
        let header = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        let sos = [0xFF, 0xDA, 0x00, 0x03, 0x00];
        let mut complete = header.to_vec();
        complete.extend_from_slice(&sos);
        complete.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD9]);
        assert_eq!(jpeg_end_marker_present(&complete), Some(true));
        assert_eq!(jpeg_end_marker_present(&complete[..complete.len() - 2]), Some(false));
        assert_eq!(jpeg_end_marker_present(&header[..5]), Some(false));
        assert_eq!(jpeg_end_marker_present(&[0xFF, 0xD8, 0x00, 0x00]), None);
        assert_eq!(jpeg_end_marker_present(b"png"), None);
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        let limits = DecodeLimits { max_pixels: 1000, max_alloc_bytes: 1 << 20 };
        assert!(check_pixels(10, 100, limits).is_ok());
        assert_eq!(check_pixels(10, 101, limits).unwrap_err().kind, FailureKind::TooLarge);
        assert_eq!(check_pixels(0, 10, limits).unwrap_err().kind, FailureKind::Corrupt);
        assert_eq!(check_pixels(u32::MAX, u32::MAX, limits).unwrap_err().kind, FailureKind::TooLarge);
    }

    #[test]
    fn orientation_turns_pixels() {
        // 2x1: red then blue. Orientation 6 (90° clockwise) gives 1x2: red on top.
        let stored = RgbImage::from_raw(2, 1, vec![255, 0, 0, 0, 0, 255]).unwrap();
        let upright = apply_orientation(stored.clone(), Some(6));
        assert_eq!(upright.dimensions(), (1, 2));
        assert_eq!(upright.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(apply_orientation(stored.clone(), Some(1)), stored);
        assert_eq!(apply_orientation(stored.clone(), None), stored);
        assert!(orientation_swaps_sides(Some(6)) && !orientation_swaps_sides(Some(3)));
    }

    #[test]
    fn libjpeg_errors_unwind_into_failures() {
        // libjpeg's fatal errors unwind through C (mozjpeg-sys `unwinding`); without it this
        // would abort the process instead of failing the file.
        let failure = decode_jpeg_libjpeg(b"\xFF\xD8\xFF\xDBthis is not really a jpeg", 1).unwrap_err();
        assert_eq!(failure.kind, FailureKind::Corrupt, "{failure}");
        let failure = decode_jpeg_libjpeg(b"plain text", 2).unwrap_err();
        assert_eq!(failure.kind, FailureKind::Corrupt, "{failure}");
    }

    #[test]
    fn heif_and_avif_are_unsupported() {
        for format in [SniffedFormat::Heif, SniffedFormat::Avif] {
            let failure = decode(b"\0\0\0\x18ftypheic", format, 224, DecodeLimits::default()).unwrap_err();
            assert_eq!(failure.kind, FailureKind::Unsupported);
        }
    }
}
