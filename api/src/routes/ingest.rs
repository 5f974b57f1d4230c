//! Ingest jobs: `POST /api/v1/ingest/` starts one, `GET /api/v1/ingest/status/{job_id}`
//! follows it, `GET /api/v1/jobs` lists them, `DELETE /api/v1/ingest/{job_id}` cancels one.

use std::path::{Component, Path as FsPath};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use imgfleet_core::domain::{CollectionSpec, Distance, JobCounts, JobRecord, JobStatus};
use imgfleet_core::ingest_roots::IngestRoots;
use imgfleet_core::messages::{self, ScanRequest};
use imgfleet_core::metrics::PIPELINE;
use imgfleet_core::names::Stream;
use imgfleet_core::ports::VectorError;
use imgfleet_core::source::{ObjectPrefix, S3_SCHEME, Source};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::admission::FS_CALL_TIMEOUT;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// Most jobs `GET /jobs` returns.
pub const MAX_JOBS_LISTED: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ingest", post(start_ingest))
        .route("/ingest/", post(start_ingest))
        .route("/ingest/status/{job_id}", get(job_status))
        .route("/ingest/{job_id}", delete(cancel_job))
        .route("/jobs", get(list_jobs))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    /// Absolute path of a directory on the server, inside one of its ingest roots
    /// (`--ingest-root`), walked recursively; or a bucket prefix `s3://bucket/prefix` inside one
    /// of its `s3://` ingest roots, listed (every key starting with the prefix).
    pub directory_path: String,
    /// Collection to fill; default: the selected one. Created (with the model's vector size)
    /// if it does not exist.
    pub collection: Option<String>,
    /// Ingesting a source again brings the collection in line with it (see the README, Sync):
    /// an image left with no path is deleted, or with `true` kept and marked `orphaned`.
    #[serde(default)]
    pub keep_orphans: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct IngestAccepted {
    pub job_id: String,
    pub status: JobStatus,
    pub collection: String,
    /// The directory as resolved (canonical), or the bucket prefix as listed.
    pub directory_path: String,
}

/// Where a job stands: the seed's `{job_id, status, progress, logs, result}` and more.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct JobView {
    pub job_id: String,
    /// queued, running, completed, failed or cancelled.
    pub status: JobStatus,
    pub collection: String,
    pub directory_path: String,
    /// Percent (0–100) of the files found so far that are settled (processed, duplicate or
    /// failed). While the scan runs, more files may still be found.
    pub progress: f64,
    pub counts: JobCounts,
    /// The scan has found every file: `counts.discovered` is final.
    pub scan_complete: bool,
    /// Newest last, bounded (the newest 200 kept): every failure with its path and reason,
    /// duplicates, skipped entries, the scan summary.
    pub logs: Vec<String>,
    /// Set once the job has ended.
    pub result: Option<JobResult>,
    /// Why the job failed.
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Seconds left at the rate so far, once the scan is complete and something is settled.
    pub eta_seconds: Option<f64>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct JobResult {
    pub collection: String,
    pub processed: u64,
    pub duplicates: u64,
    pub failed: u64,
    pub elapsed_seconds: f64,
    /// Settled files per second over the job's run.
    pub images_per_second: f64,
}

fn parse_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    text.and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
}

impl JobView {
    pub fn of(job: JobRecord, now: DateTime<Utc>) -> Self {
        let settled = job.counts.settled();
        let progress = if job.counts.discovered == 0 {
            if job.status == JobStatus::Completed { 100.0 } else { 0.0 }
        } else {
            (settled as f64 * 100.0 / job.counts.discovered as f64).min(100.0)
        };
        let started = parse_time(job.started_at.as_deref());
        let finished = parse_time(job.finished_at.as_deref());
        let elapsed = started.map(|s| (finished.unwrap_or(now) - s).num_milliseconds().max(0) as f64 / 1000.0);
        let eta_seconds = match (job.status, elapsed) {
            // From the files found so far: `scan_complete` comes only after the sync sweep at
            // the very end, so waiting for it would mean no ETA at all; while the walk still
            // finds files the estimate grows with them.
            (JobStatus::Running, Some(elapsed)) if settled > 0 && elapsed > 0.0 && settled < job.counts.discovered => {
                let rate = settled as f64 / elapsed;
                Some((job.counts.discovered.saturating_sub(settled)) as f64 / rate)
            }
            _ => None,
        };
        let result = (job.status.is_final()).then(|| {
            let elapsed_seconds = elapsed.unwrap_or(0.0);
            JobResult {
                collection: job.collection.clone(),
                processed: job.counts.processed,
                duplicates: job.counts.duplicates,
                failed: job.counts.failed,
                elapsed_seconds,
                images_per_second: if elapsed_seconds > 0.0 { settled as f64 / elapsed_seconds } else { 0.0 },
            }
        });
        Self {
            job_id: job.job_id,
            status: job.status,
            collection: job.collection,
            directory_path: job.directory_path,
            progress,
            counts: job.counts,
            scan_complete: job.scan_complete,
            logs: job.logs,
            result,
            error: job.error,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            eta_seconds,
        }
    }
}

