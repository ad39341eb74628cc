//! What OpenTelemetry costs: the control plane's task throughput with every
//! task's trace and the metrics exported over OTLP, against telemetry off
//! (goal: a ratio of at least 0.95).
//!
//! `cargo bench --bench telemetry [-- --quick]`
//!
//! Same control plane as the control_plane bench (journal on, the Python
//! `add` in a warm pool of 2, concurrency 2). The OTLP receiver is an HTTP
//! server in this process that reads each export and answers 200 (as a
//! collector on the same host would, minus its own work). Rounds alternate
//! which goes first; the ratio is the median of the per-round ratios.
//! Results go to stdout as Markdown (docs/benchmarks.md holds a copy).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use fastworker::client::Client;

use common::concurrent;

mod common;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, rounds) = if quick { (2000, 3) } else { (12_000, 5) };
    common::run(bench(n, rounds));
}

async fn bench(n: usize, rounds: usize) {
    let received = Arc::new(AtomicU64::new(0));
    let bytes = Arc::clone(&received);
    let app = Router::new().route(
        "/v1/{signal}",
        post(move |body: Bytes| {
            let bytes = Arc::clone(&bytes);
            async move {
                bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = common::manifest(dir.path(), "", "");
    let paths = [
        "blocking submit, 32 in flight",
        "ack-mode submit, 32 in flight: accepted and all run",
    ];
    let mut off: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut on: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut dropped = 0;
    for round in 0..rounds {
        for telemetry in [round % 2 == 1, round % 2 == 0] {
            let data = dir.path().join(format!("data-{round}-{telemetry}"));
            let records = telemetry.then(fastworker::telemetry::records);
            let sink = records.as_ref().map(|(s, _)| s.clone());
            let (cp, base, shutdown) = common::start_control_plane(&manifest, |c| {
                c.data_dir = Some(data.clone());
                c.records = sink.clone();
            })
            .await;
            let exporting = records.map(|(sink, rx)| {
                let config = fastworker::telemetry::TelemetryConfig {
                    endpoint: Some(endpoint.clone()),
                    metrics_every: Some(Duration::from_secs(1)),
                };
                (
                    fastworker::telemetry::start(&config, &cp, rx, sink.clone())
                        .expect("telemetry"),
                    sink,
                )
            });
            let client = Arc::new(Client::new(&base, Duration::from_secs(30)).expect("client"));
            common::submit(&client, 0).await; // warm the pool
            let (elapsed, _) = concurrent(&client, n, 32, false).await;
            let blocking = n as f64 / elapsed.as_secs_f64();
            let start = Instant::now();
            concurrent(&client, n, 32, true).await;
            common::idle(&cp).await;
            let ack = n as f64 / start.elapsed().as_secs_f64();
            let rates = if telemetry { &mut on } else { &mut off };
            rates[0].push(blocking);
            rates[1].push(ack);
            shutdown.cancel();
            cp.wait().await;
            if let Some((t, sink)) = exporting {
                t.stop().await;
                dropped += sink.dropped();
            }
        }
    }
    println!("## OpenTelemetry on, against off");
    println!();
    println!(
        "| path | telemetry off (tasks/s) | on (tasks/s) | ratio (median) | ratio per round |"
    );
    println!("|---|---|---|---|---|");
    common::print_ratio_rows(&paths, &on, &off);
    println!();
    println!(
        "n = {n} tasks a path a round, {rounds} rounds; the receiver took {:.1} MB of OTLP; traces dropped for a full queue: {dropped}",
        received.load(Ordering::Relaxed) as f64 / 1e6
    );
}
