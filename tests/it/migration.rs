//! A FastWorker user's first day: a task module written for the Python
//! FastWorker (decorated functions, a periodic one, a hook) runs unchanged
//! under `fastworker control-plane --task-modules`, with no manifest;
//! FastWorker 0.3.0's own client submits to it; the periodic task keeps its
//! count across a restart and never fires twice.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{BIN, Fixture, assert_contains, spawn_logged, spawn_on_free_ports, wait_for};
use crate::python_client::compat_python_or_skip;

const MODULE: &str = r#"
"""Tasks written for FastWorker 0.3.0."""
from fastworker import task


def record_start(t):
    with open("hooked.log", "a") as f:
        f.write(f"{t.name} {t.id}\n")


@task
def add(x, y):
    """Adds two numbers."""
    return x + y


@task("shout")
def loud(text):
    return text.upper()


@task(repeat_interval=1, repeat_count=4, before=record_start)
def heartbeat():
    return "alive"
"#;

const CLIENT: &str = r#"
import asyncio, sys, warnings
warnings.simplefilter("ignore")
from fastworker import Client
async def main():
    client = Client(discovery_address=sys.argv[1], timeout=20, retries=1)
    await client.start()
    added = await client.submit_task("add", args=(5, 3))
    shout = await client.submit_task("shout", args=("hi",))
    print(added.status.value, added.result)
    print(shout.status.value, shout.result)
    client.stop()
asyncio.run(main())
"#;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fastworker_task_module_runs_unchanged() {
    let Some(python) = compat_python_or_skip().await else {
        return;
    };
    let fx = Fixture::new("");
    std::fs::remove_file(fx.manifest_path()).expect("no manifest at all");
    std::fs::write(fx.path("mytasks.py"), MODULE).expect("module");
    let dir = fx.path("");
    let argv = |base: &str, discovery: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["env", "-C", &dir.display().to_string(), BIN]
            .map(str::to_owned)
            .to_vec();
        v.extend(
            [
                "control-plane",
                "--base-address",
                base,
                "--discovery-address",
                discovery,
                "--no-gui",
                "--task-modules",
                "mytasks",
            ]
            .map(str::to_owned),
        );
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let discovery_of = |port: u16| format!("tcp://127.0.0.1:{}", port + 6);
    let (cp, port, ready) = spawn_on_free_ports(
        |base, port| argv(base, &discovery_of(port), &[]),
        &["ready"],
        &["cannot start", "error"],
    )
    .await;
    let (base, discovery) = (format!("tcp://127.0.0.1:{port}"), discovery_of(port));
    assert_contains(&ready, "3 tasks from task modules mytasks");

    // FastWorker's own client, unchanged.
    let out = tokio::process::Command::new(&python)
        .args(["-c", CLIENT, &discovery])
        .kill_on_drop(true)
        .output()
        .await
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["success 8", "success HI"]
    );

    // The periodic task fires every second; its hook records each run.
    let hooked = fx.path("hooked.log");
    assert!(
        wait_for(Duration::from_secs(20), || lines(&hooked).len() >= 2).await,
        "two fires: {:?}\n{}",
        lines(&hooked),
        cp.stderr()
    );
    // A restart (SIGTERM, then the same command): the count goes on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cp.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let mut cp = cp;
    let _ = tokio::time::timeout(Duration::from_secs(20), cp.child.wait()).await;
    let before = lines(&hooked).len();
    let (cp, ready) = spawn_logged(
        &argv(&base, &discovery, &[]),
        &["ready"],
        &["cannot start", "error"],
    )
    .await;
    ready.expect("ready again");
    assert!(
        wait_for(Duration::from_secs(20), || lines(&hooked).len() >= 4).await,
        "four fires in all: {:?}\n{}",
        lines(&hooked),
        cp.stderr()
    );
    // repeat_count=4 holds across the restart: no fifth fire.
    let schedules = tokio::process::Command::new(BIN)
        .args(["schedules", "--json", "--base-address", &base])
        .output()
        .await
        .expect("schedules");
    let list: Value = serde_json::from_slice(&schedules.stdout).expect("json");
    let heartbeat = &list[0];
    assert_eq!(heartbeat["name"], "heartbeat", "{list}");
    assert_eq!(heartbeat["fires"], 4, "{list}");
    assert_eq!(heartbeat["next"], Value::Null, "over after 4: {list}");
    let ids: Vec<String> = lines(&hooked);
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 4, "{ids:?} (had {before} before the restart)");
    assert_eq!(unique.len(), 4, "no fire twice: {ids:?}");
    assert!(
        ids.iter().all(|l| l.starts_with("heartbeat heartbeat@")),
        "{ids:?}"
    );

    // `list` says where each task comes from.
    let list = tokio::process::Command::new(BIN)
        .args(["list", "--task-modules", "mytasks"])
        .current_dir(&dir)
        .output()
        .await
        .expect("list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert_contains(&text, "mytasks.py:");
    assert_contains(&text, "(@task)");
    assert_contains(&text, "Adds two numbers.");
    drop(cp);
}
