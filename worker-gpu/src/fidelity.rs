//! How far a reduced-precision model strays from the fp32 one: the smallest row cosine of two
//! embedding batches, and for BLIP the share of identical greedy captions and the largest
//! per-step logit difference. Used by the fidelity tests and the benchmarks.

use tch::{Kind, Tensor};

use crate::blip::BlipModel;
use crate::clip::normalise_rows;
use crate::generate::{GenerationParams, generate};

/// Smallest cosine between matching rows of two `[n, d]` tensors.
pub fn min_row_cosine(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "compared embeddings have the same shape");
    let on_cpu = |t: &Tensor| t.to_device(tch::Device::Cpu).to_kind(Kind::Float);
    let (a, b) = (on_cpu(a), on_cpu(b));
    (normalise_rows(&a) * normalise_rows(&b)).sum_dim_intlist([-1].as_slice(), false, Kind::Float).min().double_value(&[])
}

/// Greedy captions of one model against another's on the same pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreedyAgreement {
    pub captions: usize,
    /// Captions whose token ids are all equal.
    pub identical: usize,
    /// Largest absolute logit difference at a step both runs reached with the same tokens.
    pub max_logit_diff: f64,
    /// Largest logit at those steps (the scale the difference is read against).
    pub max_logit: f64,
}

impl GreedyAgreement {
    pub fn share_identical(&self) -> f64 {
        self.identical as f64 / self.captions.max(1) as f64
    }
}

/// Captions `pixels` (`[batch, 3, size, size]`) greedily with both models and compares them.
pub fn greedy_agreement(reference: &BlipModel, other: &BlipModel, pixels: &Tensor, params: &GenerationParams) -> GreedyAgreement {
    let prompt = reference.prompt_ids(None).expect("the bos prompt");
    let a = generate(reference, &reference.image_embeds(pixels), &prompt, params, true);
    let b = generate(other, &other.image_embeds(pixels), &prompt, params, true);
    let sep = reference.special_ids().0;
    let mut agreement = GreedyAgreement { captions: a.sequences.len(), identical: 0, max_logit_diff: 0.0, max_logit: 0.0 };
    for (row, (ours, theirs)) in a.sequences.iter().zip(&b.sequences).enumerate() {
        agreement.identical += usize::from(ours == theirs);
        let steps = a.step_logits.len().min(b.step_logits.len());
        for step in 0..steps {
            // Step `step` predicts the token at `prompt + step` from the tokens before it; past a
            // difference or the row's [SEP] the two runs no longer see the same input.
            let seen = prompt.len() + step;
            if seen > ours.len().min(theirs.len()) || ours[..seen] != theirs[..seen] || ours[..seen].contains(&sep) {
                break;
            }
            let (x, y) = (a.step_logits[step].get(row as i64), b.step_logits[step].get(row as i64));
            agreement.max_logit_diff = agreement.max_logit_diff.max((&x - &y).abs().max().double_value(&[]));
            agreement.max_logit = agreement.max_logit.max(x.abs().max().double_value(&[]));
        }
    }
    agreement
}
