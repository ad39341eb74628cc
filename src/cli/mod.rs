//! The command line: argument definitions, logging setup, and the mapping of
//! outcomes and errors to exit codes. Commands call the library and print.
//!
//! Exit codes: 0 success; 1 the task ran and did not succeed (or `check`
//! found problems, or `status`/`cancel` found no such task); 2 it could not
//! be run or submitted (bad manifest, unknown task, bad arguments, queue
//! full, control plane unreachable or shutting down); 124 `submit` stopped
//! waiting before the task ended; 130 interrupted by Ctrl-C.

mod args;
mod batch;
mod commands;
mod journal;
mod remote;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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
    Workers(remote::WorkersArgs),
    /// Submit a task to a control plane and print its result
    Submit(remote::SubmitArgs),
    /// Show a task's state and result on a control plane
    Status(remote::TaskIdArgs),
    /// Cancel a task on a control plane (queued, scheduled, retrying or running)
    Cancel(remote::TaskIdArgs),
    /// List the tasks the manifest defines (or, with --remote, a control plane runs)
    List(ListArgs),
    /// Validate the manifest: exit 0 if it is valid, 1 if not
    Check,
    /// Check or repair a control plane's journal (its data dir)
    Journal(journal::JournalArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The task's name in the manifest
    pub task: String,
    /// Arguments: each is JSON where it is valid JSON (5, true, '{"a":1}'),
    /// otherwise a string. Put `--` before arguments that start with `-`.
    #[arg(allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// A keyword argument, key=value (value parsed like an argument); repeatable
    #[arg(long = "kwarg", value_name = "KEY=VALUE")]
    pub kwargs: Vec<String>,
    /// Print the whole result record as JSON (status, result, error, timings, attempts)
    #[arg(long)]
    pub json: bool,
    /// Override the task's timeout: 30s, 2m, 1h 30m, or a number of seconds
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the tasks as JSON
    #[arg(long)]
    pub json: bool,
    /// Ask a running control plane instead of reading the manifest
    #[arg(long)]
    pub remote: bool,
    #[command(flatten)]
    pub connect: remote::ConnectArgs,
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
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(commands::dispatch(cli));
    ExitCode::from(code)
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

/// Text from a task or a control plane, safe to print on a terminal:
/// control characters other than newline and tab are shown escaped
/// (`\u{1b}`), so that output cannot move the cursor, recolor or retitle.
pub(crate) fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A size: `64MiB`, `1.5GB`, or a number of bytes; above 0.
pub(crate) fn parse_bytes(text: &str) -> Result<usize, String> {
    let bytes = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("{e} (write e.g. 64MiB, or a number of bytes)"))?
        .as_u64();
    match usize::try_from(bytes) {
        Ok(0) => Err("a size must be above 0".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{bytes} bytes is too large")),
    }
}

/// A duration as the manifest takes it: humantime (`30s`) or seconds (`30`, `0.5`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|e| e.to_string()),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
    }
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
