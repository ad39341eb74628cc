//! The web GUI in a real browser: `tests/browser/gui-test.mjs` drives
//! headless Chromium (Playwright) against a real `fastworker control-plane`
//! that it starts, kills with SIGKILL and restarts: it submits a task from
//! the form and sees it succeed without a reload, cancels a running task,
//! retries a failed one, sees the disconnected banner and the reconnect,
//! and fails on any console error or CSP violation. Screenshots go to
//! `target/gui-screenshots/`.
//!
//! Needs Node ≥ 20 and Chromium (`/usr/bin/chromium`, or `CHROMIUM`); the
//! test runs `npm ci` in `tests/browser` when its `node_modules` is
//! missing. Without them the test is skipped with a note, unless
//! `FASTWORKER_REQUIRE_BROWSER` is set (CI sets it): then it fails.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{BIN, REPO, browser_tools};

/// Kills the test's process group (node, the control plane it started,
/// the browser) when the test ends, however it ends.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gui_works_in_a_real_browser() {
    let Some(dir) = browser_tools("the browser test") else {
        return;
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    let shots = Path::new(REPO).join("target/gui-screenshots");
    let mut child = tokio::process::Command::new("node")
        .arg("gui-test.mjs")
        .current_dir(&dir)
        .env("FASTWORKER_BIN", BIN)
        .env("FASTWORKER_TEST_DIR", scratch.path())
        .env("FASTWORKER_SCREENSHOTS", &shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let _group = Group(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or(-1),
    );
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let read = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut r, &mut text).await;
            text
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = tokio::time::timeout(Duration::from_secs(240), child.wait())
        .await
        .map_err(|_| "the browser test took over 240 s".to_owned())
        .and_then(|s| s.map_err(|e| e.to_string()));
    let (out, err) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    eprintln!("{out}{err}");
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("the browser test failed ({s}):\n{out}\n{err}"),
        Err(e) => panic!("{e}:\n{out}\n{err}"),
    }
    for shot in [
        "dashboard-light.png",
        "dashboard-dark.png",
        "task-light.png",
        "task-dark.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot} saved");
    }
}
