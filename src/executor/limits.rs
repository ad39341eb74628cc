//! Per-task resource limits (the manifest's `memory_limit`,
//! `cpu_time_limit`, `max_open_files`, `max_processes`), on each task
//! process:
//!
//! - **cgroups**, where this process may make them: each task process gets
//!   a cgroup of its own for memory (the kernel's OOM killer stops it when
//!   its memory reaches the limit; `memory.max`, or v1's
//!   `memory.limit_in_bytes`) and for processes (`pids.max`: a fork past
//!   the limit fails). On cgroup v1 they go under this process's own
//!   cgroup of each controller; on v2, under a cgroup whose children have
//!   the controller enabled (this process's, or its parent's: a delegated
//!   cgroup, systemd's `Delegate=yes`).
//! - **rlimits**, set in the child before it runs the program:
//!   `RLIMIT_CPU` (SIGXCPU at the limit, SIGKILL 5 s of CPU later),
//!   `RLIMIT_NOFILE`; and, where no cgroup can be used, `RLIMIT_DATA` for
//!   memory (allocations past it fail) and `RLIMIT_NPROC` for processes
//!   (which counts every process of the user, and does not bind root).
//! - A pool process serves many tasks: its CPU limit is set again before
//!   each request (`prlimit`) to the CPU time it has used plus the limit.
//!
//! A run that ends by a limit is reported as [`Outcome::LimitExceeded`],
//! naming it: see [`judge`].
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::resource::Resource;

use super::outcome::{ExitState, Limit, Outcome};
use crate::manifest::ResourceLimits;

/// CPU time a process may use past its limit (after SIGXCPU) before the
/// kernel kills it.
const CPU_GRACE: u64 = 5;

/// A cgroup controller this process may make cgroups under.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    v2: bool,
    /// Where task cgroups are made.
    dir: PathBuf,
}

/// The cgroups this process may use for limits, found once.
#[derive(Debug)]
pub struct Cgroups {
    memory: Option<Hierarchy>,
    pids: Option<Hierarchy>,
    next: AtomicU64,
}

impl Cgroups {
    /// Looks for usable memory and pids controllers (none where cgroups
    /// are absent, read-only or not ours), changing nothing.
    pub fn detect() -> Cgroups {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let find = |controller: &str| {
            v1_dir(&own, &mounts, controller)
                .map(|dir| Hierarchy { v2: false, dir })
                .or_else(|| {
                    v2_dir(&own, &mounts, controller).map(|dir| Hierarchy { v2: true, dir })
                })
                .filter(|h| writable(&h.dir))
        };
        let cgroups = Cgroups {
            memory: find("memory"),
            pids: find("pids"),
            next: AtomicU64::new(1),
        };
        tracing::debug!(memory = ?cgroups.memory, pids = ?cgroups.pids, "cgroups for task limits");
        cgroups
    }

    /// [`Cgroups::detect`], then removes the task cgroups that processes
    /// gone before this one left behind: for an executor that will use them.
    pub fn detect_for_use() -> Cgroups {
        let cgroups = Cgroups::detect();
        for h in [&cgroups.memory, &cgroups.pids].into_iter().flatten() {
            remove_stale(&h.dir);
        }
        cgroups
    }

    /// No cgroups: every limit by rlimits only.
    pub fn none() -> Cgroups {
        Cgroups {
            memory: None,
            pids: None,
            next: AtomicU64::new(1),
        }
    }

    /// How each limit is enforced here, for `fastworker check` and docs.
    pub fn describe(&self) -> String {
        let how = |h: &Option<Hierarchy>, fallback: &str| match h {
            Some(h) => format!(
                "cgroup {} under {}",
                if h.v2 { "v2" } else { "v1" },
                h.dir.display()
            ),
            None => fallback.to_owned(),
        };
        format!(
            "memory_limit: {}; max_processes: {}; cpu_time_limit and max_open_files: setrlimit",
            how(&self.memory, "RLIMIT_DATA (no memory cgroup usable)"),
            how(
                &self.pids,
                "RLIMIT_NPROC (no pids cgroup usable; it counts all of the user's processes and does not bind root)"
            )
        )
    }

