//! The filter language of `/search`, `/images`, `/random` and `/duplicates`.
//!
//! A filter is a JSON object; its entries must all hold (AND):
//!
//! ```json
//! {"format": "jpeg",                        // equals
//!  "camera_make": ["Canon", "Nikon"],       // any of
//!  "width": {"gte": 1024, "lt": 4096},      // range (integers, floats, datetimes)
//!  "taken_at": {"gte": "2024-01-01T00:00:00Z"},
//!  "caption": "dog on a beach",             // full-text match (every word)
//!  "any": [{"format": "png"}, {"width": {"gt": 2000}}],   // OR
//!  "not": {"camera_model": "X100"}}                        // NOT
//! ```
//!
//! `all` takes a list of filters that must all hold. Condition objects accept the operators
//! `eq`, `any`, `gt`, `gte`, `lt`, `lte` and `text`. Fields and their types are [`FIELDS`];
//! anything else is refused with a message naming the offending path.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

/// How a payload field is indexed and which operators apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Exact string match: `eq`, `any`.
    Keyword,
    /// Integers: `eq`, `any`, ranges; sortable.
    Integer,
    /// Numbers: ranges; sortable.
    Float,
    /// RFC 3339 timestamps: ranges; sortable.
    Datetime,
    /// Full-text: `text`.
    Text,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Keyword => "keyword",
            Self::Integer => "integer",
            Self::Float => "float",
            Self::Datetime => "datetime",
            Self::Text => "text",
        }
    }

    pub fn sortable(self) -> bool {
        matches!(self, Self::Integer | Self::Float | Self::Datetime)
    }
}

/// A filterable field: the name users write and the payload key it is stored under.
#[derive(Debug, PartialEq, Eq)]
pub struct FieldDef {
    pub name: &'static str,
    pub key: &'static str,
    pub ty: FieldType,
}

/// Every field the filter language knows. Stores create a payload index for each `key`.
pub const FIELDS: &[FieldDef] = &[
    FieldDef { name: "sha256", key: "sha256", ty: FieldType::Keyword },
    // `paths` holds every path with this content, so a filter on `path` finds duplicates' paths too.
    FieldDef { name: "path", key: "paths", ty: FieldType::Keyword },
    FieldDef { name: "filename", key: "filename", ty: FieldType::Keyword },
    FieldDef { name: "format", key: "format", ty: FieldType::Keyword },
    FieldDef { name: "camera_make", key: "camera_make", ty: FieldType::Keyword },
    FieldDef { name: "camera_model", key: "camera_model", ty: FieldType::Keyword },
    FieldDef { name: "job_id", key: "job_id", ty: FieldType::Keyword },
    FieldDef { name: "width", key: "width", ty: FieldType::Integer },
    FieldDef { name: "height", key: "height", ty: FieldType::Integer },
    FieldDef { name: "bytes", key: "bytes", ty: FieldType::Integer },
    FieldDef { name: "mtime", key: "mtime", ty: FieldType::Datetime },
    FieldDef { name: "taken_at", key: "taken_at", ty: FieldType::Datetime },
    FieldDef { name: "ingested_at", key: "ingested_at", ty: FieldType::Datetime },
    FieldDef { name: "caption", key: "caption", ty: FieldType::Text },
];

// The bounds keep a filter's cost bounded (a field at most once per object, 8 filters per list,
// 3 levels) and are all structural, so that its description (the OpenAPI schema, unrolled level
// by level) states them exactly. Deeper or wider filters are rarely needed.
/// Deepest nesting of `all` / `any` / `not` accepted.
pub const MAX_FILTER_DEPTH: usize = 3;
/// Most filters in one `all` or `any` list.
pub const MAX_FILTER_LIST: usize = 8;
/// Most values in one list of values (`any`).
pub const MAX_ANY_VALUES: usize = 64;
/// Longest string value (a keyword such as a path, a caption text), in characters.
pub const MAX_FILTER_STRING: usize = 4096;

