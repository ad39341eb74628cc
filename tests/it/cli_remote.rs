//! The client commands of the real binary against a control plane:
//! `submit`, `status`, `cancel`, `list --remote`, discovery, an unreachable
//! address, and SIGTERM on a real `control-plane` process.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    BIN, Fixture, TestControlPlane, assert_contains, spawn_control_plane, wait_for_async,
};

const MANIFEST: &str = r#"
[tasks.add]
runner = "python"
function = "pytasks:add"
priority = "high"

[tasks.blocker]
script = "blocker.sh"
"#;

async fn fastworker(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("FASTWORKER_BASE_ADDRESS")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run fastworker")
}

/// `fastworker submit --batch FILE` against the control plane at `base`.
async fn submit_batch(base: &str, file: &std::path::Path) -> Output {
    let file = file.to_str().expect("utf-8");
    fastworker(&["submit", "--base-address", base, "--batch", file]).await
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_status_cancel_and_list_from_the_command_line() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let base = cp.base.as_str();

    let o = fastworker(&["submit", "--base-address", base, "add", "5", "3"]).await;
    assert_eq!(
        (out(&o).as_str(), o.status.code()),
        ("8\n", Some(0)),
        "{}",
        err(&o)
    );

    // FastWorker's flag form, and the whole TaskResult record.
    let o = fastworker(&[
        "submit",
        "--base-address",
        base,
        "--task-name",
        "add",
        "--args",
        "1",
        "2",
        "--json",
    ])
    .await;
    let r: Value = serde_json::from_str(&out(&o)).expect("json");
    assert_eq!(
        (r["status"].as_str(), r["result"].as_i64()),
        (Some("success"), Some(3))
    );
    for key in ["task_id", "error", "started_at", "completed_at"] {
        assert!(r.get(key).is_some(), "{key} in {r}");
    }

    // Non-blocking prints the id; status and cancel take it.
    let o = fastworker(&[
        "submit",
        "--base-address",
        base,
        "--non-blocking",
        "blocker",
    ])
    .await;
    let id = out(&o).trim().to_owned();
    assert_eq!(id.len(), 36, "a task id: {id:?} {}", err(&o));
    let status = |json: bool| {
        let mut args = vec!["status", "--base-address", base, id.as_str()];
        if json {
            args.push("--json");
        }
        async move { fastworker(&args).await }
    };
    assert!(
        wait_for_async(|| async { out(&status(false).await).contains("  blocker  running") }).await,
        "the blocker runs"
    );
    let o = fastworker(&["cancel", "--base-address", base, "--task-id", &id]).await;
    assert_eq!(o.status.code(), Some(0));
    assert_contains(
        &out(&o),
        "it was running; its process group is being stopped",
    );
    assert!(wait_for_async(|| async { out(&status(false).await).contains("cancelled") }).await);
    let o = status(true).await;
    let record: Value = serde_json::from_str(&out(&o)).expect("json");
    assert_eq!(record["status"], "cancelled");
    assert_eq!(record["priority"], "normal");

    // The manifest's priority applies when the submit names none.
    let o = fastworker(&[
        "submit",
        "--base-address",
        base,
        "--non-blocking",
        "add",
        "1",
        "1",
    ])
    .await;
    let add_id = out(&o).trim().to_owned();
    let o = fastworker(&["status", "--base-address", base, &add_id, "--json"]).await;
    let record: Value = serde_json::from_str(&out(&o)).expect("json");
    assert_eq!(record["priority"], "high");

    let o = fastworker(&["status", "--base-address", base, "no-such-id"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_contains(&err(&o), "task no-such-id not found");

    let o = fastworker(&["submit", "--base-address", base, "nope"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert_contains(&err(&o), "error: unknown task 'nope'; known: add, blocker");

    let o = fastworker(&["list", "--remote", "--base-address", base]).await;
    assert_contains(&out(&o), "python pytasks:add");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_finds_the_control_plane_by_discovery() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let o = fastworker(&[
        "submit",
        "--discovery-address",
        &cp.discovery,
        "add",
        "2",
        "2",
    ])
    .await;
    assert_eq!(
        (out(&o).as_str(), o.status.code()),
        ("4\n", Some(0)),
        "{}",
        err(&o)
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_control_plane_is_a_clear_error() {
    // Nothing listens here: bind a port, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let base = format!("tcp://127.0.0.1:{port}");
    let o = fastworker(&["submit", "--base-address", &base, "add", "1", "2"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert_contains(&err(&o), "error: cannot reach tcp://127.0.0.1:");
    assert_contains(&err(&o), "is `fastworker control-plane` running");
}

fn signal(child: &tokio::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, signal).expect("signal");
}

/// A real control plane (concurrency 1) draining after a SIGTERM while a
/// blocking `submit blocker --json` waits on its running task: returns the
/// process, its base address, and the pending submit.
async fn draining_with_a_blocker(
    fx: &Fixture,
) -> (
    tokio::process::Child,
    String,
    tokio::task::JoinHandle<Output>,
) {
    let (child, base) = spawn_control_plane(fx, 1).await;
    let id = uuid::Uuid::new_v4().to_string();
    let submit = {
        let (base, id) = (base.clone(), id.clone());
        tokio::spawn(async move {
            fastworker(&[
                "submit",
                "--base-address",
                &base,
                "--id",
                &id,
                "blocker",
                "--json",
            ])
            .await
        })
    };
    assert!(
        wait_for_async(|| async {
            out(&fastworker(&["status", "--base-address", &base, &id]).await).contains("running")
        })
        .await,
        "the blocker runs"
    );
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    // Waiting for the drain also keeps a later signal from merging with this one.
    assert!(
        wait_for_async(|| async {
            let o = fastworker(&["submit", "--base-address", &base, "add", "1", "1"]).await;
            err(&o).contains("the control plane is shutting down")
        })
        .await,
        "new submits are refused while draining"
    );
    (child, base, submit)
}

async fn exit_code(child: &mut tokio::process::Child) -> Option<i32> {
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits")
        .expect("wait")
        .code()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_tasks_finish_and_exits_0() {
    let fx = Fixture::new(MANIFEST);
    let (mut child, _base, submit) = draining_with_a_blocker(&fx).await;
    std::fs::write(fx.path("release"), "").expect("release");
    let o = submit.await.expect("join");
    let r: Value = serde_json::from_str(&out(&o)).expect("json");
    assert_eq!(
        (r["status"].as_str(), r["result"].as_str()),
        (Some("success"), Some("released"))
    );
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_cancels_running_tasks() {
    let fx = Fixture::new(MANIFEST);
    // The blocker is never released: only a second signal ends it.
    let (mut child, _base, submit) = draining_with_a_blocker(&fx).await;
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let o = submit.await.expect("join");
    let r: Value = serde_json::from_str(&out(&o)).expect("json");
    assert_eq!(r["status"], "cancelled");
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_id_with_a_colon_is_refused() {
    let o = fastworker(&[
        "control-plane",
        "--worker-id",
        "a:b",
        "--manifest",
        "/nonexistent",
    ])
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert_contains(&err(&o), "a worker id must be non-empty and contain no ':'");
}

#[tokio::test(flavor = "multi_thread")]
async fn countdown_and_batch_from_the_command_line() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let base = cp.base.as_str();

    let o = fastworker(&[
        "submit",
        "--base-address",
        base,
        "--countdown",
        "0.2",
        "add",
        "2",
        "3",
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let id = out(&o).trim().to_owned();
    assert_eq!(id.len(), 36, "the id, at once: {id:?}");
    cp.wait_status(&id, fastworker::protocol::Status::Success)
        .await;
    assert_eq!(cp.record(&id).await.result, serde_json::json!(5));

    let file = fx.path("batch.jsonl");
    std::fs::write(
        &file,
        "{\"task_name\":\"add\",\"args\":[1,2]}\n\n{\"name\":\"add\",\"args\":[3,4],\"priority\":\"critical\",\"id\":\"b-2\"}\n",
    )
    .expect("write");
    let o = submit_batch(base, &file).await;
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let ids: Vec<String> = out(&o).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1], "b-2");
    for (id, sum) in ids.iter().zip([3, 7]) {
        cp.wait_status(id, fastworker::protocol::Status::Success)
            .await;
        assert_eq!(cp.record(id).await.result, serde_json::json!(sum));
    }
    assert_eq!(
        cp.record("b-2").await.priority,
        fastworker::manifest::Priority::Critical
    );

    // A bad line is named; an unknown task refuses the whole message.
    std::fs::write(&file, "{\"task_name\":\"add\"}\n{\"task_name\": 5}\n").expect("write");
    let o = submit_batch(base, &file).await;
    assert_eq!(o.status.code(), Some(2));
    assert_contains(&err(&o), "batch.jsonl:2: invalid type: integer `5`");
    std::fs::write(
        &file,
        "{\"task_name\":\"add\",\"id\":\"b-3\"}\n{\"task_name\":\"nope\"}\n",
    )
    .expect("write");
    let o = submit_batch(base, &file).await;
    assert_eq!(o.status.code(), Some(2));
    assert_contains(&err(&o), "tasks 1–2 refused: unknown task 'nope'");
    assert!(
        !cp.client.status("b-3").await.expect("status").found,
        "none of it was accepted"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submit_that_times_out_says_whether_the_task_was_taken() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let o = fastworker(&[
        "submit",
        "--base-address",
        &cp.base,
        "--timeout",
        "1s",
        "blocker",
    ])
    .await;
    assert_eq!(o.status.code(), Some(124));
    assert_contains(&err(&o), "goes on (running; fastworker status");
    std::fs::write(fx.path("release"), "").expect("release");
    cp.stop().await;

    // Something on the ports that takes a submit and never answers, and
    // knows no task: the task was never taken.
    let guard = fastworker::transport::Guard::new(fastworker::transport::Limits::default());
    let stop = tokio_util::sync::CancellationToken::new();
    // Fresh ports, tried again when one is taken.
    let (port, normal, query) = loop {
        let port = 20_000 + crate::helpers::rand_u16() % 40_000;
        let listen = |offset: u16| {
            fastworker::transport::ReplyServer::listen(
                &format!("tcp://127.0.0.1:{}", port + offset),
                &guard,
            )
        };
        if let (Ok(normal), Ok(query)) = (listen(2), listen(4)) {
            break (port, normal, query);
        }
    };
    let servers = tokio::spawn({
        let stop = stop.clone();
        async move {
            let silent = normal.serve(
                |_request| std::future::pending::<Vec<u8>>(),
                Vec::new(),
                stop.clone(),
            );
            let unknown = query.serve(
                |_request| async { br#"{"found": false, "error": "not found"}"#.to_vec() },
                Vec::new(),
                stop,
            );
            tokio::join!(silent, unknown);
        }
    });
    let base = format!("tcp://127.0.0.1:{port}");
    let o = fastworker(&[
        "submit",
        "--base-address",
        &base,
        "--timeout",
        "1s",
        "blocker",
    ])
    .await;
    assert_eq!(o.status.code(), Some(124));
    assert_contains(
        &err(&o),
        "was not accepted: the control plane does not know it",
    );
    // The silent handler never ends: no graceful stop to wait for.
    servers.abort();
    let _ = servers.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_from_a_task_are_printed_escaped() {
    let fx = Fixture::new("[tasks.boom]\nrunner = \"python\"\nfunction = \"pytasks:boom\"\n");
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let o = fastworker(&[
        "submit",
        "--base-address",
        &cp.base,
        "boom",
        "\"\\u001b[2J\\u001b]0;owned\\u0007cleared\"",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1));
    let stderr = err(&o);
    assert_contains(
        &stderr,
        "ValueError: \\u{1b}[2J\\u{1b}]0;owned\\u{7}cleared",
    );
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "{stderr:?}"
    );
    cp.stop().await;
}
