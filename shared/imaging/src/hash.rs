//! Read a file once, hashing it (SHA-256) as the bytes arrive. The bytes are kept: the decoder
//! needs them next, and the file size limit bounds them.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::failure::{FailureKind, FileFailure};

/// Files larger than this are failed as too large unless configured otherwise (256 MiB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Read size; large enough that syscalls do not show in profiles, small enough to stay in cache.
const READ_CHUNK: usize = 256 * 1024;

/// A file read into memory with its content hash.
#[derive(Debug, Clone)]
pub struct ReadFile {
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`, lowercase hex.
    pub sha256: String,
    pub mtime: Option<SystemTime>,
}

/// Reads `path` (at most `max_bytes`) and hashes it. Fails with `vanished`, `unreadable`,
/// `zero-byte` or `too-large`.
pub fn read_and_hash(path: &Path, max_bytes: u64) -> Result<ReadFile, FileFailure> {
    // Non-blocking: a FIFO swapped in after the scan would otherwise block the open forever.
    let mut file: File = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_failure(&e))?;
    let meta = file.metadata().map_err(|e| io_failure(&e))?;
    if !meta.is_file() {
        return Err(FileFailure::new(FailureKind::Unreadable, "not a regular file"));
    }
    if meta.len() == 0 {
        return Err(FileFailure::new(FailureKind::Empty, "the file is empty"));
    }
    if meta.len() > max_bytes {
        return Err(FileFailure::new(
            FailureKind::TooLarge,
            format!("file is {} bytes; the limit is {max_bytes}", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; READ_CHUNK.min(meta.len() as usize + 1)];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failure(&e)),
        };
        // The file may grow while we read it; the limit holds for what we keep.
        if bytes.len() + n > max_bytes as usize {
            return Err(FileFailure::new(FailureKind::TooLarge, format!("file grew past the limit of {max_bytes} bytes")));
        }
        hasher.update(&chunk[..n]);
        bytes.extend_from_slice(&chunk[..n]);
    }
    if bytes.is_empty() {
        return Err(FileFailure::new(FailureKind::Empty, "the file is empty"));
    }
    Ok(ReadFile { bytes, sha256: to_hex(&hasher.finalize()), mtime: meta.modified().ok() })
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

fn to_hex(digest: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn io_failure(e: &io::Error) -> FileFailure {
    match e.kind() {
        io::ErrorKind::NotFound => FileFailure::new(FailureKind::Vanished, "the file no longer exists"),
        io::ErrorKind::PermissionDenied => FileFailure::new(FailureKind::Unreadable, format!("permission denied: {e}")),
        io::ErrorKind::IsADirectory => FileFailure::new(FailureKind::Unreadable, "not a regular file (a directory)"),
        _ => FileFailure::new(FailureKind::Unreadable, format!("read error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn io_errors_map_to_failure_kinds() {
        let kind = |k| io_failure(&io::Error::from(k)).kind;
        assert_eq!(kind(io::ErrorKind::NotFound), FailureKind::Vanished);
        assert_eq!(kind(io::ErrorKind::PermissionDenied), FailureKind::Unreadable);
        assert_eq!(kind(io::ErrorKind::IsADirectory), FailureKind::Unreadable);
        assert_eq!(kind(io::ErrorKind::Other), FailureKind::Unreadable);
    }
}
