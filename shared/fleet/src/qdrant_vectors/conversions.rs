//! Conversions between Qdrant's types and the domain's: distances and field types, a
//! collection's vector parameters, points back as records and hits (ids, payloads, the named
//! vector), and the checks a vector passes before it is sent.

use std::collections::HashMap;

use qdrant_client::Payload;
use qdrant_client::qdrant::{self as q, PointId};
use serde_json::{Map, Value};
use uuid::Uuid;

use imgfleet_core::domain::{Distance, ImageRecord, SearchHit, VECTOR_NAME};
use imgfleet_core::filter::FieldType;
use imgfleet_core::ports::vectors::VectorError;

use super::errors::internal;

// ---- collections ----

pub fn qdrant_distance(d: Distance) -> q::Distance {
    match d {
        Distance::Cosine => q::Distance::Cosine,
        Distance::Dot => q::Distance::Dot,
        Distance::Euclid => q::Distance::Euclid,
        Distance::Manhattan => q::Distance::Manhattan,
    }
}

pub(super) fn our_distance(d: i32, name: &str) -> Result<Distance, VectorError> {
    match q::Distance::try_from(d) {
        Ok(q::Distance::Cosine) => Ok(Distance::Cosine),
        Ok(q::Distance::Dot) => Ok(Distance::Dot),
        Ok(q::Distance::Euclid) => Ok(Distance::Euclid),
        Ok(q::Distance::Manhattan) => Ok(Distance::Manhattan),
        _ => Err(VectorError::Internal(format!("collection {name:?} has an unknown distance ({d})"))),
    }
}

pub(super) fn field_type(ty: FieldType) -> q::FieldType {
    match ty {
        FieldType::Keyword => q::FieldType::Keyword,
        FieldType::Integer => q::FieldType::Integer,
        FieldType::Float => q::FieldType::Float,
        FieldType::Datetime => q::FieldType::Datetime,
        FieldType::Text => q::FieldType::Text,
    }
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

// ---- points ----

pub(super) fn check_vector(name: &str, size: usize, vector: &[f32]) -> Result<(), VectorError> {
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

pub(super) fn point_uuid(id: Option<PointId>) -> Result<Uuid, VectorError> {
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

pub(super) fn record(p: q::RetrievedPoint) -> Result<ImageRecord, VectorError> {
    Ok(ImageRecord { id: point_uuid(p.id)?, payload: payload_map(p.payload), vector: dense_vector(p.vectors) })
}

pub(super) fn scored_record(p: q::ScoredPoint) -> Result<ImageRecord, VectorError> {
    Ok(ImageRecord { id: point_uuid(p.id)?, payload: payload_map(p.payload), vector: dense_vector(p.vectors) })
}

pub(super) fn hit(p: q::ScoredPoint) -> Result<SearchHit, VectorError> {
    Ok(SearchHit { id: point_uuid(p.id)?, score: p.score, payload: payload_map(p.payload), vector: dense_vector(p.vectors) })
}

/// The records among `found` in the order of `asked` (the server answers in its own order); an
/// id asked twice is answered twice.
pub(super) fn in_asked_order(asked: &[Uuid], found: Vec<ImageRecord>) -> Vec<ImageRecord> {
    let last: HashMap<Uuid, usize> = asked.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut by_id: HashMap<Uuid, ImageRecord> = found.into_iter().map(|r| (r.id, r)).collect();
    let mut out = Vec::with_capacity(asked.len().min(by_id.len()));
    for (i, id) in asked.iter().enumerate() {
        let record = if last[id] == i { by_id.remove(id) } else { by_id.get(id).cloned() };
        out.extend(record);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::qdrant_vectors::requests::create_collection_request;
    use imgfleet_core::domain::{CollectionName, CollectionSpec};

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
