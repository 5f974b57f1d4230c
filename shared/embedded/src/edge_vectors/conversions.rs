//! Conversions between qdrant-edge's types and the domain's: distances and payload field types,
//! point ids, payloads and the named vector of what comes back as records and hits, and the
//! query request the store pages through (the engine answers from the first result on, so the
//! offset is cut here).

use qdrant_edge::{
    Payload, PayloadSchemaType, PointId, QueryRequest, Record, ScoredPoint, ScoringQuery, VectorInternal,
    VectorStructInternal, WithPayloadInterface, WithVector,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use imgfleet_core::domain::{Distance, ImageRecord, VECTOR_NAME};
use imgfleet_core::filter::FieldType;
use imgfleet_core::ports::vectors::VectorError;

use super::internal;

// ---- distances and field types ----

pub(super) fn edge_distance(d: Distance) -> qdrant_edge::Distance {
    match d {
        Distance::Cosine => qdrant_edge::Distance::Cosine,
        Distance::Dot => qdrant_edge::Distance::Dot,
        Distance::Euclid => qdrant_edge::Distance::Euclid,
        Distance::Manhattan => qdrant_edge::Distance::Manhattan,
    }
}

pub(super) fn our_distance(d: qdrant_edge::Distance) -> Distance {
    match d {
        qdrant_edge::Distance::Cosine => Distance::Cosine,
        qdrant_edge::Distance::Dot => Distance::Dot,
        qdrant_edge::Distance::Euclid => Distance::Euclid,
        qdrant_edge::Distance::Manhattan => Distance::Manhattan,
    }
}

pub(super) fn schema_type(ty: FieldType) -> PayloadSchemaType {
    match ty {
        FieldType::Keyword => PayloadSchemaType::Keyword,
        FieldType::Integer => PayloadSchemaType::Integer,
        FieldType::Float => PayloadSchemaType::Float,
        FieldType::Datetime => PayloadSchemaType::Datetime,
        FieldType::Text => PayloadSchemaType::Text,
    }
}

// ---- points ----

pub(super) fn point_uuid(id: &PointId) -> Result<Uuid, VectorError> {
    match id {
        PointId::Uuid(u) => Ok(*u),
        PointId::NumId(n) => Err(internal(format!("unexpected numeric point id {n}"))),
    }
}

pub(super) fn payload_map(payload: Option<Payload>) -> Map<String, Value> {
    payload.map(|p| p.0.into_iter().collect()).unwrap_or_default()
}

pub(super) fn dense_vector(vector: Option<VectorStructInternal>) -> Option<Vec<f32>> {
    match vector? {
        VectorStructInternal::Single(v) => Some(v),
        VectorStructInternal::Named(mut named) => match named.remove(VECTOR_NAME)? {
            VectorInternal::Dense(v) => Some(v),
            _ => None,
        },
        VectorStructInternal::MultiDense(_) => None,
    }
}

pub(super) fn record(r: Record) -> Result<ImageRecord, VectorError> {
    Ok(ImageRecord { id: point_uuid(&r.id)?, payload: payload_map(r.payload), vector: dense_vector(r.vector) })
}

pub(super) fn scored_record(p: ScoredPoint) -> Result<ImageRecord, VectorError> {
    Ok(ImageRecord { id: point_uuid(&p.id)?, payload: payload_map(p.payload), vector: dense_vector(p.vector) })
}

pub(super) fn with_vector(yes: bool) -> WithVector {
    WithVector::Bool(yes)
}

/// A query for `limit` results after `offset`. The engine answers the first `offset + limit`
/// (its caller is expected to cut the offset), so ask for that and cut here: see [`page`].
pub(super) fn query_request(query: Option<ScoringQuery>, filter: Option<qdrant_edge::Filter>, limit: usize, offset: usize, vectors: bool) -> QueryRequest {
    QueryRequest {
        prefetches: vec![],
        query,
        filter,
        score_threshold: None,
        limit: offset.saturating_add(limit),
        offset: 0,
        params: None,
        with_vector: with_vector(vectors),
        with_payload: WithPayloadInterface::Bool(true),
    }
}

/// Drops the first `offset` results of a [`query_request`].
pub(super) fn page(points: Vec<ScoredPoint>, offset: usize) -> impl Iterator<Item = ScoredPoint> {
    points.into_iter().skip(offset)
}
