//! Encoder port: CLIP image and text embeddings, BLIP captions.

use async_trait::async_trait;

use crate::domain::{Capabilities, RgbImage};

/// Longest text embedded, in characters. CLIP reads 77 tokens; a longer text is cut anyway,
/// and this bounds what tokenizing a request costs.
pub const MAX_TEXT_CHARS: usize = 1000;

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

    /// Whether a request would be refused as [`EncoderError::Overloaded`] right now: asked
    /// before an upload is decoded, so that a full queue costs a refused caller nothing.
    fn is_saturated(&self) -> bool {
        false
    }
}

/// `Invalid` when a text is longer than [`MAX_TEXT_CHARS`] (naming which).
pub fn check_text_lengths(texts: &[String]) -> Result<(), EncoderError> {
    match texts.iter().position(|t| t.chars().count() > MAX_TEXT_CHARS) {
        Some(i) => Err(EncoderError::Invalid(format!(
            "text {i} is {} characters long; at most {MAX_TEXT_CHARS} are embedded",
            texts[i].chars().count()
        ))),
        None => Ok(()),
    }
}
