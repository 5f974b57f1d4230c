//! `POST /api/v1/search`: nearest neighbours of an embedding, with filters.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use imgfleet_shared::domain::{SearchHit, SearchQuery};
use imgfleet_shared::filter::FilterExpr;
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
    /// Query vector; its size must match the collection's.
    pub embedding: Vec<f32>,
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
    if body.embedding.is_empty() {
        return Err(AppError::invalid("embedding must not be empty"));
    }
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
    let query = SearchQuery {
        vector: body.embedding,
        filter,
        limit,
        offset,
        score_threshold: body.score_threshold,
        with_vector: body.with_vector,
    };
    Ok(Json(app.vectors.search(collection.as_str(), &query).await?))
}
