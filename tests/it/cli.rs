//! The real binary, used as a user would: `run`, `list`, `check`, exit codes,
//! Ctrl-C.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    BIN, Fixture, KillOnDrop, REPO, assert_contains, process_alive, wait_for_blocking,
};

fn example() -> String {
    Path::new(REPO)
        .join("tasks.toml.example")
        .display()
        .to_string()
}

fn fastworker(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FASTWORKER_MANIFEST")
        .env_remove("RUST_LOG")
        .output()
        .expect("run fastworker")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_add_prints_8() {
    let m = example();
    let o = fastworker(&["run", "--manifest", &m, "add", "5", "3"]);
    assert_eq!(
        (stdout(&o).as_str(), o.status.code()),
        ("8\n", Some(0)),
        "{}",
        stderr(&o)
    );
    let o = fastworker(&["run", "--manifest", &m, "add_oneshot", "5", "3"]);
    assert_eq!(
        (stdout(&o).as_str(), o.status.code()),
        ("8\n", Some(0)),
        "{}",
        stderr(&o)
    );
}

#[test]
fn arguments_are_json_where_valid_and_kwargs_are_repeatable() {
    let o = fastworker(&[
        "--manifest",
        &example(),
        "run",
        "echo",
        "5",
        "-2",
        "true",
        r#"{"a":1}"#,
        "text",
        "--kwarg",
        "n=1.5",
        "--kwarg",
        "s=hello",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let echoed: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(
        echoed["args"],
        serde_json::json!([5, -2, true, {"a": 1}, "text"])
    );
    assert_eq!(
        echoed["kwargs"],
        serde_json::json!({"n": 1.5, "s": "hello"})
    );
    assert_eq!(echoed["attempt"], 1);
}

#[test]
fn json_prints_the_whole_record() {
    let o = fastworker(&["run", "--manifest", &example(), "--json", "add", "5", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(r["status"], "success");
    assert_eq!(r["result"], 8);
    assert_eq!(r["error"], Value::Null);
    assert_eq!(r["attempt"], 1);
    assert_eq!(r["name"], "add");
    for key in [
        "task_id",
        "started_at",
        "finished_at",
        "duration_ms",
        "stderr",
    ] {
        assert!(r.get(key).is_some(), "{key} in {r}");
    }
    assert_eq!(r["attempts"].as_array().map(Vec::len), Some(1));
}

#[test]
fn retries_show_every_attempt() {
    let o = fastworker(&["run", "--manifest", &example(), "--json", "flaky"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(r["result"], serde_json::json!({"succeeded_on_attempt": 3}));
    let attempts = r["attempts"].as_array().expect("attempts");
    let statuses: Vec<&str> = attempts
        .iter()
        .filter_map(|a| a["status"].as_str())
        .collect();
    assert_eq!(statuses, ["failed", "failed", "success"]);
    assert_contains(
        &stderr(&o),
        "attempt 1 failed: NotYet: attempt 1 < 3 (exit code 1); retrying in",
    );

    // Exhausted retries end with the last error.
    let o = fastworker(&[
        "run",
        "--manifest",
        &example(),
        "flaky",
        "--kwarg",
        "succeed_on=9",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_contains(
        &stderr(&o),
        "error: task 'flaky' failed: NotYet: attempt 4 < 9 (exit code 1)",
    );
}

#[test]
fn a_failing_task_exits_1_with_its_error_and_traceback() {
    let o = fastworker(&["run", "--manifest", &example(), "fail"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert_contains(
        &err,
        "error: task 'fail' failed: ValueError: this task fails on purpose",
    );
    assert_contains(&err, "Traceback (most recent call last)");

    let o = fastworker(&["run", "--manifest", &example(), "--json", "fail"]);
    assert_eq!(o.status.code(), Some(1));
    let r: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(r["status"], "failed");
    assert_eq!(r["task_error"]["type"], "ValueError");
    assert_eq!(r["error"], "failed: ValueError: this task fails on purpose");
}

#[test]
fn unknown_task_names_the_known_ones() {
    let o = fastworker(&["run", "--manifest", &example(), "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert_contains(
        &stderr(&o),
        "error: unknown task 'nope'; known: add, add_oneshot, echo,",
    );
}

#[test]
fn list_shows_name_how_mode_and_description() {
    let o = fastworker(&["list", "--manifest", &example()]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(out.starts_with("NAME"), "{out}");
    let add = out
        .lines()
        .find(|l| l.starts_with("add "))
        .expect("add row");
    assert_contains(add, "python examples.tasks:add");
    assert_contains(add, "pool");
    assert_contains(add, "Add two numbers");

    let o = fastworker(&["list", "--json", "--manifest", &example()]);
    let tasks: Vec<Value> = serde_json::from_str(&stdout(&o)).expect("json");
    let add = tasks.iter().find(|t| t["name"] == "add").expect("add");
    assert_eq!(add["runs"]["kind"], "runner");
    assert_eq!(add["runs"]["function"], "examples.tasks:add");
    assert_eq!(add["mode"], "pool");
    assert_eq!(add["pool_size"], 2);
}

#[test]
fn check_exits_0_or_1() {
    let o = fastworker(&["check", "--manifest", &example()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_contains(&stdout(&o), "ok, 9 tasks");

    let fx = Fixture::new("[tasks.a]\ncommand = [\"true\"]\nretries = \"many\"\n");
    let o = fastworker(&[
        "check",
        "--manifest",
        fx.manifest_path().to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_contains(
        &stderr(&o),
        "tasks.toml:3:11: [tasks.a] key `retries`: invalid type: string \"many\"",
    );
}

#[test]
fn the_manifest_is_found_by_flag_then_env_then_cwd() {
    let fx = Fixture::new("[tasks.here]\ncommand = [\"echo\", \"\\\"cwd\\\"\"]\n");
    let in_cwd = Command::new(BIN)
        .args(["run", "here"])
        .current_dir(fx.dir.path())
        .env_remove("FASTWORKER_MANIFEST")
        .output()
        .expect("run");
    assert_eq!(stdout(&in_cwd), "\"cwd\"\n", "{}", stderr(&in_cwd));

    let by_env = Command::new(BIN)
        .args(["run", "add", "1", "1"])
        .current_dir(fx.dir.path())
        .env("FASTWORKER_MANIFEST", example())
        .output()
        .expect("run");
    assert_eq!(stdout(&by_env), "2\n", "{}", stderr(&by_env));

    let none = Command::new(BIN)
        .args(["list"])
        .current_dir(std::env::temp_dir())
        .env_remove("FASTWORKER_MANIFEST")
        .output()
        .expect("run");
    assert_eq!(none.status.code(), Some(2));
    assert_contains(
        &stderr(&none),
        "tasks.toml is not in the current directory; pass --manifest PATH or set FASTWORKER_MANIFEST",
    );
}

#[test]
fn ctrl_c_cancels_the_task_and_kills_its_process() {
    let fx = Fixture::new(
        "[tasks.s]\nscript = \"pidfile_sleep.sh\"\ngrace_period = \"200ms\"\n\
         env = { PIDFILE = \"{dir}/task.pid\" }\n",
    );
    let pidfile = fx.path("task.pid");
    let mut cli = Command::new(BIN)
        .args([
            "run",
            "--manifest",
            fx.manifest_path().to_str().expect("utf-8"),
            "s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let _cli_guard = KillOnDrop(cli.id());
    assert!(
        wait_for_blocking(Duration::from_secs(10), || pidfile.exists()),
        "task never started"
    );
    let task_pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    let _task_guard = KillOnDrop(task_pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = cli.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(wait_for_blocking(
        Duration::from_secs(5),
        || !process_alive(task_pid)
    ));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut cli.stderr.take().expect("stderr"), &mut err).expect("read");
    assert_contains(&err, "error: task 's' cancelled");
}

#[test]
fn timeout_accepts_seconds_or_humantime() {
    for timeout in ["0.3", "300ms"] {
        let o = fastworker(&[
            "run",
            "--manifest",
            &example(),
            "--timeout",
            timeout,
            "sleep",
            "30",
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_contains(&stderr(&o), "error: task 'sleep' timed out after 300ms");
    }
}

/// A control plane on `fx` (ipc, no journal, any GUI port) with `env`:
/// its ready line; the process is killed.
fn ready_line(fx: &Fixture, env: &[(&str, &str)]) -> String {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args([
            "control-plane",
            "--no-journal",
            "--gui-port",
            "0",
            "--manifest",
        ])
        .arg(fx.manifest_path())
        .arg("--base-address")
        .arg(format!("ipc://{}", fx.path("cp").display()))
        .arg("--discovery-address")
        .arg(format!("ipc://{}", fx.path("disc").display()))
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let _kill = KillOnDrop(child.id());
    let lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let ready = lines
        .map_while(Result::ok)
        .find(|l| l.contains("ready") || l.contains("error"))
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    ready
}

#[test]
fn check_imports_every_python_function() {
    let fx = Fixture::new(
        "[tasks.ok]\nrunner = \"python\"\nfunction = \"pytasks:add\"\n\n[tasks.gone]\nrunner = \"python\"\nfunction = \"nosuchmod:add\"\n\n[tasks.typo]\nrunner = \"python\"\nfunction = \"pytasks:ad\"\n",
    );
    let manifest = fx.manifest_path().display().to_string();
    let o = fastworker(&["check", "--manifest", &manifest]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert_contains(
        &err,
        &format!(
            "{manifest}:5: [tasks.gone] key `function`: cannot import module 'nosuchmod' for nosuchmod:add: No module named 'nosuchmod'"
        ),
    );
    assert_contains(
        &err,
        &format!(
            "{manifest}:9: [tasks.typo] key `function`: module 'pytasks' has no attribute 'ad'"
        ),
    );
    assert!(!err.contains("[tasks.ok]"), "{err}");
}

#[test]
fn fastworkers_knobs_work_as_its_users_type_them() {
    // Log levels by FastWorker's names, in any case; a typo is an error.
    for level in ["WARNING", "critical", "Info", "DEBUG", "error"] {
        let o = fastworker(&["--log-level", level, "list", "--manifest", &example()]);
        assert_eq!(o.status.code(), Some(0), "{level}: {}", stderr(&o));
    }
    let o = fastworker(&["--log-level", "WARN1NG", "list", "--manifest", &example()]);
    assert_eq!(o.status.code(), Some(2));
    assert_contains(&stderr(&o), "--log-level \"WARN1NG\": not a log level");

    // Booleans from the environment: 1/0, yes/no, on/off, any case.
    let fx = Fixture::new("[tasks.t]\ncommand = [\"true\"]\n");
    for (value, gui) in [
        ("1", false),
        ("YES", false),
        ("on", false),
        ("0", true),
        ("No", true),
    ] {
        let ready = ready_line(&fx, &[("FASTWORKER_NO_GUI", value)]);
        assert_eq!(ready.contains("GUI on http://"), gui, "{value}: {ready}");
    }
    let o = Command::new(BIN)
        .args(["control-plane", "--manifest", "/nonexistent"])
        .env("FASTWORKER_NO_GUI", "maybe")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert_contains(&stderr(&o), "invalid value 'maybe' for '--no-gui'");

    // Schedules: the manifest's and a module's, with their sources.
    let fx = Fixture::new(
        "[tasks.tick]\ncommand = [\"true\"]\nschedule = { cron = \"0 9 * * mon-fri\", timezone = \"Europe/Paris\", count = 10 }\n",
    );
    let o = fastworker(&[
        "list",
        "--list-periodic",
        "--manifest",
        fx.manifest_path().to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_contains(&out, "cron 0 9 * * mon-fri (Europe/Paris)");
    assert_contains(&out, "10 fires");
}
