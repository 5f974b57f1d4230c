//! Messages between pipeline stages. Each carries the job id and the schema version, and is
//! serialised as JSON, except a `PreparedImage`, whose pixel buffers travel raw after a JSON
//! header ([`encode_prepared`]).

use serde::{Deserialize, Serialize};

use crate::domain::{ImagePayload, SCHEMA_VERSION};
use crate::pixel_codec::PixelCodec;

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
    /// Times this job's scan was interrupted and handed on as a fresh request.
    #[serde(default)]
    pub resumes: u32,
    /// Carried to the [`SweepRequest`]: keep an image that has no path left (marked
    /// `orphaned: true`) instead of deleting it.
    #[serde(default)]
    pub keep_orphans: bool,
}

/// One candidate file found by the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTask {
    pub schema_version: u32,
    pub job_id: String,
    pub collection: String,
    /// The file's identity (see [`crate::source`]): a local path, `s3://bucket/key` or
    /// `upload://<sha256>/<name>`.
    pub path: String,
    /// The version the listing saw (a bucket object's size and ETag, see
    /// [`crate::source::object_marker`]): recorded with the content read, so the next sync
    /// compares like with like (some servers list no ETag, or another one than a read gives).
    /// `None`: the marker of the version read is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
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
    /// The dedup claim's token (the attempt): names the messages carrying this image on, is
    /// given back by a later stage that fails or drops the image (so a retry takes the content
    /// at once), and marks it done once stored.
    #[serde(default)]
    pub claim_token: String,
    /// The version of the file that was read (see [`crate::source`]), for the source index;
    /// `None` for uploads.
    #[serde(default)]
    pub marker: Option<String>,
}

/// Embedding and caption of one image, ready to index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodedImage {
    pub schema_version: u32,
    pub job_id: String,
    pub collection: String,
    pub payload: ImagePayload,
    pub embedding: Vec<f32>,
    /// The dedup claim's token, carried from the `PreparedImage`.
    #[serde(default)]
    pub claim_token: String,
    /// Carried from the `PreparedImage`.
    #[serde(default)]
    pub marker: Option<String>,
}

/// "This file has the same content as a stored image": the CPU stage found the content's
/// dedup entry done, and the stage that owns the vector store (the indexer) adds `path` to that
/// point's `paths`. Published on `Stream::Encoded` beside `EncodedImage`; read that stream with
/// [`decode_indexer_input`]; the indexer counts the duplicate once the path is added. Message
/// id: `dup:{job_id}:{hash of path}:{done_token}`. When the point turns out to be gone, the
/// indexer forgets that done entry and queues the file again.
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
    /// Token of the acquisition whose done entry said "stored" (see `StateStore::forget_done`).
    #[serde(default)]
    pub done_token: String,
    /// The version of the file that was read (see [`crate::source`]); `None` for uploads.
    #[serde(default)]
    pub marker: Option<String>,
}

impl DuplicatePath {
    pub fn new(job_id: String, collection: String, sha256: String, point_id: String, duplicate_path: String, done_token: String) -> Self {
        Self { schema_version: SCHEMA_VERSION, job_id, collection, sha256, point_id, duplicate_path, done_token, marker: None }
    }
}

/// "The scan of this job's source is complete: bring the collection in line with it." Published
/// on `Stream::Encoded` by the scan once every file task is published; the indexer removes from
/// their images the paths under `prefix` that the job did not discover (the files vanished),
/// deletes an image left with no path (unless `keep_orphans`), counts them as `removed`, and
/// only then marks the job's scan complete. Message id: `sweep:{job_id}:{resumes}`; a sweep
/// that waited its hold for the job's files to settle is handed on as `…:wait{attempt}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepRequest {
    pub schema_version: u32,
    pub job_id: String,
    pub collection: String,
    /// Every path of the source starts with this ([`crate::source::Source::path_prefix`]).
    pub prefix: String,
    /// Keep an image that has no path left (marked `orphaned: true`) instead of deleting it.
    #[serde(default)]
    pub keep_orphans: bool,
    /// How many times it was handed on while the job's files were still settling (each hand-on
    /// is a new message, so a long wait never uses up the queue's deliveries).
    #[serde(default)]
    pub attempt: u32,
}

/// What arrives on `Stream::Encoded`. The two shapes are told apart by their fields (an
/// `EncodedImage` is unchanged on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IndexerInput {
    DuplicatePath(DuplicatePath),
    Encoded(EncodedImage),
    Sweep(SweepRequest),
}

