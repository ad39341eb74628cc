//! The journal: nothing accepted is lost across a shutdown or a `kill -9`,
//! and no finished result is reported twice with different values.

use std::collections::HashMap;
use std::time::Duration;

use fastworker::protocol::Status;
use serde_json::{Value, json};

use crate::helpers::{
    Fixture, TestControlPlane, assert_contains, json_attempts, process_alive, rand_u16, read_pid,
    spawn_control_plane, spawn_control_plane_via, spawn_control_plane_with, wait_for, wait_status,
    wire_task,
};

const MANIFEST: &str = r#"
[tasks.record]
script = "record.sh"

[tasks.blocker]
script = "blocker.sh"

[tasks.third_time]
description = "blocks on its first run, fails on its second, succeeds on its third"
retries = 1
retry_backoff = "10ms"
command = ["sh", "-c", "cat > /dev/null; n=$(( $(cat runs 2>/dev/null || echo 0) + 1 )); echo $n > runs; case $n in 1) echo $$ > first.pid; sleep 60;; 2) exit 3;; *) echo 8;; esac"]

[tasks.eight]
command = ["sh", "-c", "cat > /dev/null; echo 8"]

[tasks.nonce]
description = "a result that differs on every run"
command = ["sh", "-c", "cat > /dev/null; sleep 0.05; echo \"\\\"$$-$(date +%s%N)\\\"\""]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_waiting_tasks_and_finished_results() {
    let fx = Fixture::new(MANIFEST);
    let data = fx.path("data");
    let with_journal = |c: &mut fastworker::control_plane::Config| {
        c.concurrency = 1;
        c.data_dir = Some(data.clone());
    };
    let cp = TestControlPlane::start(&fx, with_journal).await;
    let done = cp.submit("nonce", vec![], None).await;
    assert_eq!(done.status, Status::Success);
    let blocker = cp.ack("blocker", vec![], None).await;
    cp.wait_status(&blocker.task_id, Status::Running).await;
    let queued: Vec<String> = futures_ids(&cp, 3).await;
    let mut later = wire_task("record", vec![json!("later")]);
    later.eta = Some((chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339());
    let scheduled = cp.client.submit_ack(later, None).await.expect("ack");

    // A second control plane on the same data dir is refused.
    let second = fastworker::control_plane::start(
        fastworker::control_plane::Config {
            data_dir: Some(data.clone()),
            ..fastworker::control_plane::Config::new("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
        },
        std::sync::Arc::new(fx.load()),
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let err = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert_contains(&err, "is in use by another process");

    // Shut down: the running blocker finishes, the queued tasks stay journaled.
    let client = fastworker::client::Client::new(&cp.base, Duration::from_secs(5)).expect("client");
    let stopping = tokio::spawn(cp.stop());
    // The blocker ends only once the control plane is stopping (a submit
    // is then kept for the next start, and told so), or a queued task could
    // take its slot first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ack = client.submit_ack(wire_task("eight", vec![]), None).await;
        if ack.is_ok_and(|a| a.accepted && a.note.is_some()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the control plane never started stopping"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(fx.path("release"), "").expect("release");
    stopping.await.expect("stopped");
    assert!(
        !fx.path("record.log").exists(),
        "no queued task ran before the restart"
    );

    let cp = TestControlPlane::start(&fx, with_journal).await;
    // Taken-back tasks start at once, without any request to wake the core.
    assert!(
        crate::helpers::wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(fx.path("record.log"))
                .unwrap_or_default()
                .lines()
                .count()
                == 3
        })
        .await,
        "the queued tasks ran after the restart"
    );
    for id in &queued {
        cp.wait_status(id, Status::Success).await;
    }
    assert_eq!(cp.record(&blocker.task_id).await.status, Status::Success);
    assert_eq!(
        cp.record(&scheduled.task_id).await.status,
        Status::Scheduled
    );
    let again = cp.record(&done.task_id).await;
    assert_eq!(
        (again.status, &again.result),
        (Status::Success, &done.result)
    );
    cp.stop().await;
}

async fn futures_ids(cp: &TestControlPlane, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let ack = cp.ack("record", vec![json!(i)], None).await;
        assert!(ack.accepted);
        ids.push(ack.task_id);
    }
    ids
}

/// `kill -9` of a control plane, and its end.
async fn kill_9(child: &mut tokio::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let _ = child.wait().await;
}

/// The real binary on `fx`'s data dir, and a client of it.
async fn control_plane(fx: &Fixture) -> (tokio::process::Child, fastworker::client::Client) {
    let (child, base) = spawn_control_plane(fx, 2).await;
    let client = fastworker::client::Client::new(&base, Duration::from_secs(10)).expect("client");
    (child, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_no_accepted_task() {
    let fx = Fixture::new(MANIFEST);
    let mut accepted: Vec<String> = Vec::new();
    let mut reported: HashMap<String, Value> = HashMap::new();
    for round in 0..5 {
        let (mut child, client) = control_plane(&fx).await;
        // Submit a random number of tasks, note the results reported so far
        // (at least one), then kill -9 while the rest are queued or running.
        let kill_after = 5 + usize::from(rand_u16() % 25);
        let mut this_round = Vec::new();
        for i in 0..kill_after {
            let mut task = wire_task("nonce", vec![json!(format!("{round}-{i}"))]);
            if i % 7 == 3 {
                task.eta =
                    Some((chrono::Utc::now() + chrono::TimeDelta::milliseconds(300)).to_rfc3339());
            }
            let ack = client.submit_ack(task, None).await.expect("ack");
            assert!(ack.accepted, "{ack:?}");
            this_round.push(ack.task_id);
        }
        let seen_before = reported.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while reported.len() == seen_before {
            for id in &this_round {
                if let Some(t) = client.status(id).await.expect("status").task {
                    if t.status == Status::Success {
                        reported.insert(id.clone(), t.result);
                    }
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no task of round {round} finished"
            );
        }
        accepted.extend(this_round);
        kill_9(&mut child).await;
    }

    // After the last crash: every accepted task completes, and every result
    // reported before a crash is still the same.
    let (_child, client) = control_plane(&fx).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut rerun = 0;
    for id in &accepted {
        loop {
            let task = client.status(id).await.expect("status").task;
            let task = task.unwrap_or_else(|| panic!("accepted task {id} was lost"));
            if task.status == Status::Success {
                // An attempt cut short by a crash is counted, and the task ran again.
                if json_attempts(&task).iter().any(|a| a["status"] == "lost") {
                    rerun += 1;
                    assert_eq!(
                        json_attempts(&task).last().map(|a| a["status"].clone()),
                        Some(json!("success"))
                    );
                }
                if let Some(before) = reported.get(id) {
                    assert_eq!(
                        &task.result, before,
                        "task {id} reported twice, differently"
                    );
                }
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "task {id} stuck in {:?}",
                task.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        accepted.len() >= 25,
        "{} tasks accepted over 5 crashes",
        accepted.len()
    );
    assert!(!reported.is_empty(), "results were seen before the crashes");
    assert!(rerun > 0, "some crash interrupted a running task");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_survives_kill_9() {
    let fx = Fixture::new(MANIFEST);
    let (mut child, client) = control_plane(&fx).await;
    let running = client
        .submit_ack(wire_task("blocker", vec![]), None)
        .await
        .expect("ack");
    wait_status(&client, &running.task_id, Status::Running).await;
    // The second slot is free (concurrency 2): hold it with another blocker
    // so that the recorded task stays queued.
    let second = client
        .submit_ack(wire_task("blocker", vec![]), None)
        .await
        .expect("ack");
    let queued = client
        .submit_ack(wire_task("record", vec![json!("cancelled")]), None)
        .await
        .expect("ack");
    assert!(
        client
            .cancel(&queued.task_id)
            .await
            .expect("cancel")
            .cancelled
    );
    assert!(
        client
            .cancel(&running.task_id)
            .await
            .expect("cancel")
            .cancelled
    );
    // Crash right after the cancels were answered.
    kill_9(&mut child).await;

    let (_child, client) = control_plane(&fx).await;
    for id in [&queued.task_id, &running.task_id] {
        let task = client
            .status(id)
            .await
            .expect("status")
            .task
            .expect("known");
        assert_eq!(
            task.status,
            Status::Cancelled,
            "task {id} came back after the crash"
        );
    }
    // The uncancelled blocker was re-run; let it (and any orphan) finish.
    std::fs::write(fx.path("release"), "").expect("release");
    wait_status(&client, &second.task_id, Status::Success).await;
    assert!(
        !fx.path("record.log").exists(),
        "the cancelled queued task never ran"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_cannot_be_journaled_is_refused_and_never_runs() {
    let fx = Fixture::new(MANIFEST);
    // A file-size limit of 6 MiB: the journal's first 4 MiB fit, the next
    // growth fails as a full disk would.
    let (_child, base) = spawn_control_plane_via(
        &fx,
        1,
        &["bash", "-c", "ulimit -f 6144 && exec \"$0\" \"$@\""],
    )
    .await;
    let client = fastworker::client::Client::new(&base, Duration::from_secs(10)).expect("client");
    let big = "x".repeat(256 * 1024);
    let mut refused = None;
    for i in 0..64 {
        let ack = client
            .submit_ack(wire_task("record", vec![json!(i), json!(big)]), None)
            .await
            .expect("ack");
        if !ack.accepted {
            refused = Some(ack);
            break;
        }
    }
    let refused = refused.expect("a submit was refused once the journal could not grow");
    let error = refused.error.clone().unwrap_or_default();
    assert_contains(&error, "could not be journaled");
    assert_contains(&error, "File too large");
    // Never run, and unknown: the submitter was told it failed.
    let status = client.status(&refused.task_id).await.expect("status");
    assert!(status.task.is_none(), "{status:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ran = |id: &str| {
        std::fs::read_to_string(fx.path("record.log"))
            .unwrap_or_default()
            .contains(id)
    };
    // The tasks accepted before it have all run by the time the control
    // plane is idle; the refused one never does.
    loop {
        let stats = client.status(&refused.task_id).await.expect("status");
        assert!(stats.task.is_none());
        if std::fs::read_to_string(fx.path("record.log"))
            .unwrap_or_default()
            .lines()
            .count()
            >= 1
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no accepted task ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!ran(&refused.task_id), "the refused task ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_lost_to_a_crash_does_not_use_up_a_retry_and_its_process_is_killed() {
    let fx = Fixture::new(MANIFEST);
    let (mut child, client) = control_plane(&fx).await;
    let ack = client
        .submit_ack(wire_task("third_time", vec![]), None)
        .await
        .expect("ack");
    assert!(ack.accepted, "{ack:?}");
    wait_status(&client, &ack.task_id, Status::Running).await;
    // The start reaches the disk with the next commit (at most 20 ms later).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(fx.path("runs"))
        .unwrap_or_default()
        .trim()
        != "1"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    kill_9(&mut child).await;

    // The killed control plane's task is still running, orphaned.
    let orphan = read_pid(&fx.path("first.pid")).await;
    assert!(
        process_alive(orphan),
        "the first run ended with its control plane"
    );

    // The next start kills it before running the task again; retries = 1:
    // the lost attempt, then a failure and its one retry.
    let (_child, client) = control_plane(&fx).await;
    assert!(
        wait_for(Duration::from_secs(10), || !process_alive(orphan)).await,
        "the orphaned first run {orphan} is still running"
    );
    wait_status(&client, &ack.task_id, Status::Success).await;
    let task = client
        .status(&ack.task_id)
        .await
        .expect("status")
        .task
        .expect("task");
    let json = json_attempts(&task);
    let statuses: Vec<&str> = json
        .iter()
        .map(|a| a["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(statuses.len(), 3, "{:#?}", task.attempts);
    assert_eq!(
        (statuses[0], statuses[2]),
        ("lost", "success"),
        "{:#?}",
        task.attempts
    );
    assert_eq!(
        json_attempts(&task)[1]["attempt"],
        json!(2),
        "{:#?}",
        task.attempts
    );
    assert_eq!(task.result, json!(8));
    // The lost attempt started when the first run did.
    assert_eq!(
        json_attempts(&task)[0]["started_at"],
        serde_json::to_value(task.started_at).expect("time")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_still_on_its_way_at_a_crash_is_sent_after_the_restart() {
    // A PAIR0 listener: pynng, from the venv the Python client test uses.
    let Some(python) = crate::python_client::compat_python_or_skip().await else {
        return;
    };
    let fx = Fixture::new(MANIFEST);
    let address = format!("ipc://{}", fx.path("callback.ipc").display());
    // ipc callbacks are allowed only where the operator says.
    let allow = format!("ipc://{}/*", fx.dir.path().display());
    let extra = ["--callback-allow", allow.as_str()];
    let callbacks_here = |fx| async move {
        let (logged, base) = spawn_control_plane_with(fx, 2, &[], &extra).await;
        let client =
            fastworker::client::Client::new(&base, Duration::from_secs(10)).expect("client");
        (logged.child, client)
    };
    let (mut child, client) = callbacks_here(&fx).await;
    let mut task = wire_task("eight", vec![]);
    task.callback = Some(json!({"address": address, "data": {"k": "v"}}));
    let ack = client.submit_ack(task, None).await.expect("ack");
    assert!(ack.accepted, "{ack:?}");
    wait_status(&client, &ack.task_id, Status::Success).await;
    // Nobody listens yet: the callback is still being tried.
    let record = client
        .status(&ack.task_id)
        .await
        .expect("status")
        .task
        .expect("task");
    assert_eq!(record.callback_sent, None);
    kill_9(&mut child).await;

    let mut listener = tokio::process::Command::new(&python)
        .args([
            "-c",
            "import pynng, sys\n\
             with pynng.Pair0(listen=sys.argv[1], recv_timeout=20000) as s:\n\
             \x20   print('listening', flush=True)\n\
             \x20   print(s.recv().decode(), flush=True)\n",
            &address,
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("listener");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(listener.stdout.take().expect("stdout")).lines();
    assert_eq!(
        lines.next_line().await.expect("read").as_deref(),
        Some("listening")
    );

    let (_child, client) = callbacks_here(&fx).await;
    let message = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the callback arrived")
        .expect("read")
        .expect("a line");
    let message: Value = serde_json::from_str(&message).expect("json");
    assert_eq!(message["task_id"], json!(ack.task_id));
    assert_eq!(message["result"], json!(8));
    assert_eq!(message["callback_data"], json!({"k": "v"}));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let record = client
            .status(&ack.task_id)
            .await
            .expect("status")
            .task
            .expect("task");
        if record.callback_sent == Some(true) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{record:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A final record nobody waits on goes to disk soon rather than at once
/// (journal `Commit::Soon`). A query meanwhile is answered once it is there,
/// with the result: a query sent after a task finished never reads it as
/// still running.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_after_the_end_reads_the_result_not_running() {
    let fx = Fixture::new(MANIFEST);
    let data = fx.path("data");
    let cp = TestControlPlane::start(&fx, |c| c.data_dir = Some(data.clone())).await;
    let mut read_while_finishing = 0;
    for _ in 0..10 {
        let id = cp.ack("eight", vec![], None).await.task_id;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let sent = chrono::Utc::now();
            let record = cp.record(&id).await;
            seen.push((sent, record.status));
            if record.status.is_final() {
                assert_eq!(
                    (record.status, &record.result),
                    (Status::Success, &json!(8))
                );
                let finished = record.finished_at.expect("finished_at");
                for (sent, status) in &seen {
                    assert!(
                        *sent <= finished || status.is_final(),
                        "a query sent at {sent}, after the end at {finished}, read {status:?}: {seen:?}"
                    );
                }
                read_while_finishing += seen.iter().filter(|(s, _)| *s > finished).count();
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never ended: {seen:?}"
            );
        }
    }
    eprintln!("queries sent after a task's end: {read_while_finishing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_start_never_reached_the_journal_is_listed_when_its_process_is_found() {
    let fx = Fixture::new(MANIFEST);
    let (mut child, client) = control_plane(&fx).await;
    let mut task = wire_task("eight", vec![]);
    task.eta = Some((chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339());
    let ack = client.submit_ack(task, None).await.expect("ack");
    assert!(ack.accepted);
    kill_9(&mut child).await;
    // As a crash leaves it when the task's process had started but its
    // `running` record was still in the commit window (at most 20 ms): the
    // journal says waiting, and a process of that task runs on.
    let owner = std::path::absolute(fx.path("data")).expect("absolute");
    let mut stray = std::process::Command::new("sleep");
    stray
        .arg("60")
        .env("FASTWORKER_OWNER", &owner)
        .env("FASTWORKER_TASK_ID", &ack.task_id);
    std::os::unix::process::CommandExt::process_group(&mut stray, 0);
    let mut stray = stray.spawn().expect("stray");
    let _guard = crate::helpers::KillOnDrop(stray.id());
    let (_child, client) = control_plane(&fx).await;
    assert!(
        wait_for(Duration::from_secs(10), || stray
            .try_wait()
            .ok()
            .flatten()
            .is_some())
        .await,
        "the stray was killed"
    );
    let task = client
        .status(&ack.task_id)
        .await
        .expect("status")
        .task
        .expect("task");
    assert_eq!(task.status, Status::Scheduled);
    assert_eq!(task.attempts.len(), 1, "{:?}", task.attempts);
    assert_eq!(json_attempts(&task)[0]["status"], "lost");
    assert_contains(
        json_attempts(&task)[0]["error"]
            .as_str()
            .unwrap_or_default(),
        "before its start reached the journal",
    );
}

/// A rolling restart loses nothing: submits that arrive while the control
/// plane drains are journaled (and told so), and run after the next start.
#[tokio::test(flavor = "multi_thread")]
async fn submits_while_draining_are_kept_for_the_next_start() {
    let fx = Fixture::new(MANIFEST);
    let (mut child, client) = control_plane(&fx).await;
    let blocker = client
        .submit_ack(wire_task("blocker", vec![]), None)
        .await
        .expect("ack");
    wait_status(&client, &blocker.task_id, Status::Running).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    // Draining: the blocker holds it up. A submit in ack mode, and a
    // blocking one, are both taken and told.
    let mut ack = None;
    for _ in 0..200 {
        let a = client
            .submit_ack(wire_task("eight", vec![]), None)
            .await
            .expect("ack");
        if a.note.is_some() {
            ack = Some(a);
            break;
        }
        // Not draining yet: that task runs now; try again.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ack = ack.expect("a submit taken while draining");
    assert!(ack.accepted);
    assert_contains(
        ack.note.as_deref().unwrap_or(""),
        "runs after the next start",
    );
    let blocking = client
        .submit(wire_task("eight", vec![]), None, Duration::from_secs(20))
        .await
        .expect("a blocking submit is answered");
    assert_eq!(blocking.status, Status::Queued, "{blocking:?}");
    assert_contains(
        blocking.error.as_deref().unwrap_or(""),
        "runs after the next start",
    );

    std::fs::write(fx.path("release"), "").expect("release the blocker");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("it stops once the blocker ends")
        .expect("wait");
    assert!(status.success(), "{status:?}");

    let (_child, client) = control_plane(&fx).await;
    for id in [&ack.task_id, &blocking.task_id] {
        wait_status(&client, id, Status::Success).await;
    }
    wait_status(&client, &blocker.task_id, Status::Success).await;
}
