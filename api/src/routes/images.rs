//! Gallery views: `GET /api/v1/images` (filtered, sorted pages), `GET /api/v1/random`, one
//! image's metadata, original file and thumbnail.

use std::io::Read as _;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use imgfleet_core::domain::{ImageRecord, ListQuery};
use imgfleet_core::filter::{FilterExpr, SortOrder, SortSpec};
use imgfleet_core::ports::ObjectError;
use imgfleet_core::source::{Location, blob_key, location};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::admission::FS_CALL_TIMEOUT;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::originals::{OriginalError, StoredOriginal, content_disposition, open_original, read_all};
use crate::routes::search::check_limit;
use crate::state::AppState;

/// Largest `per_page`.
pub const MAX_PER_PAGE: usize = 500;
/// Listing stops here (`page × per_page`): deeper listing costs grow with the offset, so narrow
/// the listing with filters instead. A page past it is empty, with `depth_limited`.
pub const MAX_LIST_DEPTH: usize = 100_000;
/// Largest `page` (a page of one image at the depth limit).
pub const MAX_PAGE: usize = MAX_LIST_DEPTH;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/images", get(list_images))
        .route("/images/{id}", get(get_image).delete(delete_image))
        .route("/images/{id}/file", get(image_file))
        .route("/images/{id}/thumbnail", get(image_thumbnail))
        .route("/random", get(random_image))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1-based, up to 100000; default 1.
    #[serde(default, deserialize_with = "crate::extract::integer_in_query")]
    pub page: Option<usize>,
    /// 1 to 500; default 20.
    #[serde(default, deserialize_with = "crate::extract::integer_in_query")]
    pub per_page: Option<usize>,
    /// A filter (README) as JSON text.
    pub filters: Option<String>,
    /// A sortable field: width, height, bytes, mtime, taken_at, ingested_at. Default: id order.
    pub sort_by: Option<String>,
    /// `asc` (default) or `desc` (any case; `ascending`, `descending` too). Without `sort_by`
    /// the order is by id, ascending.
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
    /// The page lies past the first 100,000 images of this ordering, where listing stops: it is
    /// empty. Narrow the listing with filters to see further.
    pub depth_limited: bool,
}

