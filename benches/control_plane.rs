//! The control plane over NNG on loopback TCP.
//!
//! `cargo bench --bench control_plane [-- --quick]`
//!
//! Measures, with the Python runner's `add` in a warm pool (pool_size 2,
//! concurrency 2):
//! 1. the executor alone, sequential (the reference: no network);
//! 2. blocking submits, sequential, each on a new REQ socket as the CLI and
//!    FastWorker's Python client do: tasks/s and latency percentiles;
//! 3. blocking submits, 32 and 256 in flight (4 × n each: a rate over a
//!    short run swings too much);
//! 4. ack-mode submits (accepted, not waited for), 32 in flight: the rate
//!    they are accepted at, and the rate they are accepted and run at
//!    (4 × n);
//! 5. the `fastworker submit add 5 3` command, process start to exit.
//!
//! Steps 2–4, and batches of 1000 (accepted; accepted and run), are measured
//! with the journal and with `--no-journal`, each on a fresh control plane,
//! in `ROUNDS` alternating rounds: on this 2-core VM a rate swings by tens of
//! percent from one run to the next, more than the journal's cost. Medians
//! are shown, and the journal's share is the median of the per-round ratios.
//!
//! Results go to stdout as Markdown (docs/benchmarks.md holds a copy).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::client::Client;
use fastworker::control_plane;
use fastworker::executor::{Executor, TaskRequest};
use fastworker::protocol::WireTask;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use common::{concurrent, median, submit, task};

mod common;

const ROUNDS: usize = 5;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, rounds) = if quick { (500, 3) } else { (3000, ROUNDS) };
    common::run(bench(n, rounds));
}

/// One measured path: its rate and latencies.
#[derive(Debug, Clone)]
struct Row {
    what: &'static str,
    n: usize,
    rate: f64,
    p50: f64,
    p99: f64,
}

async fn bench(n: usize, rounds: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = common::manifest(dir.path(), "", "");

    println!("| measurement | n | tasks/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");

    let spec = Arc::clone(manifest.task("add").expect("add"));
    let executor = Executor::new();
    let cancel = CancellationToken::new();
    let request = |i: usize| TaskRequest::new("add", vec![json!(i), json!(1)], Default::default());
    executor.run(&spec, &request(0), &cancel).await; // warm
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let e = executor.run(&spec, &request(i), &cancel).await;
        assert!(e.outcome.is_success());
        lat.push(t.elapsed());
    }
    print_row(&row(
        "executor alone, sequential (no network)",
        n,
        start.elapsed(),
        &mut lat,
    ));
    executor.shutdown().await;

    // The same submits with the journal (every accepted task on disk before
    // it is acknowledged) and without it (--no-journal), in alternating
    // rounds, each on a fresh control plane.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for journal in order {
            let data = tempfile::tempdir().expect("data dir");
            let data_dir = journal.then(|| data.path().to_path_buf());
            let (cp, base, shutdown) =
                common::start_control_plane(&manifest, |c| c.data_dir = data_dir.clone()).await;
            let client = Arc::new(Client::new(&base, Duration::from_secs(30)).expect("client"));
            let rows = submits(&cp, &client, n).await;
            if journal {
                with.push(rows);
            } else {
                without.push(rows);
            }
            if round == 0 && !journal {
                cli(&base).await;
            }
            shutdown.cancel();
            cp.wait().await;
        }
    }
    for (label, runs) in [("journal", &with), ("no journal", &without)] {
        for i in 0..runs[0].len() {
            let of =
                |f: fn(&Row) -> f64| median(&runs.iter().map(|r| f(&r[i])).collect::<Vec<_>>());
            let first = &runs[0][i];
            println!(
                "| {label}: {} | {} | {:.0} | {:.2} | {:.2} |",
                first.what,
                first.n,
                of(|r| r.rate),
                of(|r| r.p50),
                of(|r| r.p99)
            );
        }
    }
    println!();
    println!("The journal's cost: tasks/s with it as a share of tasks/s without it, per round.");
    println!();
    println!(
        "| path | with journal (tasks/s) | without (tasks/s) | share (median) | share per round |"
    );
    println!("|---|---|---|---|---|");
    for i in 0..with[0].len() {
        let rates = |runs: &[Vec<Row>]| runs.iter().map(|r| r[i].rate).collect::<Vec<_>>();
        let (w, wo) = (rates(&with), rates(&without));
        let shares: Vec<f64> = w.iter().zip(&wo).map(|(a, b)| a / b).collect();
        let each: Vec<String> = shares
            .iter()
            .map(|s| format!("{:.0}%", s * 100.0))
            .collect();
        println!(
            "| {} | {:.0} | {:.0} | {:.0}% | {} |",
            with[0][i].what,
            median(&w),
            median(&wo),
            median(&shares) * 100.0,
            each.join(", ")
        );
    }
    println!();
    println!(
        "rounds: {rounds} (medians shown); machine: {} cores; control plane: concurrency 2, pool_size 2; loopback TCP",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}

