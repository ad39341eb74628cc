//! Editor support and starting out: `fastworker schema` describes what the
//! loader takes (tasks.toml.example and the starter validate, mistakes the
//! loader refuses do not), and `fastworker init` writes a starter that runs,
//! in the shapes of tasks.toml.example, and never over a file.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::helpers::{BIN, REPO, assert_contains, load_error};

fn fastworker(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("FASTWORKER_MANIFEST")
        .output()
        .expect("run fastworker")
}

fn schema() -> jsonschema::Validator {
    let out = fastworker(Path::new(REPO), &["schema"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let schema: Value = serde_json::from_slice(&out.stdout).expect("the schema is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

/// A TOML manifest as the JSON an editor's schema check sees (Taplo reads
/// a date as a string).
fn as_json(toml_text: &str) -> Value {
    fn convert(value: toml::Value) -> Value {
        match value {
            toml::Value::Datetime(d) => Value::String(d.to_string()),
            toml::Value::Array(items) => Value::Array(items.into_iter().map(convert).collect()),
            toml::Value::Table(t) => {
                Value::Object(t.into_iter().map(|(k, v)| (k, convert(v))).collect())
            }
            other => serde_json::to_value(other).expect("JSON"),
        }
    }
    convert(toml::from_str(toml_text).expect("TOML"))
}

fn problems(validator: &jsonschema::Validator, manifest: &str) -> Vec<String> {
    validator
        .iter_errors(&as_json(manifest))
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn the_example_manifest_and_the_starter_satisfy_the_schema() {
    let validator = schema();
    let example =
        std::fs::read_to_string(Path::new(REPO).join("tasks.toml.example")).expect("example");
    assert_eq!(problems(&validator, &example), Vec::<String>::new());
    let starter = fastworker_init_dir();
    let text = std::fs::read_to_string(starter.path().join("tasks.toml")).expect("starter");
    assert_eq!(problems(&validator, &text), Vec::<String>::new());
    // A schedule, a runner, limits, sizes as numbers and text.
    let rich = r#"
[defaults]
timeout = 30
max_output = "1MiB"

[runners.node]
interpreter = ["node"]
script = "runner.js"
mode = "pool"

[tasks.t]
command = ["sh", "-c", "cat"]
memory_limit = 268435456
cpu_time_limit = "10s"
env = { A = "1" }
schedule = { cron = "*/5 * * * *", timezone = "Europe/Paris", args = [1, "two", { three = 3 }], kwargs = { k = [true] }, catch_up = "once", overlap = "allow", until = 2027-01-01T00:00:00Z }
"#;
    assert_eq!(problems(&validator, rich), Vec::<String>::new());
}

#[test]
fn the_schema_refuses_what_the_loader_refuses() {
    let validator = schema();
    for (manifest, key) in [
        (
            "[tasks.t]\ncommand = [\"true\"]\ntimout = \"5s\"\n",
            "timout",
        ),
        (
            "[tasks.t]\ncommand = [\"true\"]\npriority = \"urgent\"\n",
            "priority",
        ),
        ("[tasks.t]\ncommand = [\"true\"]\nmode = \"warm\"\n", "mode"),
        (
            "[tasks.t]\ncommand = [\"true\"]\npool_size = 0\n",
            "pool_size",
        ),
        ("[tasks.t]\ncommand = [\"true\"]\nretries = -1\n", "retries"),
        (
            "[tasks.t]\ncommand = [\"true\"]\nschedule = { every = \"1m\", overlap = \"queue\" }\n",
            "overlap",
        ),
        ("[task.t]\ncommand = [\"true\"]\n", "task"),
    ] {
        let found = problems(&validator, manifest);
        assert!(!found.is_empty(), "the schema takes {manifest:?}");
        // The loader refuses it too, naming the key.
        assert_contains(&load_error(manifest), key);
    }
}

/// A temp dir with `fastworker init` run in it.
fn fastworker_init_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = fastworker(dir.path(), &["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn init_writes_a_starter_that_runs_and_never_overwrites() {
    let parent = tempfile::tempdir().expect("temp dir");
    let out = fastworker(parent.path(), &["init", "my project"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_contains(&stdout, "cd 'my project' && fastworker run add 5 3");
    assert_contains(&stdout, "cd 'my project' && fastworker control-plane");
    let dir = parent.path().join("my project");
    for file in ["tasks.toml", "tasks.py", "add.py", "tasks.schema.json"] {
        assert!(dir.join(file).is_file(), "{file} written");
    }

    let run = fastworker(&dir, &["run", "add", "5", "3"]);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "8",
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run = fastworker(&dir, &["run", "add_script", "2", "2"]);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "4",
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run = fastworker(&dir, &["run", "flaky"]);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        r#"{"succeeded_on_attempt":3}"#,
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let check = fastworker(&dir, &["check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Again: refused, every file named, nothing touched.
    std::fs::write(dir.join("tasks.py"), "# mine\n").expect("edit");
    let again = fastworker(parent.path(), &["init", "my project"]);
    assert_eq!(again.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_contains(&stderr, "tasks.toml exists");
    assert_contains(&stderr, "tasks.py exists");
    assert_eq!(
        std::fs::read_to_string(dir.join("tasks.py")).expect("read"),
        "# mine\n"
    );
}

/// How a task runs, as the starter and the example write it.
fn shapes(manifest: &str) -> BTreeSet<String> {
    let value: toml::Value = toml::from_str(manifest).expect("TOML");
    let tasks = value["tasks"].as_table().expect("tasks");
    tasks
        .values()
        .map(|t| {
            let way = ["command", "script", "function"]
                .into_iter()
                .find(|k| t.get(k).is_some())
                .unwrap_or("none");
            let mode = t
                .get("mode")
                .and_then(toml::Value::as_str)
                .unwrap_or("default");
            let retries = t.get("retries").is_some();
            format!("{way} mode={mode} retries={retries}")
        })
        .collect()
}

#[test]
fn the_starter_keeps_the_shapes_of_the_example() {
    let dir = fastworker_init_dir();
    let starter = std::fs::read_to_string(dir.path().join("tasks.toml")).expect("starter");
    let example =
        std::fs::read_to_string(Path::new(REPO).join("tasks.toml.example")).expect("example");
    let (starter_shapes, example_shapes) = (shapes(&starter), shapes(&example));
    for shape in [
        "function mode=pool retries=false",
        "script mode=oneshot retries=false",
        "command mode=default retries=false",
    ] {
        assert!(
            starter_shapes.contains(shape),
            "the starter lacks {shape}: {starter_shapes:?}"
        );
        assert!(
            example_shapes.contains(shape),
            "the example lacks {shape}: {example_shapes:?}"
        );
    }
    assert!(starter_shapes.iter().any(|s| s.ends_with("retries=true")));
    assert!(example_shapes.iter().any(|s| s.ends_with("retries=true")));
    // Every key the starter uses, the example uses too, and [defaults] alike.
    let keys = |text: &str| -> BTreeSet<String> {
        let value: toml::Value = toml::from_str(text).expect("TOML");
        value["tasks"]
            .as_table()
            .expect("tasks")
            .values()
            .chain(value.get("defaults"))
            .flat_map(|t| t.as_table().expect("table").keys().cloned())
            .collect()
    };
    let missing: Vec<String> = keys(&starter)
        .difference(&keys(&example))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "keys in the starter, not in the example: {missing:?}"
    );
    // The script is the example's, word for word.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("add.py")).expect("add.py"),
        std::fs::read_to_string(Path::new(REPO).join("examples/add_oneshot.py"))
            .expect("example script"),
    );
    // The schema file is what `fastworker schema` prints.
    let printed = fastworker(dir.path(), &["schema"]).stdout;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tasks.schema.json"))
            .expect("schema file")
            .trim(),
        String::from_utf8_lossy(&printed).trim()
    );
}

/// The TOML language server's own checker (Taplo, as in Even Better TOML)
/// reads the starter's `#:schema` line: the starter passes, a typo fails
/// with its line.
#[test]
fn taplo_checks_a_manifest_against_the_schema_line() {
    let Some(node_dir) = crate::helpers::browser_tools("the Taplo test") else {
        return;
    };
    let taplo = node_dir.join("node_modules/.bin/taplo");
    let dir = fastworker_init_dir();
    let check = || {
        std::process::Command::new(&taplo)
            .args(["check", "tasks.toml"])
            .current_dir(dir.path())
            .output()
            .expect("run taplo")
    };
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.path().join("tasks.toml");
    let mut text = std::fs::read_to_string(&path).expect("read");
    text.push_str("\n[tasks.typo]\ncommand = [\"true\"]\npriorty = \"high\"\n");
    let line = text
        .lines()
        .position(|l| l.starts_with("priorty"))
        .expect("the typo")
        + 1;
    std::fs::write(&path, text).expect("write");
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_contains(&stderr, "'priorty' was unexpected");
    assert_contains(&stderr, &format!("tasks.toml:{line}:"));
}
