//! Where files come from, and how a file's identity (its "path") is spelled.
//!
//! A job ingests one *source*: a directory the workers see on their file system, or a prefix of
//! an S3 bucket (any S3-compatible server). Uploads are a third kind of file, with no source to
//! walk. Every file has one path string, the identity kept in an image's `paths` and in the
//! source index:
//!
//! | kind | path | read from |
//! |---|---|---|
//! | file | `/photos/2024/a.jpg` (absolute) | the local file system |
//! | object | `s3://bucket/photos/a.jpg` | the bucket (an [`ObjectSource`](crate::ports::ObjectSource)) |
//! | upload | `upload://<sha256>/<client-side name>` | the blob store ([`blob_key`]) |
//!
//! A file's *marker* says which version of it was read, cheaply (no hashing): a re-ingest skips
//! a path whose marker did not change since its content was stored.

use std::path::{Path, PathBuf};

/// Paths of uploaded files start with this.
pub const UPLOAD_SCHEME: &str = "upload://";
/// Paths of objects in a bucket start with this.
pub const S3_SCHEME: &str = "s3://";

/// A prefix of a bucket: `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectPrefix {
    pub bucket: String,
    /// Key prefix, without a leading `/`; empty for the whole bucket.
    pub prefix: String,
}

impl ObjectPrefix {
    /// The path (identity) of the object `key` of this bucket.
    pub fn object_path(&self, key: &str) -> String {
        format!("{S3_SCHEME}{}/{key}", self.bucket)
    }
}

impl std::fmt::Display for ObjectPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{S3_SCHEME}{}/{}", self.bucket, self.prefix)
    }
}

/// What a job ingests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory, absolute.
    Directory(PathBuf),
    /// A prefix of a bucket.
    Bucket(ObjectPrefix),
}

/// Bucket names as S3 allows them (3 to 63 of lowercase letters, digits, `.` and `-`); a looser
/// rule than S3's own, strict enough that a name never needs escaping.
fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

impl Source {
    /// `s3://bucket[/prefix]`, or an absolute directory path. A relative path is refused (the
    /// server's working directory means nothing to a client).
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix(S3_SCHEME) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !valid_bucket(bucket) {
                return Err(format!("{text:?}: bucket name {bucket:?} is not valid (3 to 63 of a-z, 0-9, '.', '-')"));
            }
            if prefix.split('/').any(|part| part == ".." || part == ".") {
                return Err(format!("{text:?}: '.' and '..' are not allowed in an object prefix"));
            }
            return Ok(Self::Bucket(ObjectPrefix { bucket: bucket.to_owned(), prefix: prefix.to_owned() }));
        }
        if text.contains("://") {
            return Err(format!("{text:?}: unknown scheme; use an absolute directory path or s3://bucket/prefix"));
        }
        if text.is_empty() {
            return Err("the source must not be empty".into());
        }
        let path = PathBuf::from(text);
        if !path.is_absolute() {
            return Err(format!("{text:?} is not an absolute path"));
        }
        Ok(Self::Directory(path))
    }

    /// The prefix every path of this source starts with (with a trailing separator, so that
    /// `/a/b` never covers `/a/bc`; a bucket prefix is taken as it is, like S3 lists it).
    pub fn path_prefix(&self) -> String {
        match self {
            Self::Directory(dir) => {
                let mut text = dir.to_string_lossy().into_owned();
                if !text.ends_with('/') {
                    text.push('/');
                }
                text
            }
            Self::Bucket(prefix) => prefix.object_path(&prefix.prefix),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Directory(dir) => write!(f, "{}", dir.display()),
            Self::Bucket(prefix) => prefix.fmt(f),
        }
    }
}

/// Where the file of a path is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location<'a> {
    File(&'a Path),
    Object { bucket: &'a str, key: &'a str },
    /// The content's SHA-256 (which names its blob) and the name it was uploaded under.
    Upload { sha256: &'a str, name: &'a str },
}

