//! The task manifest (`tasks.toml`): finding it, parsing it strictly, and the
//! validated [`TaskSpec`]s every other part of fastworker runs from.
//!
//! Loading is two steps: [`raw`] deserializes the file key for key (unknown keys
//! are errors, spans are kept), then [`resolve`] applies defaults in one place,
//! checks meaning (one way to run, known runner, files that exist, durations)
//! and resolves programs and interpreters once, so that running a task later
//! costs no lookups.

mod error;
mod imports;
mod program;
mod raw;
mod resolve;
pub mod schema;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{ManifestError, Problem};

/// Environment variable that names the manifest when `--manifest` is not given.
pub const MANIFEST_ENV: &str = "FASTWORKER_MANIFEST";
/// File looked for in the current directory when neither is given.
pub const DEFAULT_MANIFEST: &str = "tasks.toml";

/// Task priority. The derived order is the dispatch order: `Critical` first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a task's processes live: one per task, or a warm pool that serves many.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Oneshot,
    Pool,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Oneshot => "oneshot",
            Mode::Pool => "pool",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A loaded, validated manifest.
#[derive(Debug)]
pub struct Manifest {
    /// The manifest file, as given.
    pub path: PathBuf,
    /// Its directory, absolute: relative paths in the manifest resolve against it.
    pub dir: PathBuf,
    pub tasks: BTreeMap<String, Arc<TaskSpec>>,
}

/// Everything needed to run one task type.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    pub description: Option<String>,
    /// How the task was declared (shown by `list`).
    pub how: HowToRun,
    /// The resolved program and arguments.
    pub launch: Launch,
    pub timeout: Option<Duration>,
    pub priority: Priority,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub env: BTreeMap<String, String>,
    pub inherit_env: bool,
    pub cwd: PathBuf,
    /// Cap on the bytes of a result (stdout in one-shot mode, one line in pool mode).
    pub max_output: u64,
    pub max_concurrency: Option<u32>,
    pub mode: Mode,
    pub pool_size: usize,
    pub max_tasks_per_process: Option<u32>,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    pub grace_period: Duration,
    /// What each of its processes may use.
    pub limits: ResourceLimits,
    /// A digest of the code it runs, as loaded: a script's content, or a
    /// Python function's module file (found under the runner's root); none
    /// for a command. A reload replaces a warm pool whose code changed.
    pub content: Option<String>,
    /// Where it is defined.
    pub origin: Origin,
    /// When it runs by itself (the control plane fires it).
    pub schedule: Option<crate::schedule::Schedule>,
}

/// Where a task is defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A `[tasks.NAME]` table, at this line of the manifest.
    Manifest { line: usize },
    /// A `@task` function in a task module.
    Module {
        module: String,
        file: PathBuf,
        line: usize,
    },
}

impl Origin {
    /// For people: `tasks.toml:12` (the manifest as given), or
    /// `mytasks.py:8 (@task)`.
    pub fn describe(&self, manifest: &Path) -> String {
        match self {
            Origin::Manifest { line } => format!("{}:{line}", manifest.display()),
            Origin::Module { file, line, .. } => {
                let name = file.file_name().map_or_else(
                    || file.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                format!("{name}:{line} (@task)")
            }
        }
    }
}

/// What a task's process may use (the manifest's `memory_limit`,
/// `cpu_time_limit`, `max_open_files` and `max_processes`); `None` is no
/// limit. How each is enforced: `executor::limits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Bytes of memory.
    pub memory: Option<u64>,
    /// CPU time (whole seconds count).
    pub cpu_time: Option<Duration>,
    /// Open file descriptors.
    pub open_files: Option<u64>,
    /// Processes and threads, the task's own included.
    pub processes: Option<u64>,
}

impl ResourceLimits {
    pub fn any(&self) -> bool {
        *self != ResourceLimits::default()
    }
}

