//! The OpenAPI document made exact. The handlers' annotations give the operations, bodies and
//! their own statuses; this adds, from the constants the handlers check against, what the
//! annotations cannot say: each field's constraints, the filter language as a schema, the
//! statuses every operation shares (bad JSON, bodies over the limit, missing keys, timeouts),
//! and which key scope each operation needs.

use imgfleet_core::domain::{COLLECTION_NAME_PATTERN, DISTANCE_PATTERN, MAX_VECTOR_SIZE};
use imgfleet_core::filter::{FIELDS, FieldType, MAX_ANY_VALUES, MAX_FILTER_DEPTH, MAX_FILTER_LIST, MAX_FILTER_STRING};
use imgfleet_core::ports::encoder::MAX_TEXT_CHARS;
use serde_json::{Map, Value, json};
use utoipa::OpenApi as _;

use crate::auth::required_scope;
use crate::routes::docs::ApiDoc;
use crate::routes::duplicates::MAX_SCAN;
use crate::routes::images::{MAX_PAGE, MAX_PER_PAGE, MAX_THUMBNAIL_SIDE};
use crate::routes::ingest::MAX_JOBS_LISTED;
use crate::routes::search::{MAX_SEARCH_LIMIT, MAX_SEARCH_OFFSET, MAX_VECTOR_VALUE};
use crate::routes::upload::MAX_EXISTS_HASHES;
use crate::routes::watches::{MAX_INTERVAL_SECS, MIN_INTERVAL_SECS};

/// The string format of an uploaded image: base64 of an image file (JPEG, PNG, WebP, GIF, BMP,
/// TIFF), or a data URL of one.
pub const IMAGE_FORMAT: &str = "image-base64";

/// A string holding something other than whitespace (what `str::trim` removes).
const NOT_BLANK: &str = "[^\\t\\n\\u000B\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]";

/// An absolute path without a `..` component.
const ABSOLUTE_PATH: &str = "^(/(?!\\.\\.(/|$))[^/]*)+$";

/// Longest path the server resolves.
const MAX_PATH_LEN: usize = 4096;

/// The document this server serves: `keys` says whether it asks for API keys.
pub fn document(keys: bool) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    add_filter_schemas(&mut doc);
    constrain_bodies(&mut doc);
    constrain_parameters(&mut doc);
    add_shared_responses(&mut doc, keys);
    doc
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn nullable(schema: Value) -> Value {
    json!({ "oneOf": [schema, { "type": "null" }] })
}

fn schemas(doc: &mut Value) -> &mut Map<String, Value> {
    doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut).expect("components.schemas")
}

/// Merges `constraints` into property `property` of component schema `schema`.
fn constrain(doc: &mut Value, schema: &str, property: &str, constraints: Value) {
    let target = schemas(doc)
        .get_mut(schema)
        .and_then(|s| s.pointer_mut(&format!("/properties/{property}")))
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{schema}.{property} is not in the document"));
    for (key, value) in constraints.as_object().expect("an object of constraints") {
        target.insert(key.clone(), value.clone());
    }
}

/// Replaces property `property` of `schema` with `replacement`.
fn replace(doc: &mut Value, schema: &str, property: &str, replacement: Value) {
    let target = schemas(doc)
        .get_mut(schema)
        .and_then(|s| s.pointer_mut(&format!("/properties/{property}")))
        .unwrap_or_else(|| panic!("{schema}.{property} is not in the document"));
    *target = replacement;
}

fn integer(min: i64, max: i64) -> Value {
    json!({ "minimum": min, "maximum": max })
}

fn vector_number() -> Value {
    json!({ "type": "number", "minimum": -MAX_VECTOR_VALUE, "maximum": MAX_VECTOR_VALUE })
}

