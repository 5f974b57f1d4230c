//! `/api/v1/workers`: the live encoder workers, from their heartbeats (a fleet's GPU workers,
//! or `imgfleet serve`'s in-process encoder); `/api/v1/queues`: how much work waits in each
//! stream of the pipeline.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use imgfleet_core::names::Stream;
use imgfleet_core::workers::WorkerStatus;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{AppError, AppResult, ErrorBody};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/workers", get(list_workers)).route("/queues", get(queue_depths))
}

#[derive(Serialize, ToSchema)]
pub struct QueueList {
    /// The pipeline's streams in their order: `scan`, `files`, `prepared`, `encoded`.
    pub streams: Vec<StreamDepth>,
}

#[derive(Serialize, ToSchema)]
pub struct StreamDepth {
    pub stream: String,
    /// Messages waiting for a worker.
    pub pending: u64,
    /// Messages a worker holds and has not settled yet.
    pub in_flight: u64,
}

/// How much work waits in each stream of the pipeline (the queue's own count, read now).
#[utoipa::path(get, path = "/api/v1/queues", tag = "operations",
    responses((status = 200, body = QueueList), (status = 503, body = ErrorBody)))]
pub async fn queue_depths(State(app): State<AppState>) -> AppResult<Json<QueueList>> {
    let Some(queue) = app.queue.as_ref() else {
        return Err(AppError::unavailable("this server runs without a pipeline: it has no queues"));
    };
    let mut streams = Vec::new();
    for stream in Stream::ALL {
        let depth = queue.depth(stream).await.map_err(|e| AppError::unavailable(format!("reading the {} queue: {e}", stream.label())))?;
        streams.push(StreamDepth { stream: stream.label().to_owned(), pending: depth.pending, in_flight: depth.in_flight });
    }
    Ok(Json(QueueList { streams }))
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
