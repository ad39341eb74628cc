//! The core and the journal: what is written when, what waits for the
//! disk, and taking the journal back after a restart.
//!
//! - A submit's new tasks are written at once ([`Commit::Now`]); they queue,
//!   and the submitter is answered, only once they are on disk.
//! - A task's changes on the way (started, retrying, requeued) are written
//!   soon ([`Commit::Soon`]): nobody waits on them.
//! - A final record is written at once when somebody waits on it (a
//!   blocking submitter, a callback), else soon; it is published only once
//!   it is on disk, and a query meanwhile waits for it (and urges it).
//! - A cancel is answered once everything before it is on disk.

use std::collections::BTreeSet;

use chrono::Utc;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::phase::Phase;
use super::{Acceptance, Core};
use crate::control_plane::events::{Event, Forget, TaskChange};
use crate::journal::{Change, Commit, Done, Replay};
use crate::protocol::{Attempt, CutShort, Status, TaskRecord};

/// What the journal reports back, from its writer thread, once a write is
/// on disk.
#[derive(Debug)]
pub(super) enum Journaled {
    /// A submit's new tasks are on disk, and the submitter has been
    /// answered: they are queued. Or they could not be written: they are
    /// dropped, and then the submitter is told (`respond`).
    Accepted {
        task_ids: Vec<String>,
        result: Result<(), String>,
        respond: Option<oneshot::Sender<Result<Acceptance, String>>>,
    },
    /// A task's final record (of `bytes` encoded) is on disk: it is published.
    Finished {
        record: Box<TaskRecord>,
        bytes: usize,
    },
    /// A task's callback was delivered (or given up on).
    CallbackSent { task_id: String, delivered: bool },
}

impl Core {
    /// Takes back what the journal held when the control plane stopped:
    /// finished tasks are queryable again until their TTL runs out; waiting
    /// ones wait again, in their old order; a task that was running is run
    /// again, its interrupted attempt counted as lost.
    ///
    /// `killed` names the tasks whose processes an earlier control plane
    /// left running (found and killed at this start): a task among them
    /// that the journal still has waiting had started within the last
    /// commit window before a crash, and that run is listed as lost too.
    pub fn restore(&mut self, replay: Replay, killed: &BTreeSet<String>) {
        let quarantined = replay.quarantined.len();
        let (mut finished, mut requeued) = (0, 0);
        let (mut evicted, mut expired) = (Vec::new(), Vec::new());
        let mut pending_callbacks = Vec::new();
        let now = Utc::now();
        // Oldest submit first: waiting tasks keep their old order.
        for (mut record, bytes) in replay.records() {
            if record.status.is_final() {
                let finished_at = record.finished_at.unwrap_or(record.submitted_at);
                let age = (now - finished_at).to_std().unwrap_or_default();
                match self.results.ttl().checked_sub(age) {
                    Some(left) if !left.is_zero() => {
                        // A callback still on its way at the stop goes now,
                        // if it may still go there.
                        if let (Some(callback), None) = (&record.callback, record.callback_sent) {
                            match self.settings.callbacks.check(callback) {
                                Ok(()) => pending_callbacks.push(record.clone()),
                                Err(e) => {
                                    tracing::warn!(task_id = %record.task_id, "its callback is not sent: {e}");
                                }
                            }
                        }
                        evicted.extend(self.results.insert_until(
                            record,
                            bytes,
                            Instant::now() + left,
                        ));
                        finished += 1;
                    }
                    _ => expired.push(record.task_id),
                }
                continue;
            }
            if self.manifest.task(&record.name).is_none() {
                tracing::warn!(task_id = %record.task_id, name = %record.name, "task type not in this manifest: the task waits for a subworker that defines it");
            }
            // Running on a subworker: the lease stays that worker's if it
            // registers again in time.
            if record.status == Status::Running
                && let (Some(worker), Some(lease)) = (record.worker.clone(), record.lease.clone())
            {
                self.restore_lease(record, &worker, &lease);
                requeued += 1;
                continue;
            }
            if record.status == Status::Running {
                let started = record.attempt_started_at.take().or(record.started_at);
                let n = record.next_attempt();
                record.attempts.push(Attempt::cut_short(
                    CutShort::Lost,
                    n,
                    "the control plane stopped while this attempt ran",
                    started,
                    None,
                ));
            } else if killed.contains(&record.task_id) {
                let n = record.next_attempt();
                record.attempts.push(Attempt::cut_short(
                    CutShort::Lost,
                    n,
                    "the control plane stopped while this attempt ran, before its start reached the journal (its process was found and killed at the restart)",
                    None,
                    None,
                ));
            }
            let task_id = record.task_id.clone();
            record.status = if record.eta.is_some_and(|eta| eta > now) {
                Status::Scheduled
            } else {
                Status::Queued
            };
            self.persist(&record);
            self.tasks.insert(
                record,
                Vec::new(),
                Phase::Accepting,
                Some(TaskChange::Restored),
            );
            self.place(&task_id);
            requeued += 1;
        }
        self.forget(evicted, Forget::Evicted);
        self.forget(expired, Forget::Expired);
        for record in &pending_callbacks {
            self.send_callback(record);
        }
        if self.journal.is_some() {
            tracing::info!(
                finished,
                requeued,
                quarantined,
                callbacks = pending_callbacks.len(),
                "journal replayed"
            );
        }
    }

