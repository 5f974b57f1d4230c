//! The requests the store sends, each built by a pure function so that it is unit-tested
//! without a server: collection creation with its payload indexes, our filters translated node
//! for node as the embedded store does, and the point requests (upsert, payload, delete, search,
//! list, random, scroll, count, get).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use qdrant_client::Payload;
use qdrant_client::qdrant::{
    self as q, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder,
    GetPointsBuilder, OrderByBuilder, PointId, PointsIdsList, QueryPointsBuilder, ScrollPointsBuilder,
    SetPayloadPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder, VectorsConfigBuilder,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use imgfleet_core::domain::{CollectionSpec, ImagePoint, ListQuery, SearchQuery, VECTOR_NAME};
use imgfleet_core::filter::{Bound, Condition, FIELDS, FilterExpr, RangeBounds, Scalar, SortOrder};
use imgfleet_core::ports::vectors::VectorError;

use super::conversions::{field_type, qdrant_distance};
use super::errors::internal;

/// Most points sent in one upsert request (a 512-float point is about 2 KiB plus its payload).
pub const UPSERT_BATCH: usize = 256;

// ---- collections ----

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

pub(super) fn translate(expr: Option<&FilterExpr>) -> Result<Option<q::Filter>, VectorError> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::qdrant_vectors::conversions::our_distance;
    use imgfleet_core::domain::{CollectionName, Distance};
    use imgfleet_core::filter::SortSpec;
    use imgfleet_embedded::edge_vectors::filter_json;

    fn filter(v: Value) -> FilterExpr {
        FilterExpr::parse(&v).unwrap().unwrap()
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
}
