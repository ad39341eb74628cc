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
mod handlers;
mod queue;
mod results;
mod workers;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::core::Stats;
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
    /// Where the journal lives (`journal.log`); `None` keeps everything in
    /// memory only (tests, and `--no-journal` for benchmarks).
    pub data_dir: Option<std::path::PathBuf>,
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
            data_dir: None,
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
    let executor = match &config.data_dir {
        Some(dir) => {
            let owner = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            let owner = owner.to_string_lossy();
            let killed = crate::executor::kill_strays(&owner);
            if killed > 0 {
                tracing::warn!(killed, data_dir = %owner, "killed the process groups of tasks left running by an earlier control plane on this data dir");
            }
            Executor::owned_by(&owner)
        }
        None => Executor::new(),
    };
    let executor = Arc::new(executor);
    let (tx, rx) = mpsc::channel(4096);
    let mut core = self::core::Core::new(
        Arc::clone(&manifest),
        Arc::clone(&executor),
        self::core::Settings {
            concurrency: config.concurrency.max(1),
            local_tasks: config.local_tasks,
            worker_id: config.worker_id.clone(),
            max_queue: config.max_queue,
            shutdown_grace: config.shutdown_grace,
        },
        ResultCache::new(
            config.result_cache_size,
            config.result_cache_bytes,
            config.result_cache_ttl,
        ),
        tx.clone(),
        journal,
    );
    let quarantined = replay.quarantined.clone();
    core.restore(replay);
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
    let busy = handlers::busy_reply();
    for server in submit_servers {
        let (core, stop, busy) = (handle.clone(), servers_stop.clone(), busy.clone());
        tasks.spawn(async move {
            let core = &core;
            server
                .serve(move |request| handlers::submit(core, request), busy, stop)
                .await;
        });
    }
    {
        let (core, stop, busy) = (handle.clone(), servers_stop.clone(), busy.clone());
        let about = handlers::About {
            manifest: Arc::clone(&manifest),
            info: crate::protocol::Info {
                worker_id: config.worker_id.clone(),
                base_address: config.base_address.clone(),
                subworker_address: endpoints.subworker.clone(),
            },
        };
        tasks.spawn(async move {
            let (core, about) = (&core, &about);
            query_server
                .serve(
                    move |request| handlers::query(core, about, request),
                    busy,
                    stop,
                )
                .await;
        });
    }
    {
        let (core, stop) = (handle.clone(), servers_stop.clone());
        tasks.spawn(async move {
            let core = &core;
            manage_server
                .serve(move |request| handlers::manage(core, request), busy, stop)
                .await;
        });
    }
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
        tasks,
    })
}
