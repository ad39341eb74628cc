//! The control plane's metrics over OTLP: the instruments of `/metrics`
//! (docs/gui.md), with OpenTelemetry's names (dots, units), read from the
//! same counters when the SDK collects, and the two time histograms
//! recorded as tasks end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use tokio::task::JoinHandle;

use super::{Reported, TelemetryConfig, TelemetryError};
use crate::control_plane::events::{BUCKETS, Events, RecordSink};
use crate::control_plane::{ControlPlane, Stats};
use crate::manifest::Priority;
use crate::protocol::TaskRecord;

/// What the observable instruments read.
#[derive(Clone)]
struct Source {
    events: Events,
    stats: Arc<Mutex<Stats>>,
    journal: Option<crate::journal::Meter>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Source {
    fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The core's figures, as last read.
pub type Shared = Arc<Mutex<Stats>>;

/// Keeps the core's figures fresh for the observable instruments (the
/// SDK collects on its own thread, which cannot ask the core).
pub fn refresh(plane: &ControlPlane, stats: Shared) -> JoinHandle<()> {
    let core = plane.core.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match core.stats().await {
                Some(now) => *stats.lock().unwrap_or_else(|p| p.into_inner()) = now,
                None => return,
            }
        }
    })
}

/// Starts the meter provider and registers the observable instruments.
pub fn start(
    config: &TelemetryConfig,
    plane: &ControlPlane,
    resource: opentelemetry_sdk::Resource,
    sink: RecordSink,
    endpoint: Option<Option<String>>,
    stats: Shared,
) -> Result<SdkMeterProvider, TelemetryError> {
    let mut provider = SdkMeterProvider::builder().with_resource(resource);
    // None: OTEL_METRICS_EXPORTER=none (the instruments are made, nothing
    // reads them).
    if let Some(endpoint) = endpoint {
        let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_http();
        if let Some(url) = endpoint {
            exporter = exporter.with_endpoint(url);
        }
        let exporter = exporter
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TelemetryError::Exporter {
                what: "metrics",
                reason: e.to_string(),
            })?;
        let mut reader = PeriodicReader::builder(Reported::new("metrics", exporter));
        if let Some(every) = config.metrics_every {
            reader = reader.with_interval(every);
        }
        provider = provider.with_reader(reader.build());
    }
    let provider = provider.build();
    let source = Source {
        events: plane.events.clone(),
        stats,
        journal: plane.journal.clone(),
        dropped: sink.dropped_counter(),
    };
    register(&provider, &source);
    Ok(provider)
}

