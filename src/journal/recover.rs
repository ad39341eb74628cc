//! Reading a journal back: what opening one does with what it finds, and the
//! operator's `fastworker journal check` and `fastworker journal repair`.
//!
//! Opening ([`open`]):
//! - a torn tail (a group half written at a crash, never acknowledged) is
//!   dropped, its bytes saved to `journal.torn-<time>-<offset>.bin` in the
//!   data dir when they are not all zeros;
//! - damage (an unreadable stretch with acknowledged changes after it)
//!   refuses the open: nothing is changed, and the error says what to run;
//! - a record that cannot be decoded is quarantined: its bytes are written
//!   to `quarantine/` in the data dir (and synced) before the log is
//!   compacted without it, and it is reported; the rest opens;
//! - the log is compacted, and the records are handed over as a [`Replay`]
//!   that decodes them one at a time, oldest submit first.
//!
//! [`repair`] does what opening does, past damage too: it keeps every
//! readable record (a task whose latest change was in a damaged stretch
//! goes back to its last readable state), quarantines the rest, and keeps
//! the original file beside the repaired one.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::fcntl::Flock;

use super::format::{self, Scan, Span};
use super::log::Log;
use super::{FILE, JournalError};
use crate::protocol::TaskRecord;

/// Where undecodable records are kept, in the data dir.
pub const QUARANTINE_DIR: &str = "quarantine";

/// What a journal held when it was opened, decoded one record at a time.
#[derive(Debug, Default)]
pub struct Replay {
    file: Option<File>,
    /// The live entries in the compacted log, oldest submit first.
    order: Vec<Span>,
    /// Records that could not be decoded, and where their bytes went.
    pub quarantined: Vec<PathBuf>,
    /// A torn tail that was dropped, and where its bytes went (if anywhere).
    pub torn: Option<(Span, Option<PathBuf>)>,
}

impl Replay {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The records, oldest submit first, each with the bytes its JSON
    /// takes and decoded when it is reached (so only one is in memory here
    /// at a time).
    pub fn records(self) -> impl Iterator<Item = (TaskRecord, usize)> {
        let file = self.file;
        self.order.into_iter().filter_map(move |span| {
            let file = file.as_ref()?;
            match read_record(file, span) {
                Ok(record) => Some((record, payload_len(span))),
                // Decoded once already when the journal was opened.
                Err(e) => {
                    tracing::error!(
                        offset = span.offset,
                        "a journal record read at open can no longer be read: {e}"
                    );
                    None
                }
            }
        })
    }
}

fn payload_len(span: Span) -> usize {
    usize::try_from(span.len.saturating_sub(format::HEADER as u64 + 1)).unwrap_or(0)
}

fn read_record(file: &File, span: Span) -> Result<TaskRecord, String> {
    let payload = read_payload(file, span).map_err(|e| e.to_string())?;
    format::decode_record(&payload)
}

/// The payload (without header and kind) of the entry at `span`.
fn read_payload(file: &File, span: Span) -> std::io::Result<Vec<u8>> {
    let mut payload = vec![0; payload_len(span)];
    file.read_exact_at(&mut payload, span.offset + format::HEADER as u64 + 1)?;
    Ok(payload)
}

/// Opens the log in `dir` (the lock is held): see the module doc.
pub(super) fn open(dir: &Path, lock: Flock<File>) -> Result<(Log, Replay), JournalError> {
    let path = dir.join(FILE);
    let (file, scan) = read(&path)?;
    if !scan.damaged.is_empty() {
        return Err(JournalError::Damaged {
            path,
            dir: dir.to_path_buf(),
            damaged: scan.damaged,
        });
    }
    let torn = scan.torn.map(|torn| {
        let saved = file.as_ref().and_then(|f| save_torn(dir, f, torn));
        tracing::warn!(
            journal = %path.display(),
            offset = torn.offset,
            bytes = torn.len,
            saved = %saved.as_ref().map_or("(only zeros, not kept)".to_owned(), |p| p.display().to_string()),
            "the journal ends with a group half written at a crash (never acknowledged); it is dropped"
        );
        (torn, saved)
    });
    let (live, submitted, quarantined) = sort_out(dir, file.as_ref(), scan)?;
    let log = Log::compacted(dir, &path, file.as_ref(), &live, 0, lock).map_err(|reason| {
        JournalError::Open {
            path: path.clone(),
            reason,
        }
    })?;
    let mut order: Vec<(DateTime<Utc>, Span)> = log
        .live()
        .iter()
        .filter_map(|(id, span)| submitted.get(id).map(|at| (*at, *span)))
        .collect();
    order.sort_by_key(|(at, span)| (*at, span.offset));
    let replay = Replay {
        file: File::open(&path).ok(),
        order: order.into_iter().map(|(_, span)| span).collect(),
        quarantined,
        torn,
    };
    Ok((log, replay))
}

