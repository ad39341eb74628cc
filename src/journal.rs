//! The journal: task records on disk, so that an accepted task survives a
//! crash of the control plane.
//!
//! Storage is [redb](https://docs.rs/redb): an embedded, transactional
//! key-value store in one file (`journal.redb` in the data dir), with no
//! server to run. A write transaction commits with `fsync`; redb takes an
//! exclusive lock on the file, so a second process that opens the same data
//! dir is refused.
//!
//! Writes go to one writer thread. It commits in groups: changes that arrive
//! while a commit is under way wait for the next one and share its `fsync`,
//! so durability costs one sync per group, not one per task. Each change may
//! carry a completion that fires once the change is on disk: that is how a
//! submit is acknowledged only after it is durable.
//!
//! The control plane owns one (`--data-dir`): see `control_plane::core` for
//! what it records and when, and for the replay on start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::protocol::TaskRecord;

/// Task id → the task's record as JSON.
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// The journal's file name in the data dir.
pub const FILE: &str = "journal.redb";

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
    /// Stores a task's record (new, or its new state).
    Put(Box<TaskRecord>),
    /// Forgets a task (its result expired).
    Delete(String),
}

/// Fires once the changes it came with are on disk (or failed to get there).
pub type Done = oneshot::Sender<Result<(), String>>;

struct Write {
    changes: Vec<Change>,
    done: Option<Done>,
}

/// An open journal. Dropping it commits what was handed to it and stops the
/// writer thread.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    tx: Option<mpsc::Sender<Write>>,
    writer: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
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
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => JournalError::InUse { path: path.clone() },
            other => JournalError::Open {
                path: path.clone(),
                reason: other.to_string(),
            },
        })?;
        let records = load(&db, &path)?;
        let (tx, rx) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let writer = {
            let (commits, file) = (Arc::clone(&commits), path.clone());
            std::thread::Builder::new()
                .name("fastworker-journal".to_owned())
                .spawn(move || write_loop(&db, &rx, &commits, &file))
                .map_err(|e| JournalError::Open {
                    path: path.clone(),
                    reason: format!("cannot start the writer thread: {e}"),
                })?
        };
        Ok((
            Journal {
                path,
                tx: Some(tx),
                writer: Some(writer),
                commits,
            },
            records,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands `changes` to the writer; `done` fires once they are on disk.
    pub fn write(&self, changes: Vec<Change>, done: Option<Done>) {
        let write = Write { changes, done };
        if let Some(tx) = &self.tx
            && let Err(mpsc::SendError(write)) = tx.send(write)
            && let Some(done) = write.done
        {
            let _ = done.send(Err("the journal writer has stopped".to_owned()));
        }
    }

    /// How many transactions have been committed (each holds one or more writes).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the channel lets the writer commit what it has, then stop.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn load(db: &Database, path: &Path) -> Result<Vec<TaskRecord>, JournalError> {
    let read_error = |e: &dyn std::fmt::Display| JournalError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let txn = db.begin_read().map_err(|e| read_error(&e))?;
    let table = match txn.open_table(TASKS) {
        Ok(table) => table,
        // A new journal has no table until the first write.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(read_error(&e)),
    };
    let mut records = Vec::new();
    for entry in table.iter().map_err(|e| read_error(&e))? {
        let (key, value) = entry.map_err(|e| read_error(&e))?;
        let record: TaskRecord =
            serde_json::from_slice(value.value()).map_err(|e| JournalError::BadRecord {
                path: path.to_path_buf(),
                task_id: key.value().to_owned(),
                reason: e.to_string(),
            })?;
        records.push(record);
    }
    Ok(records)
}

/// The writer thread: waits for a write, takes every other write already
/// waiting, and commits them all in one transaction.
fn write_loop(db: &Database, rx: &mpsc::Receiver<Write>, commits: &AtomicU64, path: &Path) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let result = commit(db, &group).map_err(|e| {
            tracing::error!(journal = %path.display(), "commit failed: {e}");
            e
        });
        commits.fetch_add(1, Ordering::Relaxed);
        for write in group {
            if let Some(done) = write.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

fn commit(db: &Database, group: &[Write]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(TASKS).map_err(|e| e.to_string())?;
        for change in group.iter().flat_map(|w| &w.changes) {
            match change {
                Change::Put(record) => {
                    let bytes = serde_json::to_vec(record).map_err(|e| e.to_string())?;
                    table
                        .insert(record.task_id.as_str(), bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Change::Delete(task_id) => {
                    table.remove(task_id.as_str()).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Priority;
    use crate::protocol::Status;

    fn put(id: &str, status: Status) -> Change {
        Change::Put(Box::new(TaskRecord::sample(id, status)))
    }

    async fn write(journal: &Journal, changes: Vec<Change>) {
        let (done, on_disk) = oneshot::channel();
        journal.write(changes, Some(done));
        on_disk.await.expect("writer answers").expect("committed");
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
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].task_id.as_str(), records[0].status),
            ("a", Status::Success)
        );
        assert_eq!(records[0].priority, Priority::High);
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let (_first, _) = Journal::open(dir.path()).expect("open");
        let err = Journal::open(dir.path()).expect_err("in use");
        assert!(matches!(err, JournalError::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn writes_that_wait_together_share_a_commit() {
        let dir = tempfile::tempdir().expect("dir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        let journal = Arc::new(journal);
        let waits: Vec<_> = (0..500)
            .map(|i| {
                let (done, on_disk) = oneshot::channel();
                journal.write(vec![put(&format!("t{i}"), Status::Queued)], Some(done));
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
    async fn an_unreadable_record_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let db = Database::create(dir.path().join(FILE)).expect("db");
            let txn = db.begin_write().expect("txn");
            {
                let mut table = txn.open_table(TASKS).expect("table");
                table
                    .insert("broken", b"not json".as_slice())
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        let err = Journal::open(dir.path()).expect_err("bad record");
        assert!(
            err.to_string()
                .contains("unreadable record for task broken"),
            "{err}"
        );
    }
}