impl Versioned for IndexerInput {
    fn schema_version(&self) -> u32 {
        match self {
            Self::DuplicatePath(m) => m.schema_version,
            Self::Encoded(m) => m.schema_version,
            Self::Sweep(m) => m.schema_version,
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
versioned!(ScanRequest, FileTask, PreparedImage, EncodedImage, DuplicatePath, SweepRequest);

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("message schema version {found} is not {expected}")]
    Version { found: u32, expected: u32 },
    #[error("malformed message envelope: {0}")]
    Envelope(String),
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
        Self { schema_version: SCHEMA_VERSION, job_id, collection, directory_path, only_new: false, resumes: 0, keep_orphans: false }
    }
}

impl FileTask {
    pub fn new(job_id: String, collection: String, path: String) -> Self {
        Self { schema_version: SCHEMA_VERSION, job_id, collection, path, marker: None }
    }
}

mod bytes_b64 {
    //! Pixel buffers as base64 strings inside JSON (the JSON form of a `PreparedImage`; the
    //! binary envelope of [`super::encode_prepared`] carries them raw).
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&text).map_err(serde::de::Error::custom)
    }

    pub fn encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| e.to_string())
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

/// First bytes of a `PreparedImage` in its binary envelope, raw pixels (version 1, still
/// read).
const PREPARED_MAGIC: &[u8; 4] = b"IFP1";
/// First bytes of a `PreparedImage` whose header names the pixels' codec (version 2).
const PREPARED_MAGIC_V2: &[u8; 4] = b"IFP2";

#[derive(Serialize)]
struct PreparedHeaderRef<'a> {
    schema_version: u32,
    job_id: &'a str,
    collection: &'a str,
    payload: &'a ImagePayload,
    clip_size: u32,
    blip_size: u32,
    claim_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    marker: Option<&'a str>,
    clip_len: usize,
    blip_len: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pixel_codec: Option<&'a str>,
}

#[derive(Deserialize)]
struct PreparedHeader {
    schema_version: u32,
    job_id: String,
    collection: String,
    payload: ImagePayload,
    clip_size: u32,
    blip_size: u32,
    #[serde(default)]
    claim_token: String,
    #[serde(default)]
    marker: Option<String>,
    clip_len: usize,
    blip_len: usize,
    /// Version 2 only: how the pixels are coded.
    #[serde(default)]
    pixel_codec: Option<String>,
}

/// A `PreparedImage` as bytes, pixels raw: [`encode_prepared_with`] `PixelCodec::Raw`.
pub fn encode_prepared(message: &PreparedImage) -> Vec<u8> {
    encode_prepared_with(message, PixelCodec::Raw)
}

/// A `PreparedImage` as bytes: a magic (`IFP1` for raw pixels, which every version reads;
/// `IFP2` with the codec named in the header), the JSON header's length (u32 little-endian),
/// the JSON header (every field but the pixels, plus their coded lengths and, in `IFP2`, their
/// `pixel_codec`), then the CLIP and BLIP pixels in that codec. A reader that does not know
/// `IFP2`, or its codec, refuses the message with the reason instead of misreading it.
pub fn encode_prepared_with(message: &PreparedImage, codec: PixelCodec) -> Vec<u8> {
    let (clip, blip) = match codec {
        PixelCodec::Raw => (std::borrow::Cow::Borrowed(&message.clip_pixels[..]), std::borrow::Cow::Borrowed(&message.blip_pixels[..])),
        coded => (
            std::borrow::Cow::Owned(coded.encode(&message.clip_pixels, message.clip_size)),
            std::borrow::Cow::Owned(coded.encode(&message.blip_pixels, message.blip_size)),
        ),
    };
    let header = serde_json::to_vec(&PreparedHeaderRef {
        schema_version: message.schema_version,
        job_id: &message.job_id,
        collection: &message.collection,
        payload: &message.payload,
        clip_size: message.clip_size,
        blip_size: message.blip_size,
        claim_token: &message.claim_token,
        marker: message.marker.as_deref(),
        clip_len: clip.len(),
        blip_len: blip.len(),
        pixel_codec: (codec != PixelCodec::Raw).then(|| codec.as_str()),
    })
    .expect("messages serialise");
    let mut out = Vec::with_capacity(8 + header.len() + clip.len() + blip.len());
    out.extend_from_slice(if codec == PixelCodec::Raw { PREPARED_MAGIC } else { PREPARED_MAGIC_V2 });
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&clip);
    out.extend_from_slice(&blip);
    out
}

