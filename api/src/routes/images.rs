//! Gallery views: `GET /api/v1/images` (filtered, sorted pages), `GET /api/v1/random`, one
//! image's metadata, original file and thumbnail.

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
        .route("/images/{id}/file", get(image_file))
        .route("/images/{id}/thumbnail", get(image_thumbnail))
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

/// Largest thumbnail side accepted.
pub const MAX_THUMBNAIL_SIDE: u32 = 1024;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailParams {
    /// Longest side in pixels, 16 to 1024; default 256.
    pub size: Option<u32>,
    /// Default: the selected collection.
    pub collection: Option<String>,
}

/// The stored image's first path that still exists inside an ingest root.
async fn original_path(app: &AppState, collection: Option<&str>, id: &str) -> AppResult<(std::path::PathBuf, ImageRecord)> {
    let collection = app.collection_or_active(collection)?;
    let id = Uuid::parse_str(id).map_err(|_| AppError::invalid(format!("{id:?} is not an image id (a UUID)")))?;
    let record = app
        .vectors
        .get(collection.as_str(), &[id], false)
        .await?
        .pop()
        .ok_or_else(|| AppError::not_found(format!("image {id} not found in {collection:?}")))?;
    let mut candidates: Vec<String> = Vec::new();
    if let Some(path) = record.payload.get("path").and_then(|v| v.as_str()) {
        candidates.push(path.to_owned());
    }
    if let Some(paths) = record.payload.get("paths").and_then(|v| v.as_array()) {
        for path in paths.iter().filter_map(|p| p.as_str()) {
            if !candidates.iter().any(|c| c == path) {
                candidates.push(path.to_owned());
            }
        }
    }
    let mut outside = None;
    for candidate in &candidates {
        let path = std::path::Path::new(candidate);
        if !path.exists() {
            continue;
        }
        match app.inside_ingest_roots(path) {
            Some(canonical) => return Ok((canonical, record)),
            None => outside = Some(candidate.clone()),
        }
    }
    Err(match outside {
        Some(path) => AppError::new(
            axum::http::StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!("the original of image {id} ({path}) is outside the ingest roots and is not served"),
        ),
        None => AppError::not_found(format!("the original file of image {id} is gone (looked for {})", candidates.join(", "))),
    })
}

fn content_type(format: Option<&str>) -> &'static str {
    match format {
        Some("jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("tiff") => "image/tiff",
        _ => "application/octet-stream",
    }
}

/// The original file's bytes, with its content type; served only from inside the ingest roots.
#[utoipa::path(get, path = "/api/v1/images/{id}/file", tag = "images", params(("id" = Uuid, Path), CollectionParam),
    responses((status = 200, content_type = "image/*", body = Vec<u8>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn image_file(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<CollectionParam>,
) -> AppResult<axum::response::Response> {
    use axum::response::IntoResponse;
    if params.filters.is_some() {
        return Err(AppError::invalid("filters does not apply to an image's file"));
    }
    let (path, record) = original_path(&app, params.collection.as_deref(), &id).await?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| AppError::not_found(format!("cannot read the original {}: {e}", path.display())))?;
    let kind = content_type(record.payload.get("format").and_then(|v| v.as_str()));
    let filename = path.file_name().map(|f| f.to_string_lossy().replace('"', "")).unwrap_or_default();
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, kind.to_owned()),
            (axum::http::header::CONTENT_DISPOSITION, format!("inline; filename=\"{filename}\"")),
        ],
        bytes,
    )
        .into_response())
}

/// A JPEG thumbnail of the original (longest side `size`), rendered on demand.
#[utoipa::path(get, path = "/api/v1/images/{id}/thumbnail", tag = "images", params(("id" = Uuid, Path), ThumbnailParams),
    responses((status = 200, content_type = "image/jpeg", body = Vec<u8>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn image_thumbnail(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ThumbnailParams>,
) -> AppResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let size = params.size.unwrap_or(256);
    if !(16..=MAX_THUMBNAIL_SIDE).contains(&size) {
        return Err(AppError::invalid(format!("size must be between 16 and {MAX_THUMBNAIL_SIDE}, got {size}")));
    }
    let Some(thumbnailer) = app.thumbnailer.clone() else {
        return Err(AppError::unavailable("this server renders no thumbnails"));
    };
    let (path, _) = original_path(&app, params.collection.as_deref(), &id).await?;
    let shown = path.display().to_string();
    let jpeg = tokio::task::spawn_blocking(move || thumbnailer.render(&path, size))
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(|e| AppError::invalid(format!("cannot make a thumbnail of {shown}: {e}")))?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "image/jpeg"),
            (axum::http::header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        jpeg,
    )
        .into_response())
}
