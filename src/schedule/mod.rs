//! Periodic tasks: when a schedule fires ([`Schedule`], here), and the
//! control plane's side that fires them, durably ([`scheduler`]).
//!
//! A schedule is a cron expression or a fixed interval, in a time zone,
//! with an optional number of fires and an end. Cron means what cron
//! means (croner, Vixie-cron rules): Sunday is 0 and 7, names (`mon`,
//! `jan`) and shortcuts (`@daily`) work, and when both the day of the month
//! and the day of the week are restricted, a day matching either fires.
//! Wall-clock times are in the schedule's zone: a time skipped by a
//! daylight-saving jump fires at the first instant after it, a time that
//! happens twice fires once.

pub mod scheduler;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::manifest::Priority;

/// What a missed fire (the control plane was down) comes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// Missed fires are skipped (logged); the next one is the next due.
    #[default]
    Skip,
    /// If any were missed, one fires at the start (for the latest missed).
    Once,
}

/// What a fire does while the previous run of the schedule still goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overlap {
    /// It is skipped (and counted, and logged).
    #[default]
    Skip,
    /// It fires anyway.
    Allow,
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Rule {
    Cron {
        expr: String,
        cron: Box<croner::Cron>,
    },
    Every(Duration),
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        match (self, other) {
            (Rule::Cron { expr: a, .. }, Rule::Cron { expr: b, .. }) => a == b,
            (Rule::Every(a), Rule::Every(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Cron { expr, .. } => write!(f, "cron {expr}"),
            Rule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
        }
    }
}

/// A task's schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub rule: Rule,
    pub timezone: Tz,
    /// Fires in all, at most (counted across restarts).
    pub count: Option<u64>,
    /// No fire after this.
    pub until: Option<DateTime<Utc>>,
    /// What each fired task is called with.
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    /// The fired tasks' priority (none: the task's).
    pub priority: Option<Priority>,
    pub catch_up: CatchUp,
    pub overlap: Overlap,
}

impl Schedule {
    /// A schedule firing on `rule` in UTC, with every option at its default.
    pub fn new(rule: Rule) -> Schedule {
        Schedule {
            rule,
            timezone: Tz::UTC,
            count: None,
            until: None,
            args: Vec::new(),
            kwargs: Map::new(),
            priority: None,
            catch_up: CatchUp::default(),
            overlap: Overlap::default(),
        }
    }

    /// The first fire strictly after `after`; `anchor` is when an interval
    /// schedule started counting (its fires are `anchor + k × interval`).
    /// None when no fire remains (past `until`, or a cron that never
    /// matches again).
    pub fn next_after(&self, after: DateTime<Utc>, anchor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = match &self.rule {
            Rule::Cron { cron, .. } => {
                let local = after.with_timezone(&self.timezone);
                cron.find_next_occurrence(&local, false)
                    .ok()?
                    .with_timezone(&Utc)
            }
            Rule::Every(every) => {
                let step = TimeDelta::from_std(*every).ok()?;
                if after < anchor {
                    anchor
                } else {
                    let since = (after - anchor).num_milliseconds();
                    let step_ms = step.num_milliseconds().max(1);
                    let k = since / step_ms + 1;
                    anchor + TimeDelta::milliseconds(k.checked_mul(step_ms)?)
                }
            }
        };
        match self.until {
            Some(until) if next > until => None,
            _ => Some(next),
        }
    }
}

/// A cron expression of five fields (minute, hour, day of month, month, day
/// of week) or a shortcut (`@hourly`, `@daily`, `@weekly`, `@monthly`,
/// `@yearly`).
pub fn parse_cron(expr: &str) -> Result<Rule, String> {
    let fields = expr.split_whitespace().count();
    if !expr.trim_start().starts_with('@') && fields != 5 {
        return Err(format!(
            "cron {expr:?} has {fields} fields; it needs 5: minute hour day-of-month month day-of-week (e.g. \"*/5 * * * *\"), or a shortcut such as @daily"
        ));
    }
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build();
    let cron = parser
        .parse(expr)
        .map_err(|e| format!("cron {expr:?}: {e}"))?;
    Ok(Rule::Cron {
        expr: expr.trim().to_owned(),
        cron: Box::new(cron),
    })
}

/// A time zone: an IANA name (`Europe/Paris`), `UTC`, or `local` (the
/// system's: `TZ`, or /etc/localtime).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("local") {
        let system = iana_time_zone::get_timezone().map_err(|e| {
            format!("the system's time zone cannot be found ({e}); name one, such as Europe/Paris")
        })?;
        return system
            .parse::<Tz>()
            .map_err(|_| format!("the system's time zone {system:?} is not one this build knows"));
    }
    Tz::from_str_insensitive(name).map_err(|_| {
        format!("unknown time zone {name:?}: an IANA name such as Europe/Paris or America/New_York, UTC, or local")
    })
}

#[cfg(test)]
mod tests;
