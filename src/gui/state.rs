//! What every request handler shares.

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::history::History;
use super::index::TaskIndex;
use super::security::Guard;
use super::sse::Hub;
use super::view::View;
use crate::control_plane::CoreHandle;
use crate::control_plane::events::Events;
use crate::control_plane::handlers::Context;

#[derive(Debug)]
pub struct AppState {
    pub guard: Guard,
    pub view: View,
    pub core: CoreHandle,
    pub events: Events,
    pub manifest: crate::control_plane::reload::ManifestCell,
    /// The control plane's sockets: its id and addresses, the requests
    /// its tokens turned away.
    pub sockets: Arc<Context>,
    pub discovery_address: String,
    pub started_at: DateTime<Utc>,
    pub started: std::time::Instant,
    pub journal: Option<crate::journal::Meter>,
    pub index: RwLock<TaskIndex>,
    pub hub: Arc<Hub>,
    pub history: Mutex<History>,
    /// Fires when the GUI stops (its streams end).
    pub stop: CancellationToken,
}

impl AppState {
    pub fn index(&self) -> RwLockReadGuard<'_, TaskIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn index_mut(&self) -> RwLockWriteGuard<'_, TaskIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn worker_id(&self) -> &str {
        &self.sockets.info.worker_id
    }
}

/// Arc'd, for axum.
pub type App = Arc<AppState>;
