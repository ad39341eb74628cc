//! The control plane's scheduler: fires each scheduled task when it is
//! due, as a normal submit (so priority, subworkers, retries, results and
//! callbacks all apply), and keeps what it did in `schedules.json` in the
//! data dir, so that a restart neither fires twice nor forgets.
//!
//! - A fire at `T` is the task `NAME@T` (T in UTC, to the millisecond):
//!   the id says which fire it is, and a second submit of the same fire
//!   joins the first instead of running again.
//! - Before submitting, the fire is written as pending; once accepted, as
//!   done. A restart finds a pending fire and submits it again (the id
//!   makes that safe).
//! - Fires missed while the control plane was down are counted and, per
//!   the schedule's `catch_up`, skipped (the default) or made up once.
//! - A fire while the previous one still runs is skipped, and counted,
//!   unless `overlap = "allow"`.
//! - `count` and `until` end a schedule; the count survives restarts.
//!   A schedule whose rule or time zone changed starts counting again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{CatchUp, Overlap, Schedule};
use crate::control_plane::{CoreHandle, NewTask};

/// Missed fires counted at a start, at most (a cron of every minute down
/// for a year is 525,600).
const MAX_COUNTED: u64 = 1_000_000;

/// What is kept of one schedule across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The rule and time zone it was kept for (a change starts afresh).
    pub definition: String,
    /// When an interval schedule started counting.
    pub anchor: Option<DateTime<Utc>>,
    pub fires: u64,
    pub last_fire: Option<DateTime<Utc>>,
    pub last_task: Option<String>,
    /// A fire written down but not yet accepted.
    pub pending: Option<DateTime<Utc>>,
    /// Fires skipped because the previous run still went.
    pub skipped: u64,
    pub last_skip: Option<DateTime<Utc>>,
    /// Fires missed while the control plane was down.
    pub missed: u64,
    /// Fires the control plane refused (a full queue), and why.
    pub refused: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    version: u32,
    schedules: std::collections::BTreeMap<String, State>,
}

/// A schedule as `fastworker schedules` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    pub rule: String,
    pub timezone: String,
    /// The next fire (none: the schedule is over).
    pub next: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub state: State,
    pub count: Option<u64>,
    pub until: Option<DateTime<Utc>>,
    pub catch_up: &'static str,
    pub overlap: &'static str,
}

/// The schedules' rows, shared with the query socket and the GUI.
#[derive(Debug, Clone, Default)]
pub struct Schedules(Arc<Mutex<Vec<Row>>>);

impl Schedules {
    pub fn rows(&self) -> Vec<Row> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, rows: Vec<Row>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = rows;
    }
}

/// One scheduled task.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    pub schedule: Schedule,
    pub state: State,
    pub next: Option<DateTime<Utc>>,
}

/// What a start does about a schedule.
#[derive(Debug, Default, PartialEq)]
pub struct Start {
    /// A fire written down but not known to be accepted: submit it again.
    pub resubmit: Option<DateTime<Utc>>,
    /// Fires missed while down (counted), and the one made up for them
    /// (`catch_up = "once"`).
    pub missed: u64,
    pub catch_up: Option<DateTime<Utc>>,
}

impl Entry {
    pub fn new(name: &str, schedule: Schedule, kept: Option<State>) -> Entry {
        let rule = format!("{} ({})", schedule.rule, schedule.timezone);
        let state = match kept {
            Some(state) if state.definition == rule => state,
            Some(_) => {
                tracing::info!(name = name, %rule, "its schedule changed: its fires are counted afresh");
                State {
                    definition: rule,
                    ..State::default()
                }
            }
            None => State {
                definition: rule,
                ..State::default()
            },
        };
        Entry {
            name: name.to_owned(),
            schedule,
            state,
            next: None,
        }
    }

    fn over(&self) -> bool {
        self.schedule.count.is_some_and(|c| self.state.fires >= c)
    }

    /// At a start at `now`: the first fire to wait for, and what to do
    /// about a pending fire and the fires missed since the last one.
    pub fn start(&mut self, now: DateTime<Utc>) -> Start {
        let to_ms = chrono::DurationRound::duration_trunc(now, chrono::TimeDelta::milliseconds(1));
        let anchor = *self.state.anchor.get_or_insert(to_ms.unwrap_or(now));
        let mut plan = Start {
            resubmit: self.state.pending,
            ..Start::default()
        };
        let since = self.state.pending.or(self.state.last_fire);
        if let Some(since) = since {
            let mut at = since;
            let mut latest = None;
            while let Some(next) = self.schedule.next_after(at, anchor) {
                if next > now || plan.missed >= MAX_COUNTED {
                    break;
                }
                plan.missed += 1;
                latest = Some(next);
                at = next;
            }
            if self.schedule.catch_up == CatchUp::Once {
                plan.catch_up = latest;
            }
        }
        self.next = if self.over() {
            None
        } else {
            self.schedule.next_after(now, anchor)
        };
        plan
    }