fn constrain_bodies(doc: &mut Value) {
    let name = json!({ "pattern": COLLECTION_NAME_PATTERN });
    for (schema, property) in [
        ("CreateCollection", "collection_name"),
        ("SelectCollection", "collection_name"),
        ("SearchRequest", "collection"),
        ("IngestRequest", "collection"),
        ("DuplicatesRequest", "collection"),
        ("ExistsRequest", "collection"),
        ("CreateWatch", "collection"),
    ] {
        constrain(doc, schema, property, name.clone());
    }
    constrain(doc, "CreateCollection", "vector_size", integer(1, MAX_VECTOR_SIZE as i64));
    constrain(doc, "CreateCollection", "distance", json!({ "pattern": DISTANCE_PATTERN }));

    replace(
        doc,
        "SearchRequest",
        "embedding",
        nullable(json!({ "type": "array", "items": vector_number(), "minItems": 1, "maxItems": MAX_VECTOR_SIZE })),
    );
    constrain(doc, "SearchRequest", "text", json!({ "minLength": 1, "maxLength": MAX_TEXT_CHARS }));
    constrain(doc, "SearchRequest", "image_base64", json!({ "format": IMAGE_FORMAT }));
    replace(doc, "SearchRequest", "filters", nullable(schema_ref("Filter")));
    constrain(doc, "SearchRequest", "limit", integer(1, MAX_SEARCH_LIMIT as i64));
    constrain(doc, "SearchRequest", "offset", integer(0, MAX_SEARCH_OFFSET as i64));
    replace(doc, "SearchRequest", "score_threshold", nullable(vector_number()));
    // Exactly one query, and given (not null).
    let one_of: Vec<Value> = [("embedding", "array"), ("text", "string"), ("image_base64", "string"), ("like_id", "string")]
        .into_iter()
        .map(|(field, ty)| json!({ "required": [field], "properties": { field: { "type": ty } } }))
        .collect();
    schemas(doc).get_mut("SearchRequest").and_then(Value::as_object_mut).expect("SearchRequest").insert("oneOf".into(), Value::Array(one_of));

    constrain(doc, "IngestRequest", "directory_path", json!({ "pattern": ABSOLUTE_PATH, "maxLength": MAX_PATH_LEN }));
    constrain(
        doc,
        "ExistsRequest",
        "sha256",
        json!({ "maxItems": MAX_EXISTS_HASHES, "items": { "type": "string", "pattern": "^[0-9A-Fa-f]{64}$" } }),
    );
    constrain(doc, "CreateWatch", "interval_seconds", integer(MIN_INTERVAL_SECS as i64, MAX_INTERVAL_SECS as i64));
    constrain(doc, "CreateWatch", "directory_path", json!({ "pattern": ABSOLUTE_PATH, "maxLength": MAX_PATH_LEN }));
    // A bucket prefix (`s3://…`) is taken too where the server has bucket roots; the schema
    // names the form every server takes.
    constrain(doc, "CreateWatch", "source", json!({ "pattern": ABSOLUTE_PATH, "maxLength": MAX_PATH_LEN }));
    // Exactly one of the two names the source.
    let one_of = json!([
        { "required": ["directory_path"], "properties": { "directory_path": { "type": "string" }, "source": { "type": "null" } } },
        { "required": ["source"], "properties": { "source": { "type": "string" }, "directory_path": { "type": "null" } } },
    ]);
    schemas(doc).get_mut("CreateWatch").and_then(Value::as_object_mut).expect("CreateWatch").insert("oneOf".into(), one_of);
    // The upload's parts: files named `file` (the optional `collection` text part must come
    // first, which a schema cannot say; the description does).
    let upload = json!({
        "type": "object",
        "required": ["file"],
        "properties": { "file": { "type": "array", "minItems": 1, "maxItems": crate::routes::upload::MAX_FILES_PER_UPLOAD, "items": { "type": "string", "format": "binary" } } },
        "additionalProperties": false,
    });
    if let Some(body) = doc.pointer_mut("/paths/~1api~1v1~1ingest~1upload/post/requestBody").and_then(Value::as_object_mut) {
        body.insert("required".into(), Value::Bool(true));
    }
    if let Some(content) = doc.pointer_mut("/paths/~1api~1v1~1ingest~1upload/post/requestBody/content/multipart~1form-data").and_then(Value::as_object_mut) {
        content.insert("schema".into(), upload);
    }

    replace(doc, "DuplicatesRequest", "threshold", nullable(json!({ "type": "number", "minimum": -1.0, "maximum": 1.0 })));
    constrain(doc, "DuplicatesRequest", "limit", integer(1, 1000));
    constrain(doc, "DuplicatesRequest", "max_points", integer(1, MAX_SCAN as i64));
    // The body is optional: an empty one means every default.
    if let Some(body) = doc.pointer_mut("/paths/~1api~1v1~1duplicates/post/requestBody").and_then(Value::as_object_mut) {
        body.insert("required".into(), Value::Bool(false));
    }
}

