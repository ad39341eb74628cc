//! What the GUI changes: submit, cancel, retry, delete (one task, or many
//! by ids or by the list's filter), and the export of the list. Each goes
//! through the core like a request on the NNG sockets does, with the same
//! checks. The guard (see [`super::security`]) has already refused these
//! in read-only mode, from another origin, or without a JSON body.

use std::collections::HashMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::api::{TaskId, error, filter_of, gone};
use super::index::Filter;
use super::state::App;
use crate::control_plane::{NewTask, Refused};
use crate::protocol::{ReplyMode, WireTask};

/// Tasks one bulk request may act on.
pub const MAX_BULK: usize = 10_000;

/// Actions under way at once in a bulk request.
const IN_FLIGHT: usize = 64;

/// A JSON body, or the answer that says what is wrong with it.
fn body<T: DeserializeOwned>(bytes: Result<Bytes, BytesRejection>) -> Result<T, Box<Response>> {
    let bytes = bytes.map_err(|rejection| {
        let status = rejection.status();
        Box::new(if status == StatusCode::PAYLOAD_TOO_LARGE {
            error(
                status,
                "the request body is too large (the limit is --gui-max-body, 1 MiB by default)"
                    .to_owned(),
            )
        } else {
            error(status, "the request body cannot be read".to_owned())
        })
    })?;
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("bad JSON body: {e}"),
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    name: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    #[serde(default)]
    priority: Option<String>,
    /// Seconds from now.
    #[serde(default)]
    countdown: Option<f64>,
    #[serde(default)]
    eta: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

/// A core refusal as an answer: a full queue or a stop is the service's
/// state (503), anything else the request's fault (400).
fn refused(message: String) -> Response {
    let journal = message.contains("could not be journaled");
    let busy = journal || message.starts_with("queue full") || message.contains("shutting down");
    let status = if busy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    error(status, super::view::public_error(&message))
}

pub async fn submit(State(app): State<App>, bytes: Result<Bytes, BytesRejection>) -> Response {
    let request: SubmitBody = match body(bytes) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let priority = match request.priority.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => match super::api::parse_priority(p) {
            Ok(p) => Some(p),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
        None => None,
    };
    let eta = match (request.countdown, request.eta) {
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "give countdown or eta, not both".to_owned(),
            );
        }
        (Some(seconds), None) => {
            match chrono::Duration::try_milliseconds((seconds * 1000.0) as i64)
                .filter(|_| seconds.is_finite() && (0.0..=31_536_000.0).contains(&seconds))
            {
                Some(d) => Some((chrono::Utc::now() + d).to_rfc3339()),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("countdown must be 0 to 31536000 seconds (a year), not {seconds}"),
                    );
                }
            }
        }
        (None, eta) => eta,
    };
    let task = WireTask {
        id: request
            .id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        name: request.name,
        args: request.args,
        kwargs: request.kwargs,
        priority,
        eta,
        callback: None,
        reply: ReplyMode::Ack,
        traceparent: None,
        tracestate: None,
    };
    let task_id = task.id.clone();
    let new = match crate::control_plane::handlers::new_task(task, &app.sockets.callbacks) {
        Ok(new) => new,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match app.core.submit(vec![new]).await {
        Ok(statuses) => (
            StatusCode::CREATED,
            Json(json!({
                "task_id": task_id,
                "status": statuses.statuses.first(),
                "note": statuses.deferred.then_some("accepted while the control plane stops: the task is in the journal and runs after the next start"),
            })),
        )
            .into_response(),
        Err(e) => refused(e),
    }
}

/// What one action on one task came to.
enum Done {
    Ok(Value),
    Failed(StatusCode, String),
}

impl Done {
    fn response(self, ok: StatusCode) -> Response {
        match self {
            Done::Ok(v) => (ok, Json(v)).into_response(),
            Done::Failed(status, message) => error(status, message),
        }
    }
}

async fn cancel_one(app: &App, task_id: String) -> Done {
    let reply = app.core.cancel(task_id.clone()).await;
    match (reply.cancelled, reply.status) {
        (true, status) => {
            Done::Ok(json!({"task_id": task_id, "cancelled": true, "status": status}))
        }
        (false, None) => {
            if reply
                .error
                .as_deref()
                .is_some_and(|e| e.contains("shutting down"))
            {
                Done::Failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    reply.error.unwrap_or_default(),
                )
            } else {
                Done::Failed(
                    StatusCode::NOT_FOUND,
                    format!("task {task_id} not found (unknown, or its result expired)"),
                )
            }
        }
        (false, Some(_)) => Done::Failed(StatusCode::CONFLICT, reply.error.unwrap_or_default()),
    }
}

