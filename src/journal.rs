//! The journal: task records on disk, so that an accepted task survives a
//! crash of the control plane.
//!
//! It is an append-only log, `journal.log` in the data dir. Each change (a
//! task's new record, or the removal of one) is one entry:
//!
//! ```text
//! length: u32 LE | crc32: u32 LE | kind: u8 | payload (length - 1 bytes)
//! ```
//!
//! where the CRC covers kind and payload, kind 1 is a put (the record as
//! JSON) and kind 2 a delete (the task id). The file starts with an 8-byte
//! magic. Replaying the log in order gives each task's latest record.
//!
//! The file is grown ahead of the log in zeroed chunks of [`GROW_BY`], and an
//! entry of length 0 marks the end. Appending then overwrites zeros within
//! the file's size, so `fdatasync` writes just the data, not the inode too (a
//! third of the sync's cost, measured with `perf` on ext4).
//!
//! Writes go to one writer thread. It commits in groups: changes that arrive
//! while a commit is under way wait for the next one and share its single
//! `write` and `fdatasync`, so durability costs one sync per group, not one
//! per task. Each write may carry a completion that runs once the change is
//! on disk (or failed to get there): that is how a submit is acknowledged
//! only after it is durable.
//!
//! A write is committed [`Commit::Now`] (somebody waits on it: the group
//! starts as soon as the writer is free) or [`Commit::Soon`] (nobody does
//! yet: it waits up to [`LAZY_FOR`] for a `Now` write to share that sync).
//! A `Soon` write does not wake the writer unless the queue was empty, so a
//! stream of them costs one wakeup and one sync per [`LAZY_FOR`], not one
//! per write. Within a group only each task's last change is written: a
//! task that started and finished while the group gathered costs one entry.
//!
//! A crash can leave half an entry at the end; the CRC finds it, and the
//! replay keeps everything before it. The log is compacted (the live records
//! written to a new file, which then replaces it with a `rename`) on open and
//! whenever it grows past [`COMPACT_AT`] and four times its live size, so its
//! size stays bounded by what the control plane still holds.
//!
//! A lock on `journal.lock` (`flock`) keeps a second process off the same data
//! dir. The control plane owns one journal (`--data-dir`): see
//! `control_plane::core` for what it records and when, and for the replay.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::oneshot;

use crate::protocol::TaskRecord;

/// The journal's file name in the data dir.
pub const FILE: &str = "journal.log";
/// Held (`flock`) while a journal is open.
const LOCK_FILE: &str = "journal.lock";
/// Where a compaction writes before it replaces [`FILE`].
const COMPACT_FILE: &str = "journal.log.compact";
const MAGIC: &[u8; 8] = b"FWJRNL01";
const PUT: u8 = 1;
const DELETE: u8 = 2;
/// Length and CRC.
const ENTRY_HEADER: usize = 8;
/// An entry longer than this is taken for garbage (records are limited to
/// 64 MiB by the wire protocol).
const MAX_ENTRY: usize = 256 << 20;
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
    #[error("the journal {} holds an unreadable record for task {task_id}: {reason}", path.display())]
    BadRecord {
        path: PathBuf,
        task_id: String,
        reason: String,
    },
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

