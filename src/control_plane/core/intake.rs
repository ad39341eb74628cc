//! Taking tasks in: a submit's checks (all or nothing), a new task's
//! record, and where an accepted task waits: on a timer until its eta, or
//! in the queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::phase::Phase;
use super::{Acceptance, Core, NewTask};
use crate::control_plane::events::{Submitted, TaskChange};
use crate::control_plane::queue::Waiting;
use crate::control_plane::workers::Workers;
use crate::manifest::{Manifest, Priority, TaskSpec};
use crate::protocol::{Status, TaskRecord};

/// What scheduling needs to know about a task type, from the control
/// plane's manifest or else from a subworker that defines it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub priority: Priority,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub max_concurrency: Option<u32>,
}

impl Core {
    /// A submit: every task accepted, or none (a batch is all or nothing);
    /// answered once the new ones are on disk (see `durable`).
    pub(super) fn submit(
        &mut self,
        tasks: Vec<NewTask>,
        respond: oneshot::Sender<Result<Acceptance, String>>,
    ) {
        match self.accept_all(tasks) {
            Ok((fresh, statuses)) => self.journal_accepted(fresh, statuses, respond),
            Err(error) => {
                let _ = respond.send(Err(error));
            }
        }
    }

    /// Accepts the tasks (all or none); returns the ids of those not known
    /// before, and each task's status.
    fn accept_all(&mut self, tasks: Vec<NewTask>) -> Result<(Vec<String>, Vec<Status>), String> {
        // While stopping, a journal keeps what is taken for the next start.
        if self.draining && self.journal.is_none() {
            return Err("the control plane is shutting down".to_owned());
        }
        // Check everything first: a batch is accepted whole or not at all.
        let mut ids = HashSet::new();
        if let Some(dup) = tasks.iter().find(|t| !ids.insert(t.task_id.as_str())) {
            return Err(format!(
                "task id {} appears twice in one submit",
                dup.task_id
            ));
        }
        let mut fresh = 0;
        for task in &tasks {
            // A known id is a resend of that task, unless it names another one.
            match self.known_name(&task.task_id) {
                Some(name) if name == task.name => continue,
                Some(name) => {
                    return Err(format!(
                        "task id {} is already used by a '{name}' task",
                        task.task_id
                    ));
                }
                None => {}
            }
            // A type removed by a reload takes no new task (its own queued
            // ones still run).
            if self.manifest.task(&task.name).is_none() && self.workers.offer(&task.name).is_none()
            {
                return Err(self.unknown_task(&task.name));
            }
            fresh += 1;
        }
        if self.waiting() + fresh > self.settings.max_queue {
            return Err(format!(
                "queue full: {} tasks waiting, the limit is {} (--max-queue)",
                self.waiting(),
                self.settings.max_queue
            ));
        }
        let (mut fresh, mut statuses) = (Vec::new(), Vec::with_capacity(tasks.len()));
        for task in tasks {
            let (new, status) = self.accept(task);
            fresh.extend(new);
            statuses.push(status);
        }
        Ok((fresh, statuses))
    }

    /// The task name of a known id.
    fn known_name(&mut self, task_id: &str) -> Option<String> {
        match self.tasks.get(task_id) {
            Some(active) => Some(active.record.name.clone()),
            None => self.results.get(task_id).map(|r| r.name.clone()),
        }
    }

    /// Takes a task in; returns its id when it is new (not a resend), and
    /// its status. The caller has checked that its name is known.
    fn accept(&mut self, task: NewTask) -> (Option<String>, Status) {
        // A resend of a known id is never run twice: its waiter joins the run.
        if let Some(active) = self.tasks.get_mut(&task.task_id) {
            tracing::debug!(task_id = %task.task_id, "duplicate submit joins the running task");
            let (finishing, status) = (active.finishing().is_some(), active.record.status);
            active.waiters.extend(task.waiter);
            if finishing {
                self.urge();
            }
            return (None, status);
        }
        if let Some(done) = self.results.get(&task.task_id) {
            tracing::debug!(task_id = %task.task_id, "duplicate submit of a finished task");
            if let Some(waiter) = task.waiter {
                let _ = waiter.send(done.clone());
            }
            return (None, done.status);
        }
        let Some(policy) = self.policy(&task.name) else {
            return (None, Status::Failure);
        };
        let priority = task.priority.unwrap_or(policy.priority);
        let now = Utc::now();
        let status = if task.eta.is_some_and(|eta| eta > now) {
            Status::Scheduled
        } else {
            Status::Queued
        };
        let record = TaskRecord {
            args: task.args,
            kwargs: task.kwargs,
            submitted_at: now,
            eta: task.eta,
            callback: task.callback,
            retry_of: task.retry_of,
            trace: Some(
                task.trace
                    .unwrap_or_else(|| crate::protocol::TraceContext::new(None, None)),
            ),
            ..TaskRecord::new(task.task_id.clone(), task.name.clone(), priority, status)
        };
        tracing::debug!(task_id = %task.task_id, name = %task.name, %priority, status = status.as_str(), "task accepted");
        let submitted = Submitted::of(&record);
        self.tasks.insert(
            record,
            task.waiter.into_iter().collect(),
            Phase::Accepting,
            Some(TaskChange::Accepted { submitted }),
        );
        (Some(task.task_id), status)
    }

