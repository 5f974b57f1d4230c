//! `VectorStore` on a Qdrant server, over gRPC with `qdrant-client`.
//!
//! It keeps the semantics of the embedded adapter (`imgfleet_embedded::edge_vectors`) exactly: one named
//! dense vector [`VECTOR_NAME`] per point, a payload index for every filter field created with
//! the collection, the same filter translation, a score threshold that means "at least", listings
//! through the query API (any sort, with an offset) and a total through an exact count, scrolls by
//! id, random draws through `sample`, payload merges, and `get` in the order asked.
//!
//! Every request is built by a pure function (`*_request`) and every error goes through
//! [`status_error`], so both are unit-tested without a server; the contract suite runs against
//! a real server when `QDRANT_URL` is set.
//!
//! Collections may live under a name prefix ([`QdrantVectorStore::with_prefix`]), so that several
//! deployments (or test runs) can share one server; the prefix is invisible through the port.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qdrant_client::qdrant::{
    self as q, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, GetPointsBuilder, OrderByBuilder, PointId, PointsIdsList, QueryPointsBuilder,
    ScrollPointsBuilder, SetPayloadPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder,
    VectorsConfigBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde_json::{Map, Value};
use uuid::Uuid;

use imgfleet_core::domain::{VECTOR_NAME, 
    CollectionInfo, CollectionName, CollectionSpec, Distance, ImagePoint, ImageRecord, ListPage,
    ListQuery, MAX_VECTOR_SIZE, ScrollPage, SearchHit, SearchQuery,
};
use imgfleet_core::filter::{Bound, Condition, FIELDS, FieldType, FilterExpr, RangeBounds, Scalar, SortOrder};
use imgfleet_core::ports::vectors::{VectorError, VectorStore};

/// Most points sent in one upsert request (a 512-float point is about 2 KiB plus its payload).
pub const UPSERT_BATCH: usize = 256;
/// Longest collection name prefix accepted.
pub const MAX_PREFIX_LEN: usize = 64;

/// A [`VectorStore`] on a Qdrant server.
pub struct QdrantVectorStore {
    client: Qdrant,
    url: String,
    /// Prepended to every collection name on the server.
    prefix: String,
    /// Vector size of collections seen, by (unprefixed) name: lets a wrong-sized vector be
    /// refused with the same message as the embedded store without a round trip per write. The
    /// server stays the authority: a mismatch against the cache is re-checked against a fresh
    /// read, and a stale match is refused by the server itself.
    sizes: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for QdrantVectorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantVectorStore").field("url", &self.url).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl QdrantVectorStore {
    /// Connects to the gRPC endpoint at `url` (`http://host:6334`, or `https://` for TLS) and
    /// checks that the server answers. `timeout` bounds connecting and every request.
    pub async fn connect(url: &str, api_key: Option<String>, timeout: Duration) -> Result<Self, VectorError> {
        let client = Qdrant::from_url(url)
            .api_key(api_key.filter(|k| !k.is_empty()))
            .timeout(timeout)
            .connect_timeout(timeout)
            .skip_compatibility_check()
            .build()
            .map_err(|e| match error(e, None) {
                VectorError::Invalid(m) => VectorError::Invalid(format!("invalid Qdrant URL {url:?}: {m}")),
                other => other,
            })?;
        let health = client.health_check().await.map_err(|e| match error(e, None) {
            VectorError::Invalid(m) => VectorError::Invalid(format!("invalid Qdrant URL {url:?}: {m}")),
            VectorError::Unavailable(m) | VectorError::Internal(m) => {
                VectorError::Unavailable(format!("cannot reach Qdrant at {url}: {m}"))
            }
            other => other,
        })?;
        tracing::info!(url, version = %health.version, "connected to Qdrant");
        Ok(Self { client, url: url.to_owned(), prefix: String::new(), sizes: Mutex::new(HashMap::new()) })
    }

