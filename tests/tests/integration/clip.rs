//! CLIP in tch against `transformers` on the tiny random checkpoints in
//! tests/fixtures/models (made by scripts/make_test_models.py), fp32 on CPU.

use std::collections::HashMap;
use std::path::PathBuf;

use imgfleet_core::domain::RgbImage;
use imgfleet_models::model_dir::ModelDir;
use imgfleet_worker_gpu::clip::{ClipModel, normalise_rows};
use tch::{Device, Kind, Tensor};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models").join(name)
}

fn reference(name: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = fixture(name);
    let tensors = Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap().into_iter().collect();
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    (tensors, meta)
}

fn load(name: &str) -> ClipModel {
    let dir = ModelDir::resolve(fixture(name).to_str().unwrap(), &[]).unwrap();
    ClipModel::load(&dir, Device::Cpu, Kind::Float).unwrap()
}

fn image(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.size3().unwrap();
    RgbImage { width: w as u32, height: h as u32, data: Vec::<u8>::try_from(t.flatten(0, -1)).unwrap() }
}

/// Smallest row cosine and largest absolute difference between two `[n, d]` tensors.
fn compare(ours: &Tensor, theirs: &Tensor) -> (f64, f64) {
    assert_eq!(ours.size(), theirs.size());
    let cos = (normalise_rows(ours) * normalise_rows(theirs)).sum_dim_intlist([-1].as_slice(), false, Kind::Float);
    let min_cos = cos.min().double_value(&[]);
    let max_diff = (ours - theirs).abs().max().double_value(&[]);
    (min_cos, max_diff)
}

fn pixel_tensor(model: &ClipModel, images: &[RgbImage]) -> Tensor {
    let size = i64::from(model.image_size());
    let flat: Vec<f32> = images.iter().flat_map(|i| model.processor.normalise(&model.processor.prepare(i))).collect();
    Tensor::from_slice(&flat).view([images.len() as i64, 3, size, size])
}

/// Bounds for one set of reference images: model-size inputs go through no resampling, so
/// everything is exact; larger ones go through PIL's bicubic resize, which we reproduce with
/// classic Pillow's pass order (horizontal, then vertical). Pillow 13 sometimes runs the
/// vertical pass first, which moves a few pixels by a few levels: hence the looser bound.
struct Bounds {
    max_pixel_diff: f64,
    mean_pixel_diff: f64,
    min_cos: f64,
    max_diff: f64,
}

const AT_SIZE: Bounds = Bounds { max_pixel_diff: 1e-6, mean_pixel_diff: 1e-6, min_cos: 0.99999, max_diff: 1e-4 };
const LARGER: Bounds = Bounds { max_pixel_diff: 0.5, mean_pixel_diff: 5e-3, min_cos: 0.99999, max_diff: 5e-3 };

fn check_images(name: &str) {
    let model = load(name);
    let (refs, meta) = reference(name);
    for (label, bounds) in [("at_size", AT_SIZE), ("larger", LARGER)] {
        let count = meta[label].as_u64().unwrap() as usize;
        let images: Vec<RgbImage> = (0..count).map(|i| image(&refs[&format!("{label}.image.{i}")])).collect();
        let ours = pixel_tensor(&model, &images);
        let theirs = &refs[&format!("{label}.pixel_values")];
        let diff = (&ours - theirs).abs();
        let (max_pixel, mean_pixel) = (diff.max().double_value(&[]), diff.mean(Kind::Float).double_value(&[]));
        println!("{name} {label}: pixel values max abs diff {max_pixel:.2e}, mean {mean_pixel:.2e}");
        assert!(max_pixel <= bounds.max_pixel_diff && mean_pixel <= bounds.mean_pixel_diff, "{name} {label}: pixels");
        // The vision tower on the reference pixels is exact; on our pixels, within the bounds.
        let expected = &refs[&format!("{label}.image_embeds")];
        let (cos, diff) = compare(&model.image_features(theirs), expected);
        println!("{name} {label} (reference pixels): min cosine {cos:.8}, max abs diff {diff:.2e}");
        assert!(cos >= AT_SIZE.min_cos && diff <= AT_SIZE.max_diff, "{name} {label}: cosine {cos}, diff {diff}");
        let (cos, diff) = compare(&model.image_features(&ours), expected);
        println!("{name} {label} (our preprocessing): min cosine {cos:.8}, max abs diff {diff:.2e}");
        assert!(cos >= bounds.min_cos && diff <= bounds.max_diff, "{name} {label} (ours): cosine {cos}, diff {diff}");
    }
}

