//! The task list's read model: one row per task the control plane knows
//! (live, and finished while its result is kept), kept up to date from the
//! event stream, outside the core, so that listing and filtering 100,000
//! tasks never holds the core up.
//!
//! Rows are ordered by when they were taken in (`seq`), so the default
//! list (newest first) and its cursor are a walk of a `BTreeMap`; counts by
//! state are kept as rows change. Filters that need every row (a search,
//! a name) scan them.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::view::{ERROR_PREVIEW, View};
use crate::control_plane::events::{Event, RESULT_PREVIEW, Stamped, TaskChange};
use crate::manifest::Priority;
use crate::protocol::{Status, TaskRecord, cut, preview};

/// Every state, in the order the list's chips show them.
pub const STATES: [Status; 7] = [
    Status::Queued,
    Status::Scheduled,
    Status::Running,
    Status::Retrying,
    Status::Success,
    Status::Failure,
    Status::Cancelled,
];

fn state_index(status: Status) -> usize {
    STATES.iter().position(|s| *s == status).unwrap_or(0)
}

/// A task as the list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub seq: u64,
    pub task_id: String,
    pub name: String,
    pub status: Status,
    pub priority: Priority,
    pub submitted_at: DateTime<Utc>,
    pub eta: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The last attempt's run, in seconds.
    pub duration: Option<f64>,
    pub attempts: u32,
    /// The worker of the last attempt.
    pub worker: Option<String>,
    /// The call's arguments, masked and cut (see [`View::input`]).
    pub input: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub retry_of: Option<String>,
    pub retried_by: Option<String>,
    /// What a search looks in, lowercase.
    haystack: String,
}

impl Row {
    fn from_record(record: &TaskRecord, view: &View, local: &str) -> Row {
        let last = record.attempts.last();
        let mut row = Row {
            seq: 0,
            task_id: record.task_id.clone(),
            name: record.name.clone(),
            status: record.status,
            priority: record.priority,
            submitted_at: record.submitted_at,
            eta: record.eta,
            started_at: record.started_at,
            finished_at: record.finished_at.filter(|_| record.status.is_final()),
            duration: last
                .and_then(|a| a.execution())
                .map(|e| e.duration.as_secs_f64()),
            attempts: u32::try_from(record.attempts.len()).unwrap_or(u32::MAX),
            worker: match (&record.worker, last) {
                (Some(w), _) => Some(w.clone()),
                (None, Some(a)) => Some(a.worker().unwrap_or(local).to_owned()),
                (None, None) => None,
            },
            input: view.input(&record.args, &record.kwargs),
            result: (!record.result.is_null()).then(|| preview(&record.result, RESULT_PREVIEW)),
            error: record.error.as_deref().map(|e| cut(e, ERROR_PREVIEW)),
            retry_of: record.retry_of.clone(),
            retried_by: None,
            haystack: String::new(),
        };
        if record.status == Status::Running {
            row.attempts = row.attempts.saturating_add(1);
        }
        row.reindex();
        row
    }

    fn reindex(&mut self) {
        let mut text =
            String::with_capacity(self.task_id.len() + self.name.len() + self.input.len() + 64);
        for part in [
            Some(self.task_id.as_str()),
            Some(self.name.as_str()),
            Some(self.input.as_str()),
            self.error.as_deref(),
            self.result.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            text.extend(part.chars().flat_map(char::to_lowercase));
            text.push('\u{1}');
        }
        self.haystack = text;
    }
}

/// Rows made from the core's records (in the core: quick, and no lock of
/// the read model held there), to [`TaskIndex::install`].
#[derive(Debug)]
pub struct Loaded {
    rows: Vec<Row>,
    last: u64,
}

impl Loaded {
    pub fn of<'a>(
        records: impl Iterator<Item = &'a TaskRecord>,
        view: &View,
        local: &str,
        last: u64,
    ) -> Loaded {
        Loaded {
            rows: records.map(|r| Row::from_record(r, view, local)).collect(),
            last,
        }
    }
}

