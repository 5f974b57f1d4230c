//! Image preprocessing exactly as the `transformers` PIL image processors do it: PIL's
//! bicubic resampling (same fixed-point arithmetic, so the same bytes), shortest-edge resize,
//! centre crop, rescale and normalise.

use std::path::Path;

use imgfleet_core::domain::RgbImage;
use imgfleet_imaging::geometry::shortest_edge_size;
use serde::Deserialize;

/// PIL's `Resample.c` keeps coefficients as fixed point with this many fractional bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// How a checkpoint's `preprocessor_config.json` says images are prepared.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    pub resize: Resize,
    /// Centre crop to (height, width) after resizing.
    pub crop: Option<(u32, u32)>,
    pub rescale_factor: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side becomes this; the other keeps the aspect ratio (CLIP).
    ShortestEdge(u32),
    /// Exactly this (height, width), aspect ratio ignored (BLIP).
    Exact(u32, u32),
    None,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    size: Option<serde_json::Value>,
    #[serde(default)]
    do_center_crop: bool,
    crop_size: Option<serde_json::Value>,
    #[serde(default = "yes")]
    do_rescale: bool,
    rescale_factor: Option<f32>,
    #[serde(default = "yes")]
    do_normalize: bool,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
    resample: Option<u32>,
}

fn yes() -> bool {
    true
}

