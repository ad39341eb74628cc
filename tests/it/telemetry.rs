//! OpenTelemetry for real: an OTLP receiver (HTTP/protobuf, decoded with
//! `opentelemetry-proto`) takes what a `fastworker control-plane
//! --telemetry` exports while a task that fails once runs on a subworker:
//! one trace, the client's `TRACEPARENT` its parent, the submit, the queue
//! wait, both attempts (with their worker and pid) and the wait between
//! them; the process of the second attempt got that attempt's span as its
//! `TRACEPARENT`; the metrics arrive too; and `--log-format json` writes
//! lines that parse, with the task's fields.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

use crate::helpers::{BIN, Fixture, assert_contains, spawn_logged, spawn_on_free_ports, wait_for};

const MANIFEST: &str = r#"
[tasks.flaky]
description = "fails on its first run, then answers 8; writes its TRACEPARENT"
command = ["sh", "-c", "cat >/dev/null; echo \"$TRACEPARENT\" >> traceparents.log; n=$(( $(cat runs 2>/dev/null || echo 0) + 1 )); echo $n > runs; if [ $n -ge 2 ]; then echo 8; else echo boom >&2; exit 3; fi"]
retries = 1
retry_backoff = "50ms"
"#;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    metrics: Vec<String>,
}

/// An OTLP/HTTP receiver on a free port: its base URL and what it got.
async fn receiver() -> (String, Arc<Mutex<Received>>, tokio::task::JoinHandle<()>) {
    let got = Arc::new(Mutex::new(Received::default()));
    let (traces, metrics) = (Arc::clone(&got), Arc::clone(&got));
    let app = Router::new()
        .route(
            "/v1/traces",
            post(move |body: Bytes| {
                let got = Arc::clone(&traces);
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP traces");
                    let mut got = got.lock().expect("lock");
                    for rs in request.resource_spans {
                        for ss in rs.scope_spans {
                            got.spans.extend(ss.spans);
                        }
                    }
                    ""
                }
            }),
        )
        .route(
            "/v1/metrics",
            post(move |body: Bytes| {
                let got = Arc::clone(&metrics);
                async move {
                    let request = ExportMetricsServiceRequest::decode(body).expect("OTLP metrics");
                    let mut got = got.lock().expect("lock");
                    for rm in request.resource_metrics {
                        for sm in rm.scope_metrics {
                            got.metrics.extend(sm.metrics.into_iter().map(|m| m.name));
                        }
                    }
                    ""
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got, server)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(n)) => n.to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_on_a_subworker_with_a_retry_is_one_trace() {
    let (endpoint, got, server) = receiver().await;
    let fx = Fixture::new(MANIFEST);
    let argv = |base: &str, _port: u16| -> Vec<String> {
        [
            "env",
            "OTEL_METRIC_EXPORT_INTERVAL=500",
            "OTEL_SERVICE_NAME=fw-test",
            BIN,
            "control-plane",
            "--base-address",
            base,
            "--discovery-address",
            &format!("ipc://{}", fx.path("disc").display()),
            "--manifest",
            &fx.manifest_path().display().to_string(),
            "--data-dir",
            &fx.path("data").display().to_string(),
            "--no-gui",
            "--no-local-tasks",
            "--telemetry",
            "--otlp-endpoint",
            &endpoint,
            "--log-format",
            "json",
            "--log-level",
            "fastworker=debug",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let (cp, port, _) = spawn_on_free_ports(
        argv,
        &["\"message\":\"control plane ready\""],
        &["cannot start"],
    )
    .await;
    let base = format!("tcp://127.0.0.1:{port}");
    let (sw, ready) = spawn_logged(
        &[
            BIN,
            "subworker",
            "--worker-id",
            "w1",
            "--control-plane-address",
            &base,
            "--manifest",
            &fx.manifest_path().display().to_string(),
        ]
        .map(str::to_owned),
        &["ready"],
        &["error"],
    )
    .await;
    ready.expect("subworker ready");

    // Our CLI continues the trace it runs in.
    let out = tokio::process::Command::new(BIN)
        .args(["submit", "flaky", "--json", "--base-address", &base])
        .env("TRACEPARENT", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .output()
        .await
        .expect("submit");
    let result: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(result["result"], 8, "{result}");
    let task_id = result["task_id"].as_str().expect("id").to_owned();

    let complete = |got: &Received| {
        got.spans
            .iter()
            .filter(|s| hex(&s.trace_id) == TRACE)
            .count()
            >= 6
    };
    assert!(
        wait_for(Duration::from_secs(20), || complete(
            &got.lock().expect("lock")
        ))
        .await,
        "the trace arrives; got {} spans\n{}",
        got.lock().expect("lock").spans.len(),
        cp.stderr()
    );
    let spans: Vec<Span> = got
        .lock()
        .expect("lock")
        .spans
        .iter()
        .filter(|s| hex(&s.trace_id) == TRACE)
        .cloned()
        .collect();
    let by_name = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "a span {name:?} in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let root = by_name("process flaky");
    assert_eq!(
        hex(&root.parent_span_id),
        CLIENT_SPAN,
        "the client's span is its parent"
    );
    assert_eq!(text(root, "messaging.message.id"), task_id);
    assert_eq!(text(root, "messaging.system"), "fastworker");
    assert_eq!(text(root, "fastworker.task.status"), "success");
    assert_eq!(text(root, "fastworker.task.attempts"), "2");
    let root_id = hex(&root.span_id);
    for name in [
        "submit",
        "queue wait",
        "attempt 1",
        "retry wait",
        "attempt 2",
    ] {
        let span = by_name(name);
        assert_eq!(
            hex(&span.parent_span_id),
            root_id,
            "{name} is the task's child"
        );
        assert!(
            span.end_time_unix_nano >= span.start_time_unix_nano,
            "{name}"
        );
    }
    let first = by_name("attempt 1");
    let second = by_name("attempt 2");
    assert_eq!(text(first, "fastworker.worker"), "w1");
    assert_eq!(text(second, "fastworker.worker"), "w1");
    assert_eq!(text(first, "fastworker.attempt.status"), "failed");
    assert_eq!(text(first, "process.exit.code"), "3");
    assert!(matches!(attr(second, "process.pid"), Some(AnyValue::IntValue(p)) if *p > 0));
    assert_eq!(
        first.status.as_ref().map(|s| s.code),
        Some(2),
        "attempt 1 is an error"
    );
    assert!(second.start_time_unix_nano >= first.end_time_unix_nano);

    // Each process got its attempt's span as the parent of its own.
    let traceparents = std::fs::read_to_string(fx.path("traceparents.log")).expect("log");
    let lines: Vec<&str> = traceparents.lines().collect();
    assert_eq!(
        lines,
        [
            format!("00-{TRACE}-{}-01", hex(&first.span_id)),
            format!("00-{TRACE}-{}-01", hex(&second.span_id)),
        ]
    );

    // The metrics come too.
    assert!(
        wait_for(Duration::from_secs(20), || {
            let got = got.lock().expect("lock");
            got.metrics.iter().any(|m| m == "fastworker.tasks.finished")
                && got
                    .metrics
                    .iter()
                    .any(|m| m == "fastworker.task.run.duration")
        })
        .await,
        "metrics arrive: {:?}",
        got.lock().expect("lock").metrics
    );

    // JSON logs: every line parses; the attempts are there with their fields.
    let lines: Vec<Value> = cp
        .stderr()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let attempt = lines
        .iter()
        .find(|l| l["message"] == "attempt ended" && l["attempt"] == 2)
        .unwrap_or_else(|| panic!("an 'attempt ended' line: {lines:?}"));
    assert_eq!(attempt["task_id"], task_id.as_str());
    assert_eq!(attempt["name"], "flaky");
    assert_eq!(attempt["worker"], "w1");
    assert_eq!(attempt["trace_id"], TRACE);
    assert_contains(&attempt["level"].to_string(), "DEBUG");

    // A stop flushes and ends: telemetry never holds the process up.
    drop(sw);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cp.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let mut cp = cp;
    let ended = tokio::time::timeout(Duration::from_secs(20), cp.child.wait()).await;
    assert!(
        matches!(ended, Ok(Ok(s)) if s.success()),
        "{ended:?}\n{}",
        cp.stderr()
    );
    server.abort();
}

/// A collector that is down is reported once, not per task or per batch,
/// and tasks run as ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_is_reported_once() {
    let fx =
        Fixture::new("[tasks.eight]\ncommand = [\"sh\", \"-c\", \"cat >/dev/null; echo 8\"]\n");
    let base = format!("ipc://{}", fx.path("cp").display());
    // A port nothing listens on (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let argv: Vec<String> = [
        "env",
        "OTEL_METRIC_EXPORT_INTERVAL=300",
        BIN,
        "control-plane",
        "--base-address",
        &base,
        "--discovery-address",
        &format!("ipc://{}", fx.path("disc").display()),
        "--manifest",
        &fx.manifest_path().display().to_string(),
        "--no-journal",
        "--no-gui",
        "--telemetry",
        "--otlp-endpoint",
        &endpoint,
    ]
    .map(str::to_owned)
    .to_vec();
    let (cp, ready) = spawn_logged(&argv, &["ready"], &["cannot start"]).await;
    ready.expect("ready");
    let client = fastworker::client::Client::new(&base, Duration::from_secs(10)).expect("client");
    for i in 0..20 {
        let r = client
            .submit(
                crate::helpers::wire_task("eight", vec![]),
                None,
                Duration::from_secs(10),
            )
            .await
            .expect("submit");
        assert_eq!(r.result, serde_json::json!(8), "task {i}");
    }
    // Several batches of spans and of metrics fail meanwhile.
    assert!(
        wait_for(Duration::from_secs(20), || cp
            .stderr()
            .contains("cannot export traces")
            && cp.stderr().contains("cannot export metrics"))
        .await,
        "{}",
        cp.stderr()
    );
    // More spans, then a stop: its flush exports them, and the metrics, once
    // more, and fails again.
    for _ in 0..20 {
        client
            .submit(
                crate::helpers::wire_task("eight", vec![]),
                None,
                Duration::from_secs(10),
            )
            .await
            .expect("submit");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cp.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let mut cp = cp;
    let ended = tokio::time::timeout(Duration::from_secs(30), cp.child.wait()).await;
    assert!(matches!(ended, Ok(Ok(s)) if s.success()), "{ended:?}");
    assert!(
        wait_for(Duration::from_secs(5), || cp
            .stderr()
            .contains("control plane stopped"))
        .await,
        "{}",
        cp.stderr()
    );
    let log = cp.stderr();
    assert_eq!(log.matches("cannot export traces").count(), 1, "{log}");
    assert_eq!(log.matches("cannot export metrics").count(), 1, "{log}");
}

/// `fastworker run` from a traced script: the task's process is in the
/// script's trace (it gets the script's TRACEPARENT and TRACESTATE).
#[test]
fn run_passes_the_callers_trace_context_to_its_task() {
    let fx = Fixture::new(
        "[tasks.ctx]\ncommand = [\"sh\", \"-c\", \"cat > /dev/null; printf '[\\\"%s\\\",\\\"%s\\\"]' \\\"$TRACEPARENT\\\" \\\"$TRACESTATE\\\"\"]\n",
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let out = std::process::Command::new(BIN)
        .args(["run", "--manifest"])
        .arg(fx.manifest_path())
        .arg("ctx")
        .env("TRACEPARENT", parent)
        .env("TRACESTATE", "k=v")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(got, serde_json::json!([parent, "k=v"]));
    // Not a trace context: the task gets none.
    let out = std::process::Command::new(BIN)
        .args(["run", "--manifest"])
        .arg(fx.manifest_path())
        .arg("ctx")
        .env("TRACEPARENT", "garbage")
        .output()
        .expect("run");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(got, serde_json::json!(["", ""]));
}

/// Settings this build cannot honour stop the start with the setting named,
/// rather than failing every export later.
#[test]
fn unusable_telemetry_settings_are_refused_at_start() {
    let fx =
        Fixture::new("[tasks.eight]\ncommand = [\"sh\", \"-c\", \"cat >/dev/null; echo 8\"]\n");
    for (var, value, says) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector:4318",
            "plain http:// only",
        ),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip", "uncompressed"),
        ("OTEL_METRICS_EXPORTER", "prometheus", "otlp or none"),
    ] {
        let out = std::process::Command::new(BIN)
            .args([
                "control-plane",
                "--no-gui",
                "--no-journal",
                "--telemetry",
                "--manifest",
            ])
            .arg(fx.manifest_path())
            .args([
                "--base-address",
                &format!("ipc://{}", fx.path("cp").display()),
            ])
            .args([
                "--discovery-address",
                &format!("ipc://{}", fx.path("disc").display()),
            ])
            .env(var, value)
            .output()
            .expect("control-plane");
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_contains(&stderr, var);
        assert_contains(&stderr, says);
    }
}
