//! Images uploaded as base64 (search by image, the ML API): read in two steps, so that what
//! decoding will cost (the pixels its header declares) is known, and admitted, before any
//! pixel is decoded.

use std::io::Cursor;

use base64::Engine as _;

use imgfleet_core::domain::RgbImage;

/// Largest decoded image accepted, in pixels (a decompression bomb is refused).
pub const MAX_IMAGE_PIXELS: u64 = 64_000_000;

/// An uploaded image file whose header has been read: its size is known, nothing decoded yet.
pub struct ImageUpload {
    bytes: Vec<u8>,
    name: String,
    pub width: u32,
    pub height: u32,
}

impl ImageUpload {
    /// Decodes the base64 (a data URL works too) and reads the image header. The error says
    /// what is wrong with the input (and names the file when one is given).
    pub fn read(image_base64: &str, filename: Option<&str>) -> Result<Self, String> {
        let name = filename.map_or(String::new(), |f| format!("{f}: "));
        let trimmed = image_base64.trim();
        // Accept data URLs as browsers produce them.
        let payload = trimmed.split_once(";base64,").map_or(trimmed, |(_, b)| b);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| format!("{name}image_base64 is not valid base64: {e}"))?;
        Self::from_bytes(bytes, filename)
    }

    /// Reads the image header of a file's bytes (an upload sent as they are).
    pub fn from_bytes(bytes: Vec<u8>, filename: Option<&str>) -> Result<Self, String> {
        let name = filename.map_or(String::new(), |f| format!("{f}: "));
        if bytes.is_empty() {
            return Err(format!("{name}the image is empty"));
        }
        let header = image::ImageReader::new(Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|e| format!("{name}cannot read the image: {e}"))?;
        if header.format().is_none() {
            return Err(format!("{name}not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"));
        }
        let (width, height) = header.into_dimensions().map_err(|e| format!("{name}cannot read the image header: {e}"))?;
        // The header alone says how large the pixels would be: refuse a bomb before decoding it.
        if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
            return Err(format!("{name}{width}x{height} is more than {MAX_IMAGE_PIXELS} pixels"));
        }
        Ok(Self { bytes, name, width, height })
    }

    /// Pixels the header declares.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Decodes the pixels (CPU work: call it off the async runtime).
    pub fn decode(self) -> Result<RgbImage, String> {
        let name = self.name;
        let mut reader = image::ImageReader::new(Cursor::new(&self.bytes))
            .with_guessed_format()
            .map_err(|e| format!("{name}cannot read the image: {e}"))?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(MAX_IMAGE_PIXELS * 4);
        reader.limits(limits);
        let decoded = reader.decode().map_err(|e| format!("{name}cannot decode the image: {e}"))?;
        let rgb = decoded.to_rgb8();
        Ok(RgbImage { width: rgb.width(), height: rgb.height(), data: rgb.into_raw() })
    }
}

/// Decodes a base64 image file into RGB pixels, with a pixel limit. The error says what is
/// wrong with the input (and names the file when one is given).
pub fn decode_image(image_base64: &str, filename: Option<&str>) -> Result<RgbImage, String> {
    ImageUpload::read(image_base64, filename)?.decode()
}
