//! The subworkers a control plane knows: who they are, what they can run,
//! how loaded they are, which leases they hold, and the poll each one has
//! waiting for work. Plain bookkeeping, owned by the core; the core decides
//! what happens to the tasks.
//!
//! A subworker is `active` while it polls (each poll is a heartbeat, at least
//! every [`POLL_HOLD_MS`]), `draining` once it says it stops, and `inactive`
//! after [`INACTIVE_AFTER`] of silence: its leases are then revoked and
//! their tasks run elsewhere. An inactive worker that speaks again is told to
//! register again; one silent for [`REMOVE_AFTER`] is forgotten.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::protocol::{Lease, POLL_HOLD_MS, PollReply, TaskOffer, WorkerInfo};

/// Silence after which a worker is inactive and its tasks go elsewhere:
/// three heartbeats.
pub const INACTIVE_AFTER: Duration = Duration::from_millis(3 * POLL_HOLD_MS);

/// Silence after which an inactive worker is forgotten.
pub const REMOVE_AFTER: Duration = Duration::from_secs(60);

/// How long a worker that held leases when the control plane stopped has to
/// register again after the restart before those tasks run elsewhere.
pub const REJOIN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Active,
    Draining,
    Inactive,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Draining => "draining",
            State::Inactive => "inactive",
        }
    }
}

/// A poll waiting for work.
#[derive(Debug)]
pub struct Held {
    pub seq: u64,
    pub since: Instant,
    pub respond: oneshot::Sender<PollReply>,
    /// Leases given to it in this dispatch round, sent when the round ends.
    pub tasks: Vec<Lease>,
}

#[derive(Debug)]
pub struct Worker {
    pub id: String,
    /// The process speaking for it; `None` for a worker known only from the
    /// journal (it held leases when the control plane stopped).
    pub session: Option<String>,
    pub address: String,
    pub capacity: usize,
    pub offers: BTreeMap<String, TaskOffer>,
    pub state: State,
    pub last_seen: Instant,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub registered_at: Option<DateTime<Utc>>,
    /// Leases it holds.
    pub leases: HashSet<String>,
    pub done: u64,
    pub held: Option<Held>,
    /// Leases to stop, sent with the next poll reply.
    pub cancels: Vec<String>,
    pub warnings: Vec<String>,
}

impl Worker {
    /// A worker that has just registered (`session` set) or that the
    /// journal says held leases (`session` unknown).
    pub fn new(
        id: String,
        session: Option<String>,
        address: String,
        capacity: usize,
        offers: BTreeMap<String, TaskOffer>,
    ) -> Worker {
        Worker {
            id,
            session,
            address,
            capacity,
            offers,
            state: State::Active,
            last_seen: Instant::now(),
            last_seen_at: None,
            registered_at: None,
            leases: HashSet::new(),
            done: 0,
            held: None,
            cancels: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn free(&self) -> usize {
        self.capacity.saturating_sub(self.leases.len())
    }

    /// Whether a task named `name` can be handed to it now.
    fn can_take(&self, name: &str) -> bool {
        self.state == State::Active
            && self.held.is_some()
            && self.free() > 0
            && self.offers.contains_key(name)
    }

    pub fn info(&self) -> WorkerInfo {
        WorkerInfo {
            worker_id: self.id.clone(),
            kind: "subworker".to_owned(),
            address: self.address.clone(),
            status: self.state.as_str().to_owned(),
            load: self.leases.len(),
            capacity: self.capacity,
            tasks_done: self.done,
            last_seen: self.last_seen_at,
            registered_at: self.registered_at,
            tasks: self.offers.keys().cloned().collect(),
            warnings: self.warnings.clone(),
        }
    }
}

/// A lease: a task handed to a worker.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub worker_id: String,
    pub task_id: String,
    /// The poll whose reply carried it (0: restored from the journal).
    pub issued_in: u64,
    pub lease: Lease,
}

#[derive(Debug, Default)]
pub struct Workers {
    pub by_id: BTreeMap<String, Worker>,
    pub leases: HashMap<String, LeaseInfo>,
}

impl Workers {
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Worker> {
        self.by_id.get_mut(id)
    }

    /// The offer of `name` by the first worker that defines it.
    pub fn offer(&self, name: &str) -> Option<&TaskOffer> {
        self.by_id.values().find_map(|w| w.offers.get(name))
    }

