//! Domain types shared by every process: collections, image points and their payload, search
//! hits, pages, jobs and their counts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::filter::{FilterExpr, SortSpec};

/// Version of every persisted record and queue message; bumped on incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Namespace of point ids: `point id = UUIDv5(namespace, sha256 hex)`, so a replay upserts the
/// same point instead of adding a copy.
const POINT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_9d3b_4c57_8a1e_5b0f_3c2d_7e91);

/// The point id of the image whose content hashes to `sha256_hex`.
pub fn point_id_for(sha256_hex: &str) -> Uuid {
    Uuid::new_v5(&POINT_ID_NAMESPACE, sha256_hex.as_bytes())
}

/// Longest collection name accepted.
pub const MAX_COLLECTION_NAME_LEN: usize = 64;
/// [`CollectionName::parse`]'s rule as a regular expression (for the OpenAPI document).
pub const COLLECTION_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$";
/// The spellings `Distance` parses, any ASCII case, as a regular expression.
pub const DISTANCE_PATTERN: &str =
    "^([Cc][Oo][Ss][Ii][Nn][Ee]|[Dd][Oo][Tt]|[Ee][Uu][Cc][Ll][Ii][Dd]([Ee][Aa][Nn])?|[Mm][Aa][Nn][Hh][Aa][Tt][Tt][Aa][Nn])$";
/// Largest vector size a collection may declare.
/// Name of the one dense vector of every point, in every vector store.
pub const VECTOR_NAME: &str = "clip";
pub const MAX_VECTOR_SIZE: usize = 65_536;

/// A validated collection name: 1 to 64 of `[A-Za-z0-9_-]`, starting with a letter or digit.
/// It doubles as a directory name for embedded stores, so nothing else is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(transparent)]
pub struct CollectionName(String);

impl CollectionName {
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("collection name must not be empty".into());
        }
        if name.len() > MAX_COLLECTION_NAME_LEN {
            return Err(format!(
                "collection name is {} bytes long; at most {MAX_COLLECTION_NAME_LEN} are allowed",
                name.len()
            ));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(format!(
                "collection name {name:?} may contain only letters, digits, '_' and '-'"
            ));
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(format!("collection name {name:?} must start with a letter or digit"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CollectionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CollectionName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Vector similarity of a collection. Spelled as Qdrant spells it; parsing ignores case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub enum Distance {
    #[default]
    Cosine,
    Dot,
    Euclid,
    Manhattan,
}

impl FromStr for Distance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Ok(Self::Cosine),
            "dot" => Ok(Self::Dot),
            "euclid" | "euclidean" => Ok(Self::Euclid),
            "manhattan" => Ok(Self::Manhattan),
            _ => Err(format!(
                "unknown distance {s:?}; use one of Cosine, Dot, Euclid, Manhattan"
            )),
        }
    }
}

impl fmt::Display for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Cosine => "Cosine",
            Self::Dot => "Dot",
            Self::Euclid => "Euclid",
            Self::Manhattan => "Manhattan",
        };
        f.write_str(s)
    }
}

/// What a collection is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionSpec {
    pub name: CollectionName,
    pub vector_size: usize,
    pub distance: Distance,
}

/// A collection as the store reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    pub vector_size: usize,
    pub distance: Distance,
    /// Number of points stored.
    pub points: u64,
}

/// GPS position taken from EXIF.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

/// The payload stored with every image point. Field names are the filter language's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
pub struct ImagePayload {
    /// SHA-256 of the original file, lowercase hex.
    pub sha256: String,
    /// Absolute path of the first file seen with this content.
    pub path: String,
    /// Paths seen with this content (the first one included), at most [`MAX_PATHS_PER_IMAGE`].
    #[serde(default)]
    pub paths: Vec<String>,
    /// How many more paths hold this content beyond those in `paths`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_paths: u64,
    pub filename: String,
    pub width: u32,
    pub height: u32,
    /// Decoded format, lowercase (`jpeg`, `png`, `webp`, …).
    pub format: String,
    /// Size of the original file in bytes.
    pub bytes: u64,
    /// File modification time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    /// EXIF capture time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_make: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gps: Option<GeoPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// When the point was written, RFC 3339.
    pub ingested_at: String,
}

/// Most paths kept in an image's `paths`; beyond it they are only counted (`more_paths`), so a
/// picture copied into every folder cannot grow one payload without bound.
pub const MAX_PATHS_PER_IMAGE: usize = 100;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A point to write: id, vector and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePoint {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub payload: serde_json::Map<String, serde_json::Value>,
}

impl ImagePoint {
    /// A point for an image; the id derives from its sha256.
    pub fn from_payload(vector: Vec<f32>, payload: &ImagePayload) -> Self {
        let value = serde_json::to_value(payload).expect("payload serialises");
        let serde_json::Value::Object(map) = value else { unreachable!("payload is a struct") };
        Self { id: point_id_for(&payload.sha256), vector, payload: map }
    }
}

