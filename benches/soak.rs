//! The reliability soak: long runs against the real binary that count, on
//! the task processes' side, every execution of every task.
//!
//! ```sh
//! cargo bench --bench soak                 # all three, about 3 minutes
//! cargo bench --bench soak -- load         # or one: load, crash, subworker
//! ```
//!
//! - **load**: 100,000 tasks from 4 clients with 64 in flight each, mixed
//!   priorities, one-shot (a tenth) and pool; each execution appends its
//!   task id to a log, each result is checked against its task's own
//!   arguments: lost, duplicated and mismatched must all be 0.
//! - **crash**: 10,000 tasks accepted (queued, delayed, failing once so
//!   that they retry, and running), and the control plane `kill -9`ed 5
//!   times at random moments and started again; every task must end in
//!   success (0 lost); runs cut short by a kill run again (counted).
//! - **subworker**: a control plane and two subworkers, 5,000 tasks; one
//!   subworker is frozen (SIGSTOP) for 5 s mid-load, so the control plane
//!   cuts it off and runs its tasks elsewhere, then it is thawed and
//!   rejoins: 0 lost; its late results are dropped.
//!
//! It prints one line per scenario (held / lost / duplicated / crashed /
//! time), as docs/reliability.md shows them.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fastworker::client::Client;
use fastworker::manifest::Priority;
use fastworker::protocol::{Status, WireTask};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_fastworker");

const TASKS_PY: &str = r#"
import os, time

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "executions.log")

def record(task_id, n):
    # One line per execution; O_APPEND keeps lines whole across processes.
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (task_id + "\n").encode())
    os.close(fd)
    return n * 2

def flaky(task_id, n):
    # Fails its first run (a marker file remembers it), then succeeds.
    marker = os.path.join(os.path.dirname(LOG), "flaky-" + task_id)
    record(task_id, n)
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first run fails on purpose")
    return n * 2

def slow(task_id, n):
    time.sleep(0.05)
    return record(task_id, n)
"#;

const RECORD_SH: &str = r#"#!/bin/sh
# One-shot: the task id and the number are the arguments.
request=$(cat)
id=$(printf '%s' "$request" | sed -e 's/.*"args":\["\([^"]*\)",\([0-9]*\)\].*/\1/')
n=$(printf '%s' "$request" | sed -e 's/.*"args":\["\([^"]*\)",\([0-9]*\)\].*/\2/')
printf '%s\n' "$id" >> executions.log
echo $((n * 2))
"#;

const MANIFEST: &str = r#"
[tasks.record]
runner = "python"
function = "soak_tasks:record"
pool_size = 2

[tasks.record_oneshot]
script = "record.sh"

[tasks.flaky]
runner = "python"
function = "soak_tasks:flaky"
pool_size = 2
retries = 2
retry_backoff = "100ms"

[tasks.slow]
runner = "python"
function = "soak_tasks:slow"
pool_size = 2
"#;

/// A scenario's line in the report.
struct Line {
    name: &'static str,
    tasks: usize,
    held: bool,
    lost: usize,
    duplicated: usize,
    mismatched: usize,
    crashed: usize,
    took: Duration,
    note: String,
}

impl Line {
    fn print(&self) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} s | {} |",
            self.name,
            self.tasks,
            if self.held { "held" } else { "FAILED" },
            self.lost,
            self.duplicated,
            self.mismatched,
            self.crashed,
            self.took.as_secs_f64(),
            self.note
        );
    }
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("soak_tasks.py"), TASKS_PY).expect("tasks");
    std::fs::write(dir.path().join("record.sh"), RECORD_SH).expect("script");
    std::process::Command::new("chmod")
        .args(["+x", &dir.path().join("record.sh").display().to_string()])
        .status()
        .expect("chmod");
    std::fs::write(dir.path().join("tasks.toml"), MANIFEST).expect("manifest");
    dir
}

/// Executions per task id, from the tasks' own log.
fn executions(dir: &Path) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for line in std::fs::read_to_string(dir.join("executions.log"))
        .unwrap_or_default()
        .lines()
    {
        *seen.entry(line.to_owned()).or_default() += 1;
    }
    seen
}