async fn submits(cp: &control_plane::ControlPlane, client: &Arc<Client>, n: usize) -> Vec<Row> {
    submit(client, 0).await; // warm the pool
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        submit(client, i).await;
        lat.push(t.elapsed());
    }
    let mut rows = vec![row(
        "blocking submit, sequential",
        n,
        start.elapsed(),
        &mut lat,
    )];

    // Many submits at once: longer runs, as a rate over a short one swings.
    let many = 4 * n;
    let (elapsed, mut lat) = concurrent(client, many, 32, false).await;
    rows.push(row(
        "blocking submit, 32 in flight",
        many,
        elapsed,
        &mut lat,
    ));
    let (elapsed, mut lat) = concurrent(client, many, 256, false).await;
    rows.push(row(
        "blocking submit, 256 in flight",
        many,
        elapsed,
        &mut lat,
    ));

    let start = Instant::now();
    let (elapsed, mut lat) = concurrent(client, many, 32, true).await;
    rows.push(row(
        "ack-mode submit, 32 in flight: accepted",
        many,
        elapsed,
        &mut lat,
    ));
    common::idle(cp).await;
    let mut lat = vec![start.elapsed()];
    rows.push(row(
        "ack-mode submit, 32 in flight: accepted and all run",
        many,
        start.elapsed(),
        &mut lat,
    ));

    // Batches of 1000 (the CLI's --batch-size): accepted, then all run.
    let tasks: Vec<WireTask> = (0..n * 4).map(task).collect();
    let start = Instant::now();
    let mut lat = Vec::new();
    for chunk in tasks.chunks(1000) {
        let t = Instant::now();
        let reply = client
            .submit_batch(chunk, fastworker::manifest::Priority::Normal)
            .await
            .expect("batch");
        assert!(reply.batch_accepted, "{reply:?}");
        lat.push(t.elapsed());
    }
    rows.push(row(
        "batch submit, 1000 a message: accepted (p = per message)",
        tasks.len(),
        start.elapsed(),
        &mut lat,
    ));
    common::idle(cp).await;
    let mut lat = vec![start.elapsed()];
    rows.push(row(
        "batch submit: accepted and all run",
        tasks.len(),
        start.elapsed(),
        &mut lat,
    ));
    rows
}

async fn cli(base: &str) {
    let runs = 30;
    let mut lat = Vec::with_capacity(runs);
    let start = Instant::now();
    for _ in 0..runs {
        let t = Instant::now();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fastworker"))
            .args(["submit", "--base-address", base, "add", "5", "3"])
            .output()
            .await
            .expect("fastworker submit");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "8\n");
        lat.push(t.elapsed());
    }
    print_row(&row(
        "`fastworker submit add 5 3` command, start to exit",
        runs,
        start.elapsed(),
        &mut lat,
    ));
}

fn row(what: &'static str, n: usize, elapsed: Duration, lat: &mut [Duration]) -> Row {
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    Row {
        what,
        n,
        rate: n as f64 / elapsed.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
    }
}

fn print_row(row: &Row) {
    println!(
        "| {} | {} | {:.0} | {:.2} | {:.2} |",
        row.what, row.n, row.rate, row.p50, row.p99
    );
}