fn check_texts(name: &str) {
    let model = load(name);
    let (refs, meta) = reference(name);
    let texts: Vec<String> = meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    let ids = model.tokenizer.encode(&texts).unwrap();
    let ref_ids = &refs["text.input_ids"];
    let mask = &refs["text.attention_mask"];
    for (i, text) in texts.iter().enumerate() {
        let n = mask.get(i as i64).sum(Kind::Int64).int64_value(&[]);
        let expected: Vec<i64> = Vec::try_from(ref_ids.get(i as i64).narrow(0, 0, n)).unwrap();
        assert_eq!(ids[i], expected, "{name}: token ids of {text:?}");
    }
    assert_eq!(ids.last().unwrap().len(), model.tokenizer.max_len, "long text truncated to the context");
    let (cos, diff) = compare(&model.text_features(&model.ids_tensor(&ids)), &refs["text.text_embeds"]);
    println!("{name} texts: min cosine {cos:.8}, max abs diff {diff:.2e}");
    assert!(cos >= 0.99999 && diff <= 1e-4, "{name} texts: cosine {cos}, diff {diff}");
    // Padding to the model's full context (as transformers did) changes nothing.
    let (cos, diff) = compare(&model.text_features(ref_ids), &refs["text.text_embeds"]);
    assert!(cos >= 0.99999 && diff <= 1e-4, "{name} padded ids: cosine {cos}, diff {diff}");
}

#[test]
fn clip_a_images_equal_transformers() {
    check_images("clip-tiny-a");
}

#[test]
fn clip_b_images_equal_transformers() {
    check_images("clip-tiny-b");
}

#[test]
fn clip_a_texts_equal_transformers() {
    check_texts("clip-tiny-a");
}

#[test]
fn clip_b_texts_equal_transformers() {
    check_texts("clip-tiny-b");
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("clip-tiny-a").join("config.json"), dir.path().join("config.json")).unwrap();
    let model_dir = ModelDir::resolve(dir.path().to_str().unwrap(), &[]).unwrap();
    let err = ClipModel::load(&model_dir, Device::Cpu, Kind::Float).err().expect("incomplete checkpoint refused").to_string();
    assert!(err.contains("preprocessor_config.json"), "{err}");
    for file in ["preprocessor_config.json", "tokenizer.json"] {
        std::fs::copy(fixture("clip-tiny-a").join(file), dir.path().join(file)).unwrap();
    }
    let err = ClipModel::load(&model_dir, Device::Cpu, Kind::Float).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let err = ClipModel::load(&model_dir, Device::Cpu, Kind::Float).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn offline_hub_miss_says_how_to_give_a_directory() {
    let cache = tempfile::tempdir().unwrap();
    let empty = hf_hub::Cache::new(cache.path().to_owned());
    let err = ModelDir::resolve_with("openai/clip-vit-base-patch32", &["config.json"], empty, true).unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("local directory"), "{err}");
}

/// The CPU stage's model-ready pixels embed like transformers' own preprocessing of the same
/// file (a 1024x768 JPEG the stage decodes at half scale, and a 320x240 PNG), through a tiny
/// random CLIP at the real input size.
#[test]
fn cpu_stage_pixels_embed_like_transformers_preprocessing() {
    use imgfleet_imaging::hash::read_and_hash;
    use imgfleet_imaging::prepare::{PrepareOptions, prepare, sniff_file};
    let model = load("clip-tiny-224");
    let refs: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture("clip-tiny-224").join("reference.safetensors")).unwrap().into_iter().collect();
    for (name, min_cos) in [("photo_1024x768.jpg", 0.99999), ("photo_320x240.png", 0.99999)] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cpu_stage").join(name);
        let file = read_and_hash(&path, u64::MAX).unwrap();
        let prepared = prepare(&path, &file, sniff_file(&file).unwrap(), PrepareOptions::default()).unwrap();
        let image = RgbImage { width: 224, height: 224, data: prepared.clip_pixels };
        let ours = model.image_features(&pixel_tensor(&model, &[image]));
        let (cos, diff) = compare(&ours, &refs[name].unsqueeze(0));
        println!("{name}: CPU stage pixels vs transformers: cosine {cos:.7}, max abs diff {diff:.2e}");
        assert!(cos >= min_cos, "{name}: cosine {cos}");
    }
}
