//! A subworker: runs tasks a control plane hands it, from its own manifest,
//! through the same [`Executor`] as the control plane.
//!
//! It only dials out, to the control plane's management socket (base+5),
//! and speaks [`protocol::Manage`]: it registers (its id, capacity, and each
//! task's name and digest), then keeps one poll outstanding at a time. A
//! poll is its heartbeat and its request for work: the control plane holds
//! it until it has leases for it or cancels to pass on, or for
//! [`POLL_HOLD_MS`]. Each run's record goes back as a `result` under its
//! lease, sent again until the control plane acknowledges it; the lease is
//! listed in every poll until then, so that a restarted control plane gives
//! it back instead of running the task twice.
//!
//! On shutdown it drains: it says so in its next poll (no more work), lets
//! running tasks finish for the grace period, hands back the ones still
//! running after that, deregisters and returns.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Token;
use crate::client::{Client, ClientError};
use crate::executor::{Execution, Executor, Outcome};
use crate::manifest::Manifest;
use crate::protocol::{
    Applied, Hello, Lease, Manage, POLL_HOLD_MS, Poll, PollReply, Registered, Registration,
    Release, TaskOffer, WorkResult,
};

/// How long a report (result, release) waits for an answer before it is sent again.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause before trying the control plane again after it did not answer.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// After the grace period, how long handed-back tasks and unreported
/// results may take to reach the control plane before the subworker gives up.
const REPORT_GRACE: Duration = Duration::from_secs(10);

/// A subworker's settings (the `subworker` command's flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub worker_id: String,
    /// The control plane's base address; `None`: found on `discovery_address`.
    pub control_plane: Option<String>,
    pub discovery_address: String,
    /// What `fastworker workers` shows as its address.
    pub address: String,
    /// Tasks run at once.
    pub concurrency: usize,
    /// After a shutdown signal, how long running tasks may take before they
    /// are handed back.
    pub shutdown_grace: Duration,
    /// Sent with its queries (`--auth-token`).
    pub auth: Option<Token>,
    /// Sent with its management messages (`--worker-token`; else `auth`).
    pub worker_token: Option<Token>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubworkerError {
    #[error("{0}")]
    Address(String),
    #[error("stopped before a control plane was found")]
    Stopped,
    #[error("the control plane refused this subworker: {0}")]
    Unauthorized(String),
}

/// How a subworker's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Everything it ran was reported (or handed back) and acknowledged.
    Clean,
    /// Some reports never reached the control plane.
    Unreported(usize),
}

enum Event {
    Polled(Result<PollReply, ClientError>),
    Ran { lease: String, execution: Execution },
    Reported { lease: String },
}

struct Running {
    cancel: CancellationToken,
    /// Stopped because the grace period ran out: handed back, not reported.
    hand_back: bool,
}

/// Where a subworker stands with its control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Not registered (at start, or told to register again).
    Unregistered,
    /// Registered; a poll is on its way (`polling`), or about to be sent.
    Registered { polling: bool },
}

/// How far a subworker is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    No,
    /// No more work; running tasks have until `hand_back_at`, then they are
    /// handed back, and their reports have until `give_up_at`.
    Draining {
        hand_back_at: Option<Instant>,
        give_up_at: Option<Instant>,
    },
}

/// A running subworker: its link to the control plane, the tasks it runs,
/// and where it stands. [`Subworker::serve`] waits for events and hands each
/// to its method.
struct Subworker {
    config: Config,
    manifest: Arc<Manifest>,
    executor: Arc<Executor>,
    link: Link,
    offers: BTreeMap<String, TaskOffer>,
    /// Leases it holds: running, or with a report not yet acknowledged.
    running: HashMap<String, Running>,
    /// The number of the last poll sent.
    seq: u64,
    connection: Connection,
    stopping: Stopping,
    events: mpsc::UnboundedSender<Event>,
}