    /// Whether `max_processes` binds here: a pids cgroup, or a user other
    /// than root (RLIMIT_NPROC does not bind root).
    pub fn processes_bound(&self) -> bool {
        self.pids.is_some() || !nix::unistd::geteuid().is_root()
    }
}

/// Our cgroup dir of v1 controller `controller`.
fn v1_dir(own: &str, mounts: &str, controller: &str) -> Option<PathBuf> {
    let path = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })?;
    mounts.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut after = after.split(' ');
        let (fstype, _source, options) = (after.next()?, after.next()?, after.next()?);
        let fields: Vec<&str> = before.split(' ').collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        (fstype == "cgroup" && options.split(',').any(|o| o == controller))
            .then(|| join_cgroup(point, root, path))
            .flatten()
    })
}

/// The v2 cgroup dir under which children get `controller`: ours or our
/// parent's (a delegated cgroup), if its `cgroup.subtree_control` enables it.
fn v2_dir(own: &str, mounts: &str, controller: &str) -> Option<PathBuf> {
    let path = own.lines().find_map(|line| line.strip_prefix("0::"))?;
    let dir = mounts.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        (after.split(' ').next()? == "cgroup2")
            .then(|| join_cgroup(fields.get(4)?, fields.get(3)?, path))
            .flatten()
    })?;
    let enabled = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == controller))
    };
    if enabled(&dir) {
        return Some(dir);
    }
    dir.parent().filter(|p| enabled(p)).map(Path::to_path_buf)
}

/// A cgroup's path within its mount.
fn join_cgroup(point: &str, root: &str, path: &str) -> Option<PathBuf> {
    let relative = path
        .strip_prefix(root)
        .unwrap_or(path)
        .trim_start_matches('/');
    Some(Path::new(point).join(relative))
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Removes `fastworker-<pid>-<n>` cgroups of processes that are gone.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("fastworker-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// One task process's cgroup in one hierarchy.
#[derive(Debug)]
struct Group {
    v2: bool,
    dir: PathBuf,
    controller: &'static str,
}

impl Group {
    fn make(
        h: &Hierarchy,
        name: &str,
        controller: &'static str,
        limit: u64,
    ) -> std::io::Result<Group> {
        let dir = h.dir.join(name);
        std::fs::create_dir(&dir)?;
        let group = Group {
            v2: h.v2,
            dir,
            controller,
        };
        let written = match (controller, h.v2) {
            ("memory", true) => {
                // No swap either, where swap is accounted.
                let _ = std::fs::write(group.dir.join("memory.swap.max"), "0");
                std::fs::write(group.dir.join("memory.max"), limit.to_string())
            }
            ("memory", false) => {
                std::fs::write(group.dir.join("memory.limit_in_bytes"), limit.to_string()).map(
                    |()| {
                        let _ = std::fs::write(
                            group.dir.join("memory.memsw.limit_in_bytes"),
                            limit.to_string(),
                        );
                    },
                )
            }
            _ => std::fs::write(group.dir.join("pids.max"), limit.to_string()),
        };
        match written {
            Ok(()) => Ok(group),
            Err(e) => {
                let _ = std::fs::remove_dir(&group.dir);
                Err(e)
            }
        }
    }

    /// `cgroup.procs`, open for the child to write itself into.
    fn procs(&self) -> std::io::Result<OwnedFd> {
        OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(self.dir.join("cgroup.procs"))
            .map(OwnedFd::from)
    }

    /// How many times the limit stopped something: OOM kills, or forks
    /// refused (since the cgroup was made).
    fn count(&self) -> u64 {
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        let count = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(str::trim))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match (self.controller, self.v2) {
            ("memory", true) => count(&read("memory.events"), "oom_kill "),
            ("memory", false) => count(&read("memory.oom_control"), "oom_kill "),
            _ => count(&read("pids.events"), "max "),
        }
    }

    /// Removes the cgroup once its processes are gone (they were killed
    /// with their group; the last may take a moment to leave).
    async fn remove(self) {
        for _ in 0..100 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        tracing::warn!(cgroup = %self.dir.display(), "a task's cgroup is still in use; it is removed at the next start");
    }
}

/// A task process's limits, made ready before it is spawned.
#[derive(Debug)]
pub struct Prepared {
    rlimits: Vec<(Resource, u64, u64)>,
    procs: Vec<OwnedFd>,
    groups: Vec<Group>,
}

/// What a process's cgroups counted: OOM kills and refused forks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub oom_kills: u64,
    pub forks_refused: u64,
    /// Whether a cgroup enforced each (else an rlimit did).
    pub memory_cgroup: bool,
    pub pids_cgroup: bool,
}