impl TaskSpec {
    /// A digest of the task's definition (every option, how it runs, and the
    /// script's content), with paths taken relative to `dir` (the manifest's
    /// directory) so that the same manifest in two places gives the same
    /// digest. Subworkers send it when they register, so that two workers
    /// that define a task differently are noticed. 16 hex digits of SHA-256.
    pub fn digest(&self, dir: &Path) -> String {
        use sha2::{Digest, Sha256};
        let relative = |p: &Path| p.strip_prefix(dir).unwrap_or(p).display().to_string();
        let args: Vec<String> = self
            .launch
            .args
            .iter()
            .map(|a| relative(Path::new(a)))
            .collect();
        let mut hash = Sha256::new();
        let options = format!(
            "{}|{}|{}|{:?}|{:?}|{}|{:?}|{:?}|{}|{}|{}|{:?}|{}|{}|{:?}|{:?}",
            self.name,
            self.how.describe(dir),
            self.launch.requested,
            args,
            self.timeout,
            self.retries,
            self.retry_backoff,
            self.env,
            self.inherit_env,
            relative(&self.cwd),
            self.max_output,
            self.max_concurrency,
            self.mode,
            self.pool_size,
            self.max_tasks_per_process,
            self.grace_period,
        );
        hash.update(options.as_bytes());
        // Only when set, so that digests of tasks without limits stay as
        // builds before limits made them.
        if self.limits.any() {
            hash.update(format!("|{:?}", self.limits).as_bytes());
        }
        if let (HowToRun::Script { .. }, Some(content)) = (&self.how, &self.content) {
            hash.update(content.as_bytes());
        }
        hash.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether a warm process started for `self` runs `other` the same way:
    /// the same program, arguments, environment, directory, code, pool
    /// settings and limits. A reload keeps such a pool's processes.
    pub fn runs_like(&self, other: &TaskSpec) -> bool {
        self.launch == other.launch
            && self.env == other.env
            && self.inherit_env == other.inherit_env
            && self.cwd == other.cwd
            && self.content == other.content
            && self.mode == other.mode
            && self.pool_size == other.pool_size
            && self.max_tasks_per_process == other.max_tasks_per_process
            && self.max_output == other.max_output
            && self.grace_period == other.grace_period
            && self.limits == other.limits
    }

    /// Whether `other` defines the task differently in any way that
    /// matters (not where it is written).
    pub fn differs_from(&self, other: &TaskSpec, dir: &Path) -> bool {
        self.digest(dir) != other.digest(dir)
            || self.content != other.content
            || self.priority != other.priority
            || self.description != other.description
            || self.schedule != other.schedule
    }
}

/// A digest of a file's content (16 hex digits of SHA-256); none if it
/// cannot be read.
pub fn file_digest(path: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).ok()?;
    Some(
        Sha256::digest(&bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// The way a task is declared to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HowToRun {
    Command {
        argv: Vec<String>,
    },
    Script {
        path: PathBuf,
        interpreter: Option<Vec<String>>,
    },
    Runner {
        runner: String,
        function: String,
    },
}

impl HowToRun {
    /// How the task runs, with paths shown relative to `dir` (the manifest's).
    pub fn describe(&self, dir: &Path) -> String {
        match self {
            HowToRun::Script { path, interpreter } => {
                let shown = path.strip_prefix(dir).unwrap_or(path).display();
                match interpreter {
                    Some(i) => format!("script {shown} ({})", i.join(" ")),
                    None => format!("script {shown}"),
                }
            }
            other => other.to_string(),
        }
    }
}

impl fmt::Display for HowToRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HowToRun::Command { argv } => write!(f, "command {}", argv.join(" ")),
            HowToRun::Script {
                path,
                interpreter: Some(interp),
            } => write!(f, "script {} ({})", path.display(), interp.join(" ")),
            HowToRun::Script { path, .. } => write!(f, "script {}", path.display()),
            HowToRun::Runner { runner, function } => write!(f, "{runner} {function}"),
        }
    }
}

/// The program to start for a task and its arguments, resolved at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program as the manifest names it (for error messages).
    pub requested: String,
    /// The program to exec, or why it could not be found (reported when the
    /// task runs, and as a warning by `check`).
    pub program: Result<PathBuf, String>,
    pub args: Vec<OsString>,
}

impl Launch {
    /// The program and arguments as one line, for logs and `check`.
    pub fn display(&self) -> String {
        let program = match &self.program {
            Ok(path) => path.display().to_string(),
            Err(e) => format!("<{e}>"),
        };
        let mut line = program;
        for arg in &self.args {
            let arg = arg.to_string_lossy();
            // The built-in Python runner is passed as source text: don't print it all.
            if arg.contains('\n') {
                line.push_str(" <built-in runner>");
            } else {
                line.push(' ');
                line.push_str(&arg);
            }
        }
        line
    }
}

/// The name a manifest made of task modules alone goes by.
const NO_MANIFEST: &str = "(task modules)";

pub use self::resolve::TaskModules;

