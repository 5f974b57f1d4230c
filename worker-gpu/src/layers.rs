//! Transformer building blocks shared by CLIP's towers and BLIP's vision encoder:
//! pre-LayerNorm encoder layers named as Hugging Face names them.

use tch::Tensor;
use tch::nn::{self, Module};

use imgfleet_models::model_dir::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
    Silu,
}

/// quick_gelu's constant: `x·σ(1.702·x)`.
const QUICK_GELU: f64 = 1.702;

impl Activation {
    pub fn parse(name: &str) -> Result<Self, ModelError> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(ModelError::Unsupported(format!("activation {other:?}"))),
        }
    }

    /// In place: `x` is a fresh projection output nothing else holds.
    pub fn apply(self, mut x: Tensor) -> Tensor {
        match self {
            Self::QuickGelu => &x * (&x * QUICK_GELU).sigmoid(),
            Self::Gelu => x.gelu_("none"),
            Self::GeluTanh => x.gelu_("tanh"),
            Self::Silu => x.silu_(),
        }
    }
}

/// Scales a linear layer's weight (and bias, when `with_bias`) in place; the weights must be
/// frozen.
fn scale(linear: &mut nn::Linear, factor: f64, with_bias: bool) {
    tch::no_grad(|| {
        let _ = linear.ws.g_mul_scalar_(factor);
        if with_bias && let Some(bs) = linear.bs.as_mut() {
            let _ = bs.g_mul_scalar_(factor);
        }
    });
}

pub struct EncoderConfig {
    pub hidden: i64,
    pub intermediate: i64,
    pub layers: i64,
    pub heads: i64,
    pub eps: f64,
    pub act: Activation,
}

/// Multi-head self-attention with separate q/k/v projections in the checkpoint (`q_proj`,
/// `k_proj`, `v_proj`, `out_proj`), fused into one projection once the weights are loaded.
pub struct SelfAttention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    heads: i64,
    /// `[q; k; v]` weights and biases: one GEMM instead of three.
    fused: Option<(Tensor, Tensor)>,
}

impl SelfAttention {
    pub fn new(p: &nn::Path, hidden: i64, heads: i64) -> Self {
        let c = Default::default();
        Self {
            q: nn::linear(p / "q_proj", hidden, hidden, c),
            k: nn::linear(p / "k_proj", hidden, hidden, c),
            v: nn::linear(p / "v_proj", hidden, hidden, c),
            out: nn::linear(p / "out_proj", hidden, hidden, c),
            heads,
            fused: None,
        }
    }

    /// Builds the fused projection from the loaded (and possibly half-precision) weights.
    pub fn fuse(&mut self) {
        let bias = |l: &nn::Linear| l.bs.as_ref().expect("attention projections have biases").shallow_clone();
        let w = Tensor::cat(&[&self.q.ws, &self.k.ws, &self.v.ws], 0);
        let b = Tensor::cat(&[bias(&self.q), bias(&self.k), bias(&self.v)], 0);
        self.fused = Some((w, b));
    }

    /// `causal`: each position sees itself and earlier ones only.
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, t, d) = x.size3().expect("[batch, len, hidden]");
        let hd = d / self.heads;
        let split = |y: Tensor| y.view([b, t, self.heads, hd]).transpose(1, 2);
        let (q, k, v) = match &self.fused {
            Some((w, bias)) => {
                let qkv = x.linear(w, Some(bias)).view([b, t, 3, self.heads, hd]).permute([2, 0, 3, 1, 4]);
                (qkv.get(0), qkv.get(1), qkv.get(2))
            }
            None => (split(self.q.forward(x)), split(self.k.forward(x)), split(self.v.forward(x))),
        };
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, causal, None, false);
        attended.transpose(1, 2).contiguous().view([b, t, d]).apply(&self.out)
    }
}

struct EncoderLayer {
    attn: SelfAttention,
    ln1: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    ln2: nn::LayerNorm,
    act: Activation,
}

/// `layers.{i}.{self_attn, layer_norm1, mlp.fc1, mlp.fc2, layer_norm2}`.
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(p: nn::Path, c: &EncoderConfig) -> Self {
        let ln = nn::LayerNormConfig { eps: c.eps, ..Default::default() };
        let layers = (0..c.layers)
            .map(|i| {
                let l = &p / "layers" / i;
                EncoderLayer {
                    attn: SelfAttention::new(&(&l / "self_attn"), c.hidden, c.heads),
                    ln1: nn::layer_norm(&l / "layer_norm1", vec![c.hidden], ln),
                    fc1: nn::linear(&l / "mlp" / "fc1", c.hidden, c.intermediate, Default::default()),
                    fc2: nn::linear(&l / "mlp" / "fc2", c.intermediate, c.hidden, Default::default()),
                    ln2: nn::layer_norm(&l / "layer_norm2", vec![c.hidden], ln),
                    act: c.act,
                }
            })
            .collect();
        Self { layers }
    }

    /// Turns quick_gelu MLPs into silu ones with the same output: `x·σ(1.702x) =
    /// silu(1.702x)/1.702`, so fc1 is scaled by 1.702 and fc2's weight by 1/1.702, and the
    /// activation is one in-place kernel instead of three passes. Call on the frozen fp32
    /// weights, before any cast.
    pub fn fold_activations(&mut self) {
        for l in &mut self.layers {
            if l.act == Activation::QuickGelu {
                scale(&mut l.fc1, QUICK_GELU, true);
                scale(&mut l.fc2, 1.0 / QUICK_GELU, false);
                l.act = Activation::Silu;
            }
        }
    }

    /// Fuses each layer's q/k/v projections; call once the weights are loaded.
    pub fn fuse(&mut self) {
        for l in &mut self.layers {
            l.attn.fuse();
        }
    }

    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for l in &self.layers {
            x = &x + l.attn.forward(&l.ln1.forward(&x), causal);
            let h = l.act.apply(l.fc1.forward(&l.ln2.forward(&x)));
            x = &x + l.fc2.forward(&h);
        }
        x
    }
}