impl Usage {
    /// What was counted after `before` (one request of a pool process,
    /// whose cgroup counts for its whole life).
    pub fn since(self, before: Usage) -> Usage {
        Usage {
            oom_kills: self.oom_kills.saturating_sub(before.oom_kills),
            forks_refused: self.forks_refused.saturating_sub(before.forks_refused),
            ..self
        }
    }
}

impl Prepared {
    /// Makes the cgroups and the rlimits of a process with `limits`. A
    /// pooled process (`pooled`) has its CPU limit renewed before each
    /// request (see [`renew_cpu_limit`]), so its hard limit stays open:
    /// only privileged processes may raise one.
    pub fn new(
        cgroups: &Cgroups,
        limits: &ResourceLimits,
        pooled: bool,
    ) -> Result<Prepared, String> {
        let name = format!(
            "fastworker-{}-{}",
            std::process::id(),
            cgroups.next.fetch_add(1, Ordering::Relaxed)
        );
        let mut prepared = Prepared {
            rlimits: Vec::new(),
            procs: Vec::new(),
            groups: Vec::new(),
        };
        let mut group =
            |h: &Option<Hierarchy>,
             controller: &'static str,
             limit: Option<u64>|
             -> Result<bool, String> {
                let (Some(h), Some(limit)) = (h, limit) else {
                    return Ok(false);
                };
                let group = Group::make(h, &name, controller, limit).map_err(|e| {
                    format!(
                        "cannot make a {controller} cgroup in {}: {e}",
                        h.dir.display()
                    )
                })?;
                prepared.procs.push(group.procs().map_err(|e| {
                    format!("cannot open {}/cgroup.procs: {e}", group.dir.display())
                })?);
                prepared.groups.push(group);
                Ok(true)
            };
        let memory_cgroup = group(&cgroups.memory, "memory", limits.memory)?;
        let pids_cgroup = group(&cgroups.pids, "pids", limits.processes)?;
        if let Some(cpu) = limits.cpu_time {
            let secs = cpu.as_secs_f64().ceil() as u64;
            let hard = if pooled {
                nix::libc::RLIM_INFINITY
            } else {
                secs + CPU_GRACE
            };
            prepared.rlimits.push((Resource::RLIMIT_CPU, secs, hard));
        }
        if let Some(n) = limits.open_files {
            prepared.rlimits.push((Resource::RLIMIT_NOFILE, n, n));
        }
        if let (Some(bytes), false) = (limits.memory, memory_cgroup) {
            prepared.rlimits.push((Resource::RLIMIT_DATA, bytes, bytes));
        }
        if let (Some(n), false) = (limits.processes, pids_cgroup) {
            prepared.rlimits.push((Resource::RLIMIT_NPROC, n, n));
        }
        Ok(prepared)
    }

    /// What the child runs before exec: join the cgroups, set the rlimits.
    /// Only system calls, as is required between fork and exec.
    pub fn hook(&self) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
        let procs: Vec<RawFd> = self.procs.iter().map(AsRawFd::as_raw_fd).collect();
        let rlimits = self.rlimits.clone();
        move || {
            for fd in &procs {
                // SAFETY: the fd is open (held by Prepared until the spawn
                // returns); "0" moves the writing process into the cgroup.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                nix::unistd::write(fd, b"0").map_err(std::io::Error::from)?;
            }
            for (resource, soft, hard) in &rlimits {
                nix::sys::resource::setrlimit(*resource, *soft, *hard)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        }
    }

    /// The descriptors are needed only until the child has started.
    pub fn started(&mut self) {
        self.procs.clear();
    }

    /// What the cgroups counted so far (while they exist).
    pub fn usage(&self) -> Usage {
        let count = |controller| {
            self.groups
                .iter()
                .filter(|g| g.controller == controller)
                .map(Group::count)
                .sum()
        };
        let has = |controller| self.groups.iter().any(|g| g.controller == controller);
        Usage {
            oom_kills: count("memory"),
            forks_refused: count("pids"),
            memory_cgroup: has("memory"),
            pids_cgroup: has("pids"),
        }
    }

