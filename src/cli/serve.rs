//! `fastworker control-plane`.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use clap::builder::BoolishValueParser;
use tokio_util::sync::CancellationToken;

use super::args::TokenArgs;
use super::args::{parse_bytes, parse_duration};
use super::error::{CliError, CliResult, EXIT_FAILED, EXIT_UNUSABLE};
use crate::control_plane::{self, Config};

#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// This control plane's name, as announced for discovery (no ':')
    #[arg(long, env = "FASTWORKER_WORKER_ID", default_value = "control-plane", value_parser = worker_id)]
    pub worker_id: String,
    /// Base address: submits on ports +0..+3 (critical, high, normal, low), queries on +4
    #[arg(
        long,
        env = "FASTWORKER_BASE_ADDRESS",
        default_value = crate::protocol::DEFAULT_BASE_ADDRESS
    )]
    pub base_address: String,
    /// Where to announce this control plane (NNG bus, every 2 s)
    #[arg(
        long,
        env = "FASTWORKER_DISCOVERY_ADDRESS",
        default_value = crate::protocol::DEFAULT_DISCOVERY_ADDRESS
    )]
    pub discovery_address: String,
    /// The port subworkers register and poll on (they learn it from the query
    /// port) [default: base port + 5, i.e. 5560]
    #[arg(long, env = "FASTWORKER_SUBWORKER_PORT")]
    pub subworker_port: Option<u16>,
    /// Finished results kept (least recently used dropped first)
    #[arg(long, env = "FASTWORKER_RESULT_CACHE_SIZE", default_value_t = NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN))]
    pub result_cache_size: NonZeroUsize,
    /// The memory finished results may take (as encoded JSON), besides their
    /// count; the least recently used go first
    #[arg(long, env = "FASTWORKER_RESULT_CACHE_BYTES", default_value = "256MiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub result_cache_bytes: usize,
    /// How long finished results are kept, in seconds
    #[arg(long, env = "FASTWORKER_RESULT_CACHE_TTL", default_value_t = 3600)]
    pub result_cache_ttl: u64,
    /// Tasks run at once [default: number of cores]
    #[arg(long, env = "FASTWORKER_WORKER_CONCURRENCY")]
    pub concurrency: Option<NonZeroUsize>,
    /// Tasks that may wait (queued, scheduled, retrying) before submits are refused
    #[arg(long, env = "FASTWORKER_MAX_QUEUE", default_value_t = NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN))]
    pub max_queue: NonZeroUsize,
    /// After SIGINT/SIGTERM, how long running tasks may take before they are cancelled
    #[arg(long, env = "FASTWORKER_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Where the journal is kept: every accepted task is recorded there before
    /// it is acknowledged, and replayed after a restart
    #[arg(long, env = "FASTWORKER_DATA_DIR", default_value = ".fastworker")]
    pub data_dir: std::path::PathBuf,
    /// Keep tasks in memory only (for benchmarks: a crash loses them)
    #[arg(long)]
    pub no_journal: bool,
    /// Give subworkers the tasks they define differently from this control
    /// plane's manifest (by default such a task is not given to them)
    #[arg(long)]
    pub allow_definition_mismatch: bool,
    /// Reload the manifest when its file (or a task module's) changes; SIGHUP
    /// and `fastworker reload` always reload it
    #[arg(long, env = "FASTWORKER_WATCH", value_parser = BoolishValueParser::new())]
    pub watch: bool,
    /// Export each task's trace and the metrics over OpenTelemetry (OTLP,
    /// HTTP/protobuf, plain http://). Read: OTEL_EXPORTER_OTLP_ENDPOINT (and
    /// _TRACES_/_METRICS_ENDPOINT), OTEL_EXPORTER_OTLP_HEADERS,
    /// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_EXPORTER and
    /// OTEL_METRICS_EXPORTER (otlp or none), OTEL_METRIC_EXPORT_INTERVAL
    #[arg(long, env = "FASTWORKER_TELEMETRY_ENABLED", value_parser = BoolishValueParser::new())]
    pub telemetry: bool,
    /// Where to export (a base URL: /v1/traces and /v1/metrics are added)
    /// [default: OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318]
    #[arg(long, value_name = "URL", requires = "telemetry")]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub gui: GuiArgs,
    /// Run no tasks here: only hand them to subworkers (a pure coordinator)
    #[arg(long, env = "FASTWORKER_NO_LOCAL_TASKS", value_parser = BoolishValueParser::new())]
    pub no_local_tasks: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub worker_token: WorkerTokenArgs,
    /// Listen beyond loopback without any token (refused otherwise: anyone
    /// who reaches the ports could submit tasks and register subworkers)
    #[arg(long)]
    pub insecure: bool,
    /// Where completion callbacks may be sent: an address pattern (`*` for
    /// any run of characters), repeatable, or `none` [default:
    /// tcp://127.0.0.1:*, tcp://localhost:*, tcp://[::1]:*]
    #[arg(
        long = "callback-allow",
        env = "FASTWORKER_CALLBACK_ALLOW",
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    pub callback_allow: Vec<String>,
}

