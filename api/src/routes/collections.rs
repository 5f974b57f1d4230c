//! `/api/v1/collections`: list, create, inspect, delete, select; dedup cache clearing.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use imgfleet_core::domain::{CollectionInfo, CollectionName, CollectionSpec, Distance, MAX_VECTOR_SIZE};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{AppError, AppResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/collections", get(list_collections).post(create_collection))
        .route("/collections/select", post(select_collection))
        .route("/collections/selected", get(selected_collection))
        .route("/collections/cache/clear", post(clear_cache))
        .route("/collections/{name}", get(get_collection).delete(delete_collection))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    /// 1–64 of letters, digits, `_`, `-`; starts with a letter or digit.
    pub collection_name: String,
    /// Default: the CLIP model's embedding size (512 for ViT-B/32).
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub vector_size: Option<usize>,
    /// `Cosine` (default), `Dot`, `Euclid` or `Manhattan`; case-insensitive.
    pub distance: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectCollection {
    pub collection_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct CollectionMessage {
    /// `created`, `deleted` or `selected`.
    pub message: String,
    pub collection_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct CacheCleared {
    /// `cache cleared`
    pub message: String,
    /// Dedup entries forgotten: those images will be processed again if ingested.
    pub entries_removed: u64,
}

fn parse_name(name: &str) -> AppResult<CollectionName> {
    CollectionName::parse(name).map_err(AppError::invalid)
}

/// Collection names, sorted.
#[utoipa::path(get, path = "/api/v1/collections", tag = "collections",
    responses((status = 200, body = Vec<String>)))]
pub async fn list_collections(State(app): State<AppState>) -> AppResult<Json<Vec<String>>> {
    let names = app.vectors.list_collections().await?.into_iter().map(|c| c.name).collect();
    Ok(Json(names))
}

/// Creates a collection (payload indexes for every filter field included).
#[utoipa::path(post, path = "/api/v1/collections", tag = "collections", request_body = CreateCollection,
    responses((status = 201, body = CollectionMessage), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_collection(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<CreateCollection>,
) -> AppResult<(StatusCode, Json<CollectionMessage>)> {
    let name = parse_name(&body.collection_name)?;
    let vector_size = body.vector_size.unwrap_or(app.default_vector_size);
    if vector_size == 0 || vector_size > MAX_VECTOR_SIZE {
        return Err(AppError::invalid(format!("vector_size must be between 1 and {MAX_VECTOR_SIZE}, got {vector_size}")));
    }
    let distance = match body.distance.as_deref() {
        None => Distance::Cosine,
        Some(d) => d.parse().map_err(AppError::invalid)?,
    };
    app.vectors.create_collection(&CollectionSpec { name: name.clone(), vector_size, distance }).await?;
    tracing::info!(collection = %name, vector_size, %distance, "collection created");
    let body = CollectionMessage { message: "created".into(), collection_name: name.to_string() };
    Ok((StatusCode::CREATED, Json(body)))
}

/// Size, distance and number of points of one collection.
#[utoipa::path(get, path = "/api/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "collection name")),
    responses((status = 200, body = CollectionInfo), (status = 404, body = ErrorBody)))]
pub async fn get_collection(State(app): State<AppState>, ApiPath(name): ApiPath<String>) -> AppResult<Json<CollectionInfo>> {
    let name = parse_name(&name)?;
    Ok(Json(app.vectors.collection(name.as_str()).await?))
}

/// Deletes a collection and every point in it. Jobs still writing to it end at once as failed
/// (their remaining files are skipped); ingesting into a collection made again under the name
/// stores every image anew. Deleting the selected collection selects the default one again.
#[utoipa::path(delete, path = "/api/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "collection name")),
    responses((status = 200, body = CollectionMessage), (status = 404, body = ErrorBody)))]
pub async fn delete_collection(State(app): State<AppState>, Path(name): Path<String>) -> AppResult<Json<CollectionMessage>> {
    let name = parse_name(&name)?;
    app.vectors.collection(name.as_str()).await?;
    let reason = format!("collection {name} was deleted while the job ran");
    for job in app.state.active_jobs().await?.into_iter().filter(|job| job.collection == name.as_str()) {
        imgfleet_core::job_status::fail_job(app.state.as_ref(), &job.job_id, &reason).await?;
    }
    app.vectors.delete_collection(name.as_str()).await?;
    // After the points are gone: a done mark written meanwhile is removed, and a later one for a
    // claim taken before is refused (the clear moves the collection's dedup generation on).
    app.state.clear_dedup(Some(name.as_str())).await?;
    if let Some(uploads) = &app.uploads {
        // Uploaded originals are kept per collection: none is shown by another one.
        match uploads.blobs.delete_prefix(&format!("{name}/")).await {
            Ok(removed) => tracing::info!(collection = %name, removed, "uploaded originals removed"),
            Err(e) => tracing::warn!(collection = %name, error = %e, "removing the collection's uploaded originals failed; they stay in the blob store"),
        }
    }
    if app.active_collection() == name {
        app.select_collection(app.default_collection.clone()).await?;
    }
    tracing::info!(collection = %name, "collection deleted");
    Ok(Json(CollectionMessage { message: "deleted".into(), collection_name: name.to_string() }))
}

/// The collection used when a request names none.
#[utoipa::path(get, path = "/api/v1/collections/selected", tag = "collections", responses((status = 200, body = CollectionMessage)))]
pub async fn selected_collection(State(app): State<AppState>) -> Json<CollectionMessage> {
    Json(CollectionMessage { message: "selected".into(), collection_name: app.active_collection().to_string() })
}

/// Makes a collection the one used when a request names none. Survives restarts.
#[utoipa::path(post, path = "/api/v1/collections/select", tag = "collections", request_body = SelectCollection,
    responses((status = 200, body = CollectionMessage), (status = 404, body = ErrorBody)))]
pub async fn select_collection(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<SelectCollection>,
) -> AppResult<Json<CollectionMessage>> {
    let name = parse_name(&body.collection_name)?;
    app.vectors.collection(name.as_str()).await?;
    app.select_collection(name.clone()).await?;
    Ok(Json(CollectionMessage { message: "selected".into(), collection_name: name.to_string() }))
}

/// Forgets every dedup entry: files already ingested will be processed again (their points
/// are replaced, not duplicated, since point ids derive from content). Running jobs go on;
/// images they store from then on get no done mark until ingested again.
#[utoipa::path(post, path = "/api/v1/collections/cache/clear", tag = "collections",
    responses((status = 200, body = CacheCleared)))]
pub async fn clear_cache(State(app): State<AppState>) -> AppResult<Json<CacheCleared>> {
    let entries_removed = app.state.clear_dedup(None).await?;
    Ok(Json(CacheCleared { message: "cache cleared".into(), entries_removed }))
}