impl Journal {
    /// Opens (or creates) the journal in `dir` and returns it with every
    /// record it holds.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<TaskRecord>), JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::CreateDir {
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
            .open(dir.join(LOCK_FILE))
            .map_err(|e| open_error(format!("cannot open {LOCK_FILE}: {e}")))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(JournalError::InUse { path });
            }
            Err((_, errno)) => return Err(open_error(format!("cannot lock {LOCK_FILE}: {errno}"))),
        };
        let (live, records) = replay(&path)?;
        let mut log = Log {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file: None,
            len: 0,
            allocated: 0,
            live: HashMap::new(),
            live_bytes: 0,
            _lock: lock,
        };
        // Starts every run on a clean file: no torn tail, no dead entries.
        log.compact(&live).map_err(open_error)?;
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            commits: AtomicU64::new(0),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("fastworker-journal".to_owned())
                .spawn(move || write_loop(log, &shared))
                .map_err(|e| open_error(format!("cannot start the writer thread: {e}")))?
        };
        Ok((
            Journal {
                path,
                shared,
                writer: Some(writer),
            },
            records,
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

/// The bytes an entry with a payload of `payload` bytes takes in the log.
fn entry_len(payload: usize) -> u64 {
    (ENTRY_HEADER + 1 + payload) as u64
}

fn encode(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// Reads the log: each live task's latest record, as stored and decoded.
#[allow(clippy::type_complexity)]
fn replay(path: &Path) -> Result<(HashMap<String, Vec<u8>>, Vec<TaskRecord>), JournalError> {
    let live = read_live(path)?;
    let mut records = Vec::with_capacity(live.len());
    for (task_id, json) in &live {
        let record = serde_json::from_slice(json).map_err(|e| JournalError::BadRecord {
            path: path.to_path_buf(),
            task_id: task_id.clone(),
            reason: e.to_string(),
        })?;
        records.push(record);
    }
    Ok((live, records))
}

/// Reads the log: each live task's latest record, as stored.
fn read_live(path: &Path) -> Result<HashMap<String, Vec<u8>>, JournalError> {
    let read_error = |reason: String| JournalError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(read_error(e.to_string())),
    };
    let mut live: HashMap<String, Vec<u8>> = HashMap::new();
    if bytes.is_empty() {
        return Ok(live);
    }
    if !bytes.starts_with(MAGIC) {
        return Err(read_error(
            "it does not start like a fastworker journal (wrong magic); move it away to start afresh".to_owned(),
        ));
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        if bytes[at..].iter().take(ENTRY_HEADER).all(|b| *b == 0) {
            break; // the end: the zeros the file was grown with
        }
        let Some(entry) = decode(&bytes[at..]) else {
            // A torn write at a crash: what follows was never acknowledged.
            tracing::warn!(
                journal = %path.display(),
                offset = at,
                dropped = bytes.len() - at,
                "the journal ends with an incomplete entry (a crash mid-write); it is dropped"
            );
            break;
        };
        at += ENTRY_HEADER + entry.len();
        let (kind, payload) = (entry[0], &entry[1..]);
        match kind {
            PUT => {
                let id = task_id_of(payload).map_err(|reason| JournalError::BadRecord {
                    path: path.to_path_buf(),
                    task_id: format!("at offset {}", at - entry.len() - ENTRY_HEADER),
                    reason,
                })?;
                live.insert(id, payload.to_vec());
            }
            DELETE => {
                live.remove(String::from_utf8_lossy(payload).as_ref());
            }
            other => {
                return Err(read_error(format!(
                    "unknown entry kind {other} at offset {}",
                    at - entry.len() - ENTRY_HEADER
                )));
            }
        }
    }
    Ok(live)
}

/// The entry (kind and payload) at the start of `bytes`, if it is whole
/// and its CRC holds.
fn decode(bytes: &[u8]) -> Option<&[u8]> {
    let header = bytes.get(..ENTRY_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len == 0 || len > MAX_ENTRY {
        return None;
    }
    let entry = bytes.get(ENTRY_HEADER..ENTRY_HEADER + len)?;
    (crc32fast::hash(entry) == crc).then_some(entry)
}

/// The `task_id` of a record stored as JSON.
fn task_id_of(json: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Id {
        task_id: String,
    }
    serde_json::from_slice::<Id>(json)
        .map(|id| id.task_id)
        .map_err(|e| e.to_string())
}

/// The writer thread's side: the open file and what it holds.
struct Log {
    dir: PathBuf,
    path: PathBuf,
    /// `None` until the first compaction.
    file: Option<File>,
    /// Where the log ends (the file is longer: zeros follow).
    len: u64,
    /// The file's size.
    allocated: u64,
    /// The bytes each live task's latest entry takes: a compaction keeps
    /// those entries (read back from the log), and drops the rest.
    live: HashMap<String, u64>,
    /// Their sum.
    live_bytes: u64,
    _lock: Flock<File>,
}

impl Log {
    /// Appends one group of writes and syncs it.
    fn commit(&mut self, group: &[Write]) -> Result<(), String> {
        let changes: Vec<&Change> = group.iter().flat_map(|w| &w.changes).collect();
        // Replaying keeps each task's last change, so a group needs no other.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            last.insert(change.task_id(), i);
        }
        let mut buf = Vec::new();
        // Each change's task, and the bytes its entry takes if it is a put.
        let mut staged: Vec<(String, Option<u64>)> = Vec::with_capacity(last.len());
        for (i, change) in changes.iter().enumerate() {
            if last.get(change.task_id()) != Some(&i) {
                continue;
            }
            match change {
                Change::Put { task_id, json } => {
                    if json.is_empty() {
                        return Err(format!("the record of task {task_id} could not be encoded"));
                    }
                    encode(&mut buf, PUT, json);
                    staged.push((task_id.clone(), Some(entry_len(json.len()))));
                }
                Change::Delete(task_id) => {
                    encode(&mut buf, DELETE, task_id.as_bytes());
                    staged.push((task_id.clone(), None));
                }
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        let end = self.len + buf.len() as u64;
        if end > self.allocated {
            self.grow(end)
                .map_err(|e| format!("cannot grow {}: {e}", self.path.display()))?;
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| "the journal is not open".to_owned())?;
        if let Err(e) = file
            .write_all_at(&buf, self.len)
            .and_then(|()| file.sync_data())
        {
            // Zero what may have been half written, so that the next group
            // does not follow garbage.
            let _ = file.write_all_at(&vec![0; buf.len()], self.len);
            return Err(format!("cannot write {}: {e}", self.path.display()));
        }
        self.len += buf.len() as u64;
        for (task_id, put) in staged {
            let removed = match put {
                Some(bytes) => self.live.insert(task_id, bytes),
                None => self.live.remove(&task_id),
            };
            self.live_bytes = self.live_bytes + put.unwrap_or(0) - removed.unwrap_or(0);
        }
        if self.len > COMPACT_AT && self.len > 4 * self.live_bytes {
            let before = self.len;
            let compacted = read_live(&self.path)
                .map_err(|e| e.to_string())
                .and_then(|live| self.compact(&live));
            match compacted {
                Ok(()) => tracing::debug!(before, after = self.len, "journal compacted"),
                Err(e) => {
                    tracing::error!("journal compaction failed (the log stays as it is): {e}")
                }
            }
        }
        Ok(())
    }

    /// Makes the file at least `end` bytes long (and a chunk more), zeroed.
    fn grow(&mut self, end: u64) -> std::io::Result<()> {
        let file = self.file.as_ref().ok_or(std::io::ErrorKind::NotFound)?;
        let size = (end + 1).next_multiple_of(GROW_BY);
        let zeros = vec![0; usize::try_from(size - self.allocated).unwrap_or(usize::MAX)];
        file.write_all_at(&zeros, self.allocated)?;
        file.sync_all()?;
        self.allocated = size;
        Ok(())
    }

    /// Writes `live` (each live task's latest record, as read back from the
    /// log) to a new file and puts it in the log's place.
    fn compact(&mut self, live: &HashMap<String, Vec<u8>>) -> Result<(), String> {
        let tmp = self.dir.join(COMPACT_FILE);
        let live_bytes: u64 = live.values().map(|json| entry_len(json.len())).sum();
        let mut buf = Vec::with_capacity(MAGIC.len() + live_bytes as usize);
        buf.extend_from_slice(MAGIC);
        for json in live.values() {
            encode(&mut buf, PUT, json);
        }
        let len = buf.len() as u64;
        let allocated = (len + 1).next_multiple_of(GROW_BY);
        buf.resize(usize::try_from(allocated).unwrap_or(usize::MAX), 0);
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&buf)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename is durable once the directory is.
            File::open(&self.dir)?.sync_all()?;
            OpenOptions::new().read(true).write(true).open(&self.path)
        })();
        match written {
            Ok(file) => {
                self.file = Some(file);
                self.len = len;
                self.allocated = allocated;
                self.live = live
                    .iter()
                    .map(|(id, json)| (id.clone(), entry_len(json.len())))
                    .collect();
                self.live_bytes = live_bytes;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(format!("cannot rewrite {}: {e}", self.path.display()))
            }
        }
    }
}

/// The writer thread: waits until a group is due (see [`Commit`]), takes
/// every write queued, and commits them all at once.
fn write_loop(mut log: Log, shared: &Shared) {
    while let Some(group) = next_group(shared) {
        let result = log.commit(&group).inspect_err(|e| {
            tracing::error!(journal = %log.path.display(), "commit failed: {e}");
        });
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
mod tests {
    use super::*;
    use crate::manifest::Priority;
    use crate::protocol::Status;

    fn put(id: &str, status: Status) -> Change {
        Change::put(&TaskRecord::sample(id, status))
    }

    async fn write(journal: &Journal, changes: Vec<Change>) {
        let (done, on_disk) = oneshot::channel();
        journal.write(changes, Commit::Now, Some(reply_to(done)));
        on_disk.await.expect("writer answers").expect("committed");
    }

    /// Where each entry of the log at `path` starts, and where the log ends.
    fn entries(path: &Path) -> (Vec<usize>, usize) {
        let bytes = std::fs::read(path).expect("log");
        let (mut starts, mut at) = (Vec::new(), MAGIC.len());
        while let Some(entry) = decode(&bytes[at..]) {
            starts.push(at);
            at += ENTRY_HEADER + entry.len();
        }
        (starts, at)
    }

    fn statuses(records: &[TaskRecord]) -> Vec<(String, Status)> {
        let mut v: Vec<_> = records
            .iter()
            .map(|r| (r.task_id.clone(), r.status))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[tokio::test]
    async fn records_survive_a_reopen_and_deletes_stick() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (journal, records) = Journal::open(dir.path()).expect("open");
            assert!(records.is_empty());
            write(
                &journal,
                vec![put("a", Status::Queued), put("b", Status::Queued)],
            )
            .await;
            write(
                &journal,
                vec![put("a", Status::Success), Change::Delete("b".into())],
            )
            .await;
        }
        let (_journal, records) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(statuses(&records), [("a".to_owned(), Status::Success)]);
        assert_eq!(records[0].priority, Priority::High);
    }

    #[tokio::test]
    async fn a_soon_write_is_committed_with_no_now_write_to_follow() {
        let dir = tempfile::tempdir().expect("dir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        let (done, on_disk) = oneshot::channel();
        journal.write(
            vec![put("a", Status::Success)],
            Commit::Soon,
            Some(reply_to(done)),
        );
        tokio::time::timeout(std::time::Duration::from_secs(10), on_disk)
            .await
            .expect("committed within LAZY_FOR, not when the next write comes")
            .expect("answer")
            .expect("committed");
        assert_eq!(journal.commits(), 1);
    }

    #[tokio::test]
    async fn a_group_writes_only_each_tasks_last_change() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(FILE);
        {
            let (journal, _) = Journal::open(dir.path()).expect("open");
            let (_, before) = entries(&path);
            write(
                &journal,
                vec![
                    put("a", Status::Queued),
                    put("b", Status::Queued),
                    put("a", Status::Running),
                    Change::Delete("b".into()),
                    put("a", Status::Success),
                ],
            )
            .await;
            let (starts, _) = entries(&path);
            // One entry for a (its last put), one for b (its delete).
            assert_eq!(starts.iter().filter(|s| **s >= before).count(), 2);
        }
        let (_journal, records) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(statuses(&records), [("a".to_owned(), Status::Success)]);
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let (first, _) = Journal::open(dir.path()).expect("open");
        let err = Journal::open(dir.path()).expect_err("in use");
        assert!(matches!(err, JournalError::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        // The lock goes with the journal.
        drop(first);
        Journal::open(dir.path()).expect("open after the first closed");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn writes_that_wait_together_share_a_commit() {
        let dir = tempfile::tempdir().expect("dir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        let journal = Arc::new(journal);
        let waits: Vec<_> = (0..500)
            .map(|i| {
                let (done, on_disk) = oneshot::channel();
                journal.write(
                    vec![put(&format!("t{i}"), Status::Queued)],
                    Commit::Now,
                    Some(reply_to(done)),
                );
                on_disk
            })
            .collect();
        for wait in waits {
            wait.await.expect("answer").expect("committed");
        }
        let commits = journal.commits();
        assert!(commits < 500, "500 writes took {commits} commits");
        drop(journal);
        let (_journal, records) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(records.len(), 500);
    }

    #[tokio::test]
    async fn a_torn_last_entry_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (journal, _) = Journal::open(dir.path()).expect("open");
            write(&journal, vec![put("a", Status::Queued)]).await;
            write(&journal, vec![put("b", Status::Queued)]).await;
        }
        // A crash in the middle of the last append: its end never reached
        // the disk.
        let path = dir.path().join(FILE);
        let (_, end) = entries(&path);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("log")
            .write_all_at(&[0; 3], end as u64 - 3)
            .expect("tear");
        let (journal, records) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(statuses(&records), [("a".to_owned(), Status::Queued)]);
        // Appends after the cut are read back too.
        write(&journal, vec![put("c", Status::Queued)]).await;
        drop(journal);
        let (_journal, records) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(
            statuses(&records),
            [
                ("a".to_owned(), Status::Queued),
                ("c".to_owned(), Status::Queued)
            ]
        );
    }

    #[tokio::test]
    async fn a_corrupt_entry_ends_the_replay() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (journal, _) = Journal::open(dir.path()).expect("open");
            write(&journal, vec![put("a", Status::Queued)]).await;
            write(&journal, vec![put("b", Status::Queued)]).await;
        }
        let path = dir.path().join(FILE);
        let (starts, _) = entries(&path);
        assert_eq!(starts.len(), 2);
        let mut bytes = std::fs::read(&path).expect("log");
        bytes[starts[1] + ENTRY_HEADER + 5] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        let (_journal, records) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(statuses(&records), [("a".to_owned(), Status::Queued)]);
    }

    #[tokio::test]
    async fn the_log_is_compacted_to_its_live_records() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(FILE);
        {
            let (journal, _) = Journal::open(dir.path()).expect("open");
            for i in 0..200 {
                let id = format!("t{i}");
                write(&journal, vec![put(&id, Status::Queued)]).await;
                write(&journal, vec![put(&id, Status::Running)]).await;
                if i % 2 == 0 {
                    write(&journal, vec![Change::Delete(id)]).await;
                }
            }
        }
        let (_, before) = entries(&path);
        let (_journal, records) = Journal::open(dir.path()).expect("reopen");
        let (_, after) = entries(&path);
        assert_eq!(records.len(), 100);
        assert!(records.iter().all(|r| r.status == Status::Running));
        assert!(after * 4 < before, "{before} bytes became {after}");
    }

    #[tokio::test]
    async fn a_growing_log_is_compacted_while_open() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(FILE);
        let (journal, _) = Journal::open(dir.path()).expect("open");
        // 320 new states of one task, 64 KiB each: 20 MiB of log, one live record.
        let mut record = TaskRecord::sample("big", Status::Queued);
        for i in 0..320 {
            record.args = vec![serde_json::json!(format!("{i:065535}"))];
            write(&journal, vec![Change::put(&record)]).await;
        }
        let size = std::fs::metadata(&path).expect("log").len();
        assert!(size < COMPACT_AT, "the file is {size} bytes");
        drop(journal);
        let (_journal, records) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].args, record.args);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_journal_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join(FILE), "hello").expect("write");
        let err = Journal::open(dir.path()).expect_err("not a journal");
        assert!(err.to_string().contains("wrong magic"), "{err}");
    }

    #[tokio::test]
    async fn an_unreadable_record_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let mut bytes = MAGIC.to_vec();
        encode(&mut bytes, PUT, br#"{"task_id": "broken", "status": 7}"#);
        std::fs::write(dir.path().join(FILE), bytes).expect("write");
        let err = Journal::open(dir.path()).expect_err("bad record");
        assert!(
            err.to_string()
                .contains("unreadable record for task broken"),
            "{err}"
        );
    }
}
