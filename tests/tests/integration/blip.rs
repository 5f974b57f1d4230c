//! BLIP captioning in tch against `transformers` on the tiny random checkpoints in
//! tests/fixtures/models/blip-tiny-* (made by scripts/make_test_models.py), fp32 on CPU.

use std::collections::HashMap;

use imgfleet_core::domain::RgbImage;
use imgfleet_models::model_dir::ModelDir;
use imgfleet_worker_gpu::blip::BlipModel;
use imgfleet_worker_gpu::generate::{GenerationParams, generate};
use tch::{Device, Kind, Tensor};

use crate::clip::fixture;

/// Largest absolute difference allowed between our decoder logits and transformers', per step.
const LOGITS_BOUND: f64 = 1e-4;

fn load(name: &str) -> BlipModel {
    let dir = ModelDir::resolve(fixture(name).to_str().unwrap(), &[]).unwrap();
    BlipModel::load(&dir, Device::Cpu, Kind::Float).unwrap()
}

fn reference(name: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = fixture(name);
    let tensors = Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap().into_iter().collect();
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    (tensors, meta)
}

fn image(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.size3().unwrap();
    RgbImage { width: w as u32, height: h as u32, data: Vec::<u8>::try_from(t.flatten(0, -1)).unwrap() }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// A transformers output row cut as ours are: the prompt, then ids up to the first [SEP].
fn expected_row(row: &[i64], prompt_len: usize, sep: i64) -> Vec<i64> {
    let end = row[prompt_len..].iter().position(|&id| id == sep).map_or(row.len(), |i| prompt_len + i + 1);
    row[..end].to_vec()
}

fn check_preprocessing(name: &str) {
    let model = load(name);
    let (refs, meta) = reference(name);
    for (label, key, max_bound, mean_bound) in [("at_size", "images", 1e-6, 1e-6), ("larger", "larger", 0.5, 5e-3)] {
        let count = meta[key].as_u64().unwrap() as usize;
        let size = i64::from(model.image_size());
        let flat: Vec<f32> = (0..count)
            .flat_map(|i| {
                let img = image(&refs[&format!("{label}.image.{i}")]);
                model.processor.normalise(&model.processor.prepare(&img))
            })
            .collect();
        let ours = Tensor::from_slice(&flat).view([count as i64, 3, size, size]);
        let diff = (&ours - &refs[&format!("{label}.pixel_values")]).abs();
        let (max, mean) = (diff.max().double_value(&[]), diff.mean(Kind::Float).double_value(&[]));
        println!("{name} {label}: pixel values max abs diff {max:.2e}, mean {mean:.2e}");
        assert!(max <= max_bound && mean <= mean_bound, "{name} {label}: max {max}, mean {mean}");
    }
    let embeds = model.image_embeds(&refs["at_size.pixel_values"]);
    let diff = max_diff(&embeds, &refs["image_embeds"]);
    println!("{name}: image embeddings max abs diff {diff:.2e}");
    assert!(diff <= LOGITS_BOUND, "{name}: image embeddings differ by {diff}");
}

/// Every recorded run: logits at each step, token ids and decoded captions.
fn check_generation(name: &str) {
    let model = load(name);
    let (refs, meta) = reference(name);
    let sep = model.config.text_config.sep_token_id;
    let pixels = &refs["at_size.pixel_values"];
    let image_embeds = model.image_embeds(pixels);
    let images = pixels.size()[0] as usize;
    for (run, spec) in meta["runs"].as_object().unwrap() {
        let params: GenerationParams = serde_json::from_value(spec["generation"].clone()).unwrap();
        let prompt = spec["prompt"].as_bool().unwrap().then(|| meta["prompt"].as_str().unwrap());
        let prompt_ids = model.prompt_ids(prompt).unwrap();
        let generated = generate(&model, &image_embeds, &prompt_ids, &params, true);

        let ref_logits = &refs[&format!("{run}.logits")];
        assert_eq!(generated.step_logits.len() as i64, ref_logits.size()[0], "{name} {run}: number of decoding steps");
        let worst = generated
            .step_logits
            .iter()
            .enumerate()
            .map(|(step, ours)| max_diff(ours, &ref_logits.get(step as i64)))
            .fold(0.0, f64::max);
        println!("{name} {run}: {} steps, decoder logits max abs diff {worst:.2e}", generated.step_logits.len());
        assert!(worst <= LOGITS_BOUND, "{name} {run}: logits differ by {worst}");

        let ref_sequences = &refs[&format!("{run}.sequences")];
        let captions = spec["captions"].as_array().unwrap();
        assert_eq!(generated.sequences.len(), images);
        for (i, ours) in generated.sequences.iter().enumerate() {
            let theirs = Vec::<i64>::try_from(ref_sequences.get(i as i64)).unwrap();
            assert_eq!(&ours[..prompt_ids.len()], prompt_ids.as_slice(), "{name} {run}: prompt kept");
            assert_eq!(ours, &expected_row(&theirs, prompt_ids.len(), sep), "{name} {run}: ids of image {i}");
            let caption = model.decode(ours).unwrap();
            assert_eq!(caption, captions[i].as_str().unwrap(), "{name} {run}: caption of image {i}");
        }
    }
}

#[test]
fn blip_a_preprocessing_and_vision_equal_transformers() {
    check_preprocessing("blip-tiny-a");
}

#[test]
fn blip_b_preprocessing_and_vision_equal_transformers() {
    check_preprocessing("blip-tiny-b");
}

#[test]
fn blip_a_greedy_and_beam_search_equal_transformers() {
    check_generation("blip-tiny-a");
}

#[test]
fn blip_b_greedy_and_beam_search_equal_transformers() {
    check_generation("blip-tiny-b");
}

#[test]
fn captions_differ_between_images_and_the_default_ignores_generation_config_json() {
    let model = load("blip-tiny-b");
    let (refs, meta) = reference("blip-tiny-b");
    // The checkpoint's generation_config.json is read (3 beams) but, as in transformers 5.24,
    // not applied by default: the recorded no-argument run is greedy.
    assert_eq!(model.checkpoint_generation.as_ref().map(|g| g.num_beams), Some(3));
    let captions = model.caption(&refs["at_size.pixel_values"], None, &GenerationParams::default()).unwrap();
    let expected: Vec<String> =
        meta["runs"]["default"]["captions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(captions, expected);
    assert!(captions[0] != captions[1] || captions[1] != captions[2], "captions do not depend on the image: {captions:?}");
}