    /// Tasks waiting for a slot, a timer or the disk: what `--max-queue` bounds.
    pub(super) fn waiting(&self) -> usize {
        self.queue.len() + self.timers.len() + self.tasks.accepting()
    }

    /// Puts an accepted task where it waits: on a timer until its eta, or
    /// in the queue. Only a task that is being accepted has no place yet.
    pub(super) fn place(&mut self, task_id: &str) {
        let Some(active) = self
            .tasks
            .get(task_id)
            .filter(|a| matches!(a.phase(), Phase::Accepting))
        else {
            return;
        };
        let now = Utc::now();
        match active.record.eta.filter(|eta| *eta > now) {
            Some(eta) => {
                let wait = (eta - now).to_std().unwrap_or_default();
                let timer = self.add_timer(Instant::now() + wait, task_id);
                self.tasks.set_phase(
                    task_id,
                    Phase::Waiting {
                        timer,
                        retry: false,
                    },
                    Some(TaskChange::Scheduled { eta: Some(eta) }),
                );
            }
            None => self.enqueue(task_id, TaskChange::Queued),
        }
    }

    /// Puts a task in the queue, in its priority's lane, last.
    pub(super) fn enqueue(&mut self, task_id: &str, change: TaskChange) {
        let Some(active) = self.tasks.get(task_id) else {
            return;
        };
        let (priority, name) = (active.record.priority, active.record.name.clone());
        self.tasks.set_phase(task_id, Phase::Queued, Some(change));
        self.queue.push(
            priority,
            Waiting {
                task_id: task_id.to_owned(),
                name,
            },
        );
    }

    /// Moves every task whose timer is due into the queue.
    pub(super) fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((at, _, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, _, task_id)) = self.timers.pop_first() else {
                break;
            };
            if self
                .tasks
                .get(&task_id)
                .is_some_and(|a| matches!(a.phase(), Phase::Waiting { .. }))
            {
                self.enqueue(&task_id, TaskChange::Queued);
            }
        }
    }

    /// The scheduling policy of a task type, if anyone defines it.
    pub(super) fn policy(&self, name: &str) -> Option<Policy> {
        policy_in(&self.manifest, &self.retired, &self.workers, name)
    }

    fn unknown_task(&self, name: &str) -> String {
        let theirs: Vec<String> = self
            .workers
            .names()
            .into_iter()
            .filter(|n| self.manifest.task(n).is_none())
            .collect();
        let ours = self.manifest.unknown_task(name);
        if theirs.is_empty() {
            ours
        } else {
            format!("{ours}; from subworkers: {}", theirs.join(", "))
        }
    }

    /// Answers a status query: at once, or for a task whose final record is
    /// on its way to disk, once it is there.
    pub(super) fn get(&mut self, task_id: &str, respond: oneshot::Sender<Option<TaskRecord>>) {
        match self.tasks.get_mut(task_id) {
            Some(active) if active.finishing().is_some() => {
                active.readers.push(respond);
                self.urge();
            }
            Some(active) => {
                let _ = respond.send(Some(active.record.clone()));
            }
            None => {
                let _ = respond.send(self.results.get(task_id).cloned());
            }
        }
    }
}

/// The policy of `name`: the manifest's definition (or the one a reload
/// removed, for the tasks accepted before), else a subworker's.
pub(super) fn policy_in(
    manifest: &Manifest,
    retired: &HashMap<String, Arc<TaskSpec>>,
    workers: &Workers,
    name: &str,
) -> Option<Policy> {
    match manifest.task(name).or_else(|| retired.get(name)) {
        Some(spec) => Some(Policy {
            priority: spec.priority,
            retries: spec.retries,
            retry_backoff: spec.retry_backoff,
            max_concurrency: spec.max_concurrency,
        }),
        None => workers.offer(name).map(|offer| Policy {
            priority: offer.priority,
            retries: offer.retries,
            retry_backoff: Duration::from_millis(offer.retry_backoff_ms),
            max_concurrency: offer.max_concurrency,
        }),
    }
}