/// The parameter `name` of an operation.
fn parameter<'a>(doc: &'a mut Value, path: &str, method: &str, name: &str) -> &'a mut Map<String, Value> {
    let pointer = format!("/paths/{}/{method}/parameters", path.replace('~', "~0").replace('/', "~1"));
    doc.pointer_mut(&pointer)
        .and_then(Value::as_array_mut)
        .and_then(|ps| ps.iter_mut().find(|p| p["name"] == name))
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

fn constrain_parameter(doc: &mut Value, path: &str, method: &str, name: &str, constraints: Value) {
    let param = parameter(doc, path, method, name);
    let schema = param.entry("schema").or_insert_with(|| json!({})).as_object_mut().expect("a schema object");
    for (key, value) in constraints.as_object().expect("an object of constraints") {
        schema.insert(key.clone(), value.clone());
    }
}

fn constrain_parameters(doc: &mut Value) {
    // A query string cannot say `null`: an optional parameter is one that may be left out.
    for item in doc.get_mut("paths").and_then(Value::as_object_mut).into_iter().flat_map(|p| p.values_mut()) {
        for operation in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            for param in operation.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(types) = param.pointer_mut("/schema/type").and_then(Value::as_array_mut) {
                    types.retain(|t| t != "null");
                    if types.len() == 1 {
                        let only = types[0].clone();
                        param["schema"]["type"] = only;
                    }
                }
            }
        }
    }
    let name = json!({ "pattern": COLLECTION_NAME_PATTERN });
    for (path, method) in [("/api/v1/collections/{name}", "get"), ("/api/v1/collections/{name}", "delete")] {
        constrain_parameter(doc, path, method, "name", name.clone());
    }
    for (path, method) in [
        ("/api/v1/images", "get"),
        ("/api/v1/images/{id}", "get"),
        ("/api/v1/images/{id}", "delete"),
        ("/api/v1/images/{id}/file", "get"),
        ("/api/v1/images/{id}/thumbnail", "get"),
        ("/api/v1/random", "get"),
    ] {
        constrain_parameter(doc, path, method, "collection", name.clone());
    }
    constrain_parameter(doc, "/api/v1/images", "get", "page", integer(1, MAX_PAGE as i64));
    constrain_parameter(doc, "/api/v1/images", "get", "per_page", integer(1, MAX_PER_PAGE as i64));
    let sortable: Vec<&str> = FIELDS.iter().filter(|f| f.ty.sortable()).map(|f| f.name).collect();
    constrain_parameter(doc, "/api/v1/images", "get", "sort_by", json!({ "enum": sortable }));
    constrain_parameter(
        doc,
        "/api/v1/images",
        "get",
        "sort_order",
        json!({ "pattern": "^([Aa][Ss][Cc]([Ee][Nn][Dd][Ii][Nn][Gg])?|[Dd][Ee][Ss][Cc]([Ee][Nn][Dd][Ii][Nn][Gg])?)$" }),
    );
    constrain_parameter(doc, "/api/v1/images/{id}/thumbnail", "get", "size", integer(16, i64::from(MAX_THUMBNAIL_SIDE)));
    constrain_parameter(doc, "/api/v1/jobs", "get", "limit", integer(1, MAX_JOBS_LISTED as i64));
    // Filters travel as JSON text in the query: described as JSON content, with its schema.
    for path in ["/api/v1/images", "/api/v1/random"] {
        let param = parameter(doc, path, "get", "filters");
        param.remove("schema");
        param.insert("content".into(), json!({ "application/json": { "schema": schema_ref("Filter") } }));
    }
}

