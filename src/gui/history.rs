//! Throughput over time, for the charts: one sample a second for the last
//! ten minutes, and per-minute counts for the last day, kept in the data
//! dir (`gui-history.json`) so that the charts survive a restart.
//!
//! The samples are differences of the event counters, read once a second,
//! so they are exact even when the event stream's listeners fall behind.

use std::collections::VecDeque;
use std::path::PathBuf;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::control_plane::events::Counters;

/// Seconds kept for the live charts.
pub const SECONDS: usize = 600;
/// Minutes kept (a day).
pub const MINUTES: usize = 1440;

/// Counts since the start, as the counters have them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub accepted: u64,
    pub success: u64,
    pub failure: u64,
    pub cancelled: u64,
    pub retried: u64,
}

impl Totals {
    pub fn of(counters: &Counters) -> Totals {
        let finished = |s: &str| counters.finished.get(s).copied().unwrap_or(0);
        Totals {
            accepted: counters.accepted,
            success: finished("success"),
            failure: finished("failure"),
            cancelled: finished("cancelled"),
            retried: counters.retries,
        }
    }

    fn since(self, before: Totals) -> Totals {
        Totals {
            accepted: self.accepted.saturating_sub(before.accepted),
            success: self.success.saturating_sub(before.success),
            failure: self.failure.saturating_sub(before.failure),
            cancelled: self.cancelled.saturating_sub(before.cancelled),
            retried: self.retried.saturating_sub(before.retried),
        }
    }

    fn add(&mut self, more: Totals) {
        self.accepted += more.accepted;
        self.success += more.success;
        self.failure += more.failure;
        self.cancelled += more.cancelled;
        self.retried += more.retried;
    }
}

/// One minute's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Minute {
    pub t: DateTime<Utc>,
    #[serde(flatten)]
    pub counts: Totals,
}

/// One second: what happened in it, and the queue and running tasks at its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    pub t: DateTime<Utc>,
    pub accepted: u64,
    pub success: u64,
    pub failure: u64,
    pub cancelled: u64,
    /// Queued per priority, critical first.
    pub queued: [i64; 4],
    pub running: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    minutes: Vec<Minute>,
}

#[derive(Debug, Default)]
pub struct History {
    minutes: VecDeque<Minute>,
    seconds: VecDeque<Second>,
    last: Option<Totals>,
    path: Option<PathBuf>,
}

impl History {
    /// The history kept at `path` (none: kept in memory only). A file that
    /// cannot be read is set aside with a warning: a chart is not worth
    /// refusing to start for.
    pub fn open(path: Option<PathBuf>) -> History {
        let mut history = History {
            path,
            ..History::default()
        };
        let Some(path) = &history.path else {
            return history;
        };
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) => {
                    let since = Utc::now() - TimeDelta::minutes(MINUTES as i64);
                    history.minutes = saved.minutes.into_iter().filter(|m| m.t > since).collect();
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "the GUI's history cannot be read ({e}); the charts start empty");
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), "the GUI's history cannot be read ({e}); the charts start empty");
            }
        }
        history
    }

    /// Takes the counters' totals at `now` (once a second), with the
    /// queued and running tasks then.
    pub fn tick(&mut self, now: DateTime<Utc>, totals: Totals, queued: [i64; 4], running: i64) {
        let delta = match self.last.replace(totals) {
            Some(before) => totals.since(before),
            None => Totals::default(),
        };
        let second = now.duration_trunc(TimeDelta::seconds(1)).unwrap_or(now);
        self.seconds.push_back(Second {
            t: second,
            accepted: delta.accepted,
            success: delta.success,
            failure: delta.failure,
            cancelled: delta.cancelled,
            queued,
            running,
        });
        while self.seconds.len() > SECONDS {
            self.seconds.pop_front();
        }
        if delta == Totals::default() {
            return;
        }
        let minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
        match self.minutes.back_mut() {
            Some(m) if m.t == minute => m.counts.add(delta),
            _ => self.minutes.push_back(Minute {
                t: minute,
                counts: delta,
            }),
        }
        let since = now - TimeDelta::minutes(MINUTES as i64);
        while self.minutes.front().is_some_and(|m| m.t <= since) {
            self.minutes.pop_front();
        }
    }

    /// What happened in the last `seconds` seconds (up to the last sample).
    pub fn last(&self, seconds: i64) -> Totals {
        let mut sum = Totals::default();
        let Some(newest) = self.seconds.back().map(|s| s.t) else {
            return sum;
        };
        let since = newest - TimeDelta::seconds(seconds);
        for s in self.seconds.iter().rev().take_while(|s| s.t > since) {
            sum.add(Totals {
                accepted: s.accepted,
                success: s.success,
                failure: s.failure,
                cancelled: s.cancelled,
                retried: 0,
            });
        }
        sum
    }

    pub fn minutes(&self) -> impl Iterator<Item = &Minute> {
        self.minutes.iter()
    }

    pub fn seconds(&self) -> impl Iterator<Item = &Second> {
        self.seconds.iter()
    }

    /// Writes the per-minute counts (to a new file, renamed over the old:
    /// a crash leaves one or the other whole).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let saved = Saved {
            version: 1,
            minutes: self.minutes.iter().cloned().collect(),
        };
        crate::journal::replace_file(path, &serde_json::to_vec(&saved)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(accepted: u64, success: u64) -> Totals {
        Totals {
            accepted,
            success,
            ..Totals::default()
        }
    }

    #[test]
    fn seconds_and_minutes_count_what_happened_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gui-history.json");
        let t0 = Utc::now()
            .duration_trunc(TimeDelta::minutes(1))
            .expect("trunc");
        let mut h = History::open(Some(path.clone()));
        h.tick(t0, totals(100, 90), [0; 4], 0);
        h.tick(t0 + TimeDelta::seconds(1), totals(110, 95), [1, 0, 2, 0], 3);
        h.tick(t0 + TimeDelta::seconds(61), totals(111, 97), [0; 4], 0);
        assert_eq!(h.last(60), totals(1, 2), "the last minute");
        assert_eq!(h.last(600), totals(11, 7));
        let minutes: Vec<_> = h.minutes().cloned().collect();
        assert_eq!(minutes.len(), 2);
        assert_eq!(minutes[0].counts, totals(10, 5));
        h.save().expect("saved");
        let again = History::open(Some(path.clone()));
        assert_eq!(again.minutes().cloned().collect::<Vec<_>>(), minutes);
        std::fs::write(&path, "not json").expect("write");
        assert_eq!(
            History::open(Some(path)).minutes().count(),
            0,
            "a bad file is no reason to stop"
        );
    }
}
