//! The `Encoder` port over NATS request/reply: the API's text and image search reach the GPU
//! workers, which answer in one queue group ([`ENCODER_QUEUE_GROUP`]), so each request is
//! handled by exactly one of them and any number can come and go.
//!
//! Wire format (one request, one reply):
//! - [`ENCODE_TEXT_SUBJECT`]: JSON `{"texts": [..]}`;
//! - [`ENCODE_IMAGE_SUBJECT`]: `IFI1`, width and height (u32 little-endian), then the RGB8
//!   pixels, row-major. An image whose pixels would not fit the server's `max_payload` is
//!   downscaled first (Catmull-Rom, keeping its aspect ratio) to fit: CLIP resizes it to its
//!   input size (224 px for ViT-B/32) anyway, so only a ~1-megapixel detour is added;
//! - [`ENCODE_CAPABILITIES_SUBJECT`]: empty; the reply is the worker's `Capabilities` as JSON;
//! - replies to embedding requests: JSON `{"embeddings": [[..]]}` or
//!   `{"error": {"kind": "invalid|overloaded|unavailable|internal", "message": ".."}}`.
//!
//! No worker listening → [`EncoderError::Unavailable`] at once (NATS answers "no responders");
//! no answer within the timeout → `Unavailable` too. The API turns both into a 503.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use imgfleet_core::domain::{Capabilities, RgbImage};
use imgfleet_core::names::{ENCODER_QUEUE_GROUP, ENCODE_CAPABILITIES_SUBJECT, ENCODE_IMAGE_SUBJECT, ENCODE_TEXT_SUBJECT};
use imgfleet_core::ports::{Encoder, EncoderError};

const IMAGE_MAGIC: &[u8; 4] = b"IFI1";
const IMAGE_HEADER: usize = 12;
/// Room kept under `max_payload` for the protocol's own headers.
const PAYLOAD_MARGIN: usize = 4096;

