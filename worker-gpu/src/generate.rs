//! Caption decoding for BLIP as transformers 5.24's `generate` does it: greedy search and its
//! vectorised beam search, with the repetition penalty and minimum-length processors, per-row
//! stopping at [SEP], a self-attention KV cache and cross-attention keys/values computed once.

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::blip::BlipModel;

/// transformers' `early_stopping`: `true`, `false` or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    #[default]
    Heuristic,
    Stop,
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(Self::Stop),
            serde_json::Value::Bool(false) | serde_json::Value::Null => Ok(Self::Heuristic),
            serde_json::Value::String(s) if s == "never" => Ok(Self::Never),
            other => Err(serde::de::Error::custom(format!("early_stopping must be true, false or \"never\", not {other}"))),
        }
    }
}

/// The decoding settings (names and meaning as in a `generation_config.json`). The default is
/// what `BlipForConditionalGeneration.generate` does with no arguments in transformers 5.24:
/// greedy, 20 new tokens (capped by the decoder's positions), no penalties. That `generate`
/// does not read the checkpoint's `generation_config.json`, so neither does the default here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GenerationParams {
    #[serde(default)]
    pub max_length: Option<usize>,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub min_length: Option<usize>,
    #[serde(default)]
    pub min_new_tokens: Option<usize>,
    #[serde(default = "one")]
    pub num_beams: usize,
    #[serde(default = "unit")]
    pub length_penalty: f64,
    #[serde(default = "unit")]
    pub repetition_penalty: f64,
    #[serde(default)]
    pub early_stopping: EarlyStopping,
}

fn one() -> usize {
    1
}
fn unit() -> f64 {
    1.0
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_length: None,
            max_new_tokens: None,
            min_length: None,
            min_new_tokens: None,
            num_beams: 1,
            length_penalty: 1.0,
            repetition_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
        }
    }
}

/// transformers generates 20 new tokens when no length is given.
const DEFAULT_NEW_TOKENS: usize = 20;

impl GenerationParams {
    /// Total sequence lengths (prompt included): (most, fewest before [SEP] may end a row).
    pub fn lengths(&self, prompt_len: usize, max_positions: usize) -> (usize, usize) {
        let max = match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => n + prompt_len,
            (None, Some(m)) => m,
            (None, None) => (DEFAULT_NEW_TOKENS + prompt_len).min(max_positions),
        };
        // Beyond the position table transformers fails; we stop there instead.
        let max = max.min(max_positions).max(prompt_len + 1);
        let min = self.min_new_tokens.map_or(self.min_length.unwrap_or(0), |n| n + prompt_len);
        (max, min)
    }
}

/// Token ids per image (prompt included, up to and including [SEP] when reached), and, when
/// asked for, the raw logits of every step: `[rows, vocab]`, rows = images × beams.
pub struct Generated {
    pub sequences: Vec<Vec<i64>>,
    pub step_logits: Vec<Tensor>,
}

/// Decodes captions for `image_embeds` (`[batch, patches + 1, hidden]`), every row starting
/// from `prompt` (already in decoder form, see [`BlipModel::prompt_ids`]).
pub fn generate(model: &BlipModel, image_embeds: &Tensor, prompt: &[i64], params: &GenerationParams, record_logits: bool) -> Generated {
    tch::no_grad(|| {
        if params.num_beams > 1 {
            beam_search(model, image_embeds, prompt, params, record_logits)
        } else {
            greedy(model, image_embeds, prompt, params, record_logits)
        }
    })
}

/// The logits processors transformers adds for these settings, in its order, on `scores`
/// (logits for greedy, log-probabilities for beam search) given each row's `ids` so far.
fn process(scores: Tensor, ids: &Tensor, cur_len: usize, min_len: usize, penalty: f64, eos: i64) -> Tensor {
    let mut scores = scores;
    if penalty != 1.0 {
        let seen = scores.gather(1, ids, false);
        let penalised = (&seen * penalty).where_self(&seen.lt(0.0), &(&seen / penalty));
        scores = scores.scatter(1, ids, &penalised);
    }
    if cur_len < min_len {
        scores = scores.index_fill(1, &Tensor::from_slice(&[eos]).to_device(scores.device()), f64::NEG_INFINITY);
    }
    scores
}

