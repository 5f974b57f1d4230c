//! bf16 against fp32 on the tiny random checkpoints (tests/fixtures/models): embeddings
//! nearly parallel, greedy captions mostly identical with small per-step logit differences.
//! The equality-with-transformers tests (clip.rs, blip.rs) stay in fp32.

use std::collections::HashMap;

use imgfleet_models::model_dir::ModelDir;
use imgfleet_worker_gpu::blip::BlipModel;
use imgfleet_worker_gpu::clip::ClipModel;
use imgfleet_worker_gpu::fidelity::{greedy_agreement, min_row_cosine};
use imgfleet_worker_gpu::generate::GenerationParams;
use tch::{Device, Kind, Tensor};

use crate::clip::fixture;

const MIN_COSINE: f64 = 0.999;
/// Extra seeded random images besides the fixture's reference ones.
const RANDOM_IMAGES: i64 = 29;

fn dir(name: &str) -> ModelDir {
    ModelDir::resolve(fixture(name).to_str().unwrap(), &[]).unwrap()
}

fn refs(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("reference.safetensors")).unwrap().into_iter().collect()
}

/// The reference pixels followed by seeded noise in the normalised range.
fn pixels(reference: &Tensor, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let size = reference.size();
    let noise = Tensor::randn([RANDOM_IMAGES, size[1], size[2], size[3]], (Kind::Float, Device::Cpu));
    Tensor::cat(&[reference, &noise], 0)
}

fn check_clip(name: &str) {
    let (fp32, bf16) = (ClipModel::load(&dir(name), Device::Cpu, Kind::Float).unwrap(), ClipModel::load(&dir(name), Device::Cpu, Kind::BFloat16).unwrap());
    let refs = refs(name);
    let images = pixels(&Tensor::cat(&[&refs["at_size.pixel_values"], &refs["larger.pixel_values"]], 0), 7);
    let cos = min_row_cosine(&fp32.image_features(&images), &bf16.image_features(&images));
    println!("{name}: bf16 vs fp32 image embeddings ({} images): min cosine {cos:.6}", images.size()[0]);
    assert!(cos >= MIN_COSINE, "{name}: image cosine {cos}");
    let ids = &refs["text.input_ids"];
    let cos = min_row_cosine(&fp32.text_features(ids), &bf16.text_features(ids));
    println!("{name}: bf16 vs fp32 text embeddings ({} texts): min cosine {cos:.6}", ids.size()[0]);
    assert!(cos >= MIN_COSINE, "{name}: text cosine {cos}");
}

/// Share of identical captions and the per-step logit difference, against bounds a little
/// looser than what was measured (printed).
fn check_blip(name: &str, min_share: f64, max_logit_diff: f64) {
    let (fp32, bf16) = (BlipModel::load(&dir(name), Device::Cpu, Kind::Float).unwrap(), BlipModel::load(&dir(name), Device::Cpu, Kind::BFloat16).unwrap());
    let images = pixels(&refs(name)["at_size.pixel_values"], 11);
    let agreement = greedy_agreement(&fp32, &bf16, &images, &GenerationParams::default());
    println!(
        "{name}: bf16 vs fp32 greedy captions: {}/{} identical ({:.2}), per-step logits max abs diff {:.3} (largest logit {:.2})",
        agreement.identical,
        agreement.captions,
        agreement.share_identical(),
        agreement.max_logit_diff,
        agreement.max_logit
    );
    assert!(agreement.share_identical() >= min_share, "{name}: {agreement:?}");
    assert!(agreement.max_logit_diff <= max_logit_diff, "{name}: {agreement:?}");
}

#[test]
fn clip_a_bf16_embeddings_stay_parallel_to_fp32() {
    check_clip("clip-tiny-a");
}

#[test]
fn clip_b_bf16_embeddings_stay_parallel_to_fp32() {
    check_clip("clip-tiny-b");
}

#[test]
fn blip_a_bf16_greedy_captions_follow_fp32() {
    check_blip("blip-tiny-a", 0.75, 0.3);
}

#[test]
fn blip_b_bf16_greedy_captions_follow_fp32() {
    check_blip("blip-tiny-b", 0.75, 0.3);
}
