//! The text the client commands print, as pure functions of what the server answered: counts,
//! durations, the `ingest` summary, the `status` page, the `jobs` table, search hit lines.
//!
//! A job is the server's own [`JobView`] (its `counts` an [`imgfleet_core::domain::JobCounts`]),
//! read from the JSON the server wrote from the same type.

use std::path::Path;

use imgfleet_api::routes::ingest::JobView;
use imgfleet_core::domain::{JobCounts, JobStatus};
use serde_json::Value;

/// A job status as the server spells it in its JSON (`queued`, `running`, …).
pub fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

/// `processed N · duplicates N · failed N`.
pub fn counts_text(counts: &JobCounts) -> String {
    format!("processed {} · duplicates {} · failed {}", counts.processed, counts.duplicates, counts.failed)
}

/// The progress bar's message: the counts, then the server's ETA once it has one.
pub fn bar_message(status: &JobView) -> String {
    let mut text = counts_text(&status.counts);
    if status.status == JobStatus::Queued {
        text.push_str(" · queued");
    } else if let Some(eta) = status.eta_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
        text.push_str(&format!(" · eta {}", duration_text(eta)));
    }
    text
}

/// The line `ingest` prints once the server accepted the job.
pub fn accepted_line(job_id: &str, dir: &Path, accepted: &Value) -> String {
    let mut line = format!("job {job_id} queued: {}", dir.display());
    if let Some(collection) = accepted.get("collection").and_then(Value::as_str) {
        line.push_str(&format!(" → collection {collection}"));
    }
    line
}

/// `1.5s`, `42s`, `3m07s`, `2h05m`.
pub fn duration_text(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    if seconds < 10.0 {
        return format!("{seconds:.1}s");
    }
    let whole = seconds.round() as u64;
    match whole {
        0..60 => format!("{whole}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60),
    }
}

fn parse_time(text: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text?).ok().map(|t| t.with_timezone(&chrono::Utc))
}

/// How long the job ran: the server's figure, else finished − started (or now − started while
/// it runs).
pub fn elapsed_seconds(status: &JobView, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
    if let Some(result) = &status.result {
        return Some(result.elapsed_seconds);
    }
    let started = parse_time(status.started_at.as_deref())?;
    let end = match parse_time(status.finished_at.as_deref()) {
        Some(finished) => finished,
        None if status.status.is_final() => return None,
        None => now,
    };
    Some(((end - started).num_milliseconds() as f64 / 1000.0).max(0.0))
}

/// Images processed per second: the server's figure, else processed / elapsed.
pub fn images_per_second(status: &JobView, elapsed: Option<f64>) -> Option<f64> {
    if let Some(result) = &status.result {
        return Some(result.images_per_second);
    }
    let elapsed = elapsed.filter(|&e| e > 0.0)?;
    Some(status.counts.processed as f64 / elapsed)
}

/// Progress in percent: the server's figure. It is always there (settled / discovered, or 100 for
/// a completed job with nothing found), and finite: JSON has no NaN to send.
pub fn progress_percent(status: &JobView) -> f64 {
    status.progress.clamp(0.0, 100.0)
}

/// Most failure lines a summary shows.
pub const MAX_FAILURE_LINES: usize = 20;

/// The log lines that record failed files (`failed: …`).
pub fn failure_lines(logs: &[String]) -> Vec<&str> {
    logs.iter().map(String::as_str).filter(|l| l.starts_with("failed:")).collect()
}

/// What `ingest` prints when the job has ended.
pub fn ingest_summary(status: &JobView) -> String {
    let mut out = String::new();
    let elapsed = elapsed_seconds(status, chrono::Utc::now());
    let rate = images_per_second(status, elapsed);
    out.push_str(&format!("job {} {}", status.job_id, status_name(status.status)));
    if let Some(elapsed) = elapsed {
        out.push_str(&format!(" in {}", duration_text(elapsed)));
    }
    if let Some(rate) = rate {
        out.push_str(&format!(" ({rate:.1} images/s)"));
    }
    out.push('\n');
    if !status.collection.is_empty() {
        out.push_str(&format!("  collection  {}\n", status.collection));
    }
    if !status.directory_path.is_empty() {
        out.push_str(&format!("  directory   {}\n", status.directory_path));
    }
    out.push_str(&format!("  discovered {} · {}\n", status.counts.discovered, counts_text(&status.counts)));
    if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
        out.push_str(&format!("  error: {error}\n"));
    }
    let failures = failure_lines(&status.logs);
    if !failures.is_empty() {
        out.push_str("failures:\n");
        for line in failures.iter().take(MAX_FAILURE_LINES) {
            out.push_str(&format!("  {line}\n"));
        }
        // The server keeps a bounded log: the count says how many failed in all.
        let total = failures.len().max(usize::try_from(status.counts.failed).unwrap_or(usize::MAX));
        let shown = failures.len().min(MAX_FAILURE_LINES);
        if total > shown {
            out.push_str(&format!("  … and {} more\n", total - shown));
        }
    }
    out
}

