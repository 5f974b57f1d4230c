//! Content sniffing: which image format a file holds, from its first bytes (magic numbers),
//! whatever its name says.

use std::path::Path;

/// Bytes needed to recognise every format below.
pub const SNIFF_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SniffedFormat {
    Jpeg,
    Png,
    Gif,
    Webp,
    Bmp,
    Tiff,
    /// HEIC / HEIF (ISO base media file with a HEIF brand).
    Heif,
    Avif,
}

impl SniffedFormat {
    /// Lowercase name stored in the payload's `format`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Gif => "gif",
            Self::Webp => "webp",
            Self::Bmp => "bmp",
            Self::Tiff => "tiff",
            Self::Heif => "heif",
            Self::Avif => "avif",
        }
    }
}

/// The format `head` (the first bytes of a file) starts like, if any image format.
pub fn sniff(head: &[u8]) -> Option<SniffedFormat> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(SniffedFormat::Jpeg);
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(SniffedFormat::Png);
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return Some(SniffedFormat::Gif);
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Some(SniffedFormat::Webp);
    }
    if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
        return Some(SniffedFormat::Tiff);
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return match &head[8..12] {
            b"avif" | b"avis" => Some(SniffedFormat::Avif),
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"hevm" | b"hevs" | b"mif1" | b"msf1" => {
                Some(SniffedFormat::Heif)
            }
            _ => None,
        };
    }
    // "BM" alone is weak; a BMP also has a zero reserved field and a sane pixel-data offset.
    if head.len() >= 14 && head.starts_with(b"BM") && head[6..10] == [0, 0, 0, 0] {
        let offset = u32::from_le_bytes([head[10], head[11], head[12], head[13]]);
        if (14..=1 << 20).contains(&offset) {
            return Some(SniffedFormat::Bmp);
        }
    }
    None
}

/// File name extensions of the formats above (lowercase).
const IMAGE_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "bmp", "dib", "tif", "tiff", "heic", "heif", "avif"];

/// Whether the name says "image". The scan takes such files even when their content does not
/// sniff as one, so that a broken or mislabelled image is accounted for (as failed).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|known| e.eq_ignore_ascii_case(known)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]), Some(SniffedFormat::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(SniffedFormat::Png));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Some(SniffedFormat::Gif));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(SniffedFormat::Webp));
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Some(SniffedFormat::Tiff));
        assert_eq!(sniff(b"\0\0\0\x18ftypheic\0\0\0\0"), Some(SniffedFormat::Heif));
        assert_eq!(sniff(b"\0\0\0\x1cftypavif\0\0\0\0"), Some(SniffedFormat::Avif));
        assert_eq!(sniff(b"\0\0\0\x1cftypisom\0\0\0\0"), None, "an mp4 is not an image");
        assert_eq!(sniff(b"BM\x36\0\x0c\0\0\0\0\0\x36\0\0\0"), Some(SniffedFormat::Bmp));
        assert_eq!(sniff(b"BMW is a car brand"), None);
        assert_eq!(sniff(b"hello, world"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn extensions_ignore_case() {
        assert!(has_image_extension(Path::new("/a/B.JPG")));
        assert!(has_image_extension(Path::new("x.heic")));
        assert!(!has_image_extension(Path::new("notes.txt")));
        assert!(!has_image_extension(Path::new("jpg")));
    }
}