    /// The fire after `fired` (none: the schedule is over).
    pub fn advance(&mut self, fired: DateTime<Utc>) {
        let anchor = self.state.anchor.unwrap_or(fired);
        self.next = if self.over() {
            None
        } else {
            self.schedule.next_after(fired, anchor)
        };
    }

    /// The id of the task fired at `at`.
    pub fn task_id(&self, at: DateTime<Utc>) -> String {
        let name: String = self.name.chars().take(90).collect();
        format!("{name}@{}", at.format("%Y%m%dT%H%M%S%.3fZ"))
    }

    fn row(&self) -> Row {
        Row {
            name: self.name.clone(),
            rule: self.schedule.rule.to_string(),
            timezone: self.schedule.timezone.name().to_owned(),
            next: self.next,
            state: self.state.clone(),
            count: self.schedule.count,
            until: self.schedule.until,
            catch_up: match self.schedule.catch_up {
                CatchUp::Skip => "skip",
                CatchUp::Once => "once",
            },
            overlap: match self.schedule.overlap {
                Overlap::Skip => "skip",
                Overlap::Allow => "allow",
            },
        }
    }
}

/// The scheduler of one control plane.
pub struct Scheduler {
    entries: Vec<Entry>,
    core: CoreHandle,
    path: Option<PathBuf>,
    rows: Schedules,
    now: Box<dyn Fn() -> DateTime<Utc> + Send>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("entries", &self.entries.len())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What became of a fire.
enum Fired {
    Accepted(String),
    Skipped,
    Refused(String),
}

impl Scheduler {
    /// A scheduler of `schedules` (task name, schedule), keeping its state
    /// at `path` (none: memory only), reading the time from `now`.
    pub fn new(
        schedules: Vec<(String, Schedule)>,
        core: CoreHandle,
        path: Option<PathBuf>,
        now: Box<dyn Fn() -> DateTime<Utc> + Send>,
    ) -> Scheduler {
        let mut saved = path.as_ref().map(|p| load(p)).unwrap_or_default();
        let entries = schedules
            .into_iter()
            .map(|(name, schedule)| {
                let kept = saved.schedules.remove(&name);
                Entry::new(&name, schedule, kept)
            })
            .collect();
        Scheduler {
            entries,
            core,
            path,
            rows: Schedules::default(),
            now,
        }
    }

    /// The rows `fastworker schedules` shows, kept up to date.
    pub fn schedules(&self) -> Schedules {
        self.rows.clone()
    }

    /// Fires what is due until `stop` (the control plane's shutdown);
    /// `updates` brings a reloaded manifest's schedules.
    pub async fn run(
        mut self,
        mut updates: tokio::sync::mpsc::Receiver<Vec<(String, Schedule)>>,
        stop: CancellationToken,
    ) {
        let now = (self.now)();
        for i in 0..self.entries.len() {
            let plan = self.entries[i].start(now);
            let name = self.entries[i].name.clone();
            if plan.missed > 0 {
                self.entries[i].state.missed += plan.missed;
                match plan.catch_up {
                    Some(_) => {
                        tracing::info!(name = %name, missed = plan.missed, "fires missed while the control plane was down; one is made up now (catch_up = \"once\")")
                    }
                    None => {
                        tracing::info!(name = %name, missed = plan.missed, "fires missed while the control plane was down; skipped (catch_up = \"skip\")")
                    }
                }
            }
            if let Some(at) = plan.resubmit {
                // Written down, maybe not accepted: the same id again.
                self.fire(i, at, false).await;
                self.entries[i].state.pending = None;
            }
            if let Some(at) = plan.catch_up.filter(|at| Some(*at) != plan.resubmit) {
                self.fire(i, at, true).await;
            }
        }
        self.publish();
        self.save();
        loop {
            let next = self.entries.iter().filter_map(|e| e.next).min();
            let wait = next.map(|next| (next - (self.now)()).to_std().unwrap_or_default());
            tokio::select! {
                () = stop.cancelled() => return,
                () = crate::clock::until(wait.map(|w| tokio::time::Instant::now() + w)) => {}
                Some(schedules) = updates.recv() => {
                    self.replace(schedules);
                    continue;
                }
            }
            let now = (self.now)();
            for i in 0..self.entries.len() {
                let Some(at) = self.entries[i].next.filter(|at| *at <= now) else {
                    continue;
                };
                self.fire(i, at, true).await;
                self.entries[i].advance(at);
            }
            self.publish();
            self.save();
        }
    }

