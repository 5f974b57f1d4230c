//! Our filters as qdrant-edge's: [`filter_json`] writes a [`FilterExpr`] node for node as
//! Qdrant's JSON filter (`all` → `must`, `any` → `should`, `not` → `must_not`, a field condition
//! → `match` / `range`), the form shared with the REST API, and the engine's `Filter` is read
//! from that.

use serde_json::{Map, Value, json};

use imgfleet_core::filter::{Bound, Condition, FilterExpr, Scalar};
use imgfleet_core::ports::vectors::VectorError;

use super::internal;

fn scalar_json(s: &Scalar) -> Value {
    match s {
        Scalar::Str(s) => json!(s),
        Scalar::Int(i) => json!(i),
    }
}

fn bound_json(b: &Option<Bound>) -> Value {
    match b {
        None => Value::Null,
        Some(Bound::Number(n)) => json!(n),
        Some(Bound::Datetime(t)) => json!(t.to_rfc3339()),
    }
}

/// Our filter as a Qdrant filter (its JSON form, shared with the REST API).
pub fn filter_json(expr: &FilterExpr) -> Value {
    match expr {
        FilterExpr::All(parts) => json!({"must": parts.iter().map(filter_json).collect::<Vec<_>>()}),
        FilterExpr::Any(parts) => json!({"should": parts.iter().map(filter_json).collect::<Vec<_>>()}),
        FilterExpr::Not(inner) => json!({"must_not": [filter_json(inner)]}),
        FilterExpr::Field { field, cond } => {
            let condition = match cond {
                Condition::Eq(v) => json!({"key": field.key, "match": {"value": scalar_json(v)}}),
                Condition::AnyOf(vs) => {
                    json!({"key": field.key, "match": {"any": vs.iter().map(scalar_json).collect::<Vec<_>>()}})
                }
                Condition::Text(t) => json!({"key": field.key, "match": {"text": t}}),
                Condition::Range(r) => {
                    let mut range = Map::new();
                    for (op, b) in [("gt", &r.gt), ("gte", &r.gte), ("lt", &r.lt), ("lte", &r.lte)] {
                        if b.is_some() {
                            range.insert(op.into(), bound_json(b));
                        }
                    }
                    json!({"key": field.key, "range": range})
                }
            };
            json!({"must": [condition]})
        }
    }
}

pub(super) fn edge_filter(expr: Option<&FilterExpr>) -> Result<Option<qdrant_edge::Filter>, VectorError> {
    expr.map(|e| serde_json::from_value(filter_json(e)).map_err(|e| internal(format!("filter translation: {e}"))))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgfleet_core::filter::FilterExpr;

    #[test]
    fn filters_translate_to_qdrant_json() {
        let expr = FilterExpr::parse(&json!({
            "format": "png",
            "any": [{"width": {"gte": 10}}, {"not": {"camera_make": ["A", "B"]}}],
            "caption": "dog",
            "taken_at": {"lt": "2024-01-01"}
        }))
        .unwrap()
        .unwrap();
        let parsed: qdrant_edge::Filter = serde_json::from_value(filter_json(&expr)).expect("valid qdrant filter");
        let text = format!("{parsed:?}");
        for needle in ["format", "width", "camera_make", "caption", "taken_at"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }
}
