//! The control plane over real NNG sockets: results, priorities that hold,
//! a bounded queue, resends that never run twice, cancel, status of every
//! state, and replies that never cross under load.

use std::sync::Arc;
use std::time::Duration;

use fastworker::manifest::Priority;
use fastworker::protocol::Status;
use serde_json::{Value, json};

use crate::helpers::{
    Fixture, KillOnDrop, TestControlPlane, assert_contains, json_attempts, process_alive, read_pid,
    wait_for, wire_task,
};

const MANIFEST: &str = r#"
[tasks.add]
runner = "python"
function = "pytasks:add"
pool_size = 2

[tasks.record]
description = "appends its request to record.log"
script = "record.sh"

[tasks.blocker]
description = "runs until the file 'release' exists"
script = "blocker.sh"

[tasks.sleeper]
script = "pidfile_sleep.sh"
env = { PIDFILE = "{dir}/task.pid" }
grace_period = "200ms"

[tasks.flaky]
command = ["sh", "-c", "exit 1"]
retries = 3
retry_backoff = "1h"

[tasks.boom]
runner = "python"
function = "pytasks:boom"

[tasks.exhausts]
command = ["sh", "-c", "echo giving up >&2; exit 7"]
retries = 2
retry_backoff = "20ms"

[tasks.single]
description = "a blocker of which only one may run at a time"
script = "blocker.sh"
max_concurrency = 1
"#;

