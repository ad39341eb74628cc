//! The web GUI's cost and speed.
//!
//! `cargo bench --bench gui [-- --quick]`
//!
//! 1. The control plane's task throughput with the GUI serving and 10
//!    clients reading its event stream, against the GUI off (goal: a ratio
//!    of at least 0.95). Same control plane settings as the control_plane
//!    bench (journal on, Python `add` in a warm pool of 2, concurrency 2),
//!    in `ROUNDS` alternating rounds; the ratio is the median of the
//!    per-round ratios. The stream clients count what they read: a client
//!    that fell behind would show `resync` frames.
//! 2. `/api/tasks` with 100,000 tasks known (all run to the end; results
//!    kept): latency of the default page, of filters that scan every row,
//!    and of a sort of every row, over HTTP on loopback (goal: p50 ≤ 20 ms
//!    for the default page). Also the time the GUI takes to load its read
//!    model of 100,000 tasks at start, and the memory it takes.
//!
//! Results go to stdout as Markdown (docs/benchmarks.md holds a copy).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fastworker::client::Client;
use fastworker::control_plane::ControlPlane;
use fastworker::gui::GuiConfig;
use fastworker::protocol::WireTask;
use futures_util::StreamExt;

use common::{concurrent, task};

mod common;

const ROUNDS: usize = 5;
const SSE_CLIENTS: usize = 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--sse-client") {
        return sse_client(&args[at + 1]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (n, rounds, known) = if quick {
        (2000, 3, 20_000)
    } else {
        (12_000, ROUNDS, 100_000)
    };
    common::run(bench(n, rounds, known));
}

/// What the stream clients read.
#[derive(Debug, Default)]
struct Read {
    frames: AtomicU64,
    resyncs: AtomicU64,
    bytes: AtomicU64,
}

async fn bench(n: usize, rounds: usize, known: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = common::manifest(dir.path(), "", "");
    println!("## With the GUI serving and {SSE_CLIENTS} event-stream clients, against the GUI off");
    println!();
    println!(
        "| path | GUI off (tasks/s) | GUI on + {SSE_CLIENTS} SSE (tasks/s) | ratio (median) | ratio per round |"
    );
    println!("|---|---|---|---|---|");
    let paths = [
        "blocking submit, 32 in flight",
        "ack-mode submit, 32 in flight: accepted and all run",
    ];
    let mut off: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut on: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let read = Arc::new(Read::default());
    for round in 0..rounds {
        for gui in [round % 2 == 1, round % 2 == 0] {
            let data = dir.path().join(format!("data-{round}-{gui}"));
            let (cp, base, shutdown) =
                common::start_control_plane(&manifest, |c| c.data_dir = Some(data.clone())).await;
            let client = Arc::new(Client::new(&base, Duration::from_secs(30)).expect("client"));
            let served = if gui {
                Some(serve(&cp, &read).await)
            } else {
                None
            };
            common::submit(&client, 0).await; // warm the pool
            let (elapsed, _) = concurrent(&client, n, 32, false).await;
            let blocking = n as f64 / elapsed.as_secs_f64();
            let start = Instant::now();
            concurrent(&client, n, 32, true).await;
            common::idle(&cp).await;
            let ack = n as f64 / start.elapsed().as_secs_f64();
            let rates = if gui { &mut on } else { &mut off };
            rates[0].push(blocking);
            rates[1].push(ack);
            if let Some((gui, readers)) = served {
                gui.stop().await;
                for r in readers {
                    let _ = r.await;
                }
            }
            shutdown.cancel();
            cp.wait().await;
        }
    }
    common::print_ratio_rows(&paths, &on, &off);
    println!();
    println!(
        "n = {n} tasks a path a round; {rounds} rounds, GUI on and off alternating first; the stream clients read {} task and worker events ({:.1} MB) in all, {} `resync` frames",
        read.frames.load(Ordering::Relaxed),
        read.bytes.load(Ordering::Relaxed) as f64 / 1e6,
        read.resyncs.load(Ordering::Relaxed),
    );
    println!();
    if std::env::var_os("FASTWORKER_BENCH_NO_LIST").is_none() {
        list(&manifest, known).await;
    }
}

/// A stream client in its own process (as a browser would be): reads the
/// stream at `url` until it ends, then prints what it read.
fn sse_client(url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut frames, mut resyncs, mut bytes) = (0u64, 0u64, 0u64);
        if let Ok(response) = reqwest::get(url).await {
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                let text = String::from_utf8_lossy(&chunk);
                bytes += chunk.len() as u64;
                frames += text.matches("id: ").count() as u64;
                resyncs += text.matches("event: resync").count() as u64;
            }
        }
        println!("{frames} {resyncs} {bytes}");
    });
}

