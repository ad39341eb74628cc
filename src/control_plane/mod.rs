//! The control plane: takes tasks over NNG, runs them through the executor
//! in priority order, keeps their results, and announces itself.
//!
//! [`start`] binds every socket (so a busy port is an error at once), then
//! runs four submit servers (one per priority), the query server, the
//! discovery announcer and the [`core`] actor. On `shutdown` the core drains
//! (see [`core::Core::run`]); once it is done the servers close and warm
//! pools are stopped.

mod callbacks;
mod core;
pub mod events;
pub mod handlers;
mod queue;
pub mod reload;
mod results;
mod workers;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::callbacks::CallbackPolicy;
pub use self::core::{
    Acceptance, Command, Due, Lane, NewTask, Queued, Queues, Refused, Stats, Timed, Visit,
};
pub use self::handlers::CoreHandle;
pub use self::queue::{DispatchQueue, Waiting};
use self::results::ResultCache;
use crate::executor::Executor;
use crate::manifest::{Manifest, Priority};
use crate::protocol::Endpoints;
use crate::transport::{self, ReplyServer, TransportError};

/// How often the control plane announces itself (FastWorker's interval).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// A control plane's settings (the `control-plane` command's flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub worker_id: String,
    pub base_address: String,
    pub discovery_address: String,
    pub subworker_port: Option<u16>,
    pub result_cache_size: NonZeroUsize,
    /// The bytes finished results may take (as encoded), besides their count.
    pub result_cache_bytes: usize,
    pub result_cache_ttl: Duration,
    /// Tasks run at once by the control plane itself.
    pub concurrency: usize,
    /// Whether the control plane runs tasks itself when no subworker can
    /// take them (`--no-local-tasks` turns it into a pure coordinator).
    pub local_tasks: bool,
    /// Tasks that may wait (queued, scheduled or retrying) before submits are refused.
    pub max_queue: usize,
    /// How long running tasks may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// What the sockets allow their peers: message size, requests under
    /// way, connections, memory (see [`transport::Limits`]).
    pub limits: transport::Limits,
    /// The tokens requests and subworkers must present (none by default).
    pub access: crate::auth::Access,
    /// Listen beyond loopback with no token (refused otherwise).
    pub insecure: bool,
    /// Where completion callbacks may be sent (TCP on loopback by default).
    pub callbacks: CallbackPolicy,
    /// Where the journal lives (`journal.log`); `None` keeps everything in
    /// memory only (tests, and `--no-journal` for benchmarks).
    pub data_dir: Option<std::path::PathBuf>,
    /// Events a listener may fall behind before it loses some (see
    /// [`events::Events::new`]).
    pub events_buffer: usize,
    /// Give subworkers the tasks they define differently from this control
    /// plane (`--allow-definition-mismatch`); by default they are not.
    pub allow_definition_mismatch: bool,
    /// Where finished tasks' records go (telemetry), if anywhere.
    pub records: Option<events::RecordSink>,
    /// How to load the manifest again, for reloads (none: no reload).
    pub load: Option<reload::Load>,
}

