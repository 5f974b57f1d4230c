//! What every handler shares: the ports, the active collection, settings.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use imgfleet_core::domain::{CollectionName, CollectionSpec, Distance};
use imgfleet_core::ingest_roots::IngestRoots;
use imgfleet_core::ports::{BlobStore, Encoder, ObjectSource, StateStore, VectorError, VectorStore, WorkQueue};
use imgfleet_core::workers::WorkerRegistry;
use imgfleet_http::ApiKeys;

use crate::admission::{FsGate, Slots};
use crate::error::{AppError, AppResult};

/// File system calls (ingest path checks, originals, thumbnails) under way at once.
const MAX_FS_CALLS: usize = 64;
/// Thumbnails (and query images) waiting for a slot beyond those being rendered (decoded).
const THUMBNAILS_WAITING: usize = 64;
/// Duplicate searches at once, and waiting.
const DUPLICATES_RUNNING: usize = 2;
const DUPLICATES_WAITING: usize = 4;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub vectors: Arc<dyn VectorStore>,
    pub state: Arc<dyn StateStore>,
    pub default_collection: CollectionName,
    pub default_vector_size: usize,
    pub api_keys: ApiKeys,
    /// Where ingest jobs are published; `None`: this server does not ingest.
    pub queue: Option<Arc<dyn WorkQueue>>,
    /// CLIP (text and image search); `None`: search by text or image answers 503.
    pub encoder: Option<Arc<dyn Encoder>>,
    /// Canonical directories that ingest paths (and served originals) must lie in.
    pub ingest_roots: Vec<PathBuf>,
    /// Bucket prefixes (`s3://` ingest roots) that ingested bucket prefixes must lie in.
    pub bucket_roots: IngestRoots,
    pub thumbnailer: Option<Arc<dyn Thumbnailer>>,
    /// The live encoder workers (`GET /api/v1/workers`); `None`: no encoder works for this
    /// server's pipeline.
    pub workers: Option<Arc<WorkerRegistry>>,
    /// Where uploads go; `None`: this server takes none.
    pub uploads: Option<Uploads>,
    /// Reads originals of images ingested from buckets (inside `bucket_roots`); `None`: they
    /// are not served.
    pub objects: Option<Arc<dyn ObjectSource>>,
    /// Blocking file system calls, bounded in number and time.
    pub fs: FsGate,
    /// Thumbnails rendered at once (one per core) and waiting.
    pub thumbnail_slots: Slots,
    /// Duplicate searches at once and waiting.
    pub duplicate_slots: Slots,
    /// Uploaded query images decoded at once (one per core) and waiting.
    pub decode_slots: Slots,
    /// Write-through cache of the state store's active collection.
    active: RwLock<CollectionName>,
}

/// Where uploaded originals are kept, and the limit on each.
#[derive(Clone)]
pub struct Uploads {
    pub blobs: Arc<dyn BlobStore>,
    /// Where a part is streamed before it is stored (best on the blob folder's file system).
    pub staging_dir: PathBuf,
    /// Largest file accepted; bigger ones are failed files of the job.
    pub max_file_bytes: u64,
}

/// Renders thumbnails of original files (the image code lives in the CPU worker crate).
/// Blocking: called on the blocking pool.
pub trait Thumbnailer: Send + Sync + 'static {
    /// A JPEG of the image file `bytes` whose longest side is at most `max_side` pixels.
    fn render(&self, bytes: &[u8], max_side: u32) -> Result<Vec<u8>, String>;
    /// Largest file a thumbnail is made of.
    fn max_file_bytes(&self) -> u64;
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Everything [`AppState::new`] needs.
pub struct AppStateParts {
    pub vectors: Arc<dyn VectorStore>,
    pub state: Arc<dyn StateStore>,
    pub default_collection: CollectionName,
    pub default_vector_size: usize,
    pub api_keys: ApiKeys,
    pub queue: Option<Arc<dyn WorkQueue>>,
    pub encoder: Option<Arc<dyn Encoder>>,
    /// Directories, canonicalised by [`AppState::new`] (each must exist), and bucket prefixes
    /// (`s3://bucket/prefix`).
    pub ingest_roots: Vec<PathBuf>,
    pub thumbnailer: Option<Arc<dyn Thumbnailer>>,
    pub workers: Option<Arc<WorkerRegistry>>,
    pub uploads: Option<Uploads>,
    /// Reads originals of images ingested from buckets; `None`: they are not served.
    pub objects: Option<Arc<dyn ObjectSource>>,
}

