//! How a prepared image's pixels travel: `raw` RGB8, or `lossless`: the colour planes
//! decorrelated (G, R−G, B−G), each pixel predicted from its neighbours with LOCO-I's median
//! edge detector (as JPEG-LS and PNG's Paeth filter do), and the residuals compressed with
//! zstd at its fastest level. Decoding gives back the very same bytes.

use std::str::FromStr;

/// The codec of a prepared image's pixel buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PixelCodec {
    /// RGB8 as they are.
    Raw,
    /// Lossless: predicted and zstd-compressed residuals.
    #[default]
    Lossless,
}

/// zstd's level for the residuals: the fastest; higher levels buy a few percent for several
/// times the CPU (the CPU stage is the fleet's bound).
const ZSTD_LEVEL: i32 = 1;

impl PixelCodec {
    pub const ALL: [PixelCodec; 2] = [PixelCodec::Raw, PixelCodec::Lossless];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Lossless => "lossless",
        }
    }

    /// `pixels`, `side`² RGB8, in this codec.
    pub fn encode(self, pixels: &[u8], side: u32) -> Vec<u8> {
        match self {
            Self::Raw => pixels.to_vec(),
            // No plane (no captions: no BLIP pixels): nothing to code, and nothing is sent.
            Self::Lossless if side == 0 => Vec::new(),
            Self::Lossless => {
                let residuals = residuals(pixels, side as usize);
                // With a checksum: damaged pixels are refused, never taken for an image.
                let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("a valid zstd level");
                compressor.include_checksum(true).expect("zstd takes a checksum flag");
                compressor.compress(&residuals).expect("zstd compresses into a growing buffer")
            }
        }
    }

    /// The `side`² RGB8 pixels back from `data`; an error says what is wrong with it.
    pub fn decode(self, data: &[u8], side: u32) -> Result<Vec<u8>, String> {
        let expected = side as usize * side as usize * 3;
        match self {
            Self::Raw => Ok(data.to_vec()),
            Self::Lossless => {
                if expected == 0 {
                    // Empty, or (as workers before this version sent it) a frame of nothing.
                    return match data.is_empty() || zstd::bulk::decompress(data, 0).is_ok_and(|d| d.is_empty()) {
                        true => Ok(Vec::new()),
                        false => Err("pixels for a 0-pixel image".into()),
                    };
                }
                // At most the expected size is ever allocated: a hostile message cannot inflate.
                let residuals = zstd::bulk::decompress(data, expected).map_err(|e| format!("lossless pixels do not decompress: {e}"))?;
                if residuals.len() != expected {
                    return Err(format!("lossless pixels hold {} bytes, a {side}² RGB image {expected}", residuals.len()));
                }
                Ok(reconstruct(&residuals, side as usize))
            }
        }
    }
}

impl FromStr for PixelCodec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| format!("unknown pixel codec {text:?}: this version reads raw and lossless"))
    }
}

impl std::fmt::Display for PixelCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// LOCO-I's median edge detector: `left`, `up`, `up_left` → the prediction.
#[inline]
fn predict(left: u8, up: u8, up_left: u8) -> u8 {
    let (lo, hi) = if left < up { (left, up) } else { (up, left) };
    if up_left >= hi {
        lo
    } else if up_left <= lo {
        hi
    } else {
        left.wrapping_add(up).wrapping_sub(up_left)
    }
}

/// The prediction of pixel (`x`, `y`) of `plane` from its left, upper and upper-left
/// neighbours (those before it in row order; the first row and column borrow what they have).
#[inline]
fn predicted(plane: &[u8], side: usize, x: usize, y: usize) -> u8 {
    let i = y * side + x;
    let left = if x > 0 { plane[i - 1] } else if y > 0 { plane[i - side] } else { 0 };
    let up = if y > 0 { plane[i - side] } else { left };
    let up_left = if x > 0 && y > 0 { plane[i - side - 1] } else { up };
    predict(left, up, up_left)
}

