use std::fs::OpenOptions;
use std::os::unix::fs::FileExt as _;

use super::format::{self, MAGIC, PUT};
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

fn open(dir: &Path) -> (Journal, Vec<TaskRecord>) {
    let (journal, replay) = Journal::open(dir).expect("open");
    (journal, replay.records().map(|(r, _)| r).collect())
}

/// Every entry of the log at `path`: where it starts, and its kind.
fn entries(path: &Path) -> Vec<(u64, u8)> {
    let file = std::fs::File::open(path).expect("log");
    let mut source = format::Source::new(&file).expect("source");
    let (mut found, mut at) = (Vec::new(), MAGIC.len() as u64);
    while let Some(body) = source.entry(at).expect("read") {
        found.push((at, body[0]));
        at += (format::HEADER + body.len()) as u64;
    }
    found
}

/// The offsets of the puts in the log at `path`.
fn puts(path: &Path) -> Vec<u64> {
    entries(path)
        .into_iter()
        .filter(|(_, kind)| *kind == PUT)
        .map(|(at, _)| at)
        .collect()
}

fn statuses(records: &[TaskRecord]) -> Vec<(String, Status)> {
    let mut v: Vec<_> = records
        .iter()
        .map(|r| (r.task_id.clone(), r.status))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn flip(path: &Path, at: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("log");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0xff], at).expect("write");
}

/// A log with two groups: put a, then put b.
async fn two_groups(dir: &Path) -> PathBuf {
    let (journal, _) = open(dir);
    write(&journal, vec![put("a", Status::Queued)]).await;
    write(&journal, vec![put("b", Status::Queued)]).await;
    dir.join(FILE)
}

#[tokio::test]
async fn records_survive_a_reopen_and_deletes_stick() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let (journal, records) = open(dir.path());
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
    let (_journal, records) = open(dir.path());
    assert_eq!(statuses(&records), [("a".to_owned(), Status::Success)]);
    assert_eq!(records[0].priority, Priority::High);
}

#[tokio::test]
async fn a_soon_write_is_committed_with_no_now_write_to_follow() {
    let dir = tempfile::tempdir().expect("dir");
    let (journal, _) = open(dir.path());
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
async fn a_group_writes_only_each_tasks_last_change_and_one_marker() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join(FILE);
    {
        let (journal, _) = open(dir.path());
        let before = entries(&path).len();
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
        let kinds: Vec<u8> = entries(&path)[before..].iter().map(|e| e.1).collect();
        // One entry for b (its delete), one for a (its last put), the marker.
        assert_eq!(kinds, [format::DELETE, format::PUT, format::COMMIT]);
    }
    let (_journal, records) = open(dir.path());
    assert_eq!(statuses(&records), [("a".to_owned(), Status::Success)]);
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let (first, _) = open(dir.path());
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
    let (journal, _) = open(dir.path());
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
    let (_journal, records) = open(dir.path());
    assert_eq!(records.len(), 500);
}

#[tokio::test]
async fn a_torn_last_group_is_dropped_its_bytes_kept_and_the_rest_read() {
    let dir = tempfile::tempdir().expect("dir");
    let path = two_groups(dir.path()).await;
    // A crash in the middle of the last group's write: its end never
    // reached the disk.
    let b = puts(&path)[1];
    let end = entries(&path).last().map(|(at, _)| *at).expect("marker") + 17;
    let file = OpenOptions::new().write(true).open(&path).expect("log");
    file.write_all_at(
        &vec![0; usize::try_from(end - b - 20).expect("len")],
        b + 20,
    )
    .expect("tear");
    let report = recover::check(dir.path()).expect("check");
    assert!(report.healthy(), "{report}");
    assert_eq!(report.torn.map(|t| t.offset), Some(b));
    // Its length is the bytes written, not the zeros that pad the file.
    assert_eq!(report.torn.map(|t| t.len), Some(20));
    let (journal, replay) = Journal::open(dir.path()).expect("reopen");
    let saved = replay
        .torn
        .as_ref()
        .and_then(|(_, saved)| saved.clone())
        .expect("torn bytes kept");
    assert_eq!(std::fs::metadata(&saved).expect("saved").len(), 20);
    let records: Vec<_> = replay.records().map(|(r, _)| r).collect();
    assert_eq!(statuses(&records), [("a".to_owned(), Status::Queued)]);
    // Appends after the cut are read back too.
    write(&journal, vec![put("c", Status::Queued)]).await;
    drop(journal);
    let (_journal, records) = open(dir.path());
    assert_eq!(
        statuses(&records),
        [
            ("a".to_owned(), Status::Queued),
            ("c".to_owned(), Status::Queued)
        ]
    );
}

#[tokio::test]
async fn damage_before_a_commit_refuses_the_open_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let path = two_groups(dir.path()).await;
    // One flipped byte in a's record; b's group, committed, follows.
    flip(&path, puts(&path)[0] + format::HEADER as u64 + 5);
    let before = std::fs::read(&path).expect("log");
    let err = Journal::open(dir.path()).expect_err("damaged");
    let text = err.to_string();
    assert!(matches!(err, JournalError::Damaged { .. }), "{text}");
    assert!(
        text.contains("fastworker journal repair --data-dir"),
        "{text}"
    );
    assert!(text.contains("not a write torn by a crash"), "{text}");
    assert_eq!(
        std::fs::read(&path).expect("log"),
        before,
        "the log was rewritten"
    );

    let report = recover::check(dir.path()).expect("check");
    assert!(!report.healthy());
    assert_eq!(report.damaged.len(), 1, "{report}");
    assert_eq!(report.records.get("queued"), Some(&1), "{report}");

    let repaired = recover::repair(dir.path()).expect("repair");
    let kept = repaired.kept_original.clone().expect("original kept");
    assert_eq!(std::fs::read(&kept).expect("original"), before);
    let (_journal, records) = open(dir.path());
    assert_eq!(statuses(&records), [("b".to_owned(), Status::Queued)]);
}