/// What the list is asked for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// States (none: every state).
    pub statuses: Vec<Status>,
    pub names: Vec<String>,
    pub priorities: Vec<Priority>,
    pub worker: Option<String>,
    /// Lowercase.
    pub q: Option<String>,
    /// `q`'s searcher (SIMD), made once a query.
    finder: Option<memchr::memmem::Finder<'static>>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether anything but the states narrows the list.
    fn narrows(&self) -> bool {
        !self.names.is_empty()
            || !self.priorities.is_empty()
            || self.worker.is_some()
            || self.q.is_some()
            || self.since.is_some()
            || self.until.is_some()
    }

    fn matches_but_status(&self, row: &Row) -> bool {
        (self.names.is_empty() || self.names.contains(&row.name))
            && (self.priorities.is_empty() || self.priorities.contains(&row.priority))
            && self
                .worker
                .as_ref()
                .is_none_or(|w| row.worker.as_deref() == Some(w.as_str()))
            && self.since.is_none_or(|t| row.submitted_at >= t)
            && self.until.is_none_or(|t| row.submitted_at < t)
            && self.found(row)
    }

    /// Searches with `q` (a searcher is made for it on first use).
    pub fn search(mut self, q: &str) -> Filter {
        let q = q.to_lowercase();
        self.finder = Some(memchr::memmem::Finder::new(q.as_bytes()).into_owned());
        self.q = Some(q);
        self
    }

    fn found(&self, row: &Row) -> bool {
        match (&self.q, &self.finder) {
            (None, _) => true,
            (Some(_), Some(finder)) => finder.find(row.haystack.as_bytes()).is_some(),
            (Some(q), None) => row.haystack.contains(q.as_str()),
        }
    }

    fn has_status(&self, status: Status) -> bool {
        self.statuses.is_empty() || self.statuses.contains(&status)
    }

    pub fn matches(&self, row: &Row) -> bool {
        self.has_status(row.status) && self.matches_but_status(row)
    }
}

/// The order of the list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// Last taken in first.
    #[default]
    Newest,
    Oldest,
    /// Last finished first (live tasks last).
    Finished,
    /// Longest last run first.
    Duration,
}

impl std::str::FromStr for Sort {
    type Err = String;
    fn from_str(s: &str) -> Result<Sort, String> {
        match s {
            "newest" | "" => Ok(Sort::Newest),
            "oldest" => Ok(Sort::Oldest),
            "finished" => Ok(Sort::Finished),
            "duration" => Ok(Sort::Duration),
            other => Err(format!(
                "unknown sort '{other}': one of newest, oldest, finished, duration"
            )),
        }
    }
}

/// A page of the list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub rows: Vec<Row>,
    /// Rows matching every filter.
    pub total: u64,
    /// Rows matching every filter but the states, by state (see [`STATES`]).
    pub counts: [u64; 7],
    pub next_cursor: Option<String>,
    /// Rows before this page, when known (the first page, and the pages of
    /// the sorts that page by offset).
    pub offset: Option<usize>,
    /// The last event the list reflects.
    pub last_event: u64,
}

/// Every task the control plane knows, as the list shows them.
#[derive(Debug, Default)]
pub struct TaskIndex {
    rows: BTreeMap<u64, Row>,
    by_id: HashMap<String, u64>,
    next_seq: u64,
    counts: [u64; 7],
    /// The last event applied.
    last_event: u64,
    view: View,
    /// The control plane's worker id (what runs there shows as its worker).
    local: String,
}

impl TaskIndex {
    pub fn new(view: View, local: &str) -> TaskIndex {
        TaskIndex {
            view,
            local: local.to_owned(),
            ..TaskIndex::default()
        }
    }

