//! Generated photo folders for tests and benchmarks: distinct synthetic pictures (gradients,
//! shapes, noise) as JPEG and PNG, exact copies of some of them in other folders, and broken
//! files, with a manifest of what is what. Deterministic for a seed.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// What to generate.
#[derive(Debug, Clone)]
pub struct CorpusSpec {
    /// Distinct images.
    pub unique: usize,
    /// Exact copies of distinct images, under `copies/`.
    pub duplicates: usize,
    /// Files that cannot be decoded (truncated JPEG, text named `.jpg`, empty `.png`, garbage
    /// named `.webp`), in rotation.
    pub broken: usize,
    /// Longest side of the pictures is drawn from this range.
    pub min_side: u32,
    pub max_side: u32,
    pub seed: u64,
}

impl Default for CorpusSpec {
    fn default() -> Self {
        Self { unique: 170, duplicates: 20, broken: 10, min_side: 96, max_side: 320, seed: 1 }
    }
}

/// The files written, by kind.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    pub unique: Vec<PathBuf>,
    /// (copy, original)
    pub duplicates: Vec<(PathBuf, PathBuf)>,
    pub broken: Vec<PathBuf>,
}

impl Corpus {
    pub fn total(&self) -> usize {
        self.unique.len() + self.duplicates.len() + self.broken.len()
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n.max(1))) as u32
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

/// A distinct picture for `seed`: a two-colour gradient, a few filled shapes, light noise.
pub fn picture(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let a = [rng.byte(), rng.byte(), rng.byte()];
    let b = [rng.byte(), rng.byte(), rng.byte()];
    let diagonal = rng.below(2) == 1;
    let shapes: Vec<(u32, u32, u32, [u8; 3], bool)> = (0..2 + rng.below(4))
        .map(|_| {
            let r = 4 + rng.below(width.min(height) / 3);
            (rng.below(width), rng.below(height), r, [rng.byte(), rng.byte(), rng.byte()], rng.below(2) == 0)
        })
        .collect();
    let mut image = RgbImage::from_fn(width, height, |x, y| {
        let t = if diagonal {
            (x + y) as f32 / (width + height) as f32
        } else {
            x as f32 / width as f32
        };
        Rgb([0, 1, 2].map(|c| (f32::from(a[c]) * (1.0 - t) + f32::from(b[c]) * t) as u8))
    });
    for (cx, cy, r, colour, round) in shapes {
        for y in cy.saturating_sub(r)..(cy + r).min(height) {
            for x in cx.saturating_sub(r)..(cx + r).min(width) {
                let inside = !round || {
                    let (dx, dy) = (i64::from(x) - i64::from(cx), i64::from(y) - i64::from(cy));
                    dx * dx + dy * dy <= i64::from(r) * i64::from(r)
                };
                if inside {
                    image.put_pixel(x, y, Rgb(colour));
                }
            }
        }
    }
    for pixel in image.pixels_mut() {
        let noise = (rng.below(17) as i16) - 8;
        pixel.0 = pixel.0.map(|v| (i16::from(v) + noise).clamp(0, 255) as u8);
    }
    image
}

fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(image).expect("jpeg encodes");
        }
        other => DynamicImage::ImageRgb8(image.clone()).write_to(&mut out, other).expect("image encodes"),
    }
    out.into_inner()
}

/// Writes the corpus under `dir` (created): `photos/NNN/…` for distinct images (50 per
/// folder), `copies/` for duplicates, `broken/` for broken files.
pub fn generate(dir: &Path, spec: &CorpusSpec) -> std::io::Result<Corpus> {
    let mut rng = Rng(spec.seed | 1);
    let mut corpus = Corpus::default();
    let span = spec.max_side.saturating_sub(spec.min_side).max(1);
    for i in 0..spec.unique {
        let long = spec.min_side + rng.below(span);
        let short = (long * (60 + rng.below(41)) / 100).max(8);
        let (w, h) = if rng.below(2) == 0 { (long, short) } else { (short, long) };
        let image = picture(w, h, spec.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        let (format, ext) = if i % 4 == 3 { (ImageFormat::Png, "png") } else { (ImageFormat::Jpeg, "jpg") };
        let folder = dir.join("photos").join(format!("{:03}", i / 50));
        fs::create_dir_all(&folder)?;
        let path = folder.join(format!("img_{i:05}.{ext}"));
        fs::write(&path, encode(&image, format))?;
        corpus.unique.push(path);
    }
    if spec.duplicates > 0 {
        let copies = dir.join("copies");
        fs::create_dir_all(&copies)?;
        for i in 0..spec.duplicates {
            let original = corpus.unique[(i * 7919) % corpus.unique.len().max(1)].clone();
            let ext = original.extension().and_then(|e| e.to_str()).unwrap_or("jpg").to_owned();
            let copy = copies.join(format!("copy_{i:05}.{ext}"));
            fs::copy(&original, &copy)?;
            corpus.duplicates.push((copy, original));
        }
    }
    if spec.broken > 0 {
        let broken = dir.join("broken");
        fs::create_dir_all(&broken)?;
        for i in 0..spec.broken {
            let (name, bytes) = match i % 4 {
                0 => {
                    let jpeg = encode(&picture(120, 90, 77 + i as u64), ImageFormat::Jpeg);
                    (format!("truncated_{i:03}.jpg"), jpeg[..jpeg.len() / 3].to_vec())
                }
                1 => (format!("text_{i:03}.jpg"), b"this is not a picture\n".to_vec()),
                2 => (format!("empty_{i:03}.png"), Vec::new()),
                _ => (format!("garbage_{i:03}.webp"), (0..2048u32).map(|n| (n * 31 + i as u32) as u8).collect()),
            };
            let path = broken.join(name);
            fs::write(&path, bytes)?;
            corpus.broken.push(path);
        }
    }
    Ok(corpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_what_the_manifest_says_deterministically() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let spec = CorpusSpec { unique: 9, duplicates: 3, broken: 4, ..CorpusSpec::default() };
        let corpus = generate(a.path(), &spec).unwrap();
        generate(b.path(), &spec).unwrap();
        assert_eq!((corpus.unique.len(), corpus.duplicates.len(), corpus.broken.len()), (9, 3, 4));
        assert_eq!(corpus.total(), 16);
        for path in &corpus.unique {
            let twin = b.path().join(path.strip_prefix(a.path()).unwrap());
            assert_eq!(fs::read(path).unwrap(), fs::read(twin).unwrap(), "deterministic");
            image::open(path).expect("a distinct image decodes");
        }
        let mut contents: Vec<Vec<u8>> = corpus.unique.iter().map(|p| fs::read(p).unwrap()).collect();
        contents.sort();
        contents.dedup();
        assert_eq!(contents.len(), 9, "distinct images have distinct bytes");
        for (copy, original) in &corpus.duplicates {
            assert_eq!(fs::read(copy).unwrap(), fs::read(original).unwrap());
        }
        for path in &corpus.broken {
            // As the CPU stage sees them: each fails (`image` alone decodes a truncated JPEG).
            let prepared = imgfleet_imaging::hash::read_and_hash(path, u64::MAX).map_err(|e| e.to_string()).and_then(|file| {
                let format = imgfleet_imaging::prepare::sniff_file(&file).map_err(|e| e.to_string())?;
                imgfleet_imaging::prepare::prepare(path, &file, format, imgfleet_imaging::prepare::PrepareOptions::default()).map_err(|e| e.to_string())
            });
            assert!(prepared.is_err(), "{} prepares", path.display());
        }
    }
}