fn prompt_rows(prompt: &[i64], rows: i64, device: tch::Device) -> Tensor {
    Tensor::from_slice(prompt).view([1, -1]).expand([rows, prompt.len() as i64], false).contiguous().to_device(device)
}

fn greedy(model: &BlipModel, image_embeds: &Tensor, prompt: &[i64], params: &GenerationParams, record: bool) -> Generated {
    let batch = image_embeds.size()[0];
    let (eos, pad) = model.special_ids();
    let (max_len, min_len) = params.lengths(prompt.len(), model.max_positions());
    let mut cache = model.decoder_cache(image_embeds);
    let mut ids = prompt_rows(prompt, batch, tch::Device::Cpu);
    let mut logits = model.decoder_step(&ids, &mut cache);
    let mut unfinished = Tensor::ones([batch], (Kind::Bool, tch::Device::Cpu));
    let mut step_logits = Vec::new();
    let mut cur_len = prompt.len();
    loop {
        let raw = logits.to_device(tch::Device::Cpu);
        if record {
            step_logits.push(raw.shallow_clone());
        }
        let scores = process(raw, &ids, cur_len, min_len, params.repetition_penalty, eos);
        let next = scores.argmax(-1, false).where_self(&unfinished, &Tensor::from(pad));
        ids = Tensor::cat(&[&ids, &next.unsqueeze(1)], 1);
        cur_len += 1;
        unfinished = unfinished.logical_and(&next.ne(eos));
        if cur_len >= max_len || unfinished.any().int64_value(&[]) == 0 {
            break;
        }
        logits = model.decoder_step(&next.unsqueeze(1), &mut cache);
    }
    let sequences = (0..batch).map(|row| trim(&Vec::<i64>::try_from(ids.get(row)).expect("int64 ids"), prompt.len(), eos)).collect();
    Generated { sequences, step_logits }
}

/// The prompt and the generated ids up to and including the first [SEP]; -1 marks unused slots.
fn trim(row: &[i64], prompt_len: usize, eos: i64) -> Vec<i64> {
    let mut out: Vec<i64> = row[..prompt_len].to_vec();
    for &id in &row[prompt_len..] {
        if id < 0 {
            break;
        }
        out.push(id);
        if id == eos {
            break;
        }
    }
    out
}

/// `tensor[b, indices[b, j], ...]`: transformers' `_gather_beams`.
fn gather_beams(tensor: &Tensor, indices: &Tensor) -> Tensor {
    let mut idx = indices.shallow_clone();
    let mut shape = indices.size();
    for &d in &tensor.size()[2..] {
        idx = idx.unsqueeze(-1);
        shape.push(d);
    }
    tensor.gather(1, &idx.expand(&shape, false), false)
}

const NEG: f64 = -1.0e9;

