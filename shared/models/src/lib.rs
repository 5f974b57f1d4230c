//! The models of a fleet as every process names them: where a checkpoint is ([`model_dir`]:
//! a local directory or a Hugging Face repo id), the `--clip-model` / `--blip-model` flags, and
//! the sizes their configs declare (what processes without the models need to know of them).

pub mod model_dir;

use clap::Args;
use serde::Deserialize;

use crate::model_dir::{ModelDir, ModelError};

/// The models of the fleet.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// CLIP checkpoint: a local directory (config.json, model.safetensors, tokenizer.json,
    /// preprocessor_config.json) or a Hugging Face repo id, downloaded once into the Hugging
    /// Face cache (~600 MB for the default; processes without models fetch only its config).
    /// Offline: give a directory, or set HF_HUB_OFFLINE=1 to use only what the cache holds.
    #[arg(long, env = "IMGFLEET_CLIP_MODEL", default_value = "openai/clip-vit-base-patch32")]
    pub clip_model: String,

    /// BLIP captioning checkpoint, a local directory or a Hugging Face repo id (~1 GB for the
    /// default).
    #[arg(long, env = "IMGFLEET_BLIP_MODEL", default_value = "Salesforce/blip-image-captioning-base")]
    pub blip_model: String,

    /// Do not caption: BLIP is neither loaded nor downloaded, images are stored without captions.
    #[arg(long, env = "IMGFLEET_NO_CAPTION")]
    pub no_caption: bool,
}

impl ModelArgs {
    /// The captioning model, unless captions are off.
    pub fn captioner(&self) -> Option<&str> {
        (!self.no_caption).then_some(self.blip_model.as_str())
    }

    /// The sizes the models' configs declare (only config.json is read or fetched).
    pub fn geometry(&self) -> Result<ModelGeometry, ModelError> {
        ModelGeometry::read(&self.clip_model, self.captioner())
    }
}

/// What processes without the models need to know of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelGeometry {
    /// Size of CLIP's embeddings (`projection_dim`).
    pub embedding_dim: usize,
    /// Side of CLIP's square image input.
    pub clip_size: u32,
    /// Side of BLIP's square image input; `None` when captioning is off.
    pub blip_size: Option<u32>,
}

#[derive(Deserialize)]
struct VisionConfig {
    image_size: u32,
}

#[derive(Deserialize)]
struct ClipConfig {
    projection_dim: usize,
    vision_config: VisionConfig,
}

#[derive(Deserialize)]
struct BlipConfig {
    vision_config: VisionConfig,
}

impl ModelGeometry {
    pub fn read(clip: &str, blip: Option<&str>) -> Result<Self, ModelError> {
        let clip_config: ClipConfig = ModelDir::resolve(clip, &["config.json"])?.json("config.json")?;
        let blip_size = match blip {
            Some(blip) => Some(ModelDir::resolve(blip, &["config.json"])?.json::<BlipConfig>("config.json")?.vision_config.image_size),
            None => None,
        };
        Ok(Self { embedding_dim: clip_config.projection_dim, clip_size: clip_config.vision_config.image_size, blip_size })
    }
}

/// Reads the geometry off the async runtime (a hub id may be fetched).
pub async fn model_geometry(models: &ModelArgs) -> anyhow::Result<ModelGeometry> {
    let models = models.clone();
    let geometry = tokio::task::spawn_blocking(move || models.geometry()).await??;
    Ok(geometry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_comes_from_the_configs() {
        let dir = tempfile_dir();
        let clip = dir.join("clip");
        let blip = dir.join("blip");
        std::fs::create_dir_all(&clip).unwrap();
        std::fs::create_dir_all(&blip).unwrap();
        std::fs::write(clip.join("config.json"), r#"{"projection_dim": 24, "vision_config": {"image_size": 64}}"#).unwrap();
        std::fs::write(blip.join("config.json"), r#"{"vision_config": {"image_size": 96}}"#).unwrap();
        let g = ModelGeometry::read(clip.to_str().unwrap(), Some(blip.to_str().unwrap())).unwrap();
        assert_eq!(g, ModelGeometry { embedding_dim: 24, clip_size: 64, blip_size: Some(96) });
        let g = ModelGeometry::read(clip.to_str().unwrap(), None).unwrap();
        assert_eq!(g.blip_size, None);
        std::fs::write(clip.join("config.json"), r#"{"vision_config": {}}"#).unwrap();
        let e = ModelGeometry::read(clip.to_str().unwrap(), None).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("imgfleet-geometry-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
