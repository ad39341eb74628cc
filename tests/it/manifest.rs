//! The manifest: strict parsing, errors that name file, line, table and key,
//! defaults and precedence, and the example manifest.

use std::time::Duration;

use fastworker::manifest::{HowToRun, Manifest, Mode, Priority};

use crate::helpers::{Fixture, REPO, assert_contains, load_error};

#[test]
fn the_example_manifest_loads_with_the_promised_tasks() {
    let manifest = Manifest::load(&std::path::Path::new(REPO).join("tasks.toml.example"))
        .unwrap_or_else(|e| panic!("tasks.toml.example must load:\n{e}"));
    let add = manifest.task("add").expect("add");
    assert!(matches!(&add.how, HowToRun::Runner { runner, .. } if runner == "python"));
    assert_eq!(add.mode, Mode::Pool);

    let oneshot = manifest.task("add_oneshot").expect("add_oneshot");
    assert!(matches!(oneshot.how, HowToRun::Script { .. }));
    assert_eq!(oneshot.mode, Mode::Oneshot);

    let non_python = manifest
        .tasks
        .values()
        .filter(|t| matches!(&t.how, HowToRun::Command { argv } if !argv[0].starts_with("python")))
        .count();
    assert!(non_python >= 1, "a non-Python command task");
    for name in ["sleep", "fail"] {
        assert!(manifest.task(name).is_some(), "task {name}");
    }
    for task in manifest.tasks.values() {
        assert!(
            task.description.is_some(),
            "{} has a description",
            task.name
        );
        assert!(
            task.launch.program.is_ok(),
            "{}: {:?}",
            task.name,
            task.launch.program
        );
    }
}

#[test]
fn unknown_key_names_file_line_table_and_key() {
    let err = load_error("[tasks.a]\ncommand = [\"true\"]\ntimout = \"3s\"\n");
    assert_contains(&err, "tasks.toml:3:1:");
    assert_contains(&err, "[tasks.a]");
    assert_contains(&err, "key `timout`");
    assert_contains(&err, "unknown field `timout`");
    assert_contains(&err, "`timeout`");
}

#[test]
fn unknown_top_level_table_is_an_error() {
    let err = load_error("[task.a]\ncommand = [\"true\"]\n");
    assert_contains(&err, "tasks.toml:1:2:");
    assert_contains(&err, "unknown field `task`");
}

#[test]
fn syntax_error_has_a_line() {
    let err = load_error("[tasks.a]\ncommand = [\"true\"\n");
    assert_contains(&err, "tasks.toml:2:");
}

#[test]
fn a_task_needs_exactly_one_way_to_run() {
    let none = load_error("[tasks.a]\ndescription = \"x\"\n");
    assert_contains(
        &none,
        "tasks.toml:1:1: [tasks.a]: task 'a' has no way to run",
    );

    let two = load_error("[tasks.b]\ncommand = [\"true\"]\nscript = \"pidfile_sleep.sh\"\n");
    assert_contains(
        &two,
        "[tasks.b]: task 'b' has 2 ways to run (command, script)",
    );
}

#[test]
fn unknown_runner_lists_the_known_ones() {
    let err = load_error(
        "[runners.node]\ninterpreter = \"sh\"\n\n[tasks.a]\nrunner = \"ruby\"\nfunction = \"m:f\"\n",
    );
    assert_contains(
        &err,
        "tasks.toml:5:10: [tasks.a] key `runner`: unknown runner `ruby`; known: node, python",
    );
}

#[test]
fn missing_script_names_the_path_and_line() {
    let err = load_error("[tasks.a]\nscript = \"nope.py\"\ninterpreter = \"python3\"\n");
    assert_contains(
        &err,
        "tasks.toml:2:10: [tasks.a] key `script`: script file not found:",
    );
    assert_contains(&err, "nope.py");
}

