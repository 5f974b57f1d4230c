//! Opening an image's original file to serve it (or a thumbnail of it), safely.
//!
//! Blocking code, run on the blocking pool. A candidate path is opened first (non-blocking, so
//! a FIFO put at the path cannot hang the thread) and everything after is checked on the open
//! file itself: that it is a regular file, where it really is (`/proc/self/fd`, so a symlink
//! swapped in after any earlier check cannot lead outside the ingest roots), and that it is
//! still the stored image (its size, and its mtime or else its content hash).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What the stored payload says the original is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOriginal {
    /// Every path seen with this content, the first one first.
    pub paths: Vec<String>,
    /// File size in bytes.
    pub bytes: u64,
    /// The first path's modification time, RFC 3339 with milliseconds (as ingest wrote it).
    pub mtime: Option<String>,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

impl StoredOriginal {
    /// From an image's payload; `None` when it lacks the fields needed to check a file.
    pub fn from_payload(payload: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        let text = |k: &str| payload.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Some(Self { paths: Self::paths_of(payload), bytes: payload.get("bytes")?.as_u64()?, mtime: text("mtime"), sha256: text("sha256")? })
    }

    /// Every path of a payload (`path` first, then `paths`), once each.
    pub fn paths_of(payload: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
        let mut paths: Vec<String> = payload.get("path").and_then(|v| v.as_str()).map(str::to_owned).into_iter().collect();
        for path in payload.get("paths").and_then(|v| v.as_array()).into_iter().flatten().filter_map(|p| p.as_str()) {
            if !paths.iter().any(|p| p == path) {
                paths.push(path.to_owned());
            }
        }
        paths
    }
}

/// A copy of the original, open and checked.
#[derive(Debug)]
pub struct OpenOriginal {
    pub file: File,
    /// Where the open file really is (symlinks resolved).
    pub real_path: PathBuf,
    /// Its size: what is served, no more.
    pub len: u64,
}

/// Why no copy can be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginalError {
    /// Every path is gone.
    #[error("no file is left at {0}")]
    Gone(String),
    /// Copies exist but none is the stored image any more (or none is a regular file).
    #[error("{0}")]
    Changed(String),
    /// The only copies left lie outside the ingest roots.
    #[error("{0} lies outside the ingest roots")]
    Outside(String),
    /// Reading failed (permissions, I/O).
    #[error("{0}")]
    Unreadable(String),
}

/// How one candidate path was refused.
enum Refused {
    Gone,
    Changed(String),
    Outside(PathBuf),
    Unreadable(String),
}

/// Opens without following the open into a blocking wait (FIFO, device), not as a
/// controlling terminal, not inherited by children.
fn open_nonblocking(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)
}

