//! Pool mode: warm processes that are reused, replaced when they die, time
//! out or break the protocol, and recycled after max_tasks_per_process.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fastworker::executor::{Executor, ExitState, Outcome};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Fixture, assert_contains, process_alive, request, run_on, wait_for};

const POOL: &str = r#"
[runners.python]
pool_size = 1

[tasks.add]
runner = "python"
function = "pytasks:add"

[tasks.pid]
runner = "python"
function = "pytasks:pid"

[tasks.boom]
runner = "python"
function = "pytasks:boom"

[tasks.crash]
runner = "python"
function = "pytasks:crash"

[tasks.sleep]
runner = "python"
function = "pytasks:sleep"
timeout = "300ms"
grace_period = "200ms"

[tasks.recycled]
runner = "python"
function = "pytasks:pid"
max_tasks_per_process = 2

[tasks.wide]
runner = "python"
function = "pytasks:sleep"
pool_size = 2

[tasks.garbage]
command = ["sh", "-c", "read line; echo garbage; exec sleep 1000"]
mode = "pool"
grace_period = "100ms"

[tasks.big]
runner = "python"
function = "pytasks:big"
max_output = 1000
"#;

fn pid_result(e: &fastworker::executor::Execution) -> u32 {
    match &e.outcome {
        Outcome::Success { result } => result.as_u64().expect("pid") as u32,
        other => panic!("{other:?}: {}", e.stderr),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_process_serves_many_requests() {
    let fx = Fixture::new(POOL);
    let executor = Executor::new();
    let first = pid_result(&run_on(&executor, &fx, "pid", vec![]).await);
    for _ in 0..5 {
        assert_eq!(
            pid_result(&run_on(&executor, &fx, "pid", vec![]).await),
            first
        );
    }
    let e = run_on(&executor, &fx, "add", vec![json!(5), json!(3)]).await;
    assert_eq!(e.outcome, Outcome::Success { result: json!(8) });
    executor.shutdown().await;
    assert!(
        wait_for(Duration::from_secs(5), || !process_alive(first)).await,
        "shutdown stops pool processes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exception_fails_only_its_task_and_the_process_is_kept() {
    let fx = Fixture::new(POOL);
    let executor = Executor::new();
    let e = run_on(&executor, &fx, "boom", vec![json!("kaput")]).await;
    let Outcome::Failed {
        exit: None,
        error: Some(error),
        process_lost: false,
    } = &e.outcome
    else {
        panic!("{:?}", e.outcome)
    };
    assert_eq!(error.kind, "ValueError");
    assert_eq!(error.message, "kaput");
    let tb = error.traceback.as_deref().unwrap_or_default();
    assert_contains(tb, "in boom");
    assert!(
        !tb.contains("fastworker_runner"),
        "runner frames are left out:\n{tb}"
    );
    let pid = e.pid.expect("pid");
    let e = run_on(&executor, &fx, "boom", vec![]).await;
    assert_eq!(e.pid, Some(pid), "the same process serves the next request");
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_process_fails_its_task_and_is_replaced() {
    let fx = Fixture::new(POOL);
    let executor = Executor::new();
    let e = run_on(&executor, &fx, "crash", vec![json!(3)]).await;
    assert_eq!(
        e.outcome,
        Outcome::Failed {
            exit: Some(ExitState::Code(3)),
            error: None,
            process_lost: true
        }
    );
    assert_contains(
        &e.outcome.to_string(),
        "the pool process died while running the task (exit code 3)",
    );
    assert!(e.outcome.is_retryable());
    let dead = e.pid.expect("pid");
    // The same pool (pool_size 1) serves the next request from a new process.
    let e = run_on(&executor, &fx, "crash", vec![json!(0)]).await;
    assert_ne!(e.pid, Some(dead));
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_are_recycled_after_max_tasks_per_process() {
    let fx = Fixture::new(POOL);
    let executor = Executor::new();
    let mut pids = Vec::new();
    for _ in 0..5 {
        pids.push(pid_result(
            &run_on(&executor, &fx, "recycled", vec![]).await,
        ));
    }
    assert_eq!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2]);
    assert_eq!(pids[2], pids[3]);
    assert_ne!(pids[3], pids[4]);
    let retired = [pids[0], pids[2]];
    assert!(
        wait_for(Duration::from_secs(5), || retired
            .iter()
            .all(|p| !process_alive(*p)))
        .await,
        "retired processes exit"
    );
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_kills_and_replaces_the_process() {
    let fx = Fixture::new(POOL);
    let executor = Executor::new();
    let e = run_on(&executor, &fx, "sleep", vec![json!(30)]).await;
    assert_eq!(
        e.outcome,
        Outcome::Timeout {
            limit: Duration::from_millis(300)
        }
    );
    let killed = e.pid.expect("pid");
    assert!(wait_for(Duration::from_secs(5), || !process_alive(killed)).await);
    let e = run_on(&executor, &fx, "sleep", vec![json!(0)]).await;
    assert_eq!(e.outcome, Outcome::Success { result: json!(0) });
    assert_ne!(e.pid, Some(killed));
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_the_running_pool_process() {
    let fx = Fixture::new(POOL);
    let executor = Executor::new();
    let spec = fx.spec("wide");
    let warm = run_on(&executor, &fx, "wide", vec![json!(0)]).await;
    let pid = warm.pid.expect("pid");
    let cancel = CancellationToken::new();
    let req = request("wide", vec![json!(30)]);
    let (e, ()) = tokio::join!(executor.run(&spec, &req, &cancel), async {
        // The warm process is busy once it has been taken from the idle list.
        let pool = executor.pool(&spec);
        assert!(wait_for(Duration::from_secs(5), || pool.idle_count() == 0).await);
        cancel.cancel();
    });
    assert_eq!(e.outcome, Outcome::Cancelled);
    assert_eq!(e.pid, Some(pid));
    assert!(wait_for(Duration::from_secs(5), || !process_alive(pid)).await);
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_size_bounds_the_processes() {
    let fx = Fixture::new(POOL);
    let executor = Arc::new(Executor::new());
    let spec = fx.spec("wide");
    let runs = (0..6).map(|_| {
        let (executor, spec) = (Arc::clone(&executor), Arc::clone(&spec));
        tokio::spawn(async move {
            executor
                .run(
                    &spec,
                    &request("wide", vec![json!(0.05)]),
                    &CancellationToken::new(),
                )
                .await
        })
    });
    let mut pids = HashSet::new();
    for run in runs {
        let e = run.await.expect("join");
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
        pids.insert(e.pid.expect("pid"));
    }
    assert!(
        pids.len() <= 2,
        "pool_size 2 but {} processes: {pids:?}",
        pids.len()
    );
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_that_is_not_json_fails_the_task_and_replaces_the_process() {
    let fx = Fixture::new(POOL);
    let executor = Executor::new();
    let e = run_on(&executor, &fx, "garbage", vec![]).await;
    let Outcome::InvalidOutput { message, head } = &e.outcome else {
        panic!("{:?}", e.outcome)
    };
    assert_contains(message, "a pool reply is not valid JSON");
    assert_eq!(head, "garbage");
    let pid = e.pid.expect("pid");
    assert!(wait_for(Duration::from_secs(5), || !process_alive(pid)).await);
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_over_max_output_is_refused() {
    let fx = Fixture::new(POOL);
    let executor = Executor::new();
    let e = run_on(&executor, &fx, "big", vec![json!(100_000)]).await;
    assert_eq!(e.outcome, Outcome::OutputTooLarge { limit: 1000 });
    assert_eq!(
        e.outcome.to_string(),
        "output too large: more than 1000 bytes"
    );
    // A whole reply line just over the cap is refused too; the process is kept.
    let e = run_on(&executor, &fx, "big", vec![json!(1_000)]).await;
    assert_eq!(e.outcome, Outcome::OutputTooLarge { limit: 1000 });
    let kept = e.pid;
    let e = run_on(&executor, &fx, "big", vec![json!(10)]).await;
    assert_eq!(
        e.outcome,
        Outcome::Success {
            result: json!("x".repeat(10))
        }
    );
    assert_eq!(e.pid, kept);
    executor.shutdown().await;
}