/// Starts the GUI on `cp` with `SSE_CLIENTS` clients reading its stream,
/// each in its own process.
async fn serve(
    cp: &ControlPlane,
    read: &Arc<Read>,
) -> (fastworker::gui::Gui, Vec<tokio::task::JoinHandle<()>>) {
    let gui = fastworker::gui::start(
        GuiConfig {
            port: 0,
            ..GuiConfig::new()
        },
        cp,
    )
    .await
    .expect("GUI");
    let mut readers = Vec::new();
    // FASTWORKER_BENCH_SSE_CLIENTS: another count, to see where the cost goes.
    let clients = std::env::var("FASTWORKER_BENCH_SSE_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SSE_CLIENTS);
    let me = std::env::current_exe().expect("this bench");
    let before = gui.app.hub.clients();
    for _ in 0..clients {
        let child = tokio::process::Command::new(&me)
            .args(["--sse-client", &format!("{}api/events", gui.url)])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("a client process");
        let read = Arc::clone(read);
        readers.push(tokio::spawn(async move {
            let out = child.wait_with_output().await.expect("client");
            let text = String::from_utf8_lossy(&out.stdout);
            let n: Vec<u64> = text
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [frames, resyncs, bytes] = n[..] {
                read.frames.fetch_add(frames, Ordering::Relaxed);
                read.resyncs.fetch_add(resyncs, Ordering::Relaxed);
                read.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        }));
    }
    // Measure once every client reads.
    while gui.app.hub.clients() < before + clients {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (gui, readers)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// `/api/tasks` with `known` tasks known.
async fn list(manifest: &Arc<fastworker::manifest::Manifest>, known: usize) {
    let (cp, base, shutdown) = common::start_control_plane(manifest, |c| {
        c.result_cache_size =
            std::num::NonZeroUsize::new(known * 2).unwrap_or(std::num::NonZeroUsize::MIN);
        c.max_queue = known * 2;
    })
    .await;
    let client = Client::new(&base, Duration::from_secs(60)).expect("client");
    let tasks: Vec<WireTask> = (0..known).map(task).collect();
    for chunk in tasks.chunks(1000) {
        let reply = client
            .submit_batch(chunk, fastworker::manifest::Priority::Normal)
            .await
            .expect("batch");
        assert!(reply.batch_accepted, "{reply:?}");
    }
    common::idle(&cp).await;
    let before = rss_mib();
    let start = Instant::now();
    let gui = fastworker::gui::start(
        GuiConfig {
            port: 0,
            ..GuiConfig::new()
        },
        &cp,
    )
    .await
    .expect("GUI");
    let load = start.elapsed();
    let after = rss_mib();
    let http = reqwest::Client::new();
    println!("## `/api/tasks` with {known} tasks known");
    println!();
    println!("| request | rows matched | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    let queries = [
        ("default page (newest 50)", ""),
        ("page 2 of the default (cursor)", "cursor"),
        ("status=success, limit 50", "status=success"),
        ("search: q=<a task id> (scans every row)", "q"),
        (
            "status=failure (scans, matches none)",
            "status=failure&name=add",
        ),
        ("since=1h&name=add (scans)", "since=1h&name=add"),
        ("sort=finished (sorts every row)", "sort=finished"),
    ];
    let some_id = tasks[known / 2].id.clone();
    let first: serde_json::Value = http
        .get(format!("{}api/tasks", gui.url))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        first["total"].as_u64(),
        Some(known as u64),
        "every task is listed"
    );
    let cursor = first["next_cursor"].as_str().unwrap_or("").to_owned();
    for (what, query) in queries {
        let query = match query {
            "cursor" => format!("cursor={cursor}"),
            "q" => format!("q={some_id}"),
            q => q.to_owned(),
        };
        let url = format!("{}api/tasks?{query}", gui.url);
        let mut lat = Vec::new();
        let mut matched = 0;
        for _ in 0..100 {
            let t = Instant::now();
            let body: serde_json::Value = http
                .get(&url)
                .send()
                .await
                .expect("list")
                .json()
                .await
                .expect("json");
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            matched = body["total"].as_u64().unwrap_or(0);
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "| {what} | {matched} | {:.2} | {:.2} |",
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
    }
    println!();
    println!(
        "The GUI loaded its read model of {known} tasks in {:.0} ms at start; the process's RSS grew by {:.0} MiB ({before:.0} → {after:.0} MiB). 100 requests each, sequential, over HTTP on loopback, in a release build.",
        load.as_secs_f64() * 1000.0,
        after - before
    );
    gui.stop().await;
    shutdown.cancel();
    cp.wait().await;
}