#[test]
fn bad_duration_and_priority_are_located() {
    let err = load_error(
        "[tasks.a]\ncommand = [\"true\"]\ntimeout = \"3 parsecs\"\npriority = \"urgent\"\n",
    );
    // Serde stops at the first type error (priority); durations are checked
    // after parsing, so fix the priority to see the duration error.
    assert_contains(
        &err,
        "tasks.toml:4:12: [tasks.a] key `priority`: unknown variant `urgent`",
    );
    let err = load_error("[tasks.a]\ncommand = [\"true\"]\ntimeout = \"3 parsecs\"\n");
    assert_contains(
        &err,
        "tasks.toml:3:11: [tasks.a] key `timeout`: invalid duration \"3 parsecs\"",
    );
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let err = load_error(
        "[tasks.a]\ncommand = \"ls -l\"\n\n[tasks.b]\nscript = \"missing.sh\"\n\n[tasks.c]\ncommand = [\"true\"]\npool_size = 0\nmax_output = \"lots\"\n",
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert_contains(
        lines[0],
        "tasks.toml:2:11: [tasks.a] key `command`: `command` takes an argv list",
    );
    assert_contains(lines[1], "tasks.toml:5:10: [tasks.b] key `script`");
    assert_contains(
        lines[2],
        "tasks.toml:9:13: [tasks.c] key `pool_size`: `pool_size` must be at least 1",
    );
    assert_contains(
        lines[3],
        "tasks.toml:10:14: [tasks.c] key `max_output`: invalid size \"lots\"",
    );
}

#[test]
fn interpreter_and_function_go_with_their_way_to_run() {
    let err = load_error("[tasks.a]\ncommand = [\"true\"]\ninterpreter = \"python3\"\n");
    assert_contains(
        &err,
        "key `interpreter`: `interpreter` goes with `script` only",
    );
    let err = load_error("[tasks.a]\ncommand = [\"true\"]\nfunction = \"m:f\"\n");
    assert_contains(&err, "key `function`: `function` goes with `runner` only");
    let err = load_error("[tasks.a]\nrunner = \"python\"\nfunction = \"not a function\"\n");
    assert_contains(
        &err,
        "key `function`: `not a function` is not of the form \"module:function\"",
    );
    let err = load_error("[tasks.a]\nrunner = \"python\"\n");
    assert_contains(&err, "needs `function = \"module:function\"`");
}

#[test]
fn defaults_cannot_say_how_to_run() {
    let err = load_error("[defaults]\ncommand = [\"true\"]\n\n[tasks.a]\ncommand = [\"true\"]\n");
    assert_contains(
        &err,
        "tasks.toml:2:11: [defaults] key `command`: `command` belongs to a task",
    );
}

#[test]
fn options_take_task_then_runner_then_defaults_then_builtin() {
    let fx = Fixture::new(
        r#"
[defaults]
timeout = "30s"
priority = "low"
retries = 2
env = { SHARED = "d", ONLY_DEFAULT = "1" }
mode = "oneshot"
pool_size = 7

[runners.python]
mode = "pool"
pool_size = 3

[tasks.plain]
command = ["true"]

[tasks.own]
command = ["true"]
timeout = 5
priority = "critical"
retries = 0
env = { SHARED = "t" }
inherit_env = false
max_output = "1KiB"
grace_period = "250ms"

[tasks.py]
runner = "python"
function = "pytasks:add"
"#,
    );
    let m = fx.load();
    let plain = m.task("plain").expect("plain");
    assert_eq!(plain.timeout, Some(Duration::from_secs(30)));
    assert_eq!(plain.priority, Priority::Low);
    assert_eq!(plain.retries, 2);
    assert_eq!(plain.mode, Mode::Oneshot);
    assert_eq!(plain.max_output, 16 * 1024 * 1024);
    assert!(plain.inherit_env);
    assert_eq!(
        plain.cwd, m.dir,
        "the default cwd is the manifest's directory"
    );

    let own = m.task("own").expect("own");
    assert_eq!(own.timeout, Some(Duration::from_secs(5)));
    assert_eq!(own.priority, Priority::Critical);
    assert_eq!(own.retries, 0);
    assert_eq!(own.env.get("SHARED").map(String::as_str), Some("t"));
    assert_eq!(own.env.get("ONLY_DEFAULT").map(String::as_str), Some("1"));
    assert!(!own.inherit_env);
    assert_eq!(own.max_output, 1024);
    assert_eq!(own.grace_period, Duration::from_millis(250));

    // The runner's pool settings beat [defaults]; the task's own would beat both.
    let py = m.task("py").expect("py");
    assert_eq!(py.mode, Mode::Pool);
    assert_eq!(py.pool_size, 3);
}

#[test]
fn relative_paths_resolve_against_the_manifest_directory() {
    let fx = Fixture::new("[tasks.s]\nscript = \"pidfile_sleep.sh\"\ncwd = \".\"\n");
    std::fs::create_dir(fx.path("sub")).expect("mkdir");
    std::fs::rename(fx.manifest_path(), fx.path("sub/tasks.toml")).expect("move");
    std::fs::rename(fx.path("pidfile_sleep.sh"), fx.path("sub/pidfile_sleep.sh")).expect("move");
    // Loaded from elsewhere (the test's cwd is the crate root), paths still resolve.
    let m = Manifest::load(&fx.path("sub/tasks.toml")).unwrap_or_else(|e| panic!("{e}"));
    let s = m.task("s").expect("s");
    let dir = fx.path("sub").canonicalize().expect("canonical");
    assert_eq!(s.cwd, dir.join("."));
    assert!(
        matches!(&s.how, HowToRun::Script { path, .. } if *path == dir.join("pidfile_sleep.sh"))
    );
}

#[test]
fn a_program_missing_from_path_loads_and_fails_when_run() {
    let fx = Fixture::new("[tasks.a]\ncommand = [\"no-such-program-fastworker\"]\n");
    let m = fx.load();
    let err = m
        .task("a")
        .expect("a")
        .launch
        .program
        .clone()
        .expect_err("not found");
    assert_contains(
        &err,
        "program 'no-such-program-fastworker' not found on PATH",
    );
}

#[test]
fn task_names_are_restricted() {
    let err = load_error("[tasks.\"has space\"]\ncommand = [\"true\"]\n");
    assert_contains(&err, "task name 'has space' may only use");
}

#[test]
fn a_custom_runner_needs_an_interpreter() {
    let err = load_error("[runners.node]\nmode = \"pool\"\n");
    assert_contains(&err, "[runners.node]: a runner needs `interpreter`");
}

#[test]
fn defaults_are_checked_once_even_without_tasks() {
    let err = load_error("[defaults]\npool_size = 0\nmax_output = \"lots\"\n");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_contains(lines[0], "tasks.toml:2:13: [defaults] key `pool_size`");
    assert_contains(lines[1], "tasks.toml:3:14: [defaults] key `max_output`");
    let err = load_error(
        "[defaults]\ntimeout = \"soon\"\n\n[tasks.a]\ncommand = [\"true\"]\n\n[tasks.b]\ncommand = [\"true\"]\n",
    );
    assert_eq!(
        err.lines().count(),
        1,
        "reported once, not per task:\n{err}"
    );
    assert_contains(&err, "[defaults] key `timeout`: invalid duration \"soon\"");
}

#[test]
fn a_bad_way_to_run_does_not_hide_bad_options() {
    let err = load_error("[tasks.a]\nscript = \"missing.py\"\ntimeout = \"later\"\n");
    assert_contains(&err, "tasks.toml:2:10: [tasks.a] key `script`");
    assert_contains(&err, "tasks.toml:3:11: [tasks.a] key `timeout`");
}

#[test]
fn resource_limits_are_read_and_checked() {
    let fx = Fixture::new(
        r#"
[defaults]
max_open_files = 256

[tasks.a]
command = ["true"]
memory_limit = "256MiB"
cpu_time_limit = "30s"
max_processes = 64
"#,
    );
    let spec = fx.spec("a");
    assert_eq!(spec.limits.memory, Some(256 << 20));
    assert_eq!(
        spec.limits.cpu_time,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(spec.limits.open_files, Some(256));
    assert_eq!(spec.limits.processes, Some(64));
    let err = load_error(
        r#"
[tasks.a]
command = ["true"]
memory_limit = "lots"
cpu_time_limit = "500ms"
max_processes = 0
"#,
    );
    assert_contains(&err, "key `memory_limit`: invalid size \"lots\"");
    assert_contains(
        &err,
        "key `cpu_time_limit`: `cpu_time_limit` must be at least 1s",
    );
    assert_contains(
        &err,
        "key `max_processes`: `max_processes` must be at least 1",
    );
}

#[test]
fn a_schedule_says_what_is_wrong_with_it() {
    let cases = [
        (
            "schedule = { every = \"30s\", cron = \"* * * * *\" }",
            "give `cron` or `every`, not both",
        ),
        (
            "schedule = { count = 3 }",
            "a schedule needs `cron = \"*/5 * * * *\"` or `every = \"30s\"`",
        ),
        (
            "schedule = { cron = \"* * * *\" }",
            "has 4 fields; it needs 5",
        ),
        (
            "schedule = { cron = \"* * * * *\", timezone = \"Mars/Olympus\" }",
            "unknown time zone \"Mars/Olympus\"",
        ),
        ("schedule = { every = \"0s\" }", "`every` must be above 0"),
        (
            "schedule = { every = \"1m\", count = 0 }",
            "`count` must be at least 1",
        ),
        (
            "schedule = { every = \"1m\", catch_up = \"all\" }",
            "`catch_up` is \"skip\" or \"once\"",
        ),
        (
            "schedule = { every = \"1m\", until = \"soon\" }",
            "\"soon\" is not a date and time",
        ),
        (
            "schedule = { every = \"1m\", at = 3 }",
            "unknown field `at`",
        ),
    ];
    for (line, expected) in cases {
        let e = crate::helpers::load_error(&format!("[tasks.t]\ncommand = [\"true\"]\n{line}\n"));
        assert!(e.contains("tasks.toml:3:"), "{line}: {e}");
        assert!(e.contains(expected), "{line}: {e}");
    }
    let e = crate::helpers::load_error("[defaults]\nschedule = { every = \"1m\" }\n");
    assert!(e.contains("`schedule` belongs to a task"), "{e}");
    let ok = Fixture::new(
        "[tasks.t]\ncommand = [\"true\"]\nschedule = { every = \"90s\", until = 2027-01-01T00:00:00Z, args = [1, \"x\"], kwargs = { k = true }, priority = \"low\", catch_up = \"once\", overlap = \"allow\" }\n",
    )
    .load();
    let s = ok.tasks["t"].schedule.as_ref().expect("a schedule");
    assert_eq!(s.rule.to_string(), "every 1m 30s");
    assert_eq!(s.args, [serde_json::json!(1), serde_json::json!("x")]);
    assert_eq!(s.kwargs["k"], serde_json::json!(true));
    assert_eq!(
        s.until.map(|u| u.to_rfc3339()),
        Some("2027-01-01T00:00:00+00:00".to_owned())
    );
}