    /// Fires entry `i` for `at` (`check_overlap`: skip it while the last
    /// run goes, if the schedule says so).
    async fn fire(&mut self, i: usize, at: DateTime<Utc>, check_overlap: bool) {
        let fired = self.submit(i, at, check_overlap).await;
        let entry = &mut self.entries[i];
        match fired {
            Fired::Accepted(task_id) => {
                tracing::info!(name = %entry.name, %task_id, at = %at.to_rfc3339_opts(SecondsFormat::Millis, true), "scheduled task fired");
                entry.state.fires += 1;
                entry.state.last_fire = Some(at);
                entry.state.last_task = Some(task_id);
                entry.state.last_error = None;
            }
            Fired::Skipped => {
                tracing::info!(name = %entry.name, at = %at.to_rfc3339_opts(SecondsFormat::Millis, true), last = ?entry.state.last_task, "a fire skipped: the last run still goes (overlap = \"skip\")");
                entry.state.skipped += 1;
                entry.state.last_skip = Some(at);
                entry.state.last_fire = Some(at);
            }
            Fired::Refused(error) => {
                tracing::warn!(name = %entry.name, at = %at.to_rfc3339_opts(SecondsFormat::Millis, true), "a scheduled fire was refused: {error}");
                entry.state.refused += 1;
                entry.state.last_error = Some(error);
                entry.state.last_fire = Some(at);
            }
        }
        entry.state.pending = None;
    }

    async fn submit(&mut self, i: usize, at: DateTime<Utc>, check_overlap: bool) -> Fired {
        if check_overlap
            && self.entries[i].schedule.overlap == Overlap::Skip
            && let Some(last) = self.entries[i].state.last_task.clone()
            && let Some(record) = self.core.get(last).await
            && !record.status.is_final()
        {
            return Fired::Skipped;
        }
        let entry = &mut self.entries[i];
        let task_id = entry.task_id(at);
        entry.state.pending = Some(at);
        let task = NewTask {
            task_id: task_id.clone(),
            name: entry.name.clone(),
            args: entry.schedule.args.clone(),
            kwargs: entry.schedule.kwargs.clone(),
            priority: entry.schedule.priority,
            eta: None,
            callback: None,
            retry_of: None,
            trace: None,
            waiter: None,
        };
        self.publish();
        self.save();
        match self.core.submit(vec![task]).await {
            Ok(_) => Fired::Accepted(task_id),
            Err(e) => Fired::Refused(e),
        }
    }

    /// A reload's schedules: kept ones keep their state (a changed rule
    /// starts afresh), new ones start now, removed ones stop.
    fn replace(&mut self, schedules: Vec<(String, Schedule)>) {
        let now = (self.now)();
        let mut old: std::collections::HashMap<String, Entry> = self
            .entries
            .drain(..)
            .map(|e| (e.name.clone(), e))
            .collect();
        for (name, schedule) in schedules {
            let kept = old.remove(&name).map(|e| e.state);
            let mut entry = Entry::new(&name, schedule, kept);
            // A running schedule goes on from now (nothing was missed).
            entry.state.pending = None;
            let plan = entry.start(now);
            entry.state.missed += plan.missed;
            if plan.missed > 0 {
                entry.state.last_fire = Some(now);
                entry.advance(now);
            }
            self.entries.push(entry);
        }
        self.publish();
        self.save();
    }

    fn publish(&self) {
        self.rows.set(self.entries.iter().map(Entry::row).collect());
    }

    fn save(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let saved = Saved {
            version: 1,
            schedules: self
                .entries
                .iter()
                .map(|e| (e.name.clone(), e.state.clone()))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).unwrap_or_default();
        if let Err(e) = crate::journal::replace_file(path, &bytes) {
            tracing::error!(path = %path.display(), "the schedules' state cannot be written: {e}");
        }
    }
}

fn load(path: &std::path::Path) -> Saved {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), "the schedules' state cannot be read ({e}): they start afresh");
            Saved::default()
        }),
        Err(_) => Saved::default(),
    }
}

/// A clock that follows tokio's (so that tests can pause it), anchored at
/// the wall clock when made.
pub fn tokio_clock() -> Box<dyn Fn() -> DateTime<Utc> + Send> {
    tokio_clock_from(Utc::now(), tokio::time::Instant::now())
}

/// [`tokio_clock`] from a given pair of wall time and instant.
pub fn tokio_clock_from(
    wall: DateTime<Utc>,
    instant: tokio::time::Instant,
) -> Box<dyn Fn() -> DateTime<Utc> + Send> {
    Box::new(move || wall + chrono::Duration::from_std(instant.elapsed()).unwrap_or_default())
}

/// Waits, for at most `max`, until `check` holds of the rows.
pub async fn wait_rows(rows: &Schedules, max: Duration, check: impl Fn(&[Row]) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + max;
    while tokio::time::Instant::now() < deadline {
        if check(&rows.rows()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[cfg(test)]
mod tests;

/// The JSON of a row, for the wire and the GUI.
pub fn row_json(row: &Row) -> Value {
    serde_json::to_value(row).unwrap_or(Value::Null)
}
