//! `POST /api/v1/search`: nearest neighbours of an embedding, a text (CLIP text encoder), an
//! uploaded image (CLIP image encoder) or a stored image ("more like this"), with filters.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use imgfleet_core::domain::{SearchHit, SearchQuery};
use imgfleet_core::filter::FilterExpr;
use imgfleet_core::ports::EncoderError;
use imgfleet_core::ports::encoder::check_text_lengths;
use imgfleet_imaging::upload::decode_image;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{AppError, AppResult, ErrorBody};
use crate::extract::ApiJson;
use crate::metrics::METRICS;
use crate::state::AppState;

/// Most hits one search returns.
pub const MAX_SEARCH_LIMIT: usize = 1000;
/// Deepest offset a search accepts.
pub const MAX_SEARCH_OFFSET: usize = 10_000;
/// Largest magnitude of a vector component or score threshold (vectors are stored as `f32`).
pub const MAX_VECTOR_VALUE: f64 = f32::MAX as f64;

pub fn routes() -> Router<AppState> {
    Router::new().route("/search", post(search))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Query vector; its size must match the collection's (409 otherwise). Exactly one of
    /// `embedding`, `text`, `image_base64` and `like_id` is given.
    pub embedding: Option<Vec<f64>>,
    /// Words describing the images wanted (CLIP text encoder), 1 to 1000 characters.
    pub text: Option<String>,
    /// An image file, base64 (or a data URL): images that look like it (CLIP image encoder).
    pub image_base64: Option<String>,
    /// A stored image's id: images like it ("more like this"; the image itself comes first).
    #[schema(format = Uuid)]
    pub like_id: Option<String>,
    /// Filter language of the README (`{"format": "jpeg", "width": {"gte": 1000}}`).
    #[schema(value_type = Object)]
    pub filters: Option<serde_json::Value>,
    /// 1 to 1000; default 10.
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub limit: Option<usize>,
    /// Hits to skip, up to 10000; default 0.
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub offset: Option<usize>,
    /// Only hits scoring at least this (cosine similarity for Cosine collections).
    pub score_threshold: Option<f64>,
    /// Default: the selected collection.
    pub collection: Option<String>,
    /// Return each hit's vector too.
    #[serde(default)]
    pub with_vector: bool,
}

pub fn check_limit(limit: Option<usize>, default: usize, max: usize, name: &str) -> Result<usize, AppError> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(AppError::invalid(format!("{name} must be between 1 and {max}, got {limit}")));
    }
    Ok(limit)
}

/// An image id as the API writes it: the hyphenated UUID form, nothing else.
pub fn parse_image_id(text: &str, what: &str) -> AppResult<Uuid> {
    match Uuid::try_parse(text) {
        Ok(id) if text.len() == 36 => Ok(id),
        _ => Err(AppError::invalid(format!("{what} {text:?} is not an image id (a UUID like 0b6e2c4a-…)"))),
    }
}

/// 409 `vector_size_mismatch`: a vector of `got` components for a collection of `size`.
pub fn vector_size_mismatch(collection: &str, size: usize, got: usize, what: &str) -> AppError {
    AppError::new(
        StatusCode::CONFLICT,
        "vector_size_mismatch",
        format!("collection {collection:?} holds vectors of {size} components; {what} has {got}"),
    )
}

