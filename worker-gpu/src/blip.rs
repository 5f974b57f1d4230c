//! BLIP for conditional generation (captioning) in `tch`, read from a Hugging Face checkpoint
//! directory as it is (`Salesforce/blip-image-captioning-base` layout): a ViT vision encoder and
//! a BERT text decoder with cross-attention, whose LM head is tied to the word embeddings.
//! Decoding (greedy, beam search) lives in `generate.rs`.

use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::generate::GenerationParams;
use crate::layers::Activation;
use crate::precision::cast_weights;
use crate::preprocess::ImageProcessorConfig;
use imgfleet_models::model_dir::{ModelDir, ModelError};

/// `BlipTextConfig`; absent fields take `transformers`' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct BlipTextConfig {
    #[serde(default = "d_text_vocab")]
    pub vocab_size: i64,
    #[serde(default = "d_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_text_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_bos")]
    pub bos_token_id: i64,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default = "d_sep")]
    pub sep_token_id: i64,
}

/// `BlipVisionConfig`; absent fields take `transformers`' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct BlipVisionConfig {
    #[serde(default = "d_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_vision_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_image")]
    pub image_size: i64,
    #[serde(default = "d_patch")]
    pub patch_size: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_vision_eps")]
    pub layer_norm_eps: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlipConfig {
    pub text_config: BlipTextConfig,
    pub vision_config: BlipVisionConfig,
}

fn d_text_vocab() -> i64 { 30524 }
fn d_hidden() -> i64 { 768 }
fn d_intermediate() -> i64 { 3072 }
fn d_layers() -> i64 { 12 }
fn d_text_heads() -> i64 { 8 }
fn d_vision_heads() -> i64 { 12 }
fn d_max_pos() -> i64 { 512 }
fn d_act() -> String { "gelu".into() }
fn d_text_eps() -> f64 { 1e-12 }
fn d_vision_eps() -> f64 { 1e-5 }
fn d_bos() -> i64 { 30522 }
fn d_sep() -> i64 { 102 }
fn d_image() -> i64 { 384 }
fn d_patch() -> i64 { 16 }

/// `[batch, len, heads * head_dim]` → `[batch, heads, len, head_dim]`.
fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, t, d) = x.size3().expect("[batch, len, hidden]");
    x.view([b, t, heads, d / heads]).transpose(1, 2)
}

fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, t, hd) = x.size4().expect("[batch, heads, len, head_dim]");
    x.transpose(1, 2).contiguous().view([b, t, h * hd])
}

fn attend(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, causal, None, false)
}

/// One pre-LayerNorm ViT layer with BLIP's fused `self_attn.qkv` and `self_attn.projection`.
struct VisionLayer {
    qkv: nn::Linear,
    projection: nn::Linear,
    ln1: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    ln2: nn::LayerNorm,
    heads: i64,
    act: Activation,
}

impl VisionLayer {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, t, d) = x.size3().expect("[batch, len, hidden]");
        let qkv = self.qkv.forward(&self.ln1.forward(x)).view([b, t, 3, self.heads, d / self.heads]).permute([2, 0, 3, 1, 4]);
        let attended = merge_heads(&attend(&qkv.get(0), &qkv.get(1), &qkv.get(2), false));
        let x = x + self.projection.forward(&attended);
        let h = self.act.apply(self.fc1.forward(&self.ln2.forward(&x)));
        &x + self.fc2.forward(&h)
    }
}

struct VisionModel {
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    position_embedding: Tensor,
    layers: Vec<VisionLayer>,
    post_layernorm: nn::LayerNorm,
}

