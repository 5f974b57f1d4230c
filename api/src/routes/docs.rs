//! The OpenAPI document, generated from the handlers' own types, and a page that renders it.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

use crate::routes::{collections, duplicates, health, images, ingest, search, upload, watches, workers};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "imgfleet", description = "Searchable, de-duplicated, captioned image collections."),
    paths(
        collections::list_collections, collections::create_collection, collections::get_collection,
        collections::delete_collection, collections::select_collection, collections::selected_collection, collections::clear_cache,
        search::search,
        images::list_images, images::get_image, images::delete_image, images::random_image, images::image_file, images::image_thumbnail,
        upload::exists,
        ingest::start_ingest, upload::upload, ingest::job_status, ingest::list_jobs, ingest::cancel_job,
        duplicates::find_duplicates,
        workers::list_workers, workers::queue_depths,
        watches::create_watch, watches::list_watches, watches::get_watch, watches::delete_watch,
        health::healthz, health::readyz, health::metrics,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&ApiKeyScheme),
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(|State(app): State<AppState>| async move { Json(crate::contract::document(!app.api_keys.is_empty())) }))
        .route("/docs", get(|| async { crate::ui::docs_page() }))
}
