//! `VectorStore` on qdrant-edge: the Qdrant engine in process, one shard directory per
//! collection under `<data dir>/collections/<name>/`.
//!
//! Every qdrant-edge call blocks, so each runs on the blocking pool. A shard directory can be
//! opened by one process only. HNSW indexes are not built by writes: a background task calls
//! `optimize()` on collections that were written to and then left quiet for a moment.
//!
//! Our filters are translated to the engine's in `filters` ([`filter_json`], the JSON form
//! shared with the REST API), what comes back is read in `conversions`, and one collection's
//! shard (opened at start, or set aside when damaged) is in `collection`. This file holds the
//! store itself: its options and free-disk watermark, the collections, the optimiser and the
//! port.

mod collection;
mod conversions;
mod filters;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    CountRequest, CreateIndex, EdgeConfigBuilder, EdgeShard, EdgeVectorParams, FieldIndexOperations,
    NamedQuery, OrderBy, Payload, PayloadFieldSchema, PayloadOps, PointId,
    PointInsertOperations, PointOperations, PointStruct, QueryEnum, Sample,
    ScoringQuery, ScrollRequest, SetPayloadOp, UpdateOperation, VectorInternal,
    Vectors, WithPayloadInterface,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use imgfleet_core::domain::{
    CollectionInfo, CollectionName, CollectionSpec, ImagePoint, ImageRecord, ListPage,
    ListQuery, ScrollPage, SearchHit, SearchQuery,
};
use imgfleet_core::domain::VECTOR_NAME;
use imgfleet_core::filter::{FIELDS, FilterExpr, SortOrder};
use imgfleet_core::ports::vectors::{VectorError, VectorStore};

use collection::{Collection, open_or_set_aside};
use conversions::{dense_vector, edge_distance, page, payload_map, point_uuid, query_request, record, schema_type, scored_record, with_vector};
use filters::edge_filter;

// The filter translation stays reachable where it was before the split
// (`imgfleet_embedded::edge_vectors::filter_json`; the fleet's gRPC translation is tested against it).
pub use filters::filter_json;

/// How long a written collection stays quiet before its indexes are optimised.
const OPTIMIZE_AFTER_QUIET: Duration = Duration::from_secs(2);

pub struct EdgeVectorStore {
    root: PathBuf,
    options: EdgeStoreOptions,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
}

/// Engine settings for collections this store creates.
#[derive(Debug, Clone)]
pub struct EdgeStoreOptions {
    /// Segments holding more vector data than this (KB) get an HNSW index when optimised;
    /// `None`: the engine's default (about 10,000 vectors of 512 floats).
    pub indexing_threshold_kb: Option<usize>,
    /// Writes (and index optimisation) are refused with [`VectorError::StorageFull`] while the
    /// file system holding the store has less free space than this. The engine writes through
    /// memory maps, where running out of disk is a crash (SIGBUS), not an error.
    pub min_free_bytes: u64,
}

/// Free space below which the embedded store stops writing, unless configured otherwise.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

impl Default for EdgeStoreOptions {
    fn default() -> Self {
        Self { indexing_threshold_kb: None, min_free_bytes: DEFAULT_MIN_FREE_BYTES }
    }
}

/// Bytes free for an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid C string and `stats` a valid place for statvfs to write.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    Ok(u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize)))
}

/// What one collection's shard reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    pub segments: usize,
    pub points: usize,
    /// Vectors covered by an HNSW index.
    pub indexed_vectors: usize,
}

/// An engine error as the port's: a full disk is `StorageFull`, anything else `Internal`.
fn internal(e: impl std::fmt::Display) -> VectorError {
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("os error 28") {
        VectorError::StorageFull(text)
    } else {
        VectorError::Internal(text)
    }
}

impl EdgeVectorStore {
    /// Opens every collection under `<data_dir>/collections`, removing debris of interrupted
    /// creates and deletes.
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, VectorError> {
        Self::open_with(data_dir, EdgeStoreOptions::default())
    }

    pub fn open_with(data_dir: &Path, options: EdgeStoreOptions) -> Result<Arc<Self>, VectorError> {
        let root = data_dir.join("collections");
        std::fs::create_dir_all(&root)
            .map_err(|e| VectorError::Unavailable(format!("cannot create {}: {e}", root.display())))?;
        let mut collections = HashMap::new();
        let entries = std::fs::read_dir(&root)
            .map_err(|e| VectorError::Unavailable(format!("cannot read {}: {e}", root.display())))?;
        for entry in entries {
            let entry = entry.map_err(internal)?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // `.tmp-*` / `.trash-*`: a create or delete that did not finish.
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if !path.is_dir() || CollectionName::parse(&name).is_err() {
                continue;
            }
            match open_or_set_aside(data_dir, &path, &name)? {
                Some(collection) => {
                    collections.insert(name, Arc::new(collection));
                }
                None => continue,
            }
        }
        let store = Arc::new(Self { root, options, collections: RwLock::new(collections) });
        spawn_optimizer(Arc::downgrade(&store));
        Ok(store)
    }

