//! The GUI's read endpoints: FastWorker's (`/api/status`, `/api/workers`,
//! `/api/tasks`, `/api/cache`, `/api/queues`, `/api/registered-tasks`)
//! with their original fields, and what they lack (a task's whole record,
//! the history for the charts, `/metrics`, health). Actions are in
//! [`super::actions`]. docs/gui.md shows every answer.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::index::{Filter, Row, STATES, Sort};
use super::state::{App, AppState};
use crate::control_plane::Stats;
use crate::control_plane::events::{BUCKETS, Counters, Histogram};
use crate::manifest::Priority;
use crate::protocol::Status;

/// An error answer: `{"error": message}`.
pub fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub(super) fn gone() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the control plane is shutting down".to_owned(),
    )
}

/// The rows a list may ask for at most.
pub const MAX_LIMIT: usize = 1000;

/// `/api/status`'s object (also each `stats` event's).
pub fn status_body(app: &AppState, stats: &Stats, counters: &Counters) -> Value {
    let counts = app.index().counts();
    let rates = app.history().last(60);
    let live: i64 = ["queued", "scheduled", "running", "retrying"]
        .iter()
        .map(|s| counters.current.get(s).copied().unwrap_or(0).max(0))
        .sum();
    let workers = |s: &str| counters.workers.get(s).copied().unwrap_or(0).max(0);
    let by_state: BTreeMap<&str, u64> = STATES
        .iter()
        .zip(counts)
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    let queued_by_priority: BTreeMap<&str, usize> = Priority::ALL
        .iter()
        .map(|p| (p.as_str(), stats.queued[*p as usize]))
        .collect();
    let finished = |s: &str| counters.finished.get(s).copied().unwrap_or(0);
    json!({
        "worker_id": app.worker_id(),
        "running": !stats.draining,
        "draining": stats.draining,
        "version": env!("CARGO_PKG_VERSION"),
        "base_address": app.sockets.info.base_address,
        "discovery_address": app.discovery_address,
        "started_at": app.started_at,
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "subworkers": {
            "total": workers("active") + workers("draining") + workers("inactive"),
            "active": workers("active"),
            "draining": workers("draining"),
            "inactive": workers("inactive"),
        },
        "tasks": {
            "queued": stats.queued.iter().sum::<usize>(),
            "active": live,
            "cached_results": stats.cached_results,
            "by_state": by_state,
            "queued_by_priority": queued_by_priority,
            "totals": {
                "accepted": counters.accepted,
                "started": counters.started,
                "retries": counters.retries,
                "success": finished("success"),
                "failure": finished("failure"),
                "cancelled": finished("cancelled"),
            },
        },
        "rates": {
            "window_seconds": 60,
            "accepted": rates.accepted,
            "success": rates.success,
            "failure": rates.failure,
            "cancelled": rates.cancelled,
        },
        "cache": cache_body(stats, &by_state),
        "journal": match &app.journal {
            Some(m) => json!({"enabled": true, "commits": m.commits(), "bytes": m.bytes(), "size_bytes": m.size()}),
            None => json!({"enabled": false}),
        },
        "gui": {
            "read_only": app.guard.read_only,
            "auth": app.guard.has_token(),
            "redacted_keys": app.view.redacted_keys(),
            "sse_clients": app.hub.clients(),
        },
        "timestamp": Utc::now(),
    })
}

fn cache_body(stats: &Stats, by_state: &BTreeMap<&str, u64>) -> Value {
    let finished: BTreeMap<&str, u64> = by_state
        .iter()
        .filter(|(s, _)| matches!(**s, "success" | "failure" | "cancelled"))
        .map(|(s, n)| (*s, *n))
        .collect();
    let capacity = stats.cache_capacity.max(1);
    json!({
        "max_size": stats.cache_capacity,
        "current_size": stats.cached_results,
        "utilization_percent": (stats.cached_results as f64 * 1000.0 / capacity as f64).round() / 10.0,
        "ttl_seconds": stats.cache_ttl.as_secs(),
        "by_status": finished,
        "bytes": stats.cached_bytes,
        "max_bytes": stats.cache_max_bytes,
        "evictions": stats.cache_evictions,
    })
}

pub async fn status(State(app): State<App>) -> Response {
    let Some(stats) = app.core.stats().await else {
        return gone();
    };
    let counters = app.events.counters();
    Json(status_body(&app, &stats, &counters)).into_response()
}

pub async fn cache(State(app): State<App>) -> Response {
    let Some(stats) = app.core.stats().await else {
        return gone();
    };
    let counts = app.index().counts();
    let by_state: BTreeMap<&str, u64> = STATES
        .iter()
        .zip(counts)
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    Json(cache_body(&stats, &by_state)).into_response()
}

