//! Throughput with 0, 1 and 2 subworkers, and the latency of the hop.
//!
//! `cargo bench --bench subworkers [-- --quick]`
//!
//! A control plane (journal on, as by default) takes the Python runner's
//! `add` (warm pool, pool_size 2) over loopback TCP and runs it:
//! - with 0 subworkers: itself, concurrency 2;
//! - with 1 or 2 subworkers (`fastworker subworker` processes, concurrency 2
//!   each): it only coordinates (`--no-local-tasks`), every task is leased.
//!
//! For each: blocking submits one at a time (latency: the hop is the
//! difference to 0 subworkers), blocking submits with 32 in flight, and
//! batches of 1000, accepted and all run. Configurations alternate over
//! `ROUNDS` rounds on fresh control planes; medians are shown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::client::Client;
use fastworker::control_plane;
use fastworker::manifest::Manifest;
use fastworker::protocol::WireTask;

use common::{concurrent, submit, task};

mod common;

const ROUNDS: usize = 3;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, rounds) = if quick { (300, 1) } else { (2000, ROUNDS) };
    common::run(bench(n, rounds));
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    seq_rate: f64,
    seq_p50: f64,
    seq_p99: f64,
    flight_rate: f64,
    batch_rate: f64,
    nap_rate: f64,
}

async fn bench(n: usize, rounds: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = common::manifest(
        dir.path(),
        "\nimport time\n\ndef nap():\n    time.sleep(0.02)\n",
        "\n[tasks.nap]\nrunner = \"python\"\nfunction = \"bench_tasks:nap\"\nmode = \"pool\"\npool_size = 2\n",
    );
    let path = manifest.path.clone();
    let mut figures: [Vec<Figures>; 3] = Default::default();
    for round in 0..rounds {
        for k in [0, 1, 2].map(|k| (k + round) % 3) {
            figures[k].push(one(&manifest, &path, k, n).await);
        }
    }
    println!(
        "| subworkers | blocking, one at a time: tasks/s | p50 ms | p99 ms | blocking, 32 in flight: tasks/s | batches of 1000, accepted and run: tasks/s | 20 ms tasks, 200 in a batch: tasks/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    let median = |runs: &[Figures], f: fn(&Figures) -> f64| {
        common::median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    for (k, runs) in figures.iter().enumerate() {
        let label = if k == 0 {
            "0 (the control plane runs them)".to_owned()
        } else {
            format!("{k} (control plane only coordinates)")
        };
        println!(
            "| {label} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |",
            median(runs, |f| f.seq_rate),
            median(runs, |f| f.seq_p50),
            median(runs, |f| f.seq_p99),
            median(runs, |f| f.flight_rate),
            median(runs, |f| f.batch_rate),
            median(runs, |f| f.nap_rate),
        );
    }
    let hop = median(&figures[1], |f| f.seq_p50) - median(&figures[0], |f| f.seq_p50);
    println!();
    println!(
        "The hop to a subworker adds {hop:.2} ms to a blocking submit's median latency (1 subworker against 0)."
    );
    println!(
        "rounds: {rounds} (medians shown), n = {n} per measurement (batches: 4n); machine: {} cores; journal on; loopback TCP",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}

/// One configuration on a fresh control plane: `k` subworkers.
async fn one(manifest: &Arc<Manifest>, path: &std::path::Path, k: usize, n: usize) -> Figures {
    let data = tempfile::tempdir().expect("data dir");
    let (cp, base, shutdown) = common::start_control_plane(manifest, |c| {
        c.local_tasks = k == 0;
        c.shutdown_grace = Duration::from_secs(1);
        c.data_dir = Some(data.path().to_path_buf());
    })
    .await;
    let mut children = Vec::new();
    for i in 0..k {
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_fastworker"))
                .args(["subworker", "--worker-id", &format!("bench{i}")])
                .args(["--control-plane-address", &base, "--concurrency", "2"])
                .arg("--manifest")
                .arg(path)
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("subworker"),
        );
    }
    let client = Arc::new(Client::new(&base, Duration::from_secs(30)).expect("client"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.workers().await.map_or(0, |w| {
        w.workers.iter().filter(|w| w.status == "active").count()
    }) < k
    {
        assert!(Instant::now() < deadline, "subworkers did not register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Warm every pool.
    concurrent(&client, 64, 8, false).await;

    let mut lat = Vec::with_capacity(n / 2);
    let start = Instant::now();
    for i in 0..n / 2 {
        let t = Instant::now();
        submit(&client, i).await;
        lat.push(t.elapsed());
    }
    let seq_rate = (n / 2) as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let (seq_p50, seq_p99) = (pct(0.5), pct(0.99));

    let (flight, _) = concurrent(&client, n, 32, false).await;
    let flight_rate = n as f64 / flight.as_secs_f64();

    let tasks: Vec<WireTask> = (0..n * 4).map(task).collect();
    let batch_rate = batch(&cp, &client, &tasks).await;
    let naps: Vec<WireTask> = (0..200)
        .map(|i| WireTask {
            name: "nap".into(),
            args: Vec::new(),
            ..task(i)
        })
        .collect();
    let nap_rate = batch(&cp, &client, &naps).await;
    eprintln!(
        "{k} subworkers: {seq_rate:.0}/s seq (p50 {seq_p50:.2} ms), {flight_rate:.0}/s 32 in flight, {batch_rate:.0}/s batches, {nap_rate:.0}/s 20 ms tasks"
    );
    drop(children);
    shutdown.cancel();
    cp.wait().await;
    Figures {
        seq_rate,
        seq_p50,
        seq_p99,
        flight_rate,
        batch_rate,
        nap_rate,
    }
}

/// Submits `tasks` in batches of 1000 and waits until all have run: tasks/s.
async fn batch(cp: &control_plane::ControlPlane, client: &Client, tasks: &[WireTask]) -> f64 {
    let start = Instant::now();
    for chunk in tasks.chunks(1000) {
        let reply = client
            .submit_batch(chunk, fastworker::manifest::Priority::Normal)
            .await
            .expect("batch");
        assert!(reply.batch_accepted, "{reply:?}");
    }
    let last = tasks.last().expect("tasks");
    loop {
        let done = client
            .status(&last.id)
            .await
            .ok()
            .and_then(|r| r.task)
            .is_some_and(|t| t.status.is_final());
        let idle = cp
            .core
            .stats()
            .await
            .is_some_and(|s| s.running == 0 && s.queued.iter().sum::<usize>() == 0);
        let leased = client
            .workers()
            .await
            .map_or(0, |w| w.workers.iter().map(|w| w.load).sum::<usize>());
        if done && idle && leased == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tasks.len() as f64 / start.elapsed().as_secs_f64()
}
