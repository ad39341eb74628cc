//! From the raw manifest to validated [`TaskSpec`]s.
//!
//! Precedence of every option, highest first: the task's own table, its
//! runner's table (mode and pool settings only), `[defaults]`, then the
//! built-in defaults in [`Builtin`]. All problems are collected, so one run of
//! `fastworker check` reports every mistake in the file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::manifest::raw::Spanned;

use super::error::{Locator, ManifestError, Problem};
use super::program::Resolver;
use super::raw::{RawManifest, RawRunner, RawTable};
use super::{HowToRun, Launch, Mode, Priority, ResourceLimits, TaskSpec};
use crate::runners;

mod modules;
mod schedule;
mod shape;
mod values;

pub use self::modules::TaskModules;

/// The built-in defaults, in one place.
struct Builtin;

impl Builtin {
    const MAX_OUTPUT: u64 = 16 * 1024 * 1024;
    const RETRY_BACKOFF: Duration = Duration::from_secs(1);
    const GRACE_PERIOD: Duration = Duration::from_secs(5);
    const INHERIT_ENV: bool = true;

    fn pool_size() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// A runner after validation.
struct RunnerDef {
    /// The interpreter as written (or `python3` for the predefined runner).
    requested: String,
    interpreter: Result<(PathBuf, Vec<String>), String>,
    script: RunnerScript,
    /// Its mode and pool settings (the only options a runner sets).
    options: Options,
}

/// The options one table sets, validated; `None` where it sets nothing.
#[derive(Debug, Clone, Default)]
struct Options {
    timeout: Option<Duration>,
    priority: Option<Priority>,
    retries: Option<u32>,
    retry_backoff: Option<Duration>,
    env: BTreeMap<String, String>,
    inherit_env: Option<bool>,
    cwd: Option<PathBuf>,
    max_output: Option<u64>,
    max_concurrency: Option<u32>,
    mode: Option<Mode>,
    pool_size: Option<u32>,
    max_tasks_per_process: Option<u32>,
    grace_period: Option<Duration>,
    limits: ResourceLimits,
}

impl Options {
    /// These options, with `fallback`'s where these set none (`env` merges,
    /// these keys winning).
    fn or(self, fallback: &Options) -> Options {
        let mut env = fallback.env.clone();
        env.extend(self.env);
        Options {
            timeout: self.timeout.or(fallback.timeout),
            priority: self.priority.or(fallback.priority),
            retries: self.retries.or(fallback.retries),
            retry_backoff: self.retry_backoff.or(fallback.retry_backoff),
            env,
            inherit_env: self.inherit_env.or(fallback.inherit_env),
            cwd: self.cwd.or_else(|| fallback.cwd.clone()),
            max_output: self.max_output.or(fallback.max_output),
            max_concurrency: self.max_concurrency.or(fallback.max_concurrency),
            mode: self.mode.or(fallback.mode),
            pool_size: self.pool_size.or(fallback.pool_size),
            max_tasks_per_process: self
                .max_tasks_per_process
                .or(fallback.max_tasks_per_process),
            grace_period: self.grace_period.or(fallback.grace_period),
            limits: ResourceLimits {
                memory: self.limits.memory.or(fallback.limits.memory),
                cpu_time: self.limits.cpu_time.or(fallback.limits.cpu_time),
                open_files: self.limits.open_files.or(fallback.limits.open_files),
                processes: self.limits.processes.or(fallback.limits.processes),
            },
        }
    }
}

enum RunnerScript {
    /// The interpreter itself speaks the protocol (e.g. `["node", "runner.js"]`).
    None,
    File(PathBuf),
    /// The Python runner shipped inside the binary, passed with `-c`.
    BuiltinPython,
}

pub(super) fn resolve(
    path: &Path,
    dir: &Path,
    source: &str,
    modules: &TaskModules,
) -> Result<BTreeMap<String, Arc<TaskSpec>>, ManifestError> {
    let loc = Locator {
        file: path.to_path_buf(),
        source,
    };
    let raw: RawManifest = toml::from_str(source).map_err(|e| ManifestError::Invalid {
        problems: shape::problems(&loc, &e),
    })?;
    let mut cx = Cx {
        loc,
        dir,
        problems: Vec::new(),
        resolver: Resolver::new(dir),
    };

    let defaults = match &raw.defaults {
        Some(table) => {
            cx.reject_ways_to_run(table.get_ref(), "defaults");
            cx.options(table.get_ref(), "defaults")
        }
        None => Options::default(),
    };

    let mut runners = BTreeMap::new();
    for (name, table) in &raw.runners {
        if let Some(def) = cx.runner(name, table) {
            runners.insert(name.clone(), def);
        }
    }
    if !runners.contains_key("python") {
        if let Some(def) = cx.runner("python", &Spanned::new(0..0, RawRunner::default())) {
            runners.insert("python".to_owned(), def);
        }
    }

    let mut tasks = BTreeMap::new();
    for (name, table) in &raw.tasks {
        if let Some(spec) = cx.task(name, table, &defaults, &runners) {
            tasks.insert(name.clone(), Arc::new(spec));
        }
    }
    if !modules.names.is_empty() {
        let lines: BTreeMap<String, usize> = raw
            .tasks
            .iter()
            .map(|(name, t)| (name.clone(), cx.loc.line_col(t.span().start).0))
            .collect();
        cx.module_tasks(modules, &defaults, &runners, &lines, &mut tasks);
    }

    if cx.problems.is_empty() {
        Ok(tasks)
    } else {
        cx.problems.sort_by_key(|p| (p.line, p.column));
        cx.problems.dedup();
        Err(ManifestError::Invalid {
            problems: cx.problems,
        })
    }
}

/// What a task's spec is made of.
struct Spec<'a> {
    name: &'a str,
    description: Option<String>,
    how: HowToRun,
    runner: Option<&'a RunnerDef>,
    options: Options,
    origin: super::Origin,
    schedule: Option<crate::schedule::Schedule>,
    /// Where a runner imports the task's function from.
    root: &'a Path,
}

