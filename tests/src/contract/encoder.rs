//! `Encoder` contract: shapes, normalisation, batch invariance, input errors. The model
//! issues check numerical equality with `transformers` separately; this suite checks the port.

use std::sync::Arc;

use async_trait::async_trait;
use imgfleet_core::domain::RgbImage;
use imgfleet_core::ports::{Encoder, EncoderError};

#[async_trait]
pub trait EncoderFixture: Send + Sync {
    async fn open(&self) -> Arc<dyn Encoder>;
}

#[macro_export]
macro_rules! encoder_contract {
    ($fixture:expr) => {
        $crate::contract_case!(image_embeddings_are_unit_and_batch_invariant, $crate::contract::encoder::image_embeddings_are_unit_and_batch_invariant, $fixture);
        $crate::contract_case!(text_embeddings_are_unit_and_batch_invariant, $crate::contract::encoder::text_embeddings_are_unit_and_batch_invariant, $fixture);
        $crate::contract_case!(captions_one_per_image, $crate::contract::encoder::captions_one_per_image, $fixture);
        $crate::contract_case!(bad_inputs_are_invalid, $crate::contract::encoder::bad_inputs_are_invalid, $fixture);
    };
}

/// A deterministic test picture: gradients and a square whose place depends on `seed`.
pub fn picture(width: u32, height: u32, seed: u32) -> RgbImage {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let inside = (x + seed * 7) % width < width / 3 && (y + seed * 3) % height < height / 3;
            let r = (x * 255 / width.max(1)) as u8;
            let g = (y * 255 / height.max(1)) as u8;
            let b = if inside { 255 } else { (seed * 40 % 256) as u8 };
            data.extend_from_slice(&[r, g, b]);
        }
    }
    RgbImage { width, height, data }
}

fn assert_unit(v: &[f32], dim: usize) {
    assert_eq!(v.len(), dim);
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub async fn image_embeddings_are_unit_and_batch_invariant(f: &dyn EncoderFixture) {
    let e = f.open().await;
    let dim = e.capabilities().embedding_dim;
    let images: Vec<RgbImage> = vec![picture(224, 224, 1), picture(300, 200, 2), picture(64, 97, 3)];
    let batch = e.embed_images(images.clone()).await.unwrap();
    assert_eq!(batch.len(), 3);
    for (i, image) in images.into_iter().enumerate() {
        assert_unit(&batch[i], dim);
        let alone = e.embed_images(vec![image]).await.unwrap();
        assert!(max_diff(&alone[0], &batch[i]) < 1e-3, "image {i} depends on its batch");
    }
    assert!(max_diff(&batch[0], &batch[1]) > 1e-3, "different images, same embedding");
}

pub async fn text_embeddings_are_unit_and_batch_invariant(f: &dyn EncoderFixture) {
    let e = f.open().await;
    let dim = e.capabilities().embedding_dim;
    let texts: Vec<String> = ["a dog on a beach", "", "🙂 unicode, punctuation!!!"].map(String::from).to_vec();
    let batch = e.embed_texts(texts.clone()).await.unwrap();
    assert_eq!(batch.len(), 3);
    for (i, text) in texts.into_iter().enumerate() {
        assert_unit(&batch[i], dim);
        let alone = e.embed_texts(vec![text]).await.unwrap();
        assert!(max_diff(&alone[0], &batch[i]) < 1e-3, "text {i} depends on its batch");
    }
}

pub async fn captions_one_per_image(f: &dyn EncoderFixture) {
    let e = f.open().await;
    if e.capabilities().safe_blip_batch == 0 {
        // Captioning is off: asking for captions is a clear "unavailable", never a panic or "".
        let refused = e.caption_images(vec![picture(384, 384, 1)]).await;
        assert!(matches!(refused, Err(EncoderError::Unavailable(_))), "{refused:?}");
        return;
    }
    let captions = e.caption_images(vec![picture(384, 384, 1), picture(100, 50, 2)]).await.unwrap();
    assert_eq!(captions.len(), 2);
}

pub async fn bad_inputs_are_invalid(f: &dyn EncoderFixture) {
    let e = f.open().await;
    assert!(matches!(e.embed_texts(vec![]).await, Err(EncoderError::Invalid(_))));
    assert!(matches!(e.embed_images(vec![]).await, Err(EncoderError::Invalid(_))));
    let empty = RgbImage { width: 0, height: 0, data: vec![] };
    assert!(matches!(e.embed_images(vec![empty]).await, Err(EncoderError::Invalid(_))));
    let short = RgbImage { width: 10, height: 10, data: vec![0; 10] };
    assert!(matches!(e.embed_images(vec![short]).await, Err(EncoderError::Invalid(_))));
}