fn register(provider: &SdkMeterProvider, source: &Source) {
    let meter = provider.meter("fastworker");
    let s = source.clone();
    meter
        .u64_observable_counter("fastworker.tasks.accepted")
        .with_description("Tasks accepted since the start")
        .with_callback(move |o| o.observe(s.events.counters().accepted, &[]))
        .build();
    let s = source.clone();
    meter
        .u64_observable_counter("fastworker.tasks.finished")
        .with_description("Tasks ended since the start, by task name and final status")
        .with_callback(move |o| {
            for (name, outcomes) in s.events.counters().by_name {
                for (status, n) in [
                    ("success", outcomes.success),
                    ("failure", outcomes.failure),
                    ("cancelled", outcomes.cancelled),
                ] {
                    o.observe(
                        n,
                        &[
                            KeyValue::new("fastworker.task", name.clone()),
                            KeyValue::new("fastworker.task.status", status),
                        ],
                    );
                }
            }
        })
        .build();
    let s = source.clone();
    meter
        .u64_observable_counter("fastworker.task.retries")
        .with_description("Attempts that failed and were tried again, by task name")
        .with_callback(move |o| {
            for (name, outcomes) in s.events.counters().by_name {
                o.observe(outcomes.retries, &[KeyValue::new("fastworker.task", name)]);
            }
        })
        .build();
    let s = source.clone();
    meter
        .u64_observable_counter("fastworker.task.attempts.started")
        .with_description("Attempts started (here or on subworkers)")
        .with_callback(move |o| o.observe(s.events.counters().started, &[]))
        .build();
    let s = source.clone();
    meter
        .i64_observable_gauge("fastworker.tasks")
        .with_description("Live tasks by state")
        .with_callback(move |o| {
            let c = s.events.counters();
            for state in ["queued", "scheduled", "running", "retrying"] {
                let n = c.current.get(state).copied().unwrap_or(0).max(0);
                o.observe(n, &[KeyValue::new("fastworker.task.state", state)]);
            }
        })
        .build();
    let s = source.clone();
    meter
        .i64_observable_gauge("fastworker.queue.depth")
        .with_description("Tasks in the queue, by priority")
        .with_callback(move |o| {
            let c = s.events.counters();
            for p in Priority::ALL {
                o.observe(
                    c.queued_by_priority[p as usize].max(0),
                    &[KeyValue::new("fastworker.task.priority", p.as_str())],
                );
            }
        })
        .build();
    let s = source.clone();
    meter
        .i64_observable_gauge("fastworker.workers")
        .with_description("Subworkers by state")
        .with_callback(move |o| {
            let c = s.events.counters();
            for state in ["active", "draining", "inactive"] {
                let n = c.workers.get(state).copied().unwrap_or(0).max(0);
                o.observe(n, &[KeyValue::new("fastworker.worker.state", state)]);
            }
        })
        .build();
    let s = source.clone();
    meter
        .u64_observable_gauge("fastworker.result_cache.entries")
        .with_description("Finished tasks' results kept")
        .with_callback(move |o| o.observe(s.stats().cached_results as u64, &[]))
        .build();
    let s = source.clone();
    meter
        .u64_observable_gauge("fastworker.result_cache.size")
        .with_unit("By")
        .with_description("The bytes the kept results take, as encoded")
        .with_callback(move |o| o.observe(s.stats().cached_bytes as u64, &[]))
        .build();
    let s = source.clone();
    meter
        .u64_observable_counter("fastworker.result_cache.evictions")
        .with_description("Results pushed out of the cache by its bounds")
        .with_callback(move |o| o.observe(s.events.counters().cache_evictions, &[]))
        .build();
    if source.journal.is_some() {
        let s = source.clone();
        meter
            .u64_observable_counter("fastworker.journal.commits")
            .with_description("Groups committed to the journal (one fsync each)")
            .with_callback(move |o| {
                if let Some(j) = &s.journal {
                    o.observe(j.commits(), &[]);
                }
            })
            .build();
        let s = source.clone();
        meter
            .u64_observable_counter("fastworker.journal.written")
            .with_unit("By")
            .with_description("Bytes committed to the journal")
            .with_callback(move |o| {
                if let Some(j) = &s.journal {
                    o.observe(j.bytes(), &[]);
                }
            })
            .build();
    }
    let s = source.clone();
    meter
        .u64_observable_counter("fastworker.telemetry.dropped_traces")
        .with_description(
            "Finished tasks whose traces were dropped because the exporter was behind",
        )
        .with_callback(move |o| {
            o.observe(s.dropped.load(std::sync::atomic::Ordering::Relaxed), &[])
        })
        .build();
}

/// The two histograms, recorded from each finished task's record.
#[derive(Debug)]
pub struct Recorder {
    wait: Histogram<f64>,
    run: Histogram<f64>,
}

impl Recorder {
    pub fn new(provider: &SdkMeterProvider) -> Recorder {
        let meter = provider.meter("fastworker");
        let bounds = BUCKETS.to_vec();
        Recorder {
            wait: meter
                .f64_histogram("fastworker.task.wait.duration")
                .with_unit("s")
                .with_description(
                    "Time in the queue before the first attempt started, by task name",
                )
                .with_boundaries(bounds.clone())
                .build(),
            run: meter
                .f64_histogram("fastworker.task.run.duration")
                .with_unit("s")
                .with_description("Attempts' run times, by task name")
                .with_boundaries(bounds)
                .build(),
        }
    }

    pub fn record(&self, record: &TaskRecord) {
        let name = [KeyValue::new("fastworker.task", record.name.clone())];
        let queued = record
            .eta
            .unwrap_or(record.submitted_at)
            .max(record.submitted_at);
        if let Some(first) = record.started_at {
            let wait = (first - queued).to_std().unwrap_or_default();
            self.wait.record(wait.as_secs_f64(), &name);
        }
        for attempt in &record.attempts {
            if let Some(e) = attempt.execution() {
                self.run.record(e.duration.as_secs_f64(), &name);
            }
        }
    }
}
