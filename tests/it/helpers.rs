//! Shared test helpers: a temp dir with the fixtures and a manifest, running
//! tasks through the real executor, polling with a deadline, process checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::executor::{Execution, Executor, TaskRequest};
use fastworker::manifest::{Manifest, ManifestError, TaskSpec};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const BIN: &str = env!("CARGO_BIN_EXE_fastworker");

/// A temp dir holding a copy of `tests/fixtures` and a `tasks.toml`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// `{dir}` in `manifest` becomes the fixture's directory (for pid files).
    pub fn new(manifest: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        for entry in std::fs::read_dir(FIXTURES).expect("fixtures dir") {
            let entry = entry.expect("fixture entry");
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy fixture");
        }
        let manifest = manifest.replace("{dir}", &dir.path().display().to_string());
        std::fs::write(dir.path().join("tasks.toml"), manifest).expect("write manifest");
        Fixture { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.path("tasks.toml")
    }

    pub fn try_load(&self) -> Result<Manifest, ManifestError> {
        Manifest::load(&self.manifest_path())
    }

    pub fn load(&self) -> Manifest {
        match self.try_load() {
            Ok(m) => m,
            Err(e) => panic!("manifest should load:\n{e}"),
        }
    }

    pub fn spec(&self, task: &str) -> Arc<TaskSpec> {
        Arc::clone(self.load().task(task).expect("task in manifest"))
    }
}

/// The error text of a manifest that must not load.
pub fn load_error(manifest: &str) -> String {
    match Fixture::new(manifest).try_load() {
        Ok(_) => panic!("manifest should not load:\n{manifest}"),
        Err(e) => e.to_string(),
    }
}

pub fn request(name: &str, args: Vec<Value>) -> TaskRequest {
    TaskRequest::new(name, args, Map::new())
}

/// Runs one attempt of `task` with `args` on a fresh executor, then shuts it down.
pub async fn run_once(spec: &Arc<TaskSpec>, args: Vec<Value>) -> Execution {
    let executor = Executor::new();
    let execution = executor
        .run(spec, &request(&spec.name, args), &CancellationToken::new())
        .await;
    executor.shutdown().await;
    execution
}

/// Runs `fx`'s task `task` once on `executor` (whose warm pools stay).
pub async fn run_on(executor: &Executor, fx: &Fixture, task: &str, args: Vec<Value>) -> Execution {
    executor
        .run(
            &fx.spec(task),
            &request(task, args),
            &CancellationToken::new(),
        )
        .await
}