    /// Keeps this store's collections under `prefix` on the server: `photos` is stored as
    /// `<prefix>photos`, and only prefixed collections are listed. Letters, digits, `_` and `-`.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, VectorError> {
        validate_prefix(prefix)?;
        self.prefix = prefix.to_owned();
        self.sizes.lock().expect("sizes lock").clear();
        Ok(self)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server-side name of a collection.
    fn qname(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Maps an error about collection `name`, forgetting its cached size when it is gone.
    fn err(&self, e: QdrantError, name: &str) -> VectorError {
        let mapped = error(e, Some(name));
        if matches!(mapped, VectorError::CollectionNotFound(_)) {
            self.sizes.lock().expect("sizes lock").remove(name);
        }
        mapped
    }

    /// The collection's description; `CollectionNotFound` when there is none.
    async fn read_info(&self, name: &str) -> Result<q::CollectionInfo, VectorError> {
        let info = self.client.collection_info(self.qname(name)).await.map_err(|e| self.err(e, name))?;
        info.result.ok_or_else(|| VectorError::Internal(format!("no info returned for collection {name:?}")))
    }

    /// Vector size and distance, read from the server.
    async fn params(&self, name: &str) -> Result<(usize, Distance), VectorError> {
        let info = self.read_info(name).await?;
        let (size, distance) = collection_params(&info, name)?;
        self.sizes.lock().expect("sizes lock").insert(name.to_owned(), size);
        Ok((size, distance))
    }

    /// Checks vectors against the collection's size (cached, re-read once on a mismatch).
    async fn check_vectors(&self, name: &str, vectors: &[&[f32]]) -> Result<(), VectorError> {
        let cached = self.sizes.lock().expect("sizes lock").get(name).copied();
        let size = match cached {
            Some(size) => size,
            None => self.params(name).await?.0,
        };
        match vectors.iter().try_for_each(|v| check_vector(name, size, v)) {
            Err(_) if cached.is_some() => {
                let size = self.params(name).await?.0;
                vectors.iter().try_for_each(|v| check_vector(name, size, v))
            }
            result => result,
        }
    }

    async fn count_points(&self, name: &str, filter: Option<q::Filter>) -> Result<u64, VectorError> {
        let response = self.client.count(count_request(&self.qname(name), filter)).await.map_err(|e| self.err(e, name))?;
        Ok(response.result.map(|r| r.count).unwrap_or(0))
    }

    async fn info(&self, name: &str) -> Result<CollectionInfo, VectorError> {
        let (vector_size, distance) = self.params(name).await?;
        let points = self.count_points(name, None).await?;
        Ok(CollectionInfo { name: name.to_owned(), vector_size, distance, points })
    }
}

fn validate_prefix(prefix: &str) -> Result<(), VectorError> {
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(VectorError::Invalid(format!("collection prefix is longer than {MAX_PREFIX_LEN} bytes")));
    }
    if !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(VectorError::Invalid(format!(
            "collection prefix {prefix:?} may contain only letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

// ---- errors ----

/// gRPC status codes (numbered by the gRPC spec; `tonic::Code` converts to these).
pub mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// What a gRPC status from Qdrant means to the port. `collection` is the (unprefixed) collection
/// the request was about, if any.
///
/// - `NOT_FOUND`: a missing point (`No point with id …`) is bad input; otherwise the collection is
///   missing.
/// - `ALREADY_EXISTS` (and an `INVALID_ARGUMENT` saying "already exists", as older servers send):
///   the collection exists.
/// - `INVALID_ARGUMENT`: the request does not fit the collection.
/// - `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `CANCELLED` (tonic's client-side timeout),
///   `RESOURCE_EXHAUSTED` (rate limit), `UNAUTHENTICATED` / `PERMISSION_DENIED` (API key), and the
///   client's own connection failures (`INTERNAL`/`UNKNOWN` "Failed to connect", "transport
///   error"): the store cannot be used right now.
/// - anything else: internal.
pub fn status_error(code: i32, message: &str, collection: Option<&str>) -> VectorError {
    use grpc_code::*;
    let lower = message.to_ascii_lowercase();
    if lower.contains("no space left on device") {
        return VectorError::StorageFull(message.to_owned());
    }
    match code {
        NOT_FOUND if lower.contains("no point") || lower.contains("point with id") => VectorError::Invalid(message.to_owned()),
        NOT_FOUND => match collection {
            Some(name) => VectorError::CollectionNotFound(name.to_owned()),
            None => VectorError::Internal(format!("not found: {message}")),
        },
        ALREADY_EXISTS => match collection {
            Some(name) => VectorError::CollectionExists(name.to_owned()),
            None => VectorError::Internal(format!("already exists: {message}")),
        },
        INVALID_ARGUMENT if lower.contains("already exists") && collection.is_some() => {
            VectorError::CollectionExists(collection.expect("checked").to_owned())
        }
        INVALID_ARGUMENT => VectorError::Invalid(message.to_owned()),
        UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | RESOURCE_EXHAUSTED => VectorError::Unavailable(message.to_owned()),
        UNAUTHENTICATED | PERMISSION_DENIED => {
            VectorError::Unavailable(format!("Qdrant refused the credentials (check the API key): {message}"))
        }
        INTERNAL | UNKNOWN if lower.contains("failed to connect") || lower.contains("transport error") || lower.contains("connection") => {
            VectorError::Unavailable(message.to_owned())
        }
        FAILED_PRECONDITION => VectorError::Internal(format!("failed precondition: {message}")),
        _ => VectorError::Internal(format!("grpc status {code}: {message}")),
    }
}

/// A client error as a port error; statuses go through [`status_error`].
pub fn error(e: QdrantError, collection: Option<&str>) -> VectorError {
    match e {
        QdrantError::ResponseError { status } | QdrantError::ResourceExhaustedError { status, .. } => {
            status_error(i32::from(status.code()), status.message(), collection)
        }
        QdrantError::InvalidUri(e) => VectorError::Invalid(e.to_string()),
        QdrantError::Io(e) => VectorError::Unavailable(e.to_string()),
        other => VectorError::Internal(other.to_string()),
    }
}

fn internal(e: impl std::fmt::Display) -> VectorError {
    VectorError::Internal(e.to_string())
}

// ---- collections ----

pub fn qdrant_distance(d: Distance) -> q::Distance {
    match d {
        Distance::Cosine => q::Distance::Cosine,
        Distance::Dot => q::Distance::Dot,
        Distance::Euclid => q::Distance::Euclid,
        Distance::Manhattan => q::Distance::Manhattan,
    }
}

fn our_distance(d: i32, name: &str) -> Result<Distance, VectorError> {
    match q::Distance::try_from(d) {
        Ok(q::Distance::Cosine) => Ok(Distance::Cosine),
        Ok(q::Distance::Dot) => Ok(Distance::Dot),
        Ok(q::Distance::Euclid) => Ok(Distance::Euclid),
        Ok(q::Distance::Manhattan) => Ok(Distance::Manhattan),
        _ => Err(VectorError::Internal(format!("collection {name:?} has an unknown distance ({d})"))),
    }
}

fn field_type(ty: FieldType) -> q::FieldType {
    match ty {
        FieldType::Keyword => q::FieldType::Keyword,
        FieldType::Integer => q::FieldType::Integer,
        FieldType::Float => q::FieldType::Float,
        FieldType::Datetime => q::FieldType::Datetime,
        FieldType::Text => q::FieldType::Text,
    }
}

/// Creates a collection with one named dense vector.
pub fn create_collection_request(qname: &str, spec: &CollectionSpec) -> q::CreateCollection {
    let mut vectors = VectorsConfigBuilder::default();
    vectors.add_named_vector_params(VECTOR_NAME, VectorParamsBuilder::new(spec.vector_size as u64, qdrant_distance(spec.distance)));
    CreateCollectionBuilder::new(qname).vectors_config(vectors).build()
}

/// One payload index per filter field, each with the engine's default parameters for its type
/// (as the embedded store creates them); `wait` so the collection is ready when created.
pub fn payload_index_requests(qname: &str) -> Vec<q::CreateFieldIndexCollection> {
    FIELDS
        .iter()
        .map(|f| CreateFieldIndexCollectionBuilder::new(qname, f.key, field_type(f.ty)).wait(true).build())
        .collect()
}

/// Vector size and distance of the collection's [`VECTOR_NAME`] vector.
pub fn collection_params(info: &q::CollectionInfo, name: &str) -> Result<(usize, Distance), VectorError> {
    let config = info
        .config
        .as_ref()
        .and_then(|c| c.params.as_ref())
        .and_then(|p| p.vectors_config.as_ref())
        .and_then(|v| v.config.as_ref());
    let params = match config {
        Some(q::vectors_config::Config::ParamsMap(map)) => map.map.get(VECTOR_NAME),
        _ => None,
    }
    .ok_or_else(|| VectorError::Internal(format!("collection {name:?} has no {VECTOR_NAME:?} vector")))?;
    Ok((params.size as usize, our_distance(params.distance, name)?))
}

// ---- filters ----

fn timestamp(t: &DateTime<Utc>) -> q::Timestamp {
    q::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn scalar_match(key: &str, v: &Scalar) -> q::Condition {
    // Explicit variants: the client's `From<String>` turns a string with a space into a
    // full-text match.
    let value = match v {
        Scalar::Str(s) => q::r#match::MatchValue::Keyword(s.clone()),
        Scalar::Int(i) => q::r#match::MatchValue::Integer(*i),
    };
    q::Condition::matches(key, value)
}

fn any_match(key: &str, values: &[Scalar]) -> Result<q::Condition, VectorError> {
    let value = if values.iter().all(|v| matches!(v, Scalar::Int(_))) {
        let integers = values.iter().filter_map(|v| if let Scalar::Int(i) = v { Some(*i) } else { None }).collect();
        q::r#match::MatchValue::Integers(q::RepeatedIntegers { integers })
    } else if values.iter().all(|v| matches!(v, Scalar::Str(_))) {
        let strings = values.iter().filter_map(|v| if let Scalar::Str(s) = v { Some(s.clone()) } else { None }).collect();
        q::r#match::MatchValue::Keywords(q::RepeatedStrings { strings })
    } else {
        return Err(internal(format!("filter on {key:?} mixes strings and integers")));
    };
    Ok(q::Condition::matches(key, value))
}

fn range_condition(key: &str, r: &RangeBounds) -> Result<q::Condition, VectorError> {
    let bounds = [r.gt, r.gte, r.lt, r.lte];
    let datetimes = bounds.iter().flatten().all(|b| matches!(b, Bound::Datetime(_)));
    let numbers = bounds.iter().flatten().all(|b| matches!(b, Bound::Number(_)));
    if datetimes && !numbers {
        let t = |b: &Option<Bound>| match b {
            Some(Bound::Datetime(t)) => Some(timestamp(t)),
            _ => None,
        };
        Ok(q::Condition::datetime_range(key, q::DatetimeRange { gt: t(&r.gt), gte: t(&r.gte), lt: t(&r.lt), lte: t(&r.lte) }))
    } else if numbers {
        let n = |b: &Option<Bound>| match b {
            Some(Bound::Number(n)) => Some(*n),
            _ => None,
        };
        Ok(q::Condition::range(key, q::Range { gt: n(&r.gt), gte: n(&r.gte), lt: n(&r.lt), lte: n(&r.lte) }))
    } else {
        Err(internal(format!("range on {key:?} mixes numbers and datetimes")))
    }
}

/// Our filter as a Qdrant filter, node for node as the embedded store translates it
/// (`imgfleet_embedded::edge_vectors::filter_json`): `all` → `must`, `any` → `should`, `not` →
/// `must_not`, and each field condition wrapped in a `must` of its own.
pub fn qdrant_filter(expr: &FilterExpr) -> Result<q::Filter, VectorError> {
    let nested = |parts: &[FilterExpr]| parts.iter().map(|p| qdrant_filter(p).map(q::Condition::from)).collect::<Result<Vec<_>, _>>();
    Ok(match expr {
        FilterExpr::All(parts) => q::Filter::must(nested(parts)?),
        FilterExpr::Any(parts) => q::Filter::should(nested(parts)?),
        FilterExpr::Not(inner) => q::Filter::must_not([q::Condition::from(qdrant_filter(inner)?)]),
        FilterExpr::Field { field, cond } => {
            let key = field.key;
            let condition = match cond {
                Condition::Eq(v) => scalar_match(key, v),
                Condition::AnyOf(vs) => any_match(key, vs)?,
                Condition::Text(t) => q::Condition::matches_text(key, t.clone()),
                Condition::Range(r) => range_condition(key, r)?,
            };
            q::Filter::must([condition])
        }
    })
}

fn translate(expr: Option<&FilterExpr>) -> Result<Option<q::Filter>, VectorError> {
    expr.map(qdrant_filter).transpose()
}

// ---- requests ----

/// Qdrant keeps only scores strictly above its threshold; ours is "at least": ask for a hair
/// less and cut the rest (as the embedded store does).
pub fn engine_threshold(t: f32) -> f32 {
    t - 1e-5 * t.abs().max(1.0)
}

/// Upserts in batches of [`UPSERT_BATCH`], each acknowledged once applied (`wait`).
pub fn upsert_requests(qname: &str, points: Vec<ImagePoint>) -> Vec<q::UpsertPoints> {
    let mut requests = Vec::with_capacity(points.len().div_ceil(UPSERT_BATCH));
    let mut points = points.into_iter().peekable();
    while points.peek().is_some() {
        let batch: Vec<q::PointStruct> = points
            .by_ref()
            .take(UPSERT_BATCH)
            .map(|p| {
                let vectors: HashMap<String, Vec<f32>> = HashMap::from([(VECTOR_NAME.to_owned(), p.vector)]);
                q::PointStruct::new(p.id, vectors, Payload::from(p.payload))
            })
            .collect();
        requests.push(UpsertPointsBuilder::new(qname, batch).wait(true).build());
    }
    requests
}

fn ids_list(ids: &[Uuid]) -> PointsIdsList {
    PointsIdsList { ids: ids.iter().map(|&id| PointId::from(id)).collect() }
}

pub fn set_payload_request(qname: &str, id: Uuid, payload: Map<String, Value>) -> q::SetPayloadPoints {
    SetPayloadPointsBuilder::new(qname, Payload::from(payload)).points_selector(ids_list(&[id])).wait(true).build()
}

pub fn delete_points_request(qname: &str, ids: &[Uuid]) -> q::DeletePoints {
    DeletePointsBuilder::new(qname).points(ids_list(ids)).wait(true).build()
}

/// Nearest neighbours of the query vector; the server applies the offset.
pub fn search_request(qname: &str, query: &SearchQuery, filter: Option<q::Filter>) -> q::QueryPoints {
    let mut b = QueryPointsBuilder::new(qname)
        .query(q::Query::new_nearest(query.vector.clone()))
        .using(VECTOR_NAME)
        .limit(query.limit as u64)
        .offset(query.offset as u64)
        .with_payload(true)
        .with_vectors(query.with_vector);
    if let Some(filter) = filter {
        b = b.filter(filter);
    }
    if let Some(t) = query.score_threshold {
        b = b.score_threshold(engine_threshold(t));
    }
    b.build()
}

/// A listing page: ordered by a payload field, or by id when unsorted. The query API takes an
/// offset under any ordering (scroll refuses an offset with `order_by`).
pub fn list_request(qname: &str, query: &ListQuery, filter: Option<q::Filter>) -> q::QueryPoints {
    let mut b = QueryPointsBuilder::new(qname)
        .limit(query.limit as u64)
        .offset(query.offset as u64)
        .with_payload(true)
        .with_vectors(false);
    if let Some(sort) = &query.sort {
        let direction = if sort.order == SortOrder::Desc { q::Direction::Desc } else { q::Direction::Asc };
        b = b.query(q::Query::new_order_by(OrderByBuilder::new(sort.field.key).direction(direction as i32).build()));
    }
    if let Some(filter) = filter {
        b = b.filter(filter);
    }
    b.build()
}

/// Up to `n` points sampled at random.
pub fn random_request(qname: &str, n: usize, filter: Option<q::Filter>) -> q::QueryPoints {
    let mut b = QueryPointsBuilder::new(qname)
        .query(q::Query::new_sample(q::Sample::Random))
        .limit(n as u64)
        .with_payload(true)
        .with_vectors(false);
    if let Some(filter) = filter {
        b = b.filter(filter);
    }
    b.build()
}

/// A page of every point in id order, from `after` (inclusive, as the server hands it back).
pub fn scroll_request(qname: &str, after: Option<Uuid>, limit: usize, with_vector: bool) -> q::ScrollPoints {
    let mut b = ScrollPointsBuilder::new(qname)
        .limit(limit.clamp(1, u32::MAX as usize) as u32)
        .with_payload(true)
        .with_vectors(with_vector);
    if let Some(after) = after {
        b = b.offset(PointId::from(after));
    }
    b.build()
}

/// An exact count.
pub fn count_request(qname: &str, filter: Option<q::Filter>) -> q::CountPoints {
    let mut b = CountPointsBuilder::new(qname).exact(true);
    if let Some(filter) = filter {
        b = b.filter(filter);
    }
    b.build()
}

pub fn get_request(qname: &str, ids: &[Uuid], with_vector: bool) -> q::GetPoints {
    GetPointsBuilder::new(qname, ids_list(ids).ids).with_payload(true).with_vectors(with_vector).build()
}

// ---- conversions ----

fn check_vector(name: &str, size: usize, vector: &[f32]) -> Result<(), VectorError> {
    if vector.len() != size {
        return Err(VectorError::Invalid(format!(
            "vector has {} dimensions; collection {name:?} holds {size}-dimensional vectors",
            vector.len()
        )));
    }
    if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
        return Err(VectorError::Invalid(format!("vector element {i} is not a finite number")));
    }
    Ok(())
}

fn point_uuid(id: Option<PointId>) -> Result<Uuid, VectorError> {
    match id.and_then(|id| id.point_id_options) {
        Some(q::point_id::PointIdOptions::Uuid(s)) => Uuid::parse_str(&s).map_err(|e| internal(format!("bad point id {s:?}: {e}"))),
        Some(q::point_id::PointIdOptions::Num(n)) => Err(internal(format!("unexpected numeric point id {n}"))),
        None => Err(internal("point without an id")),
    }
}

fn payload_map(payload: HashMap<String, q::Value>) -> Map<String, Value> {
    Map::from(Payload::from(payload))
}

fn dense_vector(vectors: Option<q::VectorsOutput>) -> Option<Vec<f32>> {
    let vectors = vectors?;
    let vector = vectors.get_vector_by_name(VECTOR_NAME).or_else(|| vectors.get_vector())?;
    match vector {
        q::vector_output::Vector::Dense(dense) => Some(dense.data),
        _ => None,
    }
}

fn record(p: q::RetrievedPoint) -> Result<ImageRecord, VectorError> {
    Ok(ImageRecord { id: point_uuid(p.id)?, payload: payload_map(p.payload), vector: dense_vector(p.vectors) })
}

fn scored_record(p: q::ScoredPoint) -> Result<ImageRecord, VectorError> {
    Ok(ImageRecord { id: point_uuid(p.id)?, payload: payload_map(p.payload), vector: dense_vector(p.vectors) })
}

fn hit(p: q::ScoredPoint) -> Result<SearchHit, VectorError> {
    Ok(SearchHit { id: point_uuid(p.id)?, score: p.score, payload: payload_map(p.payload), vector: dense_vector(p.vectors) })
}

/// The records among `found` in the order of `asked` (the server answers in its own order); an
/// id asked twice is answered twice.
fn in_asked_order(asked: &[Uuid], found: Vec<ImageRecord>) -> Vec<ImageRecord> {
    let last: HashMap<Uuid, usize> = asked.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut by_id: HashMap<Uuid, ImageRecord> = found.into_iter().map(|r| (r.id, r)).collect();
    let mut out = Vec::with_capacity(asked.len().min(by_id.len()));
    for (i, id) in asked.iter().enumerate() {
        let record = if last[id] == i { by_id.remove(id) } else { by_id.get(id).cloned() };
        out.extend(record);
    }
    out
}

#[async_trait]
impl VectorStore for QdrantVectorStore {
    async fn list_collections(&self) -> Result<Vec<CollectionInfo>, VectorError> {
        let listed = self.client.list_collections().await.map_err(|e| error(e, None))?;
        let mut infos = Vec::new();
        for description in listed.collections {
            let Some(name) = description.name.strip_prefix(&self.prefix) else { continue };
            if CollectionName::parse(name).is_err() {
                continue;
            }
            let info = match self.read_info(name).await {
                Ok(info) => info,
                // Deleted since listed.
                Err(VectorError::CollectionNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let (vector_size, distance) = match collection_params(&info, name) {
                Ok(params) => params,
                Err(e) => {
                    // Not one of ours (no `clip` vector), on a shared server.
                    tracing::debug!(collection = name, reason = %e, "skipping a collection imgfleet did not create");
                    continue;
                }
            };
            self.sizes.lock().expect("sizes lock").insert(name.to_owned(), vector_size);
            match self.count_points(name, None).await {
                Ok(points) => infos.push(CollectionInfo { name: name.to_owned(), vector_size, distance, points }),
                Err(VectorError::CollectionNotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    async fn create_collection(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        let name = spec.name.as_str();
        if spec.vector_size == 0 || spec.vector_size > MAX_VECTOR_SIZE {
            return Err(VectorError::Invalid(format!("vector_size must be between 1 and {MAX_VECTOR_SIZE}")));
        }
        let qname = self.qname(name);
        self.client.create_collection(create_collection_request(&qname, spec)).await.map_err(|e| self.err(e, name))?;
        for request in payload_index_requests(&qname) {
            if let Err(e) = self.client.create_field_index(request).await {
                // Half a collection would filter slowly forever: take it back.
                let _ = self.client.delete_collection(qname.as_str()).await;
                return Err(self.err(e, name));
            }
        }
        self.sizes.lock().expect("sizes lock").insert(name.to_owned(), spec.vector_size);
        Ok(())
    }

    async fn collection(&self, name: &str) -> Result<CollectionInfo, VectorError> {
        self.info(name).await
    }

    async fn delete_collection(&self, name: &str) -> Result<(), VectorError> {
        // The server deletes idempotently (`result: false` when there was nothing): look first.
        self.read_info(name).await?;
        let deleted = self.client.delete_collection(self.qname(name)).await.map_err(|e| self.err(e, name))?;
        self.sizes.lock().expect("sizes lock").remove(name);
        if !deleted.result {
            return Err(VectorError::CollectionNotFound(name.to_owned()));
        }
        Ok(())
    }

    async fn upsert(&self, collection: &str, points: Vec<ImagePoint>) -> Result<(), VectorError> {
        if points.is_empty() {
            return Ok(());
        }
        // Every vector is checked before anything is sent, so a bad batch writes nothing.
        let vectors: Vec<&[f32]> = points.iter().map(|p| p.vector.as_slice()).collect();
        self.check_vectors(collection, &vectors).await?;
        for request in upsert_requests(&self.qname(collection), points) {
            self.client.upsert_points(request).await.map_err(|e| self.err(e, collection))?;
        }
        Ok(())
    }

    async fn set_payload(&self, collection: &str, id: Uuid, payload: Map<String, Value>) -> Result<(), VectorError> {
        let qname = self.qname(collection);
        let exists = !self
            .client
            .get_points(GetPointsBuilder::new(qname.as_str(), vec![PointId::from(id)]).with_payload(false).with_vectors(false))
            .await
            .map_err(|e| self.err(e, collection))?
            .result
            .is_empty();
        if !exists {
            return Err(VectorError::Invalid(format!("point {id} does not exist")));
        }
        if payload.is_empty() {
            return Ok(());
        }
        self.client.set_payload(set_payload_request(&qname, id, payload)).await.map_err(|e| self.err(e, collection))?;
        Ok(())
    }

    async fn delete_points(&self, collection: &str, ids: &[Uuid]) -> Result<(), VectorError> {
        if ids.is_empty() {
            self.read_info(collection).await?;
            return Ok(());
        }
        self.client.delete_points(delete_points_request(&self.qname(collection), ids)).await.map_err(|e| self.err(e, collection))?;
        Ok(())
    }

    async fn search(&self, collection: &str, query: &SearchQuery) -> Result<Vec<SearchHit>, VectorError> {
        let filter = translate(query.filter.as_ref())?;
        self.check_vectors(collection, &[query.vector.as_slice()]).await?;
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let response = self
            .client
            .query(search_request(&self.qname(collection), query, filter))
            .await
            .map_err(|e| self.err(e, collection))?;
        let mut hits = response.result.into_iter().map(hit).collect::<Result<Vec<_>, _>>()?;
        if let Some(t) = query.score_threshold {
            hits.retain(|h| h.score >= t);
        }
        Ok(hits)
    }

    async fn list(&self, collection: &str, query: &ListQuery) -> Result<ListPage, VectorError> {
        let filter = translate(query.filter.as_ref())?;
        let total = self.count_points(collection, filter.clone()).await?;
        if query.limit == 0 {
            return Ok(ListPage { items: Vec::new(), total });
        }
        let response = self
            .client
            .query(list_request(&self.qname(collection), query, filter))
            .await
            .map_err(|e| self.err(e, collection))?;
        let items = response.result.into_iter().map(scored_record).collect::<Result<_, _>>()?;
        Ok(ListPage { items, total })
    }

    async fn scroll(&self, collection: &str, after: Option<Uuid>, limit: usize, with_vector: bool) -> Result<ScrollPage, VectorError> {
        let response = self
            .client
            .scroll(scroll_request(&self.qname(collection), after, limit, with_vector))
            .await
            .map_err(|e| self.err(e, collection))?;
        let items = response.result.into_iter().map(record).collect::<Result<_, _>>()?;
        let next = response.next_page_offset.map(|id| point_uuid(Some(id))).transpose()?;
        Ok(ScrollPage { items, next })
    }

    async fn count(&self, collection: &str, filter: Option<&FilterExpr>) -> Result<u64, VectorError> {
        let filter = translate(filter)?;
        self.count_points(collection, filter).await
    }

    async fn get(&self, collection: &str, ids: &[Uuid], with_vector: bool) -> Result<Vec<ImageRecord>, VectorError> {
        if ids.is_empty() {
            self.read_info(collection).await?;
            return Ok(Vec::new());
        }
        let response = self
            .client
            .get_points(get_request(&self.qname(collection), ids, with_vector))
            .await
            .map_err(|e| self.err(e, collection))?;
        let found = response.result.into_iter().map(record).collect::<Result<Vec<_>, _>>()?;
        Ok(in_asked_order(ids, found))
    }

    async fn random(&self, collection: &str, n: usize, filter: Option<&FilterExpr>) -> Result<Vec<ImageRecord>, VectorError> {
        let filter = translate(filter)?;
        if n == 0 {
            self.read_info(collection).await?;
            return Ok(Vec::new());
        }
        let response = self
            .client
            .query(random_request(&self.qname(collection), n, filter))
            .await
            .map_err(|e| self.err(e, collection))?;
        response.result.into_iter().map(scored_record).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use serde_json::json;

    use super::*;
    use imgfleet_embedded::edge_vectors::filter_json;
    use imgfleet_core::filter::SortSpec;

    fn filter(v: Value) -> FilterExpr {
        FilterExpr::parse(&v).unwrap().unwrap()
    }

    // -- errors --

    /// A real `tonic::Status` as the client hands it over (tonic maps io error kinds to codes).
    fn status(kind: io::ErrorKind, message: &str) -> QdrantError {
        QdrantError::ResponseError { status: io::Error::new(kind, message.to_owned()).into() }
    }

    #[test]
    fn statuses_map_to_port_errors() {
        use io::ErrorKind::*;
        let nf = status(NotFound, "Not found: Collection `x_c` doesn't exist!");
        assert!(matches!(error(nf, Some("c")), VectorError::CollectionNotFound(n) if n == "c"));
        let point = status(NotFound, "Not found: No point with id 00000000-0000-0000-0000-000000000309 found");
        assert!(matches!(error(point, Some("c")), VectorError::Invalid(_)));
        let nf_no_context = status(NotFound, "Not found: something");
        assert!(matches!(error(nf_no_context, None), VectorError::Internal(_)));
        let exists = status(AlreadyExists, "Wrong input: Collection `c` already exists!");
        assert!(matches!(error(exists, Some("c")), VectorError::CollectionExists(n) if n == "c"));
        let invalid = status(InvalidInput, "Wrong input: Vector dimension error: expected dim: 4, got 2");
        assert!(matches!(error(invalid, Some("c")), VectorError::Invalid(m) if m.contains("dimension")));
        let old_exists = status(InvalidInput, "Wrong input: Collection `c` already exists!");
        assert!(matches!(error(old_exists, Some("c")), VectorError::CollectionExists(_)));
        assert!(matches!(error(status(ConnectionRefused, "refused"), Some("c")), VectorError::Unavailable(_)));
        assert!(matches!(error(status(TimedOut, "deadline"), Some("c")), VectorError::Unavailable(_)));
        assert!(matches!(error(status(PermissionDenied, "bad key"), None), VectorError::Unavailable(m) if m.contains("API key")));
        assert!(matches!(error(status(InvalidData, "data loss"), Some("c")), VectorError::Internal(_)));
        assert!(matches!(error(status(BrokenPipe, "Service internal error: boom"), Some("c")), VectorError::Internal(_)));
        assert!(matches!(error(QdrantError::ConversionError("x".into()), None), VectorError::Internal(_)));
    }

    #[test]
    fn status_codes_map_by_number() {
        use grpc_code::*;
        let c = Some("c");
        assert!(matches!(status_error(CANCELLED, "Timeout expired", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(RESOURCE_EXHAUSTED, "rate limit", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(UNAUTHENTICATED, "no key", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(UNAVAILABLE, "down", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(DEADLINE_EXCEEDED, "slow", c), VectorError::Unavailable(_)));
        // The client reports a refused connection as INTERNAL "Failed to connect to …".
        assert!(matches!(
            status_error(INTERNAL, "Failed to connect to http://127.0.0.1:1/: tonic::transport::Error(Transport, ConnectError)", c),
            VectorError::Unavailable(_)
        ));
        assert!(matches!(status_error(UNKNOWN, "transport error", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(INTERNAL, "Service internal error: disk full", c), VectorError::Internal(_)));
        assert!(matches!(status_error(FAILED_PRECONDITION, "locked", c), VectorError::Internal(_)));
        assert!(matches!(status_error(12, "unimplemented", c), VectorError::Internal(_)));
        assert!(matches!(status_error(ALREADY_EXISTS, "alias already exists", None), VectorError::Internal(_)));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("team-a_").is_ok());
        assert!(validate_prefix("a/b").is_err());
        assert!(validate_prefix(&"x".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }

    // -- collections --

    #[test]
    fn collection_creation_names_the_vector_and_maps_distance() {
        for (ours, theirs) in [
            (Distance::Cosine, q::Distance::Cosine),
            (Distance::Dot, q::Distance::Dot),
            (Distance::Euclid, q::Distance::Euclid),
            (Distance::Manhattan, q::Distance::Manhattan),
        ] {
            let spec = CollectionSpec { name: CollectionName::parse("photos").unwrap(), vector_size: 512, distance: ours };
            let request = create_collection_request("p_photos", &spec);
            assert_eq!(request.collection_name, "p_photos");
            let Some(q::vectors_config::Config::ParamsMap(map)) = request.vectors_config.and_then(|v| v.config) else {
                panic!("named vectors expected")
            };
            assert_eq!(map.map.len(), 1);
            let params = &map.map[VECTOR_NAME];
            assert_eq!((params.size, params.distance), (512, theirs as i32));
            assert_eq!(our_distance(params.distance, "photos").unwrap(), ours);
        }
        assert!(our_distance(0, "x").is_err());
    }

    #[test]
    fn every_filter_field_gets_a_payload_index() {
        let requests = payload_index_requests("p_photos");
        assert_eq!(requests.len(), FIELDS.len());
        for (request, field) in requests.iter().zip(FIELDS) {
            assert_eq!(request.collection_name, "p_photos");
            assert_eq!(request.field_name, field.key);
            assert_eq!(request.wait, Some(true));
            assert_eq!(request.field_type, Some(field_type(field.ty) as i32));
        }
        let caption = requests.iter().find(|r| r.field_name == "caption").unwrap();
        assert_eq!(caption.field_type, Some(q::FieldType::Text as i32));
        let paths = requests.iter().find(|r| r.field_name == "paths").unwrap();
        assert_eq!(paths.field_type, Some(q::FieldType::Keyword as i32));
        let taken = requests.iter().find(|r| r.field_name == "taken_at").unwrap();
        assert_eq!(taken.field_type, Some(q::FieldType::Datetime as i32));
    }

    #[test]
    fn collection_params_read_the_named_vector() {
        let spec = CollectionSpec { name: CollectionName::parse("c").unwrap(), vector_size: 4, distance: Distance::Dot };
        let vectors_config = create_collection_request("c", &spec).vectors_config;
        let info = q::CollectionInfo {
            config: Some(q::CollectionConfig {
                params: Some(q::CollectionParams { vectors_config, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(collection_params(&info, "c").unwrap(), (4, Distance::Dot));
        let foreign = q::CollectionInfo::default();
        assert!(matches!(collection_params(&foreign, "c"), Err(VectorError::Internal(m)) if m.contains("vector")));
    }

    // -- filters --

    /// A Qdrant gRPC filter in the JSON form of the REST API, to compare with the embedded
    /// store's translation.
    fn filter_to_json(f: &q::Filter) -> Value {
        let mut out = Map::new();
        for (key, conds) in [("must", &f.must), ("should", &f.should), ("must_not", &f.must_not)] {
            if !conds.is_empty() {
                out.insert(key.into(), Value::Array(conds.iter().map(condition_to_json).collect()));
            }
        }
        assert!(f.min_should.is_none());
        Value::Object(out)
    }

    fn ts_json(t: &Option<q::Timestamp>) -> Option<Value> {
        t.map(|t| json!(DateTime::<Utc>::from_timestamp(t.seconds, t.nanos as u32).unwrap().to_rfc3339()))
    }

    fn condition_to_json(c: &q::Condition) -> Value {
        use q::condition::ConditionOneOf;
        use q::r#match::MatchValue;
        match c.condition_one_of.as_ref().unwrap() {
            ConditionOneOf::Filter(f) => filter_to_json(f),
            ConditionOneOf::Field(field) => {
                if let Some(m) = &field.r#match {
                    let m = match m.match_value.as_ref().unwrap() {
                        MatchValue::Keyword(s) => json!({"value": s}),
                        MatchValue::Integer(i) => json!({"value": i}),
                        MatchValue::Keywords(r) => json!({"any": r.strings}),
                        MatchValue::Integers(r) => json!({"any": r.integers}),
                        MatchValue::Text(t) => json!({"text": t}),
                        other => panic!("unexpected match {other:?}"),
                    };
                    json!({"key": field.key, "match": m})
                } else if let Some(r) = &field.range {
                    let mut range = Map::new();
                    for (op, b) in [("gt", r.gt), ("gte", r.gte), ("lt", r.lt), ("lte", r.lte)] {
                        if let Some(b) = b {
                            range.insert(op.into(), json!(b));
                        }
                    }
                    json!({"key": field.key, "range": range})
                } else if let Some(r) = &field.datetime_range {
                    let mut range = Map::new();
                    for (op, b) in [("gt", &r.gt), ("gte", &r.gte), ("lt", &r.lt), ("lte", &r.lte)] {
                        if let Some(b) = ts_json(b) {
                            range.insert(op.into(), b);
                        }
                    }
                    json!({"key": field.key, "range": range})
                } else {
                    panic!("unexpected field condition {field:?}")
                }
            }
            other => panic!("unexpected condition {other:?}"),
        }
    }

    #[test]
    fn filters_translate_node_for_node_as_the_embedded_store() {
        let cases = [
            json!({"format": "jpeg"}),
            json!({"camera_make": ["Canon", "Sony"]}),
            json!({"width": {"gte": 110, "lt": 120}}),
            json!({"width": 105}),
            json!({"width": [100, 101]}),
            json!({"taken_at": {"lt": "2024-01-05T00:00:00Z"}}),
            json!({"ingested_at": {"gte": "2024-01-02", "lte": "2024-02-03T04:05:06.789+02:00"}}),
            json!({"caption": "dog beach"}),
            json!({"caption": {"text": "dog"}}),
            json!({"not": {"format": "jpeg"}}),
            json!({"any": [{"width": 100}, {"width": 101}]}),
            json!({"path": "/copies/7.jpg"}),
            json!({"camera_model": "EOS 5D Mark IV"}),
            json!({"all": [{"format": "png"}, {"not": {"caption": "dog"}}], "bytes": {"gt": 10000}}),
            json!({"format": "png", "any": [{"width": {"gte": 10}}, {"not": {"camera_make": ["A", "B"]}}], "caption": "dog", "taken_at": {"lt": "2024-01-01"}}),
        ];
        for case in cases {
            let expr = filter(case.clone());
            let ours = filter_to_json(&qdrant_filter(&expr).unwrap());
            assert_eq!(ours, filter_json(&expr), "filter {case}");
        }
    }

    #[test]
    fn path_filters_match_any_of_paths() {
        let f = qdrant_filter(&filter(json!({"path": "/a b/c.jpg"}))).unwrap();
        let q::condition::ConditionOneOf::Field(field) = f.must[0].condition_one_of.clone().unwrap() else { panic!() };
        assert_eq!(field.key, "paths");
        // A keyword with a space stays a keyword match (the client's From<String> would make it full-text).
        assert_eq!(field.r#match.unwrap().match_value, Some(q::r#match::MatchValue::Keyword("/a b/c.jpg".into())));
    }

    #[test]
    fn datetime_ranges_carry_timestamps() {
        let f = qdrant_filter(&filter(json!({"taken_at": {"gte": "2024-01-02T03:04:05.5Z"}}))).unwrap();
        let q::condition::ConditionOneOf::Field(field) = f.must[0].condition_one_of.clone().unwrap() else { panic!() };
        let range = field.datetime_range.expect("datetime range");
        let expected = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.5Z").unwrap();
        assert_eq!(range.gte, Some(q::Timestamp { seconds: expected.timestamp(), nanos: 500_000_000 }));
        assert_eq!((range.gt, range.lt, range.lte), (None, None, None));
        assert!(field.range.is_none());
    }

    // -- requests --

    fn points(n: u32) -> Vec<ImagePoint> {
        (0..n)
            .map(|i| {
                let Value::Object(payload) = json!({"filename": format!("{i}.jpg"), "width": i}) else { unreachable!() };
                ImagePoint { id: Uuid::from_u128(u128::from(i) + 1), vector: vec![i as f32, 1.0], payload }
            })
            .collect()
    }

    #[test]
    fn upserts_are_batched_and_acknowledged() {
        let requests = upsert_requests("p_c", points(600));
        assert_eq!(requests.iter().map(|r| r.points.len()).collect::<Vec<_>>(), vec![256, 256, 88]);
        assert!(requests.iter().all(|r| r.wait == Some(true) && r.collection_name == "p_c"));
        let first = &requests[0].points[0];
        assert_eq!(first.id, Some(PointId::from(Uuid::from_u128(1))));
        let Some(q::vectors::VectorsOptions::Vectors(named)) = first.vectors.clone().and_then(|v| v.vectors_options) else {
            panic!("named vector expected")
        };
        assert_eq!(named.vectors[VECTOR_NAME].clone().try_into_dense().unwrap(), vec![0.0, 1.0]);
        let payload: Map<String, Value> = Payload::from(first.payload.clone()).into();
        assert_eq!(payload["filename"], "0.jpg");
        assert_eq!(payload["width"], json!(0));
        assert!(upsert_requests("p_c", Vec::new()).is_empty());
        assert_eq!(upsert_requests("p_c", points(256)).len(), 1);
    }

    fn sq(limit: usize, offset: usize, threshold: Option<f32>) -> SearchQuery {
        SearchQuery { vector: vec![0.5, 0.5], filter: None, limit, offset, score_threshold: threshold, with_vector: true }
    }

    #[test]
    fn search_requests_use_the_named_vector_and_lower_the_threshold() {
        let f = qdrant_filter(&filter(json!({"format": "png"}))).unwrap();
        let r = search_request("p_c", &sq(5, 10, Some(0.8)), Some(f.clone()));
        assert_eq!(r.collection_name, "p_c");
        assert_eq!(r.using.as_deref(), Some(VECTOR_NAME));
        assert_eq!((r.limit, r.offset), (Some(5), Some(10)));
        assert_eq!(r.filter, Some(f));
        let t = r.score_threshold.unwrap();
        assert!(t < 0.8 && t > 0.8 - 1e-4, "{t}");
        let Some(q::query::Variant::Nearest(input)) = r.query.and_then(|q| q.variant) else { panic!("nearest query expected") };
        assert_eq!(input, q::VectorInput::new_dense(vec![0.5, 0.5]));
        assert_eq!(r.with_vectors.and_then(|w| w.selector_options), Some(q::with_vectors_selector::SelectorOptions::Enable(true)));
        assert_eq!(r.with_payload.and_then(|w| w.selector_options), Some(q::with_payload_selector::SelectorOptions::Enable(true)));
        let plain = search_request("p_c", &sq(5, 0, None), None);
        assert_eq!((plain.score_threshold, plain.filter), (None, None));
        // "At least" for negative thresholds too.
        assert!(engine_threshold(-2.0) < -2.0);
        assert!(engine_threshold(0.0) < 0.0);
    }

    #[test]
    fn list_requests_order_by_a_field_with_an_offset() {
        let sort = SortSpec::parse("width", Some("desc")).unwrap();
        let f = qdrant_filter(&filter(json!({"format": "png"}))).unwrap();
        let query = ListQuery { filter: None, sort: Some(sort), offset: 20, limit: 10 };
        let r = list_request("p_c", &query, Some(f.clone()));
        assert_eq!((r.limit, r.offset, r.filter), (Some(10), Some(20), Some(f)));
        let Some(q::query::Variant::OrderBy(order)) = r.query.and_then(|q| q.variant) else { panic!("order_by query expected") };
        assert_eq!((order.key.as_str(), order.direction), ("width", Some(q::Direction::Desc as i32)));
        assert_eq!(r.with_vectors.and_then(|w| w.selector_options), Some(q::with_vectors_selector::SelectorOptions::Enable(false)));
        let asc = list_request("p_c", &ListQuery { sort: Some(SortSpec::parse("taken_at", None).unwrap()), ..query.clone() }, None);
        let Some(q::query::Variant::OrderBy(order)) = asc.query.and_then(|q| q.variant) else { panic!() };
        assert_eq!((order.key.as_str(), order.direction), ("taken_at", Some(q::Direction::Asc as i32)));
        // Unsorted: by id, still with an offset.
        let by_id = list_request("p_c", &ListQuery { sort: None, ..query }, None);
        assert_eq!((by_id.query, by_id.offset), (None, Some(20)));
    }

    #[test]
    fn random_scroll_count_and_get_requests() {
        let r = random_request("p_c", 3, None);
        assert_eq!(r.query.and_then(|q| q.variant), Some(q::query::Variant::Sample(q::Sample::Random as i32)));
        assert_eq!((r.limit, r.offset), (Some(3), None));

        let after = Uuid::from_u128(7);
        let s = scroll_request("p_c", Some(after), 0, true);
        assert_eq!((s.offset, s.limit), (Some(PointId::from(after)), Some(1)));
        assert_eq!(s.order_by, None);
        assert_eq!(s.with_vectors.and_then(|w| w.selector_options), Some(q::with_vectors_selector::SelectorOptions::Enable(true)));
        assert_eq!(scroll_request("p_c", None, 7, false).offset, None);

        let f = qdrant_filter(&filter(json!({"caption": "dog"}))).unwrap();
        let c = count_request("p_c", Some(f.clone()));
        assert_eq!((c.exact, c.filter), (Some(true), Some(f)));

        let ids = [Uuid::from_u128(2), Uuid::from_u128(1)];
        let g = get_request("p_c", &ids, false);
        assert_eq!(g.ids, vec![PointId::from(ids[0]), PointId::from(ids[1])]);
        assert_eq!(g.with_vectors.and_then(|w| w.selector_options), Some(q::with_vectors_selector::SelectorOptions::Enable(false)));

        let d = delete_points_request("p_c", &ids);
        assert_eq!(d.wait, Some(true));
        let Some(q::points_selector::PointsSelectorOneOf::Points(list)) = d.points.and_then(|p| p.points_selector_one_of) else { panic!() };
        assert_eq!(list.ids.len(), 2);

        let Value::Object(extra) = json!({"paths": ["/a", "/b"]}) else { unreachable!() };
        let p = set_payload_request("p_c", ids[0], extra);
        assert_eq!((p.wait, p.key.as_deref()), (Some(true), None));
        assert_eq!(Value::from(Payload::from(p.payload)), json!({"paths": ["/a", "/b"]}));
        let Some(q::points_selector::PointsSelectorOneOf::Points(list)) = p.points_selector.and_then(|p| p.points_selector_one_of) else { panic!() };
        assert_eq!(list.ids, vec![PointId::from(ids[0])]);
    }

    #[test]
    fn records_convert_and_come_back_in_the_order_asked() {
        let id = Uuid::from_u128(5);
        let point = q::RetrievedPoint {
            id: Some(PointId::from(id)),
            payload: Payload::from(json!({"width": 3, "paths": ["/x"]}).as_object().unwrap().clone()).into(),
            vectors: Some(q::VectorsOutput {
                vectors_options: Some(q::vectors_output::VectorsOptions::Vectors(q::NamedVectorsOutput {
                    vectors: HashMap::from([(
                        VECTOR_NAME.to_owned(),
                        q::VectorOutput {
                            vector: Some(q::vector_output::Vector::Dense(q::DenseVector { data: vec![1.0, 2.0] })),
                            ..Default::default()
                        },
                    )]),
                })),
            }),
            ..Default::default()
        };
        let r = record(point).unwrap();
        assert_eq!((r.id, r.payload["width"].as_u64(), r.vector.as_deref()), (id, Some(3), Some(&[1.0, 2.0][..])));
        assert!(point_uuid(Some(PointId::from(3u64))).is_err());

        let rec = |n: u128| ImageRecord { id: Uuid::from_u128(n), payload: Map::new(), vector: None };
        let asked = [Uuid::from_u128(3), Uuid::from_u128(9), Uuid::from_u128(1), Uuid::from_u128(3)];
        let got = in_asked_order(&asked, vec![rec(1), rec(3)]);
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![asked[0], asked[2], asked[0]]);
    }

    #[test]
    fn vectors_are_checked_like_the_embedded_store() {
        assert!(matches!(check_vector("c", 4, &[1.0, 2.0]), Err(VectorError::Invalid(m)) if m.contains("dimensions")));
        assert!(matches!(check_vector("c", 2, &[1.0, f32::NAN]), Err(VectorError::Invalid(m)) if m.contains("finite")));
        assert!(check_vector("c", 2, &[1.0, 2.0]).is_ok());
    }
}