/// Runs a subworker until `shutdown` (then drains) or `force` (hands back
/// at once). `on_registered` is called with the management address after
/// each registration.
pub async fn run(
    config: Config,
    manifest: Arc<Manifest>,
    reloads: mpsc::Receiver<Arc<Manifest>>,
    shutdown: CancellationToken,
    force: CancellationToken,
    on_registered: impl Fn(&str, &Registered),
) -> Result<Ended, SubworkerError> {
    let (client, manage) = connect(&config, &shutdown).await?;
    // Its task processes carry this marker: a restart of this subworker
    // (same id, same control plane) kills what a killed one left running.
    let owner = format!("subworker:{}@{}", config.worker_id, client.endpoints().base);
    let killed = crate::executor::kill_strays(&owner).groups;
    if killed > 0 {
        tracing::warn!(
            killed,
            "killed the process groups of tasks left running by an earlier run of this subworker"
        );
    }
    let offers = offers_of(&manifest);
    let link = Link {
        client: client.with_auth(config.worker_token.clone().or(config.auth.clone())),
        manage,
        hello: Hello {
            worker_id: config.worker_id.clone(),
            session: uuid::Uuid::new_v4().simple().to_string(),
        },
    };
    let (events, received) = mpsc::unbounded_channel();
    let subworker = Subworker {
        executor: Arc::new(Executor::owned_by(&owner)),
        config,
        manifest,
        link,
        offers,
        running: HashMap::new(),
        seq: 0,
        connection: Connection::Unregistered,
        stopping: Stopping::No,
        events,
    };
    subworker
        .serve(received, reloads, shutdown, force, on_registered)
        .await
}

/// What a subworker offers: each task it defines, with its digest and
/// scheduling policy.
fn offers_of(manifest: &Manifest) -> BTreeMap<String, TaskOffer> {
    manifest
        .tasks
        .iter()
        .map(|(name, spec)| {
            let offer = TaskOffer {
                digest: spec.digest(&manifest.dir),
                priority: spec.priority,
                retries: spec.retries,
                retry_backoff_ms: u64::try_from(spec.retry_backoff.as_millis()).unwrap_or(u64::MAX),
                max_concurrency: spec.max_concurrency,
            };
            (name.clone(), offer)
        })
        .collect()
}

