//! Editing the manifest of a running control plane or subworker: `fastworker
//! reload`, SIGHUP and `--watch`; a bad edit changes nothing; added, removed
//! and changed tasks; warm pools replaced only when their definition
//! changed; and no task lost across many reloads.

use std::sync::Arc;
use std::time::Duration;

use fastworker::control_plane::reload::Load;
use fastworker::manifest::Manifest;
use fastworker::protocol::{Status, TaskRecord};
use serde_json::{Value, json};

use crate::helpers::{
    BIN, Fixture, Logged, TestControlPlane, assert_contains, spawn_control_plane_with,
    spawn_logged, wait_for_async, wire_task,
};

const BEFORE: &str = r#"
[tasks.stay]
command = ["sh", "-c", "cat > /dev/null; echo '\"stay\"'"]

[tasks.change]
command = ["sh", "-c", "cat > /dev/null; echo '\"old\"'"]

[tasks.gone]
command = ["sh", "-c", "cat > /dev/null; echo '\"gone\"'"]
"#;

const AFTER: &str = r#"
[tasks.stay]
command = ["sh", "-c", "cat > /dev/null; echo '\"stay\"'"]

[tasks.change]
command = ["sh", "-c", "cat > /dev/null; echo '\"new\"'"]

[tasks.added]
command = ["sh", "-c", "cat > /dev/null; echo '\"added\"'"]
"#;