    /// Names defined by workers, for error messages.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_id
            .values()
            .flat_map(|w| w.offers.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether any worker can take a task now (any name).
    pub fn any_free(&self) -> bool {
        self.by_id
            .values()
            .any(|w| w.state == State::Active && w.held.is_some() && w.free() > 0)
    }

    pub fn can_take(&self, name: &str) -> bool {
        self.by_id.values().any(|w| w.can_take(name))
    }

    /// The worker a task named `name` goes to: among those that can take it
    /// now, the one with the lowest load for its capacity, then the fewest
    /// leases, then the one that has done the fewest tasks (so that equal
    /// workers take turns).
    pub fn least_loaded(&self, name: &str) -> Option<String> {
        self.by_id
            .values()
            .filter(|w| w.can_take(name))
            .min_by(|a, b| {
                // a.load/a.cap < b.load/b.cap, without division.
                let la = a.leases.len() * b.capacity;
                let lb = b.leases.len() * a.capacity;
                la.cmp(&lb)
                    .then(a.leases.len().cmp(&b.leases.len()))
                    .then(a.done.cmp(&b.done))
            })
            .map(|w| w.id.clone())
    }

    /// Hands `lease` to `worker_id`'s waiting poll.
    pub fn assign(&mut self, worker_id: &str, task_id: &str, lease: Lease) {
        let Some(worker) = self.by_id.get_mut(worker_id) else {
            return;
        };
        let Some(held) = worker.held.as_mut() else {
            return;
        };
        worker.leases.insert(lease.lease.clone());
        self.leases.insert(
            lease.lease.clone(),
            LeaseInfo {
                worker_id: worker_id.to_owned(),
                task_id: task_id.to_owned(),
                issued_in: held.seq,
                lease: lease.clone(),
            },
        );
        held.tasks.push(lease);
    }

    /// Has `lease` stopped on its worker (sent with its next poll reply);
    /// false if no worker holds it.
    pub fn cancel(&mut self, lease: &str) -> bool {
        let Some(info) = self.leases.get(lease) else {
            return false;
        };
        match self.by_id.get_mut(&info.worker_id) {
            Some(worker) => {
                worker.cancels.push(lease.to_owned());
                true
            }
            None => false,
        }
    }

    /// Takes a lease away from its worker.
    pub fn remove_lease(&mut self, lease: &str) -> Option<LeaseInfo> {
        let info = self.leases.remove(lease)?;
        if let Some(worker) = self.by_id.get_mut(&info.worker_id) {
            worker.leases.remove(lease);
        }
        Some(info)
    }

    /// Answers every poll that was given work or has cancels to pass on;
    /// returns the leases whose poll was gone (never delivered).
    pub fn flush(&mut self) -> Vec<String> {
        let mut undelivered = Vec::new();
        for worker in self.by_id.values_mut() {
            let ready = worker
                .held
                .as_ref()
                .is_some_and(|h| !h.tasks.is_empty() || !worker.cancels.is_empty());
            if !ready {
                continue;
            }
            if let Some(held) = worker.held.take() {
                let reply = PollReply {
                    tasks: held.tasks,
                    cancel: std::mem::take(&mut worker.cancels),
                    reregister: false,
                };
                if let Err(reply) = held.respond.send(reply) {
                    undelivered.extend(reply.tasks.into_iter().map(|l| l.lease));
                }
            }
        }
        undelivered
    }

    /// Answers polls held for [`POLL_HOLD_MS`] with no work.
    pub fn expire_polls(&mut self, now: Instant) {
        let hold = Duration::from_millis(POLL_HOLD_MS);
        for worker in self.by_id.values_mut() {
            if worker.held.as_ref().is_some_and(|h| now >= h.since + hold)
                && let Some(held) = worker.held.take()
            {
                let _ = held.respond.send(PollReply::default());
            }
        }
    }

    /// Marks workers silent for [`INACTIVE_AFTER`] inactive and returns
    /// them with the leases they held; forgets those silent for
    /// [`REMOVE_AFTER`] (and holding nothing).
    pub fn silent(&mut self, now: Instant) -> Vec<(String, Vec<String>)> {
        let mut gone = Vec::new();
        for worker in self.by_id.values_mut() {
            if worker.state != State::Inactive && now >= worker.last_seen + INACTIVE_AFTER {
                worker.state = State::Inactive;
                worker.held = None;
                worker.cancels.clear();
                gone.push((worker.id.clone(), worker.leases.iter().cloned().collect()));
            }
        }
        self.by_id.retain(|_, w| {
            !(w.state == State::Inactive
                && w.leases.is_empty()
                && now >= w.last_seen + REMOVE_AFTER)
        });
        gone
    }

    pub fn list(&self) -> Vec<WorkerInfo> {
        self.by_id.values().map(Worker::info).collect()
    }
}