/// The token subworkers present to register and report (else the
/// `--auth-token`); see docs/security.md.
#[derive(Debug, Args)]
pub struct WorkerTokenArgs {
    /// The subworkers' token
    #[arg(
        long,
        env = "FASTWORKER_WORKER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub worker_token: Option<String>,
    /// Read the subworkers' token from this file (its first line)
    #[arg(
        long,
        env = "FASTWORKER_WORKER_TOKEN_FILE",
        conflicts_with = "worker_token",
        value_name = "PATH"
    )]
    pub worker_token_file: Option<std::path::PathBuf>,
}

impl WorkerTokenArgs {
    fn token(&self) -> Result<Option<crate::auth::Token>, String> {
        super::args::token_from(
            self.worker_token.as_deref(),
            self.worker_token_file.as_deref(),
        )
        .map_err(|e| format!("--worker-token: {e}"))
    }
}

/// What the control plane's sockets allow their peers (docs/operations.md,
/// "Limits").
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// The largest message read: NNG closes a connection that announces a
    /// larger one before reading it
    #[arg(long, env = "FASTWORKER_MAX_MESSAGE_SIZE", default_value = "64MiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub max_message_size: usize,
    /// Requests one socket works on at once (a blocking submit holds one
    /// until its task ends); more are answered "busy"
    #[arg(long, env = "FASTWORKER_MAX_PENDING", default_value_t = NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN), value_name = "N")]
    pub max_pending: NonZeroUsize,
    /// Connections open at once, over all sockets (lowered to fit the
    /// open-file limit, keeping descriptors for tasks)
    #[arg(long, env = "FASTWORKER_MAX_CONNECTIONS", default_value_t = NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN), value_name = "N")]
    pub max_connections: NonZeroUsize,
    /// Connections open at once from one IP address
    #[arg(long, env = "FASTWORKER_MAX_CONNECTIONS_PER_PEER", default_value_t = NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN), value_name = "N")]
    pub max_connections_per_peer: NonZeroUsize,
    /// Close a connection that has sent no request for this long (NNG
    /// clients connect again by themselves)
    #[arg(long, env = "FASTWORKER_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// Bytes of large messages (over 64 KiB) read at once; more are
    /// answered "busy"
    #[arg(long, env = "FASTWORKER_MAX_INFLIGHT_BYTES", default_value = "256MiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub max_inflight_bytes: usize,
}