/// A real control plane on `port` (retrying others when taken).
async fn control_plane(dir: &Path, extra: &[&str]) -> (Child, String) {
    for attempt in 0..20u16 {
        let port = 21_000
            + (std::process::id() as u16)
                .wrapping_mul(13)
                .wrapping_add(attempt * 17)
                % 30_000;
        let base = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(BIN)
            .args([
                "control-plane",
                "--no-gui",
                "--base-address",
                &base,
                "--discovery-address",
            ])
            .arg(format!("tcp://127.0.0.1:{}", port + 6))
            .args([
                "--manifest",
                "tasks.toml",
                "--data-dir",
                "data",
                "--concurrency",
                "2",
            ])
            .args(extra)
            .current_dir(dir)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("control plane");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.contains("ready") => {
                    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                    return (child, base);
                }
                Ok(Some(line)) if line.contains("cannot start") => {
                    assert!(line.contains("Address in use"), "{line}");
                    break;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let _ = child.wait().await;
    }
    panic!("no free ports");
}

fn task(name: &str, n: usize, priority: Option<Priority>) -> WireTask {
    let id = uuid::Uuid::new_v4().to_string();
    WireTask {
        args: vec![json!(id), json!(n)],
        id,
        name: name.to_owned(),
        kwargs: Default::default(),
        priority,
        eta: None,
        callback: None,
        reply: Default::default(),
        traceparent: None,
        tracestate: None,
    }
}

async fn load() -> Line {
    const CLIENTS: usize = 4;
    const IN_FLIGHT: usize = 64;
    const TASKS: usize = 100_000;
    let dir = setup();
    let (mut cp, base) = control_plane(dir.path(), &[]).await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let base = base.clone();
        clients.push(tokio::spawn(async move {
            let client = Client::new(&base, Duration::from_secs(30)).expect("client");
            let mut ids = Vec::new();
            let mut mismatched = 0;
            let mut pending = futures_util::stream::FuturesUnordered::new();
            let mine: Vec<usize> = (0..TASKS).filter(|i| i % CLIENTS == c).collect();
            let mut next = mine.into_iter();
            loop {
                while pending.len() < IN_FLIGHT {
                    let Some(i) = next.next() else { break };
                    let name = if i % 10 == 0 {
                        "record_oneshot"
                    } else {
                        "record"
                    };
                    let priority = [
                        None,
                        Some(Priority::Critical),
                        Some(Priority::High),
                        Some(Priority::Low),
                    ][i % 4];
                    let t = task(name, i, priority);
                    ids.push(t.id.clone());
                    let client = client.clone();
                    pending.push(async move {
                        let r = client.submit(t, priority, Duration::from_secs(600)).await;
                        (i, r)
                    });
                }
                use futures_util::StreamExt;
                let Some((i, r)) = pending.next().await else {
                    break;
                };
                match r {
                    Ok(r) if r.status == Status::Success && r.result == json!(i * 2) => {}
                    other => {
                        mismatched += 1;
                        if mismatched < 5 {
                            eprintln!("task {i}: {other:?}");
                        }
                    }
                }
            }
            (ids, mismatched)
        }));
    }
    let (mut ids, mut mismatched) = (Vec::new(), 0);
    for c in clients {
        let (i, m) = c.await.expect("client");
        ids.extend(i);
        mismatched += m;
    }
    let took = started.elapsed();
    let crashed = usize::from(cp.try_wait().ok().flatten().is_some());
    let seen = executions(dir.path());
    let lost = ids.iter().filter(|id| !seen.contains_key(*id)).count();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    let _ = cp.kill().await;
    Line {
        name: "load: 4 clients × 64 in flight, mixed priorities, 10% one-shot",
        tasks: TASKS,
        held: lost == 0 && duplicated == 0 && mismatched == 0 && crashed == 0,
        lost,
        duplicated,
        mismatched,
        crashed,
        took,
        note: format!("{:.0} tasks/s", TASKS as f64 / took.as_secs_f64()),
    }
}