/// The log at `path` (if there is one) and what it holds.
fn read(path: &Path) -> Result<(Option<File>, Scan), JournalError> {
    let read_error = |reason: String| JournalError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, Scan::default())),
        Err(e) => return Err(read_error(e.to_string())),
    };
    let scan = format::scan(&file).map_err(read_error)?;
    Ok((Some(file), scan))
}

type Sorted = (
    HashMap<String, Span>,
    HashMap<String, DateTime<Utc>>,
    Vec<PathBuf>,
);

/// Decodes every live record once (one at a time): those that decode are
/// kept, with their submit time; the others are quarantined.
fn sort_out(dir: &Path, file: Option<&File>, mut scan: Scan) -> Result<Sorted, JournalError> {
    let mut submitted = HashMap::with_capacity(scan.live.len());
    let mut bad: Vec<(String, Span, String)> = scan
        .nameless
        .drain(..)
        .map(|(span, why)| (String::new(), span, format!("no task id: {why}")))
        .collect();
    if let Some(file) = file {
        for (task_id, span) in &scan.live {
            match read_record(file, *span) {
                Ok(record) => {
                    submitted.insert(task_id.clone(), record.submitted_at);
                }
                Err(why) => bad.push((task_id.clone(), *span, why)),
            }
        }
    }
    let mut quarantined = Vec::with_capacity(bad.len());
    for (task_id, span, why) in bad {
        scan.live.remove(&task_id);
        let Some(file) = file else { continue };
        let saved = quarantine(dir, file, &task_id, span).map_err(|e| JournalError::Open {
            path: dir.join(FILE),
            reason: format!(
                "the record of task {task_id:?} at offset {} cannot be decoded ({why}), and cannot be set aside: {e}",
                span.offset
            ),
        })?;
        tracing::error!(
            task_id = %task_id,
            offset = span.offset,
            kept_in = %saved.display(),
            "a journal record cannot be decoded ({why}); it is quarantined and the rest is taken back"
        );
        quarantined.push(saved);
    }
    Ok((scan.live, submitted, quarantined))
}

/// Writes the payload of the entry at `span` to the quarantine dir, synced.
fn quarantine(dir: &Path, file: &File, task_id: &str, span: Span) -> std::io::Result<PathBuf> {
    let qdir = dir.join(QUARANTINE_DIR);
    super::private_dir(&qdir)?;
    let name: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let path = qdir.join(format!(
        "{}-{}-{}.json",
        Utc::now().format("%Y%m%dT%H%M%S"),
        span.offset,
        if name.is_empty() { "unnamed" } else { &name }
    ));
    let payload = read_payload(file, span)?;
    write_synced(&path, &payload)?;
    File::open(&qdir)?.sync_all()?;
    Ok(path)
}

/// Keeps the bytes of a torn tail beside the log, unless they are all zeros.
fn save_torn(dir: &Path, file: &File, torn: Span) -> Option<PathBuf> {
    let mut bytes = vec![0; usize::try_from(torn.len.min(format::MAX_ENTRY as u64)).ok()?];
    file.read_exact_at(&mut bytes, torn.offset).ok()?;
    let end = bytes.iter().rposition(|b| *b != 0)? + 1;
    let path = dir.join(format!(
        "journal.torn-{}-{}.bin",
        Utc::now().format("%Y%m%dT%H%M%S"),
        torn.offset
    ));
    match write_synced(&path, &bytes[..end]) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::error!(
                "cannot keep the torn tail of the journal in {}: {e}",
                path.display()
            );
            None
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = super::private_file(path)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()
}

/// What `fastworker journal check` or `repair` found (and did).
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub path: PathBuf,
    /// The file's size, zeros past the log's end included.
    pub size: u64,
    pub entries: u64,
    /// Live records by status.
    pub records: BTreeMap<String, usize>,
    /// A half-written last group (dropped by the next start).
    pub torn: Option<Span>,
    /// Unreadable stretches with acknowledged changes after them.
    pub damaged: Vec<Span>,
    /// Records that cannot be decoded: task id, offset, why.
    pub undecodable: Vec<(String, u64, String)>,
    /// Files in the quarantine dir.
    pub quarantine: Vec<PathBuf>,
    /// Another process (a control plane) holds the journal open.
    pub in_use: bool,
    /// `repair`: where the original file was kept.
    pub kept_original: Option<PathBuf>,
}

