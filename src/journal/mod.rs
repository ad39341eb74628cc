//! The journal: task records on disk, so that an accepted task survives a
//! crash of the control plane.
//!
//! It is an append-only log, `journal.log` in the data dir (its bytes:
//! [`format`]). Each change (a task's new record, or the removal of one) is
//! one entry; replaying the log in order gives each task's latest record.
//!
//! Writes go to one writer thread ([`log`]). It commits in groups: changes
//! that arrive while a commit is under way wait for the next one and share
//! its single `write` and `fdatasync`, so durability costs one sync per
//! group, not one per task. Each group ends with a commit marker. Each write
//! may carry a completion that runs once the change is on disk (or failed
//! to get there): that is how a submit is acknowledged only after it is
//! durable.
//!
//! A write is committed [`Commit::Now`] (somebody waits on it: the group
//! starts as soon as the writer is free) or [`Commit::Soon`] (nobody does
//! yet: it waits up to [`LAZY_FOR`] for a `Now` write to share that sync).
//! A `Soon` write does not wake the writer unless the queue was empty, so a
//! stream of them costs one wakeup and one sync per [`LAZY_FOR`], not one
//! per write. Within a group only each task's last change is written: a
//! task that started and finished while the group gathered costs one entry.
//!
//! The file is grown ahead of the log in zeroed chunks of [`GROW_BY`].
//! Appending then overwrites zeros within the file's size, so `fdatasync`
//! writes just the data, not the inode too (a third of the sync's cost,
//! measured with `perf` on ext4).
//!
//! Opening a journal ([`recover`]) reads it back. A group half written at a
//! crash (a torn tail) is dropped; an unreadable stretch with acknowledged
//! changes after it is damage, and the journal refuses to open rather than
//! rewrite away what it could not read: `fastworker journal check` and
//! `repair` are the operator's tools. A record that cannot be decoded is
//! quarantined (kept aside as a file) and reported, and the rest is opened.
//! The log is then compacted (the live entries copied to a new file that
//! replaces it with a `rename`), and again whenever it grows past
//! [`COMPACT_AT`] and four times its live size, so its size stays bounded by
//! what the control plane still holds.
//!
//! A lock on `journal.lock` (`flock`) keeps a second process off the same data
//! dir. The control plane owns one journal (`--data-dir`): see
//! `control_plane::core` for what it records and when, and for the replay.

pub mod format;
mod log;
pub mod recover;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::oneshot;

use self::format::Span;
use self::log::Log;
pub use self::recover::{Replay, Report};
use crate::protocol::TaskRecord;

/// The journal's file name in the data dir.
pub const FILE: &str = "journal.log";
/// Held (`flock`) while a journal is open.
const LOCK_FILE: &str = "journal.lock";
/// The log is compacted once it is larger than this and four times its live
/// records.
pub const COMPACT_AT: u64 = 16 << 20;
/// How long a [`Commit::Soon`] write may wait for a [`Commit::Now`] one, to
/// share its sync.
pub const LAZY_FOR: std::time::Duration = std::time::Duration::from_millis(20);
/// How much the file grows at a time, ahead of the log.
const GROW_BY: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create the data dir {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the journal {} is in use by another process (another control plane on the same --data-dir?)", path.display())]
    InUse { path: PathBuf },
    #[error("cannot open the journal {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("cannot read the journal {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error(
        "the journal {} is damaged: {} unreadable stretch{} ({} bytes, the first at offset {}) with acknowledged changes after {}, so this is not a write torn by a crash. Nothing was changed. `fastworker journal check --data-dir {}` shows what is readable; `fastworker journal repair --data-dir {}` keeps every readable record, quarantines the rest and keeps the original file beside the repaired one",
        path.display(),
        damaged.len(),
        if damaged.len() == 1 { "" } else { "es" },
        damaged.iter().map(|s| s.len).sum::<u64>(),
        damaged.first().map_or(0, |s| s.offset),
        if damaged.len() == 1 { "it" } else { "them" },
        shell_word(dir),
        shell_word(dir),
    )]
    Damaged {
        path: PathBuf,
        dir: PathBuf,
        damaged: Vec<Span>,
    },
}