pub fn field(name: &str) -> Option<&'static FieldDef> {
    FIELDS.iter().find(|f| f.name == name)
}

fn field_names(pred: impl Fn(&FieldDef) -> bool) -> String {
    FIELDS.iter().filter(|f| pred(f)).map(|f| f.name).collect::<Vec<_>>().join(", ")
}

/// A validated filter.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterExpr {
    All(Vec<FilterExpr>),
    Any(Vec<FilterExpr>),
    Not(Box<FilterExpr>),
    Field { field: &'static FieldDef, cond: Condition },
}

/// A condition on one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Eq(Scalar),
    AnyOf(Vec<Scalar>),
    Range(RangeBounds),
    /// Every word must occur in the text.
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RangeBounds {
    pub gt: Option<Bound>,
    pub gte: Option<Bound>,
    pub lt: Option<Bound>,
    pub lte: Option<Bound>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Number(f64),
    Datetime(DateTime<Utc>),
}

/// A filter the user got wrong; the message names the path (`filters.any[1].width`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FilterError {
    pub path: String,
    pub message: String,
}

struct Parser;

impl FilterExpr {
    /// Parses and validates a filter. `{}` and `null` mean "no filter".
    pub fn parse(value: &Value) -> Result<Option<FilterExpr>, FilterError> {
        let mut parser = Parser;
        match value {
            Value::Null => Ok(None),
            Value::Object(map) if map.is_empty() => Ok(None),
            _ => parser.object(value, "filters", 0).map(Some),
        }
    }

    /// Parses the JSON text of a query parameter.
    pub fn parse_str(text: &str) -> Result<Option<FilterExpr>, FilterError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(text).map_err(|e| FilterError {
            path: "filters".into(),
            message: format!("not valid JSON: {e}"),
        })?;
        Self::parse(&value)
    }
}

fn err(path: &str, message: impl Into<String>) -> FilterError {
    FilterError { path: path.to_owned(), message: message.into() }
}

impl Parser {
    fn object(&mut self, value: &Value, path: &str, depth: usize) -> Result<FilterExpr, FilterError> {
        if depth > MAX_FILTER_DEPTH {
            return Err(err(path, format!("nested deeper than {MAX_FILTER_DEPTH} levels")));
        }
        let Value::Object(map) = value else {
            return Err(err(path, format!("expected an object, got {}", kind(value))));
        };
        if map.is_empty() {
            return Err(err(path, "empty filter object"));
        }
        let mut parts = Vec::with_capacity(map.len());
        for (key, v) in map {
            let sub = format!("{path}.{key}");
            let expr = match key.as_str() {
                "all" | "any" => {
                    let Value::Array(items) = v else {
                        return Err(err(&sub, format!("expected a list of filters, got {}", kind(v))));
                    };
                    if items.is_empty() {
                        return Err(err(&sub, "empty list"));
                    }
                    if items.len() > MAX_FILTER_LIST {
                        return Err(err(&sub, format!("more than {MAX_FILTER_LIST} filters")));
                    }
                    let exprs = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.object(item, &format!("{sub}[{i}]"), depth + 1))
                        .collect::<Result<Vec<_>, _>>()?;
                    if key == "all" { FilterExpr::All(exprs) } else { FilterExpr::Any(exprs) }
                }
                "not" => FilterExpr::Not(Box::new(self.object(v, &sub, depth + 1)?)),
                name => {
                    let Some(def) = field(name) else {
                        return Err(err(
                            &sub,
                            format!(
                                "unknown field {name:?}; filterable fields are {} (and all, any, not)",
                                field_names(|_| true)
                            ),
                        ));
                    };
                    FilterExpr::Field { field: def, cond: condition(def, v, &sub)? }
                }
            };
            parts.push(expr);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one part") } else { FilterExpr::All(parts) })
    }
}