#[derive(Serialize, Deserialize)]
struct TextRequest {
    texts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ErrorKind {
    Invalid,
    Overloaded,
    Unavailable,
    Internal,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Embeddings(Vec<Vec<f32>>),
    Error { kind: ErrorKind, message: String },
}

impl From<Result<Vec<Vec<f32>>, EncoderError>> for Reply {
    fn from(result: Result<Vec<Vec<f32>>, EncoderError>) -> Self {
        match result {
            Ok(embeddings) => Reply::Embeddings(embeddings),
            Err(e) => {
                let kind = match &e {
                    EncoderError::Invalid(_) => ErrorKind::Invalid,
                    EncoderError::Overloaded => ErrorKind::Overloaded,
                    EncoderError::Unavailable(_) => ErrorKind::Unavailable,
                    EncoderError::Internal(_) => ErrorKind::Internal,
                };
                let message = match e {
                    EncoderError::Invalid(m) | EncoderError::Unavailable(m) | EncoderError::Internal(m) => m,
                    EncoderError::Overloaded => "encoder overloaded".into(),
                };
                Reply::Error { kind, message }
            }
        }
    }
}

impl Reply {
    fn into_result(self) -> Result<Vec<Vec<f32>>, EncoderError> {
        match self {
            Reply::Embeddings(embeddings) => Ok(embeddings),
            Reply::Error { kind, message } => Err(match kind {
                ErrorKind::Invalid => EncoderError::Invalid(message),
                ErrorKind::Overloaded => EncoderError::Overloaded,
                ErrorKind::Unavailable => EncoderError::Unavailable(message),
                ErrorKind::Internal => EncoderError::Internal(message),
            }),
        }
    }
}

/// `image` on the wire, downscaled first if its pixels exceed `max_bytes`.
pub fn encode_image_request(image: &RgbImage, max_bytes: usize) -> Result<Vec<u8>, EncoderError> {
    if image.width == 0 || image.height == 0 || image.data.len() != image.width as usize * image.height as usize * 3 {
        return Err(EncoderError::Invalid(format!("image of {}x{} with {} bytes of pixels", image.width, image.height, image.data.len())));
    }
    let fitted;
    let image = if image.data.len() + IMAGE_HEADER > max_bytes {
        let budget = (max_bytes.saturating_sub(IMAGE_HEADER) / 3) as f64;
        let scale = (budget / (f64::from(image.width) * f64::from(image.height))).sqrt();
        let width = ((f64::from(image.width) * scale).floor() as u32).max(1);
        let height = ((f64::from(image.height) * scale).floor() as u32).max(1);
        let buffer = image::RgbImage::from_raw(image.width, image.height, image.data.clone())
            .ok_or_else(|| EncoderError::Invalid("pixel buffer does not match the image size".into()))?;
        let resized = image::imageops::resize(&buffer, width, height, image::imageops::FilterType::CatmullRom);
        fitted = RgbImage { width, height, data: resized.into_raw() };
        &fitted
    } else {
        image
    };
    let mut out = Vec::with_capacity(IMAGE_HEADER + image.data.len());
    out.extend_from_slice(IMAGE_MAGIC);
    out.extend_from_slice(&image.width.to_le_bytes());
    out.extend_from_slice(&image.height.to_le_bytes());
    out.extend_from_slice(&image.data);
    Ok(out)
}

pub fn decode_image_request(payload: &[u8]) -> Result<RgbImage, EncoderError> {
    if payload.len() < IMAGE_HEADER || &payload[..4] != IMAGE_MAGIC {
        return Err(EncoderError::Invalid("not an image request (bad header)".into()));
    }
    let width = u32::from_le_bytes(payload[4..8].try_into().expect("4 bytes"));
    let height = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
    let data = payload[IMAGE_HEADER..].to_vec();
    if width == 0 || height == 0 || data.len() as u64 != u64::from(width) * u64::from(height) * 3 {
        return Err(EncoderError::Invalid(format!("image request of {width}x{height} carries {} bytes of pixels", data.len())));
    }
    Ok(RgbImage { width, height, data })
}

/// The client side: what the API holds as its encoder when the models run on GPU workers.
pub struct NatsEncoder {
    client: Client,
    timeout: Duration,
    /// The last capabilities a worker reported (or what the models' configs say, until one does).
    capabilities: RwLock<Capabilities>,
}

impl NatsEncoder {
    /// `fallback` stands for the workers' capabilities until one answers a capabilities request
    /// ([`Self::refresh_capabilities`]); it must carry the right `embedding_dim`.
    pub fn new(client: Client, timeout: Duration, fallback: Capabilities) -> Self {
        Self { client, timeout, capabilities: RwLock::new(fallback) }
    }

    /// Asks one worker for its capabilities; keeps the last known ones if none answers.
    pub async fn refresh_capabilities(&self) -> Result<Capabilities, EncoderError> {
        let reply = self.request(ENCODE_CAPABILITIES_SUBJECT, Vec::new()).await?;
        let capabilities: Capabilities = serde_json::from_slice(&reply)
            .map_err(|e| EncoderError::Internal(format!("unreadable capabilities from an encoder worker: {e}")))?;
        *self.capabilities.write().unwrap_or_else(|p| p.into_inner()) = capabilities.clone();
        Ok(capabilities)
    }

