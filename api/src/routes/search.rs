//! `POST /api/v1/search`: nearest neighbours of an embedding, a text (CLIP text encoder), an
//! uploaded image (CLIP image encoder) or a stored image ("more like this"), with filters.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use imgfleet_shared::domain::{SearchHit, SearchQuery};
use imgfleet_shared::filter::FilterExpr;
use imgfleet_shared::http::image_input::decode_image;
use uuid::Uuid;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::{AppError, AppResult, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;

/// Most hits one search returns.
pub const MAX_SEARCH_LIMIT: usize = 1000;
/// Deepest offset a search accepts.
pub const MAX_SEARCH_OFFSET: usize = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/search", post(search))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Query vector; its size must match the collection's. Exactly one of `embedding`,
    /// `text`, `image_base64` and `like_id` is given.
    pub embedding: Option<Vec<f32>>,
    /// Words describing the images wanted (CLIP text encoder).
    pub text: Option<String>,
    /// An image file, base64 (or a data URL): images that look like it (CLIP image encoder).
    pub image_base64: Option<String>,
    /// A stored image's id: images like it ("more like this"; the image itself comes first).
    pub like_id: Option<String>,
    /// Filter language of the README (`{"format": "jpeg", "width": {"gte": 1000}}`).
    #[schema(value_type = Object)]
    pub filters: Option<serde_json::Value>,
    /// 1 to 1000; default 10.
    pub limit: Option<usize>,
    /// Hits to skip, up to 10000; default 0.
    pub offset: Option<usize>,
    /// Only hits scoring at least this (cosine similarity for Cosine collections).
    pub score_threshold: Option<f32>,
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

/// Nearest images first: `[{id, score, payload}]`.
#[utoipa::path(post, path = "/api/v1/search", tag = "search", request_body = SearchRequest,
    responses((status = 200, body = Vec<SearchHit>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn search(State(app): State<AppState>, ApiJson(body): ApiJson<SearchRequest>) -> AppResult<Json<Vec<SearchHit>>> {
    let collection = app.collection_or_active(body.collection.as_deref())?;
    let limit = check_limit(body.limit, 10, MAX_SEARCH_LIMIT, "limit")?;
    let offset = body.offset.unwrap_or(0);
    if offset > MAX_SEARCH_OFFSET {
        return Err(AppError::invalid(format!("offset must be at most {MAX_SEARCH_OFFSET}, got {offset}")));
    }
    if body.score_threshold.is_some_and(|t| !t.is_finite()) {
        return Err(AppError::invalid("score_threshold must be a finite number"));
    }
    let filter = match &body.filters {
        Some(f) => FilterExpr::parse(f)?,
        None => None,
    };
    let given = [body.embedding.is_some(), body.text.is_some(), body.image_base64.is_some(), body.like_id.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(AppError::invalid("give exactly one of embedding, text, image_base64 and like_id"));
    }
    let vector = if let Some(embedding) = body.embedding {
        if embedding.is_empty() {
            return Err(AppError::invalid("embedding must not be empty"));
        }
        embedding
    } else if let Some(text) = body.text {
        if text.trim().is_empty() {
            return Err(AppError::invalid("text must not be empty"));
        }
        let encoder = encoder(&app)?;
        encoder.embed_texts(vec![text]).await?.pop().ok_or_else(|| AppError::internal("the encoder returned no embedding"))?
    } else if let Some(image) = body.image_base64 {
        let encoder = encoder(&app)?;
        let pixels = tokio::task::spawn_blocking(move || decode_image(&image, None))
            .await
            .map_err(|e| AppError::internal(e.to_string()))?
            .map_err(AppError::invalid)?;
        encoder.embed_images(vec![pixels]).await?.pop().ok_or_else(|| AppError::internal("the encoder returned no embedding"))?
    } else {
        let like = body.like_id.unwrap_or_default();
        let id = Uuid::parse_str(&like).map_err(|_| AppError::invalid(format!("like_id {like:?} is not an image id (a UUID)")))?;
        let mut found = app.vectors.get(collection.as_str(), &[id], true).await?;
        let record = found.pop().ok_or_else(|| AppError::not_found(format!("image {id} not found in {collection:?}")))?;
        record.vector.ok_or_else(|| AppError::internal(format!("image {id} has no stored vector")))?
    };
    let query = SearchQuery { vector, filter, limit, offset, score_threshold: body.score_threshold, with_vector: body.with_vector };
    Ok(Json(app.vectors.search(collection.as_str(), &query).await?))
}

fn encoder(app: &AppState) -> AppResult<std::sync::Arc<dyn imgfleet_shared::ports::Encoder>> {
    app.encoder.clone().ok_or_else(|| {
        AppError::unavailable("this server has no CLIP model loaded; search by text or image needs one (search by embedding or like_id works)")
    })
}
