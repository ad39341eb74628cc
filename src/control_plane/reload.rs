//! Reloading the manifest of a running control plane: `SIGHUP`,
//! `fastworker reload` (the query socket's `{"action": "reload"}`), or
//! `--watch`. The new manifest is loaded and checked in full first (the
//! checks of `fastworker check`, the Python imports included); if anything
//! is wrong nothing changes and every problem is reported. Otherwise the
//! core applies it at once (see `core::reload`), and the sockets, the GUI
//! and the scheduler follow.

use std::sync::{Arc, RwLock};

use tokio::sync::{Mutex, broadcast, mpsc};

use super::CoreHandle;
use super::core::Command;
use crate::manifest::Manifest;
use crate::protocol::ReloadReport;
use crate::schedule::Schedule;

/// Loads and checks the manifest (its file and task modules), as at start.
#[derive(Clone)]
pub struct Load(pub Arc<dyn Fn() -> Result<Manifest, Vec<String>> + Send + Sync>);

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Load")
    }
}

/// The manifest now, for whoever shows it (the query socket, the GUI).
#[derive(Debug, Clone)]
pub struct ManifestCell(Arc<RwLock<Arc<Manifest>>>);

impl ManifestCell {
    pub fn new(manifest: Arc<Manifest>) -> ManifestCell {
        ManifestCell(Arc::new(RwLock::new(manifest)))
    }

    pub fn get(&self) -> Arc<Manifest> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn set(&self, manifest: Arc<Manifest>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = manifest;
    }
}

/// A manifest's schedules, for the scheduler.
pub fn schedules_of(manifest: &Manifest) -> Vec<(String, Schedule)> {
    manifest
        .tasks
        .values()
        .filter_map(|t| Some((t.name.clone(), t.schedule.clone()?)))
        .collect()
}

/// How a reload ended: what changed, or every problem found (then
/// nothing changed).
pub type Outcome = Result<ReloadReport, Vec<String>>;

/// Reloads a control plane's manifest; one reload at a time.
pub struct Reloader {
    load: Load,
    core: CoreHandle,
    manifest: ManifestCell,
    schedules: mpsc::Sender<Vec<(String, Schedule)>>,
    busy: Mutex<()>,
    outcomes: broadcast::Sender<Arc<Outcome>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    pub fn new(
        load: Load,
        core: CoreHandle,
        manifest: ManifestCell,
        schedules: mpsc::Sender<Vec<(String, Schedule)>>,
    ) -> Reloader {
        Reloader {
            load,
            core,
            manifest,
            schedules,
            busy: Mutex::new(()),
            outcomes: broadcast::channel(16).0,
        }
    }

    /// Every reload's outcome from now on, whatever asked for it (SIGHUP,
    /// `--watch`, `fastworker reload`): for the log, and for a watcher to
    /// follow the files the new manifest names.
    pub fn outcomes(&self) -> broadcast::Receiver<Arc<Outcome>> {
        self.outcomes.subscribe()
    }

    /// Loads the manifest again and applies it: what changed, or every
    /// problem found (then nothing changed).
    pub async fn reload(&self) -> Outcome {
        let _one_at_a_time = self.busy.lock().await;
        let outcome = self.apply().await;
        let _ = self.outcomes.send(Arc::new(outcome.clone()));
        outcome
    }

    async fn apply(&self) -> Outcome {
        let load = self.load.clone();
        let manifest = match tokio::task::spawn_blocking(move || (load.0)()).await {
            Ok(Ok(manifest)) => Arc::new(manifest),
            Ok(Err(problems)) => return Err(problems),
            Err(e) => return Err(vec![format!("the reload failed: {e}")]),
        };
        let (respond, answer) = tokio::sync::oneshot::channel();
        let sent = self
            .core
            .send(Command::Reload {
                manifest: Arc::clone(&manifest),
                respond,
            })
            .await;
        let report = match (sent, answer.await) {
            (true, Ok(report)) => report,
            _ => return Err(vec!["the control plane is shutting down".to_owned()]),
        };
        let schedules = schedules_of(&manifest);
        self.manifest.set(manifest);
        let _ = self.schedules.send(schedules).await;
        Ok(report)
    }
}
