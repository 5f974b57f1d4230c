//! Thumbnails: a file read with the stage's limits, decoded (JPEG at a reduced DCT scale when
//! the thumbnail allows it), turned upright by its EXIF orientation, shrunk so that its longest
//! side is at most `max_side` (never enlarged) and encoded as JPEG.

use std::io::Cursor;
use std::path::Path;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use image::codecs::jpeg::JpegEncoder;

use crate::decode::{self, DecodeLimits};
use crate::failure::{FailureKind, FileFailure};
use crate::hash::read_and_hash;
use crate::metadata::read_exif;
use crate::sniff::{SniffedFormat, sniff};

/// Largest file a thumbnail is made of (the CPU stage's default `max_file_bytes`).
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// JPEG quality of thumbnails.
pub const JPEG_QUALITY: u8 = 85;

/// A JPEG-encoded thumbnail and its size in pixels (upright).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Renders a thumbnail of the image at `path`: upright, longest side at most `max_side`
/// (a `max_side` of 0 counts as 1), aspect ratio kept, never upscaled. Fails as the CPU stage
/// would on the same file (`not-an-image`, `truncated`, `too-large`, …).
pub fn render(path: &Path, max_side: u32, limits: DecodeLimits) -> Result<Thumbnail, FileFailure> {
    render_with(path, max_side, MAX_FILE_BYTES, limits)
}

/// [`render`] with another file size limit (the CPU stage's `--max-file-bytes`).
pub fn render_with(path: &Path, max_side: u32, max_file_bytes: u64, limits: DecodeLimits) -> Result<Thumbnail, FileFailure> {
    let file = read_and_hash(path, max_file_bytes)?;
    render_bytes(&file.bytes, max_side, limits)
}

/// [`render`] on a file already in memory.
pub fn render_bytes(bytes: &[u8], max_side: u32, limits: DecodeLimits) -> Result<Thumbnail, FileFailure> {
    let max_side = max_side.max(1);
    let format = sniff(bytes)
        .ok_or_else(|| FileFailure::new(FailureKind::NotAnImage, "content is not a known image format"))?;
    let exif = read_exif(bytes);
    let min_side = match format {
        SniffedFormat::Jpeg => jpeg_min_side(bytes, max_side),
        // Only JPEG decodes at reduced scale; the value is ignored for the other formats.
        _ => max_side,
    };
    let decoded = decode::decode(bytes, format, min_side, limits)?;
    let (width, height) = if decode::orientation_swaps_sides(exif.orientation) {
        (decoded.height, decoded.width)
    } else {
        (decoded.width, decoded.height)
    };
    let upright = decode::apply_orientation(decoded.pixels, exif.orientation);
    let (tw, th) = thumbnail_size(width, height, max_side);
    let pixels = resize_rgb(upright, tw, th);
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode_image(&pixels)
        .map_err(|e| FileFailure::new(FailureKind::Corrupt, format!("thumbnail encoding failed: {e}")))?;
    Ok(Thumbnail { jpeg, width: tw, height: th })
}

/// Size of the thumbnail of a `width`×`height` image: the longest side brought down to
/// `max_side` (rounded, at least 1 pixel), the aspect ratio kept; an image that already fits
/// keeps its size.
pub fn thumbnail_size(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let long = width.max(height);
    let max_side = max_side.max(1);
    if long <= max_side {
        return (width.max(1), height.max(1));
    }
    let scale = |side: u32| {
        let scaled = (u64::from(side) * u64::from(max_side) + u64::from(long) / 2) / u64::from(long);
        (scaled as u32).clamp(1, max_side)
    };
    (scale(width), scale(height))
}