impl Config {
    /// The defaults of the `control-plane` command.
    pub fn new(base_address: &str, discovery_address: &str) -> Config {
        Config {
            worker_id: "control-plane".to_owned(),
            base_address: base_address.to_owned(),
            discovery_address: discovery_address.to_owned(),
            subworker_port: None,
            result_cache_size: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            result_cache_bytes: 256 << 20,
            result_cache_ttl: Duration::from_secs(3600),
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            local_tasks: true,
            max_queue: 100_000,
            shutdown_grace: Duration::from_secs(30),
            limits: transport::Limits {
                max_message: crate::protocol::MAX_MESSAGE,
                ..transport::Limits::default()
            },
            access: crate::auth::Access::default(),
            insecure: false,
            callbacks: CallbackPolicy::default(),
            data_dir: None,
            events_buffer: events::BUFFER,
            allow_definition_mismatch: false,
            records: None,
            load: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("bad base address: {0}")]
    Address(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(
        "{address} can be reached from other hosts, and no token is set: anyone who reaches it could submit tasks, read their results and register as a subworker. Set --auth-token-file (or --auth-token, or FASTWORKER_AUTH_TOKEN; --worker-token to guard only the subworkers' socket), or pass --insecure to start anyway"
    )]
    Insecure { address: String },
    #[error("{0}")]
    Limits(String),
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    pub endpoints: Endpoints,
    pub core: CoreHandle,
    /// Journal records that could not be decoded at start, set aside (see
    /// [`crate::journal::recover`]).
    pub quarantined: Vec<std::path::PathBuf>,
    /// The limits on its sockets' peers, and what they turned away.
    pub guard: Arc<transport::Guard>,
    /// What the socket handlers share (the tokens, and the requests they
    /// turned away, among it).
    pub sockets: Arc<handlers::Context>,
    /// What happens in it, as it happens (see [`events`]).
    pub events: events::Events,
    /// Where it announces itself.
    pub discovery_address: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The journal's figures (none without a journal).
    pub journal: Option<crate::journal::Meter>,
    /// The scheduled tasks (see [`crate::schedule`]).
    pub schedules: crate::schedule::scheduler::Schedules,
    /// Reloads its manifest (none: started without a way to load it).
    pub reloader: Option<Arc<reload::Reloader>>,
    tasks: JoinSet<()>,
}

impl ControlPlane {
    /// Waits until the control plane has shut down (after `shutdown` fired).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Opens the journal (when `data_dir` is set) and replays it, binds every
/// socket, and starts serving. Returns once all sockets listen.
pub async fn start(
    config: Config,
    manifest: Arc<Manifest>,
    shutdown: CancellationToken,
) -> Result<ControlPlane, ControlPlaneError> {
    let endpoints = Endpoints::from_base(&config.base_address, config.subworker_port)
        .map_err(ControlPlaneError::Address)?;
    if config.limits.inflight_bytes < config.limits.max_message {
        return Err(ControlPlaneError::Limits(format!(
            "--max-inflight-bytes ({}) is below --max-message-size ({}): a message that could never fit would always be answered busy",
            config.limits.inflight_bytes, config.limits.max_message
        )));
    }
    if let Some(address) = beyond_loopback(&endpoints) {
        if config.access.is_open() {
            if !config.insecure {
                return Err(ControlPlaneError::Insecure { address });
            }
            tracing::warn!(%address, "INSECURE: listening beyond loopback with no token (--insecure): anyone who reaches this address can submit tasks, read results and register as a subworker");
        } else if config.access.client.is_none() {
            tracing::warn!(%address, "listening beyond loopback: subworkers need the worker token, but submits and queries need none (set --auth-token to guard them too)");
        }
    }
    // The journal first: a second control plane on the same data dir is told
    // so, whatever its ports.
    let (journal, replay) = match &config.data_dir {
        Some(dir) => {
            let (journal, replay) = crate::journal::Journal::open(dir)?;
            (Some(journal), replay)
        }
        None => (None, crate::journal::Replay::default()),
    };

    let guard = transport::Guard::new(config.limits.clone());
    let mut submit_servers = Vec::new();
    for priority in Priority::ALL {
        submit_servers.push(ReplyServer::listen(endpoints.submit(priority), &guard)?);
    }
    let query_server = ReplyServer::listen(&endpoints.query, &guard)?;
    if endpoints.subworker.is_empty() {
        return Err(ControlPlaneError::Address(format!(
            "{}: no port for subworkers at base + 5; pass --subworker-port",
            config.base_address
        )));
    }
    let manage_server = ReplyServer::listen(&endpoints.subworker, &guard)?;
    // Servers stop after the core has drained, so that blocking submits get
    // their answers.
    let servers_stop = CancellationToken::new();
    let announcer = transport::announce(
        &config.discovery_address,
        transport::announcement(&config.worker_id, &config.base_address),
        ANNOUNCE_EVERY,
        servers_stop.clone(),
    )
    .await?;

    // Tasks carry the data dir in their environment: after a kill -9, the
    // next start on that dir finds the ones still running and kills them
    // before it runs those tasks again.
    let (executor, strays) = match &config.data_dir {
        Some(dir) => {
            let owner = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            let owner = owner.to_string_lossy();
            let strays = crate::executor::kill_strays(&owner);
            if strays.groups > 0 {
                tracing::warn!(killed = strays.groups, data_dir = %owner, "killed the process groups of tasks left running by an earlier control plane on this data dir");
            }
            (Executor::owned_by(&owner), strays)
        }
        None => (Executor::new(), crate::executor::Strays::default()),
    };
    let executor = Arc::new(executor);
    let meter = journal.as_ref().map(crate::journal::Journal::meter);
    let (tx, rx) = mpsc::channel(4096);
    let events = events::Events::new(config.events_buffer);
    let mut core = self::core::Core::new(
        Arc::clone(&manifest),
        Arc::clone(&executor),
        self::core::Settings {
            concurrency: config.concurrency.max(1),
            local_tasks: config.local_tasks,
            worker_id: config.worker_id.clone(),
            max_queue: config.max_queue,
            shutdown_grace: config.shutdown_grace,
            callbacks: config.callbacks.clone(),
            allow_definition_mismatch: config.allow_definition_mismatch,
            records: config.records.clone(),
        },
        ResultCache::new(
            config.result_cache_size,
            config.result_cache_bytes,
            config.result_cache_ttl,
        ),
        tx.clone(),
        journal,
        events.clone(),
    );
    let quarantined = replay.quarantined.clone();
    core.restore(replay, &strays.task_ids);
    let handle = CoreHandle::new(tx);
    let mut tasks = JoinSet::new();

    let core_stop = shutdown.clone();
    let stop_servers = servers_stop.clone();
    tasks.spawn(async move {
        core.run(rx, core_stop).await;
        stop_servers.cancel();
        executor.shutdown().await;
        tracing::info!("control plane stopped");
    });
    tasks.spawn(announcer);
    tasks.spawn(Arc::clone(&guard).sweep(servers_stop.clone()));
    // Scheduled tasks fire through the core, until the shutdown; a reload
    // sends the new manifest's schedules.
    let (schedule_updates, updates) = mpsc::channel(4);
    let scheduler = crate::schedule::scheduler::Scheduler::new(
        reload::schedules_of(&manifest),
        handle.clone(),
        config.data_dir.as_ref().map(|d| d.join("schedules.json")),
        Box::new(chrono::Utc::now),
    );
    let schedules = scheduler.schedules();
    tasks.spawn(scheduler.run(updates, shutdown.clone()));
    let cell = reload::ManifestCell::new(Arc::clone(&manifest));
    let reloader = config.load.clone().map(|load| {
        Arc::new(reload::Reloader::new(
            load,
            handle.clone(),
            cell.clone(),
            schedule_updates,
        ))
    });
    let cx = Arc::new(handlers::Context {
        core: handle.clone(),
        gate: handlers::Gate::new(config.access.clone()),
        callbacks: config.callbacks.clone(),
        manifest: cell,
        reloader: reloader.clone(),
        info: crate::protocol::Info {
            worker_id: config.worker_id.clone(),
            base_address: config.base_address.clone(),
            subworker_address: endpoints.subworker.clone(),
        },
        schedules: schedules.clone(),
    });
    for server in submit_servers {
        serve(&mut tasks, server, &cx, &servers_stop, handlers::submit);
    }
    serve(
        &mut tasks,
        query_server,
        &cx,
        &servers_stop,
        handlers::query,
    );
    serve(
        &mut tasks,
        manage_server,
        &cx,
        &servers_stop,
        handlers::manage,
    );
    tracing::info!(
        worker_id = %config.worker_id,
        submit = %format!("{} … {}", endpoints.submit(Priority::Critical), endpoints.submit(Priority::Low)),
        query = %endpoints.query,
        subworkers = %endpoints.subworker,
        discovery = %config.discovery_address,
        concurrency = config.concurrency,
        tasks = manifest.tasks.len(),
        "control plane ready"
    );
    Ok(ControlPlane {
        endpoints,
        core: handle,
        quarantined,
        guard,
        sockets: cx,
        events,
        discovery_address: config.discovery_address.clone(),
        started_at: chrono::Utc::now(),
        journal: meter,
        schedules,
        reloader,
        tasks,
    })
}

/// Serves `server` with `handler` until `stop`, in `tasks`.
fn serve<H, F>(
    tasks: &mut JoinSet<()>,
    server: ReplyServer,
    cx: &Arc<handlers::Context>,
    stop: &CancellationToken,
    handler: H,
) where
    H: Fn(Arc<handlers::Context>, transport::Request) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    let (cx, stop) = (Arc::clone(cx), stop.clone());
    tasks.spawn(async move {
        let busy = handlers::busy_reply();
        server
            .serve(move |request| handler(Arc::clone(&cx), request), busy, stop)
            .await;
    });
}

/// The first of `endpoints` that other hosts can reach, if any: a TCP
/// address whose host is not a loopback address (a wildcard, another
/// interface, or a name that resolves beyond loopback). `ipc://` and
/// `inproc://` stay on this machine.
fn beyond_loopback(endpoints: &Endpoints) -> Option<String> {
    let all = Priority::ALL
        .iter()
        .map(|p| endpoints.submit(*p))
        .chain([endpoints.query.as_str(), endpoints.subworker.as_str()]);
    all.filter(|url| !url.is_empty())
        .find(|url| !listens_on_loopback(url))
        .map(str::to_owned)
}

fn listens_on_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("tcp://") else {
        return true;
    };
    let host = rest.rsplit_once(':').map_or(rest, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host == "*" {
        return false;
    }
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host, 0))
            .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
            .unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_told_from_the_rest() {
        for url in [
            "tcp://127.0.0.1:5555",
            "tcp://[::1]:5555",
            "tcp://localhost:5555",
            "ipc:///tmp/x",
            "inproc://x",
        ] {
            assert!(listens_on_loopback(url), "{url}");
        }
        for url in [
            "tcp://0.0.0.0:5555",
            "tcp://*:5555",
            "tcp://:5555",
            "tcp://[::]:5555",
            "tcp://10.1.2.3:5555",
        ] {
            assert!(!listens_on_loopback(url), "{url}");
        }
    }
}
