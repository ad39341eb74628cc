//! Subworkers, as an operator runs them: real `fastworker control-plane` and
//! `fastworker subworker` processes, killed, stopped and restarted for real.

use std::time::{Duration, Instant};

use fastworker::client::Client;
use fastworker::manifest::Priority;
use fastworker::protocol::{Status, TaskRecord, WorkerInfo};
use serde_json::{Value, json};

use crate::helpers::{
    BIN, Fixture, KillOnDrop, Logged, assert_contains, json_attempts, process_alive,
    spawn_control_plane_at, spawn_control_plane_with, spawn_logged, wait_for, wait_for_async,
    wire_task,
};

/// The control plane's manifest. Subworkers get the same one, plus what
/// [`ONLY_B`] adds for worker "b".
const MANIFEST: &str = r#"
[tasks.nap]
description = "a result that differs on every run, after a short nap"
command = ["sh", "-c", "cat > /dev/null; sleep 0.6; echo \"\\\"$$-$(date +%s%N)\\\"\""]

[tasks.long]
description = "writes its pid, then sleeps for a minute"
command = ["sh", "-c", "cat > /dev/null; echo $$ > long-$PPID-$$.pid; sleep 60"]

[tasks.slowish]
description = "runs for 1.5 s"
command = ["sh", "-c", "cat > /dev/null; sleep 1.5; echo \"\\\"$$\\\"\""]

[tasks.eight]
command = ["sh", "-c", "cat > /dev/null; echo 8"]
"#;

const ONLY_B: &str = r#"
[tasks.only_b]
command = ["sh", "-c", "cat > /dev/null; echo '\"b\"'"]
"#;