/// Checks an ingest path and resolves it: absolute, no `..`, existing, a directory, inside an
/// ingest root (`roots`, canonical) after every symlink is resolved. Blocking.
pub fn resolve_ingest_path(roots: &[std::path::PathBuf], requested: &str) -> AppResult<std::path::PathBuf> {
    if requested.trim().is_empty() {
        return Err(AppError::invalid("directory_path must not be empty"));
    }
    let path = FsPath::new(requested);
    if !path.is_absolute() {
        return Err(AppError::invalid(format!(
            "directory_path must be absolute (the server resolves no relative paths), got {requested:?}"
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(AppError::invalid(format!("directory_path must not contain `..`, got {requested:?}")));
    }
    if roots.is_empty() {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            "this server has no ingest root; start it with --ingest-root DIR",
        ));
    }
    let canonical = match path.canonicalize() {
        Ok(canonical) => canonical,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(AppError::new(StatusCode::FORBIDDEN, "path_not_allowed", format!("{requested} cannot be read by the server: {e}")));
        }
        // Missing, a file on the way, a name too long, a NUL byte: no such directory exists.
        Err(e) => {
            return Err(AppError::new(StatusCode::NOT_FOUND, "path_not_found", format!("{requested} does not exist on the server ({e})")));
        }
    };
    let shown = || roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
    if !roots.iter().any(|root| canonical.starts_with(root)) {
        let how = if canonical.as_path() != path { format!(" (it resolves to {} through a symlink)", canonical.display()) } else { String::new() };
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!("{requested} is outside the ingest roots{how}; allowed: {}", shown()),
        ));
    }
    if !canonical.is_dir() {
        return Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_directory",
            format!("{requested} is a file; give the directory that holds the images"),
        ));
    }
    Ok(canonical)
}

/// Checks an `s3://bucket/prefix` ingest source: well formed, inside a bucket root. Returns the
/// prefix to list (the root's folder when the request names the root without its `/`).
pub fn resolve_bucket_source(roots: &IngestRoots, requested: &str) -> AppResult<ObjectPrefix> {
    let prefix = match Source::parse(requested.trim()) {
        Ok(Source::Bucket(prefix)) => prefix,
        Ok(Source::Directory(_)) => return Err(AppError::invalid(format!("{requested:?} is not a bucket prefix (s3://bucket/prefix)"))),
        Err(e) => return Err(AppError::invalid(format!("directory_path: {e}"))),
    };
    if roots.buckets.is_empty() {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!("{requested} is a bucket prefix, and this server has no bucket ingest root; start it with --ingest-root s3://bucket/prefix"),
        ));
    }
    roots.covering_bucket(&prefix).ok_or_else(|| {
        AppError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!("{requested} is outside the ingest roots; allowed buckets: {}", roots.shown_buckets()),
        )
    })
}