impl AppStateParts {
    /// The parts of a server that only stores and searches (no ingest, no encoder).
    pub fn stores(vectors: Arc<dyn VectorStore>, state: Arc<dyn StateStore>, default_collection: CollectionName, default_vector_size: usize) -> Self {
        Self {
            vectors,
            state,
            default_collection,
            default_vector_size,
            api_keys: ApiKeys::default(),
            queue: None,
            encoder: None,
            ingest_roots: Vec::new(),
            thumbnailer: None,
            workers: None,
            uploads: None,
            objects: None,
        }
    }
}

impl AppState {
    /// Loads the selected collection (or falls back to the default one, created if missing).
    pub async fn new(parts: AppStateParts) -> AppResult<Self> {
        let AppStateParts {
            vectors,
            state,
            default_collection,
            default_vector_size,
            api_keys,
            queue,
            encoder,
            ingest_roots,
            thumbnailer,
            workers,
            uploads,
            objects,
        } = parts;
        let mut bucket_roots = IngestRoots::split(&ingest_roots).map_err(|e| AppError::invalid(format!("ingest root {e}")))?;
        let ingest_roots = std::mem::take(&mut bucket_roots.directories)
            .iter()
            .map(|root| {
                let canonical = root.canonicalize().map_err(|e| {
                    AppError::invalid(format!("ingest root {} cannot be used: {e}", root.display()))
                })?;
                if !canonical.is_dir() {
                    return Err(AppError::invalid(format!("ingest root {} is not a directory", root.display())));
                }
                Ok(canonical)
            })
            .collect::<AppResult<Vec<_>>>()?;
        let stored = state.active_collection().await?;
        let active = match stored.as_deref().map(CollectionName::parse) {
            Some(Ok(name)) => name,
            _ => default_collection.clone(),
        };
        let spec = CollectionSpec {
            name: default_collection.clone(),
            vector_size: default_vector_size,
            distance: Distance::Cosine,
        };
        match vectors.create_collection(&spec).await {
            Ok(()) => tracing::info!(collection = %default_collection, vector_size = default_vector_size, "created default collection"),
            Err(VectorError::CollectionExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let inner = Inner {
            vectors,
            state,
            default_collection,
            default_vector_size,
            api_keys,
            queue,
            encoder,
            ingest_roots,
            bucket_roots,
            thumbnailer,
            workers,
            uploads,
            objects,
            fs: FsGate::new(MAX_FS_CALLS),
            thumbnail_slots: Slots::new("thumbnail", cores(), THUMBNAILS_WAITING, Duration::from_secs(10)),
            duplicate_slots: Slots::new("duplicates", DUPLICATES_RUNNING, DUPLICATES_WAITING, Duration::from_secs(5)),
            decode_slots: Slots::new("image search", cores(), THUMBNAILS_WAITING, Duration::from_secs(10)),
            active: RwLock::new(active),
        };
        Ok(Self(Arc::new(inner)))
    }

    pub fn active_collection(&self) -> CollectionName {
        self.active.read().expect("active lock").clone()
    }

    pub async fn select_collection(&self, name: CollectionName) -> AppResult<()> {
        self.state.set_active_collection(name.as_str()).await?;
        *self.active.write().expect("active lock") = name;
        Ok(())
    }

    /// The collection a request names, or the active one.
    pub fn collection_or_active(&self, requested: Option<&str>) -> AppResult<CollectionName> {
        match requested {
            Some(name) => CollectionName::parse(name).map_err(AppError::invalid),
            None => Ok(self.active_collection()),
        }
    }
}
