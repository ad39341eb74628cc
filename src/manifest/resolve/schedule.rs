//! A task's `schedule` table, and a `@task` decorator's schedule, as a
//! [`Schedule`].

use crate::manifest::raw::Spanned;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::Cx;
use crate::manifest::raw::RawSchedule;
use crate::runners::FoundSchedule;
use crate::schedule::{CatchUp, Overlap, Rule, Schedule, parse_cron, parse_timezone};

impl Cx<'_> {
    pub(super) fn schedule(&mut self, raw: &Spanned<RawSchedule>, tname: &str) -> Option<Schedule> {
        let s = raw.get_ref();
        let table = format!("{tname}.schedule");
        let before = self.problems.len();
        let rule = match (&s.cron, &s.every) {
            (Some(cron), None) => match parse_cron(cron.get_ref()) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    self.err(cron.span(), &table, Some("cron"), e);
                    None
                }
            },
            (None, Some(every)) => match self.duration(Some(every), &table, "every") {
                Some(d) if d.is_zero() => {
                    self.err(
                        every.span(),
                        &table,
                        Some("every"),
                        "`every` must be above 0",
                    );
                    None
                }
                d => d.map(Rule::Every),
            },
            (Some(_), Some(every)) => {
                self.err(
                    every.span(),
                    &table,
                    Some("every"),
                    "give `cron` or `every`, not both",
                );
                None
            }
            (None, None) => {
                self.err(
                    raw.span(),
                    &table,
                    None,
                    "a schedule needs `cron = \"*/5 * * * *\"` or `every = \"30s\"`",
                );
                None
            }
        };
        let timezone = match &s.timezone {
            Some(tz) => match parse_timezone(tz.get_ref()) {
                Ok(tz) => tz,
                Err(e) => {
                    self.err(tz.span(), &table, Some("timezone"), e);
                    Tz::UTC
                }
            },
            None => Tz::UTC,
        };
        if let Some(count) = &s.count
            && *count.get_ref() == 0
        {
            self.err(
                count.span(),
                &table,
                Some("count"),
                "`count` must be at least 1",
            );
        }
        let until = s.until.as_ref().and_then(|u| {
            let parsed = match u.get_ref() {
                toml::Value::Datetime(d) => until_of(&d.to_string(), timezone),
                toml::Value::String(text) => until_of(text, timezone),
                other => Err(format!("expected a date and time, found {other}")),
            };
            parsed
                .map_err(|e| self.err(u.span(), &table, Some("until"), e))
                .ok()
        });
        let json = |v: &toml::Value| serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
        let args = s
            .args
            .as_ref()
            .map(|a| a.get_ref().iter().map(json).collect())
            .unwrap_or_default();
        let kwargs = s
            .kwargs
            .as_ref()
            .map(|k| {
                k.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), json(v)))
                    .collect()
            })
            .unwrap_or_default();
        let catch_up = match s.catch_up.as_ref() {
            None => CatchUp::Skip,
            Some(v) => match v.get_ref().as_str() {
                "skip" => CatchUp::Skip,
                "once" => CatchUp::Once,
                other => {
                    self.err(
                        v.span(),
                        &table,
                        Some("catch_up"),
                        format!("`catch_up` is \"skip\" or \"once\", not {other:?}"),
                    );
                    CatchUp::Skip
                }
            },
        };
        let overlap = match s.overlap.as_ref() {
            None => Overlap::Skip,
            Some(v) => match v.get_ref().as_str() {
                "skip" => Overlap::Skip,
                "allow" => Overlap::Allow,
                other => {
                    self.err(
                        v.span(),
                        &table,
                        Some("overlap"),
                        format!("`overlap` is \"skip\" or \"allow\", not {other:?}"),
                    );
                    Overlap::Skip
                }
            },
        };
        if self.problems.len() != before {
            return None;
        }
        Some(Schedule {
            rule: rule?,
            timezone,
            count: s.count.as_ref().map(|c| *c.get_ref()),
            until,
            args,
            kwargs,
            priority: s.priority.as_ref().map(|p| *p.get_ref()),
            catch_up,
            overlap,
        })
    }
}

/// A decorator's schedule (`@task(repeat_interval=…)`, `cron=…`,
/// `repeat_count=…`, `repeat_until=…`), in UTC.
pub(super) fn from_decorator(found: &FoundSchedule) -> Result<Schedule, String> {
    let rule = match (&found.cron, found.every_seconds) {
        (Some(cron), None) => parse_cron(cron)?,
        (None, Some(seconds)) if seconds.is_finite() && seconds > 0.0 => {
            Rule::Every(std::time::Duration::from_secs_f64(seconds))
        }
        (None, Some(seconds)) => {
            return Err(format!("repeat_interval must be positive, not {seconds}"));
        }
        (Some(_), Some(_)) => return Err("cron and repeat_interval together".to_owned()),
        (None, None) => return Err("a schedule with neither cron nor repeat_interval".to_owned()),
    };
    let until = found
        .until
        .as_deref()
        .map(|u| until_of(u, Tz::UTC).map_err(|e| format!("repeat_until: {e}")))
        .transpose()?;
    Ok(Schedule {
        count: found.count,
        until,
        ..Schedule::new(rule)
    })
}

/// An end: RFC 3339, or a date and time without an offset (in `tz`).
fn until_of(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d",
    ]
    .iter()
    .find_map(|f| {
        NaiveDateTime::parse_from_str(text, f).ok().or_else(|| {
            chrono::NaiveDate::parse_from_str(text, f)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
    })
    .ok_or_else(|| format!("{text:?} is not a date and time (write e.g. 2027-01-01T00:00:00Z)"))?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("{text:?} does not exist in {tz}"))
}