impl VisionModel {
    fn new(p: nn::Path, c: &BlipVisionConfig) -> Result<Self, ModelError> {
        let emb = &p / "embeddings";
        let positions = (c.image_size / c.patch_size).pow(2) + 1;
        let ln = nn::LayerNormConfig { eps: c.layer_norm_eps, ..Default::default() };
        let act = Activation::parse(&c.hidden_act)?;
        let d = c.hidden_size;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = &p / "encoder" / "layers" / i;
                VisionLayer {
                    qkv: nn::linear(&l / "self_attn" / "qkv", d, 3 * d, Default::default()),
                    projection: nn::linear(&l / "self_attn" / "projection", d, d, Default::default()),
                    ln1: nn::layer_norm(&l / "layer_norm1", vec![d], ln),
                    fc1: nn::linear(&l / "mlp" / "fc1", d, c.intermediate_size, Default::default()),
                    fc2: nn::linear(&l / "mlp" / "fc2", c.intermediate_size, d, Default::default()),
                    ln2: nn::layer_norm(&l / "layer_norm2", vec![d], ln),
                    heads: c.num_attention_heads,
                    act,
                }
            })
            .collect();
        Ok(Self {
            class_embedding: emb.var("class_embedding", &[1, 1, d], nn::Init::Const(0.0)),
            patch_embedding: nn::conv2d(
                &emb / "patch_embedding",
                3,
                d,
                c.patch_size,
                nn::ConvConfig { stride: c.patch_size, ..Default::default() },
            ),
            position_embedding: emb.var("position_embedding", &[1, positions, d], nn::Init::Const(0.0)),
            layers,
            post_layernorm: nn::layer_norm(&p / "post_layernorm", vec![d], ln),
        })
    }

    /// Every token's state after `post_layernorm`: `[batch, patches + 1, hidden]`.
    fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let batch = pixel_values.size()[0];
        let patches = self.patch_embedding.forward(pixel_values).flatten(2, -1).transpose(1, 2);
        let class = self.class_embedding.expand([batch, 1, -1], false);
        let mut x = Tensor::cat(&[class, patches], 1) + &self.position_embedding;
        for layer in &self.layers {
            x = layer.forward(&x);
        }
        self.post_layernorm.forward(&x)
    }
}

/// BERT attention (`self` projections, then `output.dense` and a post-LayerNorm residual).
struct TextAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    dense: nn::Linear,
    ln: nn::LayerNorm,
    /// `[query; key; value]` for self-attention: one GEMM per step instead of three.
    fused: Option<(Tensor, Tensor)>,
}

impl TextAttention {
    fn new(p: nn::Path, hidden: i64, kv_in: i64, eps: f64) -> Self {
        let s = &p / "self";
        Self {
            query: nn::linear(&s / "query", hidden, hidden, Default::default()),
            key: nn::linear(&s / "key", kv_in, hidden, Default::default()),
            value: nn::linear(&s / "value", kv_in, hidden, Default::default()),
            dense: nn::linear(&p / "output" / "dense", hidden, hidden, Default::default()),
            ln: nn::layer_norm(&p / "output" / "LayerNorm", vec![hidden], nn::LayerNormConfig { eps, ..Default::default() }),
            fused: None,
        }
    }

    fn fuse(&mut self) {
        let bias = |l: &nn::Linear| l.bs.as_ref().expect("attention projections have biases").shallow_clone();
        let w = Tensor::cat(&[&self.query.ws, &self.key.ws, &self.value.ws], 0);
        let b = Tensor::cat(&[bias(&self.query), bias(&self.key), bias(&self.value)], 0);
        self.fused = Some((w, b));
    }

    fn output(&self, context: &Tensor, input: &Tensor) -> Tensor {
        self.ln.forward(&(self.dense.forward(&merge_heads(context)) + input))
    }
}

struct TextLayer {
    attention: TextAttention,
    crossattention: TextAttention,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_ln: nn::LayerNorm,
    heads: i64,
    act: Activation,
}

/// Keys and values a decoding run keeps: self-attention's grow by one position per step;
/// cross-attention's are computed once from the image embeddings.
pub struct DecoderCache {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Positions already in the self-attention cache.
    pub len: i64,
}

impl DecoderCache {
    /// Keeps the rows `rows` (a `[n]` int64 index tensor), in that order: beam reordering.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for kv in self.self_kv.iter_mut().flatten() {
            *kv = (kv.0.index_select(0, rows), kv.1.index_select(0, rows));
        }
    }
}

struct TextDecoder {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    embeddings_ln: nn::LayerNorm,
    layers: Vec<TextLayer>,
    transform_dense: nn::Linear,
    transform_ln: nn::LayerNorm,
    /// `cls.predictions.bias`; the decoder weight is the word embedding matrix (tied).
    lm_bias: Tensor,
    act: Activation,
}

