//! The core's decisions, driven through its commands with tokio's clock
//! paused: subworkers are played by the test (register, poll, report), so
//! no process runs and time moves only when the test says or when
//! everything waits.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Command, Core, NewTask, Settings};
use crate::control_plane::events::{Event, Events, Stamped, TaskChange};
use crate::control_plane::results::ResultCache;
use crate::executor::{Execution, Executor, ExitState, Outcome};
use crate::manifest::{Manifest, Priority};
use crate::protocol::{
    Applied, Attempt, CutShort, Hello, Lease, Poll, PollReply, Registered, Registration, Status,
    TaskOffer, TaskRecord,
};

const MANIFEST: &str = r#"
[tasks.work]
command = ["true"]
retries = 1
retry_backoff = "1s"
"#;

struct Harness {
    tx: mpsc::Sender<Command>,
    /// The control plane's digest of `work`: the subworkers define it the same.
    digest: String,
    events: broadcast::Receiver<Arc<Stamped>>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A core with no local slots (subworkers only) and no journal, taking
    /// back `replay` first.
    fn start(replay: crate::journal::Replay) -> Harness {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tasks.toml");
        let manifest = Arc::new(Manifest::from_source(&path, MANIFEST).expect("manifest"));
        let digest = manifest.task("work").expect("work").digest(&manifest.dir);
        let events = Events::default();
        let listener = events.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let mut core = Core::new(
            manifest,
            Arc::new(Executor::new()),
            Settings {
                concurrency: 1,
                local_tasks: false,
                worker_id: "control-plane".into(),
                max_queue: 100,
                shutdown_grace: Duration::from_secs(1),
                callbacks: Default::default(),
                allow_definition_mismatch: false,
                records: None,
            },
            ResultCache::new(
                NonZeroUsize::MIN.saturating_add(99),
                usize::MAX,
                Duration::from_secs(3600),
            ),
            tx.clone(),
            None,
            events,
        );
        core.restore(replay, &Default::default());
        let stop = CancellationToken::new();
        tokio::spawn(core.run(rx, stop.clone()));
        Harness {
            tx,
            digest,
            events: listener,
            stop,
            _dir: dir,
        }
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (respond, answer) = oneshot::channel();
        self.tx.send(command(respond)).await.expect("core runs");
        answer.await.expect("answered")
    }

    async fn submit(&self, task_id: &str) {
        let task = NewTask {
            task_id: task_id.into(),
            name: "work".into(),
            args: Vec::new(),
            kwargs: Default::default(),
            priority: None,
            eta: None,
            callback: None,
            retry_of: None,
            trace: None,
            waiter: None,
        };
        let accepted = self
            .ask(|respond| Command::Submit {
                tasks: vec![task],
                respond,
            })
            .await;
        assert_eq!(accepted.map(|a| a.statuses), Ok(vec![Status::Queued]));
    }

    async fn record(&self, task_id: &str) -> TaskRecord {
        self.ask(|respond| Command::Get {
            task_id: task_id.into(),
            respond,
        })
        .await
        .expect("known")
    }