    /// What the cgroups saw, then removes them (the process is gone).
    pub async fn finish(self) -> Usage {
        let usage = self.usage();
        for group in self.groups {
            group.remove().await;
        }
        usage
    }
}

/// Gives a pool process `limit` more CPU time from now: its soft
/// RLIMIT_CPU is moved to what it has used plus `limit` (so each request
/// gets the whole limit, not what the earlier ones left). SIGXCPU comes at
/// the soft limit; the hard limit stays open (raising it again would need
/// privilege), so a pool process that ignores SIGXCPU is stopped by its
/// task's `timeout`, not by the kernel.
pub fn renew_cpu_limit(pid: u32, limit: Duration) {
    let Some(used) = cpu_seconds(pid) else {
        return;
    };
    let soft = used + limit.as_secs_f64().ceil() as u64;
    let rlimit = nix::libc::rlimit {
        rlim_cur: soft,
        rlim_max: nix::libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads `rlimit` and writes nothing (a null old-limit
    // pointer); the pid is our child.
    let rv = unsafe {
        nix::libc::prlimit(
            pid as nix::libc::pid_t,
            nix::libc::RLIMIT_CPU,
            &rlimit,
            std::ptr::null_mut(),
        )
    };
    if rv != 0 {
        tracing::warn!(
            pid,
            "cannot renew the CPU limit of a pool process: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// CPU seconds (user and system, rounded up, so that the next request
/// gets at least the whole limit) a process has used.
fn cpu_seconds(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // After the command: state is field 3; utime and stime are 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Some((utime + stime).div_ceil(ticks))
}

/// The outcome of a run with `limits`: a failure that a limit caused
/// becomes [`Outcome::LimitExceeded`], naming the limit, keeping what the
/// run said as its cause. How each is told:
/// - memory: the cgroup counted an OOM kill; or, under RLIMIT_DATA, the
///   task reported a `MemoryError`;
/// - CPU time: the process died of SIGXCPU (a process that ignores it is
///   killed at the hard limit, 5 s of CPU later, by SIGKILL: the kernel
///   does not say why, and that run shows as a failure by signal 9);
/// - processes: the cgroup counted a refused fork; or, under RLIMIT_NPROC,
///   "Resource temporarily unavailable" in the task's error;
/// - open files: "Too many open files" in the task's error or stderr.
pub fn judge(limits: &ResourceLimits, outcome: Outcome, usage: &Usage, stderr: &str) -> Outcome {
    let Outcome::Failed { exit, error, .. } = &outcome else {
        return outcome;
    };
    let said = |needle: &str| {
        stderr.contains(needle)
            || error
                .as_ref()
                .is_some_and(|e| e.message.contains(needle) || e.kind.contains(needle))
    };
    let signal = match exit {
        Some(ExitState::Signal(sig)) => Some(*sig),
        _ => None,
    };
    let killed = signal.is_some();
    let hit = if let (Some(bytes), true) = (limits.memory, usage.oom_kills > 0) {
        Some((Limit::Memory, bytes))
    } else if let (Some(cpu), Some(nix::libc::SIGXCPU)) = (limits.cpu_time, signal) {
        // The limit as enforced: whole seconds, rounded up.
        Some((Limit::CpuTime, cpu.as_secs_f64().ceil() as u64))
    } else if let (Some(bytes), false, true) =
        (limits.memory, usage.memory_cgroup, said("MemoryError"))
    {
        Some((Limit::Memory, bytes))
    } else if let (Some(n), true) = (limits.processes, usage.forks_refused > 0) {
        Some((Limit::Processes, n))
    } else if let (Some(n), false, true) = (
        limits.processes,
        usage.pids_cgroup,
        said("Resource temporarily unavailable"),
    ) {
        Some((Limit::Processes, n))
    } else if let (Some(n), true) = (limits.open_files, said("Too many open files")) {
        Some((Limit::OpenFiles, n))
    } else {
        None
    };
    match hit {
        Some((limit, value)) => Outcome::LimitExceeded {
            limit,
            value,
            killed,
            cause: outcome.to_string(),
        },
        None => outcome,
    }
}