impl TextDecoder {
    fn new(p: nn::Path, c: &BlipTextConfig, encoder_hidden: i64) -> Result<Self, ModelError> {
        let bert = &p / "bert";
        let emb = &bert / "embeddings";
        let d = c.hidden_size;
        let ln = nn::LayerNormConfig { eps: c.layer_norm_eps, ..Default::default() };
        let act = Activation::parse(&c.hidden_act)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = &bert / "encoder" / "layer" / i;
                TextLayer {
                    attention: TextAttention::new(&l / "attention", d, d, c.layer_norm_eps),
                    crossattention: TextAttention::new(&l / "crossattention", d, encoder_hidden, c.layer_norm_eps),
                    intermediate: nn::linear(&l / "intermediate" / "dense", d, c.intermediate_size, Default::default()),
                    output: nn::linear(&l / "output" / "dense", c.intermediate_size, d, Default::default()),
                    output_ln: nn::layer_norm(&l / "output" / "LayerNorm", vec![d], ln),
                    heads: c.num_attention_heads,
                    act,
                }
            })
            .collect();
        let head = &p / "cls" / "predictions";
        Ok(Self {
            word_embeddings: nn::embedding(&emb / "word_embeddings", c.vocab_size, d, Default::default()),
            position_embeddings: nn::embedding(&emb / "position_embeddings", c.max_position_embeddings, d, Default::default()),
            embeddings_ln: nn::layer_norm(&emb / "LayerNorm", vec![d], ln),
            layers,
            transform_dense: nn::linear(&head / "transform" / "dense", d, d, Default::default()),
            transform_ln: nn::layer_norm(&head / "transform" / "LayerNorm", vec![d], ln),
            lm_bias: head.var("bias", &[c.vocab_size], nn::Init::Const(0.0)),
            act,
        })
    }

    fn fuse(&mut self) {
        for l in &mut self.layers {
            l.attention.fuse();
        }
    }

    fn cache(&self, image_embeds: &Tensor) -> DecoderCache {
        let cross_kv = self
            .layers
            .iter()
            .map(|l| {
                let a = &l.crossattention;
                (split_heads(&a.key.forward(image_embeds), l.heads), split_heads(&a.value.forward(image_embeds), l.heads))
            })
            .collect();
        DecoderCache { self_kv: (0..self.layers.len()).map(|_| None).collect(), cross_kv, len: 0 }
    }

    /// Runs `ids` (`[batch, new]`) after the cached positions and returns the last position's
    /// logits, `[batch, vocab]`. More than one new position is allowed only on an empty cache
    /// (the prompt), where the causal mask is the plain lower triangle.
    fn step(&self, ids: &Tensor, cache: &mut DecoderCache) -> Tensor {
        let (_, new) = ids.size2().expect("ids are [batch, len]");
        assert!(new == 1 || cache.len == 0, "several new positions only on an empty cache");
        let positions = Tensor::arange_start(cache.len, cache.len + new, (Kind::Int64, ids.device()));
        let mut x = self
            .embeddings_ln
            .forward(&(self.word_embeddings.forward(ids) + self.position_embeddings.forward(&positions).unsqueeze(0)));
        for (i, l) in self.layers.iter().enumerate() {
            let a = &l.attention;
            let (b, t, d) = x.size3().expect("[batch, len, hidden]");
            let (w, bias) = a.fused.as_ref().expect("fused after loading");
            let qkv = x.linear(w, Some(bias)).view([b, t, 3, l.heads, d / l.heads]).permute([2, 0, 3, 1, 4]);
            let (q, mut k, mut v) = (qkv.get(0), qkv.get(1), qkv.get(2));
            if let Some((pk, pv)) = &cache.self_kv[i] {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            let context = attend(&q, &k, &v, new > 1);
            cache.self_kv[i] = Some((k, v));
            x = a.output(&context, &x);
            let c = &l.crossattention;
            let (ck, cv) = &cache.cross_kv[i];
            let context = attend(&split_heads(&c.query.forward(&x), l.heads), ck, cv, false);
            x = c.output(&context, &x);
            let h = l.act.apply(l.intermediate.forward(&x));
            x = l.output_ln.forward(&(l.output.forward(&h) + &x));
        }
        cache.len += new;
        let last = x.select(1, new - 1);
        let h = self.transform_ln.forward(&self.act.apply(self.transform_dense.forward(&last)));
        h.matmul(&self.word_embeddings.ws.tr()) + &self.lm_bias
    }
}

/// A BLIP captioning checkpoint, loaded.
pub struct BlipModel {
    pub config: BlipConfig,
    pub processor: ImageProcessorConfig,
    pub tokenizer: tokenizers::Tokenizer,
    /// The checkpoint's `generation_config.json`, when it has one. transformers 5.24's
    /// `BlipForConditionalGeneration.generate` does not read it; see [`GenerationParams`].
    pub checkpoint_generation: Option<GenerationParams>,
    vision: VisionModel,
    text: TextDecoder,
    /// Kept alive: it owns the weights.
    _vs: nn::VarStore,
    pub device: Device,
    pub kind: Kind,
}

