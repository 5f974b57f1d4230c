//! The walk of a directory, as a stream: one open directory per level (never a whole
//! listing), so a folder of a million files costs the same memory as a folder of ten.
//!
//! Symlinks (`inside-root`, the default): followed when their target, fully resolved, lies
//! inside the scanned directory; a link that leaves it, dangles, or loops back to an ancestor is
//! skipped, with why. Candidates: regular files whose name has an image extension (so a broken
//! image is accounted for as failed) or whose first bytes sniff as an image (so `IMG_0001`
//! without extension is found). Anything else is not counted.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use imgfleet_imaging::sniff::{SNIFF_LEN, has_image_extension, sniff};
use walkdir::{DirEntry, WalkDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SymlinkPolicy {
    /// Follow links whose resolved target stays inside the scanned directory.
    InsideRoot,
    /// Follow no symlink.
    Never,
}

/// One thing the walk met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkItem {
    /// A file to prepare.
    Candidate(PathBuf),
    /// An object of a bucket to prepare ([`crate::list`]): its path (`s3://bucket/key`) and the
    /// marker of the version listed.
    Listed { path: String, marker: String },
    /// Something left out, with why (a symlink loop, a link leaving the root, an unreadable
    /// directory).
    Skipped { path: PathBuf, reason: String },
}

/// Why a scan could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot open {path}: {source}")]
    Root { path: String, source: std::io::Error },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("{path} is outside this worker's ingest roots ({roots}); give the worker the API's --ingest-root")]
    OutsideRoots { path: String, roots: String },
    #[error("{path} is in a bucket, but this worker has no object storage configured (see --s3-endpoint)")]
    NoObjectStorage { path: String },
    #[error("listing {prefix}: {source}")]
    Listing { prefix: String, source: imgfleet_core::ports::ObjectError },
}

/// The walk of one directory tree, as an iterator of candidates and skips.
pub struct Walk {
    entries: walkdir::FilterEntry<walkdir::IntoIter, Box<dyn FnMut(&DirEntry) -> bool>>,
    /// Symlinks refused by the entry filter, waiting to be reported.
    refused: Rc<RefCell<VecDeque<WalkItem>>>,
}

impl Walk {
    /// Starts walking `root` (canonicalised first; candidates are paths under the canonical root).
    pub fn new(root: &Path, policy: SymlinkPolicy) -> Result<Self, ScanError> {
        Self::within(root, policy, &[])
    }

    /// [`Walk::new`], refused unless the canonical `root` lies inside one of `roots`
    /// (canonical); no `roots`: anywhere.
    pub fn within(root: &Path, policy: SymlinkPolicy, roots: &[PathBuf]) -> Result<Self, ScanError> {
        let root = root
            .canonicalize()
            .map_err(|source| ScanError::Root { path: root.display().to_string(), source })?;
        if !roots.is_empty() && !roots.iter().any(|allowed| root.starts_with(allowed)) {
            let roots = roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(ScanError::OutsideRoots { path: root.display().to_string(), roots });
        }
        if !root.is_dir() {
            return Err(ScanError::NotADirectory { path: root.display().to_string() });
        }
        let refused = Rc::new(RefCell::new(VecDeque::new()));
        let notes = Rc::clone(&refused);
        let canonical_root = root.clone();
        let filter: Box<dyn FnMut(&DirEntry) -> bool> = Box::new(move |entry: &DirEntry| {
            if !entry.path_is_symlink() {
                return true;
            }
            let refusal = match policy {
                SymlinkPolicy::Never => Some("symlink not followed (policy: never)".to_owned()),
                SymlinkPolicy::InsideRoot => match entry.path().canonicalize() {
                    Err(e) => Some(format!("symlink cannot be resolved: {e}")),
                    Ok(target) if !target.starts_with(&canonical_root) => {
                        Some(format!("symlink leads outside the scanned directory, to {}", target.display()))
                    }
                    Ok(_) => None,
                },
            };
            match refusal {
                Some(reason) => {
                    notes.borrow_mut().push_back(WalkItem::Skipped { path: entry.path().to_owned(), reason });
                    false
                }
                None => true,
            }
        });
        let entries = WalkDir::new(&root)
            .follow_links(policy == SymlinkPolicy::InsideRoot)
            .into_iter()
            .filter_entry(filter);
        Ok(Self { entries, refused })
    }
}

impl Iterator for Walk {
    type Item = WalkItem;

    fn next(&mut self) -> Option<WalkItem> {
        loop {
            if let Some(note) = self.refused.borrow_mut().pop_front() {
                return Some(note);
            }
            let entry = match self.entries.next()? {
                Ok(entry) => entry,
                Err(e) => {
                    let path = e.path().map(Path::to_owned).unwrap_or_default();
                    let reason = if e.loop_ancestor().is_some() {
                        "symlink loop: it leads back to a directory being walked".to_owned()
                    } else {
                        format!("cannot read: {}", e.to_string().to_lowercase())
                    };
                    return Some(WalkItem::Skipped { path, reason });
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            if has_image_extension(entry.path()) || sniffs_as_image(entry.path()) {
                return Some(WalkItem::Candidate(entry.into_path()));
            }
        }
    }
}

fn sniffs_as_image(path: &Path) -> bool {
    let mut head = [0u8; SNIFF_LEN];
    let Ok(mut file) = File::open(path) else { return false };
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    sniff(&head[..filled]).is_some()
}