/// A record's attempts as the wire shows them (`status --json`).
pub fn json_attempts(record: &fastworker::protocol::TaskRecord) -> Vec<Value> {
    record
        .attempts
        .iter()
        .map(|a| serde_json::to_value(a).expect("an attempt is JSON"))
        .collect()
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocking variant of [`wait_for`] for tests without a runtime.
pub fn wait_for_blocking(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Reads a pid written by a fixture script, waiting for the file to appear.
pub async fn read_pid(path: &Path) -> u32 {
    assert!(
        wait_for(Duration::from_secs(10), || path.exists()).await,
        "{} was never written",
        path.display()
    );
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

/// Kills a process on drop, so a failing test leaves nothing running.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Whether `text` contains `needle`, with a helpful panic message if not.
#[track_caller]
pub fn assert_contains(text: &str, needle: &str) {
    assert!(
        text.contains(needle),
        "expected to find {needle:?} in:\n{text}"
    );
}

/// A control plane running in this test process on fresh ports; stopped
/// (its running tasks cancelled) when dropped.
pub struct TestControlPlane {
    pub client: fastworker::client::Client,
    /// The base address (`--base-address`) and discovery address of it.
    pub base: String,
    pub discovery: String,
    pub core: fastworker::control_plane::CoreHandle,
    pub guard: Arc<fastworker::transport::Guard>,
    pub sockets: Arc<fastworker::control_plane::handlers::Context>,
    pub events: fastworker::control_plane::events::Events,
    shutdown: CancellationToken,
    running: Option<fastworker::control_plane::ControlPlane>,
}

impl TestControlPlane {
    /// Starts a control plane on `fx`'s manifest; `tweak` adjusts its config.
    pub async fn start(
        fx: &Fixture,
        tweak: impl Fn(&mut fastworker::control_plane::Config),
    ) -> Self {
        let manifest = Arc::new(fx.load());
        for _ in 0..20 {
            let base_port = 20_000 + (rand_u16() % 40_000);
            let base = format!("tcp://127.0.0.1:{base_port}");
            let discovery = format!("tcp://127.0.0.1:{}", base_port + 6);
            let mut config = fastworker::control_plane::Config::new(&base, &discovery);
            config.concurrency = 2;
            tweak(&mut config);
            let shutdown = CancellationToken::new();
            match fastworker::control_plane::start(config, Arc::clone(&manifest), shutdown.clone())
                .await
            {
                Ok(running) => {
                    let client = fastworker::client::Client::new(&base, Duration::from_secs(10))
                        .expect("client");
                    return TestControlPlane {
                        client,
                        base,
                        discovery,
                        core: running.core.clone(),
                        guard: Arc::clone(&running.guard),
                        sockets: Arc::clone(&running.sockets),
                        events: running.events.clone(),
                        shutdown,
                        running: Some(running),
                    };
                }
                // A port in use: try another base.
                Err(e) => eprintln!("retrying on other ports: {e}"),
            }
        }
        panic!("no free ports for a control plane");
    }

    /// The running control plane (to start a GUI on it).
    pub fn plane(&self) -> &fastworker::control_plane::ControlPlane {
        self.running.as_ref().expect("running until stopped")
    }

    /// Shuts down (as on SIGTERM) and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await;
        }
    }

    /// Submits `name(args)` in ack mode at `priority` (None: the manifest's).
    pub async fn ack(
        &self,
        name: &str,
        args: Vec<Value>,
        priority: Option<fastworker::manifest::Priority>,
    ) -> fastworker::protocol::Ack {
        self.client
            .submit_ack(wire_task(name, args), priority)
            .await
            .expect("submit (ack)")
    }

    /// Submits `name(args)` and waits for its result.
    pub async fn submit(
        &self,
        name: &str,
        args: Vec<Value>,
        priority: Option<fastworker::manifest::Priority>,
    ) -> fastworker::protocol::TaskResult {
        self.client
            .submit(wire_task(name, args), priority, Duration::from_secs(60))
            .await
            .expect("submit")
    }

    /// The record of a task the control plane knows.
    pub async fn record(&self, task_id: &str) -> fastworker::protocol::TaskRecord {
        self.client
            .status(task_id)
            .await
            .expect("status")
            .task
            .unwrap_or_else(|| panic!("task {task_id} is known"))
    }

    /// Polls the task's status until it is `status`.
    pub async fn wait_status(&self, task_id: &str, status: fastworker::protocol::Status) {
        wait_status(&self.client, task_id, status).await;
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A memory figure of a process from `/proc/PID/status` (`"self"` for this
/// one), in bytes: `VmRSS` (resident now) or `VmHWM` (its peak).
pub fn memory(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        * 1024
}

/// A random number, good enough to spread test ports.
pub fn rand_u16() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// A task for a control plane, with a fresh id.
pub fn wire_task(name: &str, args: Vec<Value>) -> fastworker::protocol::WireTask {
    fastworker::protocol::WireTask {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        args,
        kwargs: Map::new(),
        priority: None,
        eta: None,
        callback: None,
        reply: Default::default(),
        traceparent: None,
        tracestate: None,
    }
}

/// A real `fastworker control-plane` process on `fx`'s manifest, with its
/// data dir in `fx`, on fresh ports (retrying when they are taken); returns
/// once it has said it is ready, with its base address.
pub async fn spawn_control_plane(
    fx: &Fixture,
    concurrency: u32,
) -> (tokio::process::Child, String) {
    spawn_control_plane_via(fx, concurrency, &[]).await
}

/// [`spawn_control_plane`], started through `wrapper` (a command that runs
/// its arguments, e.g. a shell that sets a limit first).
pub async fn spawn_control_plane_via(
    fx: &Fixture,
    concurrency: u32,
    wrapper: &[&str],
) -> (tokio::process::Child, String) {
    let (process, base) = spawn_control_plane_with(fx, concurrency, wrapper, &[]).await;
    (process.child, base)
}

/// [`spawn_control_plane_via`] with `extra` flags; the process keeps its log.
pub async fn spawn_control_plane_with(
    fx: &Fixture,
    concurrency: u32,
    wrapper: &[&str],
    extra: &[&str],
) -> (Logged, String) {
    loop {
        let port = 20_000 + rand_u16() % 40_000;
        let base = format!("tcp://127.0.0.1:{port}");
        match spawn_control_plane_at(fx, &base, concurrency, wrapper, extra).await {
            Ok(process) => return (process, base),
            // A busy port: try others. Anything else is fatal.
            Err(line) => {
                assert_contains(&line, "cannot start the control plane");
                assert_contains(&line, "Address in use");
            }
        }
    }
}

/// A `fastworker control-plane` on `base` (discovery on its port + 6), with
/// its data dir in `fx`; the line that says why, if it did not start.
pub async fn spawn_control_plane_at(
    fx: &Fixture,
    base: &str,
    concurrency: u32,
    wrapper: &[&str],
    extra: &[&str],
) -> Result<Logged, String> {
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut args: Vec<String> = wrapper.iter().map(|s| (*s).to_owned()).collect();
    args.push(BIN.to_owned());
    args.extend(
        [
            "control-plane",
            "--base-address",
            base,
            "--concurrency",
            &concurrency.to_string(),
            "--discovery-address",
            &format!("tcp://127.0.0.1:{}", port + 6),
            "--manifest",
            &fx.manifest_path().display().to_string(),
            "--data-dir",
            &fx.path("data").display().to_string(),
        ]
        .map(str::to_owned),
    );
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    // Tests run side by side: no GUI on the fixed port 8080 unless asked.
    if !extra
        .iter()
        .any(|a| a.starts_with("--gui") || *a == "--no-gui")
    {
        args.push("--no-gui".to_owned());
    }
    let (process, line) = spawn_logged(&args, &["ready"], &["cannot start"]).await;
    match line {
        Ok(_) => Ok(process),
        Err(line) => {
            let mut child = process.child;
            let _ = child.wait().await;
            Err(line)
        }
    }
}

/// Starts the process `argv(base, port)` makes for a fresh loopback base
/// address, trying other ports while the one picked is taken ("Address in
/// use" among the `fail` lines); returns it with its base port and the
/// line that said one of `ok`. Anything else that stops it is a test
/// failure.
pub async fn spawn_on_free_ports(
    argv: impl Fn(&str, u16) -> Vec<String>,
    ok: &[&str],
    fail: &[&str],
) -> (Logged, u16, String) {
    loop {
        let port = 20_000 + rand_u16() % 40_000;
        let base = format!("tcp://127.0.0.1:{port}");
        let (process, line) = spawn_logged(&argv(&base, port), ok, fail).await;
        match line {
            Ok(line) => return (process, port, line),
            Err(line) if line.contains("Address in use") => {}
            Err(line) => panic!("it did not start: {line}\n{}", process.stderr()),
        }
    }
}

/// A process whose stderr is kept, line by line, as it runs.
pub struct Logged {
    pub child: tokio::process::Child,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Logged {
    /// Whether a stderr line so far contains `needle`.
    pub fn said(&self, needle: &str) -> bool {
        self.log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains(needle))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("pid")
    }

    pub fn stderr(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }
}

/// Spawns `argv` and reads its stderr until a line contains one of `ok`
/// (then `Ok(line)`) or one of `fail` (then `Err(line)`), or it ends
/// (`Err`); stderr goes on being read into the log after that.
pub async fn spawn_logged(
    argv: &[String],
    ok: &[&str],
    fail: &[&str],
) -> (Logged, Result<String, String>) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (program, args) = argv.split_first().expect("a program");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut outcome = Err("the process ended before saying it was ready".to_owned());
    // A process that neither says it is ready nor fails is a failure too,
    // not a hang.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(line) => line.expect("read"),
            Err(_) => {
                outcome = Err(format!(
                    "no line saying {ok:?} or {fail:?} within 60 s; it said:\n{}",
                    log.lock().expect("log").join("\n")
                ));
                break;
            }
        };
        let Some(line) = line else { break };
        log.lock().expect("log").push(line.clone());
        if ok.iter().any(|w| line.contains(w)) {
            outcome = Ok(line);
            break;
        }
        if fail.iter().any(|w| line.contains(w)) {
            outcome = Err(line);
            break;
        }
    }
    let keep = Arc::clone(&log);
    // Keep draining stderr so the process never blocks on it.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            keep.lock().expect("log").push(line);
        }
    });
    (Logged { child, log }, outcome)
}