/// The filter language as JSON Schema: `Filter` (the top level, `{}` meaning no filter), then
/// one schema per nesting level down to [`MAX_FILTER_DEPTH`] (where `all`, `any` and `not` end).
/// Fields are grouped by type with `patternProperties`, which keeps the schema small.
fn add_filter_schemas(doc: &mut Value) {
    let level = |depth: usize| if depth == 0 { "Filter".to_owned() } else { format!("FilterLevel{depth}") };
    let values = |item: Value| json!({ "type": "array", "items": item, "minItems": 1, "maxItems": MAX_ANY_VALUES });
    let string = json!({ "type": "string", "maxLength": MAX_FILTER_STRING });
    let int = json!({ "type": "integer", "minimum": i64::MIN, "maximum": i64::MAX });
    let exact = |scalar: &Value| {
        json!({
            "type": "object",
            "properties": { "eq": scalar, "any": values(scalar.clone()) },
            "additionalProperties": false,
            "minProperties": 1,
        })
    };
    let range = |bound: Value| {
        json!({
            "type": "object",
            "properties": { "gt": bound, "gte": bound, "lt": bound, "lte": bound },
            "additionalProperties": false,
            "minProperties": 1,
        })
    };
    let time = json!({ "type": "string", "anyOf": [{ "format": "date-time" }, { "format": "date" }] });
    let text = json!({ "type": "string", "pattern": NOT_BLANK, "maxLength": MAX_FILTER_STRING });
    let conditions = [
        (FieldType::Keyword, "KeywordCondition", json!({ "oneOf": [string, values(string.clone()), exact(&string)] })),
        (FieldType::Integer, "IntegerCondition", json!({ "oneOf": [int, values(int.clone()), exact(&int), range(json!({ "type": "number" }))] })),
        (FieldType::Float, "FloatCondition", range(json!({ "type": "number" }))),
        (FieldType::Datetime, "DatetimeCondition", range(time)),
        (
            FieldType::Text,
            "TextCondition",
            json!({ "oneOf": [text, {
                "type": "object",
                "properties": { "text": text },
                "required": ["text"],
                "additionalProperties": false,
            }] }),
        ),
    ];
    let mut fields = Map::new();
    for (ty, name, schema) in conditions {
        let names: Vec<&str> = FIELDS.iter().filter(|f| f.ty == ty).map(|f| f.name).collect();
        if names.is_empty() {
            continue;
        }
        schemas(doc).insert(name.into(), schema);
        fields.insert(format!("^({})$", names.join("|")), schema_ref(name));
    }
    for depth in 0..=MAX_FILTER_DEPTH {
        let mut properties = Map::new();
        if depth < MAX_FILTER_DEPTH {
            let next = schema_ref(&level(depth + 1));
            let list = json!({ "type": "array", "items": next, "minItems": 1, "maxItems": MAX_FILTER_LIST });
            properties.insert("all".into(), list.clone());
            properties.insert("any".into(), list);
            properties.insert("not".into(), next);
        }
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            "patternProperties": fields,
            "additionalProperties": false,
            "minProperties": if depth == 0 { 0 } else { 1 },
        });
        if depth == 0 {
            schema["description"] = Value::String(format!(
                "The filter language (README): every entry must hold; `{{}}` is no filter. At most \
                 {MAX_FILTER_DEPTH} levels of all / any / not."
            ));
        }
        schemas(doc).insert(level(depth), schema);
    }
}

