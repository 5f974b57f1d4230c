//! CLIP (vision and text towers, both projections) in `tch`, read from a Hugging Face
//! checkpoint directory as it is: `config.json`, `model.safetensors`, `tokenizer.json`,
//! `preprocessor_config.json`.

use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::layers::{Activation, Encoder, EncoderConfig};
use crate::precision::cast_weights;
use crate::preprocess::ImageProcessorConfig;
use imgfleet_models::model_dir::{ModelDir, ModelError};

#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: i64,
    #[serde(default = "d_text_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_text_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_eos")]
    pub eos_token_id: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d_vision_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_vision_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_vision_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_channels")]
    pub num_channels: i64,
    #[serde(default = "d_image")]
    pub image_size: i64,
    #[serde(default = "d_patch")]
    pub patch_size: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

/// `CLIPConfig`; absent fields take `transformers`' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "d_projection")]
    pub projection_dim: i64,
}

fn d_vocab() -> i64 { 49408 }
fn d_text_hidden() -> i64 { 512 }
fn d_text_intermediate() -> i64 { 2048 }
fn d_layers() -> i64 { 12 }
fn d_text_heads() -> i64 { 8 }
fn d_max_pos() -> i64 { 77 }
fn d_act() -> String { "quick_gelu".into() }
fn d_eps() -> f64 { 1e-5 }
fn d_eos() -> i64 { 49407 }
fn d_vision_hidden() -> i64 { 768 }
fn d_vision_intermediate() -> i64 { 3072 }
fn d_vision_heads() -> i64 { 12 }
fn d_channels() -> i64 { 3 }
fn d_image() -> i64 { 224 }
fn d_patch() -> i64 { 32 }
fn d_projection() -> i64 { 512 }

struct VisionTower {
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    position_embedding: Tensor,
    pre_layrnorm: nn::LayerNorm,
    encoder: Encoder,
    post_layernorm: nn::LayerNorm,
}

impl VisionTower {
    fn new(p: nn::Path, c: &ClipVisionConfig) -> Result<Self, ModelError> {
        let emb = &p / "embeddings";
        let positions = (c.image_size / c.patch_size).pow(2) + 1;
        let ln = nn::LayerNormConfig { eps: c.layer_norm_eps, ..Default::default() };
        Ok(Self {
            class_embedding: emb.var("class_embedding", &[c.hidden_size], nn::Init::Const(0.0)),
            patch_embedding: nn::conv2d(
                &emb / "patch_embedding",
                c.num_channels,
                c.hidden_size,
                c.patch_size,
                nn::ConvConfig { stride: c.patch_size, bias: false, ..Default::default() },
            ),
            position_embedding: (&emb / "position_embedding").var("weight", &[positions, c.hidden_size], nn::Init::Const(0.0)),
            pre_layrnorm: nn::layer_norm(&p / "pre_layrnorm", vec![c.hidden_size], ln),
            encoder: Encoder::new(
                &p / "encoder",
                &EncoderConfig {
                    hidden: c.hidden_size,
                    intermediate: c.intermediate_size,
                    layers: c.num_hidden_layers,
                    heads: c.num_attention_heads,
                    eps: c.layer_norm_eps,
                    act: Activation::parse(&c.hidden_act)?,
                },
            ),
            post_layernorm: nn::layer_norm(&p / "post_layernorm", vec![c.hidden_size], ln),
        })
    }

    /// Pooled (CLS) states after `post_layernorm`: `[batch, hidden]`.
    fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let batch = pixel_values.size()[0];
        let patches = self.patch_embedding.forward(pixel_values).flatten(2, -1).transpose(1, 2);
        let class = self.class_embedding.view([1, 1, -1]).expand([batch, 1, -1], false).to_kind(patches.kind());
        let x = Tensor::cat(&[class, patches], 1) + self.position_embedding.unsqueeze(0);
        let x = self.encoder.forward(&self.pre_layrnorm.forward(&x), false);
        self.post_layernorm.forward(&x.select(1, 0))
    }
}

struct TextTower {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    encoder: Encoder,
    final_layer_norm: nn::LayerNorm,
    eos_token_id: i64,
}

impl TextTower {
    fn new(p: nn::Path, c: &ClipTextConfig) -> Result<Self, ModelError> {
        let emb = &p / "embeddings";
        Ok(Self {
            token_embedding: nn::embedding(&emb / "token_embedding", c.vocab_size, c.hidden_size, Default::default()),
            position_embedding: nn::embedding(&emb / "position_embedding", c.max_position_embeddings, c.hidden_size, Default::default()),
            encoder: Encoder::new(
                &p / "encoder",
                &EncoderConfig {
                    hidden: c.hidden_size,
                    intermediate: c.intermediate_size,
                    layers: c.num_hidden_layers,
                    heads: c.num_attention_heads,
                    eps: c.layer_norm_eps,
                    act: Activation::parse(&c.hidden_act)?,
                },
            ),
            final_layer_norm: nn::layer_norm(
                &p / "final_layer_norm",
                vec![c.hidden_size],
                nn::LayerNormConfig { eps: c.layer_norm_eps, ..Default::default() },
            ),
            eos_token_id: c.eos_token_id,
        })
    }

