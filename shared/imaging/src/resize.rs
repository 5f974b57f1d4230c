//! Model-ready pixels with `fast_image_resize` (SIMD convolution). Bicubic (Catmull-Rom,
//! a = -0.5) with antialiasing is what Pillow's `BICUBIC` computes, which is what the
//! `transformers` CLIP and BLIP image processors call.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::geometry::shortest_edge_size;

/// CLIP input as `CLIPImageProcessor` makes it: the shortest side resized to `size` (the long
/// side to `floor(size * long / short)`), then the centre `size`×`size` crop. RGB8, row-major.
pub fn clip_input(src: &RgbImage, size: u32) -> Vec<u8> {
    let (w, h) = src.dimensions();
    let (rw, rh) = shortest_edge_size(w, h, size);
    let resized = resize_rgb(src, rw, rh);
    let (left, top) = ((rw - size) / 2, (rh - size) / 2);
    let row = size as usize * 3;
    let mut out = Vec::with_capacity(row * size as usize);
    for y in top..top + size {
        let start = (y as usize * rw as usize + left as usize) * 3;
        out.extend_from_slice(&resized[start..start + row]);
    }
    out
}

/// BLIP input as `BlipImageProcessor` makes it: the whole image squashed to `size`×`size`.
pub fn blip_input(src: &RgbImage, size: u32) -> Vec<u8> {
    resize_rgb(src, size, size)
}

fn resize_rgb(src: &RgbImage, width: u32, height: u32) -> Vec<u8> {
    let (sw, sh) = src.dimensions();
    if (sw, sh) == (width, height) {
        return src.as_raw().clone();
    }
    let src_view = ImageRef::new(sw, sh, src.as_raw(), PixelType::U8x3).expect("an RgbImage buffer holds its pixels");
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    Resizer::new().resize(&src_view, &mut dst, &options).expect("same pixel type, non-empty sizes");
    dst.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_crops_the_centre() {
        // 6x2: columns 0,1 red, 2,3 green, 4,5 blue; size 2 keeps the green centre.
        let colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255]];
        let src = RgbImage::from_fn(6, 2, |x, _| image::Rgb(colours[x as usize / 2]));
        let out = clip_input(&src, 2);
        assert_eq!(out.len(), 2 * 2 * 3);
        assert!(out.chunks(3).all(|p| p[1] > 200 && p[0] < 60 && p[2] < 60), "{out:?}");
    }

    #[test]
    fn blip_squashes_and_keeps_flat_colour() {
        let src = RgbImage::from_pixel(40, 10, image::Rgb([10, 120, 230]));
        let out = blip_input(&src, 8);
        assert_eq!(out.len(), 8 * 8 * 3);
        assert!(out.chunks(3).all(|p| p == [10, 120, 230]));
    }
}