impl Subworker {
    /// Waits for events and hands each to its method, until it has
    /// stopped (or given up on reporting).
    async fn serve(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut reloads: mpsc::Receiver<Arc<Manifest>>,
        shutdown: CancellationToken,
        force: CancellationToken,
        on_registered: impl Fn(&str, &Registered),
    ) -> Result<Ended, SubworkerError> {
        loop {
            if self.connection == Connection::Unregistered {
                self.register(&on_registered).await?;
                if self.connection == Connection::Unregistered {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled(), if !self.draining() => {}
                    }
                    // Stopped while the control plane is out of reach, with
                    // nothing held: there is nothing to hand back.
                    if shutdown.is_cancelled() && self.running.is_empty() {
                        return Ok(Ended::Clean);
                    }
                }
            }
            if self.draining() && self.running.is_empty() {
                self.deregister().await;
                return Ok(Ended::Clean);
            }
            if self.connection == (Connection::Registered { polling: false }) {
                self.send_poll();
            }
            let (hand_back_at, give_up_at) = match self.stopping {
                Stopping::Draining {
                    hand_back_at,
                    give_up_at,
                } => (hand_back_at, give_up_at),
                Stopping::No => (None, None),
            };
            tokio::select! {
                Some(event) = events.recv() => match event {
                    Event::Polled(reply) => self.on_polled(reply),
                    Event::Ran { lease, execution } => self.on_ran(lease, execution),
                    Event::Reported { lease } => {
                        self.running.remove(&lease);
                    }
                },
                Some(manifest) = reloads.recv() => self.on_reload(manifest),
                () = shutdown.cancelled(), if !self.draining() => self.on_shutdown(),
                () = force.cancelled(), if hand_back_at.is_some() => self.set_hand_back(Instant::now()),
                () = crate::clock::until(hand_back_at) => self.on_hand_back_due(),
                () = crate::clock::until(give_up_at) => {
                    tracing::error!(tasks = self.running.len(), "could not report to the control plane in time; those tasks run again elsewhere once it notices this subworker is gone");
                    return Ok(Ended::Unreported(self.running.len()));
                }
            }
        }
    }

    /// A reloaded manifest: its tasks are offered from now on (it registers
    /// again, with their digests), leases it holds run on; warm pools whose
    /// definition changed are replaced once their busy processes finish.
    fn on_reload(&mut self, manifest: Arc<Manifest>) {
        let replaced = self.executor.retire_pools(|name, running| {
            manifest
                .task(name)
                .is_some_and(|spec| spec.runs_like(running))
        });
        let (before, after) = (self.offers.len(), manifest.tasks.len());
        self.offers = offers_of(&manifest);
        self.manifest = manifest;
        tracing::info!(
            tasks_before = before,
            tasks = after,
            pools_replaced = replaced,
            "manifest reloaded; registering again with its tasks"
        );
        if !self.draining() {
            self.connection = Connection::Unregistered;
        }
    }

    fn draining(&self) -> bool {
        matches!(self.stopping, Stopping::Draining { .. })
    }

    /// Registers (its tasks, and the leases it still holds).
    async fn register(
        &mut self,
        on_registered: &impl Fn(&str, &Registered),
    ) -> Result<(), SubworkerError> {
        let registration = Manage::Register(Registration {
            hello: self.link.hello.clone(),
            address: self.config.address.clone(),
            capacity: self.config.concurrency,
            tasks: self.offers.clone(),
            running: self.running.keys().cloned().collect(),
        });
        match self
            .link
            .send::<_, Registered>(&registration, REPORT_TIMEOUT)
            .await
        {
            Ok(reply) if reply.registered => {
                self.connection = Connection::Registered { polling: false };
                for lease in &reply.cancel {
                    if let Some(r) = self.running.get(lease) {
                        r.cancel.cancel();
                    }
                }
                on_registered(&self.link.manage, &reply);
            }
            Ok(reply) => {
                tracing::warn!(
                    "the control plane refused the registration: {}",
                    reply.error.as_deref().unwrap_or("no reason given")
                );
            }
            // A token the control plane does not take will not start
            // working by itself: stop, and say so.
            Err(ClientError::Refused(e)) if e.starts_with("unauthorized") => {
                return Err(SubworkerError::Unauthorized(e));
            }
            Err(e) => tracing::warn!("cannot register: {e}"),
        }
        Ok(())
    }

    /// Sends the next poll (in the background; its reply comes as an event).
    fn send_poll(&mut self) {
        self.seq += 1;
        self.connection = Connection::Registered { polling: true };
        let poll = Manage::Poll(Poll {
            hello: self.link.hello.clone(),
            seq: self.seq,
            running: self.running.keys().cloned().collect(),
            draining: self.draining(),
        });
        let (link, tx) = (self.link.clone(), self.events.clone());
        tokio::spawn(async move {
            let wait = Duration::from_millis(POLL_HOLD_MS) + REPORT_TIMEOUT;
            let reply = link.send::<_, PollReply>(&poll, wait).await;
            if reply.is_err() {
                tokio::time::sleep(RETRY_AFTER).await;
            }
            let _ = tx.send(Event::Polled(reply));
        });
    }

    /// A poll's reply: work to start, leases to stop, or "register again".
    fn on_polled(&mut self, reply: Result<PollReply, ClientError>) {
        self.connection = Connection::Registered { polling: false };
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!("no answer from the control plane: {e}");
                return;
            }
        };
        if reply.reregister {
            tracing::info!(
                "the control plane does not know this subworker (it restarted, or lost touch): registering again"
            );
            self.connection = Connection::Unregistered;
        }
        for lease in reply.tasks {
            if self.draining() || self.running.contains_key(&lease.lease) {
                continue;
            }
            let cancel = CancellationToken::new();
            self.running.insert(
                lease.lease.clone(),
                Running {
                    cancel: cancel.clone(),
                    hand_back: false,
                },
            );
            start(
                &self.executor,
                &self.manifest,
                lease,
                cancel,
                self.events.clone(),
            );
        }
        for lease in &reply.cancel {
            if let Some(r) = self.running.get(lease) {
                tracing::info!(%lease, "cancelled by the control plane");
                r.cancel.cancel();
            }
        }
    }

    /// A leased run ended: its result (or, past the grace, its hand-back)
    /// is reported until the control plane takes it.
    fn on_ran(&mut self, lease: String, execution: Execution) {
        let hand_back = self.running.get(&lease).is_some_and(|r| r.hand_back);
        let message = if hand_back {
            Manage::Release(Release {
                hello: self.link.hello.clone(),
                lease: lease.clone(),
                reason: "the subworker stopped, and its grace period ran out before the task ended"
                    .to_owned(),
            })
        } else {
            Manage::Result(WorkResult {
                hello: self.link.hello.clone(),
                lease: lease.clone(),
                execution,
            })
        };
        let (link, tx) = (self.link.clone(), self.events.clone());
        tokio::spawn(async move {
            link.report(&message).await;
            let _ = tx.send(Event::Reported { lease });
        });
    }

    /// A shutdown signal: no more work; running tasks get the grace period.
    fn on_shutdown(&mut self) {
        let grace = self.config.shutdown_grace;
        tracing::info!(
            running = self.running.len(),
            "draining: no new tasks; running ones have {} to finish",
            humantime::format_duration(grace)
        );
        self.stopping = Stopping::Draining {
            hand_back_at: Some(Instant::now() + grace),
            give_up_at: None,
        };
    }

    fn set_hand_back(&mut self, at: Instant) {
        if let Stopping::Draining { hand_back_at, .. } = &mut self.stopping {
            *hand_back_at = Some(at);
        }
    }

    /// The grace period is over: what still runs is stopped and handed
    /// back; the reports have [`REPORT_GRACE`] to reach the control plane.
    fn on_hand_back_due(&mut self) {
        self.stopping = Stopping::Draining {
            hand_back_at: None,
            give_up_at: Some(Instant::now() + REPORT_GRACE),
        };
        for (lease, r) in &mut self.running {
            if !r.cancel.is_cancelled() {
                tracing::warn!(%lease, "grace period over: stopping the task and handing it back");
                r.hand_back = true;
                r.cancel.cancel();
            }
        }
    }

    async fn deregister(&self) {
        let bye = Manage::Deregister(self.link.hello.clone());
        if let Err(e) = self.link.send::<_, Applied>(&bye, REPORT_TIMEOUT).await {
            tracing::warn!("could not deregister (the control plane will notice the silence): {e}");
        }
    }
}

