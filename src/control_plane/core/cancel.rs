//! Stopping tasks: a cancel (of a waiting or running task), cancelling
//! every running task at once, and the drain at shutdown.

use chrono::Utc;
use serde_json::Value;

use super::Core;
use super::phase::Phase;
use crate::protocol::{CancelReply, Status};

impl Core {
    pub(super) fn cancel(&mut self, task_id: &str) -> CancelReply {
        let reply = |cancelled: bool, status: Status, error: Option<String>| CancelReply {
            cancelled,
            task_id: task_id.to_owned(),
            status: Some(status),
            error,
        };
        if let Some(active) = self.tasks.get_mut(task_id) {
            if let Some(status) = active.finishing() {
                // Already ended; its record is on its way to disk.
                return match status {
                    Status::Cancelled => reply(true, status, None),
                    _ => reply(
                        false,
                        status,
                        Some(format!(
                            "task {task_id} already finished ({})",
                            status.as_str()
                        )),
                    ),
                };
            }
            if active.mark_cancelling() {
                // Its process group is stopped (here, or by its subworker,
                // told in the reply to its poll); the attempt then ends
                // cancelled. The journal says cancelled at once, so that a
                // replay after a crash does not run it again.
                match active.phase() {
                    Phase::Here { cancel, .. } => cancel.cancel(),
                    Phase::Leased { lease, .. } => {
                        let lease = lease.clone();
                        self.workers.cancel(&lease);
                    }
                    _ => {}
                }
                if let Some(active) = self.tasks.get(task_id) {
                    let mut cancelled = active.record.clone();
                    cancelled.status = Status::Cancelled;
                    cancelled.error = Some("cancelled".to_owned());
                    cancelled.finished_at = Some(Utc::now());
                    self.persist(&cancelled);
                }
                self.flush_polls();
                return reply(true, Status::Running, None);
            }
            self.queue.remove(task_id);
            self.finish(
                task_id,
                Status::Cancelled,
                Value::Null,
                Some("cancelled".to_owned()),
            );
            return reply(true, Status::Cancelled, None);
        }
        match self.results.get(task_id) {
            // Cancelling a cancelled task again is not an error.
            Some(done) if done.status == Status::Cancelled => reply(true, Status::Cancelled, None),
            Some(done) => reply(
                false,
                done.status,
                Some(format!(
                    "task {task_id} already finished ({})",
                    done.status.as_str()
                )),
            ),
            None => CancelReply {
                cancelled: false,
                task_id: task_id.to_owned(),
                status: None,
                error: Some(format!("task {task_id} not found")),
            },
        }
    }

    /// Stops every running task's process group; each then ends cancelled.
    pub(super) fn cancel_running(&mut self) {
        let mut leased = Vec::new();
        for task in self.tasks.values_mut() {
            match task.phase() {
                Phase::Here { cancel, .. } => {
                    cancel.cancel();
                    task.mark_cancelling();
                }
                Phase::Leased { lease, .. } => {
                    leased.push((task.record.task_id.clone(), lease.clone()));
                }
                _ => {}
            }
        }
        for (task_id, lease) in leased {
            if self.workers.cancel(&lease)
                && let Some(task) = self.tasks.get_mut(&task_id)
            {
                task.mark_cancelling();
            }
        }
        self.flush_polls();
    }

    /// Answers the blocking submitters of a task that waits in the journal
    /// for the next start, with the task as it stands and a note saying so.
    pub(super) fn answer_for_restart(&mut self, task_id: &str) {
        let Some(active) = self.tasks.get_mut(task_id) else {
            return;
        };
        let mut record = active.record.clone();
        record.error = Some(format!(
            "the control plane is shutting down; the task stays {} in the journal and runs after the next start",
            record.status.as_str()
        ));
        for waiter in active.waiters.drain(..) {
            let _ = waiter.send(record.clone());
        }
    }

    /// Stops running new tasks. Without a journal, every task that is not running
    /// ends as a failure; with one, waiting tasks stay in it and run after
    /// the next start (their blocking submitters get the task as it stands).
    pub(super) fn drain(&mut self) {
        self.draining = true;
        if self.journal.is_some() {
            tracing::info!(
                running = self.tasks.here(),
                waiting = self.waiting(),
                "shutting down: no new tasks; waiting tasks stay in the journal, running ones may finish"
            );
            let waiting: Vec<String> = self
                .tasks
                .values()
                .filter(|a| !a.phase().is_running() && a.finishing().is_none())
                .map(|a| a.record.task_id.clone())
                .collect();
            for task_id in waiting {
                self.answer_for_restart(&task_id);
            }
            return;
        }
        let waiting: Vec<String> = self
            .queue
            .drain()
            .into_iter()
            .map(|w| w.task_id)
            .chain(self.timers.iter().map(|(_, _, id)| id.clone()))
            .collect();
        tracing::info!(
            running = self.tasks.here(),
            waiting = waiting.len(),
            "shutting down: no new tasks; waiting tasks end, running ones may finish"
        );
        for task_id in waiting {
            let error = match self.tasks.get(&task_id) {
                Some(a) if a.record.status == Status::Retrying => format!(
                    "the control plane shut down before the next attempt; the last one {}",
                    a.record.error.as_deref().unwrap_or("failed")
                ),
                _ => "the control plane shut down before the task ran".to_owned(),
            };
            self.finish(&task_id, Status::Failure, Value::Null, Some(error));
        }
    }
}
