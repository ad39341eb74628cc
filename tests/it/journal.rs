//! The journal under bad input and bad bytes: nothing accepted can stop a
//! start, damage is told from a torn tail, and the operator's tools.

use std::os::unix::fs::FileExt as _;
use std::process::Output;
use std::time::Duration;

use fastworker::journal::format;
use fastworker::protocol::Status;
use serde_json::{Value, json};

use crate::helpers::{
    BIN, Fixture, TestControlPlane, assert_contains, spawn_control_plane_at,
    spawn_control_plane_with, wire_task,
};

const MANIFEST: &str = r#"
[tasks.echo]
command = ["cat"]

[tasks.eight]
command = ["sh", "-c", "cat > /dev/null; echo 8"]
"#;

fn nested(depth: usize) -> Value {
    let mut value = json!("bottom");
    for _ in 0..depth {
        value = json!([value]);
    }
    value
}

async fn fastworker(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("FASTWORKER_DATA_DIR")
        .output()
        .await
        .expect("run fastworker")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deeply_nested_submit_is_refused_clearly_and_what_is_accepted_reads_back() {
    let fx = Fixture::new(MANIFEST);
    let data = fx.path("data");
    let with_journal = |c: &mut fastworker::control_plane::Config| {
        c.data_dir = Some(data.clone());
    };
    let cp = TestControlPlane::start(&fx, with_journal).await;
    // A little under serde_json's recursion limit: once accepted, and its
    // record (the echo's result holds the request) nested too deep to read.
    let refused = cp.submit("echo", vec![nested(120)], None).await;
    assert!(refused.refused, "{refused:?}");
    assert_contains(
        refused.error.as_deref().unwrap_or_default(),
        "an argument nests 120 levels deep; the limit is 64",
    );
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("deep".into(), nested(65));
    let mut task = wire_task("echo", vec![]);
    task.kwargs = kwargs;
    let ack = cp.client.submit_ack(task, None).await.expect("ack");
    assert!(!ack.accepted);
    assert_contains(
        ack.error.as_deref().unwrap_or_default(),
        "keyword argument \"deep\" nests 65 levels deep",
    );

    // At the limit: accepted, run, and its result (the request, one level
    // deeper) read back after a restart.
    let done = cp.submit("echo", vec![nested(64)], None).await;
    assert_eq!(done.status, Status::Success, "{done:?}");
    cp.stop().await;
    let cp = TestControlPlane::start(&fx, with_journal).await;
    let again = cp.record(&done.task_id).await;
    assert_eq!(again.result, done.result);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_that_nests_too_deep_is_invalid_output_not_a_poisoned_record() {
    let fx = Fixture::new(&format!(
        "{MANIFEST}\n[tasks.deep]\ncommand = [\"sh\", \"-c\", \"cat > /dev/null; cat deep.json\"]\n"
    ));
    std::fs::write(fx.path("deep.json"), nested(120).to_string()).expect("write");
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let result = cp.submit("deep", vec![], None).await;
    assert_eq!(result.status, Status::Failure);
    assert_contains(
        result.error.as_deref().unwrap_or_default(),
        "the result nests 120 levels deep; the limit is 100",
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_task_ids_are_refused_at_submit() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    for (id, says) in [
        ("x".repeat(129_000), "bytes long; the limit is 128"),
        ("a\0b".to_owned(), "contains '\\0'"),
        ("\u{1b}[31mred".to_owned(), "contains '\\u{1b}'"),
        ("two words".to_owned(), "contains ' '"),
        (String::new(), "cannot be empty"),
    ] {
        let mut task = wire_task("eight", vec![]);
        task.id = id;
        let ack = cp.client.submit_ack(task, None).await.expect("ack");
        assert!(!ack.accepted);
        let error = ack.error.unwrap_or_default();
        assert_contains(&error, says);
        assert!(
            error.len() < 300 && !error.contains('\u{1b}'),
            "the id is shown escaped and cut: {error:?}"
        );
    }
    cp.stop().await;
}

/// The offset of a put in the middle of the journal in `data`.
fn middle_put(data: &std::path::Path) -> u64 {
    let file = std::fs::File::open(data.join(fastworker::journal::FILE)).expect("journal");
    let scan = format::scan(&file).expect("scan");
    let mut offsets: Vec<u64> = scan.live.values().map(|s| s.offset).collect();
    offsets.sort_unstable();
    offsets[offsets.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn one_flipped_byte_in_the_middle_stops_the_start_and_repair_keeps_the_rest() {
    let fx = Fixture::new(MANIFEST);
    let data = fx.path("data");
    let (mut logged, base) = spawn_control_plane_with(&fx, 2, &[], &[]).await;
    let client = fastworker::client::Client::new(&base, Duration::from_secs(10)).expect("client");
    // 300 tasks an hour away: they stay in the journal.
    let eta = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let mut t = wire_task("eight", vec![json!(i)]);
            t.eta = Some(eta.clone());
            t
        })
        .collect();
    let reply = client
        .submit_batch(&tasks, fastworker::manifest::Priority::Normal)
        .await
        .expect("batch");
    assert!(reply.batch_accepted, "{reply:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(logged.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let _ = logged.child.wait().await;

    let at = middle_put(&data) + format::HEADER as u64 + 20;
    let path = data.join(fastworker::journal::FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("journal");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0x01], at).expect("flip");
    drop(file);
    let before = std::fs::read(&path).expect("journal");

    let refused = spawn_control_plane_at(&fx, &base, 2, &[], &[])
        .await
        .err()
        .expect("the start is refused");
    assert_contains(&refused, "is damaged");
    assert_contains(&refused, "fastworker journal repair --data-dir");
    assert_eq!(
        std::fs::read(&path).expect("journal"),
        before,
        "nothing changed"
    );

    let data_dir = data.to_str().expect("utf-8");
    let check = fastworker(&["journal", "check", "--data-dir", data_dir]).await;
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert_contains(&text, "DAMAGED");
    assert_contains(&text, "scheduled 299");

    let repair = fastworker(&["journal", "repair", "--data-dir", data_dir]).await;
    let text = String::from_utf8_lossy(&repair.stdout);
    assert_eq!(repair.status.code(), Some(0), "{text}");
    assert_contains(&text, "the original is kept as");

    let (logged, base) = spawn_control_plane_with(&fx, 2, &[], &[]).await;
    let client = fastworker::client::Client::new(&base, Duration::from_secs(10)).expect("client");
    let mut kept = 0;
    for task in &tasks {
        if let Some(t) = client.status(&task.id).await.expect("status").task {
            assert_eq!(t.status, Status::Scheduled);
            kept += 1;
        }
    }
    assert_eq!(kept, 299, "only the damaged record is gone");
    drop(logged);
}
