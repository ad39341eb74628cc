//! The command line: the commands, logging setup, and the one place where
//! a command's outcome becomes an exit code ([`main`]). Commands call the
//! library, print what they have to say, and return a [`CliResult`]; their
//! errors are printed here.
//!
//! Layout (no module here imports a sibling that imports it back):
//! [`args`], [`error`] and [`output`] are leaves every command uses;
//! [`local`] (`run`, `list`, `check`), [`remote`] (`submit`, `status`,
//! `cancel`, `list --remote`, `workers`), [`batch`] (`submit --batch`),
//! [`serve`] (`control-plane`, `subworker`) and [`journal`] are the
//! commands; this file dispatches to them.

mod args;
mod batch;
mod error;
mod init;
mod journal;
mod local;
mod output;
mod reload;
mod remote;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use self::args::{ListArgs, RunArgs, SubmitArgs, TaskIdArgs, WorkersArgs};
use self::error::CliResult;

/// fastworker: a brokerless task runner. Tasks are declared in tasks.toml and
/// run as child processes, JSON in on stdin, JSON out on stdout.
#[derive(Debug, Parser)]
#[command(name = "fastworker", version, about, max_term_width = 100)]
pub struct Cli {
    /// The task manifest [default: ./tasks.toml]
    #[arg(long, global = true, env = "FASTWORKER_MANIFEST", value_name = "PATH")]
    pub manifest: Option<PathBuf>,

    /// Python modules whose @task functions are tasks too (FastWorker's
    /// flag; several after one flag, or comma-separated); with them, the
    /// manifest is optional
    #[arg(long, global = true, env = "FASTWORKER_TASK_MODULES", num_args = 1.., value_delimiter = ',', value_name = "MODULE")]
    pub task_modules: Vec<String>,

    /// Log level (error, warn, info, debug, trace, off; FastWorker's DEBUG,
    /// INFO, WARNING, ERROR, CRITICAL in any case) or a RUST_LOG filter;
    /// overrides RUST_LOG [default: warn]
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log lines as text for people, or one JSON object a line for log
    /// shippers (its fields: task_id, name, attempt, worker, …)
    #[arg(long, global = true, env = "FASTWORKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a task here and now, with no server, and print its result
    Run(RunArgs),
    /// Start a control plane: take tasks over NNG and run them
    ControlPlane(serve::ControlPlaneArgs),
    /// Start a subworker: run tasks a control plane hands out, from this manifest
    Subworker(serve::SubworkerArgs),
    /// Show a control plane's workers: itself and its subworkers
    Workers(WorkersArgs),
    /// Have a running control plane load its manifest again (as SIGHUP does):
    /// prints what changed, or every problem (then nothing changed; exit 1)
    Reload(WorkersArgs),
    /// List a running control plane's scheduled tasks: each one's rule, next
    /// fire, last run and its outcome, skipped and missed fires
    Schedules(WorkersArgs),
    /// Submit a task to a control plane and print its result
    Submit(SubmitArgs),
    /// Show a task's state and result on a control plane
    Status(TaskIdArgs),
    /// Cancel a task on a control plane (queued, scheduled, retrying or running)
    Cancel(TaskIdArgs),
    /// List the tasks the manifest defines (or, with --remote, a control plane runs)
    List(ListArgs),
    /// Validate the manifest: exit 0 if it is valid, 1 if not
    Check,
    /// Check or repair a control plane's journal (its data dir)
    Journal(journal::JournalArgs),
    /// Print the manifest's JSON Schema (for editors: a `#:schema` line in
    /// tasks.toml, or Taplo's settings)
    Schema,
    /// Start a project: a commented tasks.toml, a Python task module, a
    /// script and the schema, in DIR (default: here); never over a file
    Init(init::InitArgs),
}

/// Parses the command line, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::List(_)
            | Command::Check
            | Command::Submit(_)
            | Command::Status(_)
            | Command::Cancel(_)
            | Command::Workers(_)
            | Command::Schedules(_)
            | Command::Reload(_)
            | Command::Journal(_)
            | Command::Schema
    ) {
        quiet_on_broken_pipe();
    }
    if let Err(e) = init_tracing(cli.log_level.as_deref(), cli.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(error::EXIT_UNUSABLE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(error::EXIT_UNUSABLE);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.print();
            ExitCode::from(e.code())
        }
    }
}

/// Where a command's tasks come from: the manifest, and the task modules.
#[derive(Debug, Clone)]
pub struct Sources {
    pub manifest: Option<PathBuf>,
    pub modules: crate::manifest::TaskModules,
}