    /// Writes a submit's new tasks, then (on the writer thread) answers the
    /// submitter; the tasks queue once the core hears they are on disk.
    /// Without a journal, at once.
    pub(super) fn journal_accepted(
        &mut self,
        fresh: Vec<String>,
        statuses: Vec<Status>,
        respond: oneshot::Sender<Result<Acceptance, String>>,
    ) {
        let deferred = self.draining;
        let acceptance = Acceptance { statuses, deferred };
        let Some(journal) = &self.journal else {
            for task_id in &fresh {
                self.place(task_id);
            }
            let _ = respond.send(Ok(acceptance));
            return;
        };
        let changes = fresh
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .map(|a| Change::put(&a.record))
            .collect();
        self.awaiting_disk += 1;
        let tx = self.journaled_tx.clone();
        // On disk: the submitter is answered from the writer thread, with
        // no detour through the core.
        let done: Done = Box::new(move |result| {
            let respond = match result {
                Ok(()) => {
                    let _ = respond.send(Ok(acceptance));
                    None
                }
                Err(_) => Some(respond),
            };
            let _ = tx.send(Journaled::Accepted {
                task_ids: fresh,
                result,
                respond,
            });
        });
        journal.write(changes, Commit::Now, Some(done));
    }

    /// Writes a task's final record; it is published once on disk. Those
    /// waiting on it now are answered from the writer thread; later ones
    /// when it is published.
    pub(super) fn journal_final(&mut self, record: TaskRecord) {
        let waiters = self
            .tasks
            .get_mut(&record.task_id)
            .map(|a| std::mem::take(&mut a.waiters))
            .unwrap_or_default();
        self.awaiting_disk += 1;
        let Some(journal) = &self.journal else {
            for waiter in waiters {
                let _ = waiter.send(record.clone());
            }
            let bytes = crate::control_plane::results::encoded_size(&record);
            self.on_disk(Journaled::Finished {
                record: Box::new(record),
                bytes,
            });
            return;
        };
        let when = if waiters.is_empty() && record.callback.is_none() {
            Commit::Soon
        } else {
            Commit::Now
        };
        let tx = self.journaled_tx.clone();
        let put = Change::put(&record);
        let bytes = put.size();
        let done: Done = Box::new(move |result| {
            if let Err(e) = result {
                tracing::error!(task_id = %record.task_id, "result not journaled: {e}");
            }
            for waiter in waiters {
                let _ = waiter.send(record.clone());
            }
            let _ = tx.send(Journaled::Finished {
                record: Box::new(record),
                bytes,
            });
        });
        journal.write(vec![put], when, Some(done));
    }