/// `fastworker ARGS… --base-address BASE`: (exit code, stdout, stderr).
async fn cli(base: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .args(["--base-address", base])
        .output()
        .await
        .expect("run fastworker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(fx: &Fixture, manifest: &str) {
    // A new file renamed over the old one, as editors save.
    let tmp = fx.path("tasks.toml.new");
    std::fs::write(&tmp, manifest).expect("write manifest");
    std::fs::rename(&tmp, fx.manifest_path()).expect("replace manifest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_an_edit_and_refuses_a_bad_one_with_file_and_line() {
    let fx = Fixture::new(BEFORE);
    let (cp, base) = spawn_control_plane_with(&fx, 2, &[], &[]).await;

    let (code, _, err) = cli(&base, &["submit", "added"]).await;
    assert_ne!(code, 0);
    assert_contains(&err, "added");

    write(&fx, AFTER);
    let (code, out, err) = cli(&base, &["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_contains(
        &out,
        "1 added (added), 1 removed (gone), 1 changed (change); 0 warm pools replaced",
    );
    assert_eq!(cli(&base, &["submit", "added"]).await.1.trim(), "\"added\"");
    assert_eq!(cli(&base, &["submit", "change"]).await.1.trim(), "\"new\"");
    assert_eq!(cli(&base, &["submit", "stay"]).await.1.trim(), "\"stay\"");
    let (code, _, err) = cli(&base, &["submit", "gone"]).await;
    assert_ne!(code, 0);
    assert_contains(&err, "gone");
    assert!(
        wait_for_async(|| async { cp.said("manifest reloaded: 1 added (added)") }).await,
        "the log reports the reload:\n{}",
        cp.stderr()
    );

    // The JSON reply carries the report.
    let (code, out, _) = cli(&base, &["reload", "--json"]).await;
    assert_eq!(code, 0);
    let reply: Value = serde_json::from_str(&out).expect("JSON reply");
    assert_eq!(reply["reloaded"], json!(true));
    assert_eq!(reply["report"]["added"], json!([]));

    // Mistakes in three tasks: each is named with its line; nothing changes.
    let bad = format!(
        "{AFTER}\n[tasks.bad]\ncommand = [\"true\"]\ntimeout = \"soon\"\n\n[tasks.worse]\ncommand = [\"true\"]\nbogus = 1\n\n[tasks.worst]\ncommand = [\"true\"]\nretries = \"many\"\n"
    );
    write(&fx, &bad);
    let (code, out, err) = cli(&base, &["reload"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_contains(&err, "reload refused, the manifest stays as it was");
    assert_contains(&err, "tasks.toml:17:1: [tasks.worse] key `bogus`");
    assert_contains(&err, "tasks.toml:21:11: [tasks.worst] key `retries`");
    assert_eq!(cli(&base, &["submit", "added"]).await.1.trim(), "\"added\"");
    let (code, _, _) = cli(&base, &["submit", "bad"]).await;
    assert_ne!(code, 0, "a task of a refused manifest is not taken");
    assert!(
        wait_for_async(|| async { cp.said("tasks.toml:21:11: [tasks.worst] key `retries`") }).await,
        "the log names every problem:\n{}",
        cp.stderr()
    );
    // With those fixed, the remaining problems of meaning, all of them.
    write(
        &fx,
        &bad.replace("bogus = 1", "timeout = \"-1s\"")
            .replace("\"many\"", "2"),
    );
    let (code, _, err) = cli(&base, &["reload"]).await;
    assert_eq!(code, 1, "{err}");
    assert_contains(&err, "tasks.toml:13:");
    assert_contains(&err, "tasks.toml:17:");

    // A TOML syntax error, with its position.
    write(&fx, &format!("{AFTER}\nbroken = [\n"));
    let (code, _, err) = cli(&base, &["reload"]).await;
    assert_eq!(code, 1);
    assert_contains(&err, "tasks.toml:");
    assert_contains(&err, "unclosed array");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_instead_of_killing_and_watch_follows_the_file() {
    let fx = Fixture::new(BEFORE);
    let (cp, base) = spawn_control_plane_with(&fx, 2, &[], &["--watch"]).await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(cp.pid()).expect("pid"));

    // SIGHUP with the file unchanged: still running, nothing changed.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    assert!(
        wait_for_async(|| async { cp.said("manifest reloaded: 0 added") }).await,
        "{}",
        cp.stderr()
    );
    assert_eq!(cli(&base, &["submit", "stay"]).await.1.trim(), "\"stay\"");

    // --watch: saving the file is enough.
    write(&fx, AFTER);
    assert!(
        wait_for_async(|| async { cli(&base, &["submit", "added"]).await.1.trim() == "\"added\"" })
            .await,
        "--watch did not reload:\n{}",
        cp.stderr()
    );
    assert!(
        cp.said("manifest reloaded: 1 added (added)"),
        "{}",
        cp.stderr()
    );

    // A bad save is refused, and the old manifest stays.
    write(&fx, "[tasks.x]\nnothing = true\n");
    assert!(
        wait_for_async(|| async { cp.said("reload refused") }).await,
        "{}",
        cp.stderr()
    );
    assert_eq!(cli(&base, &["submit", "added"]).await.1.trim(), "\"added\"");

    // SIGHUP after the fix.
    write(&fx, BEFORE);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    assert!(
        wait_for_async(|| async { cli(&base, &["submit", "gone"]).await.1.trim() == "\"gone\"" })
            .await,
        "{}",
        cp.stderr()
    );
}

/// A control plane in this process that reloads `fx`'s manifest file.
async fn reloading_plane(fx: &Fixture, concurrency: usize) -> TestControlPlane {
    let path = fx.manifest_path();
    TestControlPlane::start(fx, move |config| {
        config.concurrency = concurrency;
        let path = path.clone();
        config.load = Some(Load(Arc::new(move || {
            Manifest::load(&path).map_err(|e| vec![e.to_string()])
        })));
    })
    .await
}

async fn reload(cp: &TestControlPlane) -> Value {
    let reply = cp.client.reload().await.expect("reload");
    assert!(reply.reloaded, "reload refused: {:?}", reply.errors);
    serde_json::to_value(reply.report.expect("a report")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_of_a_removed_type_run_with_the_definition_they_were_accepted_with() {
    let gate = r#"
[tasks.hold]
command = ["sh", "-c", "cat > /dev/null; while [ ! -e {dir}/open ]; do sleep 0.02; done; echo 0"]
"#;
    let fx = Fixture::new(&format!("{gate}{BEFORE}"));
    let cp = reloading_plane(&fx, 1).await;
    let hold = cp.ack("hold", vec![], None).await.task_id;
    cp.wait_status(&hold, Status::Running).await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(cp.ack("gone", vec![], None).await.task_id);
        queued.push(cp.ack("change", vec![], None).await.task_id);
    }

    write(&fx, &format!("{gate}{AFTER}"));
    let report = reload(&cp).await;
    assert_eq!(report["removed"], json!(["gone"]));
    assert_eq!(report["kept_for_accepted"], json!(["gone"]));

    // No new one is taken; the error says the type is not defined.
    let refused = cp
        .client
        .submit_ack(wire_task("gone", vec![]), None)
        .await
        .expect("an answer");
    assert!(refused.error.is_some(), "{refused:?}");
    assert_contains(refused.error.as_deref().unwrap_or_default(), "gone");

    std::fs::write(fx.path("open"), "").expect("open the gate");
    for id in &queued {
        cp.wait_status(id, Status::Success).await;
    }
    for (i, id) in queued.iter().enumerate() {
        let record: TaskRecord = cp.record(id).await;
        // A removed type keeps its old definition; a changed one runs its
        // new one (its attempts start after the reload).
        let want = if i % 2 == 0 { "gone" } else { "new" };
        assert_eq!(record.result, json!(want), "{}", record.name);
    }

    // Once none is left, the old definition is dropped.
    let report = reload(&cp).await;
    assert_eq!(report["kept_for_accepted"], json!([]));
    cp.stop().await;
}

const POOLS: &str = r#"
[tasks.same]
runner = "python"
function = "reloadmod:who"
mode = "pool"
pool_size = 1

[tasks.edited]
runner = "python"
function = "reloadmod:who"
mode = "pool"
pool_size = 1
env = { FLAVOR = "FLAVOR_VALUE" }
"#;

const MODULE: &str =
    "import os\n\ndef who():\n    return [os.getpid(), os.environ.get('FLAVOR')]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pools_whose_definition_changed_are_replaced() {
    let fx = Fixture::new(&POOLS.replace("FLAVOR_VALUE", "one"));
    std::fs::write(fx.path("reloadmod.py"), MODULE).expect("module");
    let cp = reloading_plane(&fx, 2).await;
    let run = |name: &'static str| {
        let cp = &cp;
        async move {
            let result = cp.submit(name, vec![], None).await;
            assert_eq!(result.status, Status::Success, "{result:?}");
            result.result
        }
    };
    let same = run("same").await;
    let edited = run("edited").await;
    assert_eq!(edited[1], json!("one"));

    write(&fx, &POOLS.replace("FLAVOR_VALUE", "two"));
    let report = reload(&cp).await;
    assert_eq!(report["changed"], json!(["edited"]));
    assert_eq!(report["pools_replaced"], json!(1));
    assert_eq!(
        run("same").await,
        same,
        "the unchanged pool keeps its process"
    );
    let now = run("edited").await;
    assert_ne!(now[0], edited[0], "the changed pool has a new process");
    assert_eq!(now[1], json!("two"));

    // The module's source is part of the definition.
    std::fs::write(fx.path("reloadmod.py"), format!("{MODULE}\n# edited\n")).expect("module");
    let report = reload(&cp).await;
    assert_eq!(report["changed"], json!(["edited", "same"]));
    assert_eq!(report["pools_replaced"], json!(2));
    assert_ne!(run("same").await[0], same[0]);

    // Reloading what is already running replaces nothing.
    let before = run("same").await;
    let report = reload(&cp).await;
    assert_eq!(report["pools_replaced"], json!(0));
    assert_eq!(run("same").await, before);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_across_twenty_reloads_while_a_thousand_tasks_run() {
    let variant = |i: usize| {
        let extra = if i % 2 == 0 {
            format!("\n[tasks.extra{i}]\ncommand = [\"cat\"]\n")
        } else {
            String::new()
        };
        format!(
            r#"
[tasks.square]
runner = "python"
function = "squaremod:square"
mode = "pool"
pool_size = 2
env = {{ ROUND = "{i}" }}
{extra}"#
        )
    };
    let fx = Fixture::new(&variant(0));
    std::fs::write(
        fx.path("squaremod.py"),
        "import time\n\ndef square(x):\n    time.sleep(0.005)\n    return x * x\n",
    )
    .expect("module");
    let cp = reloading_plane(&fx, 4).await;
    let mut ids = Vec::new();
    for x in 0..1000_i64 {
        let ack = cp.ack("square", vec![json!(x)], None).await;
        assert!(ack.error.is_none(), "{ack:?}");
        ids.push(ack.task_id);
    }
    let mut replaced = 0;
    for round in 1..=20 {
        write(&fx, &variant(round));
        let report = reload(&cp).await;
        replaced += report["pools_replaced"].as_u64().unwrap_or(0);
        // Spread the reloads over the run.
        wait_done(&cp, &ids[(round * 45).min(999)]).await;
    }
    assert!(replaced >= 10, "the pool was replaced {replaced} times");
    for (x, id) in ids.iter().enumerate() {
        let record = wait_done(&cp, id).await;
        let x = i64::try_from(x).expect("small");
        assert_eq!(record.result, json!(x * x), "task {id}: {record:?}");
        assert_eq!(
            record.attempts.len(),
            1,
            "task {id} ran once: {:?}",
            record.attempts
        );
    }
    cp.stop().await;
}

/// The record of a task once it has finished (20 s at most).
async fn wait_done(cp: &TestControlPlane, id: &str) -> TaskRecord {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let record = cp.record(id).await;
        if record.status.is_final() {
            return record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} still {:?}",
            record.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A subworker process on `base` from `fx`'s manifest, registered.
async fn subworker(fx: &Fixture, base: &str, id: &str) -> Logged {
    let argv: Vec<String> = [
        BIN,
        "subworker",
        "--worker-id",
        id,
        "--control-plane-address",
        base,
        "--manifest",
        &fx.manifest_path().display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let (process, ready) = spawn_logged(&argv, &["ready"], &["error"]).await;
    if let Err(line) = ready {
        panic!("subworker {id} did not start: {line}\n{}", process.stderr());
    }
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subworker_reloads_and_sends_its_tasks_again() {
    let plane = Fixture::new(BEFORE);
    let (_cp, base) = spawn_control_plane_with(&plane, 1, &[], &[]).await;
    // The subworker defines `change` differently (withheld), and not `added`.
    let worker_fx = Fixture::new(&BEFORE.replace("\\\"old\\\"", "\\\"mine\\\""));
    let sw = subworker(&worker_fx, &base, "w1").await;
    let client = fastworker::client::Client::new(&base, Duration::from_secs(10)).expect("client");
    let info = |client: &fastworker::client::Client| {
        let client = client.clone();
        async move {
            client
                .workers()
                .await
                .expect("workers")
                .workers
                .into_iter()
                .find(|w| w.worker_id == "w1")
        }
    };
    let first = info(&client).await.expect("registered");
    assert!(!first.tasks.contains(&"change".to_owned()), "{first:?}");
    assert!(
        first.warnings.iter().any(|w| w.contains("'change'")),
        "{first:?}"
    );

    // Its manifest now agrees, and defines a task only it has.
    write(
        &worker_fx,
        &format!(
            "{BEFORE}\n[tasks.only_here]\ncommand = [\"sh\", \"-c\", \"cat > /dev/null; echo '\\\"here\\\"'\"]\n"
        ),
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(sw.pid()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    assert!(
        wait_for_async(|| async {
            info(&client).await.is_some_and(|w| {
                w.tasks.contains(&"change".to_owned())
                    && w.tasks.contains(&"only_here".to_owned())
                    && w.warnings.is_empty()
            })
        })
        .await,
        "the subworker did not send its tasks again:\n{}",
        sw.stderr()
    );
    assert!(
        sw.said("manifest reloaded: 4 tasks: 1 added (only_here), 0 removed, 1 changed (change); registering again"),
        "{}",
        sw.stderr()
    );
    let (code, out, err) = cli(&base, &["submit", "only_here"]).await;
    assert_eq!((code, out.trim()), (0, "\"here\""), "{err}");

    // The control plane's own edit makes `change` differ again: withheld.
    write(&plane, &BEFORE.replace("\\\"old\\\"", "\\\"other\\\""));
    let (code, out, err) = cli(&base, &["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let now = info(&client).await.expect("registered");
    assert!(!now.tasks.contains(&"change".to_owned()), "{now:?}");
    assert!(
        now.warnings.iter().any(|w| w.contains("'change'")),
        "{now:?}"
    );
}
