//! What the benchmarks share: the `add` manifest, a control plane on fresh
//! ports, and submitting tasks one at a time or many in flight.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::client::Client;
use fastworker::control_plane::{self, Config, ControlPlane};
use fastworker::manifest::Manifest;
use fastworker::protocol::{Status, WireTask};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Runs `bench` on a multi-threaded tokio runtime, as the binary does.
pub fn run(bench: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench);
}

/// A manifest in `dir` with the Python runner's `add` in a warm pool of 2,
/// plus `python` (more functions for `bench_tasks.py`) and `toml` (more tasks).
pub fn manifest(dir: &Path, python: &str, toml: &str) -> Arc<Manifest> {
    std::fs::write(
        dir.join("bench_tasks.py"),
        format!("def add(x, y):\n    return x + y\n{python}"),
    )
    .expect("module");
    let path = dir.join("tasks.toml");
    std::fs::write(
        &path,
        format!("[tasks.add]\nrunner = \"python\"\nfunction = \"bench_tasks:add\"\nmode = \"pool\"\npool_size = 2\n{toml}"),
    )
    .expect("manifest");
    Arc::new(Manifest::load(&path).unwrap_or_else(|e| panic!("{e}")))
}

/// A control plane (concurrency 2, then `tweak`) on fresh ports.
pub async fn start_control_plane(
    manifest: &Arc<Manifest>,
    tweak: impl Fn(&mut Config),
) -> (ControlPlane, String, CancellationToken) {
    let shutdown = CancellationToken::new();
    let mut attempt = 0u16;
    loop {
        // Ports from the process id, moving on when they are taken.
        let port = 30_000 + ((std::process::id() as u16).wrapping_add(attempt * 7) % 30_000);
        let base = format!("tcp://127.0.0.1:{port}");
        let mut config = Config::new(&base, &format!("tcp://127.0.0.1:{}", port + 6));
        config.concurrency = 2;
        tweak(&mut config);
        match control_plane::start(config, Arc::clone(manifest), shutdown.clone()).await {
            Ok(cp) => return (cp, base, shutdown),
            Err(e) if attempt < 20 => eprintln!("trying other ports: {e}"),
            Err(e) => panic!("{e}"),
        }
        attempt += 1;
    }
}

/// `add(i, 1)`, with a fresh id.
pub fn task(i: usize) -> WireTask {
    WireTask {
        id: uuid::Uuid::new_v4().to_string(),
        name: "add".into(),
        args: vec![json!(i), json!(1)],
        kwargs: Default::default(),
        priority: None,
        eta: None,
        callback: None,
        reply: Default::default(),
        traceparent: None,
        tracestate: None,
    }
}

/// A blocking submit of `add(i, 1)`, checked.
pub async fn submit(client: &Client, i: usize) {
    let r = client
        .submit(task(i), None, Duration::from_secs(60))
        .await
        .expect("submit");
    assert_eq!((r.status, r.result), (Status::Success, json!(i + 1)));
}

/// `n` submits of `add`, `in_flight` at a time (blocking, or in ack mode):
/// how long they took, and each one's latency.
pub async fn concurrent(
    client: &Arc<Client>,
    n: usize,
    in_flight: usize,
    ack: bool,
) -> (Duration, Vec<Duration>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (client, next) = (Arc::clone(client), Arc::clone(&next));
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return lat;
                    }
                    let t = Instant::now();
                    if ack {
                        let a = client.submit_ack(task(i), None).await.expect("ack");
                        assert!(a.accepted, "{a:?}");
                    } else {
                        submit(&client, i).await;
                    }
                    lat.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(n);
    for w in workers {
        lat.extend(w.await.expect("join"));
    }
    (start.elapsed(), lat)
}

/// Waits until the control plane has nothing queued, running or waiting on
/// a timer. (Not every bench needs it.)
#[allow(dead_code)]
pub async fn idle(cp: &ControlPlane) {
    loop {
        let s = cp.core.stats().await.expect("stats");
        if s.running == 0 && s.queued.iter().sum::<usize>() == 0 && s.waiting_on_timer == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The Markdown rows of an on/off comparison: per path, the median rate
/// off and on, the median of the per-round ratios, and each round's.
/// (Not every bench needs it.)
#[allow(dead_code)]
pub fn print_ratio_rows(paths: &[&str], on: &[Vec<f64>], off: &[Vec<f64>]) {
    for (i, path) in paths.iter().enumerate() {
        let ratios: Vec<f64> = on[i].iter().zip(&off[i]).map(|(a, b)| a / b).collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "| {path} | {:.0} | {:.0} | {:.2} | {} |",
            median(&off[i]),
            median(&on[i]),
            median(&ratios),
            each.join(", ")
        );
    }
}

/// The middle value (the upper one of the two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The allocator the `fastworker` binary uses (see src/main.rs), so that
/// the benches measure what it does.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