/// Parses the list's query parameters.
pub fn filter_of(
    params: &[(String, String)],
) -> Result<(Filter, Sort, usize, Option<String>), String> {
    let mut filter = Filter::default();
    let (mut sort, mut limit, mut cursor) = (Sort::Newest, 50, None);
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    for (key, value) in params {
        let value = value.trim();
        match key.as_str() {
            "status" => {
                for s in list(value) {
                    filter.statuses.push(parse_status(&s)?);
                }
            }
            "name" => filter.names.extend(list(value)),
            "priority" => {
                for p in list(value) {
                    filter.priorities.push(parse_priority(&p)?);
                }
            }
            "worker" if !value.is_empty() => filter.worker = Some(value.to_owned()),
            "q" if !value.is_empty() => filter = filter.search(value),
            "since" if !value.is_empty() => filter.since = Some(parse_when("since", value)?),
            "until" if !value.is_empty() => filter.until = Some(parse_when("until", value)?),
            "sort" => sort = value.parse()?,
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "limit must be a number from 1 to {MAX_LIMIT}, not '{}'",
                            crate::protocol::cut(value, 40)
                        )
                    })?;
            }
            "cursor" if !value.is_empty() => cursor = Some(value.to_owned()),
            "worker" | "q" | "since" | "until" | "cursor" | "format" | "offset" => {}
            other => {
                return Err(format!(
                    "unknown parameter '{}': the list takes status, name, priority, worker, q, since, until, sort, limit, cursor",
                    crate::protocol::cut(other, 40)
                ));
            }
        }
    }
    Ok((filter, sort, limit, cursor))
}

pub fn parse_status(s: &str) -> Result<Status, String> {
    STATES
        .iter()
        .copied()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| {
            format!(
                "unknown status '{}': one of queued, scheduled, running, retrying, success, failure, cancelled",
                crate::protocol::cut(s, 40)
            )
        })
}

pub fn parse_priority(s: &str) -> Result<Priority, String> {
    Priority::ALL
        .iter()
        .copied()
        .find(|p| p.as_str() == s.to_lowercase())
        .ok_or_else(|| {
            format!(
                "unknown priority '{}': one of critical, high, normal, low",
                crate::protocol::cut(s, 40)
            )
        })
}

/// A time: RFC 3339, or an age (`15m`, `2h`, `1d`) before now.
fn parse_when(key: &str, value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    humantime::parse_duration(value)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| {
            format!(
                "{key} '{}' is neither a time (RFC 3339, like 2026-11-29T15:00:00Z) nor an age (like 15m, 2h, 1d)",
                crate::protocol::cut(value, 40)
            )
        })
}

/// A row as the list shows it (FastWorker's fields first).
pub fn row_json(row: &Row) -> Value {
    json!({
        "task_id": row.task_id,
        "name": row.name,
        "status": row.status,
        "priority": row.priority,
        "input": row.input,
        "result": row.result,
        "error": row.error,
        "submitted_at": row.submitted_at,
        "eta": row.eta,
        "started_at": row.started_at,
        "completed_at": row.finished_at,
        "duration_seconds": row.duration,
        "attempts": row.attempts,
        "worker": row.worker,
        "retry_of": row.retry_of,
        "retried_by": row.retried_by,
        "cached_at": row.finished_at,
        "last_accessed": Value::Null,
    })
}

pub async fn tasks(
    State(app): State<App>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return error(
            StatusCode::BAD_REQUEST,
            "the query string cannot be read".to_owned(),
        );
    };
    let (filter, sort, limit, cursor) = match filter_of(&params) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let page = match app.index().page(&filter, sort, limit, cursor.as_deref()) {
        Ok(page) => page,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let counts: BTreeMap<&str, u64> = STATES
        .iter()
        .zip(page.counts)
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    Json(json!({
        "tasks": page.rows.iter().map(row_json).collect::<Vec<_>>(),
        "total": page.total,
        "counts": counts,
        "limit": limit,
        "offset": page.offset,
        "next_cursor": page.next_cursor,
        "last_event_id": app.hub.event_id(page.last_event),
    }))
    .into_response()
}

/// A task id from the path, or a JSON error saying it cannot be read.
#[derive(Debug)]
pub struct TaskId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TaskId {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(TaskId(id)),
            Err(_) => Err(error(
                StatusCode::BAD_REQUEST,
                "the task id in the path cannot be read (percent-encode it, as UTF-8)".to_owned(),
            )),
        }
    }
}

pub fn not_found(task_id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "task {} not found (unknown, or its result expired)",
            crate::protocol::cut(task_id, 130)
        ),
    )
}

pub async fn detail(State(app): State<App>, TaskId(task_id): TaskId) -> Response {
    let Some(record) = app.core.get(task_id.clone()).await else {
        return not_found(&task_id);
    };
    let retried_by = app.index().get(&task_id).and_then(|r| r.retried_by.clone());
    let timeline = super::view::timeline(&record, app.worker_id());
    Json(json!({
        "task": app.view.record(&record),
        "retry_of": record.retry_of,
        "retried_by": retried_by,
        "timeline": timeline,
        "cli": app.view.cli(&record),
    }))
    .into_response()
}

