//! What makes a running control plane or subworker load its manifest
//! again: `SIGHUP`, `--watch` (the manifest file and the task modules'
//! files changed, after a quiet moment), and, for a control plane,
//! `fastworker reload` (answered on its query socket).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Sources;
use crate::control_plane::reload::{ManifestCell, Reloader};
use crate::manifest::{Manifest, ManifestError, Origin};

/// How long the files must stay quiet before a `--watch` reload (an editor
/// writes a file in several steps).
const QUIET: Duration = Duration::from_millis(400);

/// Every problem of a manifest that cannot be used, one a line.
fn problems(e: &ManifestError) -> Vec<String> {
    match e {
        ManifestError::Invalid { problems } => problems.iter().map(ToString::to_string).collect(),
        other => vec![other.to_string()],
    }
}

/// Loads `sources` and checks them as `fastworker check` does (the Python
/// imports included).
pub fn load_checked(sources: &Sources) -> Result<Manifest, Vec<String>> {
    let manifest = sources.load().map_err(|e| problems(&e))?;
    let imports = manifest.import_problems();
    if imports.is_empty() {
        Ok(manifest)
    } else {
        Err(imports)
    }
}

/// The loader a control plane reloads with.
pub fn loader(sources: &Sources) -> crate::control_plane::reload::Load {
    let sources = sources.clone();
    crate::control_plane::reload::Load(Arc::new(move || load_checked(&sources)))
}

/// Prints a refused reload: every problem, one a line.
fn refused(who: &str, problems: &[String]) {
    eprintln!("fastworker {who}: reload refused, the manifest stays as it was:");
    for problem in problems {
        eprintln!("  {problem}");
    }
}

/// A control plane's reloads: `SIGHUP` and, with `watch`, a change of its
/// files reload through `reloader`; every reload's outcome, whatever asked
/// for it (`fastworker reload` too), is printed, and a watcher follows the
/// files the new manifest names. Installed (SIGHUP included) when this
/// returns.
pub fn control_plane(
    reloader: Arc<Reloader>,
    cell: ManifestCell,
    manifest: &Manifest,
    watch: bool,
) {
    let (mut triggers, refresh) = triggers(manifest, watch);
    let mut outcomes = reloader.outcomes();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match outcomes.recv().await {
                Ok(outcome) => match &*outcome {
                    Ok(report) => {
                        eprintln!("fastworker control plane: manifest reloaded: {report}");
                        if let Some(refresh) = &refresh {
                            let _ = refresh.send(cell.get()).await;
                        }
                    }
                    Err(problems) => refused("control plane", problems),
                },
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    });
    tokio::spawn(async move {
        while triggers.recv().await.is_some() {
            let _ = reloader.reload().await;
        }
    });
}

/// A subworker's reloads (`SIGHUP`, and with `watch` a change of its
/// files): each manifest that loads and checks comes out of the returned
/// channel, for the subworker to register again with; what changed, or why
/// nothing did, is printed. Installed when this returns.
pub fn subworker(
    sources: &Sources,
    manifest: &Arc<Manifest>,
    watch: bool,
) -> mpsc::Receiver<Arc<Manifest>> {
    let (reloaded, reloads) = mpsc::channel(2);
    let (mut triggers, refresh) = triggers(manifest, watch);
    let sources = sources.clone();
    let mut current = Arc::clone(manifest);
    tokio::spawn(async move {
        while triggers.recv().await.is_some() {
            let load = sources.clone();
            match tokio::task::spawn_blocking(move || load_checked(&load)).await {
                Ok(Ok(manifest)) => {
                    let manifest = Arc::new(manifest);
                    eprintln!(
                        "fastworker subworker: manifest reloaded: {} tasks: {}; registering again with them",
                        manifest.tasks.len(),
                        manifest.changes_from(&current)
                    );
                    current = Arc::clone(&manifest);
                    if let Some(refresh) = &refresh {
                        let _ = refresh.send(Arc::clone(&manifest)).await;
                    }
                    if reloaded.send(manifest).await.is_err() {
                        return;
                    }
                }
                Ok(Err(problems)) => refused("subworker", &problems),
                Err(e) => eprintln!("fastworker subworker: the reload failed: {e}"),
            }
        }
    });
    reloads
}

/// The files whose change reloads: the manifest file, and each task
/// module's file.
fn watched(manifest: &Manifest) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    if !manifest.is_modules_only() {
        files.insert(std::path::absolute(&manifest.path).unwrap_or_else(|_| manifest.path.clone()));
    }
    for task in manifest.tasks.values() {
        if let Origin::Module { file, .. } = &task.origin {
            files.insert(file.clone());
        }
    }
    files
}

/// Sends `()` on every `SIGHUP` and, with `watch`, once the watched files
/// have changed and been quiet for [`QUIET`]. The manifest as loaded at
/// start names the files; `refresh` (after each reload) names them again.
fn triggers(
    manifest: &Manifest,
    watch: bool,
) -> (mpsc::Receiver<()>, Option<mpsc::Sender<Arc<Manifest>>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = mpsc::channel(4);
    let hup = tx.clone();
    // Installed before this returns: a SIGHUP from now on reloads.
    let hangups = signal(SignalKind::hangup());
    tokio::spawn(async move {
        let Ok(mut hangups) = hangups else {
            tracing::error!("cannot handle SIGHUP: a reload needs `fastworker reload` or --watch");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the manifest");
            if hup.send(()).await.is_err() {
                return;
            }
        }
    });
    if !watch {
        return (rx, None);
    }
    let (refresh_tx, refresh) = mpsc::channel(4);
    spawn_watcher(watched(manifest), tx, refresh);
    (rx, Some(refresh_tx))
}

fn spawn_watcher(
    files: BTreeSet<PathBuf>,
    reload: mpsc::Sender<()>,
    mut refresh: mpsc::Receiver<Arc<Manifest>>,
) {
    use notify::{RecursiveMode, Watcher};
    let (events_tx, mut events) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                let _ = events_tx.send(path);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(
                "--watch: cannot watch the manifest's files ({e}); reload with SIGHUP or `fastworker reload`"
            );
            return;
        }
    };
    // Directories, not files: editors replace a file by renaming a new one
    // over it, which ends a watch on the file itself.
    let watch_dirs = |watcher: &mut notify::RecommendedWatcher, files: &BTreeSet<PathBuf>| {
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(PathBuf::from))
            .collect();
        for dir in dirs {
            if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), "--watch: cannot watch: {e}");
            }
        }
    };
    watch_dirs(&mut watcher, &files);
    tracing::info!(
        files = files.len(),
        "--watch: the manifest reloads when its files change"
    );
    tokio::spawn(async move {
        let mut files = files;
        loop {
            tokio::select! {
                Some(path) = events.recv() => {
                    if !files.contains(&path) {
                        continue;
                    }
                    // Wait for the writes to settle.
                    loop {
                        match tokio::time::timeout(QUIET, events.recv()).await {
                            Ok(Some(_)) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                    tracing::info!(file = %path.display(), "--watch: a file changed: reloading the manifest");
                    if reload.send(()).await.is_err() {
                        return;
                    }
                }
                Some(manifest) = refresh.recv() => {
                    files = watched(&manifest);
                    watch_dirs(&mut watcher, &files);
                }
                else => return,
            }
        }
    });
}
