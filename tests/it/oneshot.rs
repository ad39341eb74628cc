//! One-shot mode: every outcome, with its evidence, from real processes.

use std::time::Duration;

use fastworker::executor::{ExitState, Outcome};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    Fixture, KillOnDrop, assert_contains, memory, process_alive, read_pid, request, run_once,
    wait_for,
};

#[tokio::test(flavor = "multi_thread")]
async fn success_gets_the_request_on_stdin_and_returns_stdout_as_json() {
    let fx = Fixture::new("[tasks.echo]\ncommand = [\"cat\"]\n");
    let spec = fx.spec("echo");
    let mut req = request("echo", vec![json!(5), json!("x")]);
    req.kwargs.insert("k".into(), json!({"a": 1}));
    let executor = fastworker::executor::Executor::new();
    let e = executor.run(&spec, &req, &CancellationToken::new()).await;
    let Outcome::Success { result } = &e.outcome else {
        panic!("{:?}", e.outcome)
    };
    assert_eq!(
        result,
        &json!({"task_id": req.task_id, "name": "echo", "args": [5, "x"], "kwargs": {"k": {"a": 1}}, "attempt": 1})
    );
    assert_eq!(e.attempt, 1);
    assert!(e.finished_at >= e.started_at);
    assert!(e.pid.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_carries_exit_code_and_stderr_tail() {
    let fx = Fixture::new(
        "[tasks.f]\ncommand = [\"sh\", \"-c\", \"echo something went wrong >&2; exit 3\"]\n",
    );
    let e = run_once(&fx.spec("f"), vec![]).await;
    assert_eq!(
        e.outcome,
        Outcome::Failed {
            exit: Some(ExitState::Code(3)),
            error: None,
            process_lost: false
        }
    );
    assert_eq!(e.stderr, "something went wrong\n");
    assert_eq!(e.outcome.to_string(), "failed (exit code 3)");
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_by_signal_names_the_signal() {
    let fx = Fixture::new("[tasks.f]\ncommand = [\"sh\", \"-c\", \"kill -KILL $$\"]\n");
    let e = run_once(&fx.spec("f"), vec![]).await;
    assert!(
        matches!(
            e.outcome,
            Outcome::Failed {
                exit: Some(ExitState::Signal(9)),
                ..
            }
        ),
        "{:?}",
        e.outcome
    );
    assert_contains(&e.outcome.to_string(), "signal 9 (SIGKILL)");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_keeps_the_first_bytes() {
    let fx = Fixture::new("[tasks.f]\ncommand = [\"echo\", \"not json at all\"]\n");
    let e = run_once(&fx.spec("f"), vec![]).await;
    let Outcome::InvalidOutput { message, head } = &e.outcome else {
        panic!("{:?}", e.outcome)
    };
    assert_contains(message, "stdout is not one JSON value");
    assert_eq!(head, "not json at all\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_json_values_or_none_are_invalid() {
    let fx = Fixture::new(
        "[tasks.two]\ncommand = [\"sh\", \"-c\", \"echo 1; echo 2\"]\n\n[tasks.none]\ncommand = [\"true\"]\n",
    );
    let e = run_once(&fx.spec("two"), vec![]).await;
    assert!(
        matches!(e.outcome, Outcome::InvalidOutput { .. }),
        "{:?}",
        e.outcome
    );
    let e = run_once(&fx.spec("none"), vec![]).await;
    let Outcome::InvalidOutput { message, .. } = &e.outcome else {
        panic!("{:?}", e.outcome)
    };
    assert_contains(message, "wrote nothing to stdout");
}

#[tokio::test(flavor = "multi_thread")]
async fn spawn_failures_name_the_program_and_the_reason() {
    let fx = Fixture::new(
        "[tasks.missing]\ncommand = [\"no-such-program-fastworker\"]\n\n\
         [tasks.not_exec]\nscript = \"print_env.py\"\n",
    );
    // print_env.py has no #! line, so the manifest refuses it without an
    // interpreter; give it one and drop the execute bit to get EACCES.
    std::fs::write(
        fx.path("print_env.py"),
        "#!/usr/bin/env python3\nprint(1)\n",
    )
    .expect("write");
    std::fs::set_permissions(
        fx.path("print_env.py"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");

    let e = run_once(&fx.spec("missing"), vec![]).await;
    let Outcome::SpawnFailed {
        program, message, ..
    } = &e.outcome
    else {
        panic!("{:?}", e.outcome)
    };
    assert_eq!(program.to_str(), Some("no-such-program-fastworker"));
    assert_contains(message, "not found on PATH");

    let e = run_once(&fx.spec("not_exec"), vec![]).await;
    let Outcome::SpawnFailed {
        program, message, ..
    } = &e.outcome
    else {
        panic!("{:?}", e.outcome)
    };
    assert!(program.ends_with("print_env.py"));
    assert_contains(message, "permission denied");
}

#[test]
fn a_script_without_a_shebang_needs_an_interpreter() {
    let fx = Fixture::new("[tasks.s]\nscript = \"no_shebang\"\n");
    std::fs::write(fx.path("no_shebang"), "echo 1\n").expect("write");
    let err = fx
        .try_load()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_contains(&err, "tasks.toml:2:10: [tasks.s] key `script`:");
    assert_contains(
        &err,
        "no_shebang has no #! line: add one, or set `interpreter`",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_a_grandchild_that_ignores_sigterm() {
    let fx = Fixture::new(
        "[tasks.t]\nscript = \"grandchild.sh\"\ntimeout = \"300ms\"\ngrace_period = \"200ms\"\n\
         env = { PIDFILE = \"{dir}/grandchild.pid\" }\n",
    );
    let pidfile = fx.path("grandchild.pid");
    let e = run_once(&fx.spec("t"), vec![]).await;
    let grandchild = read_pid(&pidfile).await;
    let _cleanup = KillOnDrop(grandchild);
    assert_eq!(
        e.outcome,
        Outcome::Timeout {
            limit: Duration::from_millis(300)
        }
    );
    assert_eq!(e.outcome.to_string(), "timed out after 300ms");
    let task_pid = e.pid.expect("pid");
    assert!(
        wait_for(Duration::from_secs(5), || !process_alive(grandchild)
            && !process_alive(task_pid))
        .await,
        "no process may survive its task (grandchild {grandchild} alive: {})",
        process_alive(grandchild)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grandchild_left_behind_by_a_successful_task_is_killed() {
    let fx = Fixture::new(
        "[tasks.t]\nscript = \"grandchild.sh\"\n\
         env = { PIDFILE = \"{dir}/grandchild.pid\", EXIT_AT_ONCE = \"1\" }\n",
    );
    let pidfile = fx.path("grandchild.pid");
    let e = run_once(&fx.spec("t"), vec![]).await;
    let grandchild = read_pid(&pidfile).await;
    let _cleanup = KillOnDrop(grandchild);
    assert_eq!(
        e.outcome,
        Outcome::Success {
            result: json!("left a grandchild behind")
        }
    );
    assert!(
        wait_for(Duration::from_secs(5), || !process_alive(grandchild)).await,
        "the grandchild outlived its task"
    );
}

/// A task that writes its pid to `task.pid` and sleeps until stopped.
const SLEEPER: &str =
    "[tasks.s]\nscript = \"pidfile_sleep.sh\"\nenv = { PIDFILE = \"{dir}/task.pid\" }\n";

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_process_group() {
    let fx = Fixture::new(SLEEPER);
    let pidfile = fx.path("task.pid");
    let spec = fx.spec("s");
    let cancel = CancellationToken::new();
    let executor = fastworker::executor::Executor::new();
    let req = request("s", vec![]);
    let run = executor.run(&spec, &req, &cancel);
    let canceller = async {
        let pid = read_pid(&pidfile).await;
        cancel.cancel();
        pid
    };
    let (e, pid) = tokio::join!(run, canceller);
    let _cleanup = KillOnDrop(pid);
    assert_eq!(e.outcome, Outcome::Cancelled);
    assert!(wait_for(Duration::from_secs(5), || !process_alive(pid)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mb_stdout_flood_stops_at_the_cap_with_bounded_memory() {
    let fx = Fixture::new(
        "[tasks.flood]\ncommand = [\"head\", \"-c\", \"104857600\", \"/dev/zero\"]\ngrace_period = \"1s\"\n",
    );
    let spec = fx.spec("flood");
    assert_eq!(spec.max_output, 16 * 1024 * 1024, "the default cap");
    let before = memory("self", "VmHWM");
    let e = run_once(&spec, vec![]).await;
    let grown = memory("self", "VmHWM").saturating_sub(before);
    assert_eq!(
        e.outcome,
        Outcome::OutputTooLarge {
            limit: 16 * 1024 * 1024
        }
    );
    // The cap's 16 MiB plus read buffers; never the 100 MB the task wrote.
    assert!(
        grown < 48 * 1024 * 1024,
        "peak memory grew by {grown} bytes"
    );
    assert!(
        wait_for(Duration::from_secs(5), || !process_alive(
            e.pid.expect("pid")
        ))
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stderr_is_kept_as_a_bounded_tail() {
    let fx = Fixture::new(
        "[tasks.loud]\ncommand = [\"sh\", \"-c\", \"head -c 200000 /dev/zero | tr '\\\\0' e >&2; echo END >&2; echo 1\"]\n",
    );
    let e = run_once(&fx.spec("loud"), vec![]).await;
    assert_eq!(e.outcome, Outcome::Success { result: json!(1) });
    assert!(
        e.stderr
            .starts_with("[134468 earlier bytes of stderr not kept]\n"),
        "{}",
        &e.stderr[..80]
    );
    assert!(e.stderr.ends_with("eeeeEND\n"));
    assert!(e.stderr.len() < 64 * 1024 + 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_and_working_directory() {
    let fx = Fixture::new(
        "[tasks.inherit]\ncommand = [\"python3\", \"print_env.py\"]\nenv = { EXTRA = \"yes\" }\n\n\
         [tasks.clean]\ncommand = [\"python3\", \"print_env.py\"]\ninherit_env = false\nenv = { ONLY = \"this\" }\ncwd = \"sub\"\n",
    );
    std::fs::create_dir(fx.path("sub")).expect("mkdir");
    std::fs::copy(fx.path("print_env.py"), fx.path("sub/print_env.py")).expect("copy");
    let e = run_once(&fx.spec("inherit"), vec![]).await;
    let Outcome::Success { result } = &e.outcome else {
        panic!("{:?} {}", e.outcome, e.stderr)
    };
    let env = &result["env"];
    assert_eq!(env["EXTRA"], "yes");
    assert!(
        env.get("PATH").is_some(),
        "the parent environment is inherited"
    );
    assert_eq!(env["FASTWORKER_TASK_NAME"], "inherit");
    assert_eq!(env["FASTWORKER_ATTEMPT"], "1");
    assert_eq!(env["FASTWORKER_MODE"], "oneshot");
    let dir = fx.dir.path().canonicalize().expect("canonical");
    assert_eq!(result["cwd"], dir.to_str().expect("utf-8"));

    let e = run_once(&fx.spec("clean"), vec![]).await;
    let Outcome::Success { result } = &e.outcome else {
        panic!("{:?} {}", e.outcome, e.stderr)
    };
    let env = result["env"].as_object().expect("env");
    let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
    keys.sort_unstable();
    // Python may add LC_CTYPE when coercing the C locale; nothing else appears.
    keys.retain(|k| *k != "LC_CTYPE");
    assert_eq!(
        keys,
        [
            "FASTWORKER_ATTEMPT",
            "FASTWORKER_MODE",
            "FASTWORKER_TASK_ID",
            "FASTWORKER_TASK_NAME",
            "ONLY"
        ]
    );
    assert_eq!(result["cwd"], dir.join("sub").to_str().expect("utf-8"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_run_kills_its_process_group() {
    let fx = Fixture::new(SLEEPER);
    let pidfile = fx.path("task.pid");
    let spec = fx.spec("s");
    let executor = fastworker::executor::Executor::new();
    let req = request("s", vec![]);
    let never = CancellationToken::new();
    let pid = {
        let run = executor.run(&spec, &req, &never);
        tokio::select! {
            _ = run => panic!("the task should still be running"),
            pid = read_pid(&pidfile) => pid,
        }
    };
    let _cleanup = KillOnDrop(pid);
    assert!(wait_for(Duration::from_secs(5), || !process_alive(pid)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_while_waiting_to_retry_ends_the_task_cancelled() {
    let fx = Fixture::new(
        "[tasks.f]\ncommand = [\"sh\", \"-c\", \"exit 1\"]\nretries = 5\nretry_backoff = \"1h\"\n",
    );
    let spec = fx.spec("f");
    let executor = fastworker::executor::Executor::new();
    let cancel = CancellationToken::new();
    let attempts = fastworker::executor::retry::run_with_retries(
        &executor,
        &spec,
        request("f", vec![]),
        &cancel,
        |e, wait| {
            if e.attempt == 1 {
                assert!(wait.is_some(), "attempt 1 is retried");
                cancel.cancel();
            }
        },
    )
    .await;
    let outcomes: Vec<(u32, &str)> = attempts
        .iter()
        .map(|e| (e.attempt, e.outcome.status()))
        .collect();
    assert_eq!(outcomes, [(1, "failed"), (2, "cancelled")]);
}
