//! `VectorStore` on a Qdrant server, over gRPC with `qdrant-client`.
//!
//! It keeps the semantics of the embedded adapter (`imgfleet_embedded::edge_vectors`) exactly: one named
//! dense vector [`VECTOR_NAME`](imgfleet_core::domain::VECTOR_NAME) per point, a payload index for
//! every filter field created with the collection, the same filter translation, a score threshold
//! that means "at least", listings through the query API (any sort, with an offset) and a total
//! through an exact count, scrolls by id, random draws through `sample`, payload merges, and `get`
//! in the order asked.
//!
//! Every request is built by a pure function (`*_request`, in `requests`) and every error goes
//! through [`status_error`] (in `errors`), so both are unit-tested without a server; what comes
//! back is read in `conversions`. This file holds the store itself: the connection, the
//! collection-size cache and the port. The contract suite runs against a real server when
//! `QDRANT_URL` is set.
//!
//! Collections may live under a name prefix ([`QdrantVectorStore::with_prefix`]), so that several
//! deployments (or test runs) can share one server; the prefix is invisible through the port.

mod conversions;
mod errors;
mod requests;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::{self as q, GetPointsBuilder, PointId};
use qdrant_client::{Qdrant, QdrantError};
use serde_json::{Map, Value};
use uuid::Uuid;

use imgfleet_core::domain::{
    CollectionInfo, CollectionName, CollectionSpec, Distance, ImagePoint, ImageRecord, ListPage, ListQuery, MAX_VECTOR_SIZE,
    ScrollPage, SearchHit, SearchQuery,
};
use imgfleet_core::filter::FilterExpr;
use imgfleet_core::ports::vectors::{VectorError, VectorStore};

use conversions::{check_vector, hit, in_asked_order, point_uuid, record, scored_record};
use requests::translate;

// The request builders, the error mapping and the conversions stay reachable where they were
// before the split (`imgfleet_fleet::qdrant_vectors::…`).
pub use conversions::{collection_params, qdrant_distance};
pub use errors::{error, grpc_code, status_error};
pub use requests::{
    UPSERT_BATCH, count_request, create_collection_request, delete_points_request, engine_threshold, get_request, list_request,
    payload_index_requests, qdrant_filter, random_request, scroll_request, search_request, set_payload_request, upsert_requests,
};

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
    use super::*;

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("team-a_").is_ok());
        assert!(validate_prefix("a/b").is_err());
        assert!(validate_prefix(&"x".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }
}
