//! Watches: `POST /api/v1/watches` keeps a source in sync with a collection, `GET
//! /api/v1/watches` lists them with their last sync, `GET`/`DELETE /api/v1/watches/{id}`.
//! The runner that syncs them is `crate::watches`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use imgfleet_core::domain::WatchRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{AppError, AppResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

/// Shortest and longest rescan interval, in seconds.
pub const MIN_INTERVAL_SECS: u64 = 10;
pub const MAX_INTERVAL_SECS: u64 = 7 * 24 * 3600;
/// Default rescan interval (file-system notifications trigger a sync sooner where they work).
pub const DEFAULT_INTERVAL_SECS: u64 = 300;
/// Most watches a server keeps.
pub const MAX_WATCHES: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/watches", get(list_watches).post(create_watch))
        .route("/watches/{watch_id}", get(get_watch).delete(delete_watch))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWatch {
    /// A directory on the server, inside an ingest root (as for `POST /ingest`).
    pub directory_path: Option<String>,
    /// The same, or `s3://bucket/prefix` where the server allows buckets; give one of the two.
    pub source: Option<String>,
    /// Default: the selected collection.
    pub collection: Option<String>,
    /// Seconds between rescans, 10 to 604800; default 300.
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub interval_seconds: Option<u64>,
    /// Keep images left with no path (marked `orphaned`) instead of deleting them.
    #[serde(default)]
    pub keep_orphans: bool,
}

#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct WatchList {
    pub watches: Vec<WatchRecord>,
}

/// Keeps a source in sync with a collection: synced at once, again after every change the file
/// system reports (debounced), every `interval_seconds`, and after a restart. `409
/// watch_exists` when the source already has a watch into that collection.
#[utoipa::path(post, path = "/api/v1/watches", tag = "watches", request_body = CreateWatch,
    responses((status = 201, body = WatchRecord), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_watch(State(app): State<AppState>, ApiJson(body): ApiJson<CreateWatch>) -> AppResult<(StatusCode, Json<WatchRecord>)> {
    let requested = match (&body.directory_path, &body.source) {
        (Some(path), None) | (None, Some(path)) => path.clone(),
        _ => return Err(AppError::invalid("give one of directory_path and source")),
    };
    let interval = body.interval_seconds.unwrap_or(DEFAULT_INTERVAL_SECS);
    if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&interval) {
        return Err(AppError::invalid(format!("interval_seconds must be between {MIN_INTERVAL_SECS} and {MAX_INTERVAL_SECS}, got {interval}")));
    }
    if app.queue.is_none() {
        return Err(AppError::unavailable("this server runs without a pipeline and cannot sync"));
    }
    let collection = app.collection_or_active(body.collection.as_deref())?;
    let source = crate::routes::ingest::resolve_source(&app, &requested).await?;
    let existing = app.state.watches().await?;
    if let Some(same) = existing.iter().find(|w| w.source == source && w.collection == collection.as_str()) {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "watch_exists",
            format!("{source} is already watched into {collection} (watch {})", same.watch_id),
        ));
    }
    if existing.len() >= MAX_WATCHES {
        return Err(AppError::new(StatusCode::CONFLICT, "too_many_watches", format!("a server keeps at most {MAX_WATCHES} watches")));
    }
    crate::routes::ingest::ensure_collection(&app, collection.as_str()).await?;
    let record = crate::watches::new_record(source, collection.as_str().to_owned(), interval, body.keep_orphans);
    app.state.put_watch(&record).await?;
    tracing::info!(watch_id = %record.watch_id, source = %record.source, collection = %record.collection, "watch created");
    Ok((StatusCode::CREATED, Json(record)))
}

/// Every watch with its last sync: job, time, counts, and when it last changed the collection.
#[utoipa::path(get, path = "/api/v1/watches", tag = "watches", responses((status = 200, body = WatchList)))]
pub async fn list_watches(State(app): State<AppState>) -> AppResult<Json<WatchList>> {
    Ok(Json(WatchList { watches: app.state.watches().await? }))
}

async fn find(app: &AppState, watch_id: &str) -> AppResult<WatchRecord> {
    app.state
        .watches()
        .await?
        .into_iter()
        .find(|w| w.watch_id == watch_id)
        .ok_or_else(|| AppError::not_found(format!("watch {watch_id:?} not found")))
}

/// One watch.
#[utoipa::path(get, path = "/api/v1/watches/{watch_id}", tag = "watches", params(("watch_id" = String, Path)),
    responses((status = 200, body = WatchRecord), (status = 404, body = ErrorBody)))]
pub async fn get_watch(State(app): State<AppState>, ApiPath(watch_id): ApiPath<String>) -> AppResult<Json<WatchRecord>> {
    Ok(Json(find(&app, &watch_id).await?))
}

/// Stops watching (a sync under way finishes; the collection keeps what it has).
#[utoipa::path(delete, path = "/api/v1/watches/{watch_id}", tag = "watches", params(("watch_id" = String, Path)),
    responses((status = 200, body = WatchRecord), (status = 404, body = ErrorBody)))]
pub async fn delete_watch(State(app): State<AppState>, ApiPath(watch_id): ApiPath<String>) -> AppResult<Json<WatchRecord>> {
    let record = find(&app, &watch_id).await?;
    app.state.delete_watch(&watch_id).await?;
    tracing::info!(watch_id, "watch deleted");
    Ok(Json(record))
}
