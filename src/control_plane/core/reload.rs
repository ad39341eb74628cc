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
use crate::protocol::ReloadReport;

impl Core {
    pub(super) fn reload(&mut self, new: Arc<Manifest>) -> ReloadReport {
        let old = std::mem::replace(&mut self.manifest, Arc::clone(&new));
        let ours = |name: &str| new.task(name).map(|spec| spec.digest(&new.dir));
        self.workers.recheck(ours);
        let mut report = ReloadReport {
            tasks: new.changes_from(&old),
            ..ReloadReport::default()
        };
        for name in new.tasks.keys() {
            // Defined again: its own definition again.
            self.retired.remove(name);
        }
        let live = |core: &Core, name: &str| core.tasks.values().any(|a| a.record.name == name);
        for name in &report.tasks.removed {
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
            added = report.tasks.added.len(),
            removed = report.tasks.removed.len(),
            changed = report.tasks.changed.len(),
            pools_replaced = report.pools_replaced,
            "manifest reloaded{}",
            if report.tasks.is_empty() {
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
