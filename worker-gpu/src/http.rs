//! The seed's ML inference API (section 2.2) over the `Encoder` port.
//!
//! Work is admitted before it is done: a full model queue is a 429 before anything is decoded,
//! the pixels an upload declares are counted from its header against a per-request budget and
//! a budget for all requests in flight, and texts have a length cap.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use imgfleet_core::domain::{Capabilities, RgbImage};
use imgfleet_core::ports::encoder::check_text_lengths;
use imgfleet_core::ports::{Encoder, EncoderError};
use imgfleet_http::{ApiJson, ApiKeys, AppError, AppResult, Scope, json_errors};
use imgfleet_imaging::upload::ImageUpload;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use imgfleet_imaging::upload::MAX_IMAGE_PIXELS;

/// Requests' worth of pixels decoded at once over all requests.
const REQUESTS_OF_PIXELS_IN_FLIGHT: u64 = 4;

#[derive(Clone)]
pub struct MlState {
    pub encoder: Arc<dyn Encoder>,
    keys: ApiKeys,
    /// Most pixels one request's images may declare together.
    max_request_pixels: u64,
    /// Megapixels decoded and not yet answered, over all requests.
    megapixels_in_flight: Arc<Semaphore>,
}

impl MlState {
    /// `keys` empty: the API asks for none. `max_request_pixels`: the pixel budget of one
    /// request (at least one image of [`MAX_IMAGE_PIXELS`]).
    pub fn new(encoder: Arc<dyn Encoder>, keys: ApiKeys, max_request_pixels: u64) -> Self {
        let max_request_pixels = max_request_pixels.max(1);
        let megapixels = (REQUESTS_OF_PIXELS_IN_FLIGHT * max_request_pixels.div_ceil(1_000_000)).min(u64::from(u32::MAX >> 3));
        Self { encoder, keys, max_request_pixels, megapixels_in_flight: Arc::new(Semaphore::new(megapixels as usize)) }
    }

    /// 429 when the model queue is full: before anything of the request is decoded.
    fn refuse_if_saturated(&self) -> AppResult<()> {
        if self.encoder.is_saturated() {
            return Err(EncoderError::Overloaded.into());
        }
        Ok(())
    }