struct Cx<'a> {
    loc: Locator<'a>,
    dir: &'a Path,
    problems: Vec<Problem>,
    resolver: Resolver,
}

impl Cx<'_> {
    fn err(&mut self, span: Range<usize>, table: &str, key: Option<&str>, msg: impl Into<String>) {
        let problem = self.loc.problem(span, Some(table), key, msg);
        self.problems.push(problem);
    }

    fn reject_ways_to_run(&mut self, t: &RawTable, table: &str) {
        let ways = [
            ("command", t.command.as_ref().map(Spanned::span)),
            ("script", t.script.as_ref().map(Spanned::span)),
            ("interpreter", t.interpreter.as_ref().map(Spanned::span)),
            ("runner", t.runner.as_ref().map(Spanned::span)),
            ("function", t.function.as_ref().map(Spanned::span)),
            ("description", t.description.as_ref().map(Spanned::span)),
            ("schedule", t.schedule.as_ref().map(Spanned::span)),
        ];
        for (key, span) in ways {
            if let Some(span) = span {
                self.err(
                    span,
                    table,
                    Some(key),
                    format!("`{key}` belongs to a task and cannot be set in [defaults]"),
                );
            }
        }
    }

    fn runner(&mut self, name: &str, table: &Spanned<RawRunner>) -> Option<RunnerDef> {
        let t = table.get_ref();
        let tname = format!("runners.{name}");
        let before = self.problems.len();
        let mut requested = "python3".to_owned();
        let interpreter = match &t.interpreter {
            Some(v) => {
                let argv = self.argv(v, &tname, "interpreter", true)?;
                requested = argv[0].clone();
                let program = self.resolver.program(&argv[0]);
                program.map(|p| (p, argv[1..].to_vec()))
            }
            None if name == "python" => self.resolver.first_python3().map(|p| (p, Vec::new())),
            None => {
                self.err(
                    table.span(),
                    &tname,
                    None,
                    "a runner needs `interpreter` (a program, or an argv list such as [\"node\", \"runner.js\"])",
                );
                return None;
            }
        };
        let script = match &t.script {
            Some(s) => RunnerScript::File(self.existing_file(s, &tname, "script")?),
            None if name == "python" => RunnerScript::BuiltinPython,
            None => RunnerScript::None,
        };
        let mut options = Options {
            mode: t.mode.as_ref().map(|m| *m.get_ref()),
            pool_size: self.positive(t.pool_size.as_ref(), &tname, "pool_size"),
            max_tasks_per_process: self.positive(
                t.max_tasks_per_process.as_ref(),
                &tname,
                "max_tasks_per_process",
            ),
            ..Options::default()
        };
        // The predefined Python runner warms a pool unless told otherwise.
        if name == "python" {
            options.mode = options.mode.or(Some(Mode::Pool));
        }
        (self.problems.len() == before).then_some(RunnerDef {
            requested,
            interpreter,
            script,
            options,
        })
    }

    fn task(
        &mut self,
        name: &str,
        table: &Spanned<RawTable>,
        defaults: &Options,
        runners: &BTreeMap<String, RunnerDef>,
    ) -> Option<TaskSpec> {
        let t = table.get_ref();
        let tname = format!("tasks.{name}");
        let before = self.problems.len();
        if !valid_task_name(name) {
            self.err(
                table.span(),
                &tname,
                None,
                format!("task name '{name}' may only use letters, digits, '_', '-', '.' and ':'"),
            );
        }
        // Options are checked even when the way to run is wrong, so that one
        // `check` shows every problem.
        let how = self.how_to_run(name, table, &tname, runners);
        let own = self.options(t, &tname);
        let schedule = t.schedule.as_ref().and_then(|s| self.schedule(s, &tname));
        if self.problems.len() != before {
            return None;
        }
        let (how, runner) = how?;
        let empty = Options::default();
        let o = own.or(runner.map_or(&empty, |r| &r.options)).or(defaults);
        let line = self.loc.line_col(table.span().start).0;
        let root = self.dir.to_path_buf();
        Some(self.spec(Spec {
            name,
            description: t.description.as_ref().map(|d| d.get_ref().clone()),
            how,
            runner,
            options: o,
            origin: super::Origin::Manifest { line },
            schedule,
            root: &root,
        }))
    }

    /// A task's spec from what was validated.
    fn spec(&mut self, s: Spec<'_>) -> TaskSpec {
        let o = s.options;
        let mode = o.mode.unwrap_or_default();
        let launch = self.launch(&s.how, s.runner, mode, s.root);
        let content = match &s.how {
            HowToRun::Script { path, .. } => super::file_digest(path),
            HowToRun::Runner { function, .. } => module_file(s.root, function)
                .as_deref()
                .and_then(super::file_digest),
            HowToRun::Command { .. } => None,
        };
        TaskSpec {
            name: s.name.to_owned(),
            description: s.description,
            how: s.how,
            launch,
            timeout: o.timeout,
            priority: o.priority.unwrap_or_default(),
            retries: o.retries.unwrap_or(0),
            retry_backoff: o.retry_backoff.unwrap_or(Builtin::RETRY_BACKOFF),
            env: o.env,
            inherit_env: o.inherit_env.unwrap_or(Builtin::INHERIT_ENV),
            cwd: o.cwd.unwrap_or_else(|| s.root.to_path_buf()),
            max_output: o.max_output.unwrap_or(Builtin::MAX_OUTPUT),
            max_concurrency: o.max_concurrency,
            mode,
            pool_size: o.pool_size.map_or_else(Builtin::pool_size, |n| n as usize),
            max_tasks_per_process: o.max_tasks_per_process,
            grace_period: o.grace_period.unwrap_or(Builtin::GRACE_PERIOD),
            limits: o.limits,
            content,
            origin: s.origin,
            schedule: s.schedule,
        }
    }

    /// Validates the options `t` sets (a task's table or `[defaults]`).
    fn options(&mut self, t: &RawTable, table: &str) -> Options {
        Options {
            timeout: self.duration(t.timeout.as_ref(), table, "timeout"),
            priority: t.priority.as_ref().map(|p| *p.get_ref()),
            retries: t.retries.as_ref().map(|r| *r.get_ref()),
            retry_backoff: self.duration(t.retry_backoff.as_ref(), table, "retry_backoff"),
            env: t
                .env
                .as_ref()
                .map(|e| e.get_ref().clone())
                .unwrap_or_default(),
            inherit_env: t.inherit_env.as_ref().map(|b| *b.get_ref()),
            cwd: t
                .cwd
                .as_ref()
                .and_then(|c| self.existing_dir(c, table, "cwd")),
            max_output: self.bytes(t.max_output.as_ref(), table, "max_output"),
            max_concurrency: self.positive(t.max_concurrency.as_ref(), table, "max_concurrency"),
            mode: t.mode.as_ref().map(|m| *m.get_ref()),
            pool_size: self.positive(t.pool_size.as_ref(), table, "pool_size"),
            max_tasks_per_process: self.positive(
                t.max_tasks_per_process.as_ref(),
                table,
                "max_tasks_per_process",
            ),
            grace_period: self.duration(t.grace_period.as_ref(), table, "grace_period"),
            limits: ResourceLimits {
                memory: self.bytes(t.memory_limit.as_ref(), table, "memory_limit"),
                cpu_time: self
                    .duration(t.cpu_time_limit.as_ref(), table, "cpu_time_limit")
                    .and_then(|d| self.at_least_a_second(d, t.cpu_time_limit.as_ref(), table)),
                open_files: self
                    .positive(t.max_open_files.as_ref(), table, "max_open_files")
                    .map(u64::from),
                processes: self
                    .positive(t.max_processes.as_ref(), table, "max_processes")
                    .map(u64::from),
            },
        }
    }

    /// Checks that exactly one way to run is given and builds the launch line.
    fn how_to_run<'r>(
        &mut self,
        name: &str,
        table: &Spanned<RawTable>,
        tname: &str,
        runners: &'r BTreeMap<String, RunnerDef>,
    ) -> Option<(HowToRun, Option<&'r RunnerDef>)> {
        let t = table.get_ref();
        let given: Vec<&str> = [
            t.command.as_ref().map(|_| "command"),
            t.script.as_ref().map(|_| "script"),
            t.runner.as_ref().map(|_| "runner"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() != 1 {
            let msg = if given.is_empty() {
                format!(
                    "task '{name}' has no way to run: give one of `command`, `script` or `runner` (with `function`)"
                )
            } else {
                format!(
                    "task '{name}' has {} ways to run ({}); give exactly one",
                    given.len(),
                    given.join(", ")
                )
            };
            self.err(table.span(), tname, None, msg);
            return None;
        }
        if let (Some(i), None) = (&t.interpreter, &t.script) {
            self.err(
                i.span(),
                tname,
                Some("interpreter"),
                "`interpreter` goes with `script` only",
            );
        }
        if let (Some(f), None) = (&t.function, &t.runner) {
            self.err(
                f.span(),
                tname,
                Some("function"),
                "`function` goes with `runner` only",
            );
        }

        if let Some(command) = &t.command {
            let argv = self.argv(command, tname, "command", false)?;
            return Some((HowToRun::Command { argv }, None));
        }
        if let Some(script) = &t.script {
            let path = self.existing_file(script, tname, "script")?;
            let interpreter = match &t.interpreter {
                Some(v) => Some(self.argv(v, tname, "interpreter", true)?),
                None => {
                    // exec would hand a file with neither a #! line nor a binary
                    // header to /bin/sh (the execvp convention): refuse instead.
                    if !starts_like_executable(&path) {
                        self.err(
                            script.span(),
                            tname,
                            Some("script"),
                            format!(
                                "{} has no #! line: add one, or set `interpreter`",
                                path.display()
                            ),
                        );
                        return None;
                    }
                    None
                }
            };
            return Some((HowToRun::Script { path, interpreter }, None));
        }

        let runner_name = t.runner.as_ref()?;
        let Some(runner) = runners.get(runner_name.get_ref()) else {
            let known: Vec<&str> = runners.keys().map(String::as_str).collect();
            self.err(
                runner_name.span(),
                tname,
                Some("runner"),
                format!(
                    "unknown runner `{}`; known: {}",
                    runner_name.get_ref(),
                    known.join(", ")
                ),
            );
            return None;
        };
        let Some(function) = &t.function else {
            self.err(
                table.span(),
                tname,
                None,
                "a runner task needs `function = \"module:function\"`",
            );
            return None;
        };
        if !valid_function(function.get_ref()) {
            self.err(
                function.span(),
                tname,
                Some("function"),
                format!(
                    "`{}` is not of the form \"module:function\" (e.g. \"tasks.math:add\")",
                    function.get_ref()
                ),
            );
            return None;
        }
        let how = HowToRun::Runner {
            runner: runner_name.get_ref().clone(),
            function: function.get_ref().clone(),
        };
        Some((how, Some(runner)))
    }

    /// Resolves the program and builds the arguments for a validated task
    /// (a runner's functions are imported from `root`).
    fn launch(
        &mut self,
        how: &HowToRun,
        runner: Option<&RunnerDef>,
        mode: Mode,
        root: &Path,
    ) -> Launch {
        match (how, runner) {
            (HowToRun::Command { argv }, _) => Launch {
                requested: argv[0].clone(),
                program: self.resolver.program(&argv[0]),
                args: argv[1..].iter().map(OsString::from).collect(),
            },
            (
                HowToRun::Script {
                    path,
                    interpreter: Some(argv),
                },
                _,
            ) => Launch {
                requested: argv[0].clone(),
                program: self.resolver.program(&argv[0]),
                args: argv[1..]
                    .iter()
                    .map(OsString::from)
                    .chain([path.clone().into_os_string()])
                    .collect(),
            },
            (
                HowToRun::Script {
                    path,
                    interpreter: None,
                },
                _,
            ) => Launch {
                requested: path.display().to_string(),
                program: Ok(path.clone()),
                args: Vec::new(),
            },
            (HowToRun::Runner { function, .. }, Some(runner)) => {
                runner_launch(runner, function, mode, root)
            }
            (HowToRun::Runner { runner, .. }, None) => Launch {
                requested: runner.clone(),
                program: Err(format!("runner `{runner}` is not defined")),
                args: Vec::new(),
            },
        }
    }
}

/// The command line of a runner process: interpreter, runner program, then
/// `--mode M --function F --root DIR` (the runner contract, docs/protocol.md).
fn runner_launch(runner: &RunnerDef, function: &str, mode: Mode, root: &Path) -> Launch {
    let (program, mut args): (Result<PathBuf, String>, Vec<OsString>) = match &runner.interpreter {
        Ok((path, args)) => (Ok(path.clone()), args.iter().map(OsString::from).collect()),
        Err(e) => (Err(e.clone()), Vec::new()),
    };
    match &runner.script {
        RunnerScript::None => {}
        RunnerScript::File(path) => args.push(path.clone().into_os_string()),
        RunnerScript::BuiltinPython => {
            args.push("-c".into());
            args.push(runners::PYTHON_RUNNER.into());
        }
    }
    args.extend(["--mode", mode.as_str(), "--function", function, "--root"].map(OsString::from));
    args.push(root.as_os_str().to_owned());
    Launch {
        requested: runner.requested.clone(),
        program,
        args,
    }
}

/// The file of `module:function`'s module under `root` (`a/b.py` or
/// `a/b/__init__.py`), if it is there.
fn module_file(root: &Path, function: &str) -> Option<PathBuf> {
    let module = function.split(':').next()?;
    let base = module
        .split('.')
        .fold(root.to_path_buf(), |p, part| p.join(part));
    [base.with_extension("py"), base.join("__init__.py")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Whether a file begins with `#!` or an ELF header.
fn starts_like_executable(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read(&mut head));
    matches!(read, Ok(n) if head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF")
}

fn valid_task_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn valid_function(f: &str) -> bool {
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
            && chars.all(|c| c.is_alphanumeric() || c == '_')
    };
    match f.split_once(':') {
        Some((module, func)) => module.split('.').all(ident) && func.split('.').all(ident),
        None => false,
    }
}