/// Runs one leased task and reports its run as an event.
fn start(
    executor: &Arc<Executor>,
    manifest: &Arc<Manifest>,
    lease: Lease,
    cancel: CancellationToken,
    events: mpsc::UnboundedSender<Event>,
) {
    let (executor, spec) = (
        Arc::clone(executor),
        manifest.task(&lease.request.name).cloned(),
    );
    let request = lease.request;
    tracing::debug!(task_id = %request.task_id, name = %request.name, lease = %lease.lease, "running a leased task");
    tokio::spawn(async move {
        let execution = match spec {
            Some(spec) => executor.run(&spec, &request, &cancel).await,
            // The control plane only sends tasks this worker registered, so
            // this is a manifest that changed under it: say so.
            None => {
                let now = chrono::Utc::now();
                Execution {
                    task_id: request.task_id.clone(),
                    name: request.name.clone(),
                    attempt: request.attempt,
                    outcome: Outcome::SpawnFailed {
                        program: request.name.clone().into(),
                        message: format!(
                            "task '{}' is not in this subworker's manifest",
                            request.name
                        ),
                        transient: false,
                    },
                    started_at: now,
                    finished_at: now,
                    duration: Duration::ZERO,
                    stderr: String::new(),
                    pid: None,
                }
            }
        };
        let _ = events.send(Event::Ran {
            lease: lease.lease,
            execution,
        });
    });
}

