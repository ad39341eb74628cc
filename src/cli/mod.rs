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
mod journal;
mod local;
mod output;
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

    /// Log level or filter (error, warn, info, debug, trace, or a RUST_LOG
    /// filter); overrides RUST_LOG [default: warn]
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
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
            | Command::Journal(_)
    ) {
        quiet_on_broken_pipe();
    }
    init_tracing(cli.log_level.as_deref());
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

async fn dispatch(cli: Cli) -> CliResult {
    let manifest = cli.manifest.as_deref();
    match cli.command {
        Command::Run(args) => local::run(manifest, args).await,
        Command::ControlPlane(args) => serve::control_plane(manifest, args).await,
        Command::Subworker(args) => serve::subworker(manifest, args).await,
        Command::Workers(args) => remote::workers(&args).await,
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

fn init_tracing(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let given = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "warn".to_owned());
    let filter = EnvFilter::try_new(&given).unwrap_or_else(|e| {
        eprintln!("warning: bad log filter {given:?} ({e}); using 'warn'");
        EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
