//! Messages between pipeline stages. Each carries the job id and the schema version, and is
//! serialised as JSON except for pixel buffers, which travel as raw bytes.

use serde::{Deserialize, Serialize};

use crate::domain::{ImagePayload, SCHEMA_VERSION};

/// "Walk this directory for this job."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRequest {
    pub schema_version: u32,
    pub job_id: String,
    pub collection: String,
    pub directory_path: String,
    /// Publish tasks only for files the job has not discovered before (a resumed job, whose
    /// unsettled files were published again from the state store).
    #[serde(default)]
    pub only_new: bool,
}

/// One candidate file found by the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTask {
    pub schema_version: u32,
    pub job_id: String,
    pub collection: String,
    pub path: String,
}

/// A decoded image, resized for each model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedImage {
    pub schema_version: u32,
    pub job_id: String,
    pub collection: String,
    pub payload: ImagePayload,
    /// CLIP input: `clip_size`² RGB8 pixels, centre-cropped.
    pub clip_size: u32,
    #[serde(with = "bytes_b64")]
    pub clip_pixels: Vec<u8>,
    /// BLIP input: `blip_size`² RGB8 pixels, squashed square; empty when captioning is off.
    pub blip_size: u32,
    #[serde(with = "bytes_b64")]
    pub blip_pixels: Vec<u8>,
    /// Owner of the content's dedup claim, so a later stage that fails the image can give
    /// the claim back at once instead of leaving it to expire.
    #[serde(default)]
    pub claim_owner: String,
}

/// Embedding and caption of one image, ready to index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodedImage {
    pub schema_version: u32,
    pub job_id: String,
    pub collection: String,
    pub payload: ImagePayload,
    pub embedding: Vec<f32>,
}

/// "This file has the same content as a stored image": the CPU stage found the content's
/// dedup entry done, and the stage that owns the vector store (the indexer) adds `path` to that
/// point's `paths`. Published on `Stream::Encoded` beside `EncodedImage`; read that stream with
/// [`decode_indexer_input`]; the indexer counts the duplicate once the path is added. Message
/// id: `dup:{job_id}:{collection}:{sha256}:{hash of path}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicatePath {
    pub schema_version: u32,
    pub job_id: String,
    pub collection: String,
    pub sha256: String,
    /// The stored point the content belongs to.
    pub point_id: String,
    /// The extra path, absolute.
    pub duplicate_path: String,
}

impl DuplicatePath {
    pub fn new(job_id: String, collection: String, sha256: String, point_id: String, duplicate_path: String) -> Self {
        Self { schema_version: SCHEMA_VERSION, job_id, collection, sha256, point_id, duplicate_path }
    }
}

/// What arrives on `Stream::Encoded`. The two shapes are told apart by their fields (an
/// `EncodedImage` is unchanged on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IndexerInput {
    DuplicatePath(DuplicatePath),
    Encoded(EncodedImage),
}

impl Versioned for IndexerInput {
    fn schema_version(&self) -> u32 {
        match self {
            Self::DuplicatePath(m) => m.schema_version,
            Self::Encoded(m) => m.schema_version,
        }
    }
}

/// Reads a message of `Stream::Encoded`.
pub fn decode_indexer_input(bytes: &[u8]) -> Result<IndexerInput, DecodeError> {
    decode(bytes)
}

/// Messages are versioned; a message from an incompatible version is poison, not a crash.
pub trait Versioned {
    fn schema_version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn schema_version(&self) -> u32 { self.schema_version }
        }
    )*};
}
versioned!(ScanRequest, FileTask, PreparedImage, EncodedImage, DuplicatePath);

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("message schema version {found} is not {expected}")]
    Version { found: u32, expected: u32 },
}

pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).expect("messages serialise")
}

pub fn decode<T: for<'de> Deserialize<'de> + Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let message: T = serde_json::from_slice(bytes)?;
    if message.schema_version() != SCHEMA_VERSION {
        return Err(DecodeError::Version { found: message.schema_version(), expected: SCHEMA_VERSION });
    }
    Ok(message)
}

impl ScanRequest {
    pub fn new(job_id: String, collection: String, directory_path: String) -> Self {
        Self { schema_version: SCHEMA_VERSION, job_id, collection, directory_path, only_new: false }
    }
}

impl FileTask {
    pub fn new(job_id: String, collection: String, path: String) -> Self {
        Self { schema_version: SCHEMA_VERSION, job_id, collection, path }
    }
}

mod bytes_b64 {
    //! Pixel buffers as base64 strings: a third larger than raw, four times smaller than a
    //! JSON array of numbers.
    use serde::{Deserialize, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&text).map_err(serde::de::Error::custom)
    }

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let bytes = text.as_bytes();
        if bytes.len() % 4 != 0 {
            return Err("base64 length is not a multiple of 4".into());
        }
        let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            let mut pad = 0;
            for (i, &c) in chunk.iter().enumerate() {
                let v = match c {
                    b'A'..=b'Z' => c - b'A',
                    b'a'..=b'z' => c - b'a' + 26,
                    b'0'..=b'9' => c - b'0' + 52,
                    b'+' => 62,
                    b'/' => 63,
                    b'=' if i >= 2 => {
                        pad += 1;
                        0
                    }
                    _ => return Err(format!("invalid base64 byte {c:#x}")),
                };
                n = (n << 6) | u32::from(v);
            }
            let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&decoded[..3 - pad]);
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips() {
            for len in 0..10 {
                let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
                assert_eq!(super::decode(&super::encode(&data)).unwrap(), data);
            }
            assert_eq!(super::encode(b"Man"), "TWFu");
            assert_eq!(super::encode(b"Ma"), "TWE=");
            assert!(super::decode("TW$u").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_mismatch_is_an_error() {
        let mut task = FileTask::new("j".into(), "c".into(), "/p".into());
        let bytes = encode(&task);
        assert_eq!(decode::<FileTask>(&bytes).unwrap(), task);
        task.schema_version = 99;
        assert!(matches!(decode::<FileTask>(&encode(&task)), Err(DecodeError::Version { found: 99, .. })));
        assert!(matches!(decode::<FileTask>(b"{"), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn encoded_stream_tells_duplicates_from_encoded_images() {
        let duplicate = DuplicatePath::new("j".into(), "c".into(), "ab".into(), "p".into(), "/x/copy.jpg".into());
        assert_eq!(decode_indexer_input(&encode(&duplicate)).unwrap(), IndexerInput::DuplicatePath(duplicate));
        let encoded = EncodedImage {
            schema_version: SCHEMA_VERSION,
            job_id: "j".into(),
            collection: "c".into(),
            payload: ImagePayload { sha256: "ab".into(), path: "/x/a.jpg".into(), ..ImagePayload::default() },
            embedding: vec![0.5, -0.5],
        };
        assert_eq!(decode_indexer_input(&encode(&encoded)).unwrap(), IndexerInput::Encoded(encoded));
        assert!(decode_indexer_input(b"{}").is_err());
    }
}