    async fn request(&self, subject: &'static str, payload: Vec<u8>) -> Result<Vec<u8>, EncoderError> {
        let request = async_nats::Request::new().payload(payload.into()).timeout(Some(self.timeout));
        let started = std::time::Instant::now();
        let outcome = self.client.send_request(subject, request).await;
        let kind = match subject {
            ENCODE_TEXT_SUBJECT => "text",
            ENCODE_IMAGE_SUBJECT => "image",
            _ => "capabilities",
        };
        let result = match outcome {
            Ok(message) => Ok(message.payload.to_vec()),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => EncoderError::Unavailable(
                    "no encoder worker is running: start an imgfleet-worker-gpu with --nats-url".into(),
                ),
                RequestErrorKind::TimedOut => EncoderError::Unavailable(format!(
                    "no encoder worker answered within {} ms; they may all be busy or stopping",
                    self.timeout.as_millis()
                )),
                RequestErrorKind::MaxPayloadExceeded => EncoderError::Invalid("the request is larger than the queue's max_payload".into()),
                _ => EncoderError::Unavailable(format!("cannot reach the encoder workers: {e}")),
            }),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(EncoderError::Unavailable(m)) if m.starts_with("no encoder worker is running") => "no_worker",
            Err(EncoderError::Unavailable(m)) if m.starts_with("no encoder worker answered") => "timeout",
            Err(_) => "error",
        };
        ENCODER_REQUESTS.with_label_values(&[kind, outcome]).inc();
        ENCODER_SECONDS.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        result
    }

    async fn embed(&self, subject: &'static str, payload: Vec<u8>) -> Result<Vec<Vec<f32>>, EncoderError> {
        let reply = self.request(subject, payload).await?;
        let reply: Reply = serde_json::from_slice(&reply)
            .map_err(|e| EncoderError::Internal(format!("unreadable reply from an encoder worker: {e}")))?;
        reply.into_result()
    }

    fn max_image_bytes(&self) -> usize {
        self.client.max_payload().saturating_sub(PAYLOAD_MARGIN).max(IMAGE_HEADER + 3)
    }
}

static ENCODER_REQUESTS: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    imgfleet_core::metrics::register(
        prometheus::IntCounterVec::new(
            prometheus::Opts::new("encoder_requests_total", "Requests to the encoder workers over NATS, by kind and outcome"),
            &["kind", "outcome"],
        )
        .expect("valid metric"),
    )
});

static ENCODER_SECONDS: std::sync::LazyLock<prometheus::HistogramVec> = std::sync::LazyLock::new(|| {
    imgfleet_core::metrics::register(
        prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("encoder_request_duration_seconds", "Round trip of a request to the encoder workers, by kind")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["kind"],
        )
        .expect("valid metric"),
    )
});

#[async_trait]
impl Encoder for NatsEncoder {
    async fn embed_images(&self, images: Vec<RgbImage>) -> Result<Vec<Vec<f32>>, EncoderError> {
        // One request per image: each fits max_payload on its own, and the queue group spreads them.
        let max = self.max_image_bytes();
        let requests = images.iter().map(|image| async move {
            let payload = encode_image_request(image, max)?;
            let mut embeddings = self.embed(ENCODE_IMAGE_SUBJECT, payload).await?;
            if embeddings.len() != 1 {
                return Err(EncoderError::Internal(format!("an encoder worker answered {} embeddings for one image", embeddings.len())));
            }
            Ok(embeddings.remove(0))
        });
        futures::future::try_join_all(requests).await
    }

    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EncoderError> {
        let count = texts.len();
        let payload = serde_json::to_vec(&TextRequest { texts }).map_err(|e| EncoderError::Internal(e.to_string()))?;
        let embeddings = self.embed(ENCODE_TEXT_SUBJECT, payload).await?;
        if embeddings.len() != count {
            return Err(EncoderError::Internal(format!("an encoder worker answered {} embeddings for {count} texts", embeddings.len())));
        }
        Ok(embeddings)
    }