/// Polls a task's status on a control plane until it is `status` (20 s at most).
pub async fn wait_status(
    client: &fastworker::client::Client,
    task_id: &str,
    status: fastworker::protocol::Status,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = client
            .status(task_id)
            .await
            .expect("status")
            .task
            .map(|t| t.status);
        if now == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {task_id} is {now:?}, never {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an async condition until it holds or 20 s pass; returns whether it held.
pub async fn wait_for_async<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// `tests/browser`, with its npm packages (Playwright, Taplo) installed,
/// when Chromium and Node ≥ 20 are here; else `None` after saying that
/// `what` is skipped, or a failure when `FASTWORKER_REQUIRE_BROWSER` is set
/// (CI sets it).
pub fn browser_tools(what: &str) -> Option<PathBuf> {
    let required = std::env::var_os("FASTWORKER_REQUIRE_BROWSER").is_some();
    let dir = Path::new(REPO).join("tests/browser");
    let ready = match missing() {
        Some(why) => Err(why),
        None => install(&dir),
    };
    match ready {
        Ok(()) => Some(dir),
        Err(why) => {
            assert!(!required, "{what} cannot run: {why}");
            eprintln!(
                "SKIPPED {what}: {why} (set FASTWORKER_REQUIRE_BROWSER to make this a failure)"
            );
            None
        }
    }
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match node {
        None => Some("no node on PATH (Node ≥ 20 runs the browser test)".to_owned()),
        Some(v) => {
            let major: u32 = v
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            (major < 20).then(|| format!("node {v} is older than 20"))
        }
    }
}

/// `npm ci` in tests/browser, once, when its packages (Playwright, and
/// Taplo for the schema test) are missing.
fn install(dir: &Path) -> Result<(), String> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if ["playwright-core", "@taplo/cli"].iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    }) {
        return Ok(());
    }
    let out = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "npm ci in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