/// A subworker process on the control plane at `base`, started from `fx`'s
/// manifest; returns once it has registered.
async fn subworker(fx: &Fixture, base: &str, id: &str, concurrency: u32, extra: &[&str]) -> Logged {
    let mut argv: Vec<String> = [
        BIN,
        "subworker",
        "--worker-id",
        id,
        "--control-plane-address",
        base,
        "--concurrency",
        &concurrency.to_string(),
        "--manifest",
        &fx.manifest_path().display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    let (process, ready) = spawn_logged(&argv, &["ready"], &["error"]).await;
    if let Err(line) = ready {
        panic!("subworker {id} did not start: {line}\n{}", process.stderr());
    }
    process
}

/// A fixture for subworker `b`: the common manifest plus a task only it defines.
fn fixture_b() -> Fixture {
    Fixture::new(&format!("{MANIFEST}{ONLY_B}"))
}

fn client(base: &str) -> Client {
    Client::new(base, Duration::from_secs(10)).expect("client")
}

async fn workers(client: &Client) -> Vec<WorkerInfo> {
    client.workers().await.expect("workers").workers
}

async fn worker(client: &Client, id: &str) -> Option<WorkerInfo> {
    workers(client)
        .await
        .into_iter()
        .find(|w| w.worker_id == id)
}

async fn record(client: &Client, task_id: &str) -> TaskRecord {
    client
        .status(task_id)
        .await
        .expect("status")
        .task
        .unwrap_or_else(|| panic!("task {task_id} is known"))
}

/// Polls until `task_id`'s record satisfies `cond` (20 s at most).
async fn wait_record(
    client: &Client,
    task_id: &str,
    mut cond: impl FnMut(&TaskRecord) -> bool,
) -> TaskRecord {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = record(client, task_id).await;
        if cond(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "task {task_id} never got there: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit(client: &Client, name: &str, priority: Option<Priority>) -> String {
    let ack = client
        .submit_ack(wire_task(name, vec![]), priority)
        .await
        .expect("submit");
    assert!(ack.accepted, "{ack:?}");
    ack.task_id
}

fn attempt_workers(r: &TaskRecord) -> Vec<(String, String)> {
    json_attempts(r)
        .iter()
        .map(|a| {
            (
                a["status"].as_str().unwrap_or_default().to_owned(),
                a["worker"].as_str().unwrap_or("(here)").to_owned(),
            )
        })
        .collect()
}

fn signal(process: &Logged, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid() as i32), signal)
        .expect("signal");
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_go_to_the_least_loaded_subworker_that_defines_them() {
    let (fx, fx_b) = (Fixture::new(MANIFEST), fixture_b());
    let (_cp, base) = spawn_control_plane_with(&fx, 1, &[], &["--no-local-tasks"]).await;
    let a = subworker(&fx, &base, "a", 2, &[]).await;
    let b = subworker(&fx_b, &base, "b", 2, &[]).await;
    let client = client(&base);

    // Four tasks, two slots each: the least-loaded rule gives each two.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit(&client, "long", None).await);
    }
    for id in &ids {
        wait_record(&client, id, |r| r.status == Status::Running).await;
    }
    let loads: Vec<(String, usize, usize)> = workers(&client)
        .await
        .into_iter()
        .map(|w| (w.worker_id, w.load, w.capacity))
        .collect();
    assert_eq!(
        loads,
        [
            ("control-plane".to_owned(), 0, 0),
            ("a".to_owned(), 2, 2),
            ("b".to_owned(), 2, 2)
        ]
    );
    for id in &ids {
        assert!(client.cancel(id).await.expect("cancel").cancelled);
    }

    // A task only b defines is accepted (the control plane's manifest has
    // no such task) and runs on b.
    let only = submit(&client, "only_b", None).await;
    let r = wait_record(&client, &only, |r| r.status.is_final()).await;
    assert_eq!(r.status, Status::Success, "{r:?}");
    assert_eq!(r.result, json!("b"));
    assert_eq!(
        attempt_workers(&r),
        [("success".to_owned(), "b".to_owned())]
    );

    // Nobody defines this one: refused, naming who defines what.
    let refused = client
        .submit_ack(wire_task("nope", vec![]), None)
        .await
        .expect("submit");
    assert!(!refused.accepted);
    assert_contains(
        refused.error.as_deref().unwrap_or_default(),
        "unknown task 'nope'; known: eight, long, nap, slowish; from subworkers: only_b",
    );

    // `fastworker workers` shows both, with their load and what they ran.
    let out = tokio::process::Command::new(BIN)
        .args(["workers", "--base-address", &base])
        .output()
        .await
        .expect("workers");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "ID",
        "LOAD",
        "control-plane",
        "coordinator only",
        "active",
        "eight,long,nap,only_b,slowish",
    ] {
        assert_contains(&text, needle);
    }
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_that_define_a_task_differently_are_warned_about() {
    let fx = Fixture::new(MANIFEST);
    let fx_other = Fixture::new(&MANIFEST.replace("echo 8", "echo 9"));
    let (_cp, base) = spawn_control_plane_with(&fx, 1, &[], &[]).await;
    let _a = subworker(&fx, &base, "a", 1, &[]).await;
    let b = subworker(&fx_other, &base, "b", 1, &[]).await;
    let warned = wait_for(Duration::from_secs(10), || {
        b.said("warning: task 'eight' is defined differently on subworker 'b'")
    })
    .await;
    assert!(warned, "{}", b.stderr());
    let client = client(&base);
    let info = worker(&client, "b").await.expect("b is listed");
    assert_eq!(info.warnings.len(), 2, "{info:?}");
    assert_contains(&info.warnings[0], "than on the control plane");
    assert_contains(&info.warnings[0], "it is not given this task");
    assert_contains(&info.warnings[1], "than on subworker 'a'");
    assert!(worker(&client, "a").await.expect("a").warnings.is_empty());
    assert!(
        !info.tasks.contains(&"eight".to_owned()),
        "b is not given its other 'eight': {info:?}"
    );
    // It never runs there: a, or the control plane itself, runs it.
    for _ in 0..6 {
        let id = submit(&client, "eight", None).await;
        let r = wait_record(&client, &id, |r| r.status.is_final()).await;
        assert_eq!(r.result, json!(8), "{r:?}");
        assert!(attempt_workers(&r).iter().all(|(_, w)| w != "b"), "{r:?}");
    }
    // `fastworker workers` shows the mismatch.
    let out = tokio::process::Command::new(BIN)
        .args(["workers", "--base-address", &base])
        .output()
        .await
        .expect("workers");
    assert_contains(
        &String::from_utf8_lossy(&out.stdout),
        "warning: task 'eight' is defined differently on subworker 'b'",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mismatched_definition_is_used_when_allowed() {
    let fx = Fixture::new(MANIFEST);
    let fx_other = Fixture::new(&MANIFEST.replace("echo 8", "echo 9"));
    let (_cp, base) = spawn_control_plane_with(
        &fx,
        1,
        &[],
        &["--no-local-tasks", "--allow-definition-mismatch"],
    )
    .await;
    let b = subworker(&fx_other, &base, "b", 1, &[]).await;
    let client = client(&base);
    let id = submit(&client, "eight", None).await;
    let r = wait_record(&client, &id, |r| r.status.is_final()).await;
    assert_eq!(r.result, json!(9), "b's own definition ran: {r:?}");
    assert!(
        b.said("it is given the task anyway (--allow-definition-mismatch)"),
        "{}",
        b.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_plane_runs_a_task_itself_only_when_no_subworker_has_room() {
    let fx = Fixture::new(MANIFEST);
    let (_cp, base) = spawn_control_plane_with(&fx, 1, &[], &[]).await;
    let _a = subworker(&fx, &base, "a", 1, &[]).await;
    let client = client(&base);
    let first = submit(&client, "long", None).await;
    let r = wait_record(&client, &first, |r| r.status == Status::Running).await;
    assert_eq!(r.worker.as_deref(), Some("a"));
    // a is full: the next one runs here.
    let second = submit(&client, "eight", None).await;
    let r = wait_record(&client, &second, |r| r.status.is_final()).await;
    assert_eq!(
        attempt_workers(&r),
        [("success".to_owned(), "(here)".to_owned())]
    );
    client.cancel(&first).await.expect("cancel");
}

#[tokio::test(flavor = "multi_thread")]
async fn priority_holds_across_the_cluster() {
    let fx = Fixture::new(MANIFEST);
    let (_cp, base) = spawn_control_plane_with(&fx, 1, &[], &["--no-local-tasks"]).await;
    let _a = subworker(&fx, &base, "a", 1, &[]).await;
    let client = client(&base);
    let blocker = submit(&client, "long", None).await;
    wait_record(&client, &blocker, |r| r.status == Status::Running).await;
    let low: Vec<String> = futures_util::future::join_all(
        (0..2).map(|_| submit(&client, "eight", Some(Priority::Low))),
    )
    .await;
    let critical = submit(&client, "eight", Some(Priority::Critical)).await;
    client.cancel(&blocker).await.expect("cancel");
    let mut started = Vec::new();
    for id in low.iter().chain([&critical]) {
        let r = wait_record(&client, id, |r| r.status.is_final()).await;
        assert_eq!(r.status, Status::Success);
        started.push((r.started_at.expect("started"), id.clone()));
    }
    started.sort();
    assert_eq!(
        started[0].1, critical,
        "the critical task, submitted last, ran first"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subworker_killed_mid_task_has_its_task_run_elsewhere_within_5_s() {
    let fx = Fixture::new(MANIFEST);
    let (_cp, base) = spawn_control_plane_with(&fx, 1, &[], &["--no-local-tasks"]).await;
    let mut procs = [
        ("a", subworker(&fx, &base, "a", 1, &[]).await),
        ("b", subworker(&fx, &base, "b", 1, &[]).await),
    ];
    let client = client(&base);
    let id = submit(&client, "slowish", None).await;
    let r = wait_record(&client, &id, |r| r.status == Status::Running).await;
    let at = procs
        .iter()
        .position(|(name, _)| Some(*name) == r.worker.as_deref())
        .expect("runs on a or b");
    let other = procs[1 - at].0;
    let victim = &mut procs[at].1;
    signal(victim, nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let _ = victim.child.wait().await;
    let rerun = wait_record(&client, &id, |r| r.worker.as_deref() == Some(other)).await;
    let after = killed.elapsed();
    assert!(
        after < Duration::from_secs(5),
        "re-run on {other} only after {after:?}"
    );
    assert_eq!(rerun.status, Status::Running);
    let done = wait_record(&client, &id, |r| r.status.is_final()).await;
    assert_eq!(done.status, Status::Success, "{done:?}");
    let statuses: Vec<String> = attempt_workers(&done).into_iter().map(|(s, _)| s).collect();
    assert_eq!(statuses, ["lost", "success"], "{done:?}");
    assert_eq!(json_attempts(&done)[1]["worker"], other);
    eprintln!("re-run {after:?} after the kill");
}

/// A worker cut off (here: stopped with SIGSTOP) long enough to lose its
/// lease comes back: its late result is dropped, the task keeps the result
/// of the run elsewhere, and the worker registers again by itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_worker_loses_its_lease_its_late_result_is_dropped_and_it_rejoins() {
    let fx = Fixture::new(MANIFEST);
    let (_cp, base) = spawn_control_plane_with(&fx, 1, &[], &["--no-local-tasks"]).await;
    let a = subworker(&fx, &base, "a", 1, &[]).await;
    let client = client(&base);
    let id = submit(&client, "nap", None).await;
    wait_record(&client, &id, |r| r.worker.as_deref() == Some("a")).await;
    signal(&a, nix::sys::signal::Signal::SIGSTOP);
    // Its task process is not stopped: it ends, and its result waits for a.
    let inactive = wait_for_async(|| async {
        worker(&client, "a")
            .await
            .is_some_and(|w| w.status == "inactive")
    })
    .await;
    assert!(inactive, "a was never marked inactive");
    let b = subworker(&fx, &base, "b", 1, &[]).await;
    let done = wait_record(&client, &id, |r| r.status.is_final()).await;
    assert_eq!(done.status, Status::Success);
    signal(&a, nix::sys::signal::Signal::SIGCONT);
    assert!(
        wait_for(Duration::from_secs(20), || a.said("registered again")).await,
        "a never registered again:\n{}",
        a.stderr()
    );
    assert_eq!(worker(&client, "a").await.expect("a").status, "active");
    // a's late report changed nothing.
    let later = record(&client, &id).await;
    assert_eq!(later.result, done.result);
    assert_eq!(
        attempt_workers(&later),
        [
            ("lost".to_owned(), "a".to_owned()),
            ("success".to_owned(), "b".to_owned())
        ]
    );
    assert_eq!(worker(&client, "b").await.expect("b").tasks_done, 1);
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_task_on_a_subworker() {
    let fx = Fixture::new(MANIFEST);
    let (_cp, base) = spawn_control_plane_with(&fx, 1, &[], &["--no-local-tasks"]).await;
    let a = subworker(&fx, &base, "a", 1, &[]).await;
    let client = client(&base);
    let id = submit(&client, "long", None).await;
    let pid_file = fx.path(&format!("long-{}-", a.pid()));
    let pid = wait_pid_with_prefix(&pid_file).await;
    let _task = KillOnDrop(pid);
    let reply = client.cancel(&id).await.expect("cancel");
    assert!(reply.cancelled, "{reply:?}");
    assert!(
        wait_for(Duration::from_secs(10), || !process_alive(pid)).await,
        "the task's process {pid} on the subworker is still alive"
    );
    let r = wait_record(&client, &id, |r| r.status.is_final()).await;
    assert_eq!(r.status, Status::Cancelled);
    assert_eq!(worker(&client, "a").await.expect("a").load, 0);
}

/// The pid a `long` task wrote to `<prefix><pid>.pid`.
async fn wait_pid_with_prefix(prefix: &std::path::Path) -> u32 {
    let dir = prefix.parent().expect("dir").to_owned();
    let start = prefix
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let find = || {
        std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(&start)?
                .strip_suffix(".pid")?
                .parse()
                .ok()?;
            // Written once the shell has its pid: the file may be empty for a moment.
            (!std::fs::read_to_string(e.path()).ok()?.trim().is_empty()).then_some(pid)
        })
    };
    assert!(
        wait_for(Duration::from_secs(10), || find().is_some()).await,
        "no {start}*.pid in {}",
        dir.display()
    );
    find().expect("pid file")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_subworker_and_hands_back_what_outlasts_its_grace() {
    let fx = Fixture::new(MANIFEST);
    let (_cp, base) = spawn_control_plane_with(&fx, 1, &[], &["--no-local-tasks"]).await;
    let mut a = subworker(&fx, &base, "a", 2, &["--shutdown-grace", "1500ms"]).await;
    let client = client(&base);
    let short = submit(&client, "nap", None).await;
    let long = submit(&client, "long", None).await;
    wait_record(&client, &short, |r| r.worker.as_deref() == Some("a")).await;
    wait_record(&client, &long, |r| r.worker.as_deref() == Some("a")).await;
    // Leased to a is not yet running there: its process has started.
    wait_pid_with_prefix(&fx.path(&format!("long-{}-", a.pid()))).await;
    signal(&a, nix::sys::signal::Signal::SIGTERM);
    assert!(
        wait_for_async(|| async {
            worker(&client, "a")
                .await
                .is_some_and(|w| w.status == "draining")
        })
        .await
    );
    // Draining: a new task is not handed to it.
    let waiting = submit(&client, "eight", None).await;
    let status = tokio::time::timeout(Duration::from_secs(20), a.child.wait())
        .await
        .expect("a exits after its grace period")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{}", a.stderr());
    assert_eq!(record(&client, &waiting).await.status, Status::Queued);
    // The short task finished there; the long one was handed back.
    let r = record(&client, &short).await;
    assert_eq!(r.status, Status::Success);
    assert_eq!(
        attempt_workers(&r),
        [("success".to_owned(), "a".to_owned())]
    );
    let r = record(&client, &long).await;
    assert_eq!(r.status, Status::Queued, "{r:?}");
    assert_eq!(
        attempt_workers(&r),
        [("handed_back".to_owned(), "a".to_owned())]
    );
    // It deregistered: gone from the list at once, not after a silence.
    assert!(worker(&client, "a").await.is_none());
    // The next worker takes both.
    let _b = subworker(&fx, &base, "b", 2, &[]).await;
    let r = wait_record(&client, &waiting, |r| r.status.is_final()).await;
    assert_eq!(
        attempt_workers(&r),
        [("success".to_owned(), "b".to_owned())]
    );
    let r = wait_record(&client, &long, |r| r.status == Status::Running).await;
    assert_eq!(r.worker.as_deref(), Some("b"));
    assert_eq!(r.attempts.len(), 1);
    client.cancel(&long).await.expect("cancel");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_control_plane_is_rejoined_and_leaves_running_tasks_to_their_worker() {
    let fx = Fixture::new(MANIFEST);
    let (mut cp, base) = spawn_control_plane_with(&fx, 1, &[], &["--no-local-tasks"]).await;
    let a = subworker(&fx, &base, "a", 1, &[]).await;
    let client = client(&base);
    let id = submit(&client, "slowish", None).await;
    let running = wait_record(&client, &id, |r| r.worker.as_deref() == Some("a")).await;
    // Past the journal's lazy write of the running state.
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(&cp, nix::sys::signal::Signal::SIGKILL);
    let _ = cp.child.wait().await;
    let _cp = spawn_control_plane_at(&fx, &base, 1, &[], &["--no-local-tasks"])
        .await
        .expect("restart on the same ports");
    let done = wait_record(&client, &id, |r| r.status.is_final()).await;
    assert_eq!(done.status, Status::Success, "{done:?}");
    // One attempt: the run on a went on through the restart.
    assert_eq!(
        attempt_workers(&done),
        [("success".to_owned(), "a".to_owned())]
    );
    assert_eq!(done.started_at, running.started_at);
    assert!(a.said("registered again"), "{}", a.stderr());
    let info = worker(&client, "a").await.expect("a rejoined");
    assert_eq!((info.status.as_str(), info.tasks_done), ("active", 1));
    // And it takes new work.
    let next = submit(&client, "eight", None).await;
    let r = wait_record(&client, &next, |r| r.status.is_final()).await;
    assert_eq!(
        (r.result.clone(), attempt_workers(&r)),
        (Value::from(8), vec![("success".to_owned(), "a".to_owned())])
    );
}