    /// The task changes so far: (task id, change name, worker of a start).
    fn changes(&mut self) -> Vec<(String, &'static str)> {
        let mut seen = Vec::new();
        while let Ok(stamped) = self.events.try_recv() {
            if let Event::Task(task) = &stamped.event {
                let name = match task.change {
                    TaskChange::Accepted { .. } => "accepted",
                    TaskChange::Restored => "restored",
                    TaskChange::Refused { .. } => "refused",
                    TaskChange::Queued => "queued",
                    TaskChange::Scheduled { .. } => "scheduled",
                    TaskChange::Started { .. } => "started",
                    TaskChange::Retrying { .. } => "retrying",
                    TaskChange::Requeued { .. } => "requeued",
                    TaskChange::Finished { .. } => "finished",
                };
                seen.push((task.task_id.clone(), name));
            }
        }
        seen
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A subworker the test plays.
struct Worker {
    hello: Hello,
    seq: u64,
}

impl Worker {
    async fn register(h: &Harness, id: &str, running: Vec<String>) -> Worker {
        let hello = Hello {
            worker_id: id.into(),
            session: uuid::Uuid::new_v4().simple().to_string(),
        };
        let offer = TaskOffer {
            digest: h.digest.clone(),
            priority: Priority::Normal,
            retries: 1,
            retry_backoff_ms: 1000,
            max_concurrency: None,
        };
        let registration = Registration {
            hello: hello.clone(),
            address: id.into(),
            capacity: 2,
            tasks: BTreeMap::from([("work".to_owned(), offer)]),
            running,
        };
        let reply: Registered = h
            .ask(|respond| Command::Register {
                registration: Box::new(registration),
                respond,
            })
            .await;
        assert!(reply.registered, "{reply:?}");
        Worker { hello, seq: 0 }
    }

    /// One poll, answered with work, cancels, or nothing after the hold.
    async fn poll(&mut self, h: &Harness, running: Vec<String>) -> PollReply {
        self.seq += 1;
        let poll = Poll {
            hello: self.hello.clone(),
            seq: self.seq,
            running,
            draining: false,
        };
        h.ask(|respond| Command::Poll { poll, respond }).await
    }

    async fn report(&self, h: &Harness, lease: &Lease, outcome: Outcome) -> Applied {
        let now = chrono::Utc::now();
        let execution = Execution {
            task_id: lease.request.task_id.clone(),
            name: lease.request.name.clone(),
            attempt: lease.request.attempt,
            outcome,
            started_at: now,
            finished_at: now,
            duration: Duration::from_millis(5),
            stderr: String::new(),
            pid: Some(1),
        };
        h.ask(|respond| Command::WorkResult {
            hello: self.hello.clone(),
            lease: lease.lease.clone(),
            execution: Box::new(execution),
            respond,
        })
        .await
    }
}

fn success() -> Outcome {
    Outcome::Success {
        result: serde_json::json!(8),
    }
}

fn failed() -> Outcome {
    Outcome::Failed {
        exit: Some(ExitState::Code(1)),
        error: None,
        process_lost: false,
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_is_accepted_queued_leased_run_and_published() {
    let mut h = Harness::start(Default::default());
    let mut w1 = Worker::register(&h, "w1", Vec::new()).await;
    h.submit("t1").await;
    let reply = w1.poll(&h, Vec::new()).await;
    let lease = reply.tasks.first().expect("leased").clone();
    assert_eq!(
        (lease.request.task_id.as_str(), lease.request.attempt),
        ("t1", 1)
    );
    let running = h.record("t1").await;
    assert_eq!(
        (running.status, running.worker.as_deref()),
        (Status::Running, Some("w1"))
    );
    assert!(w1.report(&h, &lease, success()).await.applied);
    let done = h.record("t1").await;
    assert_eq!(
        (done.status, done.result.clone()),
        (Status::Success, serde_json::json!(8))
    );
    assert!(matches!(&done.attempts[..], [Attempt::Ran { worker: Some(w), .. }] if w == "w1"));
    let changes: Vec<&str> = h.changes().iter().map(|(_, c)| *c).collect();
    assert_eq!(changes, ["accepted", "queued", "started", "finished"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_waits_out_its_backoff_before_the_next() {
    let mut h = Harness::start(Default::default());
    let mut w1 = Worker::register(&h, "w1", Vec::new()).await;
    h.submit("t1").await;
    let first = w1.poll(&h, Vec::new()).await.tasks[0].clone();
    let failed_at = tokio::time::Instant::now();
    assert!(w1.report(&h, &first, failed()).await.applied);
    assert_eq!(h.record("t1").await.status, Status::Retrying);
    // The backoff is 1 s with jitter (0.5 to 1 s): a poll now waits, and
    // its work comes only once the backoff is over.
    let second = loop {
        let reply = w1.poll(&h, Vec::new()).await;
        if let Some(lease) = reply.tasks.first() {
            break lease.clone();
        }
    };
    let waited = failed_at.elapsed();
    assert!(
        (Duration::from_millis(500)..=Duration::from_millis(1100)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(second.request.attempt, 2);
    assert!(w1.report(&h, &second, success()).await.applied);
    let done = h.record("t1").await;
    let statuses: Vec<&str> = done.attempts.iter().map(Attempt::status).collect();
    assert_eq!(
        (done.status, statuses),
        (Status::Success, vec!["failed", "success"])
    );
    let changes: Vec<&str> = h.changes().iter().map(|(_, c)| *c).collect();
    assert_eq!(
        changes,
        [
            "accepted", "queued", "started", "retrying", "queued", "started", "finished"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_worker_loses_its_lease_and_the_task_runs_elsewhere() {
    let h = Harness::start(Default::default());
    let mut w1 = Worker::register(&h, "w1", Vec::new()).await;
    h.submit("t1").await;
    let lease = w1.poll(&h, Vec::new()).await.tasks[0].clone();
    // w1 goes silent: after 3 s it is inactive and its task queues again.
    tokio::time::sleep(crate::control_plane::workers::INACTIVE_AFTER + Duration::from_millis(200))
        .await;
    let queued = h.record("t1").await;
    assert_eq!(queued.status, Status::Queued);
    assert!(matches!(
        &queued.attempts[..],
        [Attempt::CutShort { how: CutShort::Lost, worker: Some(w), .. }] if w == "w1"
    ));
    let mut w2 = Worker::register(&h, "w2", Vec::new()).await;
    let again = w2.poll(&h, Vec::new()).await.tasks[0].clone();
    assert_eq!(again.request.attempt, 2);
    // w1's late report is dropped; w2's is the one.
    let late = w1.report(&h, &lease, success()).await;
    assert!(!late.applied && late.error.is_none());
    assert!(w2.report(&h, &again, success()).await.applied);
    let done = h.record("t1").await;
    assert_eq!(done.status, Status::Success);
    assert_eq!(
        done.counted_attempts(),
        1,
        "the lost attempt does not count"
    );
}

/// A journal's replay holding one task that ran on `w1` under lease `L1`.
fn replay_of_a_leased_task(dir: &std::path::Path) -> crate::journal::Replay {
    let mut record = TaskRecord::new(
        "t1".into(),
        "work".into(),
        Priority::Normal,
        Status::Running,
    );
    record.worker = Some("w1".into());
    record.lease = Some("L1".into());
    record.attempt_started_at = Some(chrono::Utc::now());
    {
        let (journal, _) = crate::journal::Journal::open(dir).expect("journal");
        let (done, written) = std::sync::mpsc::channel();
        journal.write(
            vec![crate::journal::Change::put(&record)],
            crate::journal::Commit::Now,
            Some(Box::new(move |r| {
                let _ = done.send(r);
            })),
        );
        written.recv().expect("answer").expect("written");
    }
    crate::journal::Journal::open(dir).expect("reopen").1
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_back_after_a_restart_stays_with_its_worker() {
    let dir = tempfile::tempdir().expect("dir");
    let mut h = Harness::start(replay_of_a_leased_task(dir.path()));
    // w1 comes back in time, still running L1: the lease stays its own,
    // past the grace, while it polls.
    let mut w1 = Worker::register(&h, "w1", vec!["L1".into()]).await;
    for _ in 0..8 {
        let reply = w1.poll(&h, vec!["L1".into()]).await;
        assert!(reply.cancel.is_empty() && !reply.reregister, "{reply:?}");
    }
    let lease = Lease {
        lease: "L1".into(),
        request: super::runs::request_for(&h.record("t1").await),
    };
    assert!(w1.report(&h, &lease, success()).await.applied);
    let done = h.record("t1").await;
    assert_eq!((done.status, done.attempts.len()), (Status::Success, 1));
    let changes: Vec<&str> = h.changes().iter().map(|(_, c)| *c).collect();
    assert_eq!(changes, ["restored", "finished"]);
}

#[tokio::test(start_paused = true)]
async fn a_lease_whose_worker_does_not_come_back_runs_again_after_the_grace() {
    let dir = tempfile::tempdir().expect("dir");
    let h = Harness::start(replay_of_a_leased_task(dir.path()));
    tokio::time::sleep(crate::control_plane::workers::REJOIN_GRACE + Duration::from_millis(300))
        .await;
    let queued = h.record("t1").await;
    assert_eq!(queued.status, Status::Queued);
    assert!(matches!(
        &queued.attempts[..],
        [Attempt::CutShort {
            how: CutShort::Lost,
            ..
        }]
    ));
}

#[tokio::test(start_paused = true)]
async fn only_the_process_that_registered_may_report_on_its_leases() {
    let h = Harness::start(Default::default());
    let mut w1 = Worker::register(&h, "w1", Vec::new()).await;
    h.submit("t1").await;
    let lease = w1.poll(&h, Vec::new()).await.tasks[0].clone();
    // Another process using the same worker id, with a session of its own.
    let impostor = Worker {
        hello: Hello {
            worker_id: "w1".into(),
            session: "not-w1's-session".into(),
        },
        seq: 0,
    };
    let refused = impostor.report(&h, &lease, success()).await;
    assert!(!refused.applied);
    assert_eq!(
        refused.error.as_deref(),
        Some("subworker 'w1' is not registered with this session; register first")
    );
    assert_eq!(h.record("t1").await.status, Status::Running);
    assert!(w1.report(&h, &lease, success()).await.applied);
    assert_eq!(h.record("t1").await.status, Status::Success);
}
