//! The control plane's limits hold under abuse: memory is bounded before a
//! message is read, requests held open get "busy" instead of a hang,
//! connections are capped and idle ones closed, results are bounded by
//! bytes, and a task that cannot start for the host's shortage runs later.

use std::time::Duration;

use fastworker::client::ClientError;
use fastworker::protocol::Status;
use fastworker::transport::Requester;
use serde_json::json;

use crate::helpers::{
    Fixture, TestControlPlane, assert_contains, json_attempts, memory, spawn_control_plane_with,
    wait_for_async, wire_task,
};

const MANIFEST: &str = r#"
[tasks.blocker]
script = "blocker.sh"

[tasks.eight]
command = ["sh", "-c", "cat > /dev/null; echo 8"]

[tasks.big]
description = "a result of N bytes"
command = ["python3", "-c", "import json,sys; n=json.load(sys.stdin)['args'][0]; print(json.dumps('x'*n))"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_limit_is_never_read_into_memory() {
    let fx = Fixture::new(MANIFEST);
    let (logged, base) =
        spawn_control_plane_with(&fx, 2, &[], &["--max-message-size", "1MiB"]).await;
    let pid = logged.pid();
    let client = fastworker::client::Client::new(&base, Duration::from_secs(5)).expect("client");
    assert_eq!(
        client
            .submit(wire_task("eight", vec![]), None, Duration::from_secs(20))
            .await
            .expect("submit")
            .result,
        json!(8)
    );
    let before = memory(&pid.to_string(), "VmHWM");
    // 200 MB in one message, three times over.
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let big = vec![b' '; 200 << 20];
    for _ in 0..3 {
        let sent = fastworker::transport::request(
            &format!("tcp://127.0.0.1:{port}"),
            &big,
            Duration::from_secs(2),
        )
        .await;
        assert!(sent.is_err(), "no reply to a message over the limit");
    }
    let after = memory(&pid.to_string(), "VmHWM");
    eprintln!(
        "three 200 MB messages over a 1 MiB limit: peak RSS {:.1} MiB before, {:.1} MiB after",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert!(
        after < before + (20 << 20),
        "peak memory went from {before} to {after} bytes"
    );
    // And it goes on serving.
    let r = client
        .submit(wire_task("eight", vec![]), None, Duration::from_secs(20))
        .await
        .expect("submit");
    assert_eq!(r.result, json!(8));
    drop(logged);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_held_past_the_limit_are_answered_busy_not_left_hanging() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| {
        c.concurrency = 1;
        c.limits.max_pending = 40;
    })
    .await;
    // 40 blocking submits hold the normal-priority socket's requests.
    let held: Vec<_> = (0..40)
        .map(|_| {
            let client = cp.client.clone();
            tokio::spawn(async move {
                client
                    .submit(wire_task("blocker", vec![]), None, Duration::from_secs(60))
                    .await
            })
        })
        .collect();
    assert!(
        wait_for_async(|| async { cp.guard.turned().open > 0 && pending(&cp).await == 40 }).await,
        "40 tasks accepted"
    );
    // The 41st is told so at once.
    let started = std::time::Instant::now();
    let busy = cp.client.submit_ack(wire_task("eight", vec![]), None).await;
    match busy {
        Err(ClientError::Refused(e)) => assert_contains(&e, "busy"),
        other => panic!("expected busy, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at once"
    );
    assert!(cp.guard.turned().busy_replies >= 1);
    // Other sockets still answer, and the held ones all finish.
    let id = &cp.client.workers().await.expect("workers").workers[0].worker_id;
    assert_eq!(id, "control-plane");
    std::fs::write(fx.path("release"), "").expect("release");
    for h in held {
        let r = h.await.expect("join").expect("submit");
        assert_eq!(r.status, Status::Success);
    }
    cp.stop().await;
}

/// Tasks the core holds (queued or running).
async fn pending(cp: &TestControlPlane) -> usize {
    cp.core
        .stats()
        .await
        .map_or(0, |s| s.queued.iter().sum::<usize>() + s.running)
}

#[tokio::test(flavor = "multi_thread")]
async fn more_blocking_submits_than_the_old_context_count_all_get_answers() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| c.concurrency = 1).await;
    // 1,100 held at once on one socket (there used to be 1,024 contexts).
    let held: Vec<_> = (0..1100)
        .map(|_| {
            let client = cp.client.clone();
            tokio::spawn(async move {
                client
                    .submit(wire_task("blocker", vec![]), None, Duration::from_secs(120))
                    .await
            })
        })
        .collect();
    assert!(
        wait_for_async(|| async { pending(&cp).await == 1100 }).await,
        "1,100 tasks accepted, got {}",
        pending(&cp).await
    );
    // The same socket still takes new work.
    let ack = cp
        .client
        .submit_ack(wire_task("eight", vec![]), None)
        .await
        .expect("ack");
    assert!(ack.accepted, "{ack:?}");
    std::fs::write(fx.path("release"), "").expect("release");
    for h in held {
        assert_eq!(
            h.await.expect("join").expect("submit").status,
            Status::Success
        );
    }
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_capped_per_peer_and_idle_ones_closed() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| {
        c.limits.max_per_peer = 20;
        c.limits.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let query = cp.client.endpoints().query.clone();
    let status = serde_json::to_vec(&json!({"action": "info"})).expect("json");
    let mut sockets = Vec::new();
    for _ in 0..30 {
        // A refused connection may still dial (NNG closes it after the
        // handshake); its requests get no answer.
        if let Ok(r) = Requester::dial(&query).await {
            sockets.push(r);
        }
    }
    assert!(
        wait_for_async(|| async { cp.guard.turned().connections_refused >= 10 }).await,
        "{:?}",
        cp.guard.turned()
    );
    assert!(cp.guard.turned().open <= 20, "{:?}", cp.guard.turned());
    drop(sockets);
    // Idle connections are closed; a client that comes back connects again.
    let client = Requester::dial(&query).await.expect("dial");
    let reply = client
        .request(&status, Duration::from_secs(5))
        .await
        .expect("info");
    assert_contains(&String::from_utf8_lossy(&reply), "control-plane");
    assert!(
        wait_for_async(|| async { cp.guard.turned().idle_closed >= 1 }).await,
        "{:?}",
        cp.guard.turned()
    );
    let reply = client
        .request(&status, Duration::from_secs(5))
        .await
        .expect("info again");
    assert_contains(&String::from_utf8_lossy(&reply), "control-plane");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn results_are_bounded_by_bytes_across_a_restart() {
    let fx = Fixture::new(MANIFEST);
    let data = fx.path("data");
    let config = |c: &mut fastworker::control_plane::Config| {
        c.result_cache_bytes = 1 << 20;
        c.data_dir = Some(data.clone());
    };
    let cp = TestControlPlane::start(&fx, config).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        // ~300 KB a record: the result is in it twice (and in its attempt).
        let r = cp.submit("big", vec![json!(150_000)], None).await;
        assert_eq!(r.status, Status::Success);
        ids.push(r.task_id);
    }
    let stats = cp.core.stats().await.expect("stats");
    assert!(stats.cached_bytes <= 1 << 20, "{stats:?}");
    assert_eq!(stats.cached_results, 3, "{stats:?}");
    assert_eq!(stats.cache_evictions, 3, "{stats:?}");
    assert!(
        cp.client
            .status(&ids[0])
            .await
            .expect("status")
            .task
            .is_none()
    );
    assert!(
        cp.client
            .status(&ids[5])
            .await
            .expect("status")
            .task
            .is_some()
    );
    cp.stop().await;
    let cp = TestControlPlane::start(&fx, config).await;
    let stats = cp.core.stats().await.expect("stats");
    assert_eq!(stats.cached_results, 3, "{stats:?}");
    assert!(stats.cached_bytes <= 1 << 20, "{stats:?}");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_cannot_start_for_want_of_descriptors_runs_later_without_using_a_retry() {
    let fx = Fixture::new(MANIFEST);
    let (logged, base) = spawn_control_plane_with(&fx, 2, &[], &[]).await;
    let pid = logged.pid();
    let client = fastworker::client::Client::new(&base, Duration::from_secs(5)).expect("client");
    // The client's connection is open; now leave the control plane no
    // descriptor to spare for a task's pipes.
    client.workers().await.expect("workers");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    let prlimit = |n: usize| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}:")])
            .status()
            .expect("prlimit");
        assert!(status.success());
    };
    prlimit(open + 1);
    let ack = client
        .submit_ack(wire_task("eight", vec![]), None)
        .await
        .expect("ack");
    assert!(ack.accepted, "{ack:?}");
    assert!(
        wait_for_async(|| async {
            client
                .status(&ack.task_id)
                .await
                .ok()
                .and_then(|s| s.task)
                .is_some_and(|t| t.status == Status::Retrying)
        })
        .await,
        "the task waits to run again"
    );
    prlimit(20_000);
    crate::helpers::wait_status(&client, &ack.task_id, Status::Success).await;
    let task = client
        .status(&ack.task_id)
        .await
        .expect("status")
        .task
        .expect("task");
    let first = &json_attempts(&task)[0];
    assert_eq!(first["status"], "spawn_failed");
    assert_eq!(first["transient"], true);
    assert_contains(first["error"].as_str().unwrap_or_default(), "open files");
    assert_eq!(
        json_attempts(&task).last().map(|a| a["status"].clone()),
        Some(json!("success"))
    );
    drop(logged);
}