/// What a prepared image's envelope says about its file (job, collection, payload, claim), its
/// pixels left empty: enough to settle the file when the pixels themselves cannot be read.
pub fn decode_prepared_header(bytes: &[u8]) -> Option<PreparedImage> {
    let rest = bytes.strip_prefix(PREPARED_MAGIC).or_else(|| bytes.strip_prefix(PREPARED_MAGIC_V2))?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let header: PreparedHeader = serde_json::from_slice(rest.get(..u32::from_le_bytes(*len) as usize)?).ok()?;
    Some(PreparedImage {
        schema_version: header.schema_version,
        job_id: header.job_id,
        collection: header.collection,
        payload: header.payload,
        clip_size: header.clip_size,
        clip_pixels: Vec::new(),
        blip_size: header.blip_size,
        blip_pixels: Vec::new(),
        claim_token: header.claim_token,
        marker: header.marker,
    })
}

/// Reads a `PreparedImage` from its binary envelope (either version, any known codec), or
/// from JSON (base64 pixels).
pub fn decode_prepared(bytes: &[u8]) -> Result<PreparedImage, DecodeError> {
    let (rest, version) = match (bytes.strip_prefix(PREPARED_MAGIC), bytes.strip_prefix(PREPARED_MAGIC_V2)) {
        (Some(rest), _) => (rest, 1),
        (_, Some(rest)) => (rest, 2),
        _ if bytes.starts_with(b"IFP") => {
            return Err(DecodeError::Envelope(format!(
                "prepared-image envelope {:?} is newer than this worker (it reads IFP1 and IFP2): upgrade it",
                String::from_utf8_lossy(&bytes[..4.min(bytes.len())])
            )));
        }
        _ => return decode(bytes),
    };
    let envelope = |what: &str| DecodeError::Envelope(what.to_owned());
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(|| envelope("no header length"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(envelope("header longer than the message"));
    }
    let (header, pixels) = rest.split_at(len);
    let header: PreparedHeader = serde_json::from_slice(header)?;
    if header.schema_version != SCHEMA_VERSION {
        return Err(DecodeError::Version { found: header.schema_version, expected: SCHEMA_VERSION });
    }
    if header.clip_len.checked_add(header.blip_len) != Some(pixels.len()) {
        return Err(envelope("pixel lengths do not add up to the message"));
    }
    let (clip, blip) = pixels.split_at(header.clip_len);
    let codec = match (version, header.pixel_codec.as_deref()) {
        (1, _) | (_, None) => PixelCodec::Raw,
        (_, Some(name)) => name.parse::<PixelCodec>().map_err(DecodeError::Envelope)?,
    };
    let (clip, blip) = match codec {
        PixelCodec::Raw => (clip.to_vec(), blip.to_vec()),
        coded => (
            coded.decode(clip, header.clip_size).map_err(|e| DecodeError::Envelope(format!("CLIP pixels: {e}")))?,
            coded.decode(blip, header.blip_size).map_err(|e| DecodeError::Envelope(format!("BLIP pixels: {e}")))?,
        ),
    };
    Ok(PreparedImage {
        schema_version: header.schema_version,
        job_id: header.job_id,
        collection: header.collection,
        payload: header.payload,
        clip_size: header.clip_size,
        clip_pixels: clip,
        blip_size: header.blip_size,
        blip_pixels: blip,
        claim_token: header.claim_token,
        marker: header.marker,
    })
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

    /// Without captions there are no BLIP pixels: every codec carries the image whole, and an
    /// envelope whose pixels are damaged still names its file.
    #[test]
    fn prepared_images_without_blip_pixels_round_trip_in_every_codec() {
        let image = PreparedImage {
            schema_version: SCHEMA_VERSION,
            job_id: "j".into(),
            collection: "c".into(),
            payload: ImagePayload { sha256: "ab".into(), path: "/x.jpg".into(), ..ImagePayload::default() },
            clip_size: 2,
            clip_pixels: (0..12).collect(),
            blip_size: 0,
            blip_pixels: Vec::new(),
            claim_token: "3.ab".into(),
            marker: Some("f:1:2".into()),
        };
        for codec in PixelCodec::ALL {
            let bytes = encode_prepared_with(&image, codec);
            assert_eq!(decode_prepared(&bytes).unwrap(), image, "{codec}");
            let mut damaged = bytes.clone();
            let last = damaged.len() - 1;
            damaged[last] ^= 0xff;
            let header = decode_prepared_header(&damaged).expect("the header is whole");
            assert_eq!((header.job_id.as_str(), header.payload.path.as_str(), header.claim_token.as_str()), ("j", "/x.jpg", "3.ab"));
        }
        // What a worker of the last version sent: a zstd frame of nothing for the empty plane.
        let empty_frame = zstd::bulk::compress(&[], 3).unwrap();
        assert_eq!(PixelCodec::Lossless.decode(&empty_frame, 0).unwrap(), Vec::<u8>::new());
        assert!(PixelCodec::Lossless.decode(&[1, 2, 3], 0).is_err());
    }

    #[test]
    fn prepared_images_round_trip_in_their_envelope_and_as_json() {
        let image = PreparedImage {
            schema_version: SCHEMA_VERSION,
            job_id: "j".into(),
            collection: "c".into(),
            payload: ImagePayload { sha256: "ab".into(), path: "/x/\"q\".jpg".into(), ..ImagePayload::default() },
            clip_size: 2,
            clip_pixels: (0..12).collect(),
            blip_size: 1,
            blip_pixels: vec![7, 8, 9],
            claim_token: "3.ab".into(),
            marker: None,
        };
        let bytes = encode_prepared(&image);
        assert!(bytes.len() < encode(&image).len());
        assert_eq!(decode_prepared(&bytes).unwrap(), image);
        assert_eq!(decode_prepared(&encode(&image)).unwrap(), image, "the JSON form is read too");
        assert!(matches!(decode_prepared(&bytes[..bytes.len() - 1]), Err(DecodeError::Envelope(_))));
        assert!(matches!(decode_prepared(b"IFP1\xff\xff\xff\xff{}"), Err(DecodeError::Envelope(_))));
        let mut old = image.clone();
        old.schema_version = 99;
        assert!(matches!(decode_prepared(&encode_prepared(&old)), Err(DecodeError::Version { found: 99, .. })));
    }

    #[test]
    fn prepared_images_travel_in_any_codec_and_unknown_ones_are_refused_clearly() {
        let side = 16u32;
        let pixels = |seed: u32| -> Vec<u8> { (0..side * side * 3).map(|i| ((i / 3 % side) * 8 + seed) as u8).collect() };
        let image = PreparedImage {
            schema_version: SCHEMA_VERSION,
            job_id: "j".into(),
            collection: "c".into(),
            payload: ImagePayload { sha256: "ab".into(), path: "/x/a.jpg".into(), ..ImagePayload::default() },
            clip_size: side,
            clip_pixels: pixels(1),
            blip_size: side,
            blip_pixels: pixels(2),
            claim_token: "3.ab".into(),
            marker: Some("f:10:1500".into()),
        };
        let raw = encode_prepared_with(&image, PixelCodec::Raw);
        assert!(raw.starts_with(b"IFP1"), "raw pixels keep the version every worker reads");
        let lossless = encode_prepared_with(&image, PixelCodec::Lossless);
        assert!(lossless.starts_with(b"IFP2") && lossless.len() * 2 < raw.len(), "{} vs {}", lossless.len(), raw.len());
        assert_eq!(decode_prepared(&lossless).unwrap(), image);
        assert_eq!(decode_prepared(&raw).unwrap(), image);
        let at = lossless.windows(10).position(|w| w == b"\"lossless\"").expect("the codec is named");
        let mut unknown = lossless.clone();
        unknown[at..at + 10].copy_from_slice(b"\"jpegxl01\"");
        let error = decode_prepared(&unknown).unwrap_err().to_string();
        assert!(error.contains("unknown pixel codec \"jpegxl01\""), "{error}");
        let mut future = lossless.clone();
        future[3] = b'9';
        assert!(decode_prepared(&future).unwrap_err().to_string().contains("newer than this worker"));
        let mut damaged = lossless;
        let last = damaged.len() - 3;
        damaged[last] ^= 0xff;
        assert!(decode_prepared(&damaged).is_err(), "damaged coded pixels are an error");
    }

    #[test]
    fn encoded_stream_tells_duplicates_from_encoded_images() {
        let duplicate = DuplicatePath::new("j".into(), "c".into(), "ab".into(), "p".into(), "/x/copy.jpg".into(), "0.ff".into());
        assert_eq!(decode_indexer_input(&encode(&duplicate)).unwrap(), IndexerInput::DuplicatePath(duplicate));
        let encoded = EncodedImage {
            schema_version: SCHEMA_VERSION,
            job_id: "j".into(),
            collection: "c".into(),
            payload: ImagePayload { sha256: "ab".into(), path: "/x/a.jpg".into(), ..ImagePayload::default() },
            embedding: vec![0.5, -0.5],
            claim_token: "0.ab".into(),
            marker: Some("f:10:1500".into()),
        };
        assert_eq!(decode_indexer_input(&encode(&encoded)).unwrap(), IndexerInput::Encoded(encoded));
        let sweep = SweepRequest { schema_version: SCHEMA_VERSION, job_id: "j".into(), collection: "c".into(), prefix: "/x/".into(), keep_orphans: false, attempt: 0 };
        assert_eq!(decode_indexer_input(&encode(&sweep)).unwrap(), IndexerInput::Sweep(sweep));
        assert!(decode_indexer_input(b"{}").is_err());
    }
}
