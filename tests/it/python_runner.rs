//! The Python runner in both modes: results, exceptions with tracebacks,
//! stdout noise that cannot corrupt the protocol, values JSON cannot hold.

use std::path::PathBuf;

use fastworker::executor::{ExitState, Outcome, TaskError};
use fastworker::manifest::Manifest;
use serde_json::{Value, json};

use crate::helpers::{Fixture, assert_contains, run_once};

/// A manifest with every pytasks function as a task in `mode`.
fn manifest(mode: &str, extra_runner: &str) -> String {
    let mut m = format!("[runners.python]\n{extra_runner}\n\n");
    for f in [
        "add",
        "boom",
        "noisy",
        "not_serializable",
        "not_a_number",
        "read_stdin",
        "kwargs_echo",
        "async_add",
        "exit_in_task",
    ] {
        m.push_str(&format!(
            "[tasks.{f}]\nrunner = \"python\"\nfunction = \"pytasks:{f}\"\nmode = \"{mode}\"\n\n"
        ));
    }
    m.push_str(&format!(
        "[tasks.missing_module]\nrunner = \"python\"\nfunction = \"no_such_module:f\"\nmode = \"{mode}\"\n\n\
         [tasks.missing_function]\nrunner = \"python\"\nfunction = \"pytasks:nope\"\nmode = \"{mode}\"\n"
    ));
    m
}

async fn outcome(m: &Manifest, task: &str, args: Vec<Value>) -> (Outcome, String) {
    let e = run_once(m.task(task).expect("task"), args).await;
    (e.outcome, e.stderr)
}

fn task_error(outcome: &Outcome, mode: &str) -> TaskError {
    match outcome {
        Outcome::Failed {
            exit,
            error: Some(error),
            process_lost: false,
        } => {
            // One-shot: the runner exits 1 after writing the error; pool: no exit.
            let expected_exit = (mode == "oneshot").then_some(ExitState::Code(1));
            assert_eq!(*exit, expected_exit);
            error.clone()
        }
        other => panic!("expected a reported error, got {other:?}"),
    }
}

