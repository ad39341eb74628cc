//! Which of the tasks a subworker defines it is given: not those it
//! defines differently from the control plane (unless mismatches are
//! allowed), decided at its registration and again after a reload; and the
//! warnings about definitions that differ.

use std::collections::BTreeMap;

use super::Workers;
use crate::protocol::TaskOffer;

impl Workers {
    /// The control plane's manifest was reloaded: what each worker is given
    /// is decided again against it (`ours`, as for [`Workers::register`]).
    /// Leases already out run on.
    pub fn recheck(&mut self, ours: impl Fn(&str) -> Option<String>) {
        let ids: Vec<String> = self.by_id.keys().cloned().collect();
        for id in ids {
            let Some(mut offers) = self.by_id.get(&id).map(|w| w.defined.clone()) else {
                continue;
            };
            let warnings = self.definition_warnings(&id, &mut offers, &ours);
            if let Some(worker) = self.by_id.get_mut(&id) {
                for warning in warnings.iter().filter(|w| !worker.warnings.contains(w)) {
                    tracing::warn!(worker = %id, "{warning}");
                }
                worker.offers = offers;
                worker.warnings = warnings;
            }
        }
    }

    /// Tasks `worker` defines differently from the control plane (`ours`)
    /// or from another worker. Those that differ from the control plane's
    /// are taken out of `offers` (the worker is not given them) unless
    /// mismatches are allowed.
    pub(super) fn definition_warnings(
        &self,
        worker: &str,
        offers: &mut BTreeMap<String, TaskOffer>,
        ours: impl Fn(&str) -> Option<String>,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut withheld = Vec::new();
        for (name, offer) in offers.iter() {
            if let Some(ours) = ours(name)
                && ours != offer.digest
            {
                let consequence = if self.allow_mismatch {
                    "it is given the task anyway (--allow-definition-mismatch)"
                } else {
                    withheld.push(name.clone());
                    "it is not given this task (make the definitions the same, or pass --allow-definition-mismatch to the control plane)"
                };
                warnings.push(format!(
                    "task '{name}' is defined differently on subworker '{worker}' (digest {}) than on the control plane (digest {ours}): {consequence}",
                    offer.digest
                ));
            }
            for other in self.by_id.values().filter(|w| w.id != worker) {
                if let Some(theirs) = other.offers.get(name)
                    && theirs.digest != offer.digest
                {
                    warnings.push(format!(
                        "task '{name}' is defined differently on subworker '{worker}' (digest {}) than on subworker '{}' (digest {})",
                        offer.digest, other.id, theirs.digest
                    ));
                }
            }
        }
        for name in withheld {
            offers.remove(&name);
        }
        warnings
    }
}
