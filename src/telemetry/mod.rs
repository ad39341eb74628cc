//! OpenTelemetry: each task's trace and the control plane's metrics, pushed
//! over OTLP (HTTP/protobuf) to a collector, Jaeger, Tempo or anything that
//! takes OTLP.
//!
//! - Traces ([`spans`]): when a task ends, its whole record (every attempt
//!   with its times, worker, pid and outcome) becomes one trace: the task's
//!   span, and under it the submit, the wait in the queue, each attempt and
//!   each wait before a retry. A task's trace context is fixed when it is
//!   accepted ([`crate::protocol::TraceContext`]), so the processes that
//!   ran its attempts got the right `TRACEPARENT` while they ran, attempts
//!   on subworkers included.
//! - Metrics ([`metrics`]): the instruments of `/metrics`, read from the
//!   same counters, pushed every `OTEL_METRIC_EXPORT_INTERVAL` (60 s).
//!
//! Nothing here slows a task down: finished records reach the exporter
//! through a bounded channel (what does not fit is dropped and counted),
//! spans are batched by the SDK on its own thread, and a collector that is
//! down is reported once, not per task.
//!
//! Configuration: `--telemetry` (or FastWorker's
//! `FASTWORKER_TELEMETRY_ENABLED`), `--otlp-endpoint` (or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`),
//! `OTEL_TRACES_EXPORTER` and `OTEL_METRICS_EXPORTER` (`otlp` or `none`),
//! `OTEL_SERVICE_NAME` or a `service.name` in `OTEL_RESOURCE_ATTRIBUTES`
//! (default `fastworker`), `OTEL_METRIC_EXPORT_INTERVAL`. Plain HTTP only:
//! an `https://` endpoint is refused at start.

pub mod metrics;
pub mod spans;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::control_plane::ControlPlane;
use crate::control_plane::events::RecordSink;
use crate::protocol::TaskRecord;

/// Finished records waiting to become spans, at most.
pub const QUEUE: usize = 8192;

/// Telemetry's settings.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// A base URL (`http://collector:4318`); none: the `OTEL_*` variables,
    /// else `http://localhost:4318`.
    pub endpoint: Option<String>,
    /// How often metrics are pushed (none: `OTEL_METRIC_EXPORT_INTERVAL`,
    /// else 60 s).
    pub metrics_every: Option<Duration>,
}

/// Which signals go out: `OTEL_TRACES_EXPORTER` and
/// `OTEL_METRICS_EXPORTER`, each `otlp` (the default) or `none` (a backend
/// that takes traces only, such as Jaeger, needs `OTEL_METRICS_EXPORTER=none`).
fn signal_on(var: &str) -> Result<bool, TelemetryError> {
    match std::env::var(var) {
        Err(_) => Ok(true),
        Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("otlp") => Ok(true),
        Ok(v) if v.trim().eq_ignore_ascii_case("none") => Ok(false),
        Ok(v) => Err(TelemetryError::Setting(format!(
            "{var}={v}: this build exports over OTLP only: use otlp or none"
        ))),
    }
}

/// Refuses what this build cannot export to (`https://`: it speaks plain
/// HTTP; gzip: not built in), naming the setting.
fn check_settings(config: &TelemetryConfig) -> Result<(), TelemetryError> {
    let mut endpoints: Vec<(String, String)> = Vec::new();
    if let Some(e) = &config.endpoint {
        endpoints.push(("--otlp-endpoint".to_owned(), e.clone()));
    }
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ] {
        if let Ok(v) = std::env::var(var) {
            endpoints.push((var.to_owned(), v));
        }
    }
    for (setting, url) in endpoints {
        if !url.trim().to_ascii_lowercase().starts_with("http://") {
            return Err(TelemetryError::Setting(format!(
                "{setting} {url}: this build exports over plain http:// only (send to a collector on this host or a private network, or put a TLS proxy in front)"
            )));
        }
    }
    for var in [
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    ] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
            && !v.trim().eq_ignore_ascii_case("none")
        {
            return Err(TelemetryError::Setting(format!(
                "{var}={v}: this build sends OTLP uncompressed: unset it or set it to none"
            )));
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: {0}")]
    Setting(String),
    #[error("cannot set up the OTLP exporter for {what}: {reason}")]
    Exporter { what: &'static str, reason: String },
}

/// Exports running: stop it to flush.
#[derive(Debug)]
pub struct Telemetry {
    stop: tokio_util::sync::CancellationToken,
    traces: SdkTracerProvider,
    meters: opentelemetry_sdk::metrics::SdkMeterProvider,
    feeder: JoinHandle<()>,
    stats: JoinHandle<()>,
}

/// The channel a control plane hands finished records to, to pass to
/// [`start`] once it runs.
pub fn records() -> (RecordSink, mpsc::Receiver<Arc<TaskRecord>>) {
    RecordSink::channel(QUEUE)
}

/// The service's name: `OTEL_SERVICE_NAME`, else a `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, else `fastworker`.
fn resource(worker_id: &str) -> opentelemetry_sdk::Resource {
    let mut builder = opentelemetry_sdk::Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|n| !n.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| {
            attrs.split(',').any(|kv| {
                kv.split('=')
                    .next()
                    .is_some_and(|k| k.trim() == "service.name")
            })
        });
    if !named {
        builder = builder.with_service_name("fastworker");
    }
    builder
        .with_attributes([
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            opentelemetry::KeyValue::new("service.instance.id", worker_id.to_owned()),
        ])
        .build()
}