    /// `StorageFull` while the store's file system is under its free-space watermark.
    fn check_space(&self) -> Result<(), VectorError> {
        if self.options.min_free_bytes == 0 {
            return Ok(());
        }
        let free = free_bytes(&self.root).map_err(|e| VectorError::Unavailable(format!("cannot read free space of {}: {e}", self.root.display())))?;
        if free < self.options.min_free_bytes {
            return Err(VectorError::StorageFull(format!(
                "{} MiB free under {}, below the {} MiB the vector store keeps free (--min-free-disk)",
                free >> 20,
                self.root.display(),
                self.options.min_free_bytes >> 20
            )));
        }
        Ok(())
    }

    fn get_collection(&self, name: &str) -> Result<Arc<Collection>, VectorError> {
        self.collections
            .read()
            .expect("collections lock")
            .get(name)
            .cloned()
            .ok_or_else(|| VectorError::CollectionNotFound(name.to_owned()))
    }

    /// Runs `f` on a collection on the blocking pool.
    async fn with<T, F>(&self, name: &str, f: F) -> Result<T, VectorError>
    where
        T: Send + 'static,
        F: FnOnce(&Collection) -> Result<T, VectorError> + Send + 'static,
    {
        let collection = self.get_collection(name)?;
        tokio::task::spawn_blocking(move || f(&collection)).await.map_err(internal)?
    }

    pub fn stats(&self, name: &str) -> Result<ShardStats, VectorError> {
        let info = self.get_collection(name)?.shard.info();
        Ok(ShardStats { segments: info.segments_count, points: info.points_count, indexed_vectors: info.indexed_vectors_count })
    }

    /// Builds HNSW and payload indexes for collections written to since their last
    /// optimisation. Blocking.
    pub fn optimize_dirty(&self) {
        if let Err(e) = self.check_space() {
            tracing::warn!(error = %e, "index optimisation waits for free space");
            return;
        }
        let dirty: Vec<Arc<Collection>> = self
            .collections
            .read()
            .expect("collections lock")
            .values()
            .filter(|c| c.dirty.swap(false, Ordering::AcqRel))
            .cloned()
            .collect();
        for collection in dirty {
            if let Err(e) = collection.shard.optimize() {
                tracing::warn!(collection = %collection.name, error = %e, "optimize failed");
                collection.dirty.store(true, Ordering::Release);
                continue;
            }
            if let Ok(stats) = self.stats(&collection.name) {
                tracing::debug!(collection = %collection.name, points = stats.points, indexed_vectors = stats.indexed_vectors, segments = stats.segments, "indexes optimised");
            }
        }
    }
}

fn spawn_optimizer(store: Weak<EdgeVectorStore>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let mut was_dirty: Vec<String> = Vec::new();
        loop {
            tokio::time::sleep(OPTIMIZE_AFTER_QUIET).await;
            let Some(store) = store.upgrade() else { return };
            // Optimise only collections that were dirty a tick ago and saw no write since.
            let now_dirty: Vec<String> = store
                .collections
                .read()
                .expect("collections lock")
                .values()
                .filter(|c| c.dirty.load(Ordering::Acquire))
                .map(|c| c.name.clone())
                .collect();
            if !now_dirty.is_empty() && now_dirty == was_dirty {
                let store = Arc::clone(&store);
                let _ = tokio::task::spawn_blocking(move || store.optimize_dirty()).await;
                was_dirty.clear();
            } else {
                was_dirty = now_dirty;
            }
        }
    });
}

#[async_trait]
impl VectorStore for EdgeVectorStore {
    async fn list_collections(&self) -> Result<Vec<CollectionInfo>, VectorError> {
        let collections: Vec<Arc<Collection>> =
            self.collections.read().expect("collections lock").values().cloned().collect();
        tokio::task::spawn_blocking(move || {
            let mut infos = collections.iter().map(|c| c.info()).collect::<Result<Vec<_>, _>>()?;
            infos.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(infos)
        })
        .await
        .map_err(internal)?
    }