impl LimitArgs {
    /// The limits, with the connection cap fitted under the process's
    /// open-file limit (raised to its hard limit first): each connection
    /// is a descriptor, and running tasks need theirs.
    fn limits(&self, concurrency: usize) -> crate::transport::Limits {
        let mut max_connections = self.max_connections.get();
        if let Some(files) = raise_open_file_limit() {
            // Pipes for each running task and warm process, the journal,
            // sockets' own descriptors, and some room.
            let reserve = 256 + 16 * concurrency as u64;
            let fits = usize::try_from(files.saturating_sub(reserve))
                .unwrap_or(usize::MAX)
                .max(16);
            if fits < max_connections {
                tracing::warn!(
                    max_connections = fits,
                    asked = max_connections,
                    open_files = files,
                    "--max-connections lowered to fit the open-file limit (ulimit -n), keeping {reserve} descriptors for tasks"
                );
                max_connections = fits;
            }
        }
        crate::transport::Limits {
            max_message: self.max_message_size,
            max_pending: self.max_pending.get(),
            max_connections,
            max_per_peer: self.max_connections_per_peer.get(),
            idle_timeout: self.idle_timeout,
            inflight_bytes: self.max_inflight_bytes,
        }
    }
}

/// Raises the soft limit on open files to the hard limit; returns the
/// limit now in force.
fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[derive(Debug, Args)]
pub struct SubworkerArgs {
    /// This subworker's name, unique among a control plane's subworkers (no ':')
    #[arg(long, env = "FASTWORKER_WORKER_ID", value_parser = worker_id)]
    pub worker_id: String,
    /// The control plane's base address [default: found through --discovery-address]
    #[arg(long, env = "FASTWORKER_CONTROL_PLANE_ADDRESS")]
    pub control_plane_address: Option<String>,
    /// Where control planes announce themselves (used without --control-plane-address)
    #[arg(
        long,
        env = "FASTWORKER_DISCOVERY_ADDRESS",
        default_value = crate::protocol::DEFAULT_DISCOVERY_ADDRESS
    )]
    pub discovery_address: String,
    /// Accepted for FastWorker compatibility: a subworker only dials out (to
    /// the subworker port its control plane's query port names), so nothing
    /// listens here; it is shown as this worker's address [default: host
    /// name and pid]
    #[arg(long, env = "FASTWORKER_BASE_ADDRESS")]
    pub base_address: Option<String>,
    /// Tasks run at once [default: number of cores]
    #[arg(long, env = "FASTWORKER_WORKER_CONCURRENCY")]
    pub concurrency: Option<NonZeroUsize>,
    /// After SIGINT/SIGTERM, how long running tasks may take before they are handed back
    #[arg(long, env = "FASTWORKER_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Reload the manifest when its file (or a task module's) changes;
    /// SIGHUP always reloads it
    #[arg(long, env = "FASTWORKER_WATCH", value_parser = BoolishValueParser::new())]
    pub watch: bool,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub worker_token: WorkerTokenArgs,
}

pub async fn subworker(sources: &super::Sources, args: SubworkerArgs) -> CliResult {
    let manifest = sources
        .load()
        .map(Arc::new)
        .map_err(|e| CliError::manifest(&e, EXIT_UNUSABLE))?;
    let address = args.base_address.clone().unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        format!("{host} (pid {})", std::process::id())
    });
    let config = crate::subworker::Config {
        worker_id: args.worker_id.clone(),
        control_plane: args.control_plane_address.clone(),
        discovery_address: args.discovery_address.clone(),
        address,
        concurrency: args.concurrency.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            NonZeroUsize::get,
        ),
        shutdown_grace: args.shutdown_grace,
        auth: args.token.token().map_err(CliError::Unusable)?,
        worker_token: args.worker_token.token().map_err(CliError::Unusable)?,
    };
    let _xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
        nix::libc::SIGXFSZ,
    ));
    let (shutdown, force) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(signals("subworker", shutdown.clone(), {
        let force = force.clone();
        async move { force.cancel() }
    }));
    let tasks = manifest.tasks.len();
    let from = sources.describe(&manifest);
    let concurrency = config.concurrency;
    let first = std::sync::atomic::AtomicBool::new(true);
    // SIGHUP (and --watch) reload the manifest; a bad one changes nothing.
    let reloads = super::reload::subworker(sources, &manifest, args.watch);
    let ended = crate::subworker::run(config, Arc::clone(&manifest), reloads, shutdown, force, |manage, reply| {
        let again = !first.swap(false, std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "fastworker subworker '{}' {}: registered on {manage}; {tasks} tasks from {from}, concurrency {concurrency}",
            args.worker_id,
            if again { "registered again" } else { "ready" },
        );
        for warning in &reply.warnings {
            eprintln!("warning: {warning}");
        }
    })
    .await;
    match ended {
        Ok(crate::subworker::Ended::Clean) => {
            eprintln!("fastworker subworker '{}' stopped", args.worker_id);
            Ok(())
        }
        Ok(crate::subworker::Ended::Unreported(n)) => {
            eprintln!(
                "fastworker subworker '{}' stopped; {n} tasks could not be reported (the control plane runs them again)",
                args.worker_id
            );
            Err(CliError::Exit(EXIT_FAILED))
        }
        Err(crate::subworker::SubworkerError::Stopped) => {
            eprintln!(
                "fastworker subworker '{}' stopped before it found a control plane",
                args.worker_id
            );
            Ok(())
        }
        Err(e) => Err(CliError::Unusable(e.to_string())),
    }
}

