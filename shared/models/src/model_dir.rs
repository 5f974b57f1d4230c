//! Where a model's files are: a local directory, or a Hugging Face hub repo id resolved into
//! the standard Hugging Face cache (downloaded when online, read from the cache when not).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {0} is missing")]
    Missing(String),
    #[error("cannot use {0}: {1}")]
    Invalid(String, String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Hub(String),
}

/// A directory holding one checkpoint's files.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: PathBuf,
    /// What the user named: a path or a repo id.
    pub source: String,
}

impl ModelDir {
    /// `source` is a local directory, or a hub repo id (`org/name`) whose `files` are fetched
    /// into (or found in) the Hugging Face cache.
    pub fn resolve(source: &str, files: &[&str]) -> Result<Self, ModelError> {
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        Self::resolve_with(source, files, hf_hub::Cache::from_env(), offline)
    }

    /// [`Self::resolve`] with an explicit cache and network policy.
    pub fn resolve_with(source: &str, files: &[&str], cache: hf_hub::Cache, offline: bool) -> Result<Self, ModelError> {
        let local = Path::new(source);
        if local.is_dir() {
            return Ok(Self { path: local.to_owned(), source: source.to_owned() });
        }
        if local.exists() {
            return Err(ModelError::Invalid(source.to_owned(), "not a directory".into()));
        }
        if source.starts_with('.') || source.starts_with('/') || source.split('/').count() != 2 {
            return Err(ModelError::Missing(format!(
                "{source} (no such directory; a hub model is named like openai/clip-vit-base-patch32)"
            )));
        }
        let cached = cache.model(source.to_owned());
        let mut dir: Option<PathBuf> = None;
        let mut missing = Vec::new();
        for file in files {
            match cached.get(file) {
                Some(path) => dir = path.parent().map(Path::to_owned),
                None => missing.push(*file),
            }
        }
        if missing.is_empty() {
            let path = dir.expect("at least one file");
            return Ok(Self { path, source: source.to_owned() });
        }
        if offline {
            return Err(ModelError::Hub(format!(
                "model {source} is not in the Hugging Face cache ({} missing) and HF_HUB_OFFLINE is set: \
                 download it on a connected machine (huggingface-cli download {source}) or pass a local \
                 directory holding config.json, model.safetensors, tokenizer.json and preprocessor_config.json",
                missing.join(", ")
            )));
        }
        let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
            .with_progress(false)
            .build()
            .map_err(|e| ModelError::Hub(format!("cannot reach the Hugging Face hub: {e}")))?;
        let repo = api.model(source.to_owned());
        let mut path = None;
        for file in files {
            let got = repo.get(file).map_err(|e| {
                ModelError::Hub(format!(
                    "cannot download {file} of {source}: {e}; offline, pass a local directory instead"
                ))
            })?;
            path = got.parent().map(Path::to_owned);
        }
        Ok(Self { path: path.expect("at least one file"), source: source.to_owned() })
    }

    /// A file of the checkpoint, which must exist.
    pub fn file(&self, name: &str) -> Result<PathBuf, ModelError> {
        let path = self.path.join(name);
        if path.is_file() { Ok(path) } else { Err(ModelError::Missing(path.display().to_string())) }
    }

    pub fn describe(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<T, ModelError> {
        let path = self.file(name)?;
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Invalid(path.display().to_string(), e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| ModelError::Invalid(path.display().to_string(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sources_say_what_is_wrong() {
        let e = ModelDir::resolve("./no/such/dir", &["config.json"]).unwrap_err();
        assert!(e.to_string().contains("no such directory"), "{e}");
        let e = ModelDir::resolve("not-a-repo-id", &["config.json"]).unwrap_err();
        assert!(e.to_string().contains("openai/clip-vit-base-patch32"), "{e}");
    }
}