async fn check_runner(mode: &str, extra_runner: &str) {
    let fx = Fixture::new(&manifest(mode, extra_runner));
    // Loaded once: each load asks a pyenv shim for sys.executable.
    let fx = fx.load();

    let (o, _) = outcome(&fx, "add", vec![json!(5), json!(3)]).await;
    assert_eq!(o, Outcome::Success { result: json!(8) }, "{mode}");

    let (o, _) = outcome(&fx, "async_add", vec![json!(2), json!(2)]).await;
    assert_eq!(o, Outcome::Success { result: json!(4) }, "{mode}");

    let e = run_once(fx.task("kwargs_echo").expect("task"), vec![json!(1)]).await;
    assert_eq!(
        e.outcome,
        Outcome::Success {
            result: json!({"args": [1], "kwargs": {}})
        }
    );

    let (o, _) = outcome(&fx, "boom", vec![json!("kaput")]).await;
    let err = task_error(&o, mode);
    assert_eq!(
        (err.kind.as_str(), err.message.as_str()),
        ("ValueError", "kaput")
    );
    let tb = err.traceback.unwrap_or_default();
    assert_contains(&tb, "pytasks.py");
    assert_contains(&tb, "raise ValueError(message)");

    // Printing (even straight to fd 1) lands in stderr, never in the result.
    let (o, stderr) = outcome(&fx, "noisy", vec![json!({"keep": [1, 2]})]).await;
    assert_eq!(
        o,
        Outcome::Success {
            result: json!({"keep": [1, 2]})
        },
        "{mode}: {stderr}"
    );
    assert_contains(&stderr, "noise on stdout from print()");
    assert_contains(&stderr, "noise written straight to fd 1");
    assert_contains(&stderr, "noise on stderr");

    // Task code reading stdin cannot steal the protocol's input.
    let (o, _) = outcome(&fx, "read_stdin", vec![]).await;
    assert_eq!(o, Outcome::Success { result: json!("") }, "{mode}");

    for task in ["not_serializable", "not_a_number"] {
        let (o, _) = outcome(&fx, task, vec![]).await;
        let err = task_error(&o, mode);
        assert_eq!(err.kind, "ResultNotSerializable", "{mode} {task}");
        assert_contains(&err.message, "not JSON-serializable");
    }

    // A call that fails before the task's code runs shows no runner frames.
    let (o, _) = outcome(&fx, "add", vec![json!(1), json!(2), json!(3)]).await;
    let tb = task_error(&o, mode).traceback.unwrap_or_default();
    assert_contains(
        &tb,
        "TypeError: add() takes 2 positional arguments but 3 were given",
    );
    assert!(
        !tb.contains("fastworker_runner") && !tb.contains("<string>"),
        "{mode}:\n{tb}"
    );

    let (o, _) = outcome(&fx, "exit_in_task", vec![]).await;
    assert_eq!(task_error(&o, mode).kind, "SystemExit");

    let (o, _) = outcome(&fx, "missing_module", vec![]).await;
    let err = task_error(&o, mode);
    assert_eq!(err.kind, "TaskLoadError");
    assert_contains(&err.message, "cannot import module 'no_such_module'");

    let (o, _) = outcome(&fx, "missing_function", vec![]).await;
    assert_contains(
        &task_error(&o, mode).message,
        "module 'pytasks' has no attribute 'nope'",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_runner_in_oneshot_mode() {
    check_runner("oneshot", "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_runner_in_pool_mode() {
    check_runner("pool", "").await;
}

/// The oldest Python the runner supports, where this machine has it.
fn python39() -> Option<PathBuf> {
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))?;
    let versions = std::fs::read_dir(pyenv.join("versions")).ok()?;
    versions
        .filter_map(Result::ok)
        .filter(|v| v.file_name().to_string_lossy().starts_with("3.9."))
        .map(|v| v.path().join("bin/python3.9"))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread")]
async fn python_runner_on_python_3_9() {
    let Some(python) = python39() else {
        eprintln!("skipped: no Python 3.9 under pyenv on this machine");
        return;
    };
    let interpreter = format!("interpreter = \"{}\"", python.display());
    check_runner("pool", &interpreter).await;
    check_runner("oneshot", &interpreter).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runner_file_is_the_embedded_runner() {
    // The binary carries runners/python/fastworker_runner.py: the file in the
    // repository can be run directly (here, in one-shot mode) and agrees.
    let fx = Fixture::new("");
    let runner = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/runners/python/fastworker_runner.py"
    );
    assert_eq!(
        std::fs::read_to_string(runner).expect("runner"),
        fastworker::runners::PYTHON_RUNNER
    );
    std::fs::write(
        fx.manifest_path(),
        format!(
            "[runners.py]\ninterpreter = \"python3\"\nscript = \"{runner}\"\n\n\
             [tasks.add]\nrunner = \"py\"\nfunction = \"pytasks:add\"\nmode = \"oneshot\"\n"
        ),
    )
    .expect("manifest");
    let (o, stderr) = outcome(&fx.load(), "add", vec![json!(1), json!(2)]).await;
    assert_eq!(o, Outcome::Success { result: json!(3) }, "{stderr}");
}

/// The runner's own tests (tests/python/test_runner.py: FastWorker's
/// `@task` decorator in every form through the stand-in module, hooks,
/// discovery and check modes), with python3 and, where there is one, 3.9.
#[tokio::test(flavor = "multi_thread")]
async fn the_runners_python_tests_pass() {
    let mut pythons = vec![PathBuf::from("python3")];
    pythons.extend(python39());
    for python in pythons {
        let out = tokio::process::Command::new(&python)
            .args([
                "-m",
                "unittest",
                "discover",
                "-s",
                "tests/python",
                "-p",
                "test_*.py",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .kill_on_drop(true)
            .output()
            .await
            .expect("python runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}:\n{err}", python.display());
        assert_contains(&err, "OK");
    }
}