/// The planes (G, R−G, B−G), each as residuals of [`predict`], one after the other.
fn residuals(pixels: &[u8], side: usize) -> Vec<u8> {
    let n = side * side;
    let mut planes = vec![0u8; 3 * n];
    for (i, px) in pixels.chunks_exact(3).enumerate().take(n) {
        let (r, g, b) = (px[0], px[1], px[2]);
        planes[i] = g;
        planes[n + i] = r.wrapping_sub(g);
        planes[2 * n + i] = b.wrapping_sub(g);
    }
    let mut out = vec![0u8; 3 * n];
    for p in 0..3 {
        let plane = &planes[p * n..(p + 1) * n];
        let out = &mut out[p * n..(p + 1) * n];
        for y in 0..side {
            for x in 0..side {
                let i = y * side + x;
                out[i] = plane[i].wrapping_sub(predicted(plane, side, x, y));
            }
        }
    }
    out
}

/// The inverse of [`residuals`]: RGB8 pixels.
fn reconstruct(residuals: &[u8], side: usize) -> Vec<u8> {
    let n = side * side;
    let mut planes = vec![0u8; 3 * n];
    for p in 0..3 {
        let res = &residuals[p * n..(p + 1) * n];
        let plane = &mut planes[p * n..(p + 1) * n];
        for y in 0..side {
            for x in 0..side {
                let i = y * side + x;
                plane[i] = res[i].wrapping_add(predicted(plane, side, x, y));
            }
        }
    }
    let mut pixels = vec![0u8; 3 * n];
    for (i, px) in pixels.chunks_exact_mut(3).enumerate() {
        let g = planes[i];
        px[0] = planes[n + i].wrapping_add(g);
        px[1] = g;
        px[2] = planes[2 * n + i].wrapping_add(g);
    }
    pixels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth picture with an edge and light noise, as photos resized to a model's input are.
    fn picture(side: u32, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        let mut out = Vec::new();
        for y in 0..side {
            for x in 0..side {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let noise = (state % 5) as i32 - 2;
                let edge = if x + y > side { 60 } else { 0 };
                for c in 0..3u32 {
                    let v = (x * (c + 1) * 200 / side + y * 90 / side) as i32 + edge + noise;
                    out.push(v.clamp(0, 255) as u8);
                }
            }
        }
        out
    }

    #[test]
    fn lossless_gives_back_every_byte_and_compresses_photo_like_pixels() {
        for (side, seed) in [(1, 1), (2, 2), (7, 3), (224, 4), (384, 5)] {
            let pixels = picture(side, seed);
            let wire = PixelCodec::Lossless.encode(&pixels, side);
            assert_eq!(PixelCodec::Lossless.decode(&wire, side).unwrap(), pixels, "side {side}");
            if side >= 224 {
                assert!(wire.len() * 2 < pixels.len(), "side {side}: {} of {} bytes", wire.len(), pixels.len());
            }
        }
        let noise: Vec<u8> = (0..32 * 32 * 3).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let wire = PixelCodec::Lossless.encode(&noise, 32);
        assert_eq!(PixelCodec::Lossless.decode(&wire, 32).unwrap(), noise, "incompressible pixels too");
        assert_eq!(PixelCodec::Raw.decode(&PixelCodec::Raw.encode(&noise, 32), 32).unwrap(), noise);
    }

    #[test]
    fn bad_lossless_data_is_an_error_not_a_guess() {
        let pixels = picture(16, 9);
        let wire = PixelCodec::Lossless.encode(&pixels, 16);
        assert!(PixelCodec::Lossless.decode(&wire, 17).unwrap_err().contains("17²"), "another size");
        assert!(PixelCodec::Lossless.decode(&wire, 15).is_err(), "a smaller size does not fit");
        assert!(PixelCodec::Lossless.decode(b"not zstd", 16).unwrap_err().contains("do not decompress"));
        assert_eq!("lossless".parse::<PixelCodec>(), Ok(PixelCodec::Lossless));
        assert!("webp".parse::<PixelCodec>().unwrap_err().contains("reads raw and lossless"));
    }
}