/// transformers' `_beam_search`, step for step (same top-k, same -1e9 masking, same
/// early-stop heuristic), so the same hypotheses win.
fn beam_search(model: &BlipModel, image_embeds: &Tensor, prompt: &[i64], params: &GenerationParams, record: bool) -> Generated {
    let cpu = tch::Device::Cpu;
    let batch = image_embeds.size()[0];
    let beams = params.num_beams as i64;
    let vocab = model.vocab_size();
    let (eos, _) = model.special_ids();
    let prompt_len = prompt.len();
    let (max_len, min_len) = params.lengths(prompt_len, model.max_positions());
    let keep = 2 * beams;
    let early_stop = params.early_stopping == EarlyStopping::Stop;
    let lp = params.length_penalty;

    let mut running = Tensor::full([batch, beams, max_len as i64], -1, (Kind::Int64, cpu));
    let _ = running.narrow(2, 0, prompt_len as i64).copy_(&Tensor::from_slice(prompt).view([1, 1, -1]));
    let mut sequences = running.copy();
    let mut running_scores = Tensor::zeros([batch, beams], (Kind::Float, cpu));
    let _ = running_scores.narrow(1, 1, beams - 1).fill_(NEG);
    let mut beam_scores = Tensor::full([batch, beams], NEG, (Kind::Float, cpu));
    let mut finished = Tensor::zeros([batch, beams], (Kind::Bool, cpu));
    let mut improvable = Tensor::ones([batch, 1], (Kind::Bool, cpu));
    let top_beam_mask = Tensor::cat(&[Tensor::ones([beams], (Kind::Bool, cpu)), Tensor::zeros([keep - beams], (Kind::Bool, cpu))], 0);
    let batch_offset = (Tensor::arange(batch, (Kind::Int64, cpu)) * beams).view([-1, 1]);

    // Each image's cross-attention keys and values, shared by its beams.
    let mut cache = model.decoder_cache(&image_embeds.repeat_interleave_self_int(beams, 0, None));
    let mut logits = model.decoder_step(&prompt_rows(prompt, batch * beams, cpu), &mut cache);
    let mut step_logits = Vec::new();
    let mut cur_len = prompt_len;
    loop {
        let raw = logits.to_device(cpu);
        if record {
            step_logits.push(raw.shallow_clone());
        }
        let flat_running = running.narrow(2, 0, cur_len as i64).reshape([batch * beams, cur_len as i64]);
        let log_probs = process(raw.log_softmax(-1, Kind::Float), &flat_running, cur_len, min_len, params.repetition_penalty, eos);
        let log_probs = (log_probs.view([batch, beams, vocab]) + running_scores.unsqueeze(-1)).view([batch, beams * vocab]);
        let (topk_log_probs, topk_indices) = log_probs.topk(keep, -1, true, true);
        let topk_beams = topk_indices.floor_divide_scalar(vocab);
        let topk_ids = topk_indices.remainder(vocab);
        let topk_sequences = gather_beams(&running, &topk_beams);
        let _ = topk_sequences.narrow(2, cur_len as i64, 1).copy_(&topk_ids.unsqueeze(-1));
        let hits = if cur_len + 1 >= max_len { topk_ids.ones_like().to_kind(Kind::Bool) } else { topk_ids.eq(eos) };

        // The best beams that did not just finish keep running.
        let topk_running_log_probs = &topk_log_probs + hits.to_kind(Kind::Float) * NEG;
        let next = topk_running_log_probs.topk(beams, -1, true, true).1;
        running = gather_beams(&topk_sequences, &next);
        running_scores = gather_beams(&topk_running_log_probs, &next);
        let source_rows = (gather_beams(&topk_beams, &next) + &batch_offset).view([-1]);

        // Finished hypotheses among the top `beams` enter the kept set if they score higher.
        let just_finished = hits.logical_and(&top_beam_mask.unsqueeze(0));
        let mut scored = &topk_log_probs / ((cur_len + 1 - prompt_len) as f64).powf(lp);
        if early_stop {
            scored += finished.all_dim(-1, true).to_kind(Kind::Float) * NEG;
        }
        scored += improvable.logical_not().to_kind(Kind::Float) * NEG;
        scored += just_finished.logical_not().to_kind(Kind::Float) * NEG;
        let merged_scores = Tensor::cat(&[&beam_scores, &scored], 1);
        let best = merged_scores.topk(beams, -1, true, true).1;
        sequences = gather_beams(&Tensor::cat(&[&sequences, &topk_sequences], 1), &best);
        beam_scores = gather_beams(&merged_scores, &best);
        finished = gather_beams(&Tensor::cat(&[&finished, &just_finished], 1), &best);

        cur_len += 1;
        let hypothetical = if params.early_stopping == EarlyStopping::Never && lp > 0.0 { max_len - prompt_len } else { cur_len - prompt_len };
        let best_possible = running_scores.narrow(1, 0, 1) / (hypothetical as f64).powf(lp);
        let worst_finished = beam_scores.min_dim(1, true).0.expand([batch, beams], false).where_self(&finished, &Tensor::from(NEG as f32));
        improvable = improvable.logical_and(&best_possible.gt_tensor(&worst_finished).any_dim(-1, true));

        let go_on = improvable.any().int64_value(&[]) != 0
            && !(finished.all().int64_value(&[]) != 0 && early_stop)
            && hits.all().int64_value(&[]) == 0;
        if !go_on {
            break;
        }
        cache.select_rows(&source_rows.to_device(model.device));
        let last = running.select(2, cur_len as i64 - 1).reshape([batch * beams, 1]);
        logits = model.decoder_step(&last, &mut cache);
    }
    let sequences = (0..batch)
        .map(|row| trim(&Vec::<i64>::try_from(sequences.get(row).get(0)).expect("int64 ids"), prompt_len, eos))
        .collect();
    Generated { sequences, step_logits }
}
