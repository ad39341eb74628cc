//! FastWorker 0.3.0's Python `Client`, unchanged, against our control plane.
//!
//! Needs Python >= 3.12 (the package's floor) with `fastworker==0.3.0`: the
//! test makes a venv in `target/compat-venv` when there is none (`.ci/run`
//! makes it first). Without Python 3.12+ the test is skipped, unless
//! `FASTWORKER_REQUIRE_PY_COMPAT` is set (CI sets it), when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::helpers::{Fixture, REPO, TestControlPlane, assert_contains};

const MANIFEST: &str = r#"
[tasks.add]
runner = "python"
function = "pytasks:add"

[tasks.boom]
runner = "python"
function = "pytasks:boom"

[tasks.sleep]
runner = "python"
function = "pytasks:sleep"
grace_period = "200ms"
"#;

/// A Python >= 3.12 that runs: among pyenv's versions, or on PATH. (pyenv
/// puts shims such as `python3.13` on PATH that fail unless that version is
/// enabled, so each candidate is tried.)
fn python312() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    if let Some(Ok(versions)) = root.map(|r| std::fs::read_dir(r.join("versions"))) {
        let mut found: Vec<PathBuf> = versions.filter_map(Result::ok).map(|e| e.path()).collect();
        found.sort();
        for v in found.into_iter().rev() {
            let minor = v
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("3."))
                .and_then(|n| n.split('.').next())
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(minor) = minor.filter(|m| *m >= 12) {
                candidates.push(v.join("bin").join(format!("python3.{minor}")));
            }
        }
    }
    candidates.extend(
        ["python3.13", "python3.12"]
            .iter()
            .filter_map(|n| which::which(n).ok()),
    );
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import sys; sys.exit(sys.version_info < (3, 12))"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The venv's python, making the venv if needed.
/// The venv's python; `None` (the caller skips) when there is no Python
/// 3.12+, unless `FASTWORKER_REQUIRE_PY_COMPAT` is set: then it panics.
pub async fn compat_python_or_skip() -> Option<PathBuf> {
    match tokio::task::spawn_blocking(compat_python)
        .await
        .expect("join")
    {
        Ok(python) => Some(python),
        Err(why) if std::env::var_os("FASTWORKER_REQUIRE_PY_COMPAT").is_none() => {
            eprintln!("skipped: {why}");
            None
        }
        Err(why) => panic!("FastWorker's Python client (and pynng) is required here: {why}"),
    }
}

fn compat_python() -> Result<PathBuf, String> {
    let venv = Path::new(REPO).join("target/compat-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import fastworker, pynng"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.is_file() && ready(&python) {
        return Ok(python);
    }
    let base = python312().ok_or("no Python >= 3.12 on PATH or under pyenv")?;
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    run(Command::new(&base).arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", "fastworker==0.3.0"]))?;
    Ok(python)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fastworker_python_client_works_unchanged() {
    let Some(python) = compat_python_or_skip().await else {
        return;
    };
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| c.concurrency = 4).await;
    let script = Path::new(REPO).join("tests/python/fastworker_client_compat.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&cp.discovery)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the compat script finishes")
        .expect("run python");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_contains(&stdout, "ok");
    cp.stop().await;
}

/// FastWorker's client in PICKLE mode: its pickle is never unpickled; it
/// gets a failed result that says to use JSON, and nothing runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_pickling_client_is_told_to_use_json() {
    let Some(python) = compat_python_or_skip().await else {
        return;
    };
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let script = r#"
import asyncio, sys, warnings
warnings.simplefilter("ignore")
from fastworker import Client
async def main():
    client = Client(discovery_address=sys.argv[1], timeout=10, retries=1)
    await client.start()
    result = await client.submit_task("add", args=(1, 2))
    print(result.status.value)
    print(result.task_id)
    print(result.error)
    client.stop()
asyncio.run(main())
"#;
    let run = tokio::process::Command::new(&python)
        .args(["-c", script, &cp.discovery])
        .env("FASTWORKER_SERIALIZATION_FORMAT", "PICKLE")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the script finishes")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"failure"), "{stdout}");
    assert_ne!(
        lines.get(1),
        Some(&"unknown"),
        "the task id is read from the pickle: {stdout}"
    );
    assert_contains(&stdout, "FASTWORKER_SERIALIZATION_FORMAT=JSON");
    let stats = cp.core.stats().await.expect("stats");
    assert_eq!(
        stats.cached_results + stats.running,
        0,
        "nothing ran: {stats:?}"
    );
    cp.stop().await;
}