/// Most log lines `status` shows.
pub const MAX_LOG_LINES: usize = 20;

/// What `status` prints.
pub fn status_text(status: &JobView, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::new();
    let row = |out: &mut String, name: &str, value: &str| out.push_str(&format!("{name:<11} {value}\n"));
    row(&mut out, "job", &status.job_id);
    row(&mut out, "status", &format!("{} ({:.1}%)", status_name(status.status), progress_percent(status)));
    row(&mut out, "collection", &status.collection);
    row(&mut out, "directory", &status.directory_path);
    let scan = if status.scan_complete { "" } else { " (scan still running)" };
    row(&mut out, "counts", &format!("discovered {}{scan} · {}", status.counts.discovered, counts_text(&status.counts)));
    let or_dash = |t: Option<&str>| t.filter(|t| !t.is_empty()).unwrap_or("–").to_owned();
    row(&mut out, "created", &or_dash(Some(&status.created_at)));
    row(&mut out, "started", &or_dash(status.started_at.as_deref()));
    row(&mut out, "finished", &or_dash(status.finished_at.as_deref()));
    let elapsed = elapsed_seconds(status, now);
    if let Some(elapsed) = elapsed {
        let mut text = duration_text(elapsed);
        if let Some(rate) = images_per_second(status, Some(elapsed)) {
            text.push_str(&format!(" ({rate:.1} images/s)"));
        }
        row(&mut out, "elapsed", &text);
    }
    if !status.status.is_final()
        && let Some(eta) = status.eta_seconds.filter(|s| s.is_finite() && *s >= 0.0)
    {
        row(&mut out, "eta", &duration_text(eta));
    }
    if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
        row(&mut out, "error", error);
    }
    if !status.logs.is_empty() {
        let start = status.logs.len().saturating_sub(MAX_LOG_LINES);
        if start > 0 {
            out.push_str(&format!("log (last {MAX_LOG_LINES} of {}):\n", status.logs.len()));
        } else {
            out.push_str("log:\n");
        }
        for line in &status.logs[start..] {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// `2024-05-01T10:11:12.345Z` as `2024-05-01 10:11:12` (UTC); other text as it is.
fn short_time(text: Option<&str>) -> String {
    match parse_time(text) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => text.unwrap_or("–").to_owned(),
    }
}

/// What `jobs` prints: one aligned row per job.
pub fn jobs_table(jobs: &[JobView]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let header = ["JOB", "STATUS", "COLLECTION", "DISCOVERED", "PROCESSED", "DUPLICATES", "FAILED", "CREATED (UTC)", "DIRECTORY"];
    let rows: Vec<[String; 9]> = jobs
        .iter()
        .map(|j| {
            [
                j.job_id.clone(),
                status_name(j.status).to_owned(),
                j.collection.clone(),
                j.counts.discovered.to_string(),
                j.counts.processed.to_string(),
                j.counts.duplicates.to_string(),
                j.counts.failed.to_string(),
                short_time(Some(&j.created_at)),
                j.directory_path.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric = |i: usize| (3..=6).contains(&i);
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let last = i + 1 == cells.len();
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if numeric(i) {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if !last {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    out
}

/// One search hit: rank, score, path and the caption when there is one.
pub fn hit_line(rank: usize, hit: &Value) -> String {
    let score = hit.get("score").and_then(Value::as_f64).map_or_else(|| "?".to_owned(), |s| format!("{s:.4}"));
    let payload = hit.get("payload");
    let path = payload
        .and_then(|p| p.get("path"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| hit.get("id").and_then(Value::as_str).map(|id| format!("(id {id})")))
        .unwrap_or_else(|| "?".into());
    let mut line = format!("{rank:>3}. {score}  {path}");
    if let Some(caption) = payload.and_then(|p| p.get("caption")).and_then(Value::as_str).filter(|c| !c.is_empty()) {
        line.push_str(&format!("  \"{caption}\""));
    }
    line
}

/// What `search` prints.
pub fn hits_text(hits: &[Value]) -> String {
    if hits.is_empty() {
        return "no matches\n".into();
    }
    hits.iter().enumerate().map(|(i, hit)| hit_line(i + 1, hit) + "\n").collect()
}

/// `text` cut to `max_chars` characters (and `…`), on a character boundary.
pub fn clip(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use imgfleet_api::routes::ingest::JobResult;
    use imgfleet_core::domain::JobRecord;
    use serde_json::json;

    use super::*;

    fn status(value: Value) -> JobView {
        serde_json::from_value(value).unwrap()
    }

    fn finished_job(logs: Vec<String>, failed: u64) -> JobView {
        status(json!({
            "job_id": "j-1", "status": "completed", "collection": "images", "directory_path": "/photos",
            "progress": 100.0, "counts": {"discovered": 6 + failed, "processed": 5, "duplicates": 1, "failed": failed},
            "scan_complete": true, "logs": logs, "result": null, "error": null,
            "created_at": "2024-05-01T10:00:00Z", "started_at": "2024-05-01T10:00:01Z",
            "finished_at": "2024-05-01T10:00:11Z", "eta_seconds": null, "something_new": [1, 2]
        }))
    }

    #[test]
    fn status_reads_what_the_server_sends_and_ignores_extra_fields() {
        let mut job = JobRecord::new("j".into(), "images".into(), "/photos".into());
        let now = chrono::Utc::now();
        let queued = JobView::of(job.clone(), now);
        let mut sent = serde_json::to_value(&queued).unwrap();
        sent["something_new"] = json!([1, 2]);
        let read = status(sent);
        assert_eq!(read, queued);
        assert_eq!(read.counts, JobCounts::default());
        assert!(!read.status.is_final());
        assert_eq!(progress_percent(&read), 0.0);
        job.status = JobStatus::Running;
        job.counts = JobCounts { discovered: 4, processed: 1, ..JobCounts::default() };
        assert_eq!(progress_percent(&JobView::of(job, now)), 25.0);
        for s in [JobStatus::Queued, JobStatus::Running, JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled] {
            assert_eq!(serde_json::to_value(s).unwrap(), status_name(s), "the JSON name of {s:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_text(1.54), "1.5s");
        assert_eq!(duration_text(42.4), "42s");
        assert_eq!(duration_text(187.0), "3m07s");
        assert_eq!(duration_text(7500.0), "2h05m");
        assert_eq!(duration_text(f64::NAN), "?");
    }

    #[test]
    fn summary_shows_counts_time_rate_and_failures() {
        let logs = vec![
            "scan started".to_owned(),
            "failed: /photos/broken.jpg: truncated: jpeg data ends early".to_owned(),
            "duplicate: /photos/copy.png".to_owned(),
        ];
        let summary = ingest_summary(&finished_job(logs, 1));
        assert!(summary.starts_with("job j-1 completed in 10s (0.5 images/s)\n"), "{summary}");
        assert!(summary.contains("processed 5 · duplicates 1 · failed 1"), "{summary}");
        assert!(summary.contains("discovered 7"), "{summary}");
        assert!(summary.contains("failures:\n  failed: /photos/broken.jpg: truncated"), "{summary}");
        assert!(!summary.contains("scan started") && !summary.contains("more"), "{summary}");

        // The server's own figures win.
        let mut job = finished_job(vec![], 0);
        job.result = Some(JobResult {
            collection: "images".into(),
            processed: 5,
            duplicates: 1,
            failed: 0,
            elapsed_seconds: 2.0,
            images_per_second: 2.5,
        });
        assert!(ingest_summary(&job).starts_with("job j-1 completed in 2.0s (2.5 images/s)\n"));
    }

    #[test]
    fn summary_shows_at_most_twenty_failures() {
        let logs: Vec<String> = (0..25).map(|i| format!("failed: /photos/{i}.jpg: corrupt: bad")).collect();
        let summary = ingest_summary(&finished_job(logs.clone(), 25));
        assert_eq!(summary.matches("  failed: ").count(), MAX_FAILURE_LINES);
        assert!(summary.contains("  … and 5 more\n"), "{summary}");
        // A bounded server log: the count tells how many more there are.
        let summary = ingest_summary(&finished_job(logs, 40));
        assert!(summary.contains("  … and 20 more\n"), "{summary}");
    }

    #[test]
    fn failed_job_summary_has_its_error() {
        let mut job = finished_job(vec![], 0);
        job.status = JobStatus::Failed;
        job.error = Some("directory vanished".into());
        let summary = ingest_summary(&job);
        assert!(summary.starts_with("job j-1 failed"), "{summary}");
        assert!(summary.contains("error: directory vanished"), "{summary}");
    }

    #[test]
    fn status_text_of_a_running_job() {
        let job = status(json!({
            "job_id": "j-2", "status": "running", "collection": "images", "directory_path": "/photos",
            "progress": 40.0, "counts": {"discovered": 10, "processed": 3, "duplicates": 0, "failed": 1},
            "scan_complete": false, "logs": (0..30).map(|i| format!("line {i}")).collect::<Vec<_>>(),
            "created_at": "2024-05-01T10:00:00Z", "started_at": "2024-05-01T10:00:00Z", "finished_at": null,
            "eta_seconds": 15.0
        }));
        let now = parse_time(Some("2024-05-01T10:00:06Z")).unwrap();
        let text = status_text(&job, now);
        assert!(text.contains("status      running (40.0%)\n"), "{text}");
        assert!(text.contains("discovered 10 (scan still running) · processed 3 · duplicates 0 · failed 1"), "{text}");
        assert!(text.contains("finished    –\n"), "{text}");
        assert!(text.contains("elapsed     6.0s (0.5 images/s)\n"), "{text}");
        assert!(text.contains("eta         15s\n"), "{text}");
        assert!(text.contains("log (last 20 of 30):\n  line 10\n"), "{text}");
        assert!(text.ends_with("  line 29\n") && !text.contains("line 9\n"), "{text}");
    }

    #[test]
    fn jobs_table_aligns_columns() {
        let mut a = finished_job(vec![], 0);
        a.job_id = "first-job".into();
        let mut b = finished_job(vec![], 2);
        b.job_id = "j".into();
        b.status = JobStatus::Running;
        b.created_at = "not a time".into();
        let table = jobs_table(&[a, b]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("JOB        STATUS     COLLECTION  DISCOVERED"), "{table}");
        assert!(lines[1].starts_with("first-job  completed  images               6          5"), "{table}");
        assert!(lines[1].contains("2024-05-01 10:00:00  /photos"), "{table}");
        assert!(lines[2].contains("not a time"), "{table}");
        let status_col = lines[0].find("STATUS").unwrap();
        assert!(lines.iter().all(|l| l[status_col..].starts_with(['S', 'c', 'r'])), "{table}");
        assert_eq!(jobs_table(&[]), "no jobs\n");
    }

    #[test]
    fn hit_lines() {
        let hit = json!({"id": "u1", "score": 0.912345, "payload": {"path": "/p/dog.jpg", "caption": "a dog on a beach"}});
        assert_eq!(hit_line(1, &hit), r#"  1. 0.9123  /p/dog.jpg  "a dog on a beach""#);
        let bare = json!({"id": "u2", "score": 0.5, "payload": {"path": "/p/x.png", "caption": null}});
        assert_eq!(hit_line(12, &bare), " 12. 0.5000  /p/x.png");
        assert_eq!(hit_line(3, &json!({"id": "u3", "score": 1})), "  3. 1.0000  (id u3)");
        assert_eq!(hits_text(&[hit, bare]).lines().count(), 2);
        assert_eq!(hits_text(&[]), "no matches\n");
    }

    #[test]
    fn accepted_line_names_the_job() {
        let line = accepted_line("j-9", Path::new("/photos"), &json!({"job_id": "j-9", "collection": "images"}));
        assert_eq!(line, "job j-9 queued: /photos → collection images");
        assert_eq!(accepted_line("j-9", Path::new("/p"), &json!({})), "job j-9 queued: /p");
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        assert_eq!(clip("ééé", 2), "éé…");
        assert_eq!(clip("ab", 2), "ab");
    }
}
