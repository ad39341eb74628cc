//! Bad input on every port of a real control plane: each malformed message
//! gets an error that says what is wrong (or, over the size limit, its
//! connection is closed unread), nothing crashes or hangs, memory comes
//! back, and the control plane goes on serving.

use std::time::Duration;

use fastworker::protocol::Status;
use serde_json::json;

use crate::helpers::{Fixture, memory, spawn_control_plane_with, wire_task};

const MANIFEST: &str = r#"
[tasks.eight]
command = ["sh", "-c", "cat > /dev/null; echo 8"]
"#;

/// Malformed messages: (what, bytes).
fn bad_messages() -> Vec<(&'static str, Vec<u8>)> {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
    let mut nested = json!(1);
    for _ in 0..100 {
        nested = json!([nested]);
    }
    let j = |v: serde_json::Value| serde_json::to_vec(&v).expect("json");
    vec![
        ("empty", Vec::new()),
        ("not json", b"hello".to_vec()),
        ("truncated json", br#"{"id": "a", "name": "#.to_vec()),
        ("invalid utf-8", vec![0xff, 0xfe, b'{', 0x80]),
        ("NUL bytes", vec![0; 64]),
        (
            "random bytes",
            (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("a number", b"42".to_vec()),
        ("an array", b"[1, 2, 3]".to_vec()),
        ("a string", br#""task""#.to_vec()),
        ("null", b"null".to_vec()),
        ("10,000 nested arrays", deep(10_000)),
        ("an empty object", b"{}".to_vec()),
        (
            "an unknown action",
            j(json!({"action": "explode", "task_id": "a"})),
        ),
        ("an action of the wrong type", j(json!({"action": 7}))),
        ("a task without a name", j(json!({"id": "a"}))),
        ("a name that is a number", j(json!({"id": "a", "name": 5}))),
        (
            "args that are not a list",
            j(json!({"id": "a", "name": "eight", "args": "x"})),
        ),
        (
            "kwargs that are not an object",
            j(json!({"id": "a", "name": "eight", "kwargs": [1]})),
        ),
        (
            "an unknown priority",
            j(json!({"id": "a", "name": "eight", "priority": "urgent"})),
        ),
        (
            "a bad eta",
            j(json!({"id": "a", "name": "eight", "eta": "tomorrow"})),
        ),
        ("an unknown task", j(json!({"id": "a", "name": "nope"}))),
        (
            "a bad task id",
            j(json!({"id": "a b\u{1b}", "name": "eight"})),
        ),
        (
            "args nested 100 deep",
            j(json!({"id": "a", "name": "eight", "args": [nested]})),
        ),
        (
            "a callback to docker.sock",
            j(
                json!({"id": "a", "name": "eight", "callback": {"address": "ipc:///var/run/docker.sock"}}),
            ),
        ),
        (
            "a batch of non-tasks",
            j(json!({"action": "batch_submit", "tasks": [1, 2]})),
        ),
        (
            "a batch that is not a list",
            j(json!({"action": "batch_submit", "tasks": {}})),
        ),
        ("a status without task_id", j(json!({"action": "status"}))),
        (
            "a poll from nobody",
            j(json!({"action": "poll", "worker_id": "x", "session": "s", "seq": 1})),
        ),
        (
            "a result for no lease",
            j(
                json!({"action": "result", "worker_id": "x", "session": "s", "lease": "l", "execution": {}}),
            ),
        ),
        (
            "a registration without tasks",
            j(json!({"action": "register", "worker_id": "x", "session": "s"})),
        ),
        (
            "a registration with a bad id",
            j(
                json!({"action": "register", "worker_id": "\u{1b}[2J", "session": "s", "address": "a", "capacity": 1, "tasks": {}}),
            ),
        ),
        (
            "a huge seq",
            j(json!({"action": "poll", "worker_id": "x", "session": "s", "seq": u64::MAX})),
        ),
        (
            "a token of the wrong type",
            j(json!({"action": "status", "task_id": "a", "auth": [1]})),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_port_answers_bad_input_and_memory_comes_back() {
    let fx = Fixture::new(MANIFEST);
    let (logged, base) =
        spawn_control_plane_with(&fx, 2, &[], &["--max-message-size", "1MiB"]).await;
    let pid = logged.pid();
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let client = fastworker::client::Client::new(&base, Duration::from_secs(10)).expect("client");
    assert_eq!(
        client
            .submit(wire_task("eight", vec![]), None, Duration::from_secs(20))
            .await
            .expect("submit")
            .result,
        json!(8)
    );
    let before = memory(&pid.to_string(), "VmRSS");
    let messages = bad_messages();
    for round in 0..3 {
        for offset in 0..6u16 {
            let url = format!("tcp://127.0.0.1:{}", port + offset);
            for (what, bytes) in &messages {
                let reply = fastworker::transport::request(&url, bytes, Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|e| panic!("{what} on port +{offset}: {e}"));
                let text = String::from_utf8_lossy(&reply);
                assert!(
                    text.contains("error")
                        || text.contains("\"refused\":true")
                        || text.contains("\"accepted\":false")
                        || text.contains("reregister"),
                    "{what} on port +{offset} (round {round}): {text}"
                );
            }
        }
    }
    // Over the size limit: not read; the connection is closed.
    let over = vec![b' '; 2 << 20];
    for offset in 0..6u16 {
        let url = format!("tcp://127.0.0.1:{}", port + offset);
        assert!(
            fastworker::transport::request(&url, &over, Duration::from_millis(500))
                .await
                .is_err()
        );
    }
    let after = memory(&pid.to_string(), "VmRSS");
    eprintln!(
        "{} kinds of bad input × 6 ports × 3 rounds; RSS {:.1} MiB before, {:.1} MiB after",
        messages.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert!(
        after < before + (16 << 20),
        "RSS went from {before} to {after}"
    );
    let r = client
        .submit(wire_task("eight", vec![]), None, Duration::from_secs(20))
        .await
        .expect("submit");
    assert_eq!((r.status, r.result), (Status::Success, json!(8)));
    drop(logged);
}
