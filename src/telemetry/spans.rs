//! A finished task's record as one trace.
//!
//! ```text
//! process NAME            (consumer; the client's span's child, if it sent one)
//! ├─ submit               (an instant: when it was accepted)
//! ├─ queue wait           (from the submit, or the eta, to the first attempt)
//! ├─ attempt 1            (its worker, pid, exit code or signal, outcome)
//! ├─ retry wait           (from a failed attempt to the next)
//! └─ attempt 2
//! ```
//!
//! Attribute names follow OpenTelemetry's semantic conventions where they
//! exist (`messaging.*`, `process.*`, `error.type`), and `fastworker.*`
//! otherwise. Times are the record's, so a trace shows what happened, not
//! when it was exported.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status as SpanStatus, TraceContextExt, TraceFlags,
    TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use serde_json::Value;

use crate::protocol::{Status, TaskRecord};

fn time(t: DateTime<Utc>) -> SystemTime {
    SystemTime::from(t)
}

fn when(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Exports the trace of a finished task (none for a record kept from
/// before traces were recorded).
pub fn export<T: Tracer>(tracer: &T, record: &TaskRecord, local_worker: &str)
where
    T::Span: Send + Sync + 'static,
{
    let Some(trace) = &record.trace else {
        return;
    };
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&trace.trace_id),
        SpanId::from_hex(&trace.span_id),
    ) else {
        return;
    };
    let flags = if trace.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let parent = match trace
        .parent_span_id
        .as_deref()
        .and_then(|p| SpanId::from_hex(p).ok())
    {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            parent,
            flags,
            true,
            trace
                .tracestate
                .as_deref()
                .and_then(|s| s.parse::<TraceState>().ok())
                .unwrap_or_default(),
        )),
        None => Context::new(),
    };
    let end = record.finished_at.unwrap_or_else(Utc::now);
    let mut attributes = vec![
        KeyValue::new("messaging.system", "fastworker"),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", record.name.clone()),
        KeyValue::new("messaging.message.id", record.task_id.clone()),
        KeyValue::new("fastworker.task.priority", record.priority.as_str()),
        KeyValue::new("fastworker.task.status", record.status.as_str()),
        KeyValue::new("fastworker.task.attempts", record.attempts.len() as i64),
    ];
    if let Some(old) = &record.retry_of {
        attributes.push(KeyValue::new("fastworker.task.retry_of", old.clone()));
    }
    if record.status != Status::Success {
        attributes.push(KeyValue::new("error.type", record.status.as_str()));
    }
    let mut root = tracer
        .span_builder(format!("process {}", record.name))
        .with_kind(SpanKind::Consumer)
        .with_trace_id(trace_id)
        .with_span_id(span_id)
        .with_start_time(time(record.submitted_at))
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    match record.status {
        Status::Success => root.set_status(SpanStatus::Ok),
        status => root.set_status(SpanStatus::error(
            record
                .error
                .clone()
                .unwrap_or_else(|| status.as_str().to_owned()),
        )),
    }
    root.add_event_with_timestamp(
        "result",
        time(end),
        vec![KeyValue::new(
            "fastworker.task.status",
            record.status.as_str(),
        )],
    );
    let cx = parent.with_span(root);

    child(
        tracer,
        &cx,
        "submit",
        record.submitted_at,
        record.submitted_at,
        None,
        vec![
            KeyValue::new("fastworker.task.priority", record.priority.as_str()),
            KeyValue::new(
                "fastworker.task.arguments",
                (record.args.len() + record.kwargs.len()) as i64,
            ),
        ],
    );
    let attempts: Vec<Value> = record
        .attempts
        .iter()
        .map(|a| serde_json::to_value(a).unwrap_or(Value::Null))
        .collect();
    let first_start = attempts.iter().find_map(|a| when(&a["started_at"]));
    let queued_from = record
        .eta
        .unwrap_or(record.submitted_at)
        .max(record.submitted_at);
    if let Some(first) = first_start {
        child(
            tracer,
            &cx,
            "queue wait",
            queued_from,
            first,
            None,
            Vec::new(),
        );
    }
    let mut previous_end: Option<(DateTime<Utc>, bool)> = None;
    for a in &attempts {
        let n = a["attempt"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        let status = a["status"].as_str().unwrap_or("");
        let started = when(&a["started_at"]);
        let finished = when(&a["finished_at"]).or(started);
        if let (Some((prev, failed)), Some(start)) = (previous_end, started)
            && failed
        {
            child(tracer, &cx, "retry wait", prev, start, None, Vec::new());
        }
        let (Some(start), Some(stop)) = (started, finished) else {
            continue;
        };
        let worker = a["worker"].as_str().unwrap_or(local_worker).to_owned();
        let mut attributes = vec![
            KeyValue::new("fastworker.attempt", i64::from(n)),
            KeyValue::new("fastworker.attempt.status", status.to_owned()),
            KeyValue::new("fastworker.worker", worker),
        ];
        if let Some(pid) = a["pid"].as_i64() {
            attributes.push(KeyValue::new("process.pid", pid));
        }
        if let Some(code) = a["exit"]["code"].as_i64() {
            attributes.push(KeyValue::new("process.exit.code", code));
        }
        if let Some(signal) = a["exit"]["signal"].as_i64() {
            attributes.push(KeyValue::new("fastworker.exit.signal", signal));
        }
        let error = (status != "success").then(|| a["error"].as_str().unwrap_or(status).to_owned());
        if error.is_some() {
            attributes.push(KeyValue::new("error.type", status.to_owned()));
        }
        // The id its process got as the parent of its own spans.
        let id = SpanId::from_hex(&trace.attempt_span_id(n)).ok();
        child_with_id(
            tracer,
            &cx,
            &format!("attempt {n}"),
            start,
            stop,
            id,
            error,
            attributes,
        );
        // Whatever did not succeed is followed by a wait for the next.
        previous_end = Some((stop, status != "success"));
    }
    cx.span().end_with_timestamp(time(end));
}

#[allow(clippy::too_many_arguments)]
fn child_with_id<T: Tracer>(
    tracer: &T,
    cx: &Context,
    name: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    id: Option<SpanId>,
    error: Option<String>,
    attributes: Vec<KeyValue>,
) {
    let mut builder = tracer
        .span_builder(name.to_owned())
        .with_kind(SpanKind::Internal)
        .with_start_time(time(start))
        .with_attributes(attributes);
    if let Some(id) = id {
        builder = builder.with_span_id(id);
    }
    let mut span = builder.start_with_context(tracer, cx);
    if let Some(error) = error {
        span.set_status(SpanStatus::error(error));
    }
    span.end_with_timestamp(time(end.max(start)));
}

fn child<T: Tracer>(
    tracer: &T,
    cx: &Context,
    name: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    error: Option<String>,
    attributes: Vec<KeyValue>,
) {
    child_with_id(tracer, cx, name, start, end, None, error, attributes);
}