/// A path as one shell word, for commands in messages.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A change to the journal.
#[derive(Debug, Clone)]
pub enum Change {
    /// Stores a task's record (new, or its new state), as JSON: see
    /// [`Change::put`]. Empty if it could not be encoded.
    Put { task_id: String, json: Vec<u8> },
    /// Forgets a task (its result expired).
    Delete(String),
}

impl Change {
    /// Stores `record`. It is encoded here, on the caller's thread, so that
    /// no copy of it has to go to the writer.
    pub fn put(record: &TaskRecord) -> Change {
        let json = serde_json::to_vec(record).unwrap_or_else(|e| {
            // Not seen: a record is strings, numbers and JSON values. The
            // commit that carries it fails, and says so.
            tracing::error!(task_id = %record.task_id, "cannot encode the record: {e}");
            Vec::new()
        });
        Change::Put {
            task_id: record.task_id.clone(),
            json,
        }
    }

    /// The bytes this change puts in the journal (0 for a delete).
    pub fn size(&self) -> usize {
        match self {
            Change::Put { json, .. } => json.len(),
            Change::Delete(_) => 0,
        }
    }

    fn task_id(&self) -> &str {
        match self {
            Change::Put { task_id, .. } | Change::Delete(task_id) => task_id,
        }
    }
}

/// Runs once the changes it came with are on disk (or failed to get there),
/// on the writer thread: it must not block for long.
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A [`Done`] that answers on a oneshot channel.
pub fn reply_to(tx: oneshot::Sender<Result<(), String>>) -> Done {
    Box::new(move |result| {
        let _ = tx.send(result);
    })
}

/// When a write is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// As soon as the writer is free: somebody waits on it.
    Now,
    /// Within [`LAZY_FOR`], or with the next `Now` write if that is sooner.
    Soon,
}

struct Write {
    changes: Vec<Change>,
    done: Option<Done>,
}

/// Writes handed over and not yet taken by the writer.
#[derive(Default)]
struct Queue {
    writes: Vec<Write>,
    /// A [`Commit::Now`] write is queued.
    now: bool,
    /// When the oldest queued write came.
    since: Option<Instant>,
    /// The writer sleeps on [`Shared::wake`].
    sleeping: bool,
    /// The journal is dropped: commit what is queued, then stop.
    closed: bool,
}

/// What the journal's handle and its writer thread share.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    commits: AtomicU64,
    /// Bytes committed since the start, and the log's length now.
    bytes: AtomicU64,
    size: AtomicU64,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while the lock was held leaves a queue that is still whole.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An open journal. Dropping it commits what was handed to it, stops the