async fn retry_one(app: &App, task_id: String) -> Done {
    let Some(old) = app.core.get(task_id.clone()).await else {
        return Done::Failed(
            StatusCode::NOT_FOUND,
            format!("task {task_id} not found (unknown, or its result expired)"),
        );
    };
    if !old.status.is_final() {
        return Done::Failed(
            StatusCode::CONFLICT,
            format!(
                "task {task_id} has not finished ({}): only a finished task can be retried",
                old.status.as_str()
            ),
        );
    }
    let new_id = uuid::Uuid::new_v4().to_string();
    let new = NewTask {
        task_id: new_id.clone(),
        name: old.name.clone(),
        args: old.args,
        kwargs: old.kwargs,
        priority: Some(old.priority),
        eta: None,
        callback: None,
        retry_of: Some(task_id.clone()),
        trace: None,
        waiter: None,
    };
    match app.core.submit(vec![new]).await {
        Ok(statuses) => Done::Ok(json!({
            "task_id": new_id,
            "retry_of": task_id,
            "status": statuses.statuses.first(),
        })),
        Err(e) => {
            let busy = e.starts_with("queue full")
                || e.contains("shutting down")
                || e.contains("could not be journaled");
            let status = if busy {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::CONFLICT
            };
            Done::Failed(status, super::view::public_error(&e))
        }
    }
}

async fn delete_one(app: &App, task_id: String) -> Done {
    match app.core.delete(task_id.clone()).await {
        Ok(()) => Done::Ok(json!({"task_id": task_id, "deleted": true})),
        Err(Refused::Unknown(e)) => Done::Failed(StatusCode::NOT_FOUND, e),
        Err(Refused::Live(e)) => Done::Failed(StatusCode::CONFLICT, e),
    }
}

pub async fn cancel(
    State(app): State<App>,
    TaskId(task_id): TaskId,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = body::<Value>(bytes) {
        return *r;
    }
    cancel_one(&app, task_id).await.response(StatusCode::OK)
}

pub async fn retry(
    State(app): State<App>,
    TaskId(task_id): TaskId,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = body::<Value>(bytes) {
        return *r;
    }
    retry_one(&app, task_id).await.response(StatusCode::CREATED)
}

