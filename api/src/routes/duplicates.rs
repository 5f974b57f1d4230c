//! `POST /api/v1/duplicates`: groups of near-identical images (vectors within a similarity
//! threshold), each group reported once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use imgfleet_core::domain::{Distance, SearchQuery};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{AppError, AppResult, ErrorBody};
use crate::extract::optional_json;
use crate::routes::search::{MAX_VECTOR_VALUE, check_limit};
use crate::state::AppState;

/// Neighbours looked at per image: a group may grow past it through its members.
const NEIGHBOURS: usize = 16;
const SCROLL_BATCH: usize = 256;
pub const DEFAULT_THRESHOLD: f64 = 0.97;
pub const MAX_SCAN: usize = 1_000_000;
/// How long one request examines images; then it answers with what it found (`complete: false`).
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

pub fn routes() -> Router<AppState> {
    Router::new().route("/duplicates", post(find_duplicates))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DuplicatesRequest {
    /// Similarity at or above which two images count as the same; default 0.97. A cosine
    /// similarity, -1 to 1, on Cosine collections; any finite number on Dot collections.
    pub threshold: Option<f64>,
    /// Most groups returned (largest first); 1 to 1000, default 50.
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub limit: Option<usize>,
    /// Most images examined, in id order; default 50000, at most 1000000.
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub max_points: Option<usize>,
    /// Default: the selected collection.
    pub collection: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DuplicatesResponse {
    pub duplicates: Vec<DuplicateGroup>,
    /// Images examined.
    pub scanned: u64,
    /// Whether every image of the collection was examined (not when `max_points` or the time
    /// limit, 10 s, stopped the search first).
    pub complete: bool,
}

#[derive(Serialize, ToSchema)]
pub struct DuplicateGroup {
    pub items: Vec<DuplicateItem>,
    /// Lowest similarity among the pairs that joined the group.
    pub min_score: f32,
}

#[derive(Serialize, ToSchema)]
pub struct DuplicateItem {
    pub id: Uuid,
    pub path: Option<String>,
    pub filename: Option<String>,
}

struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[ra.max(rb)] = ra.min(rb);
        }
    }
}

/// Near-duplicate groups: `{duplicates: [{items, min_score}], scanned, complete}`.
#[utoipa::path(post, path = "/api/v1/duplicates", tag = "images", request_body = DuplicatesRequest,
    responses((status = 200, body = DuplicatesResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn find_duplicates(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> AppResult<Json<DuplicatesResponse>> {
    // A body is optional, but one that is given must be JSON, as everywhere else.
    let json = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let media = v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
    });
    if !body.iter().all(u8::is_ascii_whitespace) && !json {
        return Err(AppError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `content-type: application/json` (or no body)",
        ));
    }
    let body: DuplicatesRequest = optional_json(&body)?;
    let collection = app.collection_or_active(body.collection.as_deref())?;
    let threshold = body.threshold.unwrap_or(DEFAULT_THRESHOLD);
    if !(-MAX_VECTOR_VALUE..=MAX_VECTOR_VALUE).contains(&threshold) {
        return Err(AppError::invalid(format!("threshold must be a number between ±{MAX_VECTOR_VALUE:e}")));
    }
    let limit = check_limit(body.limit, 50, 1000, "limit")?;
    let max_points = check_limit(body.max_points, 50_000, MAX_SCAN, "max_points")?;
    let info = app.vectors.collection(collection.as_str()).await?;
    match info.distance {
        Distance::Cosine if !(-1.0..=1.0).contains(&threshold) => {
            return Err(AppError::invalid(format!(
                "threshold is a cosine similarity on {collection:?} (a Cosine collection): between -1 and 1, got {threshold}"
            )));
        }
        Distance::Cosine | Distance::Dot => {}
        Distance::Euclid | Distance::Manhattan => {
            return Err(AppError::invalid(format!(
                "duplicates needs a Cosine or Dot collection; {collection:?} uses {}",
                info.distance
            )));
        }
    }
    let _slot = app.duplicate_slots.enter().await?;
    let deadline = Instant::now() + TIME_LIMIT;

    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut items: Vec<DuplicateItem> = Vec::new();
    let mut edges: Vec<(Uuid, Uuid, f32)> = Vec::new();
    let mut after = None;
    let mut complete = true;
    loop {
        let page = app.vectors.scroll(collection.as_str(), after, SCROLL_BATCH, true).await?;
        for record in page.items {
            if items.len() >= max_points || Instant::now() >= deadline {
                complete = false;
                break;
            }
            let Some(vector) = record.vector else { continue };
            let query = SearchQuery {
                vector,
                filter: None,
                limit: NEIGHBOURS + 1,
                offset: 0,
                score_threshold: Some(threshold as f32),
                with_vector: false,
            };
            for hit in app.vectors.search(collection.as_str(), &query).await? {
                if hit.id != record.id {
                    edges.push((record.id, hit.id, hit.score));
                }
            }
            let text = |k: &str| record.payload.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            index.insert(record.id, items.len());
            items.push(DuplicateItem { id: record.id, path: text("path"), filename: text("filename") });
        }
        match page.next {
            Some(next) if complete => after = Some(next),
            _ => break,
        }
    }

    let mut sets = UnionFind { parent: (0..items.len()).collect() };
    let mut joined = Vec::new();
    for (a, b, score) in edges {
        // A neighbour beyond max_points was not examined: leave it out.
        if let (Some(&ia), Some(&ib)) = (index.get(&a), index.get(&b)) {
            sets.union(ia, ib);
            joined.push((ia, score));
        }
    }
    let mut min_score: HashMap<usize, f32> = HashMap::new();
    for (i, score) in joined {
        let root = sets.find(i);
        let entry = min_score.entry(root).or_insert(score);
        *entry = entry.min(score);
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..items.len() {
        let root = sets.find(i);
        if min_score.contains_key(&root) {
            groups.entry(root).or_default().push(i);
        }
    }
    let scanned = items.len() as u64;
    let mut slots: Vec<Option<DuplicateItem>> = items.into_iter().map(Some).collect();
    let mut duplicates: Vec<DuplicateGroup> = groups
        .into_iter()
        .filter(|(_, members)| members.len() > 1)
        .map(|(root, members)| DuplicateGroup {
            items: members.into_iter().filter_map(|i| slots[i].take()).collect(),
            min_score: min_score[&root],
        })
        .collect();
    duplicates.sort_by(|a, b| b.items.len().cmp(&a.items.len()).then(a.items[0].id.cmp(&b.items[0].id)));
    duplicates.truncate(limit);
    Ok(Json(DuplicatesResponse { duplicates, scanned, complete }))
}
