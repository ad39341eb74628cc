//! Starting a task process in its own process group, stopping the group, and
//! keeping bounded evidence of what it wrote. The only code that spawns or
//! signals task processes.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::time::{Instant, sleep};

use super::outcome::{ExitState, Outcome};
use crate::manifest::TaskSpec;

/// How often a stopping group is checked for members that are still alive.
const GROUP_POLL: Duration = Duration::from_millis(10);

/// A started task process with its pipes.
#[derive(Debug)]
pub struct TaskProcess {
    pub child: Child,
    pub group: ProcessGroup,
    pub pid: u32,
    pub stdin: Option<ChildStdin>,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// Variables of fastworker's own that tasks do not inherit.
pub const SECRET_VARS: [&str; 4] = [
    "FASTWORKER_AUTH_TOKEN",
    "FASTWORKER_AUTH_TOKEN_FILE",
    "FASTWORKER_WORKER_TOKEN",
    "FASTWORKER_WORKER_TOKEN_FILE",
];

/// Names, in a task process's environment, what started it (see
/// [`kill_strays`]).
pub const OWNER_VAR: &str = "FASTWORKER_OWNER";

/// What [`kill_strays`] found and killed.
#[derive(Debug, Default)]
pub struct Strays {
    /// Process groups killed.
    pub groups: usize,
    /// The tasks those one-shot processes were running (their
    /// `FASTWORKER_TASK_ID`); pool processes serve many tasks and name none.
    pub task_ids: std::collections::BTreeSet<String>,
}

/// Kills the process group of every process whose environment holds
/// `FASTWORKER_OWNER=owner`: tasks left running by an earlier process with
/// the same owner that was killed (`kill -9`) before it could stop them.
/// A process that cleared its environment (`env -i`) is not found; one that
/// is not ours to signal is skipped.
pub fn kill_strays(owner: &str) -> Strays {
    let needle = format!("{OWNER_VAR}={owner}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Strays::default();
    };
    let me = nix::unistd::getpgrp();
    let mut groups = std::collections::BTreeSet::new();
    let mut task_ids = std::collections::BTreeSet::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue; // gone, or not ours
        };
        let mut vars = environ.split(|b| *b == 0);
        if vars.clone().any(|var| var == needle.as_bytes())
            && let Ok(pgid) = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            && pgid != me
        {
            groups.insert(pgid);
            if let Some(id) = vars.find_map(|var| var.strip_prefix(b"FASTWORKER_TASK_ID=")) {
                task_ids.insert(String::from_utf8_lossy(id).into_owned());
            }
        }
    }
    let groups = groups
        .into_iter()
        .filter(|pgid| nix::sys::signal::killpg(*pgid, nix::sys::signal::Signal::SIGKILL).is_ok())
        .count();
    Strays { groups, task_ids }
}

/// Starts `spec`'s program with piped stdio, in a new process group, with
/// `extra_env` set on top of the task's environment, and the resource
/// limits `limits` prepared (its cgroups and rlimits, set in the child).
pub fn spawn(
    spec: &TaskSpec,
    extra_env: &[(&str, &str)],
    limits: Option<&super::limits::Prepared>,
) -> Result<TaskProcess, Outcome> {
    let launch = &spec.launch;
    let program = launch
        .program
        .as_ref()
        .map_err(|reason| Outcome::SpawnFailed {
            program: launch.requested.clone().into(),
            message: reason.clone(),
            transient: false,
        })?;
    let mut cmd = Command::new(program);
    cmd.args(&launch.args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if !spec.inherit_env {
        cmd.env_clear();
    }
    // The control plane's own secrets do not pass to tasks (a task's output
    // goes back to whoever submitted it); a task that needs one names it in
    // its `env`.
    for secret in SECRET_VARS {
        cmd.env_remove(secret);
    }
    // A task's trace context is its attempt's (set below for a one-shot
    // run, per request in a pool), never the control plane's own.
    cmd.env_remove("TRACEPARENT").env_remove("TRACESTATE");
    cmd.envs(&spec.env);
    cmd.envs(
        extra_env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    // No pre_exec hook unless the task has resource limits (e.g. no
    // PR_SET_PDEATHSIG): any hook makes std fork+exec instead of
    // posix_spawn, which measured ~10% slower per one-shot task
    // (docs/benchmarks.md). Without it, a fastworker killed with SIGKILL
    // leaves its tasks to finish: pool processes exit on stdin EOF, one-shot
    // processes end with their task (and the next start kills what is left).
    if let Some(limits) = limits {
        #[allow(unsafe_code)]
        // SAFETY: the hook makes only system calls (write, setrlimit), as
        // is required between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd.as_std_mut(), limits.hook());
        }
    }

    let mut child = cmd.spawn().map_err(|e| Outcome::SpawnFailed {
        program: program.clone(),
        message: spawn_error_message(&e),
        transient: is_shortage(&e),
    })?;
    let pid = child.id().unwrap_or_default();
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three pipes were requested");
    };
    Ok(TaskProcess {
        child,
        group: ProcessGroup(Pid::from_raw(pid as i32)),
        pid,
        stdin: Some(stdin),
        stdout,
        stderr,
    })
}