#[tokio::test]
async fn a_zeroed_header_in_the_middle_is_damage_not_the_end() {
    let dir = tempfile::tempdir().expect("dir");
    let path = two_groups(dir.path()).await;
    let a = puts(&path)[0];
    OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("log")
        .write_all_at(&[0; format::HEADER], a)
        .expect("zero");
    let err = Journal::open(dir.path()).expect_err("damaged");
    assert!(matches!(err, JournalError::Damaged { .. }), "{err}");
}

#[tokio::test]
async fn a_log_without_commit_markers_with_entries_after_damage_is_damaged() {
    // As builds before commit markers wrote it.
    let dir = tempfile::tempdir().expect("dir");
    let mut bytes = MAGIC.to_vec();
    for id in ["a", "b"] {
        let Change::Put { json, .. } = put(id, Status::Queued) else {
            unreachable!()
        };
        format::encode(&mut bytes, PUT, &json);
    }
    bytes[MAGIC.len() + format::HEADER + 3] ^= 0xff;
    std::fs::write(dir.path().join(FILE), &bytes).expect("write");
    let err = Journal::open(dir.path()).expect_err("damaged");
    assert!(matches!(err, JournalError::Damaged { .. }), "{err}");
    // Without damage it opens as before.
    bytes[MAGIC.len() + format::HEADER + 3] ^= 0xff;
    std::fs::write(dir.path().join(FILE), &bytes).expect("write");
    let (_journal, records) = open(dir.path());
    assert_eq!(records.len(), 2);
}

#[tokio::test]
async fn the_log_is_compacted_to_its_live_records() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join(FILE);
    {
        let (journal, _) = open(dir.path());
        for i in 0..200 {
            let id = format!("t{i}");
            write(&journal, vec![put(&id, Status::Queued)]).await;
            write(&journal, vec![put(&id, Status::Running)]).await;
            if i % 2 == 0 {
                write(&journal, vec![Change::Delete(id)]).await;
            }
        }
    }
    let before = entries(&path).len();
    let (_journal, records) = open(dir.path());
    let after = entries(&path).len();
    assert_eq!(records.len(), 100);
    assert!(records.iter().all(|r| r.status == Status::Running));
    assert!(after * 4 < before, "{before} entries became {after}");
}

#[tokio::test]
async fn a_growing_log_is_compacted_while_open() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join(FILE);
    let (journal, _) = open(dir.path());
    // 320 new states of one task, 64 KiB each: 20 MiB of log, one live record.
    let mut record = TaskRecord::sample("big", Status::Queued);
    for i in 0..320 {
        record.args = vec![serde_json::json!(format!("{i:065535}"))];
        write(&journal, vec![Change::put(&record)]).await;
    }
    let size = std::fs::metadata(&path).expect("log").len();
    assert!(size < COMPACT_AT, "the file is {size} bytes");
    drop(journal);
    let (_journal, records) = open(dir.path());
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
async fn an_undecodable_record_is_quarantined_and_the_rest_opens() {
    let dir = tempfile::tempdir().expect("dir");
    let mut bytes = MAGIC.to_vec();
    let bad = br#"{"task_id": "broken", "status": 7}"#;
    format::encode(&mut bytes, PUT, bad);
    let Change::Put { json, .. } = put("fine", Status::Queued) else {
        unreachable!()
    };
    format::encode(&mut bytes, PUT, &json);
    std::fs::write(dir.path().join(FILE), bytes).expect("write");
    let report = recover::check(dir.path()).expect("check");
    assert_eq!(report.undecodable.len(), 1, "{report}");
    assert!(report.to_string().contains("\"broken\""), "{report}");

    let (_journal, replay) = Journal::open(dir.path()).expect("opens");
    assert_eq!(replay.quarantined.len(), 1);
    assert_eq!(std::fs::read(&replay.quarantined[0]).expect("kept"), bad);
    let records: Vec<_> = replay.records().map(|(r, _)| r).collect();
    assert_eq!(statuses(&records), [("fine".to_owned(), Status::Queued)]);
}

#[tokio::test]
async fn a_record_nested_deeper_than_json_parsers_allow_reads_back() {
    let dir = tempfile::tempdir().expect("dir");
    let mut record = TaskRecord::sample("deep", Status::Success);
    let mut value = serde_json::json!(1);
    for _ in 0..1_000 {
        value = serde_json::json!([value]);
    }
    record.result = value;
    {
        let (journal, _) = open(dir.path());
        write(&journal, vec![Change::put(&record)]).await;
    }
    let (_journal, records) = open(dir.path());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].result, record.result);
}

#[tokio::test]
async fn the_data_dir_and_the_journal_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().expect("dir");
    let dir = parent.path().join("data");
    let (journal, _) = open(&dir);
    write(&journal, vec![put("a", Status::Queued)]).await;
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(FILE)), 0o600);
}
