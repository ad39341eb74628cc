//! A new manifest, applied at once (it has been loaded and checked in
//! full before it gets here): new types are taken from now on; a removed
//! type takes no new task, and its tasks already accepted run with the
//! definition they were accepted with; a changed type applies to attempts
//! that start from now on; warm pools whose processes would run
//! differently are replaced (their busy processes finish first), the
//! others keep theirs.

use std::sync::Arc;

use super::Core;
use crate::control_plane::events::Event;
use crate::manifest::Manifest;

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Warm pools replaced (their definition changed, or the type went).
    pub pools_replaced: usize,
    /// Removed types whose accepted tasks still wait or run.
    pub kept_for_accepted: Vec<String>,
}

impl ReloadReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl Core {
    pub(super) fn reload(&mut self, new: Arc<Manifest>) -> ReloadReport {
        let old = std::mem::replace(&mut self.manifest, Arc::clone(&new));
        let ours = |name: &str| new.task(name).map(|spec| spec.digest(&new.dir));
        self.workers.recheck(ours);
        let (added, removed, changed) = new.changes_from(&old);
        let mut report = ReloadReport {
            added,
            removed,
            changed,
            ..ReloadReport::default()
        };
        for name in new.tasks.keys() {
            // Defined again: its own definition again.
            self.retired.remove(name);
        }
        let live = |core: &Core, name: &str| core.tasks.values().any(|a| a.record.name == name);
        for name in &report.removed {
            if live(self, name)
                && let Some(spec) = old.tasks.get(name)
            {
                self.retired.insert(name.clone(), Arc::clone(spec));
            }
        }
        // Retired definitions nothing needs any more.
        let unneeded: Vec<String> = self
            .retired
            .keys()
            .filter(|name| !live(self, name))
            .cloned()
            .collect();
        for name in unneeded {
            self.retired.remove(&name);
        }
        report.kept_for_accepted = self.retired.keys().cloned().collect();
        report.kept_for_accepted.sort();
        // A removed type's pool stays while its accepted tasks still run
        // with the definition it runs.
        let retired = &self.retired;
        report.pools_replaced = self.executor.retire_pools(|name, running| {
            new.task(name)
                .or_else(|| retired.get(name))
                .is_some_and(|spec| spec.runs_like(running))
        });
        tracing::info!(
            added = report.added.len(),
            removed = report.removed.len(),
            changed = report.changed.len(),
            pools_replaced = report.pools_replaced,
            "manifest reloaded{}",
            if report.is_empty() {
                " (nothing changed)"
            } else {
                ""
            }
        );
        self.events.emit(Event::Reloaded(Box::new(report.clone())));
        // A type that came back, or a pool of room, may let tasks start.
        self.dispatch();
        report
    }
}
