//! Per-task resource limits: a task that allocates 2 GB, forks without end,
//! spins or opens too many files is stopped by its own limit (named in its
//! failure), one-shot and in a pool, and its cgroups go with it.

use std::sync::Arc;

use fastworker::executor::limits::Cgroups;
use fastworker::executor::{Executor, Limit, Outcome};
use serde_json::json;

use crate::helpers::{Fixture, assert_contains, json_attempts, run_on};

const MANIFEST: &str = r#"
[tasks.hog]
runner = "python"
function = "pytasks:allocate"
mode = "oneshot"
memory_limit = "256MiB"

[tasks.pool_hog]
runner = "python"
function = "pytasks:allocate"
pool_size = 1
memory_limit = "256MiB"

[tasks.spin]
runner = "python"
function = "pytasks:spin"
mode = "oneshot"
cpu_time_limit = "1s"

[tasks.pool_spin]
runner = "python"
function = "pytasks:spin"
pool_size = 1
cpu_time_limit = "2s"

[tasks.files]
runner = "python"
function = "pytasks:open_files"
mode = "oneshot"
max_open_files = 32

[tasks.forks]
runner = "python"
function = "pytasks:fork"
mode = "oneshot"
max_processes = 20
"#;

/// The limit an outcome names, and its text.
fn limit_of(outcome: &Outcome) -> (Limit, String) {
    match outcome {
        Outcome::LimitExceeded { limit, .. } => (*limit, outcome.to_string()),
        other => panic!("expected a limit to stop it, got {other:?}: {other}"),
    }
}

/// This process's task cgroups left behind (there should be none).
fn leftover_cgroups() -> Vec<String> {
    let me = format!("fastworker-{}-", std::process::id());
    let mut found = Vec::new();
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
    ] {
        let Ok(walk) = std::process::Command::new("find")
            .args([
                root,
                "-maxdepth",
                "4",
                "-type",
                "d",
                "-name",
                &format!("{me}*"),
            ])
            .output()
        else {
            continue;
        };
        found.extend(
            String::from_utf8_lossy(&walk.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gigabytes_stop_at_the_memory_limit_one_shot_and_pooled() {
    let fx = Fixture::new(MANIFEST);
    let executor = Executor::new();
    let small = run_on(&executor, &fx, "hog", vec![json!(16)]).await;
    assert!(small.outcome.is_success(), "{}", small.outcome);
    for task in ["hog", "pool_hog"] {
        let e = run_on(&executor, &fx, task, vec![json!(2048)]).await;
        let (limit, text) = limit_of(&e.outcome);
        assert_eq!(limit, Limit::Memory);
        assert_contains(&text, "memory limit 256 MiB");
    }
    // The pool goes on with a fresh process.
    let after = run_on(&executor, &fx, "pool_hog", vec![json!(16)]).await;
    assert!(after.outcome.is_success(), "{}", after.outcome);
    executor.shutdown().await;
    assert!(leftover_cgroups().is_empty(), "{:?}", leftover_cgroups());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spinning_task_is_stopped_by_its_cpu_limit_and_each_pooled_task_gets_the_whole_limit() {
    let fx = Fixture::new(MANIFEST);
    let executor = Executor::new();
    let e = run_on(&executor, &fx, "spin", vec![]).await;
    let (limit, text) = limit_of(&e.outcome);
    assert_eq!(limit, Limit::CpuTime);
    assert_eq!(text, "killed: CPU time limit 1s");
    // Three pooled runs of 1.2 s of CPU each: more than the 2 s limit in
    // all, each within it.
    for _ in 0..3 {
        let e = run_on(&executor, &fx, "pool_spin", vec![json!(1.2)]).await;
        assert!(e.outcome.is_success(), "{}", e.outcome);
    }
    let e = run_on(&executor, &fx, "pool_spin", vec![]).await;
    assert_eq!(limit_of(&e.outcome).0, Limit::CpuTime);
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_open_files_is_named_as_the_limit() {
    let fx = Fixture::new(MANIFEST);
    let executor = Executor::new();
    assert!(
        run_on(&executor, &fx, "files", vec![json!(10)])
            .await
            .outcome
            .is_success()
    );
    let e = run_on(&executor, &fx, "files", vec![json!(100)]).await;
    let (limit, text) = limit_of(&e.outcome);
    assert_eq!(limit, Limit::OpenFiles);
    assert_contains(&text, "open-files limit 32");
    assert_contains(&text, "Too many open files");
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_stops_at_the_process_limit() {
    if !Cgroups::detect().processes_bound() {
        // Root with no pids cgroup: nothing would stop it here.
        assert!(
            std::env::var_os("FASTWORKER_REQUIRE_CGROUPS").is_none(),
            "FASTWORKER_REQUIRE_CGROUPS is set, but no pids cgroup can be used: {}",
            Cgroups::detect().describe()
        );
        eprintln!(
            "skipped: max_processes cannot bind here ({})",
            Cgroups::detect().describe()
        );
        return;
    }
    let fx = Fixture::new(MANIFEST);
    let executor = Arc::new(Executor::new());
    assert!(
        run_on(&executor, &fx, "forks", vec![json!(5)])
            .await
            .outcome
            .is_success()
    );
    let e = run_on(&executor, &fx, "forks", vec![json!(2000)]).await;
    let (limit, text) = limit_of(&e.outcome);
    assert_eq!(limit, Limit::Processes);
    assert_contains(&text, "process limit 20");
    executor.shutdown().await;
    assert!(leftover_cgroups().is_empty(), "{:?}", leftover_cgroups());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_cgroups_memory_is_bounded_by_rlimit_data() {
    let fx = Fixture::new(MANIFEST);
    let executor = Executor::new().with_cgroups(Cgroups::none());
    assert!(
        run_on(&executor, &fx, "hog", vec![json!(16)])
            .await
            .outcome
            .is_success()
    );
    let e = run_on(&executor, &fx, "hog", vec![json!(2048)]).await;
    let (limit, text) = limit_of(&e.outcome);
    assert_eq!(limit, Limit::Memory);
    assert_contains(&text, "stopped by its memory limit 256 MiB");
    assert_contains(&text, "MemoryError");
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_plane_reports_the_limit_in_the_failure() {
    let fx = Fixture::new(MANIFEST);
    let cp = crate::helpers::TestControlPlane::start(&fx, |_| {}).await;
    let r = cp.submit("hog", vec![json!(2048)], None).await;
    assert_eq!(r.status, fastworker::protocol::Status::Failure);
    assert_contains(
        r.error.as_deref().unwrap_or_default(),
        "memory limit 256 MiB",
    );
    let record = cp.record(&r.task_id).await;
    assert_eq!(json_attempts(&record)[0]["status"], "limit_exceeded");
    assert_eq!(json_attempts(&record)[0]["limit"], "memory");
    cp.stop().await;
}
