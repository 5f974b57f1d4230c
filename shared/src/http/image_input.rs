//! Images uploaded as base64 (search by image, the ML API): decoded to RGB pixels with a
//! pixel limit checked from the header before anything is decoded.

use std::io::Cursor;

use base64::Engine as _;

use crate::domain::RgbImage;

/// Largest decoded image accepted, in pixels (a decompression bomb is refused).
pub const MAX_IMAGE_PIXELS: u64 = 64_000_000;

/// Decodes a base64 image file into RGB pixels, with a pixel limit. The error says what is
/// wrong with the input (and names the file when one is given).
pub fn decode_image(image_base64: &str, filename: Option<&str>) -> Result<RgbImage, String> {
    let name = filename.map_or(String::new(), |f| format!("{f}: "));
    let trimmed = image_base64.trim();
    // Accept data URLs as browsers produce them.
    let payload = trimmed.split_once(";base64,").map_or(trimmed, |(_, b)| b);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| format!("{name}image_base64 is not valid base64: {e}"))?;
    if bytes.is_empty() {
        return Err(format!("{name}the image is empty"));
    }
    let open = || {
        image::ImageReader::new(Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|e| format!("{name}cannot read the image: {e}"))
    };
    let header = open()?;
    if header.format().is_none() {
        return Err(format!("{name}not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"));
    }
    // The header alone says how large the pixels would be: refuse a bomb before decoding it.
    let (w, h) = header.into_dimensions().map_err(|e| format!("{name}cannot read the image header: {e}"))?;
    if u64::from(w) * u64::from(h) > MAX_IMAGE_PIXELS {
        return Err(format!("{name}{w}x{h} is more than {MAX_IMAGE_PIXELS} pixels"));
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 4);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| format!("{name}cannot decode the image: {e}"))?;
    let rgb = decoded.to_rgb8();
    Ok(RgbImage { width: rgb.width(), height: rgb.height(), data: rgb.into_raw() })
}