/// Starts ingesting a directory: `202 {job_id}`. Follow it with `GET /ingest/status/{job_id}`.
#[utoipa::path(post, path = "/api/v1/ingest/", tag = "ingest", request_body = IngestRequest,
    responses((status = 202, body = IngestAccepted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn start_ingest(State(app): State<AppState>, ApiJson(body): ApiJson<IngestRequest>) -> AppResult<(StatusCode, Json<IngestAccepted>)> {
    let collection = app.collection_or_active(body.collection.as_deref())?;
    let source = resolve_source(&app, &body.directory_path).await?;
    let job_id = queue_ingest(&app, collection.as_str(), &source, body.keep_orphans.unwrap_or(false)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(IngestAccepted { job_id, status: JobStatus::Queued, collection: collection.as_str().to_owned(), directory_path: source }),
    ))
}

/// The source a request names, checked against the ingest roots and resolved (a directory to
/// its canonical path).
pub(crate) async fn resolve_source(app: &AppState, requested: &str) -> AppResult<String> {
    if requested.trim_start().starts_with(S3_SCHEME) {
        return Ok(resolve_bucket_source(&app.bucket_roots, requested)?.to_string());
    }
    let (roots, requested) = (app.ingest_roots.clone(), requested.to_owned());
    let directory = app.fs.run("checking the ingest path", FS_CALL_TIMEOUT, move || resolve_ingest_path(&roots, &requested)).await??;
    Ok(directory.to_string_lossy().into_owned())
}

/// Records a job for the (resolved) `source` into `collection` (made if missing) and queues its
/// scan; returns the job id.
pub(crate) async fn queue_ingest(app: &AppState, collection: &str, source: &str, keep_orphans: bool) -> AppResult<String> {
    let Some(queue) = app.queue.clone() else {
        return Err(AppError::unavailable("this server runs without a pipeline and cannot ingest"));
    };
    ensure_collection(app, collection).await?;
    let job_id = Uuid::new_v4().to_string();
    let mut job = JobRecord::new(job_id.clone(), collection.to_owned(), source.to_owned());
    job.keep_orphans = keep_orphans;
    app.state.create_job(&job).await?;
    let mut request = ScanRequest::new(job_id.clone(), collection.to_owned(), source.to_owned());
    request.keep_orphans = keep_orphans;
    if let Err(e) = queue.publish(Stream::Scan, &job_id, messages::encode(&request)).await {
        let reason = format!("the scan request could not be queued: {e}");
        let _ = imgfleet_core::job_status::fail_job(app.state.as_ref(), &job_id, &reason).await;
        return Err(AppError::unavailable(reason));
    }
    tracing::info!(job_id, collection, source, "ingest job queued");
    Ok(job_id)
}

/// The collection exists, or is created with the encoder's vector size; an existing one must
/// fit the encoder's embeddings.
pub(crate) async fn ensure_collection(app: &AppState, collection: &str) -> AppResult<()> {
    let dim = app.encoder.as_ref().map(|e| e.capabilities().embedding_dim);
    match app.vectors.collection(collection).await {
        Ok(info) => match dim {
            Some(dim) if info.vector_size != dim => Err(crate::routes::search::vector_size_mismatch(
                collection,
                info.vector_size,
                dim,
                "the model's embeddings (ingest into another collection)",
            )),
            _ => Ok(()),
        },
        Err(VectorError::CollectionNotFound(_)) => {
            let name = imgfleet_core::domain::CollectionName::parse(collection).map_err(AppError::invalid)?;
            let spec = CollectionSpec { name, vector_size: dim.unwrap_or(app.default_vector_size), distance: Distance::Cosine };
            match app.vectors.create_collection(&spec).await {
                Ok(()) | Err(VectorError::CollectionExists(_)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A job's status, counts, progress, recent log lines, ETA and result.
#[utoipa::path(get, path = "/api/v1/ingest/status/{job_id}", tag = "ingest", params(("job_id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn job_status(State(app): State<AppState>, ApiPath(job_id): ApiPath<String>) -> AppResult<Json<JobView>> {
    let job = app.state.job(&job_id).await?.ok_or_else(|| AppError::not_found(format!("job {job_id:?} not found")))?;
    Ok(Json(JobView::of(job, Utc::now())))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobsParams {
    /// Newest first; 1 to 1000, default 50.
    #[serde(default, deserialize_with = "crate::extract::integer_in_query")]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// Jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "ingest", params(JobsParams),
    responses((status = 200, body = JobList), (status = 422, body = ErrorBody)))]
pub async fn list_jobs(State(app): State<AppState>, ApiQuery(params): ApiQuery<JobsParams>) -> AppResult<Json<JobList>> {
    let limit = crate::routes::search::check_limit(params.limit, 50, MAX_JOBS_LISTED, "limit")?;
    let now = Utc::now();
    let jobs = app.state.list_jobs(limit).await?.into_iter().map(|job| JobView::of(job, now)).collect();
    Ok(Json(JobList { jobs }))
}

/// Cancels a queued or running job: the scan stops, and files and images not yet stored are
/// skipped, their dedup claims given back (ingesting the folder again takes them at once). A
/// job that has ended — even a moment before — answers 409 `job_finished`.
#[utoipa::path(delete, path = "/api/v1/ingest/{job_id}", tag = "ingest", params(("job_id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_job(State(app): State<AppState>, Path(job_id): Path<String>) -> AppResult<Json<JobView>> {
    let before = app.state.job(&job_id).await?.ok_or_else(|| AppError::not_found(format!("job {job_id:?} not found")))?;
    if before.status.is_final() {
        return Err(job_finished(&job_id, before.status));
    }
    let job = app.state.set_job_status(&job_id, JobStatus::Cancelled, Some("cancelled by request".into())).await?;
    if job.status != JobStatus::Cancelled {
        // It ended (completed, failed) between the read and the cancel: the cancel did nothing.
        return Err(job_finished(&job_id, job.status));
    }
    PIPELINE.jobs_finished.with_label_values(&["cancelled"]).inc();
    tracing::info!(job_id, "job cancelled");
    Ok(Json(JobView::of(job, Utc::now())))
}

/// 409 `job_finished`: the job ended (as `status`) before it could be cancelled.
fn job_finished(job_id: &str, status: JobStatus) -> AppError {
    let status = serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    AppError::new(StatusCode::CONFLICT, "job_finished", format!("job {job_id} has already ended ({status})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: JobStatus, counts: JobCounts, scan_complete: bool) -> JobRecord {
        let mut job = JobRecord::new("j".into(), "c".into(), "/d".into());
        job.status = status;
        job.counts = counts;
        job.scan_complete = scan_complete;
        job.started_at = Some("2026-01-01T00:00:00.000Z".into());
        job
    }

    #[test]
    fn bucket_sources_must_lie_under_a_bucket_root() {
        let roots = IngestRoots::split(&["/photos".into(), "s3://bkt/in".into()]).unwrap();
        assert_eq!(resolve_bucket_source(&roots, "s3://bkt/in/2024").unwrap().to_string(), "s3://bkt/in/2024");
        assert_eq!(resolve_bucket_source(&roots, "s3://bkt/in").unwrap().to_string(), "s3://bkt/in/");
        for (requested, status) in [("s3://bkt/inbox", 403), ("s3://other/in/x", 403), ("s3://bkt", 403), ("s3://BKT/in", 422), ("s3://bkt/in/../x", 422)] {
            let error = resolve_bucket_source(&roots, requested).unwrap_err();
            assert_eq!(error.status.as_u16(), status, "{requested}: {}", error.message);
        }
        let no_buckets = IngestRoots::split(&["/photos".into()]).unwrap();
        assert!(resolve_bucket_source(&no_buckets, "s3://bkt/in/x").unwrap_err().message.contains("no bucket ingest root"));
    }

    #[test]
    fn progress_eta_and_result() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:10Z").unwrap().with_timezone(&Utc);
        let counts = JobCounts { discovered: 100, processed: 20, duplicates: 3, failed: 2, ..JobCounts::default() };
        let view = JobView::of(record(JobStatus::Running, counts, true), now);
        assert_eq!(view.progress, 25.0);
        // 25 settled in 10 s: 75 left take 30 s.
        assert_eq!(view.eta_seconds, Some(30.0));
        assert!(view.result.is_none());
        let scanning = JobView::of(record(JobStatus::Running, counts, false), now);
        assert_eq!(scanning.eta_seconds, Some(30.0), "from the files found so far");
        let all_settled = JobCounts { discovered: 25, processed: 20, duplicates: 3, failed: 2, ..JobCounts::default() };
        assert_eq!(JobView::of(record(JobStatus::Running, all_settled, false), now).eta_seconds, None, "only the sweep is left");

        let mut done = record(JobStatus::Completed, JobCounts { discovered: 10, processed: 8, duplicates: 1, failed: 1, ..JobCounts::default() }, true);
        done.finished_at = Some("2026-01-01T00:00:05.000Z".into());
        let view = JobView::of(done, now);
        assert_eq!(view.progress, 100.0);
        let result = view.result.unwrap();
        assert_eq!((result.processed, result.duplicates, result.failed), (8, 1, 1));
        assert_eq!(result.elapsed_seconds, 5.0);
        assert_eq!(result.images_per_second, 2.0);
        let empty = JobView::of(record(JobStatus::Completed, JobCounts::default(), true), now);
        assert_eq!(empty.progress, 100.0);
    }
}