fn condition(def: &'static FieldDef, v: &Value, path: &str) -> Result<Condition, FilterError> {
    match v {
        Value::Array(items) => any_of(def, items, path),
        Value::Object(ops) => {
            if ops.is_empty() {
                return Err(err(path, "empty condition; use eq, any, gt, gte, lt, lte or text"));
            }
            let mut range = RangeBounds::default();
            let mut has_range = false;
            let mut other = None;
            for (op, arg) in ops {
                let sub = format!("{path}.{op}");
                match op.as_str() {
                    "eq" => other = Some(Condition::Eq(scalar(def, arg, &sub)?)),
                    "any" => {
                        let Value::Array(items) = arg else {
                            return Err(err(&sub, format!("expected a list, got {}", kind(arg))));
                        };
                        other = Some(any_of(def, items, &sub)?);
                    }
                    "text" => {
                        if def.ty != FieldType::Text {
                            return Err(err(&sub, format!("`text` applies only to text fields ({})", field_names(|f| f.ty == FieldType::Text))));
                        }
                        let Value::String(s) = arg else {
                            return Err(err(&sub, format!("expected a string, got {}", kind(arg))));
                        };
                        other = Some(text(s, &sub)?);
                    }
                    "gt" | "gte" | "lt" | "lte" => {
                        let b = bound(def, arg, &sub)?;
                        let slot = match op.as_str() {
                            "gt" => &mut range.gt,
                            "gte" => &mut range.gte,
                            "lt" => &mut range.lt,
                            _ => &mut range.lte,
                        };
                        *slot = Some(b);
                        has_range = true;
                    }
                    _ => {
                        return Err(err(
                            &sub,
                            format!("unknown operator {op:?}; use eq, any, gt, gte, lt, lte or text"),
                        ));
                    }
                }
            }
            match (has_range, other) {
                (true, None) => Ok(Condition::Range(range)),
                (false, Some(c)) => Ok(c),
                (true, Some(_)) => Err(err(path, "combine a range with eq/any/text in separate conditions (use `all`)")),
                (false, None) => unreachable!("non-empty operator map"),
            }
        }
        Value::String(s) if def.ty == FieldType::Text => text(s, path),
        _ => Ok(Condition::Eq(scalar(def, v, path)?)),
    }
}

fn any_of(def: &'static FieldDef, items: &[Value], path: &str) -> Result<Condition, FilterError> {
    if items.is_empty() {
        return Err(err(path, "empty list of values"));
    }
    if items.len() > MAX_ANY_VALUES {
        return Err(err(path, format!("more than {MAX_ANY_VALUES} values")));
    }
    let values = items
        .iter()
        .enumerate()
        .map(|(i, v)| scalar(def, v, &format!("{path}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Condition::AnyOf(values))
}

fn text(s: &str, path: &str) -> Result<Condition, FilterError> {
    if s.trim().is_empty() {
        return Err(err(path, "empty text"));
    }
    check_length(s, path)?;
    Ok(Condition::Text(s.to_owned()))
}

fn scalar(def: &FieldDef, v: &Value, path: &str) -> Result<Scalar, FilterError> {
    match (def.ty, v) {
        (FieldType::Keyword, Value::String(s)) => check_length(s, path).map(|()| Scalar::Str(s.clone())),
        (FieldType::Integer, Value::Number(n)) if integer_value(n).is_some() => Ok(Scalar::Int(integer_value(n).expect("checked"))),
        (FieldType::Keyword, _) => Err(err(path, format!("field {:?} holds strings, got {}", def.name, kind(v)))),
        (FieldType::Integer, _) => Err(err(path, format!("field {:?} holds integers, got {}", def.name, kind(v)))),
        (ty, _) => Err(err(
            path,
            format!("field {:?} is a {} field: use {}", def.name, ty.name(), match ty {
                FieldType::Text => "a string or {\"text\": ...}",
                _ => "a range: {\"gte\": ..., \"lt\": ...}",
            }),
        )),
    }
}

fn check_length(s: &str, path: &str) -> Result<(), FilterError> {
    match s.chars().count() {
        n if n > MAX_FILTER_STRING => Err(err(path, format!("{n} characters; at most {MAX_FILTER_STRING} are accepted"))),
        _ => Ok(()),
    }
}

/// A JSON number as an `i64`: an integer, or a float with no fraction (`12.0`) small enough to
/// be exact (an integer past `i64` arrives as a rounded float and must not pass as its neighbour).
fn integer_value(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        let f = n.as_f64()?;
        (f.fract() == 0.0 && f.abs() <= MAX_EXACT_FLOAT).then_some(f as i64)
    })
}

/// 2^53: every whole number up to it is exact as an `f64`.
const MAX_EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

fn bound(def: &FieldDef, v: &Value, path: &str) -> Result<Bound, FilterError> {
    match (def.ty, v) {
        (FieldType::Integer | FieldType::Float, Value::Number(n)) => {
            let f = n.as_f64().ok_or_else(|| err(path, "number out of range"))?;
            Ok(Bound::Number(f))
        }
        (FieldType::Datetime, Value::String(s)) => parse_datetime(s)
            .map(Bound::Datetime)
            .ok_or_else(|| err(path, format!("{s:?} is not an RFC 3339 time or a YYYY-MM-DD date"))),
        (FieldType::Integer | FieldType::Float, _) => Err(err(path, format!("field {:?} takes a number, got {}", def.name, kind(v)))),
        (FieldType::Datetime, _) => Err(err(path, format!("field {:?} takes an RFC 3339 time string, got {}", def.name, kind(v)))),
        (ty, _) => Err(err(path, format!("field {:?} is a {} field: ranges do not apply", def.name, ty.name()))),
    }
}

/// RFC 3339, or a bare date meaning its midnight UTC.
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    Asc,
    Desc,
}