/// A stored point as read back.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ImageRecord {
    pub id: Uuid,
    #[schema(value_type = Object)]
    pub payload: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SearchHit {
    pub id: Uuid,
    pub score: f32,
    #[schema(value_type = Object)]
    pub payload: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// A nearest-neighbour query.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub vector: Vec<f32>,
    pub filter: Option<FilterExpr>,
    pub limit: usize,
    pub offset: usize,
    /// Only hits scoring at least this (for distances where higher is closer) are returned.
    pub score_threshold: Option<f32>,
    pub with_vector: bool,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub filter: Option<FilterExpr>,
    pub sort: Option<SortSpec>,
    pub offset: usize,
    pub limit: usize,
}

/// A listing page plus the total number of matching points.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    pub items: Vec<ImageRecord>,
    pub total: u64,
}

/// Walk every point in id order, a batch at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrollPage {
    pub items: Vec<ImageRecord>,
    /// Give this back to get the next batch; `None` at the end.
    pub next: Option<Uuid>,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Exact per-job counts. `discovered == processed + duplicates + failed` once a job is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobCounts {
    pub discovered: u64,
    pub processed: u64,
    pub duplicates: u64,
    pub failed: u64,
    /// Paths whose content changed since they were last stored: each moved to its new content
    /// (counted in `processed` or `duplicates` too) and left its old image.
    #[serde(default)]
    pub updated: u64,
    /// Paths of the source that vanished since they were last stored: each left its image (an
    /// image with no path left is deleted, or kept and marked `orphaned`). Not discovered, so not
    /// in the other counts.
    #[serde(default)]
    pub removed: u64,
}

impl JobCounts {
    pub fn settled(&self) -> u64 {
        self.processed + self.duplicates + self.failed
    }
}

/// How one item of a job ended. An item is counted once, whatever the number of deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemOutcome {
    Processed,
    Duplicate { existing_id: String },
    Failed { reason: String },
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub schema_version: u32,
    pub job_id: String,
    pub collection: String,
    pub directory_path: String,
    pub status: JobStatus,
    pub counts: JobCounts,
    /// Set once the scan has published every file task: the job can complete.
    pub scan_complete: bool,
    /// Newest last; bounded by the store.
    pub logs: Vec<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The job's sweep keeps images left with no path (marked `orphaned`) instead of deleting
    /// them; kept here so a resumed scan sweeps the same way.
    #[serde(default)]
    pub keep_orphans: bool,
}

impl JobRecord {
    pub fn new(job_id: String, collection: String, directory_path: String) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            job_id,
            collection,
            directory_path,
            status: JobStatus::Queued,
            counts: JobCounts::default(),
            scan_complete: false,
            logs: Vec::new(),
            error: None,
            created_at: now_rfc3339(),
            started_at: None,
            finished_at: None,
            keep_orphans: false,
        }
    }
}

/// The current time as RFC 3339 with millisecond precision, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A source kept in sync with a collection (`/api/v1/watches`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WatchRecord {
    pub watch_id: String,
    /// A directory or `s3://bucket/prefix` (see [`crate::source::Source`]).
    pub source: String,
    pub collection: String,
    /// Seconds between rescans; file-system notifications trigger one sooner where they work.
    pub interval_secs: u64,
    /// Keep images with no path left (marked) instead of deleting them.
    #[serde(default)]
    pub keep_orphans: bool,
    pub created_at: String,
    /// The last sync job started for it.
    #[serde(default)]
    pub last_job_id: Option<String>,
    /// When the last sync started.
    #[serde(default)]
    pub last_sync_at: Option<String>,
    /// When a sync last changed the collection (processed, updated or removed a path).
    #[serde(default)]
    pub last_change_at: Option<String>,
    /// Counts of the last finished sync.
    #[serde(default)]
    pub last_counts: Option<JobCounts>,
}

/// Pixels ready for a model: tightly packed RGB8, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// What an encoder can do, reported by `/capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    /// Largest CLIP batch that fits the device.
    pub safe_clip_batch: usize,
    /// Largest BLIP batch that fits the device (0 when captioning is off).
    pub safe_blip_batch: usize,
    /// Size of the image embedding.
    pub embedding_dim: usize,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub clip_model: String,
    pub blip_model: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names() {
        assert!(CollectionName::parse("photos_2024-a").is_ok());
        for bad in ["", "a/b", "..", "../x", "-x", "_x", "a b", "é", &"x".repeat(65)] {
            assert!(CollectionName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn point_id_is_stable_and_content_derived() {
        let a = point_id_for("ab");
        assert_eq!(a, point_id_for("ab"));
        assert_ne!(a, point_id_for("ac"));
        assert_eq!(a.get_version_num(), 5);
    }

    #[test]
    fn distance_parsing_ignores_case() {
        assert_eq!("cosine".parse::<Distance>().unwrap(), Distance::Cosine);
        assert_eq!("EUCLID".parse::<Distance>().unwrap(), Distance::Euclid);
        assert!("l2".parse::<Distance>().is_err());
    }
}
