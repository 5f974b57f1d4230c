//! Gallery views: `GET /api/v1/images` (filtered, sorted pages) and `GET /api/v1/random`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use imgfleet_shared::domain::{ImageRecord, ListQuery};
use imgfleet_shared::filter::{FilterExpr, SortSpec};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{AppError, AppResult, ErrorBody};
use crate::extract::ApiQuery;
use crate::routes::search::check_limit;
use crate::state::AppState;

/// Largest `per_page`.
pub const MAX_PER_PAGE: usize = 500;
/// Pages end here (`page × per_page`): deeper listing costs grow with the offset, so narrow
/// the listing with filters instead.
pub const MAX_LIST_DEPTH: usize = 100_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/images", get(list_images))
        .route("/images/{id}", get(get_image))
        .route("/random", get(random_image))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1-based; default 1.
    pub page: Option<usize>,
    /// 1 to 500; default 20.
    pub per_page: Option<usize>,
    /// A filter (README) as JSON text.
    pub filters: Option<String>,
    /// A sortable field: width, height, bytes, mtime, taken_at, ingested_at. Default: id order.
    pub sort_by: Option<String>,
    /// `asc` (default) or `desc`.
    pub sort_order: Option<String>,
    /// Default: the selected collection.
    pub collection: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ImagePage {
    pub items: Vec<ImageRecord>,
    /// Points matching the filter.
    pub total: u64,
    pub page: usize,
    pub per_page: usize,
    pub total_pages: u64,
}

/// One page of images; `total` counts every match.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(ListParams),
    responses((status = 200, body = ImagePage), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list_images(State(app): State<AppState>, ApiQuery(params): ApiQuery<ListParams>) -> AppResult<Json<ImagePage>> {
    let collection = app.collection_or_active(params.collection.as_deref())?;
    let page = params.page.unwrap_or(1);
    if page == 0 {
        return Err(AppError::invalid("page starts at 1"));
    }
    let per_page = check_limit(params.per_page, 20, MAX_PER_PAGE, "per_page")?;
    let offset = (page - 1).saturating_mul(per_page);
    if offset.saturating_add(per_page) > MAX_LIST_DEPTH {
        return Err(AppError::invalid(format!(
            "page {page} × per_page {per_page} goes past the first {MAX_LIST_DEPTH} images; narrow the listing with filters"
        )));
    }
    let filter = FilterExpr::parse_str(params.filters.as_deref().unwrap_or(""))?;
    let sort = match params.sort_by.as_deref() {
        Some(field) => Some(SortSpec::parse(field, params.sort_order.as_deref()).map_err(AppError::invalid)?),
        None if params.sort_order.is_some() => return Err(AppError::invalid("sort_order needs sort_by")),
        None => None,
    };
    let listing = app.vectors.list(collection.as_str(), &ListQuery { filter, sort, offset, limit: per_page }).await?;
    Ok(Json(ImagePage {
        total_pages: listing.total.div_ceil(per_page as u64),
        items: listing.items,
        total: listing.total,
        page,
        per_page,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CollectionParam {
    /// Default: the selected collection.
    pub collection: Option<String>,
    /// Random only: a filter (README) as JSON text.
    pub filters: Option<String>,
}

/// One image's id and payload.
#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images", params(("id" = Uuid, Path), CollectionParam),
    responses((status = 200, body = ImageRecord), (status = 404, body = ErrorBody)))]
pub async fn get_image(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<CollectionParam>,
) -> AppResult<Json<ImageRecord>> {
    let collection = app.collection_or_active(params.collection.as_deref())?;
    let id = Uuid::parse_str(&id).map_err(|_| AppError::invalid(format!("{id:?} is not an image id (a UUID)")))?;
    let mut found = app.vectors.get(collection.as_str(), &[id], false).await?;
    found.pop().map(Json).ok_or_else(|| AppError::not_found(format!("image {id} not found in {collection:?}")))
}

#[derive(Serialize, ToSchema)]
pub struct RandomImage {
    pub image: RandomImageRef,
    /// The image's payload.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct RandomImageRef {
    pub id: Uuid,
    pub path: Option<String>,
    pub filename: Option<String>,
}

/// One image drawn at random: `{image, metadata}`.
#[utoipa::path(get, path = "/api/v1/random", tag = "images", params(CollectionParam),
    responses((status = 200, body = RandomImage), (status = 404, body = ErrorBody)))]
pub async fn random_image(State(app): State<AppState>, ApiQuery(params): ApiQuery<CollectionParam>) -> AppResult<Json<RandomImage>> {
    let collection = app.collection_or_active(params.collection.as_deref())?;
    let filter = FilterExpr::parse_str(params.filters.as_deref().unwrap_or(""))?;
    let mut picked = app.vectors.random(collection.as_str(), 1, filter.as_ref()).await?;
    let Some(record) = picked.pop() else {
        return Err(AppError::not_found(format!("collection {collection:?} has no images matching")));
    };
    let text = |k: &str| record.payload.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Json(RandomImage {
        image: RandomImageRef { id: record.id, path: text("path"), filename: text("filename") },
        metadata: record.payload,
    }))
}