/// Statuses every operation of a kind can return, added where an operation does not list
/// them already: 400/413/415/422 for a JSON body, 422 for parameters, 401/403 when keys are
/// configured (with the operation's scope), 503 (a deadline passed, a store is away) and 500.
fn add_shared_responses(doc: &mut Value, keys: bool) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, operation) in item.iter_mut() {
            let Ok(http_method) = method.to_uppercase().parse::<axum::http::Method>() else { continue };
            let Some(operation) = operation.as_object_mut() else { continue };
            let mut add: Vec<(u16, &str)> = Vec::new();
            if operation.contains_key("requestBody") {
                add.extend([(400, "the body is not JSON"), (413, "the body is over the size limit"), (415, "the body is not sent as application/json"), (422, "a value is not acceptable")]);
            }
            let parameters = operation.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
            if !parameters.is_empty() {
                add.push((422, "a parameter is not acceptable"));
            }
            if parameters.iter().any(|p| p["in"] == "query") {
                add.push((414, "the URL is longer than the HTTP server takes (64 KiB)"));
            }
            let api = path.starts_with("/api/v1/");
            if api && keys {
                let scope = required_scope(&http_method, path);
                add.extend([(401, "no x-api-key, or an unknown one"), (403, "the key's scope is too low")]);
                operation.insert("security".into(), json!([{ "api_key": [] }]));
                let description = operation.get("description").and_then(Value::as_str).unwrap_or_default();
                let scoped = format!("{description}\n\nNeeds a key with scope `{scope}` (or higher).").trim().to_owned();
                operation.insert("description".into(), Value::String(scoped));
            }
            if api && required_scope(&http_method, path) >= imgfleet_http::Scope::Write {
                add.push((507, "a store's disk is full: reads still work, writes again once space is made"));
            }
            if api || path == "/readyz" {
                add.push((500, "an internal error"));
            }
            add.push((503, "a deadline passed or a store does not answer"));
            let responses = operation.entry("responses").or_insert_with(|| json!({})).as_object_mut().expect("responses");
            for (status, why) in add {
                responses.entry(status.to_string()).or_insert_with(|| {
                    if status == 414 {
                        // Refused by the HTTP layer before any handler runs: no body.
                        return json!({ "description": why });
                    }
                    json!({ "description": why, "content": { "application/json": { "schema": schema_ref("ErrorBody") } } })
                });
            }
        }
    }
    // Original files are served with their own content type.
    if let Some(ok) = doc.pointer_mut("/paths/~1api~1v1~1images~1{id}~1file/get/responses/200/content") {
        let schema = json!({ "type": "string", "format": "binary" });
        *ok = json!({ "image/*": { "schema": schema }, "application/octet-stream": { "schema": schema } });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_constraint_and_shared_status() {
        let doc = document(true);
        let search = &doc["components"]["schemas"]["SearchRequest"];
        assert_eq!(search["properties"]["limit"]["maximum"], MAX_SEARCH_LIMIT);
        assert_eq!(search["oneOf"].as_array().map(Vec::len), Some(4));
        assert_eq!(doc["components"]["schemas"]["CreateCollection"]["properties"]["collection_name"]["pattern"], COLLECTION_NAME_PATTERN);
        for depth in 1..=MAX_FILTER_DEPTH {
            assert!(doc["components"]["schemas"][format!("FilterLevel{depth}")].is_object(), "level {depth}");
        }
        assert!(doc["components"]["schemas"][format!("FilterLevel{MAX_FILTER_DEPTH}")]["properties"].get("all").is_none());
        let images = &doc["paths"]["/api/v1/images"]["get"]["parameters"];
        assert!(images.as_array().unwrap().iter().all(|p| p["in"] == "query" && p["required"] == false), "{images}");
        let delete = &doc["paths"]["/api/v1/collections/{name}"]["delete"];
        for status in ["200", "401", "403", "404", "422", "500", "503"] {
            assert!(delete["responses"].get(status).is_some(), "DELETE /collections/{{name}} lacks {status}");
        }
        assert!(delete["description"].as_str().unwrap().contains("scope `admin`"), "{delete}");
        let search_op = &doc["paths"]["/api/v1/search"]["post"]["responses"];
        for status in ["200", "400", "404", "409", "413", "415", "422", "429", "503"] {
            assert!(search_op.get(status).is_some(), "POST /search lacks {status}");
        }
        let open = document(false);
        assert!(open["paths"]["/api/v1/search"]["post"]["responses"].get("401").is_none());
        assert!(doc["paths"]["/healthz"]["get"]["responses"].get("401").is_none(), "probes need no key");
    }
}