/// writer thread and releases the lock.
pub struct Journal {
    path: PathBuf,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

/// Creates `dir` (and its parents) readable by its owner only, if it does
/// not exist: the journal holds every task's arguments and results. An
/// existing dir keeps its permissions.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A new file readable and writable by its owner only (the journal and
/// what is kept beside it hold tasks' arguments and results).
pub(crate) fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Replaces the file at `path` with `bytes`, readable by its owner only: a
/// new file, synced, renamed over the old one, so that a crash leaves one
/// or the other whole (for the small files kept beside the journal).
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = private_file(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Takes the data dir's lock, creating the dir and the lock file as needed.
fn lock(dir: &Path) -> Result<Flock<std::fs::File>, JournalError> {
    private_dir(dir).map_err(|source| JournalError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(FILE);
    let open_error = |reason: String| JournalError::Open {
        path: path.clone(),
        reason,
    };
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| open_error(format!("cannot open {LOCK_FILE}: {e}")))?;
    match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(JournalError::InUse { path }),
        Err((_, errno)) => Err(open_error(format!("cannot lock {LOCK_FILE}: {errno}"))),
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and returns it with what it
    /// holds (see [`recover::open`] for what opening does to the log).
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        let lock = lock(dir)?;
        let (log, replay) = recover::open(dir, lock)?;
        let path = log.path.clone();
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            commits: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            size: AtomicU64::new(log.len()),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("fastworker-journal".to_owned())
                .spawn(move || write_loop(log, &shared))
                .map_err(|e| JournalError::Open {
                    path: path.clone(),
                    reason: format!("cannot start the writer thread: {e}"),
                })?
        };
        Ok((
            Journal {
                path,
                shared,
                writer: Some(writer),
            },
            replay,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands `changes` to the writer, to be committed `when` says; `done`
    /// runs once they are on disk. Writes are committed in the order they
    /// are handed over.
    pub fn write(&self, changes: Vec<Change>, when: Commit, done: Option<Done>) {
        let mut queue = self.shared.queue();
        let first = queue.since.is_none();
        let now = when == Commit::Now && !queue.now;
        queue.writes.push(Write { changes, done });
        queue.since.get_or_insert_with(Instant::now);
        queue.now |= when == Commit::Now;
        // A sleeping writer wakes for a `Now` write, and for the first
        // write, to time its wait; not for each `Soon` one.
        let wake = queue.sleeping && (now || first);
        drop(queue);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// How many groups have been committed (each holds one or more writes).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// A handle that reads the journal's figures (for `/metrics`).
    pub fn meter(&self) -> Meter {
        Meter(Arc::clone(&self.shared))
    }
}

/// Reads a journal's figures while the core owns the journal.
#[derive(Clone)]
pub struct Meter(Arc<Shared>);

impl Meter {
    /// Groups committed since the start.
    pub fn commits(&self) -> u64 {
        self.0.commits.load(Ordering::Relaxed)
    }

    /// Bytes committed since the start.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// The log's length after the last commit (compactions shrink it).
    pub fn size(&self) -> u64 {
        self.0.size.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("commits", &self.commits())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // The writer commits what is queued, then stops.
        self.shared.queue().closed = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: waits until a group is due (see [`Commit`]), takes
/// every write queued, and commits them all at once.
fn write_loop(mut log: Log, shared: &Shared) {
    while let Some(group) = next_group(shared) {
        let changes: Vec<&Change> = group.iter().flat_map(|w| &w.changes).collect();
        let result = log
            .commit(&changes)
            .inspect_err(|e| {
                tracing::error!(journal = %log.path.display(), "commit failed: {e}");
            })
            .map(|written| {
                shared.bytes.fetch_add(written, Ordering::Relaxed);
            });
        shared.size.store(log.len(), Ordering::Relaxed);
        shared.commits.fetch_add(1, Ordering::Relaxed);
        for write in group {
            if let Some(done) = write.done {
                done(result.clone());
            }
        }
    }
}

/// The next group to commit, once it is due; `None` once the journal is
/// dropped and everything handed to it is committed.
fn next_group(shared: &Shared) -> Option<Vec<Write>> {
    let mut queue = shared.queue();
    loop {
        if queue.now || queue.closed {
            break;
        }
        queue.sleeping = true;
        queue = match queue.since {
            None => shared
                .wake
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            Some(since) => {
                let left = (since + LAZY_FOR).saturating_duration_since(Instant::now());
                if left.is_zero() {
                    queue.sleeping = false;
                    break;
                }
                shared
                    .wake
                    .wait_timeout(queue, left)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0
            }
        };
        queue.sleeping = false;
    }
    if queue.writes.is_empty() {
        return None; // closed, and nothing left
    }
    queue.now = false;
    queue.since = None;
    Some(std::mem::take(&mut queue.writes))
}

#[cfg(test)]
mod tests;