/// The location of `path` (see the module docs). Anything that is not an object or an upload
/// is a local file.
pub fn location(path: &str) -> Location<'_> {
    if let Some(rest) = path.strip_prefix(S3_SCHEME) {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        return Location::Object { bucket, key };
    }
    if let Some(rest) = path.strip_prefix(UPLOAD_SCHEME) {
        let (sha256, name) = rest.split_once('/').unwrap_or((rest, ""));
        return Location::Upload { sha256, name };
    }
    Location::File(Path::new(path))
}

/// The path of content `sha256` uploaded as `name`: the content names its blob, so the path
/// alone says where the file is (a task queued again after a restart finds it).
pub fn upload_path(sha256: &str, name: &str) -> String {
    format!("{UPLOAD_SCHEME}{sha256}/{name}")
}

/// The blob-store key of uploaded content: per collection, so deleting an image or a collection
/// never removes a blob another collection still shows.
pub fn blob_key(collection: &str, sha256: &str) -> String {
    format!("{collection}/{sha256}")
}

/// Marker of a local file: size and modification time (nanoseconds since the epoch).
pub fn file_marker(len: u64, mtime: Option<std::time::SystemTime>) -> String {
    let nanos = mtime.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    format!("f:{len}:{nanos}")
}

/// Longest ETag kept in a marker (S3's are 32 to 40 characters; a server's own may be longer).
const MAX_ETAG_CHARS: usize = 128;

/// Marker of an object: size and ETag.
pub fn object_marker(len: u64, etag: Option<&str>) -> String {
    let etag: String = etag.unwrap_or("").trim_matches('"').chars().take(MAX_ETAG_CHARS).collect();
    format!("o:{len}:{etag}")
}

/// What the source index keeps per path: the content last stored from it, and the marker of
/// the version read then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceEntry {
    pub sha256: String,
    pub marker: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(Source::parse("/photos").unwrap(), Source::Directory("/photos".into()));
        assert_eq!(
            Source::parse("s3://my-bucket/a/b").unwrap(),
            Source::Bucket(ObjectPrefix { bucket: "my-bucket".into(), prefix: "a/b".into() })
        );
        assert_eq!(Source::parse("s3://my-bucket").unwrap(), Source::Bucket(ObjectPrefix { bucket: "my-bucket".into(), prefix: String::new() }));
        for bad in ["", "photos", "s3://", "s3://UPPER/x", "s3://ab/x", "s3://bucket/../x", "gs://bucket/x", "http://x/y"] {
            assert!(Source::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefixes_never_cover_a_sibling() {
        let dir = Source::parse("/a/b").unwrap();
        assert!("/a/b/c.jpg".starts_with(&dir.path_prefix()));
        assert!(!"/a/bc/d.jpg".starts_with(&dir.path_prefix()));
        assert_eq!(Source::parse("/").unwrap().path_prefix(), "/");
        assert_eq!(Source::parse("s3://bkt/p/").unwrap().path_prefix(), "s3://bkt/p/");
    }

    #[test]
    fn locations() {
        assert_eq!(location("/a/b.jpg"), Location::File(Path::new("/a/b.jpg")));
        assert_eq!(location("s3://bkt/x/y.jpg"), Location::Object { bucket: "bkt", key: "x/y.jpg" });
        assert_eq!(location(&upload_path("ab12", "laptop/a.jpg")), Location::Upload { sha256: "ab12", name: "laptop/a.jpg" });
        let prefix = ObjectPrefix { bucket: "bkt".into(), prefix: "x/".into() };
        assert_eq!(location(&prefix.object_path("x/y.jpg")), Location::Object { bucket: "bkt", key: "x/y.jpg" });
    }

    #[test]
    fn markers_name_the_version() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_500);
        assert_eq!(file_marker(10, Some(t)), "f:10:1500");
        assert_ne!(file_marker(10, Some(t)), file_marker(11, Some(t)));
        assert_eq!(object_marker(10, Some("\"abc\"")), "o:10:abc");
    }
}
