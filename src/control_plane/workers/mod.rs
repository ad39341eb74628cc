//! The subworkers a control plane knows, and the rules of leases: who a
//! worker is (id and session), what it can run, how loaded it is, which
//! leases it holds, the poll it has waiting for work, and when it is gone.
//! The registry decides what happens to a lease; the core decides what
//! happens to the task: every method that ends a lease without a result
//! returns it as a [`LostLease`] for the core to run the task again.
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

mod definitions;

use super::events::{Event, Events, WorkerChange, WorkerEvent, WorkerState as State};
use crate::protocol::{
    CutShort, Hello, Lease, POLL_HOLD_MS, Poll, PollReply, Registered, Registration, TaskOffer,
    WorkerInfo,
};

/// Silence after which a worker is inactive and its tasks go elsewhere:
/// three heartbeats.
pub const INACTIVE_AFTER: Duration = Duration::from_millis(3 * POLL_HOLD_MS);

/// Silence after which an inactive worker is forgotten.
pub const REMOVE_AFTER: Duration = Duration::from_secs(60);

/// How long a worker that held leases when the control plane stopped has to
/// register again after the restart before those tasks run elsewhere.
pub const REJOIN_GRACE: Duration = Duration::from_secs(5);

/// A lease that ended without a result: its task runs again. `why` is the
/// attempt to list (none: the lease never reached the worker, so the task
/// never started there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostLease {
    pub lease: String,
    pub task_id: String,
    pub worker_id: String,
    pub why: Option<(CutShort, String)>,
}

/// What became of a report (result or hand-back) on a lease.
#[derive(Debug)]
pub enum Report {
    /// The lease was the worker's, and is taken back: its task's report
    /// stands.
    Taken { task_id: String },
    /// The lease is this worker id's, but the process speaking has not
    /// registered (yet): the report is not taken, so that it comes again.
    Unregistered,
    /// The lease is not the worker's (revoked: the task runs elsewhere).
    NotHeld,
}

/// A poll waiting for work.
#[derive(Debug)]
struct Held {
    seq: u64,
    since: Instant,
    respond: oneshot::Sender<PollReply>,
    /// Leases given to it in this dispatch round, sent when the round ends.
    tasks: Vec<Lease>,
}

#[derive(Debug)]
struct Worker {
    id: String,
    /// The process speaking for it; `None` for a worker known only from the
    /// journal (it held leases when the control plane stopped).
    session: Option<String>,
    address: String,
    capacity: usize,
    /// The tasks it defines, as it said when it registered.
    defined: BTreeMap<String, TaskOffer>,
    /// Those it is given (not those it defines differently from the
    /// control plane, unless mismatches are allowed).
    offers: BTreeMap<String, TaskOffer>,
    state: State,
    last_seen: Instant,
    last_seen_at: Option<DateTime<Utc>>,
    registered_at: Option<DateTime<Utc>>,
    /// Leases it holds.
    leases: HashSet<String>,
    done: u64,
    held: Option<Held>,
    /// Leases to stop, sent with the next poll reply.
    cancels: Vec<String>,
    warnings: Vec<String>,
    /// Whether its state is counted (an event has said it): a worker known
    /// only from the journal is not, until it registers or goes inactive.
    counted: bool,
}

impl Worker {
    fn new(id: String, session: Option<String>, address: String, capacity: usize) -> Worker {
        Worker {
            id,
            session,
            address,
            capacity,
            defined: BTreeMap::new(),
            offers: BTreeMap::new(),
            state: State::Active,
            last_seen: Instant::now(),
            last_seen_at: None,
            registered_at: None,
            leases: HashSet::new(),
            done: 0,
            held: None,
            cancels: Vec::new(),
            warnings: Vec::new(),
            counted: false,
        }
    }

