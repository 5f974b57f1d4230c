//! Encoder port: CLIP image and text embeddings, BLIP captions.

use async_trait::async_trait;

use crate::domain::{Capabilities, RgbImage};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EncoderError {
    /// The input cannot be encoded (empty text list, zero-sized image…).
    #[error("{0}")]
    Invalid(String),
    /// Every slot is busy; try again later.
    #[error("encoder overloaded")]
    Overloaded,
    #[error("encoder unavailable: {0}")]
    Unavailable(String),
    #[error("encoder error: {0}")]
    Internal(String),
}

#[async_trait]
pub trait Encoder: Send + Sync + 'static {
    /// One L2-normalised embedding per image, in order.
    async fn embed_images(&self, images: Vec<RgbImage>) -> Result<Vec<Vec<f32>>, EncoderError>;

    /// One L2-normalised embedding per text, in order.
    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EncoderError>;

    /// One caption per image, in order.
    async fn caption_images(&self, images: Vec<RgbImage>) -> Result<Vec<String>, EncoderError>;

    fn capabilities(&self) -> Capabilities;
}
