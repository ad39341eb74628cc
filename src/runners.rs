//! The language runners shipped inside the binary, and the Python runner's
//! two helper modes.
//!
//! The Python runner's source lives in `runners/python/fastworker_runner.py`
//! (run it directly to debug it); the binary carries a copy and passes it to
//! the interpreter with `-c`, so an installed `fastworker` needs no other files.
//!
//! Besides running tasks, the runner can import task modules and report
//! every `@task` function in them ([`discover`], for `--task-modules`), and
//! import the functions of a manifest's tasks to check they exist
//! ([`check_functions`], for `fastworker check`). Both run the interpreter
//! that will run the tasks, once, and wait for it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

/// Source of `runners/python/fastworker_runner.py`.
pub const PYTHON_RUNNER: &str = include_str!("../runners/python/fastworker_runner.py");

/// How long importing the task modules may take.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the runner found in the task modules.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Discovery {
    /// The interpreter's version.
    #[serde(default)]
    pub python: String,
    /// `shim` (fastworker's stand-in for the `fastworker` module) or
    /// `fastworker` (the real package, installed in that interpreter).
    #[serde(default)]
    pub registry: String,
    #[serde(default)]
    pub tasks: Vec<FoundTask>,
    #[serde(default)]
    pub errors: Vec<FoundError>,
}

/// A `@task` function.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FoundTask {
    pub name: String,
    /// `module:function`, importable.
    pub target: String,
    pub module: String,
    pub file: String,
    pub line: usize,
    #[serde(default)]
    pub doc: Option<String>,
    #[serde(default)]
    pub schedule: Option<FoundSchedule>,
}

/// A decorator's schedule (`repeat_interval`, `cron`, `repeat_count`,
/// `repeat_until`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FoundSchedule {
    #[serde(default)]
    pub every_seconds: Option<f64>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub count: Option<u64>,
    /// As written (ISO 8601, maybe without an offset).
    #[serde(default)]
    pub until: Option<String>,
}

/// A module that could not be imported, or a task that cannot be one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FoundError {
    pub module: String,
    #[serde(default)]
    pub task: Option<String>,
    pub error: String,
}

#[derive(Debug, Deserialize)]
struct Checks {
    checks: Vec<Check>,
}

/// Whether a `module:function` could be imported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Check {
    pub function: String,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// Imports `modules` with `python` (and its leading `args`), from `root`
/// and `PYTHONPATH`, and reports their `@task` functions.
pub fn discover(
    python: &Path,
    args: &[String],
    root: &Path,
    modules: &[String],
) -> Result<Discovery, String> {
    let mut cmd = Command::new(python);
    cmd.args(args)
        .args(["-c", PYTHON_RUNNER, "--discover", "--root"])
        .arg(root)
        .args(modules)
        .current_dir(root);
    let out = run(cmd, python)?;
    serde_json::from_slice(&out).map_err(|e| {
        format!(
            "{} did not report the task modules ({e}): {}",
            python.display(),
            String::from_utf8_lossy(&out)
                .chars()
                .take(200)
                .collect::<String>()
        )
    })
}

/// Imports each `module:function` with `python` from `root`.
pub fn check_functions(
    python: &Path,
    args: &[String],
    root: &Path,
    functions: &[&str],
) -> Result<Vec<Check>, String> {
    let mut cmd = Command::new(python);
    cmd.args(args)
        .args(["-c", PYTHON_RUNNER, "--check", "--root"])
        .arg(root)
        .current_dir(root);
    for f in functions {
        cmd.args(["--function", f]);
    }
    let out = run(cmd, python)?;
    serde_json::from_slice::<Checks>(&out)
        .map(|c| c.checks)
        .map_err(|e| format!("{} did not report its checks ({e})", python.display()))
}

/// Runs `cmd` to its end (at most [`IMPORT_TIMEOUT`]); its stdout. What the
/// modules print while importing goes to stderr, which is shown on failure.
fn run(mut cmd: Command, python: &Path) -> Result<Vec<u8>, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(IMPORT_TIMEOUT) {
        Ok(out) => out.map_err(|e| format!("{}: {e}", python.display()))?,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(format!(
                "importing the task modules with {} took over {}s (a module that runs at import?)",
                python.display(),
                IMPORT_TIMEOUT.as_secs()
            ));
        }
    };
    // 0: all imported; 1: some did not (the report says which).
    if matches!(out.status.code(), Some(0 | 1)) && !out.stdout.is_empty() {
        return Ok(out.stdout);
    }
    Err(format!(
        "{} failed ({}): {}",
        python.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
    ))
}