/// One page of images; `total` counts every match.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(ListParams),
    responses((status = 200, body = ImagePage), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list_images(State(app): State<AppState>, ApiQuery(params): ApiQuery<ListParams>) -> AppResult<Json<ImagePage>> {
    let collection = app.collection_or_active(params.collection.as_deref())?;
    let page = check_limit(params.page, 1, MAX_PAGE, "page")?;
    let per_page = check_limit(params.per_page, 20, MAX_PER_PAGE, "per_page")?;
    let filter = FilterExpr::parse_str(params.filters.as_deref().unwrap_or(""))?;
    let sort = match params.sort_by.as_deref() {
        Some(field) => Some(SortSpec::parse(field, params.sort_order.as_deref()).map_err(AppError::invalid)?),
        None => {
            // The id order has one direction, but a misspelt sort_order is still an error.
            SortOrder::parse(params.sort_order.as_deref()).map_err(AppError::invalid)?;
            None
        }
    };
    let offset = (page - 1) * per_page;
    let depth_limited = offset + per_page > MAX_LIST_DEPTH;
    // Past the depth limit only the total is counted (a one-item query).
    let query = ListQuery { filter, sort, offset: if depth_limited { 0 } else { offset }, limit: if depth_limited { 1 } else { per_page } };
    let listing = app.vectors.list(collection.as_str(), &query).await?;
    Ok(Json(ImagePage {
        total_pages: listing.total.div_ceil(per_page as u64),
        items: if depth_limited { Vec::new() } else { listing.items },
        total: listing.total,
        page,
        per_page,
        depth_limited,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CollectionParam {
    /// Default: the selected collection.
    pub collection: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RandomParams {
    /// Default: the selected collection.
    pub collection: Option<String>,
    /// A filter (README) as JSON text: the image is drawn among those matching.
    pub filters: Option<String>,
}

/// One image's id and payload.
#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images", params(("id" = Uuid, Path), CollectionParam),
    responses((status = 200, body = ImageRecord), (status = 404, body = ErrorBody)))]
pub async fn get_image(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<CollectionParam>,
) -> AppResult<Json<ImageRecord>> {
    let collection = app.collection_or_active(params.collection.as_deref())?;
    let id = parse_id(&id)?;
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
#[utoipa::path(get, path = "/api/v1/random", tag = "images", params(RandomParams),
    responses((status = 200, body = RandomImage), (status = 404, body = ErrorBody)))]
pub async fn random_image(State(app): State<AppState>, ApiQuery(params): ApiQuery<RandomParams>) -> AppResult<Json<RandomImage>> {
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
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailParams {
    /// Longest side in pixels, 16 to 1024; default 256.
    #[serde(default, deserialize_with = "crate::extract::integer_in_query")]
    pub size: Option<u32>,
    /// Default: the selected collection.
    pub collection: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct DeletedImage {
    pub id: Uuid,
    pub collection: String,
    pub sha256: Option<String>,
    /// The paths the image had (its source-index entries are gone with it).
    pub paths: Vec<String>,
    /// Its uploaded original was removed from the blob store.
    pub blob_removed: bool,
}

/// Deletes an image: its point, its dedup entry (the content is processed again when next
/// seen), the source-index entries of its paths and, if it was uploaded, its original.
#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images", params(("id" = Uuid, Path), CollectionParam),
    responses((status = 200, body = DeletedImage), (status = 404, body = ErrorBody)))]
pub async fn delete_image(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<CollectionParam>,
) -> AppResult<Json<DeletedImage>> {
    let collection = app.collection_or_active(params.collection.as_deref())?;
    let id = parse_id(&id)?;
    let record = stored_record(&app, collection.as_str(), id).await?;
    let paths = StoredOriginal::paths_of(&record.payload);
    let sha256 = record.payload.get("sha256").and_then(|v| v.as_str()).map(str::to_owned);
    // The point first: whatever fails after it heals itself (a done entry whose point is gone
    // is forgotten when its content is next seen).
    app.vectors.delete_points(collection.as_str(), &[id]).await?;
    if let Some(sha) = &sha256 {
        app.state.remove_dedup(collection.as_str(), sha).await?;
    }
    app.state.remove_source_entries(None, collection.as_str(), &paths).await?;
    let mut blob_removed = false;
    if let (Some(uploads), Some(sha)) = (&app.uploads, &sha256) {
        if paths.iter().any(|p| matches!(location(p), Location::Upload { .. })) {
            match uploads.blobs.delete(&blob_key(collection.as_str(), sha)).await {
                Ok(()) => blob_removed = true,
                Err(e) => tracing::warn!(%id, error = %e, "removing a deleted image's uploaded original failed; it stays in the blob store"),
            }
        }
    }
    tracing::info!(%id, collection = %collection, paths = paths.len(), "image deleted");
    Ok(Json(DeletedImage { id, collection: collection.as_str().to_owned(), sha256, paths, blob_removed }))
}

/// The original of `stored` when it is not a local file: uploaded (read from the blob store)
/// or ingested from a bucket (read from the object storage, only inside the bucket roots, and
/// only if it is still the stored content). `None` when one of its paths is a local file (the
/// caller opens that); an error when no copy can be read.
async fn remote_original(app: &AppState, collection: &str, stored: &StoredOriginal, max_bytes: u64) -> AppResult<Option<Vec<u8>>> {
    if stored.paths.iter().any(|p| matches!(location(p), Location::File(_))) {
        return Ok(None);
    }
    let too_large = |bytes: u64, limit: u64| AppError::invalid(format!("the original is {bytes} bytes, over the {limit} this server reads"));
    let mut looked = Vec::new();
    for path in &stored.paths {
        let read = match location(path) {
            Location::File(_) => continue,
            Location::Upload { .. } => {
                let Some(uploads) = &app.uploads else { continue };
                uploads.blobs.get(&blob_key(collection, &stored.sha256), max_bytes).await
            }
            Location::Object { bucket, key } => {
                let Some(objects) = &app.objects else { continue };
                let inside = imgfleet_core::source::ObjectPrefix { bucket: bucket.to_owned(), prefix: key.to_owned() };
                if app.bucket_roots.covering_bucket(&inside).is_none() {
                    continue;
                }
                objects.read(bucket, key, max_bytes).await.map(|object| object.bytes)
            }
        };
        looked.push(path.as_str());
        match read {
            Ok(bytes) if bytes.len() as u64 == stored.bytes && imgfleet_imaging::hash::sha256_hex(&bytes) == stored.sha256 => return Ok(Some(bytes)),
            Ok(_) | Err(ObjectError::NotFound(_)) => {}
            Err(ObjectError::TooLarge { bytes, limit, .. }) => return Err(too_large(bytes, limit)),
            Err(e) => return Err(AppError::unavailable(format!("reading the original {path}: {e}"))),
        }
    }
    Err(if looked.is_empty() {
        AppError::new(StatusCode::FORBIDDEN, "path_not_allowed", format!("the original ({}) is not served by this server", stored.paths.join(", ")))
    } else {
        AppError::not_found(format!("the original is gone or changed (looked for {})", looked.join(", ")))
    })
}

/// The point `id` of `collection`, or 404.
async fn stored_record(app: &AppState, collection: &str, id: Uuid) -> AppResult<ImageRecord> {
    app.vectors
        .get(collection, &[id], false)
        .await?
        .pop()
        .ok_or_else(|| AppError::not_found(format!("image {id} not found in {collection:?}")))
}

/// The stored image `id` and what a file must be to be served as its original.
async fn stored_original(app: &AppState, collection: Option<&str>, id: &str) -> AppResult<(Uuid, StoredOriginal, ImageRecord)> {
    let collection = app.collection_or_active(collection)?;
    let id = parse_id(id)?;
    let record = stored_record(app, collection.as_str(), id).await?;
    let stored = StoredOriginal::from_payload(&record.payload)
        .ok_or_else(|| AppError::new(StatusCode::NOT_FOUND, "original_changed", format!("image {id} has no stored path, size and hash to check a file against")))?;
    Ok((id, stored, record))
}

fn parse_id(id: &str) -> AppResult<Uuid> {
    crate::routes::search::parse_image_id(id, "image id")
}

fn original_error(id: Uuid, error: OriginalError) -> AppError {
    match error {
        OriginalError::Gone(paths) => AppError::not_found(format!("the original file of image {id} is gone (looked for {paths})")),
        OriginalError::Changed(why) => AppError::new(
            StatusCode::NOT_FOUND,
            "original_changed",
            format!("no file is image {id} any more: {why}"),
        ),
        OriginalError::Unreadable(why) => {
            AppError::new(StatusCode::NOT_FOUND, "original_unreadable", format!("the original of image {id} cannot be read: {why}"))
        }
        OriginalError::Outside(paths) => AppError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!("the original of image {id} ({paths}) is outside the ingest roots and is not served"),
        ),
    }
}

/// Opening and checking a copy: metadata calls, and a hash of a copy whose mtime was not stored.
fn open_timeout(bytes: u64) -> Duration {
    FS_CALL_TIMEOUT + Duration::from_secs(bytes / (50 * 1024 * 1024))
}

/// Bytes read from an original per blocking call while it is streamed.
const STREAM_CHUNK: usize = 256 * 1024;

/// The open file's first `len` bytes, read a chunk at a time on the blocking pool; a file that
/// ends early (it shrank while served) ends the stream with an error.
fn stream_file(app: AppState, file: std::fs::File, len: u64) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::try_unfold((app, Some(file), len), |(app, file, remaining)| async move {
        let Some(mut file) = file.filter(|_| remaining > 0) else { return Ok(None) };
        let want = remaining.min(STREAM_CHUNK as u64) as usize;
        let (file, chunk) = app
            .fs
            .run("reading the original", FS_CALL_TIMEOUT, move || {
                let mut chunk = vec![0u8; want];
                let read = file.read(&mut chunk).map(|n| {
                    chunk.truncate(n);
                    chunk
                });
                (file, read)
            })
            .await
            .map_err(|e| std::io::Error::other(e.message))?;
        let chunk = chunk?;
        if chunk.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the original shrank while it was served"));
        }
        let remaining = remaining - chunk.len() as u64;
        Ok(Some((Bytes::from(chunk), (app, Some(file), remaining))))
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

/// The original file's bytes, with its content type; served only from inside the ingest
/// roots, only a regular file, and only while it is still the stored image (else another copy
/// with the same content, else 404 `original_changed`).
#[utoipa::path(get, path = "/api/v1/images/{id}/file", tag = "images", params(("id" = Uuid, Path), CollectionParam),
    responses((status = 200, content_type = "image/*", body = Vec<u8>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn image_file(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<CollectionParam>,
) -> AppResult<Response> {
    let (id, stored, record) = stored_original(&app, params.collection.as_deref(), &id).await?;
    let kind = content_type(record.payload.get("format").and_then(|v| v.as_str()));
    let collection = app.collection_or_active(params.collection.as_deref())?;
    if let Some(bytes) = remote_original(&app, collection.as_str(), &stored, stored.bytes).await? {
        let name = record.payload.get("filename").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        return Ok((
            [
                (header::CONTENT_TYPE, kind.to_owned()),
                (header::CONTENT_DISPOSITION, content_disposition(&name)),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            ],
            bytes,
        )
            .into_response());
    }
    let roots = app.ingest_roots.clone();
    let timeout = open_timeout(stored.bytes);
    let open = app
        .fs
        .run("opening the original", timeout, move || open_original(&stored, &roots))
        .await?
        .map_err(|e| original_error(id, e))?;
    let name = open.real_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let len = open.len;
    let body = Body::from_stream(stream_file(app.clone(), open.file, len));
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, content_disposition(&name)),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        body,
    )
        .into_response())
}

/// A JPEG thumbnail of the original (longest side `size`), rendered on demand from a copy
/// that is still the stored image; at most one per core at once (429 when too many wait).
#[utoipa::path(get, path = "/api/v1/images/{id}/thumbnail", tag = "images", params(("id" = Uuid, Path), ThumbnailParams),
    responses((status = 200, content_type = "image/jpeg", body = Vec<u8>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn image_thumbnail(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<ThumbnailParams>,
    request: axum::http::HeaderMap,
) -> AppResult<Response> {
    let size = params.size.unwrap_or(256);
    if !(16..=MAX_THUMBNAIL_SIDE).contains(&size) {
        return Err(AppError::invalid(format!("size must be between 16 and {MAX_THUMBNAIL_SIDE}, got {size}")));
    }
    let Some(thumbnailer) = app.thumbnailer.clone() else {
        return Err(AppError::unavailable("this server renders no thumbnails"));
    };
    let (id, stored, _) = stored_original(&app, params.collection.as_deref(), &id).await?;
    // A thumbnail depends on the content, its size and the renderer: a browser (or proxy) that
    // holds this one revalidates without anything being read or rendered.
    let etag = format!("\"t{}-{}-{size}\"", env!("CARGO_PKG_VERSION"), &stored.sha256[..stored.sha256.len().min(32)]);
    let cache = [(header::ETAG, etag.clone()), (header::CACHE_CONTROL, "private, max-age=3600".to_owned())];
    if crate::ui::etag_matches(&request, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    let collection = app.collection_or_active(params.collection.as_deref())?;
    let _slot = app.thumbnail_slots.enter().await?;
    let roots = app.ingest_roots.clone();
    let max_bytes = thumbnailer.max_file_bytes();
    let (path, bytes) = match remote_original(&app, collection.as_str(), &stored, max_bytes).await? {
        Some(bytes) => (stored.paths[0].clone(), bytes),
        None => {
            let timeout = open_timeout(stored.bytes) + open_timeout(stored.bytes);
            app.fs
                .run("reading the original", timeout, move || {
                    let open = open_original(&stored, &roots)?;
                    let path = open.real_path.display().to_string();
                    let bytes = read_all(open, max_bytes).map_err(|e| OriginalError::Unreadable(format!("{path}: {e}")))?;
                    Ok::<_, OriginalError>((path, bytes))
                })
                .await?
                .map_err(|e| original_error(id, e))?
        }
    };
    let jpeg = tokio::task::spawn_blocking(move || thumbnailer.render(&bytes, size))
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(|e| AppError::invalid(format!("cannot make a thumbnail of {path}: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], cache, jpeg).into_response())
}