/// Starts exporting `plane`'s traces (from `records`, the other end of
/// the sink in its config) and metrics.
pub fn start(
    config: &TelemetryConfig,
    plane: &ControlPlane,
    mut records: mpsc::Receiver<Arc<TaskRecord>>,
    sink: RecordSink,
) -> Result<Telemetry, TelemetryError> {
    check_settings(config)?;
    let (traces_on, metrics_on) = (
        signal_on("OTEL_TRACES_EXPORTER")?,
        signal_on("OTEL_METRICS_EXPORTER")?,
    );
    let worker_id = plane.sockets.info.worker_id.clone();
    let url = |path: &str| {
        config
            .endpoint
            .as_ref()
            .map(|base| format!("{}{path}", base.trim_end_matches('/')))
    };
    let mut traces = SdkTracerProvider::builder().with_resource(resource(&worker_id));
    if traces_on {
        let mut span_exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(url) = url("/v1/traces") {
            span_exporter = span_exporter.with_endpoint(url);
        }
        let span_exporter = span_exporter
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TelemetryError::Exporter {
                what: "traces",
                reason: e.to_string(),
            })?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_max_export_batch_size(512)
            .with_scheduled_delay(Duration::from_secs(1))
            .build();
        traces = traces.with_span_processor(
            BatchSpanProcessor::builder(Reported::new("traces", span_exporter))
                .with_batch_config(batch)
                .build(),
        );
    }
    let traces = traces.build();
    let stats = metrics::Shared::default();
    let meters = metrics::start(
        config,
        plane,
        resource(&worker_id),
        sink,
        metrics_on.then(|| url("/v1/metrics")),
        Arc::clone(&stats),
    )?;
    let tracer = traces.tracer("fastworker");
    let recorder = metrics::Recorder::new(&meters);
    let local = worker_id.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopping = stop.clone();
    let feeder = tokio::spawn(async move {
        loop {
            let record = tokio::select! {
                record = records.recv() => record,
                () = stopping.cancelled() => {
                    // What the core handed over before it stopped.
                    while let Ok(record) = records.try_recv() {
                        if traces_on {
                            spans::export(&tracer, &record, &local);
                        }
                        recorder.record(&record);
                    }
                    return;
                }
            };
            let Some(record) = record else { return };
            if traces_on {
                spans::export(&tracer, &record, &local);
            }
            recorder.record(&record);
        }
    });
    let stats = metrics::refresh(plane, stats);
    tracing::info!(endpoint = %config.endpoint.as_deref().unwrap_or("from OTEL_EXPORTER_OTLP_* (default http://localhost:4318)"), traces = traces_on, metrics = metrics_on, "exporting over OTLP");
    Ok(Telemetry {
        stop,
        traces,
        meters,
        feeder,
        stats,
    })
}

impl Telemetry {
    /// Exports what is left (the control plane has stopped: no more
    /// records come) and stops.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.feeder.await;
        self.stats.abort();
        let (traces, meters) = (self.traces, self.meters);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = traces.force_flush();
            let _ = traces.shutdown();
            let _ = meters.shutdown();
        })
        .await;
    }
}

/// An exporter that says when exports start failing (once) and when they
/// work again, instead of a line per failed batch.
#[derive(Debug)]
pub struct Reported<E> {
    what: &'static str,
    inner: E,
    failing: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
}

impl<E> Reported<E> {
    pub fn new(what: &'static str, inner: E) -> Reported<E> {
        Reported {
            what,
            inner,
            failing: Arc::default(),
            failures: Arc::default(),
        }
    }

    fn note(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        failed_batches = self.failures.swap(0, Ordering::Relaxed),
                        "exporting {} works again",
                        self.what
                    );
                }
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cannot export {}: {e}; the data of the batches that fail is dropped, and this is said again only once it works",
                        self.what
                    );
                }
            }
        }
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Reported<E>
{
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.note(&result);
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: opentelemetry_sdk::metrics::exporter::PushMetricExporter>
    opentelemetry_sdk::metrics::exporter::PushMetricExporter for Reported<E>
{
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.note(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        self.inner.temporality()
    }
}