    /// A journal write is on disk (or failed).
    pub(super) fn on_disk(&mut self, report: Journaled) {
        if !matches!(report, Journaled::CallbackSent { .. }) {
            self.awaiting_disk = self.awaiting_disk.saturating_sub(1);
        }
        match report {
            Journaled::CallbackSent { task_id, delivered } => {
                if let Some(record) = self.results.update(&task_id, |r| {
                    r.callback_sent = Some(delivered);
                }) {
                    let put = Change::put(record);
                    self.write_soon(put);
                }
            }
            Journaled::Accepted {
                task_ids,
                result,
                respond,
            } => {
                for task_id in &task_ids {
                    match &result {
                        Ok(()) => {
                            self.place(task_id);
                            if self.draining {
                                self.answer_for_restart(task_id);
                            }
                        }
                        // Not on disk: the submitter is told, and the task
                        // does not run (unless it was cancelled meanwhile:
                        // that record is on its way).
                        Err(error) => {
                            if self
                                .tasks
                                .get(task_id)
                                .is_some_and(|a| a.finishing().is_none())
                            {
                                tracing::error!(%task_id, "task refused: its record could not be journaled: {error}");
                                self.tasks.refuse(task_id, error);
                            }
                        }
                    }
                }
                if let (Some(respond), Err(e)) = (respond, result) {
                    let _ = respond.send(Err(format!("the task could not be journaled: {e}")));
                }
            }
            Journaled::Finished { record, bytes } => self.publish(*record, bytes),
        }
    }

    /// Records `record`, soon: nothing waits on it (the writes that must be
    /// on disk before something happens carry a [`Done`]).
    pub(super) fn persist(&self, record: &TaskRecord) {
        if self.journal.is_some() {
            self.write_soon(Change::put(record));
        }
    }

    fn write_soon(&self, change: Change) {
        if let Some(journal) = &self.journal {
            journal.write(vec![change], Commit::Soon, None);
        }
    }

    /// Commits what the journal holds now rather than soon: somebody has
    /// come to wait on a write that nobody waited on.
    pub(super) fn urge(&self) {
        if let Some(journal) = &self.journal {
            journal.write(Vec::new(), Commit::Now, None);
        }
    }

    /// Runs `then` once everything handed to the journal so far is on disk
    /// (at once without a journal), on the journal's writer thread. The
    /// writer commits in order, so an empty write completes after every
    /// earlier one.
    pub(super) fn after_durable(&self, then: impl FnOnce() + Send + 'static) {
        match &self.journal {
            Some(journal) => {
                journal.write(Vec::new(), Commit::Now, Some(Box::new(move |_| then())))
            }
            None => then(),
        }
    }

    /// Drops finished tasks' records from the journal (their results
    /// expired, were evicted or deleted), and says so.
    pub(super) fn forget(&self, task_ids: Vec<String>, reason: Forget) {
        if task_ids.is_empty() {
            return;
        }
        if let Some(journal) = &self.journal {
            journal.write(
                task_ids.iter().cloned().map(Change::Delete).collect(),
                Commit::Soon,
                None,
            );
        }
        self.events.emit(Event::Forgotten { task_ids, reason });
    }

    /// Sends a finished task's callback, if it has one; how it went comes
    /// back as [`Journaled::CallbackSent`].
    pub(super) fn send_callback(&self, record: &TaskRecord) {
        let (tx, task_id) = (self.journaled_tx.clone(), record.task_id.clone());
        crate::control_plane::callbacks::deliver(&self.callbacks, record, move |delivered| {
            let _ = tx.send(Journaled::CallbackSent { task_id, delivered });
        });
    }
}