/// A validated sort: a sortable field and a direction.
#[derive(Debug, Clone, PartialEq)]
pub struct SortSpec {
    pub field: &'static FieldDef,
    pub order: SortOrder,
}

impl SortSpec {
    /// `sort_by` must be a sortable field; `sort_order` is `asc` (default) or `desc`.
    pub fn parse(sort_by: &str, sort_order: Option<&str>) -> Result<Self, String> {
        let sortable = || field_names(|f| f.ty.sortable());
        let field = field(sort_by)
            .filter(|f| f.ty.sortable())
            .ok_or_else(|| format!("cannot sort by {sort_by:?}; sortable fields are {}", sortable()))?;
        Ok(Self { field, order: SortOrder::parse(sort_order)? })
    }
}

impl SortOrder {
    /// `asc` (the default) or `desc`, any ASCII case; `ascending` and `descending` too.
    pub fn parse(sort_order: Option<&str>) -> Result<Self, String> {
        match sort_order.map(str::to_ascii_lowercase).as_deref() {
            None | Some("asc") | Some("ascending") => Ok(Self::Asc),
            Some("desc") | Some("descending") => Ok(Self::Desc),
            Some(other) => Err(format!("sort_order must be asc or desc, got {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<Option<FilterExpr>, FilterError> {
        FilterExpr::parse(&v)
    }

    #[test]
    fn shorthand_forms() {
        let f = parse(json!({"format": "jpeg"})).unwrap().unwrap();
        assert!(matches!(f, FilterExpr::Field { cond: Condition::Eq(Scalar::Str(ref s)), .. } if s == "jpeg"));
        let f = parse(json!({"width": [1, 2]})).unwrap().unwrap();
        assert!(matches!(f, FilterExpr::Field { cond: Condition::AnyOf(ref v), .. } if v.len() == 2));
        let f = parse(json!({"caption": "a dog"})).unwrap().unwrap();
        assert!(matches!(f, FilterExpr::Field { cond: Condition::Text(_), .. }));
        let f = parse(json!({"width": {"gte": 10, "lt": 20}})).unwrap().unwrap();
        let FilterExpr::Field { cond: Condition::Range(r), .. } = f else { panic!() };
        assert_eq!(r.gte, Some(Bound::Number(10.0)));
        assert_eq!(r.lt, Some(Bound::Number(20.0)));
        assert_eq!(r.gt, None);
    }

    #[test]
    fn path_maps_to_paths_key() {
        let f = parse(json!({"path": "/a"})).unwrap().unwrap();
        let FilterExpr::Field { field, .. } = f else { panic!() };
        assert_eq!(field.key, "paths");
    }

    #[test]
    fn logic_nests() {
        let f = parse(json!({"any": [{"format": "png"}, {"not": {"width": {"gt": 5}}}], "height": 3}))
            .unwrap()
            .unwrap();
        let FilterExpr::All(parts) = f else { panic!("{f:?}") };
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn empty_means_none() {
        assert_eq!(parse(json!({})).unwrap(), None);
        assert_eq!(parse(Value::Null).unwrap(), None);
        assert_eq!(FilterExpr::parse_str("  ").unwrap(), None);
    }

    #[test]
    fn errors_name_the_path() {
        let e = parse(json!({"any": [{"format": "png"}, {"colour": "red"}]})).unwrap_err();
        assert_eq!(e.path, "filters.any[1].colour");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse(json!({"width": "wide"})).unwrap_err();
        assert!(e.message.contains("integers"), "{e}");
        let e = parse(json!({"width": {"near": 3}})).unwrap_err();
        assert!(e.message.contains("unknown operator"), "{e}");
        let e = parse(json!({"taken_at": {"gte": "yesterday"}})).unwrap_err();
        assert!(e.message.contains("RFC 3339"), "{e}");
        let e = parse(json!({"format": {"gt": 1}})).unwrap_err();
        assert!(e.message.contains("ranges do not apply"), "{e}");
        let e = parse(json!({"taken_at": "2024-01-01"})).unwrap_err();
        assert!(e.message.contains("range"), "{e}");
        assert!(parse(json!([1])).is_err());
        assert!(parse(json!({"any": []})).is_err());
        assert!(parse(json!({"format": null})).is_err());
        assert!(FilterExpr::parse_str("{nope").unwrap_err().message.contains("JSON"));
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut v = json!({"format": "png"});
        for _ in 0..=MAX_FILTER_DEPTH {
            v = json!({"not": v});
        }
        assert!(parse(v).unwrap_err().message.contains("nested"));
        let wide: Vec<Value> = (0..=MAX_FILTER_LIST).map(|_| json!({"format": "png"})).collect();
        assert!(parse(json!({"all": wide})).unwrap_err().message.contains("filters"));
        let long = "x".repeat(MAX_FILTER_STRING + 1);
        assert!(parse(json!({"format": long})).unwrap_err().message.contains("characters"));
        assert!(parse(json!({"caption": long})).is_err());
        let values: Vec<Value> = (0..=MAX_ANY_VALUES).map(|i| json!(i)).collect();
        assert!(parse(json!({"width": values})).is_err());
        assert!(parse(json!({"width": {"eq": 12.0}})).is_ok(), "an integral float is an integer");
        assert!(parse(json!({"width": {"eq": 12.5}})).is_err());
        let below: Value = serde_json::from_str("-9223372036854775809").unwrap();
        assert!(parse(json!({"width": below})).is_err(), "past i64, not rounded into it");
        let above: Value = serde_json::from_str("9223372036854775808").unwrap();
        assert!(parse(json!({"width": above})).is_err());
    }

    #[test]
    fn dates_parse() {
        assert!(parse_datetime("2024-01-02").is_some());
        assert!(parse_datetime("2024-01-02T03:04:05+02:00").is_some());
        assert!(parse_datetime("2024-13-02").is_none());
    }

    #[test]
    fn sort_specs() {
        let s = SortSpec::parse("width", Some("DESC")).unwrap();
        assert_eq!((s.field.name, s.order), ("width", SortOrder::Desc));
        assert!(SortSpec::parse("caption", None).unwrap_err().contains("sortable fields"));
        assert!(SortSpec::parse("width", Some("up")).is_err());
    }
}