/// Whether a spawn failed for a shortage of this host or process (it may
/// work later) rather than something about the task.
fn is_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::EAGAIN | Errno::ENOMEM)
    )
}

fn spawn_error_message(e: &io::Error) -> String {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => "no such file or directory".to_owned(),
        Some(Errno::EACCES) => "permission denied (is the file executable?)".to_owned(),
        Some(Errno::ENOEXEC) => {
            "exec format error (a script needs a #! line, or set `interpreter`)".to_owned()
        }
        _ => e.to_string(),
    }
}

/// A task's process group (its id is the task process's pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup(Pid);

impl ProcessGroup {
    /// Sends `signal` to every process in the group. A group that is already
    /// gone is not an error.
    pub fn signal(self, signal: Signal) {
        match killpg(self.0, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pgid = %self.0, %signal, "cannot signal process group: {e}"),
        }
    }

    /// Whether any live process (not a zombie) is still in the group.
    ///
    /// `killpg(pgid, 0)` alone counts zombies: a grandchild orphaned by the
    /// task's exit stays a zombie until init reaps it, which was seen to take
    /// over a second. So a positive answer is checked against `/proc`.
    pub fn alive(self) -> bool {
        killpg(self.0, None).is_ok() && has_live_member(self.0.as_raw())
    }

    /// Kills what is left of the group once its leader has been reaped: at
    /// once, or (while a stop is under way) when the grace period ends.
    pub async fn reap_strays(self, kill_at: Option<Instant>) {
        if let Some(kill_at) = kill_at {
            while self.alive() && Instant::now() < kill_at {
                sleep(GROUP_POLL).await;
            }
        }
        self.signal(Signal::SIGKILL);
    }
}

/// Whether `/proc` lists a process in group `pgid` that is not a zombie
/// (true where `/proc` cannot be read, to err on the side of waiting).
fn has_live_member(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            // Fields after the parenthesized command: state, ppid, pgrp, ...
            let mut fields = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
            pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
        })
}

/// Ends a stop that began with SIGTERM: waits up to `grace` for the leader,
/// then kills the whole group. Returns the leader's exit status.
pub async fn stop(
    child: &mut Child,
    group: ProcessGroup,
    grace: Duration,
) -> io::Result<ExitStatus> {
    group.signal(Signal::SIGTERM);
    let kill_at = Instant::now() + grace;
    let status = match tokio::time::timeout_at(kill_at, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            group.signal(Signal::SIGKILL);
            child.wait().await
        }
    };
    group.reap_strays(Some(kill_at)).await;
    status
}

pub fn exit_state(status: ExitStatus) -> ExitState {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitState::Code(code),
        (None, Some(sig)) => ExitState::Signal(sig),
        (None, None) => ExitState::Code(-1),
    }
}

/// The last `cap` bytes written to a stream, and how many came before them.
#[derive(Debug)]
pub struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Tail {
            buf: VecDeque::new(),
            cap,
            dropped: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.cap {
            self.dropped += (bytes.len() - self.cap) as u64;
            &bytes[bytes.len() - self.cap..]
        } else {
            bytes
        };
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.dropped += overflow as u64;
        self.buf.extend(bytes);
    }

    /// Takes the text out, leaving the tail empty.
    pub fn take(&mut self) -> String {
        let bytes: Vec<u8> = self.buf.drain(..).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let dropped = std::mem::take(&mut self.dropped);
        if dropped == 0 {
            text
        } else {
            format!("[{dropped} earlier bytes of stderr not kept]\n{text}")
        }
    }
}

/// Reads whatever a (non-blocking) pipe holds right now, without waiting.
/// Used by pools: when a reply arrives on stdout, the stderr the process
/// wrote before it is already in its pipe, and this collects it in order.
pub fn read_available(pipe: impl AsFd, mut sink: impl FnMut(&[u8])) {
    let mut chunk = [0u8; 8192];
    loop {
        match nix::unistd::read(pipe.as_fd(), &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => sink(&chunk[..n]),
        }
    }
}

/// The first bytes of some output, as text, for error messages.
pub fn head(bytes: &[u8]) -> String {
    const HEAD: usize = 200;
    let cut = bytes.len().min(HEAD);
    let mut text = String::from_utf8_lossy(&bytes[..cut]).into_owned();
    if bytes.len() > HEAD {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes_and_counts_the_rest() {
        let mut tail = Tail::new(4);
        tail.push(b"abc");
        tail.push(b"def");
        assert_eq!(tail.take(), "[2 earlier bytes of stderr not kept]\ncdef");
        tail.push(b"0123456789");
        assert_eq!(tail.take(), "[6 earlier bytes of stderr not kept]\n6789");
        assert_eq!(tail.take(), "");
    }

    #[test]
    fn head_is_bounded() {
        assert_eq!(head(b"abc"), "abc");
        assert_eq!(head(&[b'x'; 300]).chars().count(), 201);
    }
}
