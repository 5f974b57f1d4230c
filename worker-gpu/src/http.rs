//! The seed's ML inference API (section 2.2) over the `Encoder` port.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use imgfleet_shared::domain::{Capabilities, RgbImage};
use imgfleet_shared::http::{ApiJson, AppError, AppResult};
use imgfleet_shared::ports::Encoder;
use serde::{Deserialize, Serialize};

pub use imgfleet_shared::http::image_input::MAX_IMAGE_PIXELS;

#[derive(Clone)]
pub struct MlState {
    pub encoder: Arc<dyn Encoder>,
}

pub fn router(state: MlState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/embed", post(embed))
        .route("/embed_text", post(embed_text))
        .route("/caption", post(caption))
        .route("/batch_embed_and_caption", post(batch_embed_and_caption))
        .route("/capabilities", get(capabilities));
    Router::new()
        .nest("/api/v1", api)
        .fallback(|request: axum::extract::Request| async move {
            AppError::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
        })
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
        .merge(imgfleet_shared::http::ops::router("imgfleet-worker-gpu"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    /// The image file (JPEG, PNG, WebP, GIF, BMP, TIFF), base64-encoded.
    pub image_base64: String,
    /// For messages only.
    #[serde(default)]
    pub filename: Option<String>,
}

#[derive(Serialize)]
pub struct EmbedResponse {
    pub embedding: Vec<f32>,
    /// `[1, dim]`, as the seed answered.
    pub embedding_shape: [usize; 2],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextRequest {
    pub texts: Vec<String>,
}

#[derive(Serialize)]
pub struct TextResponse {
    pub embeddings: Vec<Vec<f32>>,
}

pub use imgfleet_shared::http::image_input::decode_image;

async fn decode_off_runtime(request: ImageRequest) -> AppResult<RgbImage> {
    tokio::task::spawn_blocking(move || decode_image(&request.image_base64, request.filename.as_deref()))
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(AppError::invalid)
}

/// `{image_base64, filename}` → `{embedding, embedding_shape}` (L2-normalised CLIP image embedding).
pub async fn embed(State(state): State<MlState>, ApiJson(request): ApiJson<ImageRequest>) -> AppResult<Json<EmbedResponse>> {
    let image = decode_off_runtime(request).await?;
    let mut embeddings = state.encoder.embed_images(vec![image]).await?;
    let embedding = embeddings.pop().ok_or_else(|| AppError::internal("the encoder returned no embedding"))?;
    let embedding_shape = [1, embedding.len()];
    Ok(Json(EmbedResponse { embedding, embedding_shape }))
}

/// `{texts: [..]}` → `{embeddings: [[..]]}` (L2-normalised CLIP text embeddings).
pub async fn embed_text(State(state): State<MlState>, ApiJson(request): ApiJson<TextRequest>) -> AppResult<Json<TextResponse>> {
    if request.texts.is_empty() {
        return Err(AppError::invalid("texts must not be empty"));
    }
    let embeddings = state.encoder.embed_texts(request.texts).await?;
    Ok(Json(TextResponse { embeddings }))
}

/// `{safe_clip_batch, safe_blip_batch, embedding_dim, device, clip_model, blip_model}`.
pub async fn capabilities(State(state): State<MlState>) -> (StatusCode, Json<Capabilities>) {
    (StatusCode::OK, Json(state.encoder.capabilities()))
}

#[derive(Serialize)]
pub struct CaptionResponse {
    pub caption: String,
}

/// `{image_base64, filename}` → `{caption}` (BLIP, transformers' default decoding); 503 when
/// no captioning model is loaded.
pub async fn caption(State(state): State<MlState>, ApiJson(request): ApiJson<ImageRequest>) -> AppResult<Json<CaptionResponse>> {
    let image = decode_off_runtime(request).await?;
    let mut captions = state.encoder.caption_images(vec![image]).await?;
    let caption = captions.pop().ok_or_else(|| AppError::internal("the captioner returned no caption"))?;
    Ok(Json(CaptionResponse { caption }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchImage {
    pub unique_id: String,
    pub image_base64: String,
    #[serde(default)]
    pub filename: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub images: Vec<BatchImage>,
}

#[derive(Serialize)]
pub struct BatchResult {
    pub unique_id: String,
    pub filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// Most images in one batch request.
pub const MAX_BATCH_IMAGES: usize = 1024;

/// `{images: [{unique_id, image_base64, filename}]}` → `{results: [{unique_id, filename,
/// embedding?, caption?, error?}]}`, in request order. An image that cannot be decoded is an
/// `error` on its own row; the others are embedded (and captioned when a captioning model is
/// loaded) together.
pub async fn batch_embed_and_caption(
    State(state): State<MlState>,
    ApiJson(request): ApiJson<BatchRequest>,
) -> AppResult<Json<BatchResponse>> {
    if request.images.is_empty() {
        return Err(AppError::invalid("images must not be empty"));
    }
    if request.images.len() > MAX_BATCH_IMAGES {
        return Err(AppError::invalid(format!("at most {MAX_BATCH_IMAGES} images per request")));
    }
    let (decoded, mut results) = tokio::task::spawn_blocking(move || {
        let mut decoded = Vec::new();
        let mut results = Vec::with_capacity(request.images.len());
        for item in request.images {
            let outcome = decode_image(&item.image_base64, item.filename.as_deref());
            let mut result =
                BatchResult { unique_id: item.unique_id, filename: item.filename, embedding: None, caption: None, error: None };
            match outcome {
                Ok(image) => decoded.push((results.len(), image)),
                Err(message) => result.error = Some(message),
            }
            results.push(result);
        }
        (decoded, results)
    })
    .await
    .map_err(|e| AppError::internal(e.to_string()))?;
    if decoded.is_empty() {
        return Ok(Json(BatchResponse { results }));
    }
    let (rows, images): (Vec<usize>, Vec<RgbImage>) = decoded.into_iter().unzip();
    let captioning = state.encoder.capabilities().safe_blip_batch > 0;
    let embeddings = state.encoder.embed_images(images.clone()).await?;
    let captions = if captioning { Some(state.encoder.caption_images(images).await?) } else { None };
    for (i, (row, embedding)) in rows.iter().zip(embeddings).enumerate() {
        results[*row].embedding = Some(embedding);
        results[*row].caption = captions.as_ref().map(|c| c[i].clone());
    }
    Ok(Json(BatchResponse { results }))
}
