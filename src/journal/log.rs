//! The writer thread's side of the journal: the open log file, appending a
//! group of changes with its commit marker and one sync, growing the file,
//! and compacting it to its live entries.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;

use super::format::{self, COMMIT, DELETE, MAGIC, PUT, Span};
use super::{COMPACT_AT, Change, GROW_BY};

/// Where a compaction writes before it replaces the log.
pub const COMPACT_FILE: &str = "journal.log.compact";

pub(super) struct Log {
    dir: PathBuf,
    pub path: PathBuf,
    file: File,
    /// Where the log ends (the file is longer: zeros follow).
    len: u64,
    /// The file's size.
    allocated: u64,
    /// Each live task's latest entry: a compaction copies those, and drops
    /// the rest.
    live: HashMap<String, Span>,
    /// The bytes they take.
    live_bytes: u64,
    /// The number of the last group committed.
    group: u64,
    _lock: Flock<File>,
}

impl Log {
    /// Where the log ends, in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Writes the entries `live` names, copied from `from`, as a new log in
    /// `dir` that replaces the one at `path`, and opens it for appending.
    pub fn compacted(
        dir: &Path,
        path: &Path,
        from: Option<&File>,
        live: &HashMap<String, Span>,
        group: u64,
        lock: Flock<File>,
    ) -> Result<Log, String> {
        let (file, len, allocated, live, live_bytes) = rewrite(dir, path, from, live, group + 1)?;
        Ok(Log {
            dir: dir.to_path_buf(),
            path: path.to_path_buf(),
            file,
            len,
            allocated,
            live,
            live_bytes,
            group: group + 1,
            _lock: lock,
        })
    }

    /// Where each live task's entry is, in this log's file.
    pub fn live(&self) -> &HashMap<String, Span> {
        &self.live
    }

    /// Appends one group of changes with its commit marker and syncs it.
    /// Writes `changes` as one group and syncs it; returns the bytes written.
    pub fn commit(&mut self, changes: &[&Change]) -> Result<u64, String> {
        // Replaying keeps each task's last change, so a group needs no other.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            last.insert(change.task_id(), i);
        }
        let mut buf = Vec::new();
        // Each change's task, and where its entry goes if it is a put.
        let mut staged: Vec<(String, Option<Span>)> = Vec::with_capacity(last.len());
        for (i, change) in changes.iter().enumerate() {
            if last.get(change.task_id()) != Some(&i) {
                continue;
            }
            let offset = self.len + buf.len() as u64;
            match change {
                Change::Put { task_id, json } => {
                    if json.is_empty() {
                        return Err(format!("the record of task {task_id} could not be encoded"));
                    }
                    format::encode(&mut buf, PUT, json);
                    let len = format::entry_len(json.len());
                    staged.push((task_id.clone(), Some(Span { offset, len })));
                }
                Change::Delete(task_id) => {
                    format::encode(&mut buf, DELETE, task_id.as_bytes());
                    staged.push((task_id.clone(), None));
                }
            }
        }
        if buf.is_empty() {
            return Ok(0);
        }
        format::encode(&mut buf, COMMIT, &(self.group + 1).to_le_bytes());
        let end = self.len + buf.len() as u64;
        if end > self.allocated {
            self.grow(end)
                .map_err(|e| format!("cannot grow {}: {e}", self.path.display()))?;
        }
        if let Err(e) = self
            .file
            .write_all_at(&buf, self.len)
            .and_then(|()| self.file.sync_data())
        {
            // Zero what may have been half written, so that the next group
            // does not follow garbage.
            let _ = self.file.write_all_at(&vec![0; buf.len()], self.len);
            return Err(format!("cannot write {}: {e}", self.path.display()));
        }
        let written = buf.len() as u64;
        self.len = end;
        self.group += 1;
        for (task_id, put) in staged {
            let removed = match put {
                Some(span) => self.live.insert(task_id, span),
                None => self.live.remove(&task_id),
            };
            self.live_bytes =
                self.live_bytes + put.map_or(0, |s| s.len) - removed.map_or(0, |s| s.len);
        }
        if self.len > COMPACT_AT && self.len > 4 * self.live_bytes {
            let before = self.len;
            match self.compact() {
                Ok(()) => tracing::debug!(before, after = self.len, "journal compacted"),
                Err(e) => {
                    tracing::error!("journal compaction failed (the log stays as it is): {e}")
                }
            }
        }
        Ok(written)
    }

    /// Makes the file at least `end` bytes long (and a chunk more), zeroed.
    fn grow(&mut self, end: u64) -> std::io::Result<()> {
        let size = (end + 1).next_multiple_of(GROW_BY);
        let zeros = vec![0; usize::try_from(size - self.allocated).unwrap_or(usize::MAX)];
        self.file.write_all_at(&zeros, self.allocated)?;
        self.file.sync_all()?;
        self.allocated = size;
        Ok(())
    }

    /// Rewrites the log with only its live entries.
    fn compact(&mut self) -> Result<(), String> {
        let (file, len, allocated, live, live_bytes) = rewrite(
            &self.dir,
            &self.path,
            Some(&self.file),
            &self.live,
            self.group + 1,
        )?;
        self.file = file;
        self.len = len;
        self.allocated = allocated;
        self.live = live;
        self.live_bytes = live_bytes;
        self.group += 1;
        Ok(())
    }
}

type Rewritten = (File, u64, u64, HashMap<String, Span>, u64);

/// Copies the entries `live` names from `from` (in their order there) to a
/// new file, ends it with commit marker `group`, pads it with zeros, and
/// renames it over `path`. Holds one entry in memory at a time.
fn rewrite(
    dir: &Path,
    path: &Path,
    from: Option<&File>,
    live: &HashMap<String, Span>,
    group: u64,
) -> Result<Rewritten, String> {
    let tmp = dir.join(COMPACT_FILE);
    let mut order: Vec<(&String, &Span)> = live.iter().collect();
    order.sort_by_key(|(_, span)| span.offset);
    let written = (|| -> std::io::Result<Rewritten> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, super::private_file(&tmp)?);
        out.write_all(MAGIC)?;
        let mut at = MAGIC.len() as u64;
        let mut moved = HashMap::with_capacity(order.len());
        let mut entry = Vec::new();
        if let Some(from) = from {
            for (task_id, span) in order {
                entry.resize(usize::try_from(span.len).unwrap_or(usize::MAX), 0);
                from.read_exact_at(&mut entry, span.offset)?;
                out.write_all(&entry)?;
                moved.insert(
                    task_id.clone(),
                    Span {
                        offset: at,
                        len: span.len,
                    },
                );
                at += span.len;
            }
        }
        let mut marker = Vec::new();
        format::encode(&mut marker, COMMIT, &group.to_le_bytes());
        out.write_all(&marker)?;
        let len = at + marker.len() as u64;
        let allocated = (len + 1).next_multiple_of(GROW_BY);
        let zeros = vec![0; 64 << 10];
        let mut left = allocated - len;
        while left > 0 {
            let n = left.min(zeros.len() as u64);
            out.write_all(&zeros[..usize::try_from(n).unwrap_or(0)])?;
            left -= n;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is.
        File::open(dir)?.sync_all()?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let live_bytes = moved.values().map(|s: &Span| s.len).sum();
        Ok((file, len, allocated, moved, live_bytes))
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rewrite {}: {e}", path.display())
    })
}