impl BlipModel {
    /// Loads a checkpoint directory onto `device`, its weights cast to `kind` (see
    /// [`crate::precision`]).
    pub fn load(dir: &ModelDir, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let config: BlipConfig = dir.json("config.json")?;
        let processor = ImageProcessorConfig::from_file(&dir.file("preprocessor_config.json")?)
            .map_err(|e| ModelError::Invalid(dir.describe("preprocessor_config.json"), e))?;
        let tokenizer = load_tokenizer(&dir.file("tokenizer.json")?)?;
        let checkpoint_generation = if dir.path.join("generation_config.json").is_file() {
            Some(dir.json::<GenerationParams>("generation_config.json")?)
        } else {
            None
        };
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let vision = VisionModel::new(&root / "vision_model", &config.vision_config)?;
        let mut text = TextDecoder::new(&root / "text_decoder", &config.text_config, config.vision_config.hidden_size)?;
        let weights = dir.file("model.safetensors")?;
        vs.load(&weights).map_err(|e| ModelError::Invalid(weights.display().to_string(), e.to_string()))?;
        vs.freeze();
        cast_weights(&mut vs, kind);
        text.fuse();
        Ok(Self { config, processor, tokenizer, checkpoint_generation, vision, text, _vs: vs, device, kind })
    }

    /// Input side of the vision encoder.
    pub fn image_size(&self) -> u32 {
        self.config.vision_config.image_size as u32
    }

    pub fn vocab_size(&self) -> i64 {
        self.config.text_config.vocab_size
    }

    pub fn max_positions(&self) -> usize {
        self.config.text_config.max_position_embeddings as usize
    }

    /// The vision encoder's output for `[batch, 3, size, size]` pixel values, in the model's kind.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Tensor {
        tch::no_grad(|| self.vision.forward(&pixel_values.to_device(self.device).to_kind(self.kind)))
    }

    /// A decoder cache whose cross-attention keys and values come from `image_embeds`.
    pub fn decoder_cache(&self, image_embeds: &Tensor) -> DecoderCache {
        tch::no_grad(|| self.text.cache(image_embeds))
    }

    /// Feeds `ids` (`[batch, new]`) to the decoder; fp32 logits of the last position.
    pub fn decoder_step(&self, ids: &Tensor, cache: &mut DecoderCache) -> Tensor {
        tch::no_grad(|| self.text.step(&ids.to_device(self.device), cache).to_kind(Kind::Float))
    }

    /// The decoder's prompt as `BlipForConditionalGeneration.generate` builds it: the
    /// tokenized text with its leading [CLS] replaced by the bos ([DEC]) token and its trailing
    /// [SEP] dropped; no text is the bos token alone.
    pub fn prompt_ids(&self, prompt: Option<&str>) -> Result<Vec<i64>, String> {
        let bos = self.config.text_config.bos_token_id;
        let Some(text) = prompt else { return Ok(vec![bos]) };
        let encoding = self.tokenizer.encode(text, true).map_err(|e| e.to_string())?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
        if ids.len() < 2 {
            return Err(format!("prompt {text:?} tokenizes to fewer than two tokens"));
        }
        ids[0] = bos;
        ids.pop();
        if ids.len() >= self.max_positions() {
            return Err(format!("prompt {text:?} is longer than the decoder's {} positions", self.max_positions()));
        }
        Ok(ids)
    }

    /// The tokenizer's decode with special tokens skipped (as `batch_decode(skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[i64]) -> Result<String, String> {
        let ids: Vec<u32> = ids.iter().filter_map(|&id| u32::try_from(id).ok()).collect();
        self.tokenizer.decode(&ids, true).map_err(|e| e.to_string())
    }

    /// Captions for `[batch, 3, size, size]` pixel values.
    pub fn caption(&self, pixel_values: &Tensor, prompt: Option<&str>, params: &GenerationParams) -> Result<Vec<String>, String> {
        let prompt_ids = self.prompt_ids(prompt)?;
        let image_embeds = self.image_embeds(pixel_values);
        let generated = crate::generate::generate(self, &image_embeds, &prompt_ids, params, false);
        generated.sequences.iter().map(|ids| self.decode(ids)).collect()
    }

    pub(crate) fn special_ids(&self) -> (i64, i64) {
        (self.config.text_config.sep_token_id, self.config.text_config.pad_token_id)
    }
}

fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer, ModelError> {
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Invalid(path.display().to_string(), e.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| ModelError::Invalid(path.display().to_string(), e.to_string()))?;
    Ok(tokenizer)
}