/// The web GUI's flags (see docs/gui.md).
#[derive(Debug, Clone, Args)]
pub struct GuiArgs {
    /// Web GUI host (a host beyond loopback needs --gui-token)
    #[arg(long, env = "FASTWORKER_GUI_HOST", default_value = "127.0.0.1")]
    pub gui_host: String,
    /// Web GUI port (0: any free port, printed in the ready line)
    #[arg(long, env = "FASTWORKER_GUI_PORT", default_value_t = 8080)]
    pub gui_port: u16,
    /// Do not serve the web GUI
    #[arg(long, env = "FASTWORKER_NO_GUI", value_parser = BoolishValueParser::new())]
    pub no_gui: bool,
    /// Serve the web GUI: true/false, 1/0, yes/no, on/off (FastWorker's switch; --no-gui wins)
    #[arg(long, env = "FASTWORKER_GUI_ENABLED", value_parser = switch, value_name = "BOOL")]
    pub gui_enabled: Option<bool>,
    /// A token every GUI route requires (reads, events and /metrics included;
    /// FastWorker's FASTWORKER_GUI_API_KEY is read too)
    #[arg(
        long,
        env = "FASTWORKER_GUI_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub gui_token: Option<String>,
    /// Read the GUI's token from this file (its first line)
    #[arg(
        long,
        env = "FASTWORKER_GUI_TOKEN_FILE",
        conflicts_with = "gui_token",
        value_name = "PATH"
    )]
    pub gui_token_file: Option<std::path::PathBuf>,
    /// Serve the GUI beyond loopback with no token (anyone who reaches it can act on every task)
    #[arg(long)]
    pub gui_insecure: bool,
    /// /metrics needs no token (for a scraper on a private network)
    #[arg(long)]
    pub gui_metrics_public: bool,
    /// Hide and refuse every action in the GUI (submit, cancel, retry, delete)
    #[arg(long, env = "FASTWORKER_GUI_READ_ONLY", value_parser = BoolishValueParser::new())]
    pub gui_read_only: bool,
    /// Keyword arguments the GUI shows as "***" (names, comma-separated or repeated)
    #[arg(
        long,
        env = "FASTWORKER_GUI_REDACT",
        value_delimiter = ',',
        value_name = "KEY"
    )]
    pub gui_redact: Vec<String>,
    /// Another Host the GUI answers to (a reverse proxy's name); repeatable
    #[arg(long, value_name = "HOST")]
    pub gui_allowed_host: Vec<String>,
    /// Send CORS headers for this origin (none are sent otherwise; also
    /// FASTWORKER_GUI_CORS_ORIGIN, FastWorker's variable, where `*` is ignored)
    #[arg(long, value_name = "ORIGIN")]
    pub gui_cors_origin: Option<String>,
    /// The largest request body the GUI takes
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub gui_max_body: usize,
}