impl Sources {
    pub fn load(&self) -> Result<crate::manifest::Manifest, crate::manifest::ManifestError> {
        crate::manifest::Manifest::discover_with(self.manifest.as_deref(), &self.modules)
    }

    /// Where `manifest`'s tasks came from, for people.
    pub fn describe(&self, manifest: &crate::manifest::Manifest) -> String {
        let modules = self.modules.names.join(" ");
        match (manifest.is_modules_only(), modules.is_empty()) {
            (true, _) => format!("task modules {modules}"),
            (false, true) => manifest.path.display().to_string(),
            (false, false) => format!("{} and task modules {modules}", manifest.path.display()),
        }
    }
}

async fn dispatch(cli: Cli) -> CliResult {
    let sources = Sources {
        manifest: cli.manifest.clone(),
        modules: crate::manifest::TaskModules::new(&cli.task_modules),
    };
    let manifest = &sources;
    match cli.command {
        Command::Run(args) => local::run(manifest, args).await,
        Command::ControlPlane(args) => serve::control_plane(manifest, args).await,
        Command::Subworker(args) => serve::subworker(manifest, args).await,
        Command::Workers(args) => remote::workers(&args).await,
        Command::Schedules(args) => remote::schedules(&args).await,
        Command::Reload(args) => remote::reload(&args).await,
        Command::Submit(args) => match &args.batch {
            Some(file) => batch::submit_batch(&args, file).await,
            None => remote::submit(args).await,
        },
        Command::Status(args) => remote::status(args).await,
        Command::Cancel(args) => remote::cancel(args).await,
        Command::List(args) if args.remote => remote::list(&args).await,
        Command::List(args) => local::list(manifest, &args),
        Command::Check => local::check(manifest),
        Command::Journal(args) => journal::journal(&args),
        Command::Schema => init::schema(),
        Command::Init(args) => init::init(&args),
    }
}

/// Lets commands that only print die quietly when their output is closed
/// (`fastworker list | head -1`), as Unix tools do, instead of panicking in
/// `println!`. Not for `run` and `control-plane`: they write to child
/// processes' stdin, where EPIPE must stay an error, not a signal.
#[allow(unsafe_code)]
fn quiet_on_broken_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called at start-up, before any thread is spawned; SIG_DFL
    // installs no handler code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Sets up logging from `--log-level` (or `RUST_LOG`). FastWorker's level
/// names work in any case (`WARNING` is `warn`, `CRITICAL` is `error`); a
/// filter that cannot be parsed is an error, not silence.
fn init_tracing(level: Option<&str>, format: LogFormat) -> Result<(), String> {
    let (given, from) = match level {
        Some(l) => (l.to_owned(), "--log-level"),
        None => match std::env::var("RUST_LOG") {
            Ok(l) => (l, "RUST_LOG"),
            Err(_) => ("warn".to_owned(), "the default"),
        },
    };
    let mut filter = log_filter(&given).map_err(|e| format!("{from} {given:?}: {e}"))?;
    // The OpenTelemetry SDK's own complaints (an export that failed, per
    // batch) are summed up by `telemetry` instead, unless asked for.
    if !given.contains("opentelemetry") {
        for quiet in [
            "opentelemetry=off",
            "opentelemetry_sdk=off",
            "opentelemetry_otlp=off",
            "opentelemetry_http=off",
        ] {
            if let Ok(d) = quiet.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

/// A log filter: a level name (tracing's or FastWorker's, any case), or a
/// `RUST_LOG`-style filter.
fn log_filter(given: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let given = given.trim();
    if given.is_empty() {
        return Ok(tracing_subscriber::EnvFilter::new("warn"));
    }
    let level = match given.to_ascii_lowercase().as_str() {
        "trace" => Some("trace"),
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warn" | "warning" => Some("warn"),
        "error" | "critical" | "fatal" => Some("error"),
        "off" | "none" => Some("off"),
        _ => None,
    };
    if let Some(level) = level {
        return Ok(tracing_subscriber::EnvFilter::new(level));
    }
    // A filter names targets (`fastworker=debug,hyper=warn`); a bare word
    // that is no level is a typo, which tracing would take as a target and
    // so turn all logging off.
    let looks_like_filter = given.contains('=') || given.contains("::") || given.contains(',');
    if !looks_like_filter {
        return Err(
            "not a log level: use error, warn (or WARNING), info, debug, trace, off, or a RUST_LOG filter such as fastworker=debug"
                .to_owned(),
        );
    }
    tracing_subscriber::EnvFilter::try_new(given).map_err(|e| format!("not a log filter: {e}"))
}