/// Where the open file `file` really is.
fn real_path(file: &File) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// `time` as ingest stores an mtime: RFC 3339, milliseconds, UTC.
fn rfc3339_millis(time: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// SHA-256 of the rest of `file`, reading at most `limit` bytes (more is a mismatch anyway).
fn sha256_of(file: &mut File, limit: u64) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut taken = file.take(limit + 1);
    loop {
        let n = taken.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn check_candidate(candidate: &str, first: bool, stored: &StoredOriginal, roots: &[PathBuf]) -> Result<OpenOriginal, Refused> {
    let file = match open_nonblocking(Path::new(candidate)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Refused::Gone),
        Err(e) => return Err(Refused::Unreadable(format!("{candidate} cannot be opened: {e}"))),
    };
    let meta = file.metadata().map_err(|e| Refused::Unreadable(format!("{candidate}: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(Refused::Changed(format!("{candidate} is no longer a regular file")));
    }
    let real = real_path(&file).map_err(|e| Refused::Unreadable(format!("{candidate}: cannot tell where the open file is: {e}")))?;
    if !roots.iter().any(|root| real.starts_with(root)) {
        return Err(Refused::Outside(real));
    }
    if meta.len() != stored.bytes {
        return Err(Refused::Changed(format!("{candidate} is {} bytes now, the stored image {}", meta.len(), stored.bytes)));
    }
    let same_mtime = first && stored.mtime.is_some() && meta.modified().ok().map(rfc3339_millis) == stored.mtime;
    if !same_mtime {
        // Another copy (whose mtime was never stored), or a file touched since: only its
        // content can say whether it is still the image.
        let mut file = file;
        let sha256 = sha256_of(&mut file, stored.bytes).map_err(|e| Refused::Unreadable(format!("{candidate}: {e}")))?;
        if sha256 != stored.sha256 {
            return Err(Refused::Changed(format!("{candidate} has changed since it was ingested (its content differs)")));
        }
        let file = open_nonblocking(&real).map_err(|e| Refused::Unreadable(format!("{candidate}: {e}")))?;
        return reopened(file, &real, stored, roots, candidate);
    }
    Ok(OpenOriginal { file, real_path: real, len: stored.bytes })
}

/// After hashing, the file is opened again from its real path, and checked again: the same
/// size and still inside the roots (a swap between the two opens is refused, not served).
fn reopened(file: File, real: &Path, stored: &StoredOriginal, roots: &[PathBuf], candidate: &str) -> Result<OpenOriginal, Refused> {
    let meta = file.metadata().map_err(|e| Refused::Unreadable(format!("{candidate}: {e}")))?;
    let again = real_path(&file).map_err(|e| Refused::Unreadable(format!("{candidate}: {e}")))?;
    if !meta.file_type().is_file() || meta.len() != stored.bytes || again != real {
        return Err(Refused::Changed(format!("{candidate} changed while it was checked")));
    }
    if !roots.iter().any(|root| again.starts_with(root)) {
        return Err(Refused::Outside(again));
    }
    Ok(OpenOriginal { file, real_path: again, len: stored.bytes })
}

/// The first copy of `stored` that is a regular file inside `roots` and still the stored
/// image. The error says why none is: changed, outside the roots, unreadable, or gone.
pub fn open_original(stored: &StoredOriginal, roots: &[PathBuf]) -> Result<OpenOriginal, OriginalError> {
    let mut changed = Vec::new();
    let mut outside = Vec::new();
    let mut unreadable = Vec::new();
    for (i, candidate) in stored.paths.iter().enumerate() {
        match check_candidate(candidate, i == 0, stored, roots) {
            Ok(open) => return Ok(open),
            Err(Refused::Gone) => {}
            Err(Refused::Changed(why)) => changed.push(why),
            Err(Refused::Outside(real)) => outside.push(if real.as_os_str() == candidate.as_str() {
                candidate.clone()
            } else {
                format!("{candidate} (really {})", real.display())
            }),
            Err(Refused::Unreadable(why)) => unreadable.push(why),
        }
    }
    if !changed.is_empty() {
        return Err(OriginalError::Changed(changed.join("; ")));
    }
    if !unreadable.is_empty() {
        return Err(OriginalError::Unreadable(unreadable.join("; ")));
    }
    if !outside.is_empty() {
        return Err(OriginalError::Outside(outside.join(", ")));
    }
    Err(OriginalError::Gone(stored.paths.join(", ")))
}

/// Reads the whole of an opened original (its checked size, at most `max_bytes`).
pub fn read_all(open: OpenOriginal, max_bytes: u64) -> io::Result<Vec<u8>> {
    if open.len > max_bytes {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the file is {} bytes; at most {max_bytes} are read", open.len)));
    }
    let mut bytes = Vec::with_capacity(open.len as usize);
    open.file.take(open.len).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != open.len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was read"));
    }
    Ok(bytes)
}

/// A `Content-Disposition` value for any file name: an ASCII `filename` (anything else
/// replaced by `_`) and the exact name as RFC 5987 `filename*`.
pub fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("inline; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_a_valid_header_for_any_name() {
        for name in ["photo.jpg", "a\"b.jpg", "tab\there.png", "nl\nx.gif", "ünïcode 写真.jpg", "back\\slash", "\u{7f}del", ""] {
            let value = content_disposition(name);
            assert!(axum::http::HeaderValue::from_str(&value).is_ok(), "{name:?}: {value}");
            assert!(value.is_ascii() && !value.chars().any(|c| c.is_ascii_control()), "{value}");
        }
        assert_eq!(content_disposition("a b.jpg"), "inline; filename=\"a b.jpg\"; filename*=UTF-8''a%20b.jpg");
        assert_eq!(content_disposition("é.png"), "inline; filename=\"_.png\"; filename*=UTF-8''%C3%A9.png");
    }

    #[test]
    fn stored_original_reads_the_payload() {
        let payload = serde_json::json!({
            "path": "/p/a.jpg", "paths": ["/p/a.jpg", "/p/b.jpg"], "bytes": 10, "mtime": "2026-01-01T00:00:00.000Z", "sha256": "ab"
        });
        let stored = StoredOriginal::from_payload(payload.as_object().unwrap()).unwrap();
        assert_eq!(stored.paths, ["/p/a.jpg", "/p/b.jpg"]);
        assert_eq!((stored.bytes, stored.mtime.as_deref()), (10, Some("2026-01-01T00:00:00.000Z")));
        assert!(StoredOriginal::from_payload(serde_json::json!({"path": "/x"}).as_object().unwrap()).is_none());
    }
}