impl GuiArgs {
    /// The GUI's settings, or none when it is off.
    fn config(&self, data_dir: Option<&Path>) -> Result<Option<crate::gui::GuiConfig>, String> {
        if self.no_gui || self.gui_enabled == Some(false) {
            return Ok(None);
        }
        // FastWorker's FASTWORKER_GUI_API_KEY guarded its write endpoints:
        // here it is the GUI's token (every route).
        let api_key = std::env::var("FASTWORKER_GUI_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty());
        let given = self.gui_token.clone().or(match &self.gui_token_file {
            Some(_) => None,
            None => api_key,
        });
        let token = super::args::token_from(given.as_deref(), self.gui_token_file.as_deref())
            .map_err(|e| format!("--gui-token: {e}"))?;
        // FastWorker's FASTWORKER_GUI_CORS_ORIGIN defaulted to `*`: any site
        // could read the API. One origin is taken; `*` is not.
        let cors_origin = match (
            &self.gui_cors_origin,
            std::env::var("FASTWORKER_GUI_CORS_ORIGIN"),
        ) {
            (Some(origin), _) => Some(origin.clone()),
            (None, Ok(origin)) if origin.trim() == "*" => {
                tracing::warn!(
                    "FASTWORKER_GUI_CORS_ORIGIN=* is ignored: it would let any web site read the GUI's API; name one origin (--gui-cors-origin https://ops.example.com)"
                );
                None
            }
            (None, Ok(origin)) if !origin.trim().is_empty() => Some(origin.trim().to_owned()),
            (None, _) => None,
        };
        Ok(Some(crate::gui::GuiConfig {
            host: self.gui_host.clone(),
            port: self.gui_port,
            token,
            insecure: self.gui_insecure,
            metrics_public: self.gui_metrics_public,
            read_only: self.gui_read_only,
            redact: self.gui_redact.clone(),
            allowed_hosts: self.gui_allowed_host.clone(),
            cors_origin,
            max_body: self.gui_max_body,
            history: data_dir.map(|d| d.join("gui-history.json")),
            ..crate::gui::GuiConfig::new()
        }))
    }
}

/// A yes/no switch as FastWorker's environment variables take it.
fn switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!(
            "'{other}' is not a switch: true/false, 1/0, yes/no, on/off"
        )),
    }
}