    /// Pooled states at each row's EOS token: `[batch, hidden]`. Rows may be padded after
    /// their EOS with any id: the causal mask keeps padding out of every earlier position.
    fn forward(&self, input_ids: &Tensor) -> Tensor {
        let (batch, len) = input_ids.size2().expect("ids are [batch, len]");
        let device = input_ids.device();
        let positions = Tensor::arange(len, (Kind::Int64, device));
        let x = self.token_embedding.forward(input_ids) + self.position_embedding.forward(&positions).unsqueeze(0);
        let x = self.final_layer_norm.forward(&self.encoder.forward(&x, true));
        // As transformers: eos_token_id == 2 marks pre-2023 configs, which pool at the largest
        // id (the end-of-text token is the last of OpenAI's vocabulary); later configs at the
        // first EOS.
        let eos_index = if self.eos_token_id == 2 {
            input_ids.argmax(-1, false)
        } else {
            input_ids.eq(self.eos_token_id).to_kind(Kind::Int).argmax(-1, false)
        };
        x.gather(1, &eos_index.view([batch, 1, 1]).expand([batch, 1, x.size()[2]], false), false).squeeze_dim(1)
    }
}

/// A CLIP checkpoint, loaded.
pub struct ClipModel {
    pub config: ClipConfig,
    pub processor: ImageProcessorConfig,
    pub tokenizer: ClipTokenizer,
    vision: VisionTower,
    text: TextTower,
    visual_projection: nn::Linear,
    text_projection: nn::Linear,
    /// Kept alive: it owns the weights.
    _vs: nn::VarStore,
    pub device: Device,
    pub kind: Kind,
}

impl ClipModel {
    /// Loads a checkpoint directory onto `device`, its weights cast to `kind` (see
    /// [`crate::precision`]).
    pub fn load(dir: &ModelDir, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let config: ClipConfig = dir.json("config.json")?;
        let processor = ImageProcessorConfig::from_file(&dir.file("preprocessor_config.json")?)
            .map_err(|e| ModelError::Invalid(dir.describe("preprocessor_config.json"), e))?;
        let tokenizer = ClipTokenizer::load(&dir.file("tokenizer.json")?, config.text_config.max_position_embeddings)?;
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut vision = VisionTower::new(&root / "vision_model", &config.vision_config)?;
        let mut text = TextTower::new(&root / "text_model", &config.text_config)?;
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        let visual_projection =
            nn::linear(&root / "visual_projection", config.vision_config.hidden_size, config.projection_dim, no_bias);
        let text_projection = nn::linear(&root / "text_projection", config.text_config.hidden_size, config.projection_dim, no_bias);
        let weights = dir.file("model.safetensors")?;
        vs.load(&weights).map_err(|e| ModelError::Invalid(weights.display().to_string(), e.to_string()))?;
        vs.freeze();
        vision.encoder.fold_activations();
        text.encoder.fold_activations();
        cast_weights(&mut vs, kind);
        vision.encoder.fuse();
        text.encoder.fuse();
        Ok(Self { config, processor, tokenizer, vision, text, visual_projection, text_projection, _vs: vs, device, kind })
    }

    pub fn embedding_dim(&self) -> usize {
        self.config.projection_dim as usize
    }

    /// Input side of the vision tower.
    pub fn image_size(&self) -> u32 {
        self.config.vision_config.image_size as u32
    }

    /// Projected, unnormalised image features of `[batch, 3, size, size]` pixel values.
    pub fn image_features(&self, pixel_values: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let pooled = self.vision.forward(&pixel_values.to_device(self.device).to_kind(self.kind));
            self.visual_projection.forward(&pooled).to_kind(Kind::Float)
        })
    }

    /// Projected, unnormalised text features of `[batch, len]` token ids.
    pub fn text_features(&self, input_ids: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let pooled = self.text.forward(&input_ids.to_device(self.device));
            self.text_projection.forward(&pooled).to_kind(Kind::Float)
        })
    }

    /// Token ids padded to the longest row (with the end-of-text id, as the tokenizer pads).
    pub fn ids_tensor(&self, ids: &[Vec<i64>]) -> Tensor {
        let len = ids.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut flat = Vec::with_capacity(ids.len() * len);
        for row in ids {
            flat.extend_from_slice(row);
            flat.extend(std::iter::repeat_n(self.tokenizer.pad_id, len - row.len()));
        }
        Tensor::from_slice(&flat).view([ids.len() as i64, len as i64])
    }
}

/// L2-normalises each row.
pub fn normalise_rows(features: &Tensor) -> Tensor {
    let norm = features.norm_scalaropt_dim(2, [-1].as_slice(), true).clamp_min(1e-12);
    features / norm
}

/// The checkpoint's `tokenizer.json`, truncating to the model's positions.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    pub pad_id: i64,
    pub max_len: usize,
}

impl ClipTokenizer {
    pub fn load(path: &Path, max_len: i64) -> Result<Self, ModelError> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Invalid(path.display().to_string(), e.to_string()))?;
        inner
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_len as usize, ..Default::default() }))
            .map_err(|e| ModelError::Invalid(path.display().to_string(), e.to_string()))?;
        inner.with_padding(None);
        let pad_id = ["<|endoftext|>", "</s>", "[PAD]"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .ok_or_else(|| ModelError::Invalid(path.display().to_string(), "no end-of-text token".into()))?;
        Ok(Self { inner, pad_id: i64::from(pad_id), max_len: max_len as usize })
    }

    /// Ids with start and end tokens, at most the model's positions long.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Vec<i64>>, String> {
        let encodings = self.inner.encode_batch(texts.to_vec(), true).map_err(|e| e.to_string())?;
        Ok(encodings.iter().map(|e| e.get_ids().iter().map(|&id| i64::from(id)).collect()).collect())
    }
}
