//! Uploads: `POST /api/v1/ingest/upload` (multipart: images from anywhere, as a job like any
//! other) and `POST /api/v1/images/exists` (which contents a collection holds already, so a
//! client uploads only what is new).
//!
//! Each file part is streamed to a staging file (hashed on the way, never whole in memory,
//! cut at the per-file limit), sniffed from its first bytes, stored in the blob store under
//! `<collection>/<sha256>`, and queued as a file task whose path is `upload://<sha256>/<name>`. A part
//! that is empty, too large or not an image is a failed file of the job, not a failed request.

use std::collections::HashSet;

use axum::extract::{Multipart, State};
use axum::extract::multipart::Field;
use axum::http::StatusCode;
use axum::{Json, Router};
use axum::routing::post;
use imgfleet_core::domain::{ItemOutcome, JobRecord, JobStatus, point_id_for};
use imgfleet_core::messages::{self, FileTask};
use imgfleet_core::names::{Stream, file_task_id};
use imgfleet_core::source::{UPLOAD_SCHEME, blob_key, upload_path};
use imgfleet_imaging::sniff::sniff;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{AppError, AppResult, ErrorBody};
use crate::extract::ApiJson;
use crate::state::{AppState, Uploads};

/// The job's source, as jobs show it.
pub const UPLOAD_SOURCE: &str = "upload://";

/// Most file parts in one upload request.
pub const MAX_FILES_PER_UPLOAD: usize = 1_000;

/// Longest file name kept (bytes); longer ones are cut on a character boundary.
pub const MAX_NAME_BYTES: usize = 1024;

/// Most hashes asked about at once in `/images/exists`.
pub const MAX_EXISTS_HASHES: usize = 10_000;

/// Bytes sniffed for the format.
const SNIFF_BYTES: usize = 64;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ingest/upload", post(upload)).route("/images/exists", post(exists))
}

/// How one uploaded file was taken.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct UploadedFile {
    /// The part's file name as sent (cut to 1024 bytes).
    pub name: String,
    /// The file's path in the collection: `upload://<sha256>/<name>` (`#2`, `#3`, … appended
    /// when the same content comes twice under one name in one job); absent for a file that
    /// failed before it was read whole.
    pub path: Option<String>,
    pub bytes: u64,
    /// SHA-256 of the content, lowercase hex; absent when the file failed before it was read whole.
    pub sha256: Option<String>,
    /// `queued` (it goes through the pipeline: processed or duplicate) or `failed`.
    pub outcome: String,
    /// Why it failed.
    pub reason: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct UploadAccepted {
    pub job_id: String,
    pub status: JobStatus,
    pub collection: String,
    /// Every file part, in the order sent.
    pub files: Vec<UploadedFile>,
}

/// Staging file of one part, removed unless it was stored.
struct Staged {
    path: std::path::PathBuf,
    kept: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What reading one part gave.
enum Read {
    Whole { staged: Staged, sha256: String, bytes: u64 },
    Failed { bytes: u64, reason: String },
}

/// A file name fit to show and to key on: control characters dropped, cut to
/// [`MAX_NAME_BYTES`], never empty.
pub fn clean_name(name: &str) -> String {
    let mut clean: String = name.chars().filter(|c| !c.is_control()).collect();
    if clean.len() > MAX_NAME_BYTES {
        let mut cut = MAX_NAME_BYTES;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
    }
    if clean.trim().is_empty() { "unnamed".to_owned() } else { clean }
}

/// Streams one part to a staging file: hashed, cut at the limit, sniffed. The part is read to
/// its end whatever happens (the next part follows it).
async fn read_part(field: &mut Field<'_>, uploads: &Uploads) -> AppResult<Read> {
    let path = uploads.staging_dir.join(format!("{}.part", Uuid::new_v4().simple()));
    let file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| AppError::internal(format!("staging an upload in {}: {e}", uploads.staging_dir.display())))?;
    let staged = Staged { path, kept: false };
    let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut hasher = Sha256::new();
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF_BYTES);
    let mut bytes: u64 = 0;
    let mut failure: Option<String> = None;
    while let Some(chunk) = field.chunk().await.map_err(|e| AppError::invalid(format!("reading the upload: {e}")))? {
        bytes += chunk.len() as u64;
        if failure.is_some() {
            continue;
        }
        if bytes > uploads.max_file_bytes {
            failure = Some(format!("too-large: file is over the limit of {} bytes", uploads.max_file_bytes));
            continue;
        }
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            if head.len() == SNIFF_BYTES && sniff(&head).is_none() {
                failure = Some("not-an-image: content is not a known image format".into());
                continue;
            }
        }
        hasher.update(&chunk);
        writer.write_all(&chunk).await.map_err(|e| AppError::internal(format!("staging an upload: {e}")))?;
    }
    if let Some(reason) = failure {
        return Ok(Read::Failed { bytes, reason });
    }
    if bytes == 0 {
        return Ok(Read::Failed { bytes, reason: "zero-byte: the file is empty".into() });
    }
    if head.len() < SNIFF_BYTES && sniff(&head).is_none() {
        return Ok(Read::Failed { bytes, reason: "not-an-image: content is not a known image format".into() });
    }
    writer.flush().await.map_err(|e| AppError::internal(format!("staging an upload: {e}")))?;
    drop(writer);
    Ok(Read::Whole { staged, sha256: hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(), bytes })
}

