//! The GUI's one listener on the control plane's events: it keeps the task
//! list's read model up to date, turns each event into a Server-Sent
//! Events frame, and once a second takes a sample for the charts and sends
//! the `stats` frame. If it ever falls behind the event channel, it reloads
//! the read model from the core and tells every client to reload too.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use super::history::Totals;
use super::index::Loaded;
use super::sse::Batch;
use super::state::App;
use super::view::ERROR_PREVIEW;
use crate::control_plane::events::{Event, Stamped, TaskChange, WorkerChange};
use crate::manifest::Priority;
use crate::protocol::{Status, TaskRecord, cut};

/// Events handled under one lock of the read model, at most.
const BATCH: usize = 1024;

/// The feed's pause between batches: events reach the page at most this
/// much later, and a busy control plane wakes the feed and each stream
/// client at most this often (not once an event).
const COALESCE: Duration = Duration::from_millis(10);

/// How often the history is written to the data dir.
const SAVE_EVERY: u32 = 60;

/// Loads the read model from the core; returns the event it reflects.
pub async fn load(app: &App) -> Option<u64> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (view, local) = app.index().maker();
    let visit = crate::control_plane::Visit(Box::new(
        move |records: &mut dyn Iterator<Item = &TaskRecord>, last: u64| {
            let _ = tx.send(Loaded::of(records, &view, &local, last));
        },
    ));
    if !app.core.visit(visit).await {
        return None;
    }
    let loaded = rx.await.ok()?;
    let mut index = app.index_mut();
    index.install(loaded);
    Some(index.last_event())
}

/// Runs until the GUI stops. Events are taken in batches, at most one
/// batch every [`COALESCE`]: a burst of events costs the clients one
/// wake-up, not one each.
pub async fn run(app: App, mut rx: broadcast::Receiver<Arc<Stamped>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            () = app.stop.cancelled() => break,
            received = rx.recv() => match received {
                Ok(first) => {
                    batch.push(first);
                    let mut lagged = None;
                    loop {
                        match rx.try_recv() {
                            Ok(e) => {
                                batch.push(e);
                                if batch.len() >= BATCH {
                                    apply(&app, &batch);
                                    batch.clear();
                                }
                            }
                            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                                lagged = Some(missed);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    apply(&app, &batch);
                    batch.clear();
                    if let Some(missed) = lagged {
                        reload(&app, missed).await;
                    }
                    // Let events gather (nothing is lost meanwhile: the
                    // channel holds them).
                    tokio::time::sleep(COALESCE).await;
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => reload(&app, missed).await,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                sample(&app).await;
                ticks += 1;
                if ticks % SAVE_EVERY == 0 {
                    save(&app);
                }
            }
        }
    }
    save(&app);
}

/// The feed fell `missed` events behind: the read model is reloaded from
/// the core, and every client told to reload.
async fn reload(app: &App, missed: u64) {
    tracing::warn!(
        missed,
        "the GUI fell behind the control plane's events; reloading its task list"
    );
    if let Some(last) = load(app).await {
        app.hub.gap(
            last,
            "the GUI fell behind the control plane's events and reloaded",
        );
    }
}

fn save(app: &App) {
    if let Err(e) = app.history().save() {
        tracing::warn!("the GUI's history could not be saved: {e}");
    }
}

fn apply(app: &App, batch: &[Arc<Stamped>]) {
    // Events the read model already reflects (from before a reload) are
    // not sent again.
    let floor = {
        let mut index = app.index_mut();
        let floor = index.last_event();
        for event in batch {
            index.apply(event);
        }
        floor
    };
    let mut frames = Batch::default();
    for event in batch.iter().filter(|e| e.id > floor) {
        if let Some((name, data)) = frame(app, event) {
            frames.push(&app.hub, event.id, name, |buf| {
                let _ = serde_json::to_writer(buf, &data);
            });
        }
    }
    app.hub.publish_batch(frames);
}

/// Once a second: a sample for the charts, and the `stats` frame.
async fn sample(app: &App) {
    let Some(stats) = app.core.stats().await else {
        return;
    };
    let counters = app.events.counters();
    let queued = stats.queued.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let running = counters.current.get("running").copied().unwrap_or(0);
    app.history()
        .tick(chrono::Utc::now(), Totals::of(&counters), queued, running);
    let status = super::api::status_body(app, &stats, &counters);
    app.hub.broadcast("stats", &status.to_string());
}

/// A task or worker event's data, as the stream sends it: the fields that
/// do not apply to an event are absent.
#[derive(Debug, Default, Serialize)]
pub struct Data<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_ids: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<Priority>,
    status: &'a str,
    /// The state before (null: a new task, or a worker not known before).
    from: Option<&'a str>,
    #[serde(with = "millis")]
    at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eta: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_of: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leases_lost: Option<usize>,
    /// What a reload changed (`manifest.reloaded`).
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    reload: Option<&'a crate::protocol::ReloadReport>,
}