impl Report {
    /// Whether every acknowledged change is readable.
    pub fn healthy(&self) -> bool {
        self.damaged.is_empty() && self.undecodable.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live: usize = self.records.values().sum();
        writeln!(
            f,
            "{}: {} bytes, {} entries, {} live record{}",
            self.path.display(),
            self.size,
            self.entries,
            live,
            if live == 1 { "" } else { "s" }
        )?;
        if !self.records.is_empty() {
            let by: Vec<String> = self
                .records
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            writeln!(f, "  by status: {}", by.join(", "))?;
        }
        if self.in_use {
            writeln!(
                f,
                "  in use by a running control plane: the end may be a write under way"
            )?;
        }
        if let Some(torn) = self.torn {
            writeln!(
                f,
                "  torn tail: {} bytes at offset {} (a group half written at a crash, never acknowledged; dropped at the next start)",
                torn.len, torn.offset
            )?;
        }
        for span in &self.damaged {
            writeln!(
                f,
                "  DAMAGED: {} unreadable bytes at offset {}, with acknowledged changes after them",
                span.len, span.offset
            )?;
        }
        for (task_id, offset, why) in &self.undecodable {
            writeln!(
                f,
                "  UNDECODABLE: the record of task {task_id:?} at offset {offset}: {why}"
            )?;
        }
        for path in &self.quarantine {
            writeln!(f, "  quarantined: {}", path.display())?;
        }
        if let Some(kept) = &self.kept_original {
            writeln!(f, "  the original is kept as {}", kept.display())?;
        }
        Ok(())
    }
}

/// Reads the journal in `dir` without changing anything; works while a
/// control plane runs on it.
pub fn check(dir: &Path) -> Result<Report, JournalError> {
    let path = dir.join(FILE);
    if !dir.is_dir() {
        return Err(JournalError::Read {
            path,
            reason: format!("there is no data dir {}", dir.display()),
        });
    }
    // The lock is only tried, and let go at once.
    let in_use = matches!(super::lock(dir), Err(JournalError::InUse { .. }));
    let report = inspect(dir, in_use)?;
    if !in_use || report.damaged.is_empty() {
        return Ok(report);
    }
    // A control plane writes as this reads: a commit landing while a
    // window is read can look like damage. Damage seen twice, at the same
    // places, is damage.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut again = inspect(dir, in_use)?;
    again.damaged.retain(|span| report.damaged.contains(span));
    Ok(again)
}

fn inspect(dir: &Path, in_use: bool) -> Result<Report, JournalError> {
    let path = dir.join(FILE);
    let (file, scan) = read(&path)?;
    let mut report = Report {
        path,
        size: file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len()),
        entries: scan.entries,
        torn: scan.torn,
        damaged: scan.damaged.clone(),
        quarantine: list(&dir.join(QUARANTINE_DIR)),
        in_use,
        ..Report::default()
    };
    for (span, why) in &scan.nameless {
        report
            .undecodable
            .push((String::new(), span.offset, format!("no task id: {why}")));
    }
    if let Some(file) = &file {
        for (task_id, span) in &scan.live {
            match read_record(file, *span) {
                Ok(record) => {
                    *report
                        .records
                        .entry(record.status.as_str().to_owned())
                        .or_default() += 1;
                }
                Err(why) => report.undecodable.push((task_id.clone(), span.offset, why)),
            }
        }
    }
    report.undecodable.sort_by_key(|(_, offset, _)| *offset);
    Ok(report)
}

/// Rewrites the journal in `dir` with every readable record, quarantining
/// undecodable ones and keeping the original file beside it. Refused while
/// a control plane holds the journal.
pub fn repair(dir: &Path) -> Result<Report, JournalError> {
    if !dir.is_dir() {
        return Err(JournalError::Read {
            path: dir.join(FILE),
            reason: format!("there is no data dir {}", dir.display()),
        });
    }
    let lock = super::lock(dir)?;
    let path = dir.join(FILE);
    let before = inspect(dir, false)?;
    if before.healthy() && before.torn.is_none() {
        return Ok(before);
    }
    let kept = dir.join(format!(
        "{FILE}.before-repair-{}",
        Utc::now().format("%Y%m%dT%H%M%S")
    ));
    std::fs::rename(&path, &kept).map_err(|e| JournalError::Open {
        path: path.clone(),
        reason: format!("cannot move it aside to {}: {e}", kept.display()),
    })?;
    let (file, scan) = read(&kept)?;
    let (live, _, _) = sort_out(dir, file.as_ref(), scan)?;
    let log = Log::compacted(dir, &path, file.as_ref(), &live, 0, lock).map_err(|reason| {
        JournalError::Open {
            path: path.clone(),
            reason,
        }
    })?;
    drop(log);
    let mut after = inspect(dir, false)?;
    after.kept_original = Some(kept);
    after.damaged = before.damaged;
    after.undecodable = before.undecodable;
    after.torn = before.torn;
    Ok(after)
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}