/// The job of an upload, made at its first file (the collection is known by then).
struct UploadJob {
    job_id: String,
    collection: String,
    paths: HashSet<String>,
    files: Vec<UploadedFile>,
}

impl UploadJob {
    /// `upload://<sha256>/<name>`, made unique within the job.
    fn path_for(&mut self, sha256: &str, name: &str) -> String {
        let mut path = upload_path(sha256, name);
        let mut n = 1;
        while !self.paths.insert(path.clone()) {
            n += 1;
            path = upload_path(sha256, &format!("{name}#{n}"));
        }
        path
    }

    /// The item key of a part that failed before it was read whole: `upload://failed/<n>/<name>`.
    fn failed_item(&mut self, name: &str) -> String {
        let path = format!("{UPLOAD_SCHEME}failed/{}/{name}", self.files.len());
        self.paths.insert(path.clone());
        path
    }
}

/// Ingests uploaded images: multipart/form-data with an optional `collection` text field
/// *before* the files, and one or more file parts (any field name, with a file name). `202`
/// with the job and how each file was taken; follow the job with `GET /ingest/status/{job_id}`.
#[utoipa::path(post, path = "/api/v1/ingest/upload", tag = "ingest",
    request_body(content_type = "multipart/form-data", description = "`collection` (optional, first), then file parts"),
    responses((status = 202, body = UploadAccepted), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn upload(State(app): State<AppState>, mut multipart: Multipart) -> AppResult<(StatusCode, Json<UploadAccepted>)> {
    let (Some(queue), Some(uploads)) = (app.queue.clone(), app.uploads.clone()) else {
        return Err(AppError::unavailable("this server takes no uploads (it has no pipeline or no blob store; see --blob-store)"));
    };
    let mut collection: Option<String> = None;
    let mut job: Option<UploadJob> = None;
    let outcome = async {
        while let Some(mut field) = multipart.next_field().await.map_err(|e| AppError::invalid(format!("reading the upload: {e}")))? {
            let Some(name) = field.file_name().map(clean_name) else {
                match field.name() {
                    Some("collection") if job.is_none() => {
                        let text = field.text().await.map_err(|e| AppError::invalid(format!("reading the collection field: {e}")))?;
                        collection = Some(text.trim().to_owned());
                        continue;
                    }
                    Some("collection") => return Err(AppError::invalid("send the collection field before the files")),
                    other => return Err(AppError::invalid(format!("unexpected field {:?}: send `collection` and file parts (with a file name)", other.unwrap_or("")))),
                }
            };
            if job.as_ref().is_some_and(|j| j.files.len() >= MAX_FILES_PER_UPLOAD) {
                return Err(AppError::new(StatusCode::UNPROCESSABLE_ENTITY, "too_many_files", format!("at most {MAX_FILES_PER_UPLOAD} files per upload; send the rest in another")));
            }
            if job.is_none() {
                job = Some(start_job(&app, collection.as_deref()).await?);
            }
            let job = job.as_mut().expect("made above");
            let read = read_part(&mut field, &uploads).await?;
            let file = match read {
                Read::Failed { bytes, reason } => {
                    let item = job.failed_item(&name);
                    fail_file(&app, &job.job_id, &item, &reason).await?;
                    UploadedFile { name, path: None, bytes, sha256: None, outcome: "failed".into(), reason: Some(reason) }
                }
                Read::Whole { mut staged, sha256, bytes } => {
                    let path = job.path_for(&sha256, &name);
                    let key = blob_key(&job.collection, &sha256);
                    uploads.blobs.put_file(&key, &staged.path).await.map_err(|e| AppError::unavailable(format!("storing an upload: {e}")))?;
                    staged.kept = true;
                    app.state.record_discovered(&job.job_id, &path).await?;
                    let task = FileTask::new(job.job_id.clone(), job.collection.clone(), path.clone());
                    queue
                        .publish(Stream::Files, &file_task_id(&job.job_id, &path), messages::encode(&task))
                        .await
                        .map_err(|e| AppError::unavailable(format!("queueing an upload: {e}")))?;
                    UploadedFile { name, path: Some(path), bytes, sha256: Some(sha256), outcome: "queued".into(), reason: None }
                }
            };
            job.files.push(file);
        }
        Ok::<(), AppError>(())
    }
    .await;
    let Some(job) = job else {
        outcome?;
        return Err(AppError::invalid("the upload holds no file part (send files as multipart/form-data parts with a file name)"));
    };
    // Whatever happened, the files taken so far make the job; it can complete now.
    let summary = format!(
        "upload {}: {} files taken, {} failed on arrival",
        if outcome.is_ok() { "complete" } else { "interrupted" },
        job.files.len(),
        job.files.iter().filter(|f| f.outcome == "failed").count()
    );
    app.state.append_log(&job.job_id, &summary).await?;
    app.state.mark_scan_complete(&job.job_id).await?;
    imgfleet_core::job_status::complete_if_done(app.state.as_ref(), &job.job_id).await?;
    if let Err(mut e) = outcome {
        e.message = format!("{} (job {} keeps the {} files taken before)", e.message, job.job_id, job.files.len());
        return Err(e);
    }
    tracing::info!(job_id = %job.job_id, collection = %job.collection, files = job.files.len(), "upload queued");
    Ok((StatusCode::ACCEPTED, Json(UploadAccepted { job_id: job.job_id, status: JobStatus::Running, collection: job.collection, files: job.files })))
}

/// Ends the abandoned uploads of `app`: an upload job whose request died (the client went away,
/// the process was killed) is marked as having all its files once it is older than `limit`
/// (an upload request never lasts longer than the server's request timeout), so it completes
/// with the files taken before. Runs until `stop`.
pub async fn finish_abandoned(app: AppState, limit: std::time::Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if let Err(e) = finish_abandoned_once(&app, limit).await {
            tracing::debug!(error = %e.message, "looking for abandoned uploads failed; next round");
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn finish_abandoned_once(app: &AppState, limit: std::time::Duration) -> AppResult<()> {
    let now = chrono::Utc::now();
    for job in app.state.active_jobs().await? {
        if job.directory_path != UPLOAD_SOURCE || job.scan_complete {
            continue;
        }
        let created = chrono::DateTime::parse_from_rfc3339(&job.created_at).map(|t| t.with_timezone(&chrono::Utc)).unwrap_or(now);
        if (now - created).to_std().unwrap_or_default() < limit {
            continue;
        }
        app.state.append_log(&job.job_id, "upload interrupted: its request ended before the last file; the files taken before are kept").await?;
        app.state.mark_scan_complete(&job.job_id).await?;
        imgfleet_core::job_status::complete_if_done(app.state.as_ref(), &job.job_id).await?;
        tracing::info!(job_id = %job.job_id, "abandoned upload finished with the files it had");
    }
    Ok(())
}

async fn start_job(app: &AppState, collection: Option<&str>) -> AppResult<UploadJob> {
    let collection = app.collection_or_active(collection.filter(|c| !c.is_empty()))?;
    crate::routes::ingest::ensure_collection(app, collection.as_str()).await?;
    let job_id = Uuid::new_v4().to_string();
    let job = JobRecord::new(job_id.clone(), collection.as_str().to_owned(), UPLOAD_SOURCE.to_owned());
    app.state.create_job(&job).await?;
    app.state.set_job_status(&job_id, JobStatus::Running, None).await?;
    Ok(UploadJob { job_id, collection: collection.as_str().to_owned(), paths: HashSet::new(), files: Vec::new() })
}

async fn fail_file(app: &AppState, job_id: &str, path: &str, reason: &str) -> AppResult<()> {
    if app.state.record_outcome(job_id, path, &ItemOutcome::Failed { reason: reason.to_owned() }).await? {
        imgfleet_core::metrics::PIPELINE.images.with_label_values(&["upload", "failed"]).inc();
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExistsRequest {
    /// SHA-256 hashes (64 hex digits, any case), at most 10000.
    pub sha256: Vec<String>,
    /// Default: the selected collection.
    pub collection: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct ExistsResponse {
    pub collection: String,
    /// The hashes asked about whose content the collection holds, lowercase, in the order asked.
    pub existing: Vec<String>,
    /// The others: upload these.
    pub missing: Vec<String>,
}

/// Which contents a collection holds already (by SHA-256 of the file), so a client uploads
/// only the others.
#[utoipa::path(post, path = "/api/v1/images/exists", tag = "images", request_body = ExistsRequest,
    responses((status = 200, body = ExistsResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn exists(State(app): State<AppState>, ApiJson(body): ApiJson<ExistsRequest>) -> AppResult<Json<ExistsResponse>> {
    let collection = app.collection_or_active(body.collection.as_deref())?;
    if body.sha256.len() > MAX_EXISTS_HASHES {
        return Err(AppError::invalid(format!("at most {MAX_EXISTS_HASHES} hashes per request, got {}", body.sha256.len())));
    }
    let mut hashes = Vec::with_capacity(body.sha256.len());
    for hash in &body.sha256 {
        let lower = hash.to_ascii_lowercase();
        if lower.len() != 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AppError::invalid(format!("{hash:?} is not a SHA-256 (64 hex digits)")));
        }
        hashes.push(lower);
    }
    let ids: Vec<Uuid> = hashes.iter().map(|h| point_id_for(h)).collect();
    let mut found = HashSet::new();
    for chunk in ids.chunks(1000) {
        // A collection not made yet holds nothing (an upload makes it).
        match app.vectors.get(collection.as_str(), chunk, false).await {
            Ok(records) => found.extend(records.into_iter().map(|record| record.id)),
            Err(imgfleet_core::ports::VectorError::CollectionNotFound(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let (existing, missing): (Vec<_>, Vec<_>) = hashes.into_iter().partition(|h| found.contains(&point_id_for(h)));
    Ok(Json(ExistsResponse { collection: collection.as_str().to_owned(), existing, missing }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("a/b.jpg"), "a/b.jpg");
        assert_eq!(clean_name("a\nb\u{7}.jpg"), "ab.jpg");
        assert_eq!(clean_name(""), "unnamed");
        assert_eq!(clean_name(&"é".repeat(MAX_NAME_BYTES)).len(), MAX_NAME_BYTES);
    }

    #[test]
    fn repeated_names_get_their_own_paths() {
        let mut job = UploadJob { job_id: "j".into(), collection: "c".into(), paths: HashSet::new(), files: Vec::new() };
        assert_eq!(job.path_for("ab", "a.jpg"), "upload://ab/a.jpg");
        assert_eq!(job.path_for("ab", "a.jpg"), "upload://ab/a.jpg#2");
        assert_eq!(job.path_for("ab", "a.jpg"), "upload://ab/a.jpg#3");
        assert_eq!(job.path_for("cd", "a.jpg"), "upload://cd/a.jpg");
        assert_ne!(job.failed_item("a.jpg"), job.failed_item("b.jpg"));
    }
}