    /// Its state as the counters know it.
    fn counted_state(&self) -> Option<State> {
        self.counted.then_some(self.state)
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

    fn seen(&mut self) {
        self.last_seen = Instant::now();
        self.last_seen_at = Some(Utc::now());
    }

    fn info(&self) -> WorkerInfo {
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
struct LeaseInfo {
    worker_id: String,
    task_id: String,
    /// The poll whose reply carried it (0: restored from the journal).
    issued_in: u64,
    lease: Lease,
}

/// The registry.
#[derive(Debug)]
pub struct Workers {
    by_id: BTreeMap<String, Worker>,
    leases: HashMap<String, LeaseInfo>,
    events: Events,
    /// Give a subworker the tasks it defines differently from the control
    /// plane (`--allow-definition-mismatch`); by default it is not given them.
    allow_mismatch: bool,
}

impl Workers {
    pub fn new(events: Events, allow_mismatch: bool) -> Workers {
        Workers {
            by_id: BTreeMap::new(),
            leases: HashMap::new(),
            events,
            allow_mismatch,
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Leases held by workers (the core waits for them when it drains).
    pub fn leases_out(&self) -> usize {
        self.leases.len()
    }

    fn emit(&self, worker_id: &str, from: Option<State>, to: Option<State>, change: WorkerChange) {
        self.events.emit(Event::Worker(WorkerEvent {
            worker_id: worker_id.to_owned(),
            from,
            to,
            change,
        }));
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

    pub fn list(&self) -> Vec<WorkerInfo> {
        self.by_id.values().map(Worker::info).collect()
    }

    /// A subworker registers: new, back after a silence, or the same one
    /// again after a restart of the control plane (its leases stay its).
    /// Leases are kept where both sides know them; the worker's own that
    /// the control plane no longer gives it are to be stopped (in the
    /// reply); the control plane's that the worker does not hold were lost
    /// with its process (returned). `ours` gives the control plane's digest
    /// of a task it defines itself, for the definition warnings.
    pub fn register(
        &mut self,
        reg: Registration,
        ours: impl Fn(&str) -> Option<String>,
    ) -> (Registered, Vec<LostLease>) {
        let id = reg.hello.worker_id.clone();
        let refuse = |error: String| Registered {
            registered: false,
            error: Some(error),
            warnings: Vec::new(),
            cancel: Vec::new(),
        };
        if let Err(e) = crate::protocol::check_id("worker id", &id) {
            return (refuse(e), Vec::new());
        }
        if let Some(old) = self.by_id.get(&id)
            && old.state != State::Inactive
            && old
                .session
                .as_ref()
                .is_some_and(|s| *s != reg.hello.session)
        {
            return (
                refuse(format!(
                    "worker id '{id}' is taken by another running subworker ({}, last heard from {} ago); give each subworker its own --worker-id",
                    old.address,
                    humantime::format_duration(Duration::from_millis(
                        u64::try_from(old.last_seen.elapsed().as_millis()).unwrap_or(u64::MAX)
                    )),
                )),
                Vec::new(),
            );
        }
        let claimed: HashSet<&String> = reg.running.iter().collect();
        let old = self.by_id.remove(&id);
        let (held, done, registered_at, was) = match &old {
            Some(old) => (
                old.leases.clone(),
                old.done,
                old.registered_at
                    .filter(|_| old.session.as_ref() == Some(&reg.hello.session)),
                old.counted_state(),
            ),
            None => (HashSet::new(), 0, None, None),
        };
        let mut lost = Vec::new();
        for lease in held.iter().filter(|l| !claimed.contains(l)) {
            if let Some(info) = self.leases.remove(lease) {
                lost.push(LostLease {
                    lease: lease.clone(),
                    task_id: info.task_id,
                    worker_id: id.clone(),
                    why: Some((
                        CutShort::Lost,
                        format!("subworker '{id}' came back without this task (it restarted)"),
                    )),
                });
            }
        }
        let cancel: Vec<String> = reg
            .running
            .iter()
            .filter(|l| !held.contains(*l))
            .cloned()
            .collect();
        let defined = reg.tasks;
        let mut offers = defined.clone();
        let warnings = self.definition_warnings(&id, &mut offers, ours);
        for warning in &warnings {
            tracing::warn!(worker = %id, "{warning}");
        }
        let kept: HashSet<String> = held.into_iter().filter(|l| claimed.contains(l)).collect();
        tracing::info!(worker = %id, address = %reg.address, capacity = reg.capacity, tasks = offers.len(), kept = kept.len(), "subworker registered");
        let mut worker = Worker::new(
            id.clone(),
            Some(reg.hello.session),
            reg.address,
            reg.capacity,
        );
        let now = Utc::now();
        worker.defined = defined;
        worker.offers = offers;
        worker.last_seen_at = Some(now);
        worker.registered_at = registered_at.or(Some(now));
        worker.leases = kept;
        worker.done = done;
        worker.warnings = warnings.clone();
        worker.counted = true;
        let (capacity, tasks) = (worker.capacity, worker.offers.len());
        self.by_id.insert(id.clone(), worker);
        self.emit(
            &id,
            was,
            Some(State::Active),
            WorkerChange::Joined { capacity, tasks },
        );
        (
            Registered {
                registered: true,
                error: None,
                warnings,
                cancel,
            },
            lost,
        )
    }

    /// A subworker's heartbeat and request for work: answered at once when
    /// there is something to say (cancels, or a lost reply to resend),
    /// else held until there is work or [`POLL_HOLD_MS`] passes. Returns the
    /// leases whose earlier reply never arrived.
    pub fn poll(&mut self, poll: Poll, respond: oneshot::Sender<PollReply>) -> Vec<LostLease> {
        let Some(worker) = self
            .by_id
            .get_mut(&poll.hello.worker_id)
            .filter(|w| w.state != State::Inactive)
            .filter(|w| w.session.as_ref() == Some(&poll.hello.session))
        else {
            let _ = respond.send(PollReply {
                reregister: true,
                ..PollReply::default()
            });
            return Vec::new();
        };
        worker.seen();
        let draining = poll.draining && worker.state == State::Active;
        if draining {
            tracing::info!(worker = %worker.id, "subworker draining: no new tasks for it");
            worker.state = State::Draining;
        }
        // An earlier poll that is still held was given up by the worker.
        if let Some(old) = worker.held.take() {
            let _ = old.respond.send(PollReply::default());
        }
        let claimed: HashSet<&String> = poll.running.iter().collect();
        let (mut lost, mut resend) = (Vec::new(), Vec::new());
        for lease in worker.leases.iter().filter(|l| !claimed.contains(l)) {
            match self.leases.get(lease) {
                // Sent in the reply to an earlier poll, and not there: that
                // reply never arrived.
                Some(info) if info.issued_in != 0 && info.issued_in < poll.seq => {
                    lost.push(lease.clone());
                }
                // This very poll again (NNG resent it): so is its reply.
                Some(info) if info.issued_in == poll.seq => resend.push(info.lease.clone()),
                _ => {}
            }
        }
        let mut cancel = std::mem::take(&mut worker.cancels);
        cancel.extend(
            poll.running
                .iter()
                .filter(|l| !worker.leases.contains(*l))
                .cloned(),
        );
        if cancel.is_empty() && resend.is_empty() {
            worker.held = Some(Held {
                seq: poll.seq,
                since: Instant::now(),
                respond,
                tasks: Vec::new(),
            });
        } else {
            let _ = respond.send(PollReply {
                tasks: resend,
                cancel,
                reregister: false,
            });
        }
        let id = worker.id.clone();
        if draining {
            self.emit(
                &id,
                Some(State::Active),
                Some(State::Draining),
                WorkerChange::Draining,
            );
        }
        lost.into_iter()
            .filter_map(|lease| self.revoke(&lease, None))
            .collect()
    }

    /// Hands `lease` to `worker_id`'s waiting poll (sent when the dispatch
    /// round ends, by [`Workers::flush`]).
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

    /// A task that ran on `worker_id` under `lease` when the control plane
    /// stopped (from the journal): the lease stays the worker's, which has
    /// [`REJOIN_GRACE`] to register again and claim it; otherwise the task
    /// runs elsewhere.
    pub fn restore(&mut self, worker_id: &str, task_id: &str, lease: Lease) {
        let worker = self.by_id.entry(worker_id.to_owned()).or_insert_with(|| {
            let mut worker = Worker::new(
                worker_id.to_owned(),
                None,
                "(not registered since the restart)".to_owned(),
                0,
            );
            // Silent for INACTIVE_AFTER from this moment + the grace.
            worker.last_seen += REJOIN_GRACE - INACTIVE_AFTER;
            worker
        });
        worker.leases.insert(lease.lease.clone());
        self.leases.insert(
            lease.lease.clone(),
            LeaseInfo {
                worker_id: worker_id.to_owned(),
                task_id: task_id.to_owned(),
                issued_in: 0,
                lease,
            },
        );
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

    /// A report on `lease` from the worker `hello` names (a result when
    /// `ran`, else a hand-back): the lease taken back if it is that
    /// worker's, speaking from the process (session) that registered.
    /// Another process using the same worker id cannot report on or hand
    /// back its leases.
    pub fn report(&mut self, hello: &Hello, lease: &str, ran: bool) -> Report {
        let its = self
            .leases
            .get(lease)
            .is_some_and(|info| info.worker_id == hello.worker_id);
        if !its {
            return Report::NotHeld;
        }
        let Some(worker) = self
            .by_id
            .get_mut(&hello.worker_id)
            .filter(|w| w.session.as_ref() == Some(&hello.session))
        else {
            return Report::Unregistered;
        };
        worker.seen();
        worker.leases.remove(lease);
        if ran {
            worker.done += 1;
        }
        match self.leases.remove(lease) {
            Some(info) => Report::Taken {
                task_id: info.task_id,
            },
            None => Report::NotHeld,
        }
    }

    /// A subworker leaves: its leases are lost (it ran them, or not).
    pub fn deregister(&mut self, hello: &Hello) -> Result<Vec<LostLease>, String> {
        let ours = self
            .by_id
            .get(&hello.worker_id)
            .is_some_and(|w| w.session.as_ref() == Some(&hello.session));
        if !ours {
            return Err(format!(
                "no subworker '{}' with this session",
                hello.worker_id
            ));
        }
        let Some(worker) = self.by_id.remove(&hello.worker_id) else {
            return Ok(Vec::new());
        };
        tracing::info!(worker = %hello.worker_id, "subworker deregistered");
        self.emit(&worker.id, worker.counted_state(), None, WorkerChange::Left);
        let why = format!("subworker '{}' left while running it", hello.worker_id);
        Ok(worker
            .leases
            .iter()
            .filter_map(|lease| self.revoke(lease, Some((CutShort::Lost, why.clone()))))
            .collect())
    }

    /// Takes `lease` from its worker, for the core to run its task again.
    fn revoke(&mut self, lease: &str, why: Option<(CutShort, String)>) -> Option<LostLease> {
        let info = self.leases.remove(lease)?;
        if let Some(worker) = self.by_id.get_mut(&info.worker_id) {
            worker.leases.remove(lease);
        }
        Some(LostLease {
            lease: lease.to_owned(),
            task_id: info.task_id,
            worker_id: info.worker_id,
            why,
        })
    }

    /// Answers every poll that was given work or has cancels to pass on;
    /// returns the leases whose poll was gone (never delivered).
    pub fn flush(&mut self) -> Vec<LostLease> {
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
            .into_iter()
            .filter_map(|lease| self.revoke(&lease, None))
            .collect()
    }

    /// Answers polls held for [`POLL_HOLD_MS`] with no work; marks workers
    /// silent for [`INACTIVE_AFTER`] inactive, returning their leases;
    /// forgets those silent for [`REMOVE_AFTER`] (and holding nothing).
    pub fn check(&mut self, now: Instant) -> Vec<LostLease> {
        let hold = Duration::from_millis(POLL_HOLD_MS);
        let mut silent: Vec<(String, Option<State>, Vec<String>)> = Vec::new();
        for worker in self.by_id.values_mut() {
            if worker.held.as_ref().is_some_and(|h| now >= h.since + hold)
                && let Some(held) = worker.held.take()
            {
                let _ = held.respond.send(PollReply::default());
            }
            if worker.state != State::Inactive && now >= worker.last_seen + INACTIVE_AFTER {
                let was = worker.counted_state();
                worker.counted = true;
                worker.state = State::Inactive;
                worker.held = None;
                worker.cancels.clear();
                silent.push((
                    worker.id.clone(),
                    was,
                    worker.leases.iter().cloned().collect(),
                ));
            }
        }
        let mut lost = Vec::new();
        for (id, was, leases) in silent {
            tracing::warn!(worker = %id, leases = leases.len(), "subworker silent for {}: inactive; its tasks run elsewhere", humantime::format_duration(INACTIVE_AFTER));
            self.emit(
                &id,
                was,
                Some(State::Inactive),
                WorkerChange::Inactive {
                    leases_lost: leases.len(),
                },
            );
            let why = format!("subworker '{id}' stopped answering while running this attempt");
            lost.extend(
                leases
                    .iter()
                    .filter_map(|lease| self.revoke(lease, Some((CutShort::Lost, why.clone())))),
            );
        }
        let forgotten: Vec<String> = self
            .by_id
            .values()
            .filter(|w| {
                w.state == State::Inactive
                    && w.leases.is_empty()
                    && now >= w.last_seen + REMOVE_AFTER
            })
            .map(|w| w.id.clone())
            .collect();
        for id in forgotten {
            self.by_id.remove(&id);
            self.emit(&id, Some(State::Inactive), None, WorkerChange::Forgotten);
        }
        lost
    }
}
