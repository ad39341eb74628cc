//! The subworkers' side of the core: what the worker registry decides
//! about registrations, polls and reports (see [`crate::control_plane::workers`]),
//! turned into task changes: a result ends an attempt, a lost or handed-back
//! lease puts its task back in the queue.

use chrono::Utc;
use serde_json::Value;
use tokio::sync::oneshot;

use super::Core;
use super::phase::Phase;
use super::runs::request_for;
use crate::control_plane::events::TaskChange;
use crate::control_plane::workers::{LostLease, Report};
use crate::executor::Execution;
use crate::protocol::{
    Applied, Attempt, CutShort, Hello, Lease, Poll, PollReply, Registered, Registration, Status,
    TaskRecord, WorkerInfo,
};

impl Core {
    /// A subworker registers; the leases it lost with a restart of its own
    /// run again elsewhere.
    pub(super) fn register(&mut self, registration: Registration) -> Registered {
        let (manifest, dir) = (&self.manifest, &self.manifest.dir);
        let ours = |name: &str| manifest.task(name).map(|spec| spec.digest(dir));
        let (reply, lost) = self.workers.register(registration, ours);
        self.requeue_all(lost);
        reply
    }

    /// A subworker's heartbeat and request for work.
    pub(super) fn poll(&mut self, poll: Poll, respond: oneshot::Sender<PollReply>) {
        let lost = self.workers.poll(poll, respond);
        for lease in &lost {
            tracing::warn!(lease = %lease.lease, "a lease never reached its subworker; the task is queued again");
        }
        self.requeue_all(lost);
    }

    /// A subworker's report of a leased run: applied only if the lease is
    /// still that worker's (a late report of a revoked lease is dropped:
    /// the task already runs, or ran, elsewhere).
    pub(super) fn work_result(
        &mut self,
        hello: &Hello,
        lease: &str,
        execution: Execution,
    ) -> Applied {
        match self.workers.report(hello, lease, true) {
            Report::Taken { task_id } => {
                self.attempt_ended(&task_id, execution, Some(&hello.worker_id));
                applied()
            }
            Report::Unregistered => unregistered(hello),
            Report::NotHeld => {
                tracing::info!(worker = %hello.worker_id, %lease, task_id = %execution.task_id, "late result of a revoked lease dropped: the task ran again elsewhere");
                not_applied()
            }
        }
    }

    /// A stopping subworker hands a task back: it runs elsewhere, and the
    /// interrupted attempt does not count against `retries`.
    pub(super) fn release(&mut self, hello: &Hello, lease: &str, reason: &str) -> Applied {
        match self.workers.report(hello, lease, false) {
            Report::Taken { task_id } => {
                self.requeue(LostLease {
                    lease: lease.to_owned(),
                    task_id,
                    worker_id: hello.worker_id.clone(),
                    why: Some((
                        CutShort::HandedBack,
                        format!("handed back by subworker '{}': {reason}", hello.worker_id),
                    )),
                });
                applied()
            }
            Report::Unregistered => unregistered(hello),
            Report::NotHeld => not_applied(),
        }
    }

    pub(super) fn deregister(&mut self, hello: &Hello) -> Applied {
        match self.workers.deregister(hello) {
            Ok(lost) => {
                self.requeue_all(lost);
                applied()
            }
            Err(error) => Applied {
                applied: false,
                error: Some(error),
            },
        }
    }

    /// Answers polls held long enough, and moves the tasks of workers gone
    /// silent elsewhere.
    pub(super) fn check_workers(&mut self) {
        if self.workers.len() == 0 {
            return;
        }
        let lost = self.workers.check(tokio::time::Instant::now());
        self.requeue_all(lost);
    }

    /// Sends the poll replies that have work or cancels in them; a lease
    /// whose poll was gone never reached its worker, and is queued again.
    pub(super) fn flush_polls(&mut self) {
        let lost = self.workers.flush();
        self.requeue_all(lost);
    }

    fn requeue_all(&mut self, lost: Vec<LostLease>) {
        for lease in lost {
            self.requeue(lease);
        }
    }

    /// A lease ended without a result: its task is queued again (or ends
    /// cancelled, if a cancel was on its way), listing the cut-short
    /// attempt when there was one. Such attempts do not count against
    /// `retries`.
    fn requeue(&mut self, lost: LostLease) {
        let task_id = lost.task_id;
        let Some(active) = self
            .tasks
            .get_mut(&task_id)
            .filter(|a| matches!(a.phase(), Phase::Leased { lease, .. } if *lease == lost.lease))
        else {
            return;
        };
        let cancelling = active.phase().cancelling();
        let started = active.record.attempt_started_at.take();
        active.record.worker = None;
        active.record.lease = None;
        let reason = match lost.why {
            Some((how, error)) => {
                tracing::warn!(%task_id, worker = %lost.worker_id, "{error}; the task runs again");
                let n = active.record.next_attempt();
                active.record.attempts.push(Attempt::cut_short(
                    how,
                    n,
                    &error,
                    started,
                    Some(&lost.worker_id),
                ));
                error
            }
            None => format!("the lease never reached subworker '{}'", lost.worker_id),
        };
        if cancelling {
            self.finish(
                &task_id,
                Status::Cancelled,
                Value::Null,
                Some("cancelled".to_owned()),
            );
            return;
        }
        self.enqueue(&task_id, TaskChange::Requeued { reason });
        if let Some(active) = self.tasks.get(&task_id) {
            self.persist(&active.record);
        }
    }

    /// A task that ran on `worker` under `lease` when the control plane
    /// stopped: the lease stays the worker's, which has a grace period to
    /// register again and claim it (see [`crate::control_plane::workers::REJOIN_GRACE`]);
    /// otherwise the task runs elsewhere.
    pub(super) fn restore_lease(&mut self, record: TaskRecord, worker: &str, lease: &str) {
        let task_id = record.task_id.clone();
        let request = Lease {
            lease: lease.to_owned(),
            request: request_for(&record),
        };
        let phase = Phase::Leased {
            lease: lease.to_owned(),
            worker: worker.to_owned(),
            cancelling: false,
        };
        self.tasks
            .insert(record, Vec::new(), phase, Some(TaskChange::Restored));
        self.workers.restore(worker, &task_id, request);
    }

    pub(super) fn worker_list(&self) -> Vec<WorkerInfo> {
        let local = WorkerInfo {
            worker_id: self.settings.worker_id.clone(),
            kind: "control-plane".to_owned(),
            address: "(this control plane)".to_owned(),
            status: if self.settings.local_tasks {
                "local".to_owned()
            } else {
                "coordinator only".to_owned()
            },
            load: self.tasks.here(),
            capacity: if self.settings.local_tasks {
                self.settings.concurrency
            } else {
                0
            },
            tasks_done: self.done_here,
            last_seen: Some(Utc::now()),
            registered_at: None,
            tasks: self.manifest.tasks.keys().cloned().collect(),
            warnings: Vec::new(),
        };
        std::iter::once(local).chain(self.workers.list()).collect()
    }
}

fn applied() -> Applied {
    Applied {
        applied: true,
        error: None,
    }
}

/// A revoked lease: the report is dropped.
fn not_applied() -> Applied {
    Applied {
        applied: false,
        error: None,
    }
}

/// A report from a process that has not registered (yet): not taken, with
/// an error, so that a true subworker keeps its report and sends it again
/// once registered.
fn unregistered(hello: &Hello) -> Applied {
    Applied {
        applied: false,
        error: Some(format!(
            "subworker '{}' is not registered with this session; register first",
            hello.worker_id
        )),
    }
}