/// Nearest images first: `[{id, score, payload}]`.
#[utoipa::path(post, path = "/api/v1/search", tag = "search", request_body = SearchRequest,
    responses((status = 200, body = Vec<SearchHit>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn search(State(app): State<AppState>, ApiJson(body): ApiJson<SearchRequest>) -> AppResult<Json<Vec<SearchHit>>> {
    let started = std::time::Instant::now();
    let collection = app.collection_or_active(body.collection.as_deref())?;
    let limit = check_limit(body.limit, 10, MAX_SEARCH_LIMIT, "limit")?;
    let offset = body.offset.unwrap_or(0);
    if offset > MAX_SEARCH_OFFSET {
        return Err(AppError::invalid(format!("offset must be at most {MAX_SEARCH_OFFSET}, got {offset}")));
    }
    if body.score_threshold.is_some_and(|t| !(-MAX_VECTOR_VALUE..=MAX_VECTOR_VALUE).contains(&t)) {
        return Err(AppError::invalid(format!("score_threshold must be a number between ±{MAX_VECTOR_VALUE:e}")));
    }
    let filter = match &body.filters {
        Some(f) => FilterExpr::parse(f)?,
        None => None,
    };
    let given = [body.embedding.is_some(), body.text.is_some(), body.image_base64.is_some(), body.like_id.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(AppError::invalid("give exactly one of embedding, text, image_base64 and like_id"));
    }
    let kind = match given {
        [true, ..] => "embedding",
        [_, true, ..] => "text",
        [_, _, true, _] => "image",
        _ => "like",
    };
    let like = body.like_id.as_deref().map(|like| parse_image_id(like, "like_id")).transpose()?;
    if let Some(embedding) = &body.embedding {
        if embedding.is_empty() {
            return Err(AppError::invalid("embedding must not be empty"));
        }
        if embedding.iter().any(|x| !(-MAX_VECTOR_VALUE..=MAX_VECTOR_VALUE).contains(x)) {
            return Err(AppError::invalid(format!("embedding components must be numbers between ±{MAX_VECTOR_VALUE:e}")));
        }
    }
    if let Some(text) = &body.text {
        if text.is_empty() {
            return Err(AppError::invalid("text must not be empty"));
        }
        check_text_lengths(std::slice::from_ref(text))?;
    }
    // The collection first: a missing one is a 404 before any model runs.
    let size = app.vectors.collection(collection.as_str()).await?.vector_size;
    let vector = if let Some(embedding) = body.embedding {
        embedding.into_iter().map(|x| x as f32).collect()
    } else if let Some(text) = body.text {
        let encoder = encoder(&app)?;
        encoder.embed_texts(vec![text]).await?.pop().ok_or_else(|| AppError::internal("the encoder returned no embedding"))?
    } else if let Some(image) = body.image_base64 {
        let encoder = encoder(&app)?;
        // A busy encoder refuses before the upload is decoded; decoding itself takes a slot.
        if encoder.is_saturated() {
            return Err(EncoderError::Overloaded.into());
        }
        let _slot = app.decode_slots.enter().await?;
        let pixels = tokio::task::spawn_blocking(move || decode_image(&image, None))
            .await
            .map_err(|e| AppError::internal(e.to_string()))?
            .map_err(AppError::invalid)?;
        encoder.embed_images(vec![pixels]).await?.pop().ok_or_else(|| AppError::internal("the encoder returned no embedding"))?
    } else {
        let id = like.expect("one query is given");
        let mut found = app.vectors.get(collection.as_str(), &[id], true).await?;
        let record = found.pop().ok_or_else(|| AppError::not_found(format!("image {id} not found in {collection:?}")))?;
        record.vector.ok_or_else(|| AppError::internal(format!("image {id} has no stored vector")))?
    };
    if vector.len() != size {
        return Err(vector_size_mismatch(collection.as_str(), size, vector.len(), "the query vector"));
    }
    let query = SearchQuery { vector, filter, limit, offset, score_threshold: body.score_threshold.map(|t| t as f32), with_vector: body.with_vector };
    let hits = app.vectors.search(collection.as_str(), &query).await?;
    METRICS.search_seconds.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
    Ok(Json(hits))
}

fn encoder(app: &AppState) -> AppResult<std::sync::Arc<dyn imgfleet_core::ports::Encoder>> {
    app.encoder.clone().ok_or_else(|| {
        AppError::unavailable("this server has no CLIP model loaded; search by text or image needs one (search by embedding or like_id works)")
    })
}
