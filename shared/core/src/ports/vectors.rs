//! Vector store port: collections of image points, searched by vector and listed by payload.

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{
    CollectionInfo, CollectionSpec, ImagePoint, ImageRecord, ListPage, ListQuery, ScrollPage,
    SearchHit, SearchQuery,
};
use crate::filter::FilterExpr;

#[derive(Debug, Clone, thiserror::Error)]
pub enum VectorError {
    #[error("collection {0:?} not found")]
    CollectionNotFound(String),
    #[error("collection {0:?} already exists")]
    CollectionExists(String),
    /// The request does not fit the collection (wrong vector size, bad value).
    #[error("{0}")]
    Invalid(String),
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    /// The disk under the store is full: writes fail until space is made.
    #[error("vector store disk full: {0}")]
    StorageFull(String),
    #[error("vector store error: {0}")]
    Internal(String),
}

#[async_trait]
pub trait VectorStore: Send + Sync + 'static {
    /// Sorted by name.
    async fn list_collections(&self) -> Result<Vec<CollectionInfo>, VectorError>;

    /// Creates the collection with a payload index for every filter field.
    async fn create_collection(&self, spec: &CollectionSpec) -> Result<(), VectorError>;

    async fn collection(&self, name: &str) -> Result<CollectionInfo, VectorError>;

    async fn delete_collection(&self, name: &str) -> Result<(), VectorError>;

    /// Inserts or replaces points by id. Durable when it returns.
    async fn upsert(&self, collection: &str, points: Vec<ImagePoint>) -> Result<(), VectorError>;

    /// Merges keys into a point's payload.
    async fn set_payload(
        &self,
        collection: &str,
        id: Uuid,
        payload: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), VectorError>;

    async fn delete_points(&self, collection: &str, ids: &[Uuid]) -> Result<(), VectorError>;

    /// Nearest first.
    async fn search(&self, collection: &str, query: &SearchQuery) -> Result<Vec<SearchHit>, VectorError>;

    /// A page of points, by id or by a sortable field, and the total matching.
    async fn list(&self, collection: &str, query: &ListQuery) -> Result<ListPage, VectorError>;

    /// Every point in id order, `limit` at a time, from `after`.
    async fn scroll(
        &self,
        collection: &str,
        after: Option<Uuid>,
        limit: usize,
        with_vector: bool,
    ) -> Result<ScrollPage, VectorError>;

    async fn count(&self, collection: &str, filter: Option<&FilterExpr>) -> Result<u64, VectorError>;

    /// The points that exist among `ids`, in the order asked.
    async fn get(&self, collection: &str, ids: &[Uuid], with_vector: bool) -> Result<Vec<ImageRecord>, VectorError>;

    /// Up to `n` points drawn at random.
    async fn random(&self, collection: &str, n: usize, filter: Option<&FilterExpr>) -> Result<Vec<ImageRecord>, VectorError>;
}