pub async fn control_plane(sources: &super::Sources, args: ControlPlaneArgs) -> CliResult {
    let manifest = sources
        .load()
        .map(Arc::new)
        .map_err(|e| CliError::manifest(&e, EXIT_UNUSABLE))?;
    let mut config = Config::new(&args.base_address, &args.discovery_address);
    config.worker_id = args.worker_id;
    config.subworker_port = args.subworker_port;
    config.result_cache_size = args.result_cache_size;
    config.result_cache_bytes = args.result_cache_bytes;
    config.result_cache_ttl = Duration::from_secs(args.result_cache_ttl);
    if let Some(n) = args.concurrency {
        config.concurrency = n.get();
    }
    config.max_queue = args.max_queue.get();
    config.shutdown_grace = args.shutdown_grace;
    config.data_dir = (!args.no_journal).then(|| args.data_dir.clone());
    config.local_tasks = !args.no_local_tasks;
    config.allow_definition_mismatch = args.allow_definition_mismatch;
    config.limits = args.limits.limits(config.concurrency);
    config.insecure = args.insecure;
    if !args.callback_allow.is_empty() {
        let allow = args
            .callback_allow
            .iter()
            .filter(|p| !p.trim().is_empty() && p.as_str() != "none")
            .map(|p| p.trim().to_owned())
            .collect();
        config.callbacks = control_plane::CallbackPolicy::new(allow);
    }
    config.access = crate::auth::Access {
        client: args.token.token().map_err(CliError::Unusable)?,
        worker: args.worker_token.token().map_err(CliError::Unusable)?,
    };
    let gui_config = args
        .gui
        .config(config.data_dir.as_deref())
        .map_err(CliError::Unusable)?;

    // Past a file-size limit (`ulimit -f`), a journal write must fail with
    // EFBIG and be reported, not kill the process with SIGXFSZ. A handler
    // (unlike SIG_IGN) is not inherited by the tasks it runs.
    let _xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
        nix::libc::SIGXFSZ,
    ));
    let shutdown = CancellationToken::new();
    config.load = Some(super::reload::loader(sources));
    let records = args.telemetry.then(crate::telemetry::records);
    config.records = records.as_ref().map(|(sink, _)| sink.clone());
    let running = control_plane::start(config.clone(), Arc::clone(&manifest), shutdown.clone())
        .await
        .map_err(|e| CliError::Unusable(format!("cannot start the control plane: {e}")))?;
    let telemetry = match records {
        Some((sink, rx)) => {
            let cfg = crate::telemetry::TelemetryConfig {
                endpoint: args.otlp_endpoint.clone(),
                metrics_every: None,
            };
            match crate::telemetry::start(&cfg, &running, rx, sink) {
                Ok(t) => Some(t),
                Err(e) => {
                    shutdown.cancel();
                    running.wait().await;
                    return Err(CliError::Unusable(format!(
                        "cannot start the control plane: {e}"
                    )));
                }
            }
        }
        None => None,
    };
    let gui = match gui_config {
        Some(gui_config) => match crate::gui::start(gui_config, &running).await {
            Ok(gui) => Some(gui),
            Err(e) => {
                // Nothing was accepted yet: stop what started, and say why.
                shutdown.cancel();
                running.wait().await;
                return Err(CliError::Unusable(format!(
                    "cannot start the control plane: {e}"
                )));
            }
        },
        None => None,
    };
    let gui_line = match &gui {
        Some(gui) => format!("GUI on {}", gui.url),
        None => "no GUI (--no-gui)".to_owned(),
    };
    let journal = match &config.data_dir {
        Some(dir) if !running.quarantined.is_empty() => format!(
            "journal in {}, {} undecodable record{} quarantined in {} (see the log above)",
            dir.join(crate::journal::FILE).display(),
            running.quarantined.len(),
            if running.quarantined.len() == 1 {
                ""
            } else {
                "s"
            },
            dir.join(crate::journal::recover::QUARANTINE_DIR).display(),
        ),
        Some(dir) => format!("journal in {}", dir.join(crate::journal::FILE).display()),
        None => "no journal (--no-journal: a crash loses every task)".to_owned(),
    };
    // Reloads are taken (SIGHUP included) before it says it is ready.
    if let Some(reloader) = running.reloader.clone() {
        let cell = running.sockets.manifest.clone();
        super::reload::control_plane(reloader, cell, &manifest, args.watch);
    }
    eprintln!(
        "fastworker control plane '{}' ready: submits on {} … {}, queries on {}, announced on {}; {} tasks from {}, concurrency {}; {journal}; {gui_line}",
        config.worker_id,
        running
            .endpoints
            .submit(crate::manifest::Priority::Critical),
        running.endpoints.submit(crate::manifest::Priority::Low),
        running.endpoints.query,
        config.discovery_address,
        manifest.tasks.len(),
        sources.describe(&manifest),
        config.concurrency,
    );
    let core = running.core.clone();
    tokio::spawn(signals("control plane", shutdown, async move {
        core.force_stop().await;
    }));
    running.wait().await;
    if let Some(gui) = gui {
        gui.stop().await;
    }
    if let Some(telemetry) = telemetry {
        telemetry.stop().await;
    }
    eprintln!("fastworker control plane stopped");
    Ok(())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one runs
/// `force` (cancel the running tasks, without waiting for the grace period).
async fn signals(who: &str, shutdown: CancellationToken, force: impl Future<Output = ()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!(
        "fastworker {who}: {name}: no new tasks; finishing running ones (send it again to stop them now)"
    );
    shutdown.cancel();
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("fastworker {who}: {name} again: stopping running tasks");
    force.await;
}

/// A worker id: announced as `WORKER_ANNOUNCE:<id>:<address>`, so no ':'.
fn worker_id(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(':') {
        Err("a worker id must be non-empty and contain no ':' (it is announced as WORKER_ANNOUNCE:<id>:<address>)".to_owned())
    } else {
        Ok(text.to_owned())
    }
}