    async fn create_collection(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        self.check_space()?;
        let name = spec.name.as_str().to_owned();
        if self.collections.read().expect("collections lock").contains_key(&name) {
            return Err(VectorError::CollectionExists(name));
        }
        if spec.vector_size == 0 || spec.vector_size > imgfleet_core::domain::MAX_VECTOR_SIZE {
            return Err(VectorError::Invalid(format!(
                "vector_size must be between 1 and {}",
                imgfleet_core::domain::MAX_VECTOR_SIZE
            )));
        }
        let root = self.root.clone();
        let (size, distance) = (spec.vector_size, spec.distance);
        let optimizers = qdrant_edge::EdgeOptimizersConfig {
            indexing_threshold: self.options.indexing_threshold_kb,
            ..Default::default()
        };
        let created = tokio::task::spawn_blocking(move || -> Result<Collection, VectorError> {
            // Built aside and renamed into place, so a crash never leaves half a collection.
            let tmp = root.join(format!(".tmp-{name}-{}", Uuid::new_v4().simple()));
            std::fs::create_dir_all(&tmp).map_err(internal)?;
            let config = EdgeConfigBuilder::new()
                .vector(VECTOR_NAME, EdgeVectorParams::builder(size, edge_distance(distance)).build())
                .optimizers(optimizers)
                .build();
            {
                let shard = EdgeShard::new(&tmp, config).map_err(internal)?;
                for field in FIELDS {
                    let op = FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: field.key.try_into().map_err(|e| internal(format!("{e:?}")))?,
                        field_schema: Some(PayloadFieldSchema::FieldType(schema_type(field.ty))),
                    });
                    shard.update(UpdateOperation::FieldIndexOperation(op)).map_err(internal)?;
                }
                shard.flush();
            }
            let path = root.join(&name);
            if path.exists() {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(VectorError::CollectionExists(name));
            }
            std::fs::rename(&tmp, &path).map_err(internal)?;
            Collection::open(&path, &name)
        })
        .await
        .map_err(internal)??;
        let mut collections = self.collections.write().expect("collections lock");
        if collections.contains_key(&created.name) {
            return Err(VectorError::CollectionExists(created.name.clone()));
        }
        collections.insert(created.name.clone(), Arc::new(created));
        Ok(())
    }

    async fn collection(&self, name: &str) -> Result<CollectionInfo, VectorError> {
        self.with(name, |c| c.info()).await
    }

    async fn delete_collection(&self, name: &str) -> Result<(), VectorError> {
        let collection = self
            .collections
            .write()
            .expect("collections lock")
            .remove(name)
            .ok_or_else(|| VectorError::CollectionNotFound(name.to_owned()))?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            // Wait for in-flight calls to let go, so the shard is closed before its files go.
            let mut collection = collection;
            let shard_path = loop {
                match Arc::try_unwrap(collection) {
                    Ok(c) => {
                        let path = c.shard.path().to_owned();
                        drop(c);
                        break path;
                    }
                    Err(shared) => {
                        collection = shared;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            };
            let trash = root.join(format!(".trash-{}", Uuid::new_v4().simple()));
            std::fs::rename(&shard_path, &trash).map_err(internal)?;
            std::fs::remove_dir_all(&trash).map_err(internal)
        })
        .await
        .map_err(internal)?
    }

    async fn upsert(&self, collection: &str, points: Vec<ImagePoint>) -> Result<(), VectorError> {
        if points.is_empty() {
            return Ok(());
        }
        self.check_space()?;
        self.with(collection, move |c| {
            let mut batch = Vec::with_capacity(points.len());
            for p in points {
                c.check_vector(&p.vector)?;
                let vectors = Vectors::new_named([(VECTOR_NAME, p.vector)]);
                batch.push(PointStruct::new(PointId::Uuid(p.id), vectors, Value::Object(p.payload)).into());
            }
            let op = PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch));
            c.shard.update(UpdateOperation::PointOperation(op)).map_err(internal)?;
            c.shard.flush();
            c.dirty.store(true, Ordering::Release);
            Ok(())
        })
        .await
    }

    async fn set_payload(&self, collection: &str, id: Uuid, payload: Map<String, Value>) -> Result<(), VectorError> {
        self.check_space()?;
        self.with(collection, move |c| {
            let exists = !c.shard.retrieve(&[PointId::Uuid(id)], Some(WithPayloadInterface::Bool(false)), None).map_err(internal)?.is_empty();
            if !exists {
                return Err(VectorError::Invalid(format!("point {id} does not exist")));
            }
            let op = PayloadOps::SetPayload(SetPayloadOp {
                payload: Payload(payload.into_iter().collect()),
                points: Some(vec![PointId::Uuid(id)]),
                filter: None,
                key: None,
            });
            c.shard.update(UpdateOperation::PayloadOperation(op)).map_err(internal)?;
            c.shard.flush();
            Ok(())
        })
        .await
    }

    async fn delete_points(&self, collection: &str, ids: &[Uuid]) -> Result<(), VectorError> {
        let ids: Vec<PointId> = ids.iter().map(|&id| PointId::Uuid(id)).collect();
        self.with(collection, move |c| {
            let op = PointOperations::DeletePoints { ids };
            c.shard.update(UpdateOperation::PointOperation(op)).map_err(internal)?;
            c.shard.flush();
            c.dirty.store(true, Ordering::Release);
            Ok(())
        })
        .await
    }

    async fn search(&self, collection: &str, query: &SearchQuery) -> Result<Vec<SearchHit>, VectorError> {
        let query = query.clone();
        let filter = edge_filter(query.filter.as_ref())?;
        self.with(collection, move |c| {
            c.check_vector(&query.vector)?;
            let nearest = QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::Dense(query.vector),
                using: Some(VECTOR_NAME.to_owned()),
            });
            let mut request = query_request(Some(ScoringQuery::Vector(nearest)), filter, query.limit, query.offset, query.with_vector);
            // The engine keeps only scores strictly above its threshold; ours is "at least".
            request.score_threshold = query.score_threshold.map(|t| OrderedFloat(t - 1e-5 * t.abs().max(1.0)));
            let mut points = c.shard.query(request).map_err(internal)?;
            if let Some(t) = query.score_threshold {
                points.retain(|p| p.score >= t);
            }
            page(points, query.offset)
                .map(|p| {
                    Ok(SearchHit {
                        id: point_uuid(&p.id)?,
                        score: p.score,
                        payload: payload_map(p.payload),
                        vector: dense_vector(p.vector),
                    })
                })
                .collect()
        })
        .await
    }

    async fn list(&self, collection: &str, query: &ListQuery) -> Result<ListPage, VectorError> {
        let query = query.clone();
        let filter = edge_filter(query.filter.as_ref())?;
        self.with(collection, move |c| {
            let total = c.shard.count(CountRequest { filter: filter.clone(), exact: true }).map_err(internal)? as u64;
            let order = query
                .sort
                .as_ref()
                .map(|s| {
                    let direction = if s.order == SortOrder::Desc { "desc" } else { "asc" };
                    serde_json::from_value::<OrderBy>(json!({"key": s.field.key, "direction": direction}))
                        .map_err(|e| internal(format!("order_by: {e}")))
                })
                .transpose()?
                .map(ScoringQuery::OrderBy);
            // The query API pages with an offset under any ordering (scroll refuses offset with order_by).
            let request = query_request(order, filter, query.limit, query.offset, false);
            let items = page(c.shard.query(request).map_err(internal)?, query.offset).map(scored_record).collect::<Result<_, _>>()?;
            Ok(ListPage { items, total })
        })
        .await
    }

    async fn scroll(&self, collection: &str, after: Option<Uuid>, limit: usize, vectors: bool) -> Result<ScrollPage, VectorError> {
        self.with(collection, move |c| {
            let (records, next) = c
                .shard
                .scroll(ScrollRequest {
                    offset: after.map(PointId::Uuid),
                    limit: Some(limit.max(1)),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: with_vector(vectors),
                    order_by: None,
                })
                .map_err(internal)?;
            let items = records.into_iter().map(record).collect::<Result<_, _>>()?;
            Ok(ScrollPage { items, next: next.as_ref().map(point_uuid).transpose()? })
        })
        .await
    }

    async fn count(&self, collection: &str, filter: Option<&FilterExpr>) -> Result<u64, VectorError> {
        let filter = edge_filter(filter)?;
        self.with(collection, move |c| {
            Ok(c.shard.count(CountRequest { filter, exact: true }).map_err(internal)? as u64)
        })
        .await
    }

    async fn get(&self, collection: &str, ids: &[Uuid], vectors: bool) -> Result<Vec<ImageRecord>, VectorError> {
        let ids: Vec<PointId> = ids.iter().map(|&id| PointId::Uuid(id)).collect();
        self.with(collection, move |c| {
            let records = c
                .shard
                .retrieve(&ids, Some(WithPayloadInterface::Bool(true)), Some(with_vector(vectors)))
                .map_err(internal)?;
            records.into_iter().map(record).collect()
        })
        .await
    }

    async fn random(&self, collection: &str, n: usize, filter: Option<&FilterExpr>) -> Result<Vec<ImageRecord>, VectorError> {
        let filter = edge_filter(filter)?;
        self.with(collection, move |c| {
            let request = query_request(Some(ScoringQuery::Sample(Sample::Random)), filter, n, 0, false);
            c.shard.query(request).map_err(internal)?.into_iter().map(scored_record).collect()
        })
        .await
    }
}