pub async fn queues(State(app): State<App>) -> Response {
    let Some(q) = app.core.queues(10).await else {
        return gone();
    };
    let mut lanes = serde_json::Map::new();
    for priority in Priority::ALL {
        let lane = &q.lanes[priority as usize];
        lanes.insert(
            priority.as_str().to_owned(),
            json!({
                "count": lane.count,
                "oldest_age_seconds": lane.oldest.map(|d| d.as_secs_f64()),
                "tasks": lane.next.iter().map(|t| json!({
                    "id": t.task_id, "name": t.name, "age_seconds": t.waited.as_secs_f64(),
                })).collect::<Vec<_>>(),
            }),
        );
    }
    let timed = |t: &crate::control_plane::Timed| {
        json!({
            "count": t.count,
            "next": t.next.iter().map(|d| json!({
                "id": d.task_id, "name": d.name, "at": d.at, "attempt": d.attempt,
            })).collect::<Vec<_>>(),
        })
    };
    Json(json!({
        "queues": lanes,
        "total_queued": q.lanes.iter().map(|l| l.count).sum::<usize>(),
        "scheduled": timed(&q.scheduled),
        "retrying": timed(&q.retrying),
    }))
    .into_response()
}

pub async fn workers(State(app): State<App>) -> Response {
    let Some(workers) = app.core.workers().await else {
        return gone();
    };
    let list: Vec<Value> = workers
        .iter()
        .map(|w| {
            json!({
                "id": w.worker_id,
                "address": w.address,
                "status": w.status,
                "load": w.load,
                "capacity": w.capacity,
                "tasks_done": w.tasks_done,
                "last_seen": w.last_seen,
                "registered_at": w.registered_at,
                "is_control_plane": w.kind == "control-plane",
                "tasks": w.tasks,
                "warnings": w.warnings,
            })
        })
        .collect();
    Json(json!({"count": list.len(), "workers": list})).into_response()
}

/// p50 and p95 read off a histogram (the upper bound of their bucket).
fn figures(h: Option<&Histogram>) -> Value {
    let Some(h) = h.filter(|h| h.count > 0) else {
        return json!({"count": 0, "mean": null, "p50": null, "p95": null});
    };
    let at = |q: f64| {
        let rank = (h.count as f64 * q).ceil() as u64;
        h.buckets
            .iter()
            .zip(BUCKETS)
            .find(|(n, _)| **n >= rank)
            .map(|(_, bound)| bound)
    };
    json!({"count": h.count, "mean": h.sum / h.count as f64, "p50": at(0.5), "p95": at(0.95)})
}

pub async fn registered(State(app): State<App>) -> Response {
    let Some(workers) = app.core.workers().await else {
        return gone();
    };
    let counters = app.events.counters();
    let manifest = &app.manifest.get();
    let mut names: Vec<String> = manifest.tasks.keys().cloned().collect();
    for w in &workers {
        names.extend(w.tasks.iter().cloned());
    }
    names.sort();
    names.dedup();
    let list: Vec<Value> = names
        .iter()
        .map(|name| {
            let spec = manifest.task(name);
            let defined_by: Vec<&str> = workers
                .iter()
                .filter(|w| w.tasks.contains(name))
                .map(|w| w.worker_id.as_str())
                .collect();
            let outcomes = counters.by_name.get(name).copied().unwrap_or_default();
            json!({
                "name": name,
                "module": Value::Null,
                "doc": spec.and_then(|s| s.description.clone()),
                "runs": spec.map(|s| s.how.describe(&manifest.dir)),
                "mode": spec.map(|s| s.mode.to_string()),
                "priority": spec.map(|s| s.priority),
                "timeout_seconds": spec.and_then(|s| s.timeout).map(|t| t.as_secs_f64()),
                "retries": spec.map(|s| s.retries),
                "workers": defined_by,
                "stats": {
                    "running": counters.running_by_name.get(name).copied().unwrap_or(0).max(0),
                    "success": outcomes.success,
                    "failure": outcomes.failure,
                    "cancelled": outcomes.cancelled,
                    "retries": outcomes.retries,
                    "run_seconds": figures(counters.run_seconds.get(name)),
                    "wait_seconds": figures(counters.wait_seconds.get(name)),
                },
            })
        })
        .collect();
    Json(json!({"count": list.len(), "tasks": list})).into_response()
}

pub async fn history(State(app): State<App>) -> Response {
    let history = app.history();
    let minutes: Vec<&super::history::Minute> = history.minutes().collect();
    let seconds: Vec<&super::history::Second> = history.seconds().collect();
    Json(json!({"minutes": minutes, "seconds": seconds})).into_response()
}

pub async fn metrics(State(app): State<App>) -> Response {
    let Some(stats) = app.core.stats().await else {
        return gone();
    };
    let counters = app.events.counters();
    let text = super::metrics::render(&super::metrics::Snapshot {
        worker_id: app.worker_id(),
        started_at: app.started_at.timestamp_millis() as f64 / 1000.0,
        counters: &counters,
        stats: &stats,
        journal: app
            .journal
            .as_ref()
            .map(|m| (m.commits(), m.bytes(), m.size())),
        sse_clients: app.hub.clients(),
        denied: app.sockets.gate.denied(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(app): State<App>) -> Response {
    match app.core.stats().await {
        Some(stats) if !stats.draining => "ready".into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response(),
    }
}