pub async fn delete(State(app): State<App>, TaskId(task_id): TaskId) -> Response {
    delete_one(&app, task_id).await.response(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    action: String,
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<HashMap<String, String>>,
}

pub async fn bulk(State(app): State<App>, bytes: Result<Bytes, BytesRejection>) -> Response {
    let request: BulkBody = match body(bytes) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let ids = match (request.ids, request.filter) {
        (Some(ids), None) => {
            if ids.len() > MAX_BULK {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{} ids: at most {MAX_BULK} a request", ids.len()),
                );
            }
            ids
        }
        (None, Some(filter)) => {
            let params: Vec<(String, String)> = filter.into_iter().collect();
            let filter = match filter_of(&params) {
                Ok((filter, ..)) => filter,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("filter: {e}")),
            };
            app.index().ids(&filter, MAX_BULK + 1)
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give either ids (a list of task ids) or filter (the list's parameters)".to_owned(),
            );
        }
    };
    let action = request.action.as_str();
    if !matches!(action, "cancel" | "retry" | "delete") {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown action '{}': one of cancel, retry, delete",
                crate::protocol::cut(action, 40)
            ),
        );
    }
    // A filter that matches more acts on the newest MAX_BULK, and says so.
    let limited = ids.len() > MAX_BULK;
    let ids: Vec<String> = ids.into_iter().take(MAX_BULK).collect();
    let matched = ids.len();
    let results: Vec<(String, Done)> = futures_util::stream::iter(ids)
        .map(|id| {
            let app = app.clone();
            async move {
                let done = match action {
                    "cancel" => cancel_one(&app, id.clone()).await,
                    "retry" => retry_one(&app, id.clone()).await,
                    _ => delete_one(&app, id.clone()).await,
                };
                (id, done)
            }
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let (mut done, mut failed, mut new_ids) = (0, Vec::new(), Vec::new());
    for (id, result) in results {
        match result {
            Done::Ok(v) => {
                done += 1;
                if action == "retry"
                    && let Some(new) = v.get("task_id").and_then(Value::as_str)
                {
                    new_ids.push(new.to_owned());
                }
            }
            Done::Failed(_, e) => failed.push(json!({"task_id": id, "error": e})),
        }
    }
    Json(json!({
        "action": action,
        "matched": matched,
        "limited": limited,
        "done": done,
        "failed": failed,
        "new_task_ids": new_ids,
    }))
    .into_response()
}

/// Records fetched from the core at once for an export.
const EXPORT_CHUNK: usize = 500;

/// The CSV columns of an export.
const COLUMNS: [&str; 13] = [
    "task_id",
    "name",
    "status",
    "priority",
    "submitted_at",
    "started_at",
    "completed_at",
    "duration_seconds",
    "attempts",
    "worker",
    "input",
    "result",
    "error",
];

pub async fn export(
    State(app): State<App>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return error(
            StatusCode::BAD_REQUEST,
            "the query string cannot be read".to_owned(),
        );
    };
    let format = params
        .iter()
        .find(|(k, _)| k == "format")
        .map_or("csv", |(_, v)| v.as_str())
        .to_owned();
    if !matches!(format.as_str(), "csv" | "ndjson") {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown format '{}': csv or ndjson",
                crate::protocol::cut(&format, 40)
            ),
        );
    }
    let filter: Filter = match filter_of(&params) {
        Ok((filter, ..)) => filter,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ids = app.index().ids(&filter, usize::MAX);
    let csv = format == "csv";
    let header_line = csv.then(|| Bytes::from(format!("{}\r\n", COLUMNS.join(","))));
    let chunks: Vec<Vec<String>> = ids.chunks(EXPORT_CHUNK).map(<[String]>::to_vec).collect();
    let app2 = app.clone();
    let rows = futures_util::stream::iter(chunks).then(move |chunk| {
        let app = app2.clone();
        async move {
            let records = app.core.get_many(chunk).await.unwrap_or_default();
            let mut out = String::new();
            for record in records {
                let shown = app.view.record(&record);
                if csv {
                    out.push_str(&csv_line(&app, &shown));
                } else {
                    out.push_str(&serde_json::to_string(&shown).unwrap_or_default());
                    out.push('\n');
                }
            }
            Ok::<Bytes, std::convert::Infallible>(Bytes::from(out))
        }
    });
    let stream = futures_util::stream::iter(header_line.map(Ok)).chain(rows);
    let (kind, ext) = if csv {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/x-ndjson", "ndjson")
    };
    let name = format!(
        "attachment; filename=\"fastworker-tasks-{}.{ext}\"",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    if app.core.stats().await.is_none() {
        return gone();
    }
    (
        [
            (header::CONTENT_TYPE, kind.to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn csv_line(app: &App, r: &crate::protocol::TaskRecord) -> String {
    let json = |v: &Value| {
        if v.is_null() {
            String::new()
        } else {
            v.to_string()
        }
    };
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
    let last = r.attempts.last();
    let worker = last.map(|a| a.worker().unwrap_or(app.worker_id()).to_owned());
    let input = {
        let mut parts: Vec<String> = r.args.iter().map(Value::to_string).collect();
        parts.extend(r.kwargs.iter().map(|(k, v)| format!("{k}={v}")));
        parts.join(", ")
    };
    let cells = [
        r.task_id.clone(),
        r.name.clone(),
        r.status.as_str().to_owned(),
        r.priority.as_str().to_owned(),
        time(Some(r.submitted_at)),
        time(r.started_at),
        time(r.finished_at.filter(|_| r.status.is_final())),
        last.and_then(|a| a.execution())
            .map(|e| e.duration.as_secs_f64().to_string())
            .unwrap_or_default(),
        r.attempts.len().to_string(),
        worker.unwrap_or_default(),
        input,
        json(&r.result),
        r.error.clone().unwrap_or_default(),
    ];
    let mut line = cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// A CSV cell: quoted when it needs it, and a text that a spreadsheet
/// would run as a formula (`=`, `+`, `-`, `@` first) made inert with a
/// leading `'` (numbers stay numbers).
fn csv_cell(cell: &str) -> String {
    let formula =
        cell.starts_with(['=', '+', '-', '@', '\t', '\r']) && cell.parse::<f64>().is_err();
    let cell = if formula {
        format!("'{cell}")
    } else {
        cell.to_owned()
    };
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_made_inert() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("-5"), "-5", "a number stays a number");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
    }
}