/// Times to the millisecond (RFC 3339): a stream sends many.
mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};

    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

/// An event as the stream sends it: its name and data (none: not news to
/// a page, like a task that was queued since it was accepted).
pub fn frame<'a>(app: &'a App, stamped: &'a Stamped) -> Option<(&'static str, Data<'a>)> {
    let at = stamped.at;
    match &stamped.event {
        Event::Reloaded(report) => Some((
            "manifest.reloaded",
            Data {
                status: "reloaded",
                at,
                reload: Some(report),
                ..Data::default()
            },
        )),
        Event::Forgotten { task_ids, reason } => Some((
            "task.forgotten",
            Data {
                task_ids: Some(task_ids),
                status: "forgotten",
                reason: Some(reason.as_str()),
                at,
                ..Data::default()
            },
        )),
        Event::Worker(e) => {
            let mut data = Data {
                worker_id: Some(&e.worker_id),
                status: e.to.map_or("gone", |s| s.as_str()),
                from: e.from.map(|s| s.as_str()),
                at,
                ..Data::default()
            };
            let name = match &e.change {
                WorkerChange::Joined { capacity, tasks } => {
                    data.capacity = Some(*capacity);
                    data.tasks = Some(*tasks);
                    "worker.joined"
                }
                WorkerChange::Draining => "worker.draining",
                WorkerChange::Inactive { leases_lost } => {
                    data.leases_lost = Some(*leases_lost);
                    "worker.inactive"
                }
                WorkerChange::Left => "worker.left",
                WorkerChange::Forgotten => "worker.forgotten",
            };
            Some((name, data))
        }
        Event::Task(e) => {
            let mut data = Data {
                task_id: Some(&e.task_id),
                name: Some(&e.name),
                priority: Some(e.priority),
                status: e.to.as_str(),
                from: e.from.map(Status::as_str),
                at,
                ..Data::default()
            };
            let name = match &e.change {
                TaskChange::Accepted { submitted } => {
                    data.input = Some(app.view.input(&submitted.args, &submitted.kwargs));
                    data.eta = submitted.eta;
                    data.retry_of = submitted.retry_of.as_deref();
                    if e.to == Status::Scheduled {
                        "task.scheduled"
                    } else {
                        "task.queued"
                    }
                }
                TaskChange::Restored => "task.restored",
                // Accepted as queued (or scheduled) and now in its place:
                // the page knew already.
                TaskChange::Queued | TaskChange::Scheduled { .. } if e.from == Some(e.to) => {
                    return None;
                }
                TaskChange::Queued => "task.queued",
                TaskChange::Scheduled { eta } => {
                    data.eta = *eta;
                    "task.scheduled"
                }
                TaskChange::Started {
                    attempt, worker, ..
                } => {
                    data.attempt = Some(*attempt);
                    data.worker = Some(worker.as_deref().unwrap_or(app.worker_id()));
                    "task.started"
                }
                TaskChange::Retrying {
                    attempt,
                    error,
                    delay_ms,
                    ..
                } => {
                    data.attempt = Some(*attempt);
                    data.error = Some(cut(error, ERROR_PREVIEW));
                    data.delay_seconds = Some(delay_ms / 1000.0);
                    "task.retrying"
                }
                TaskChange::Requeued { reason } => {
                    data.reason = Some(reason);
                    "task.requeued"
                }
                TaskChange::Refused { error } => {
                    data.error = Some(super::view::public_error(error));
                    "task.refused"
                }
                TaskChange::Finished {
                    error,
                    attempts,
                    run_ms,
                    result,
                } => {
                    data.error = error.as_deref().map(|e| cut(e, ERROR_PREVIEW));
                    data.result = result.as_deref();
                    data.attempts = Some(*attempts);
                    data.duration_seconds = run_ms.map(|ms| ms / 1000.0);
                    match e.to {
                        Status::Success => "task.success",
                        Status::Cancelled => "task.cancelled",
                        _ => "task.failure",
                    }
                }
            };
            Some((name, data))
        }
    }
}