    /// Admits `pixels` (the sum a request's headers declare): 422 past the request budget,
    /// 429 when the pixels in flight would pass theirs. Held until the request is answered.
    fn admit_pixels(&self, pixels: u64) -> AppResult<OwnedSemaphorePermit> {
        if pixels > self.max_request_pixels {
            return Err(AppError::invalid(format!(
                "the images declare {pixels} pixels together; one request may hold at most {} (send fewer or smaller images)",
                self.max_request_pixels
            )));
        }
        let megapixels = u32::try_from(pixels.div_ceil(1_000_000)).unwrap_or(u32::MAX);
        self.megapixels_in_flight
            .clone()
            .try_acquire_many_owned(megapixels)
            .map_err(|_| AppError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", "too many pixels are being decoded; retry shortly"))
    }
}

pub fn router(state: MlState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/embed", post(embed))
        .route("/embed_text", post(embed_text))
        .route("/caption", post(caption))
        .route("/batch_embed_and_caption", post(batch_embed_and_caption))
        .route("/batch_embed_and_caption_multipart", post(batch_embed_and_caption_multipart))
        .route("/capabilities", get(capabilities))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .nest("/api/v1", api)
        .with_state(state)
        .merge(imgfleet_http::ops::router("imgfleet-worker-gpu"))
        .fallback(|request: Request| async move {
            AppError::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
        })
        .method_not_allowed_fallback(|request: Request| async move {
            AppError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{} is not allowed on {}", request.method(), request.uri().path()))
        })
        .layer(middleware::from_fn(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
}

/// Any of the ML API's keys will do (its endpoints change nothing): `read` scope.
async fn require_key(State(state): State<MlState>, request: Request, next: Next) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    match state.keys.authorize(request.headers(), Scope::Read, &what) {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
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

pub use imgfleet_imaging::upload::decode_image;

/// Reads an upload's header off the runtime (base64 decoding is CPU work).
async fn read_upload(request: ImageRequest) -> AppResult<ImageUpload> {
    tokio::task::spawn_blocking(move || ImageUpload::read(&request.image_base64, request.filename.as_deref()))
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(AppError::invalid)
}

/// One image, admitted and decoded: the permit is held until the answer.
async fn admit_and_decode(state: &MlState, request: ImageRequest) -> AppResult<(RgbImage, OwnedSemaphorePermit)> {
    state.refuse_if_saturated()?;
    let upload = read_upload(request).await?;
    let permit = state.admit_pixels(upload.pixels())?;
    let image = tokio::task::spawn_blocking(move || upload.decode())
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(AppError::invalid)?;
    Ok((image, permit))
}

/// `{image_base64, filename}` → `{embedding, embedding_shape}` (L2-normalised CLIP image embedding).
pub async fn embed(State(state): State<MlState>, ApiJson(request): ApiJson<ImageRequest>) -> AppResult<Json<EmbedResponse>> {
    let (image, _pixels) = admit_and_decode(&state, request).await?;
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
    state.refuse_if_saturated()?;
    check_text_lengths(&request.texts)?;
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
    let (image, _pixels) = admit_and_decode(&state, request).await?;
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
/// embedding?, caption?, error?}]}`, in request order. An image that cannot be read or decoded
/// is an `error` on its own row; the others are embedded (and captioned when a captioning model
/// is loaded) together. The readable images' headers are read first: their pixels together
/// must fit the request's pixel budget (422) and the pixels in flight (429) before any is
/// decoded.
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
    state.refuse_if_saturated()?;
    let rows = request
        .images
        .into_iter()
        .map(|item| (BatchResult { unique_id: item.unique_id, filename: item.filename, embedding: None, caption: None, error: None }, Input::Base64(item.image_base64)))
        .collect();
    embed_and_caption_rows(&state, rows).await
}

/// An image of a batch as it came.
enum Input {
    Base64(String),
    Bytes(Vec<u8>),
}

/// Multipart form of `/batch_embed_and_caption`: one file part per image, the part's field
/// name its `unique_id` and its file name the `filename`; the same answer, in part order.
/// Images travel as they are (no base64), so a batch is a third smaller.
pub async fn batch_embed_and_caption_multipart(State(state): State<MlState>, mut multipart: axum::extract::Multipart) -> AppResult<Json<BatchResponse>> {
    state.refuse_if_saturated()?;
    let mut rows = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|e| AppError::invalid(format!("reading the multipart body: {e}")))? {
        if rows.len() >= MAX_BATCH_IMAGES {
            return Err(AppError::invalid(format!("at most {MAX_BATCH_IMAGES} images per request")));
        }
        let unique_id = field.name().filter(|n| !n.is_empty()).map_or_else(|| rows.len().to_string(), str::to_owned);
        let filename = field.file_name().map(str::to_owned);
        let bytes = field.bytes().await.map_err(|e| AppError::invalid(format!("reading part {unique_id:?}: {e}")))?;
        rows.push((BatchResult { unique_id, filename, embedding: None, caption: None, error: None }, Input::Bytes(bytes.to_vec())));
    }
    if rows.is_empty() {
        return Err(AppError::invalid("the form holds no image part"));
    }
    embed_and_caption_rows(&state, rows).await
}

/// Reads every row's image header, admits their pixels, decodes, then embeds (and captions)
/// the readable ones together; an unreadable image is an `error` on its own row.
async fn embed_and_caption_rows(state: &MlState, rows: Vec<(BatchResult, Input)>) -> AppResult<Json<BatchResponse>> {
    let (uploads, mut results) = tokio::task::spawn_blocking(move || {
        let mut uploads = Vec::new();
        let mut results = Vec::with_capacity(rows.len());
        for (mut result, input) in rows {
            let read = match input {
                Input::Base64(text) => ImageUpload::read(&text, result.filename.as_deref()),
                Input::Bytes(bytes) => ImageUpload::from_bytes(bytes, result.filename.as_deref()),
            };
            match read {
                Ok(upload) => uploads.push((results.len(), upload)),
                Err(message) => result.error = Some(message),
            }
            results.push(result);
        }
        (uploads, results)
    })
    .await
    .map_err(|e| AppError::internal(e.to_string()))?;
    let _pixels = state.admit_pixels(uploads.iter().map(|(_, u)| u.pixels()).sum())?;
    let (decoded, results_after) = tokio::task::spawn_blocking(move || {
        let mut decoded = Vec::with_capacity(uploads.len());
        for (row, upload) in uploads {
            match upload.decode() {
                Ok(image) => decoded.push((row, image)),
                Err(message) => results[row].error = Some(message),
            }
        }
        (decoded, results)
    })
    .await
    .map_err(|e| AppError::internal(e.to_string()))?;
    results = results_after;
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