/// `{"height": h, "width": w}`, `{"shortest_edge": s}` or a bare number.
fn size_of(v: &serde_json::Value, square_if_int: bool) -> Result<Resize, String> {
    if let Some(n) = v.as_u64() {
        return Ok(if square_if_int { Resize::Exact(n as u32, n as u32) } else { Resize::ShortestEdge(n as u32) });
    }
    let get = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).map(|n| n as u32);
    match (get("shortest_edge"), get("height"), get("width")) {
        (Some(s), _, _) => Ok(Resize::ShortestEdge(s)),
        (None, Some(h), Some(w)) => Ok(Resize::Exact(h, w)),
        _ => Err(format!("unsupported size {v}")),
    }
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`. Only bicubic resampling (`resample: 3`) is supported,
    /// as CLIP and BLIP checkpoints use.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if raw.resample.is_some_and(|r| r != 3) {
            return Err(format!("{}: only bicubic resampling (3) is supported", path.display()));
        }
        let resize = match (&raw.size, raw.do_resize) {
            (Some(size), true) => size_of(size, true)?,
            (None, true) => return Err(format!("{}: do_resize without size", path.display())),
            (_, false) => Resize::None,
        };
        let crop = match (&raw.crop_size, raw.do_center_crop) {
            (Some(c), true) => match size_of(c, true)? {
                Resize::Exact(h, w) => Some((h, w)),
                other => return Err(format!("{}: unsupported crop_size {other:?}", path.display())),
            },
            _ => None,
        };
        let identity = ([0.0; 3], [1.0; 3]);
        let (mean, std) = if raw.do_normalize {
            (
                raw.image_mean.unwrap_or([0.481_454_66, 0.457_827_5, 0.408_210_73]),
                raw.image_std.unwrap_or([0.268_629_54, 0.261_302_58, 0.275_777_1]),
            )
        } else {
            identity
        };
        let rescale_factor = if raw.do_rescale { raw.rescale_factor.unwrap_or(1.0 / 255.0) } else { 1.0 };
        Ok(Self { resize, crop, rescale_factor, mean, std })
    }

    /// The (height, width) a prepared image has.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        self.crop.or(match self.resize {
            Resize::Exact(h, w) => Some((h, w)),
            _ => None,
        })
    }

    /// Resize and crop as the processor does, returning 8-bit pixels.
    pub fn prepare(&self, image: &RgbImage) -> RgbImage {
        let resized = match self.resize {
            Resize::ShortestEdge(s) => {
                let (w, h) = shortest_edge_size(image.width, image.height, s);
                resize_bicubic(image, w, h)
            }
            Resize::Exact(h, w) => resize_bicubic(image, w, h),
            Resize::None => image.clone(),
        };
        match self.crop {
            Some((h, w)) => center_crop(&resized, w, h),
            None => resized,
        }
    }

    /// Channel-first normalised floats, `3 × h × w`, as `pixel_values` holds them.
    pub fn normalise(&self, image: &RgbImage) -> Vec<f32> {
        let plane = (image.width * image.height) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in image.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f32::from(px[c]) * self.rescale_factor - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

/// `transformers`' `center_crop`: top/left by floor division; pads with zeros when smaller.
pub fn center_crop(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let top = (i64::from(image.height) - i64::from(height)).div_euclid(2);
    let left = (i64::from(image.width) - i64::from(width)).div_euclid(2);
    let mut data = vec![0u8; (width * height * 3) as usize];
    for y in 0..i64::from(height) {
        let sy = y + top;
        if sy < 0 || sy >= i64::from(image.height) {
            continue;
        }
        for x in 0..i64::from(width) {
            let sx = x + left;
            if sx < 0 || sx >= i64::from(image.width) {
                continue;
            }
            let src = ((sy * i64::from(image.width) + sx) * 3) as usize;
            let dst = ((y * i64::from(width) + x) * 3) as usize;
            data[dst..dst + 3].copy_from_slice(&image.data[src..src + 3]);
        }
    }
    RgbImage { width, height, data }
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output position: first input index and fixed-point weights (PIL `precompute_coeffs`
/// followed by `normalize_coeffs_8bpc`).
fn coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (f64::from(xx) + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 }
                })
                .collect();
            (xmin as usize, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// PIL `Image.resize(..., Image.BICUBIC)` on RGB: a horizontal pass over the rows the
/// vertical pass needs, then a vertical pass, each rounded to 8 bits. Same size: a copy.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert!(width > 0 && height > 0, "resize to an empty image");
    if image.width == width && image.height == height {
        return image.clone();
    }
    let need_horizontal = image.width != width;
    let need_vertical = image.height != height;
    let vertical = coefficients(image.height, height);
    let (first_row, last_row) = if need_vertical {
        let (last_start, last_weights) = vertical.last().expect("height > 0");
        (vertical[0].0, last_start + last_weights.len())
    } else {
        (0, image.height as usize)
    };
    let half = 1i64 << (PRECISION_BITS - 1);

    let (mut data, mut w, mut row_offset) = (image.data.clone(), image.width as usize, 0usize);
    if need_horizontal {
        let horizontal = coefficients(image.width, width);
        let rows = last_row - first_row;
        let mut out = vec![0u8; rows * width as usize * 3];
        for y in 0..rows {
            let src_row = &image.data[(y + first_row) * w * 3..(y + first_row + 1) * w * 3];
            for (xx, (xmin, k)) in horizontal.iter().enumerate() {
                let mut ss = [half; 3];
                for (i, &kw) in k.iter().enumerate() {
                    let p = &src_row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                    for c in 0..3 {
                        ss[c] += i64::from(p[c]) * i64::from(kw);
                    }
                }
                let dst = (y * width as usize + xx) * 3;
                for c in 0..3 {
                    out[dst + c] = clip8(ss[c]);
                }
            }
        }
        data = out;
        w = width as usize;
        row_offset = first_row;
    }
    if need_vertical {
        let mut out = vec![0u8; height as usize * w * 3];
        for (yy, (ymin, k)) in vertical.iter().enumerate() {
            let ymin = ymin - row_offset;
            for x in 0..w {
                let mut ss = [half; 3];
                for (i, &kw) in k.iter().enumerate() {
                    let p = &data[((ymin + i) * w + x) * 3..((ymin + i) * w + x) * 3 + 3];
                    for c in 0..3 {
                        ss[c] += i64::from(p[c]) * i64::from(kw);
                    }
                }
                let dst = (yy * w + x) * 3;
                for c in 0..3 {
                    out[dst + c] = clip8(ss[c]);
                }
            }
        }
        data = out;
    }
    RgbImage { width, height, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_to_same_size_is_identity_and_constant_stays_constant() {
        let img = RgbImage { width: 5, height: 4, data: (0..60).map(|i| (i * 7) as u8).collect() };
        assert_eq!(resize_bicubic(&img, 5, 4), img);
        let flat = RgbImage { width: 17, height: 9, data: vec![77; 17 * 9 * 3] };
        let out = resize_bicubic(&flat, 5, 13);
        assert!(out.data.iter().all(|&v| v == 77), "normalised weights keep a flat image flat");
    }

    #[test]
    fn centre_crop_takes_the_middle() {
        let img = RgbImage { width: 4, height: 3, data: (0..36).map(|i| i as u8).collect() };
        let c = center_crop(&img, 2, 1);
        // top = (3-1)//2 = 1, left = (4-2)//2 = 1: pixels (1,1) and (1,2).
        assert_eq!(c.data, vec![15, 16, 17, 18, 19, 20]);
    }
}
