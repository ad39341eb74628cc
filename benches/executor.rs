//! Executor overhead, measured against the raw thing it wraps.
//!
//! `cargo bench --bench executor [-- --quick]`
//!
//! 1. One-shot: tasks/s of `Executor::run` on a trivial program (`/bin/echo 8`)
//!    against a raw loop that spawns the same program with the same pipes
//!    (request written to stdin, stdout read to the end, exit awaited).
//!    Goal: ratio >= 0.9.
//! 2. Pool: tasks/s of the Python runner's `add` in a warm pool of one process
//!    against a raw JSON-lines round trip to a warm Python process running a
//!    minimal loop. Goal: ratio >= 0.8.
//!
//! Raw and fastworker rounds alternate (`ROUNDS` each, after a warm-up); the
//! medians of the rates and of the per-round ratios are shown.
//! Results go to stdout as a Markdown table (docs/benchmarks.md holds a copy).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::executor::{Executor, TaskRequest};
use fastworker::manifest::{Manifest, TaskSpec};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 9;

/// The raw Python side of the pool comparison: the least a warm process can do.
const RAW_PYTHON_LOOP: &str = r#"
import json, sys
out = sys.stdout
for line in sys.stdin:
    req = json.loads(line)
    a, b = req["args"]
    out.write(json.dumps({"id": req["id"], "ok": a + b}) + "\n")
    out.flush()
"#;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (oneshot_n, pool_n) = if quick { (100, 1000) } else { (400, 5000) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = write_manifest(dir.path());

        let echo = Arc::clone(manifest.task("echo").expect("echo"));
        let oneshot = compare(
            ROUNDS,
            || raw_spawn_loop(oneshot_n),
            || executor_loop(&echo, oneshot_n),
        )
        .await;

        let add = Arc::clone(manifest.task("add").expect("add"));
        let python = add.launch.program.clone().expect("a Python 3 interpreter");
        let pool = compare(
            ROUNDS,
            || raw_json_lines(&python, pool_n),
            || executor_loop(&add, pool_n),
        )
        .await;

        println!(
            "| measurement | n per round | raw (tasks/s) | fastworker (tasks/s) | ratio | goal |"
        );
        println!("|---|---|---|---|---|---|");
        oneshot.row("one-shot `/bin/echo 8`, sequential", oneshot_n, 0.9);
        pool.row(
            "pool, Python `add`, 1 warm process, sequential",
            pool_n,
            0.8,
        );
        println!();
        println!("python: {}", python.display());
        println!(
            "rounds: {ROUNDS} (median shown), machine: {} cores",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    });
}

fn write_manifest(dir: &Path) -> Manifest {
    std::fs::write(
        dir.join("bench_tasks.py"),
        "def add(x, y):\n    return x + y\n",
    )
    .expect("write module");
    let path = dir.join("tasks.toml");
    std::fs::write(
        &path,
        r#"
[tasks.echo]
command = ["/bin/echo", "8"]

[tasks.add]
runner = "python"
function = "bench_tasks:add"
mode = "pool"
pool_size = 1
"#,
    )
    .expect("write manifest");
    Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Rates of the raw loop and of fastworker, measured in alternating rounds.
struct Comparison {
    raw: Vec<f64>,
    ours: Vec<f64>,
    ratios: Vec<f64>,
}

impl Comparison {
    fn row(&self, what: &str, n: usize, goal: f64) {
        let (raw, ours, ratio) = (median(&self.raw), median(&self.ours), median(&self.ratios));
        let (lo, hi) = (min(&self.ratios), max(&self.ratios));
        println!(
            "| {what} | {n} | {raw:.0} | {ours:.0} | {ratio:.2} (rounds: {lo:.2}–{hi:.2}) | >= {goal} |"
        );
    }
}

/// Runs the raw loop and fastworker's in alternating order, `rounds` times
/// after one warm-up each, so that both see the same machine: on a small VM
/// the rate of a ping-pong between two processes swings several-fold with
/// how awake the cores are. The ratio is taken per round.
async fn compare<R, RF, O, OF>(rounds: usize, mut raw: R, mut ours: O) -> Comparison
where
    R: FnMut() -> RF,
    RF: std::future::Future<Output = f64>,
    O: FnMut() -> OF,
    OF: std::future::Future<Output = f64>,
{
    raw().await;
    ours().await;
    let mut c = Comparison {
        raw: Vec::new(),
        ours: Vec::new(),
        ratios: Vec::new(),
    };
    for round in 0..rounds {
        let (r, o) = if round % 2 == 0 {
            let r = raw().await;
            (r, ours().await)
        } else {
            let o = ours().await;
            (raw().await, o)
        };
        c.raw.push(r);
        c.ours.push(o);
        c.ratios.push(o / r);
    }
    c
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn request(name: &str, i: usize) -> TaskRequest {
    TaskRequest::new(name, vec![json!(i), json!(1)], serde_json::Map::new())
}

async fn executor_loop(spec: &Arc<TaskSpec>, n: usize) -> f64 {
    let executor = Executor::new();
    let cancel = CancellationToken::new();
    // Warm the pool (if any) outside the timed part.
    let warm = executor.run(spec, &request(&spec.name, 0), &cancel).await;
    assert!(
        warm.outcome.is_success(),
        "{:?} {}",
        warm.outcome,
        warm.stderr
    );
    let start = Instant::now();
    for i in 0..n {
        let e = executor.run(spec, &request(&spec.name, i), &cancel).await;
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
    }
    let r = rate(n, start.elapsed());
    executor.shutdown().await;
    r
}

async fn raw_spawn_loop(n: usize) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let payload = serde_json::to_vec(&request("echo", i)).expect("json");
        let mut child = tokio::process::Command::new("/bin/echo")
            .arg("8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(&payload).await;
        drop(stdin);
        let mut out = Vec::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_end(&mut out)
            .await
            .expect("read");
        child.wait().await.expect("wait");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(value, json!(8));
    }
    rate(n, start.elapsed())
}

async fn raw_json_lines(python: &PathBuf, n: usize) -> f64 {
    let mut child = tokio::process::Command::new(python)
        .args(["-c", RAW_PYTHON_LOOP])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let round_trip = |i: usize| {
        let mut req = serde_json::to_value(request("add", i)).expect("json");
        req["id"] = json!(i);
        let mut bytes = serde_json::to_vec(&req).expect("json");
        bytes.push(b'\n');
        bytes
    };
    // Warm-up round trip, then the timed ones.
    let mut start = Instant::now();
    for i in 0..=n {
        if i == 1 {
            start = Instant::now();
        }
        stdin.write_all(&round_trip(i)).await.expect("write");
        stdin.flush().await.expect("flush");
        line.clear();
        stdout.read_line(&mut line).await.expect("read");
        let reply: serde_json::Value = serde_json::from_str(&line).expect("reply");
        assert_eq!(reply["ok"], json!(i + 1));
    }
    let r = rate(n, start.elapsed());
    drop(stdin);
    let _ = child.wait().await;
    r
}