/// The requests record.sh saw, in order: their first argument.
fn recorded(fx: &Fixture) -> Vec<Value> {
    std::fs::read_to_string(fx.path("record.log"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("request")["args"][0].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_returns_the_result() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let r = cp.submit("add", vec![json!(5), json!(3)], None).await;
    assert_eq!((r.status, r.result), (Status::Success, json!(8)));
    assert!(r.started_at.is_some() && r.completed_at.is_some());

    let r = cp.submit("boom", vec![json!("kaput")], None).await;
    assert_eq!(r.status, Status::Failure);
    assert_eq!(r.error.as_deref(), Some("failed: ValueError: kaput"));
    assert!(!r.refused);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_tasks_and_bad_messages_are_refused_clearly() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let r = cp.submit("nope", vec![], None).await;
    assert!(r.refused);
    assert_eq!(r.status, Status::Failure);
    assert_eq!(
        r.error.as_deref(),
        Some(
            "unknown task 'nope'; known: add, blocker, boom, exhausts, flaky, record, single, sleeper"
        )
    );
    let url = cp.client.endpoints().submit(Priority::Normal).to_owned();
    let reply = fastworker::transport::request(&url, b"not json", Duration::from_secs(5))
        .await
        .expect("reply");
    assert_contains(
        &String::from_utf8_lossy(&reply),
        "\"error\":\"not a valid message",
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_critical_task_runs_before_queued_low_ones() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| c.concurrency = 1).await;
    let blocker = cp.ack("blocker", vec![], None).await;
    cp.wait_status(&blocker.task_id, Status::Running).await;

    let mut ids = Vec::new();
    for i in 0..5 {
        let ack = cp
            .client
            .submit_ack(
                wire_task("record", vec![json!(format!("low{i}"))]),
                Some(Priority::Low),
            )
            .await
            .expect("low");
        assert!(ack.accepted);
        assert_eq!(ack.status, Some(Status::Queued));
        ids.push(ack.task_id);
    }
    let critical = cp
        .ack("record", vec![json!("critical")], Some(Priority::Critical))
        .await;
    ids.push(critical.task_id);

    std::fs::write(fx.path("release"), "").expect("release");
    for id in &ids {
        cp.wait_status(id, Status::Success).await;
    }
    assert_eq!(
        recorded(&fx),
        ["critical", "low0", "low1", "low2", "low3", "low4"].map(|s| json!(s)),
        "the CRITICAL task runs next, then the LOW ones in order"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_refuses_at_once() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| {
        c.concurrency = 1;
        c.max_queue = 2;
    })
    .await;
    let blocker = cp.ack("blocker", vec![], None).await;
    cp.wait_status(&blocker.task_id, Status::Running).await;
    for i in 0..2 {
        let ack = cp.ack("record", vec![json!(i)], None).await;
        assert!(ack.accepted, "{ack:?}");
    }
    let full = cp.ack("record", vec![json!(2)], None).await;
    assert!(!full.accepted);
    assert_eq!(
        full.error.as_deref(),
        Some("queue full: 2 tasks waiting, the limit is 2 (--max-queue)")
    );
    // A blocking submit is refused the same way, with a TaskResult.
    let r = cp.submit("record", vec![json!(3)], None).await;
    assert!(r.refused && r.error.unwrap_or_default().starts_with("queue full"));
    std::fs::write(fx.path("release"), "").expect("release");
    assert!(wait_for(Duration::from_secs(20), || recorded(&fx).len() == 2).await);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resent_task_id_never_runs_twice() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let task = wire_task("record", vec![json!("once")]);
    let task_id = task.id.clone();
    let first = cp
        .client
        .submit_ack(task.clone(), None)
        .await
        .expect("first");
    let again = cp
        .client
        .submit_ack(task.clone(), None)
        .await
        .expect("again");
    assert!(first.accepted && again.accepted);
    // A blocking resend of the same id gets the one run's result.
    let r = cp
        .client
        .submit(task.clone(), None, Duration::from_secs(30))
        .await
        .expect("blocking");
    assert_eq!((r.status, r.result), (Status::Success, json!("once")));
    let r = cp
        .client
        .submit(task, None, Duration::from_secs(30))
        .await
        .expect("after");
    assert_eq!(r.result, json!("once"));
    assert_eq!(recorded(&fx), [json!("once")]);
    // The same id for another task is a collision, not a resend.
    let mut other = wire_task("add", vec![json!(1), json!(1)]);
    other.id = task_id;
    let refused = cp.client.submit_ack(other, None).await.expect("ack");
    assert!(!refused.accepted);
    assert_contains(
        &refused.error.unwrap_or_default(),
        "is already used by a 'record' task",
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_answers_every_state() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| c.concurrency = 1).await;
    let blocker = cp.ack("blocker", vec![], None).await;
    cp.wait_status(&blocker.task_id, Status::Running).await;
    let queued = cp.ack("record", vec![json!(1)], None).await;
    assert_eq!(cp.record(&queued.task_id).await.status, Status::Queued);
    let mut later = wire_task("record", vec![json!(2)]);
    later.eta = Some((chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339());
    let scheduled = cp.client.submit_ack(later, None).await.expect("ack");
    let s = cp.record(&scheduled.task_id).await;
    assert_eq!(s.status, Status::Scheduled);
    assert!(s.eta.is_some());

    std::fs::write(fx.path("release"), "").expect("release");
    cp.wait_status(&queued.task_id, Status::Success).await;
    let done = cp.record(&queued.task_id).await;
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(json_attempts(&done)[0]["status"], "success");

    // retrying: the first attempt failed and the next waits an hour.
    let flaky = cp.ack("flaky", vec![], None).await;
    cp.wait_status(&flaky.task_id, Status::Retrying).await;
    let f = cp.record(&flaky.task_id).await;
    assert_eq!(f.attempts.len(), 1);
    assert_eq!(f.error.as_deref(), Some("failed (exit code 1)"));

    // failure and cancelled
    let boom = cp.submit("boom", vec![], None).await;
    assert_eq!(cp.record(&boom.task_id).await.status, Status::Failure);
    assert!(
        cp.client
            .cancel(&scheduled.task_id)
            .await
            .expect("cancel")
            .cancelled
    );
    assert_eq!(
        cp.record(&scheduled.task_id).await.status,
        Status::Cancelled
    );
    assert!(
        cp.client
            .cancel(&flaky.task_id)
            .await
            .expect("cancel")
            .cancelled
    );
    assert_eq!(cp.record(&flaky.task_id).await.status, Status::Cancelled);
    assert!(!cp.client.status("no-such-id").await.expect("status").found);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_task_and_removes_a_queued_one() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| c.concurrency = 1).await;
    let sleeper = cp.ack("sleeper", vec![], None).await;
    let pid = read_pid(&fx.path("task.pid")).await;
    let _guard = KillOnDrop(pid);
    let queued = cp.ack("record", vec![json!("never")], None).await;

    let c = cp.client.cancel(&queued.task_id).await.expect("cancel");
    assert!(c.cancelled && c.status == Some(Status::Cancelled));
    let c = cp.client.cancel(&sleeper.task_id).await.expect("cancel");
    assert!(c.cancelled && c.status == Some(Status::Running));
    cp.wait_status(&sleeper.task_id, Status::Cancelled).await;
    assert!(
        wait_for(Duration::from_secs(5), || !process_alive(pid)).await,
        "no orphan"
    );

    // Idempotent; a finished task is not cancelled; an unknown id is not found.
    assert!(
        cp.client
            .cancel(&sleeper.task_id)
            .await
            .expect("again")
            .cancelled
    );
    let done = cp.submit("record", vec![json!("done")], None).await;
    let c = cp.client.cancel(&done.task_id).await.expect("cancel");
    assert!(!c.cancelled);
    assert_contains(&c.error.unwrap_or_default(), "already finished (success)");
    let c = cp.client.cancel("no-such-id").await.expect("cancel");
    assert_eq!(
        (c.cancelled, c.error.as_deref()),
        (false, Some("task no-such-id not found"))
    );
    assert_eq!(
        recorded(&fx),
        [json!("done")],
        "the cancelled queued task never ran"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_submits_each_get_their_own_result() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let client = Arc::new(cp.client.clone());
    let submits: Vec<_> = (0..200)
        .map(|i| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                let task = wire_task("add", vec![json!(i), json!(1000)]);
                let id = task.id.clone();
                let r = client
                    .submit(task, None, Duration::from_secs(60))
                    .await
                    .expect("submit");
                (i, id, r)
            })
        })
        .collect();
    for submit in submits {
        let (i, id, r) = submit.await.expect("join");
        assert_eq!(r.task_id, id, "reply {i} belongs to another task");
        assert_eq!(
            (r.status, r.result),
            (Status::Success, json!(i + 1000)),
            "task {i}"
        );
    }
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_accepted_whole_or_not_at_all() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let url = cp.client.endpoints().submit(Priority::Normal).to_owned();
    let good = wire_task("record", vec![json!("batched")]);
    let bad = wire_task("nope", vec![]);
    let batch = json!({"action": "batch_submit", "tasks": [good, bad]});
    let reply = fastworker::transport::request(
        &url,
        &serde_json::to_vec(&batch).expect("json"),
        Duration::from_secs(5),
    )
    .await
    .expect("reply");
    let reply: Value = serde_json::from_slice(&reply).expect("json");
    assert_eq!(reply["batch_accepted"], false);
    assert_contains(
        reply["error"].as_str().unwrap_or_default(),
        "unknown task 'nope'",
    );
    assert!(
        !cp.client.status(&good.id).await.expect("status").found,
        "nothing accepted"
    );

    let batch = json!({"action": "batch_submit", "tasks": [good]});
    let reply = fastworker::transport::request(
        &url,
        &serde_json::to_vec(&batch).expect("json"),
        Duration::from_secs(5),
    )
    .await
    .expect("reply");
    let reply: Value = serde_json::from_slice(&reply).expect("json");
    assert_eq!(
        reply,
        json!({"batch_accepted": true, "task_ids": [good.id]})
    );
    cp.wait_status(&good.id, Status::Success).await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_refuses_new_work_and_lets_running_tasks_finish() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| c.concurrency = 1).await;
    let flaky = cp.ack("flaky", vec![], None).await;
    cp.wait_status(&flaky.task_id, Status::Retrying).await;
    let client = cp.client.clone();
    let blocking = tokio::spawn(async move {
        client
            .submit(wire_task("blocker", vec![]), None, Duration::from_secs(60))
            .await
    });
    let running = loop {
        let stats = cp.core.stats().await.expect("stats");
        if stats.running == 1 {
            break stats;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(running.running, 1);
    let waiting = cp.ack("record", vec![json!("queued")], None).await;
    let probe = cp.client.clone();
    let stopping = tokio::spawn(cp.stop());

    // New work is refused while draining; the queued task ends without running.
    let refused = loop {
        let ack = probe
            .submit_ack(wire_task("record", vec![json!("late")]), None)
            .await
            .expect("ack");
        if !ack.accepted {
            break ack;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        refused.error.as_deref(),
        Some("the control plane is shutting down")
    );
    let queued = probe
        .status(&waiting.task_id)
        .await
        .expect("status")
        .task
        .expect("found");
    assert_eq!(queued.status, Status::Failure);
    assert_eq!(
        queued.error.as_deref(),
        Some("the control plane shut down before the task ran")
    );
    let retrying = probe
        .status(&flaky.task_id)
        .await
        .expect("status")
        .task
        .expect("found");
    assert_eq!(
        (retrying.status, retrying.error.as_deref()),
        (
            Status::Failure,
            Some(
                "the control plane shut down before the next attempt; the last one failed (exit code 1)"
            )
        )
    );
    std::fs::write(fx.path("release"), "").expect("release");
    let r = blocking.await.expect("join").expect("submit");
    assert_eq!((r.status, r.result), (Status::Success, json!("released")));
    stopping.await.expect("stopped");
    assert!(
        recorded(&fx).is_empty(),
        "neither the queued nor the late task ran"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_limits_a_task_type_without_blocking_others() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| c.concurrency = 2).await;
    let first = cp.ack("single", vec![], None).await;
    cp.wait_status(&first.task_id, Status::Running).await;
    let second = cp.ack("single", vec![], Some(Priority::Critical)).await;
    // A free slot, but `single` is at its limit: a LOW task of another type runs.
    let other = cp
        .submit("record", vec![json!("other")], Some(Priority::Low))
        .await;
    assert_eq!(other.status, Status::Success);
    let s = cp.record(&second.task_id).await;
    assert_eq!(
        s.status,
        Status::Queued,
        "the second `single` waits for the first"
    );
    std::fs::write(fx.path("release"), "").expect("release");
    cp.wait_status(&second.task_id, Status::Success).await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_task_is_answered_at_once_and_runs_once_at_its_eta() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let mut task = wire_task("record", vec![json!("later")]);
    task.eta = Some((chrono::Utc::now() + chrono::TimeDelta::milliseconds(300)).to_rfc3339());
    // A blocking submit of a delayed task is answered at once: scheduled.
    let r = cp
        .client
        .submit(task.clone(), None, Duration::from_secs(60))
        .await
        .expect("submit");
    assert_eq!(r.status, Status::Scheduled);
    // Resends (FastWorker's client resends on timeout) join the same task.
    for _ in 0..3 {
        let again = cp
            .client
            .submit(task.clone(), None, Duration::from_secs(60))
            .await
            .expect("resend");
        assert!(matches!(
            again.status,
            Status::Scheduled | Status::Queued | Status::Running | Status::Success
        ));
    }
    cp.wait_status(&task.id, Status::Success).await;
    let record = cp.record(&task.id).await;
    let eta = record.eta.expect("eta");
    assert!(
        record.started_at.expect("started") >= eta,
        "not before its eta"
    );
    assert_eq!(recorded(&fx), [json!("later")], "run once");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delayed_tasks_run_in_eta_order() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| c.concurrency = 1).await;
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for (name, ms) in [("third", 600), ("first", 200), ("second", 400)] {
        let mut task = wire_task("record", vec![json!(name)]);
        task.eta = Some((now + chrono::TimeDelta::milliseconds(ms)).to_rfc3339());
        let ack = cp.client.submit_ack(task, None).await.expect("ack");
        assert_eq!(ack.status, Some(Status::Scheduled));
        ids.push(ack.task_id);
    }
    for id in &ids {
        cp.wait_status(id, Status::Success).await;
    }
    assert_eq!(
        recorded(&fx),
        ["first", "second", "third"].map(|s| json!(s))
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_run_out_with_the_last_error_and_every_attempt_recorded() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let r = cp.submit("exhausts", vec![], None).await;
    assert_eq!(r.status, Status::Failure);
    assert_eq!(r.error.as_deref(), Some("failed (exit code 7)"));
    let record = cp.record(&r.task_id).await;
    let json = json_attempts(&record);
    let attempts: Vec<(u64, &str)> = json
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap_or(0),
                a["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, "failed"), (2, "failed"), (3, "failed")]);
    for a in &json_attempts(&record) {
        assert_eq!(a["stderr"], "giving up\n");
        assert!(a["started_at"].is_string() && a["finished_at"].is_string());
    }
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_repeating_an_id_is_refused() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let task = wire_task("record", vec![json!(1)]);
    let reply = cp
        .client
        .submit_batch(&[task.clone(), task.clone()], Priority::Normal)
        .await
        .expect("reply");
    assert!(!reply.batch_accepted);
    assert_eq!(
        reply.error.unwrap_or_default(),
        format!("task id {} appears twice in one submit", task.id)
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_of_a_hundred_tasks_all_come_in_order() {
    use fastworker::control_plane::events::{Event, TaskChange};
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let mut events = cp.events.subscribe();
    let mut ids = Vec::new();
    for i in 0..100 {
        let ack = cp.ack("record", vec![json!(i)], None).await;
        assert!(ack.accepted);
        ids.push(ack.task_id);
    }
    for id in &ids {
        cp.wait_status(id, Status::Success).await;
    }
    let (mut counts, mut last) = (std::collections::BTreeMap::new(), 0);
    while let Ok(stamped) = events.try_recv() {
        assert_eq!(stamped.id, last + 1, "no gap, no repeat");
        last = stamped.id;
        if let Event::Task(task) = &stamped.event {
            assert!(ids.contains(&task.task_id));
            let change = match &task.change {
                TaskChange::Accepted { .. } => "accepted",
                TaskChange::Queued => "queued",
                TaskChange::Started { worker: None, .. } => "started here",
                TaskChange::Finished { .. } if task.to == Status::Success => "succeeded",
                other => panic!("unexpected {other:?}"),
            };
            *counts.entry(change).or_insert(0) += 1;
        }
    }
    let expected: std::collections::BTreeMap<&str, i32> = [
        ("accepted", 100),
        ("queued", 100),
        ("started here", 100),
        ("succeeded", 100),
    ]
    .into();
    assert_eq!(counts, expected);
    let counters = cp.events.counters();
    assert_eq!((counters.accepted, counters.started), (100, 100));
    assert_eq!(counters.finished.get("success"), Some(&100));
    assert!(
        counters.current.values().all(|n| *n == 0),
        "{:?}",
        counters.current
    );
    assert_eq!(counters.run_seconds["record"].count, 100);
    cp.stop().await;
}