    /// Replaces every row with `records` (the core's, as of event `last`).
    pub fn load<'a>(&mut self, records: impl Iterator<Item = &'a TaskRecord>, last: u64) {
        let rows = Loaded::of(records, &self.view, &self.local, last);
        self.install(rows);
    }

    /// The view and worker id rows are made with (to make them elsewhere).
    pub fn maker(&self) -> (View, String) {
        (self.view.clone(), self.local.clone())
    }

    /// Replaces every row with those made by [`Loaded::of`].
    pub fn install(&mut self, loaded: Loaded) {
        let mut rows = loaded.rows;
        rows.sort_by(|a, b| (a.submitted_at, &a.task_id).cmp(&(b.submitted_at, &b.task_id)));
        self.rows.clear();
        self.by_id.clear();
        self.counts = [0; 7];
        self.next_seq = 0;
        let retries: Vec<(String, String)> = rows
            .iter()
            .filter_map(|r| Some((r.retry_of.clone()?, r.task_id.clone())))
            .collect();
        for row in rows {
            self.insert(row);
        }
        for (old, new) in retries {
            self.link_retry(&old, &new);
        }
        self.last_event = loaded.last;
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn last_event(&self) -> u64 {
        self.last_event
    }

    /// Rows by state, every task known.
    pub fn counts(&self) -> [u64; 7] {
        self.counts
    }

    pub fn get(&self, task_id: &str) -> Option<&Row> {
        self.rows.get(self.by_id.get(task_id)?)
    }

    fn insert(&mut self, mut row: Row) {
        if let Some(seq) = self.by_id.get(&row.task_id).copied() {
            self.remove_seq(seq);
        }
        self.next_seq += 1;
        row.seq = self.next_seq;
        self.counts[state_index(row.status)] += 1;
        self.by_id.insert(row.task_id.clone(), row.seq);
        self.rows.insert(row.seq, row);
    }

    fn remove_seq(&mut self, seq: u64) -> Option<Row> {
        let row = self.rows.remove(&seq)?;
        self.by_id.remove(&row.task_id);
        self.counts[state_index(row.status)] -= 1;
        Some(row)
    }

    fn remove(&mut self, task_id: &str) {
        if let Some(seq) = self.by_id.get(task_id).copied() {
            self.remove_seq(seq);
        }
    }

    fn link_retry(&mut self, old: &str, new: &str) {
        if let Some(seq) = self.by_id.get(old)
            && let Some(row) = self.rows.get_mut(seq)
        {
            row.retried_by = Some(new.to_owned());
        }
    }

    /// Changes a row in place (its state counted again); `searched`: the
    /// change may touch what a search looks in.
    fn update(&mut self, task_id: &str, searched: bool, change: impl FnOnce(&mut Row)) {
        let Some(row) = self.by_id.get(task_id).and_then(|s| self.rows.get_mut(s)) else {
            return;
        };
        let before = row.status;
        change(row);
        // Only the error and the result, of what a search looks in, change.
        if searched {
            row.reindex();
        }
        let after = row.status;
        if before != after {
            self.counts[state_index(before)] -= 1;
            self.counts[state_index(after)] += 1;
        }
    }

    /// Applies one event (an event older than the rows is skipped).
    pub fn apply(&mut self, stamped: &Stamped) {
        if stamped.id <= self.last_event {
            return;
        }
        self.last_event = stamped.id;
        let at = stamped.at;
        match &stamped.event {
            Event::Forgotten { task_ids, .. } => {
                for id in task_ids {
                    self.remove(id);
                }
            }
            Event::Worker(_) | Event::Reloaded(_) => {}
            Event::Task(e) => {
                let to = e.to;
                match &e.change {
                    TaskChange::Accepted { submitted } => {
                        let mut row = Row {
                            seq: 0,
                            task_id: e.task_id.clone(),
                            name: e.name.clone(),
                            status: to,
                            priority: e.priority,
                            submitted_at: submitted.submitted_at,
                            eta: submitted.eta,
                            started_at: None,
                            finished_at: None,
                            duration: None,
                            attempts: 0,
                            worker: None,
                            input: self.view.input(&submitted.args, &submitted.kwargs),
                            result: None,
                            error: None,
                            retry_of: submitted.retry_of.clone(),
                            retried_by: None,
                            haystack: String::new(),
                        };
                        row.reindex();
                        self.insert(row);
                        if let Some(old) = &submitted.retry_of {
                            self.link_retry(old, &e.task_id);
                        }
                    }
                    TaskChange::Refused { .. } => self.remove(&e.task_id),
                    TaskChange::Started {
                        attempt, worker, ..
                    } => {
                        let worker = worker.clone().unwrap_or_else(|| self.local.clone());
                        self.update(&e.task_id, false, |row| {
                            row.status = to;
                            row.attempts = *attempt;
                            row.worker = Some(worker);
                            row.started_at.get_or_insert(at);
                        });
                    }
                    TaskChange::Retrying { error, run_ms, .. } => {
                        self.update(&e.task_id, true, |row| {
                            row.status = to;
                            row.error = Some(cut(error, ERROR_PREVIEW));
                            row.duration = run_ms.map(|ms| ms / 1000.0);
                        });
                    }
                    TaskChange::Finished {
                        error,
                        attempts,
                        run_ms,
                        result,
                    } => {
                        self.update(&e.task_id, true, |row| {
                            row.status = to;
                            row.error = error.as_deref().map(|e| cut(e, ERROR_PREVIEW));
                            row.result.clone_from(result);
                            row.attempts = u32::try_from(*attempts).unwrap_or(u32::MAX);
                            row.duration = run_ms.map(|ms| ms / 1000.0).or(row.duration);
                            row.finished_at = Some(at);
                        });
                    }
                    TaskChange::Restored
                    | TaskChange::Queued
                    | TaskChange::Scheduled { .. }
                    | TaskChange::Requeued { .. } => {
                        self.update(&e.task_id, false, |row| row.status = to);
                    }
                }
            }
        }
    }

    /// A page of the rows `filter` matches, in `sort` order, after `cursor`.
    pub fn page(
        &self,
        filter: &Filter,
        sort: Sort,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, String> {
        let limit = limit.max(1);
        let mut page = Page {
            last_event: self.last_event,
            ..Page::default()
        };
        // Totals: kept counts when only states narrow the list, else a scan.
        if filter.narrows() {
            for row in self.rows.values() {
                if filter.matches_but_status(row) {
                    page.counts[state_index(row.status)] += 1;
                }
            }
        } else {
            page.counts = self.counts;
        }
        page.total = STATES
            .iter()
            .zip(page.counts)
            .filter(|(s, _)| filter.has_status(**s))
            .map(|(_, n)| n)
            .sum();
        match sort {
            Sort::Newest | Sort::Oldest => {
                let after = match cursor {
                    Some(c) => Some(parse_cursor(c, 's')?),
                    None => {
                        page.offset = Some(0);
                        None
                    }
                };
                let rows: Box<dyn Iterator<Item = &Row>> = match (sort, after) {
                    (Sort::Newest, Some(c)) => Box::new(self.rows.range(..c).rev().map(|r| r.1)),
                    (Sort::Newest, None) => Box::new(self.rows.values().rev()),
                    (_, Some(c)) => Box::new(self.rows.range(c.saturating_add(1)..).map(|r| r.1)),
                    (_, None) => Box::new(self.rows.values()),
                };
                let mut taken: Vec<Row> = rows
                    .filter(|r| filter.matches(r))
                    .take(limit + 1)
                    .cloned()
                    .collect();
                if taken.len() > limit {
                    taken.truncate(limit);
                    page.next_cursor = taken.last().map(|r| format!("s{}", r.seq));
                }
                page.rows = taken;
            }
            Sort::Finished | Sort::Duration => {
                let offset = match cursor {
                    Some(c) => usize::try_from(parse_cursor(c, 'o')?).unwrap_or(usize::MAX),
                    None => 0,
                };
                let mut matching: Vec<&Row> =
                    self.rows.values().filter(|r| filter.matches(r)).collect();
                if sort == Sort::Finished {
                    matching.sort_by_key(|r| std::cmp::Reverse((r.finished_at, r.seq)));
                } else {
                    matching.sort_by(|a, b| {
                        b.duration
                            .unwrap_or(-1.0)
                            .total_cmp(&a.duration.unwrap_or(-1.0))
                            .then(b.seq.cmp(&a.seq))
                    });
                }
                page.rows = matching
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|r| (*r).clone())
                    .collect();
                page.offset = Some(offset);
                let end = offset.saturating_add(limit);
                if end < matching.len() {
                    page.next_cursor = Some(format!("o{end}"));
                }
            }
        }
        Ok(page)
    }

    /// The ids of the rows `filter` matches, newest first, at most `max`.
    pub fn ids(&self, filter: &Filter, max: usize) -> Vec<String> {
        self.rows
            .values()
            .rev()
            .filter(|r| filter.matches(r))
            .take(max)
            .map(|r| r.task_id.clone())
            .collect()
    }
}

fn parse_cursor(cursor: &str, kind: char) -> Result<u64, String> {
    cursor
        .strip_prefix(kind)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            format!("bad cursor '{cursor}': pass the next_cursor of the previous page, with the same sort")
        })
}

#[cfg(test)]
mod tests;