    async fn caption_images(&self, _images: Vec<RgbImage>) -> Result<Vec<String>, EncoderError> {
        Err(EncoderError::Unavailable("captions are made by the GPU workers' pipeline, not on request through the API".into()))
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The worker side: answers embedding and capabilities requests with `encoder` until `stop`
/// turns true, each request on its own task (the encoder queues them for its model thread and
/// refuses with `Overloaded` when too many wait). Returns when the subscriptions are drained.
pub async fn serve_encoder(client: Client, encoder: Arc<dyn Encoder>, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<(), async_nats::Error> {
    let text = client.queue_subscribe(ENCODE_TEXT_SUBJECT, ENCODER_QUEUE_GROUP.into()).await?;
    let image = client.queue_subscribe(ENCODE_IMAGE_SUBJECT, ENCODER_QUEUE_GROUP.into()).await?;
    let capabilities = client.queue_subscribe(ENCODE_CAPABILITIES_SUBJECT, ENCODER_QUEUE_GROUP.into()).await?;
    let mut requests = futures::stream::select_all([text, image, capabilities]);
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        let message = tokio::select! {
            message = requests.next() => match message {
                Some(message) => message,
                None => break,
            },
            _ = stop.changed() => {
                if *stop.borrow() { break } else { continue }
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        };
        let Some(reply_to) = message.reply.clone() else { continue };
        let encoder = encoder.clone();
        let client = client.clone();
        in_flight.spawn(async move {
            let answer = answer(encoder.as_ref(), message.subject.as_str(), &message.payload).await;
            if let Err(e) = client.publish(reply_to, answer.into()).await {
                tracing::warn!(error = %e, "answering an encoder request failed");
            }
        });
    }
    // Stop taking requests (another worker of the group gets them), answer those taken.
    drop(requests);
    while in_flight.join_next().await.is_some() {}
    let _ = client.flush().await;
    Ok(())
}

async fn answer(encoder: &dyn Encoder, subject: &str, payload: &[u8]) -> Vec<u8> {
    let reply: Reply = match subject {
        ENCODE_CAPABILITIES_SUBJECT => return serde_json::to_vec(&encoder.capabilities()).expect("capabilities serialise"),
        ENCODE_TEXT_SUBJECT => match serde_json::from_slice::<TextRequest>(payload) {
            Ok(request) if request.texts.is_empty() => Err(EncoderError::Invalid("texts must not be empty".into())).into(),
            Ok(request) => encoder.embed_texts(request.texts).await.into(),
            Err(e) => Err(EncoderError::Invalid(format!("unreadable text request: {e}"))).into(),
        },
        _ => match decode_image_request(payload) {
            Ok(image) => encoder.embed_images(vec![image]).await.into(),
            Err(e) => Err(e).into(),
        },
    };
    serde_json::to_vec(&reply).expect("replies serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32) -> RgbImage {
        let data = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        RgbImage { width, height, data }
    }

    #[test]
    fn small_images_travel_as_they_are() {
        let original = image(40, 30);
        let wire = encode_image_request(&original, 1 << 20).unwrap();
        assert_eq!(wire.len(), IMAGE_HEADER + 40 * 30 * 3);
        assert_eq!(decode_image_request(&wire).unwrap(), original);
    }

    #[test]
    fn large_images_are_downscaled_to_fit_keeping_the_aspect_ratio() {
        let original = image(400, 200);
        let max = 60_000;
        let wire = encode_image_request(&original, max).unwrap();
        assert!(wire.len() <= max, "{} > {max}", wire.len());
        let back = decode_image_request(&wire).unwrap();
        assert!(back.width < 400 && back.height < 200);
        let ratio = f64::from(back.width) / f64::from(back.height);
        assert!((ratio - 2.0).abs() < 0.05, "aspect ratio {ratio}");
        assert!(back.width * back.height * 3 > 50_000, "scaled down further than needed: {}x{}", back.width, back.height);
    }

    #[test]
    fn bad_image_requests_are_refused() {
        assert!(matches!(decode_image_request(b"nope"), Err(EncoderError::Invalid(_))));
        let mut wire = encode_image_request(&image(4, 4), 1 << 20).unwrap();
        wire.pop();
        assert!(matches!(decode_image_request(&wire), Err(EncoderError::Invalid(_))));
        let empty = RgbImage { width: 0, height: 0, data: Vec::new() };
        assert!(encode_image_request(&empty, 1 << 20).is_err());
    }

    #[test]
    fn errors_keep_their_kind_across_the_wire() {
        for error in [
            EncoderError::Invalid("bad".into()),
            EncoderError::Overloaded,
            EncoderError::Unavailable("gone".into()),
            EncoderError::Internal("boom".into()),
        ] {
            let reply: Reply = Err(error.clone()).into();
            let wire = serde_json::to_vec(&reply).unwrap();
            let back: Reply = serde_json::from_slice(&wire).unwrap();
            assert_eq!(back.into_result().unwrap_err().to_string(), error.to_string());
        }
        let ok: Reply = Ok(vec![vec![0.5f32, -1.0]]).into();
        let back: Reply = serde_json::from_slice(&serde_json::to_vec(&ok).unwrap()).unwrap();
        assert_eq!(back.into_result().unwrap(), vec![vec![0.5f32, -1.0]]);
    }
}
