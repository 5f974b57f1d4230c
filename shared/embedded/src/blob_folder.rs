//! The embedded blob store: uploaded originals as files in a folder (by default
//! `<data dir>/blobs`), one file per key (`<collection>/<sha256>`).
//!
//! A blob is written by renaming a finished file into place (the upload is staged in the same
//! folder, on the same file system, and synced first), so a reader never sees half a blob and a
//! crash leaves at most a staged file, which the next start removes.

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use imgfleet_core::ports::{BlobStore, ObjectError};

/// Folder of staged uploads inside the blob folder; never a collection name (those start with a
/// letter or digit).
const STAGING: &str = ".staging";

pub struct FolderBlobStore {
    root: PathBuf,
}

impl FolderBlobStore {
    /// Opens (creating) the folder and clears what a crash left staged.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        let staging = root.join(STAGING);
        match std::fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&staging)?;
        Ok(Self { root })
    }

    /// Where uploads are staged before [`BlobStore::put_file`]: on the blob folder's file
    /// system, so storing is a rename.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING)
    }

    /// The file of `key`; keys are `<collection>/<sha256>`, checked so that no key leads out
    /// of the folder.
    fn file(&self, key: &str) -> Result<PathBuf, ObjectError> {
        let valid = !key.is_empty()
            && key.split('/').all(|part| !part.is_empty() && part != "." && part != ".." && !part.starts_with('.'))
            && !key.contains('\0');
        if !valid {
            return Err(ObjectError::Internal(format!("invalid blob key {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

fn io_error(what: &str, e: io::Error) -> ObjectError {
    match e.kind() {
        io::ErrorKind::NotFound => ObjectError::NotFound(what.to_owned()),
        io::ErrorKind::PermissionDenied => ObjectError::Denied(format!("{what}: {e}")),
        _ => ObjectError::Internal(format!("{what}: {e}")),
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, ObjectError> + Send + 'static) -> Result<T, ObjectError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ObjectError::Internal(format!("blob store thread failed: {e}")))?
}

#[async_trait]
impl BlobStore for FolderBlobStore {
    async fn put_file(&self, key: &str, file: &Path) -> Result<(), ObjectError> {
        let target = self.file(key)?;
        let source = file.to_path_buf();
        let what = format!("blob {key}");
        blocking(move || {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_error(&what, e))?;
            }
            std::fs::File::open(&source).and_then(|f| f.sync_all()).map_err(|e| io_error(&what, e))?;
            match std::fs::rename(&source, &target) {
                Ok(()) => Ok(()),
                // Another file system (a staging dir elsewhere): copy, then remove.
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    let staged = target.with_extension("part");
                    std::fs::copy(&source, &staged).map_err(|e| io_error(&what, e))?;
                    std::fs::File::open(&staged).and_then(|f| f.sync_all()).map_err(|e| io_error(&what, e))?;
                    std::fs::rename(&staged, &target).map_err(|e| io_error(&what, e))?;
                    let _ = std::fs::remove_file(&source);
                    Ok(())
                }
                Err(e) => Err(io_error(&what, e)),
            }?;
            if let Some(parent) = target.parent() {
                std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| io_error(&what, e))?;
            }
            Ok(())
        })
        .await
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, ObjectError> {
        let path = self.file(key)?;
        let what = format!("blob {key}");
        blocking(move || {
            use std::io::Read as _;
            let file = std::fs::File::open(&path).map_err(|e| io_error(&what, e))?;
            let len = file.metadata().map_err(|e| io_error(&what, e))?.len();
            if len > max_bytes {
                return Err(ObjectError::TooLarge { what, bytes: len, limit: max_bytes });
            }
            let mut bytes = Vec::with_capacity(len as usize);
            file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(|e| io_error(&what, e))?;
            if bytes.len() as u64 > max_bytes {
                return Err(ObjectError::TooLarge { what, bytes: bytes.len() as u64, limit: max_bytes });
            }
            Ok(bytes)
        })
        .await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        let path = self.file(key)?;
        let what = format!("blob {key}");
        blocking(move || match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&what, e)),
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let path = self.file(key)?;
        let what = format!("blob {key}");
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&what, e)),
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError> {
        // Keys are `<collection>/<sha256>`: a prefix is a collection's folder (`c/`) or part of
        // a key inside it.
        let (folder, start) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let dir = if folder.is_empty() { self.root.clone() } else { self.file(folder)? };
        let start = start.to_owned();
        let what = format!("blobs under {prefix:?}");
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(io_error(&what, e)),
            };
            let mut removed = 0;
            for entry in entries {
                let entry = entry.map_err(|e| io_error(&what, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !name.starts_with(&start) {
                    continue;
                }
                let path = entry.path();
                if entry.file_type().map_err(|e| io_error(&what, e))?.is_dir() {
                    for blob in std::fs::read_dir(&path).map_err(|e| io_error(&what, e))? {
                        std::fs::remove_file(blob.map_err(|e| io_error(&what, e))?.path()).map_err(|e| io_error(&what, e))?;
                        removed += 1;
                    }
                    std::fs::remove_dir(&path).map_err(|e| io_error(&what, e))?;
                } else {
                    std::fs::remove_file(&path).map_err(|e| io_error(&what, e))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("folder {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(store: &FolderBlobStore, bytes: &[u8]) -> PathBuf {
        let path = store.staging_dir().join(uuid::Uuid::new_v4().to_string());
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[tokio::test]
    async fn stores_reads_and_deletes_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderBlobStore::open(dir.path().join("blobs")).unwrap();
        let file = staged(&store, b"hello");
        store.put_file("c1/abc", &file).await.unwrap();
        assert!(!file.exists(), "the staged file is consumed");
        assert_eq!(store.get("c1/abc", 100).await.unwrap(), b"hello");
        assert_eq!(store.size("c1/abc").await.unwrap(), Some(5));
        assert!(matches!(store.get("c1/abc", 4).await, Err(ObjectError::TooLarge { bytes: 5, limit: 4, .. })));
        assert!(matches!(store.get("c1/none", 4).await, Err(ObjectError::NotFound(_))));
        assert_eq!(store.size("c1/none").await.unwrap(), None);
        store.put_file("c1/abd", &staged(&store, b"x")).await.unwrap();
        store.put_file("c2/abc", &staged(&store, b"y")).await.unwrap();
        store.delete("c1/abd").await.unwrap();
        store.delete("c1/abd").await.unwrap();
        assert_eq!(store.size("c1/abd").await.unwrap(), None);
        assert_eq!(store.delete_prefix("c1/").await.unwrap(), 1);
        assert_eq!(store.size("c1/abc").await.unwrap(), None);
        assert_eq!(store.get("c2/abc", 10).await.unwrap(), b"y", "another collection's blob stays");
        for bad in ["", "../x", "c/../../x", ".staging/x", "c//x"] {
            assert!(store.get(bad, 10).await.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_restart_clears_what_a_crash_left_staged() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderBlobStore::open(dir.path()).unwrap();
        let left = staged(&store, b"half");
        store.put_file("c/kept", &staged(&store, b"whole")).await.unwrap();
        drop(store);
        let store = FolderBlobStore::open(dir.path()).unwrap();
        assert!(!left.exists());
        assert_eq!(store.get("c/kept", 10).await.unwrap(), b"whole");
    }
}