/// The `min_side` for [`decode::decode`] of a JPEG whose thumbnail is bounded by `max_side`:
/// the decode keeps the shortest side at least this, which is the thumbnail's shortest side
/// (so the scaled decode is never smaller than the thumbnail). Falls back to `max_side` when the
/// header cannot be read (the decode then reports why).
fn jpeg_min_side(bytes: &[u8], max_side: u32) -> u32 {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let Some((width, height)) = decoder.read_info().ok().and_then(|()| decoder.info()).map(|i| (u32::from(i.width), u32::from(i.height)))
    else {
        return max_side;
    };
    let (short, long) = (u64::from(width.min(height)), u64::from(width.max(height)).max(1));
    if long <= u64::from(max_side) {
        // Full size: no DCT scaling can keep it.
        return width.min(height);
    }
    // One pixel of headroom against the rounding of both the DCT scale and thumbnail_size.
    ((short * u64::from(max_side)).div_ceil(long) + 1).min(short) as u32
}

fn resize_rgb(src: RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = src.dimensions();
    if (sw, sh) == (width, height) {
        return src;
    }
    let src_view = ImageRef::new(sw, sh, src.as_raw(), PixelType::U8x3).expect("an RgbImage buffer holds its pixels");
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    Resizer::new().resize(&src_view, &mut dst, &options).expect("same pixel type, non-empty sizes");
    RgbImage::from_raw(width, height, dst.into_vec()).expect("the resizer fills width × height pixels")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use image::{DynamicImage, ImageFormat, Rgb};

    use super::*;

    /// A file under the system temp directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("imgfleet-thumbnail-{}-{n}-{name}", std::process::id()));
            std::fs::write(&path, bytes).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Left half red, right half blue.
    fn halves(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, _| if x < width / 2 { Rgb([230, 20, 20]) } else { Rgb([20, 20, 230]) })
    }

    fn encoded(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image.clone()).write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn decode_jpeg(bytes: &[u8]) -> RgbImage {
        assert!(bytes.starts_with(&[0xFF, 0xD8, 0xFF]), "a JPEG");
        image::load_from_memory_with_format(bytes, ImageFormat::Jpeg).unwrap().into_rgb8()
    }

    /// `jpeg` with an EXIF block holding only `orientation`.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff.extend_from_slice(&3u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes());
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend(tiff);
        [&jpeg[..2], &app1[..], &jpeg[2..]].concat()
    }

    #[test]
    fn sizes_keep_the_aspect_ratio_and_never_grow() {
        assert_eq!(thumbnail_size(4000, 3000, 256), (256, 192));
        assert_eq!(thumbnail_size(3000, 4000, 256), (192, 256));
        assert_eq!(thumbnail_size(1000, 1000, 256), (256, 256));
        assert_eq!(thumbnail_size(100, 50, 256), (100, 50), "small images keep their size");
        assert_eq!(thumbnail_size(256, 10, 256), (256, 10));
        assert_eq!(thumbnail_size(10_000, 3, 256), (256, 1), "at least one pixel");
        assert_eq!(thumbnail_size(640, 480, 0), (1, 1));
    }

    #[test]
    fn jpeg_min_side_keeps_the_scaled_decode_at_least_thumbnail_sized() {
        for (w, h, max_side) in [(2000u32, 1500u32, 128u32), (1601, 801, 200), (4000, 500, 256), (1024, 768, 320), (300, 200, 256)] {
            let jpeg = encoded(&RgbImage::new(w, h), ImageFormat::Jpeg);
            let min_side = jpeg_min_side(&jpeg, max_side);
            let d = decode::choose_jpeg_scale(w, h, min_side);
            let (tw, th) = thumbnail_size(w, h, max_side);
            assert!(w.div_ceil(d) >= tw && h.div_ceil(d) >= th, "{w}x{h} at 1/{d} is smaller than {tw}x{th}");
        }
        assert_eq!(jpeg_min_side(b"not a jpeg", 256), 256);
    }

    #[test]
    fn png_and_jpeg_shrink_to_the_longest_side() {
        let picture = halves(640, 320);
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let file = TempFile::new("wide.img", &encoded(&picture, format));
            let thumb = render(&file.0, 160, DecodeLimits::default()).unwrap();
            assert_eq!((thumb.width, thumb.height), (160, 80), "{format:?}");
            let decoded = decode_jpeg(&thumb.jpeg);
            assert_eq!(decoded.dimensions(), (160, 80), "{format:?}");
            // Red on the left, blue on the right.
            let left = decoded.get_pixel(20, 40).0;
            let right = decoded.get_pixel(140, 40).0;
            assert!(left[0] > 180 && left[2] < 80, "{format:?}: {left:?}");
            assert!(right[2] > 180 && right[0] < 80, "{format:?}: {right:?}");
        }
    }

    #[test]
    fn a_large_jpeg_decodes_at_reduced_scale_and_still_fills_the_thumbnail() {
        let file = TempFile::new("large.jpg", &encoded(&halves(2400, 1600), ImageFormat::Jpeg));
        let thumb = render(&file.0, 200, DecodeLimits::default()).unwrap();
        assert_eq!((thumb.width, thumb.height), (200, 133));
        assert_eq!(decode_jpeg(&thumb.jpeg).dimensions(), (200, 133));
    }

    #[test]
    fn a_small_image_is_not_upscaled() {
        let file = TempFile::new("small.png", &encoded(&halves(40, 30), ImageFormat::Png));
        let thumb = render(&file.0, 256, DecodeLimits::default()).unwrap();
        assert_eq!((thumb.width, thumb.height), (40, 30));
        assert_eq!(decode_jpeg(&thumb.jpeg).dimensions(), (40, 30));
    }

    #[test]
    fn exif_orientation_turns_the_thumbnail_upright() {
        // Stored 320x160, left red / right blue; orientation 6 = turn 90° clockwise to view:
        // upright it is 160x320 with red on top.
        let stored = encoded(&halves(320, 160), ImageFormat::Jpeg);
        let file = TempFile::new("rotated.jpg", &with_orientation(&stored, 6));
        let thumb = render(&file.0, 100, DecodeLimits::default()).unwrap();
        assert_eq!((thumb.width, thumb.height), (50, 100));
        let decoded = decode_jpeg(&thumb.jpeg);
        assert_eq!(decoded.dimensions(), (50, 100));
        let top = decoded.get_pixel(25, 10).0;
        let bottom = decoded.get_pixel(25, 90).0;
        assert!(top[0] > 180 && top[2] < 80, "red on top: {top:?}");
        assert!(bottom[2] > 180 && bottom[0] < 80, "blue below: {bottom:?}");
    }

    #[test]
    fn failures_have_the_stage_kinds() {
        let text = TempFile::new("notes.jpg", b"this is not an image at all");
        assert_eq!(render(&text.0, 128, DecodeLimits::default()).unwrap_err().kind, FailureKind::NotAnImage);

        let jpeg = encoded(&halves(64, 64), ImageFormat::Jpeg);
        let cut = TempFile::new("cut.jpg", &jpeg[..jpeg.len() / 2]);
        assert_eq!(render(&cut.0, 128, DecodeLimits::default()).unwrap_err().kind, FailureKind::Truncated);

        let big = TempFile::new("big.png", &encoded(&halves(100, 100), ImageFormat::Png));
        let limits = DecodeLimits { max_pixels: 1000, max_alloc_bytes: 1 << 20 };
        assert_eq!(render(&big.0, 128, limits).unwrap_err().kind, FailureKind::TooLarge);

        let empty = TempFile::new("empty.png", b"");
        assert_eq!(render(&empty.0, 128, DecodeLimits::default()).unwrap_err().kind, FailureKind::Empty);

        let missing = std::env::temp_dir().join("imgfleet-thumbnail-no-such-file.jpg");
        assert_eq!(render(&missing, 128, DecodeLimits::default()).unwrap_err().kind, FailureKind::Vanished);
    }
}