/// The tasks one manifest adds, removes and changes against another, by
/// name (see [`Manifest::changes_from`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// `1 added (resize), 0 removed, 1 changed (add)`.
impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |f: &mut fmt::Formatter<'_>, n: &[String], what: &str| {
            write!(f, "{} {what}", n.len())?;
            if !n.is_empty() {
                write!(f, " ({})", n.join(", "))?;
            }
            Ok(())
        };
        part(f, &self.added, "added")?;
        f.write_str(", ")?;
        part(f, &self.removed, "removed")?;
        f.write_str(", ")?;
        part(f, &self.changed, "changed")
    }
}

impl Manifest {
    /// What differs from `old` to this manifest: the tasks added, removed
    /// and changed (in any way that matters, not where they are written).
    pub fn changes_from(&self, old: &Manifest) -> Changes {
        let mut changes = Changes::default();
        for (name, spec) in &self.tasks {
            match old.tasks.get(name) {
                None => changes.added.push(name.clone()),
                Some(before) if before.differs_from(spec, &self.dir) => {
                    changes.changed.push(name.clone());
                }
                Some(_) => {}
            }
        }
        changes.removed = old
            .tasks
            .keys()
            .filter(|name| !self.tasks.contains_key(*name))
            .cloned()
            .collect();
        changes
    }

    /// Loads the manifest named by `explicit`, else by `FASTWORKER_MANIFEST`,
    /// else `./tasks.toml`.
    pub fn discover(explicit: Option<&Path>) -> Result<Manifest, ManifestError> {
        let path = match explicit {
            Some(path) => path.to_path_buf(),
            None => match std::env::var_os(MANIFEST_ENV) {
                Some(path) if !path.is_empty() => PathBuf::from(path),
                _ => {
                    let path = PathBuf::from(DEFAULT_MANIFEST);
                    if !path.exists() {
                        return Err(ManifestError::NotFound(format!(
                            "{DEFAULT_MANIFEST} is not in the current directory; \
                             pass --manifest PATH or set {MANIFEST_ENV}"
                        )));
                    }
                    path
                }
            },
        };
        Manifest::load(&path)
    }

    /// [`Manifest::discover`], with the `@task` functions of Python task
    /// modules beside its tasks. With modules, the manifest is optional:
    /// none found, the tasks are the modules' alone.
    pub fn discover_with(
        explicit: Option<&Path>,
        modules: &TaskModules,
    ) -> Result<Manifest, ManifestError> {
        if modules.names.is_empty() {
            return Manifest::discover(explicit);
        }
        let given =
            explicit.is_some() || std::env::var_os(MANIFEST_ENV).is_some_and(|p| !p.is_empty());
        if !given && !Path::new(DEFAULT_MANIFEST).exists() {
            let path = modules.root.join(NO_MANIFEST);
            return Manifest::from_source_with(&path, "", modules);
        }
        let path = match explicit {
            Some(path) => path.to_path_buf(),
            None => match std::env::var_os(MANIFEST_ENV) {
                Some(path) if !path.is_empty() => PathBuf::from(path),
                _ => PathBuf::from(DEFAULT_MANIFEST),
            },
        };
        let source = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        Manifest::from_source_with(&path, &source, modules)
    }

    /// Whether the tasks come from task modules only (no manifest file).
    pub fn is_modules_only(&self) -> bool {
        self.path.file_name().is_some_and(|n| n == NO_MANIFEST)
    }

    /// Loads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let source = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::from_source(path, &source)
    }

    /// Validates `source` as if it had been read from `path`.
    pub fn from_source(path: &Path, source: &str) -> Result<Manifest, ManifestError> {
        Manifest::from_source_with(path, source, &TaskModules::default())
    }

    /// [`Manifest::from_source`], with the tasks of `modules`.
    pub fn from_source_with(
        path: &Path,
        source: &str,
        modules: &TaskModules,
    ) -> Result<Manifest, ManifestError> {
        let dir = manifest_dir(path)?;
        let tasks = resolve::resolve(path, &dir, source, modules)?;
        Ok(Manifest {
            path: path.to_path_buf(),
            dir,
            tasks,
        })
    }

    pub fn task(&self, name: &str) -> Option<&Arc<TaskSpec>> {
        self.tasks.get(name)
    }

    /// The error for a task name that is not in the manifest.
    pub fn unknown_task(&self, name: &str) -> String {
        let known: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        if known.is_empty() {
            format!("unknown task '{name}'; the manifest defines no tasks")
        } else {
            format!("unknown task '{name}'; known: {}", known.join(", "))
        }
    }
}

fn manifest_dir(path: &Path) -> Result<PathBuf, ManifestError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parent
        .canonicalize()
        .or_else(|_| std::path::absolute(&parent))
        .map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })
}