/// The connection to the control plane's management socket.
#[derive(Clone)]
struct Link {
    client: Client,
    manage: String,
    hello: Hello,
}

impl Link {
    async fn send<Q: Serialize, R: DeserializeOwned>(
        &self,
        message: &Q,
        timeout: Duration,
    ) -> Result<R, ClientError> {
        self.client.request(&self.manage, message, timeout).await
    }

    /// Sends a result or release until the control plane has taken it in
    /// (or said the lease is no longer this worker's).
    async fn report(&self, message: &Manage) {
        loop {
            match self.send::<_, Applied>(message, REPORT_TIMEOUT).await {
                Ok(Applied { error: None, .. }) => return,
                Ok(Applied { error: Some(e), .. }) => {
                    tracing::warn!("report not taken ({e}); sending it again")
                }
                Err(e) => tracing::warn!("report not delivered ({e}); sending it again"),
            }
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}

/// Finds the control plane (by address, or by its announcements) and asks
/// it where subworkers register; tries again until it answers.
async fn connect(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(Client, String), SubworkerError> {
    let mut said = false;
    loop {
        let found = match &config.control_plane {
            Some(base) => Ok(base.clone()),
            None => crate::transport::discover(&config.discovery_address, Duration::from_secs(3))
                .await
                .map(|(_, base)| base)
                .map_err(|e| e.to_string()),
        };
        let result = match found {
            Ok(base) => {
                let client = Client::new(&base, REPORT_TIMEOUT)
                    .map_err(|e| SubworkerError::Address(e.to_string()))?
                    .with_auth(config.auth.clone());
                match client.info().await {
                    Ok(info) => {
                        return Ok((client, management_address(&base, &info.subworker_address)));
                    }
                    // A token it does not take will not start working by
                    // itself: stop, and say so.
                    Err(ClientError::Refused(e)) if e.starts_with("unauthorized") => {
                        return Err(SubworkerError::Unauthorized(e));
                    }
                    Err(e) => format!("{base}: {e}"),
                }
            }
            Err(e) => e,
        };
        if !said {
            tracing::warn!("waiting for the control plane ({result})");
            said = true;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return Err(SubworkerError::Stopped),
        }
    }
}

/// The management address to dial: the port the control plane reports, on
/// the host this subworker reached it at (it may bind 0.0.0.0).
fn management_address(base: &str, reported: &str) -> String {
    match (base.strip_prefix("tcp://"), reported.strip_prefix("tcp://")) {
        (Some(base), Some(reported)) => match (base.rsplit_once(':'), reported.rsplit_once(':')) {
            (Some((host, _)), Some((_, port))) => format!("tcp://{host}:{port}"),
            _ => reported.to_owned(),
        },
        _ => reported.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_management_port_is_dialed_on_the_host_used_for_the_base() {
        assert_eq!(
            management_address("tcp://10.0.0.1:5555", "tcp://0.0.0.0:5560"),
            "tcp://10.0.0.1:5560"
        );
        assert_eq!(
            management_address("ipc:///tmp/cp", "ipc:///tmp/cp.5"),
            "ipc:///tmp/cp.5"
        );
    }

    #[test]
    fn management_messages_round_trip() {
        let poll = Manage::Poll(Poll {
            hello: Hello {
                worker_id: "sw1".into(),
                session: "s".into(),
            },
            seq: 3,
            running: vec!["l1".into()],
            draining: false,
        });
        let bytes = crate::protocol::encode(&poll);
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert!(text.contains(r#""action":"poll""#), "{text}");
        assert_eq!(crate::protocol::decode::<Manage>(&bytes), Ok(poll));
    }
}
