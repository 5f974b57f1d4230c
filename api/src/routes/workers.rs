//! `/api/v1/workers`: the live encoder workers, from their heartbeats (a fleet's GPU workers,
//! or `imgfleet serve`'s in-process encoder).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use imgfleet_core::workers::WorkerStatus;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/workers", get(list_workers))
}

#[derive(Serialize, ToSchema)]
pub struct WorkerList {
    /// Workers heard from within their last few heartbeats, by name.
    pub workers: Vec<WorkerStatus>,
    /// Sum of the batches they pull: what the encoders take at once.
    pub total_batch: usize,
    /// Sum of their images/s.
    pub images_per_second: f64,
}

/// The live encoder workers: device, models, safe CLIP/BLIP batches, the batch each pulls,
/// images/s and when it was last heard from. A worker that stops (or is killed) is gone from
/// the list within a few heartbeats.
#[utoipa::path(get, path = "/api/v1/workers", tag = "operations", responses((status = 200, body = WorkerList)))]
pub async fn list_workers(State(app): State<AppState>) -> Json<WorkerList> {
    let workers = app.workers.as_ref().map(|registry| registry.live()).unwrap_or_default();
    let total_batch = workers.iter().map(|w| w.batch).sum();
    let images_per_second = workers.iter().map(|w| w.images_per_second).sum();
    Json(WorkerList { workers, total_batch, images_per_second })
}