async fn crash() -> Line {
    const TASKS: usize = 10_000;
    const KILLS: usize = 5;
    let dir = setup();
    let (mut cp, base) = control_plane(dir.path(), &[]).await;
    let client = Client::new(&base, Duration::from_secs(30)).expect("client");
    let started = Instant::now();
    // Queued, delayed (up to 3 s), failing once to retry, and slow ones
    // that are running at the kills.
    let mut ids = Vec::with_capacity(TASKS);
    let mut batch = Vec::new();
    for i in 0..TASKS {
        let name = ["record", "flaky", "slow", "record"][i % 4];
        let mut t = task(name, i, None);
        if i % 5 == 0 {
            let at = chrono::Utc::now() + chrono::TimeDelta::milliseconds((i % 3000) as i64);
            t.eta = Some(at.to_rfc3339());
        }
        ids.push(t.id.clone());
        batch.push(t);
        if batch.len() == 500 {
            let reply = client
                .submit_batch(&batch, Priority::Normal)
                .await
                .expect("batch");
            assert!(reply.batch_accepted, "{reply:?}");
            batch.clear();
        }
    }
    let mut crashed = 0;
    for _ in 0..KILLS {
        let wait = Duration::from_millis(200 + u64::from(fastrand::u16(..1500)));
        tokio::time::sleep(wait).await;
        crashed += usize::from(cp.try_wait().ok().flatten().is_some());
        let _ = cp.start_kill();
        let _ = cp.wait().await;
        let (next, next_base) = control_plane(dir.path(), &[]).await;
        cp = next;
        assert_eq!(
            next_base, base,
            "the control plane came back on other ports"
        );
    }
    // Everything ends.
    let client = Client::new(&base, Duration::from_secs(30)).expect("client");
    let (pending, failed) = settle(&client, &ids).await;
    let took = started.elapsed();
    let seen = executions(dir.path());
    let lost = pending + failed + ids.iter().filter(|id| !seen.contains_key(*id)).count();
    // flaky tasks run twice on purpose.
    let expected = |i: usize| if i % 4 == 1 { 2 } else { 1 };
    let duplicated = ids
        .iter()
        .enumerate()
        .filter(|(i, id)| seen.get(*id).copied().unwrap_or(0) > expected(*i))
        .count();
    let _ = cp.kill().await;
    Line {
        name: "crash: kill -9 five times at random moments",
        tasks: TASKS,
        held: lost == 0 && crashed == 0,
        lost,
        duplicated,
        mismatched: 0,
        crashed,
        took,
        note: "duplicated: runs cut short by a kill, run again (at least once)".to_owned(),
    }
}

async fn subworker() -> Line {
    const TASKS: usize = 5_000;
    let dir = setup();
    let (mut cp, base) = control_plane(dir.path(), &["--no-local-tasks"]).await;
    let mut workers = Vec::new();
    for w in ["w1", "w2"] {
        let mut child = Command::new(BIN)
            .args([
                "subworker",
                "--worker-id",
                w,
                "--control-plane-address",
                &base,
            ])
            .args(["--manifest", "tasks.toml", "--concurrency", "2"])
            .current_dir(dir.path())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("subworker");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("ready") {
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        workers.push(child);
    }
    let client = Client::new(&base, Duration::from_secs(30)).expect("client");
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for i in 0..TASKS {
        let t = task(if i % 2 == 0 { "slow" } else { "record" }, i, None);
        ids.push(t.id.clone());
        batch.push(t);
        if batch.len() == 500 {
            assert!(
                client
                    .submit_batch(&batch, Priority::Normal)
                    .await
                    .expect("batch")
                    .batch_accepted
            );
            batch.clear();
        }
    }
    // Freeze w1 mid-load: silent past 3 s, it is cut off.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w1 = nix::unistd::Pid::from_raw(workers[0].id().expect("pid") as i32);
    let _ = nix::sys::signal::kill(w1, nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = nix::sys::signal::kill(w1, nix::sys::signal::Signal::SIGCONT);
    let (pending, failed) = settle(&client, &ids).await;
    let took = started.elapsed();
    let seen = executions(dir.path());
    let lost = pending + failed + ids.iter().filter(|id| !seen.contains_key(*id)).count();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    let workers_list: Value =
        serde_json::to_value(client.workers().await.expect("workers").workers).expect("json");
    let crashed = usize::from(cp.try_wait().ok().flatten().is_some());
    for mut w in workers {
        let _ = w.kill().await;
    }
    let _ = cp.kill().await;
    let rejoined = workers_list.as_array().is_some_and(|w| {
        w.iter()
            .any(|w| w["worker_id"] == "w1" && w["status"] == "active")
    });
    Line {
        name: "subworker: one of two frozen 5 s mid-load, then thawed",
        tasks: TASKS,
        held: lost == 0 && crashed == 0 && rejoined,
        lost,
        duplicated,
        mismatched: 0,
        crashed,
        took,
        note: format!(
            "duplicated: runs of the frozen worker's leases, run again elsewhere; w1 {}",
            if rejoined {
                "rejoined"
            } else {
                "DID NOT rejoin"
            }
        ),
    }
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        println!("| scenario | tasks | invariants | lost | duplicated | mismatched | crashed | time | note |");
        println!("|---|---|---|---|---|---|---|---|---|");
        if wants("load") {
            load().await.print();
        }
        if wants("crash") {
            crash().await.print();
        }
        if wants("subworker") {
            subworker().await.print();
        }
    });
}

/// Waits (10 minutes at most) until every task has ended: how many never
/// did, and how many ended other than in success.
async fn settle(client: &Client, ids: &[String]) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut pending: Vec<&String> = ids.iter().collect();
    let mut failed = 0;
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for id in pending {
            match client.status(id).await.ok().and_then(|s| s.task) {
                Some(t) if t.status == Status::Success => {}
                Some(t) if t.status.is_final() => failed += 1,
                _ => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    (pending.len(), failed)
}
