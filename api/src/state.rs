//! What every handler shares: the ports, the active collection, settings.

use std::sync::{Arc, RwLock};

use imgfleet_shared::domain::{CollectionName, CollectionSpec, Distance};
use imgfleet_shared::ports::{StateStore, VectorError, VectorStore};

use crate::error::{AppError, AppResult};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub vectors: Arc<dyn VectorStore>,
    pub state: Arc<dyn StateStore>,
    pub default_collection: CollectionName,
    pub default_vector_size: usize,
    pub api_keys: Vec<String>,
    /// Write-through cache of the state store's active collection.
    active: RwLock<CollectionName>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Everything [`AppState::new`] needs.
pub struct AppStateParts {
    pub vectors: Arc<dyn VectorStore>,
    pub state: Arc<dyn StateStore>,
    pub default_collection: CollectionName,
    pub default_vector_size: usize,
    pub api_keys: Vec<String>,
}

impl AppState {
    /// Loads the selected collection (or falls back to the default one, created if missing).
    pub async fn new(parts: AppStateParts) -> AppResult<Self> {
        let AppStateParts { vectors, state, default_collection, default_vector_size, api_keys } = parts;
        let stored = state.active_collection().await?;
        let active = match stored.as_deref().map(CollectionName::parse) {
            Some(Ok(name)) => name,
            _ => default_collection.clone(),
        };
        let spec = CollectionSpec {
            name: default_collection.clone(),
            vector_size: default_vector_size,
            distance: Distance::Cosine,
        };
        match vectors.create_collection(&spec).await {
            Ok(()) => tracing::info!(collection = %default_collection, vector_size = default_vector_size, "created default collection"),
            Err(VectorError::CollectionExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let inner = Inner {
            vectors,
            state,
            default_collection,
            default_vector_size,
            api_keys,
            active: RwLock::new(active),
        };
        Ok(Self(Arc::new(inner)))
    }

    pub fn active_collection(&self) -> CollectionName {
        self.active.read().expect("active lock").clone()
    }

    pub async fn select_collection(&self, name: CollectionName) -> AppResult<()> {
        self.state.set_active_collection(name.as_str()).await?;
        *self.active.write().expect("active lock") = name;
        Ok(())
    }

    /// The collection a request names, or the active one.
    pub fn collection_or_active(&self, requested: Option<&str>) -> AppResult<CollectionName> {
        match requested {
            Some(name) => CollectionName::parse(name).map_err(AppError::invalid),
            None => Ok(self.active_collection()),
        }
    }
}
