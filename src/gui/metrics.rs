//! `/metrics`: the event counters, the core's figures and the journal's, in
//! Prometheus' text format (version 0.0.4).

use std::fmt::Write as _;

use crate::control_plane::Stats;
use crate::control_plane::events::{BUCKETS, Counters, Histogram};
use crate::manifest::Priority;

/// What `/metrics` shows, gathered at one moment.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub worker_id: &'a str,
    pub started_at: f64,
    pub counters: &'a Counters,
    pub stats: &'a Stats,
    /// Commits, bytes committed, size now.
    pub journal: Option<(u64, u64, u64)>,
    pub sse_clients: usize,
    /// Requests refused for a missing or wrong token.
    pub denied: u64,
}

/// The exposition, as `text/plain; version=0.0.4`.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = Text(String::with_capacity(8192));
    let c = s.counters;
    out.family("fastworker_info", "gauge", "This control plane (always 1).");
    out.sample(
        "fastworker_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("worker_id", s.worker_id),
        ],
        1.0,
    );
    out.family(
        "fastworker_start_time_seconds",
        "gauge",
        "When the control plane started, in seconds since the Unix epoch.",
    );
    out.sample("fastworker_start_time_seconds", &[], s.started_at);

    out.family(
        "fastworker_tasks_accepted_total",
        "counter",
        "Tasks accepted since the start.",
    );
    out.sample("fastworker_tasks_accepted_total", &[], c.accepted as f64);
    out.family(
        "fastworker_tasks_finished_total",
        "counter",
        "Tasks ended since the start, by task name and final status.",
    );
    let mut names: Vec<&String> = c.by_name.keys().collect();
    names.sort();
    for name in &names {
        let o = c.by_name[*name];
        for (status, n) in [
            ("success", o.success),
            ("failure", o.failure),
            ("cancelled", o.cancelled),
        ] {
            out.sample(
                "fastworker_tasks_finished_total",
                &[("task", name), ("status", status)],
                n as f64,
            );
        }
    }
    out.family(
        "fastworker_task_retries_total",
        "counter",
        "Attempts that failed and were tried again, by task name.",
    );
    for name in &names {
        out.sample(
            "fastworker_task_retries_total",
            &[("task", name)],
            c.by_name[*name].retries as f64,
        );
    }
    out.family(
        "fastworker_task_attempts_started_total",
        "counter",
        "Attempts started since the start (here or on subworkers).",
    );
    out.sample(
        "fastworker_task_attempts_started_total",
        &[],
        c.started as f64,
    );

    out.family("fastworker_tasks", "gauge", "Live tasks by state.");
    for state in ["queued", "scheduled", "running", "retrying"] {
        let n = c.current.get(state).copied().unwrap_or(0).max(0);
        out.sample("fastworker_tasks", &[("state", state)], n as f64);
    }
    out.family(
        "fastworker_queue_depth",
        "gauge",
        "Tasks in the queue, by priority.",
    );
    for priority in Priority::ALL {
        out.sample(
            "fastworker_queue_depth",
            &[("priority", priority.as_str())],
            s.stats.queued[priority as usize] as f64,
        );
    }
    histograms(
        &mut out,
        "fastworker_task_wait_seconds",
        "Time in the queue before an attempt started, by task name.",
        &c.wait_seconds,
    );
    histograms(
        &mut out,
        "fastworker_task_run_seconds",
        "Attempts' run times, by task name.",
        &c.run_seconds,
    );

    out.family("fastworker_workers", "gauge", "Subworkers by state.");
    for state in ["active", "draining", "inactive"] {
        let n = c.workers.get(state).copied().unwrap_or(0).max(0);
        out.sample("fastworker_workers", &[("state", state)], n as f64);
    }

    out.family(
        "fastworker_result_cache_entries",
        "gauge",
        "Finished tasks' results kept.",
    );
    out.sample(
        "fastworker_result_cache_entries",
        &[],
        s.stats.cached_results as f64,
    );
    out.family(
        "fastworker_result_cache_bytes",
        "gauge",
        "The bytes the kept results take, as encoded.",
    );
    out.sample(
        "fastworker_result_cache_bytes",
        &[],
        s.stats.cached_bytes as f64,
    );
    out.family(
        "fastworker_result_cache_evictions_total",
        "counter",
        "Results pushed out of the cache by its bounds.",
    );
    out.sample(
        "fastworker_result_cache_evictions_total",
        &[],
        c.cache_evictions as f64,
    );
    out.family(
        "fastworker_result_cache_expired_total",
        "counter",
        "Results dropped when their TTL ran out.",
    );
    out.sample(
        "fastworker_result_cache_expired_total",
        &[],
        c.expired as f64,
    );

    if let Some((commits, bytes, size)) = s.journal {
        out.family(
            "fastworker_journal_commits_total",
            "counter",
            "Groups committed to the journal (each one fsync).",
        );
        out.sample("fastworker_journal_commits_total", &[], commits as f64);
        out.family(
            "fastworker_journal_bytes_total",
            "counter",
            "Bytes committed to the journal.",
        );
        out.sample("fastworker_journal_bytes_total", &[], bytes as f64);
        out.family(
            "fastworker_journal_size_bytes",
            "gauge",
            "The journal's length now (compactions shrink it).",
        );
        out.sample("fastworker_journal_size_bytes", &[], size as f64);
    }
    out.family(
        "fastworker_gui_sse_clients",
        "gauge",
        "Clients reading the GUI's event stream.",
    );
    out.sample("fastworker_gui_sse_clients", &[], s.sse_clients as f64);
    out.family(
        "fastworker_requests_denied_total",
        "counter",
        "Requests on the NNG sockets refused for a missing or wrong token.",
    );
    out.sample("fastworker_requests_denied_total", &[], s.denied as f64);
    out.0
}

fn histograms(
    out: &mut Text,
    name: &str,
    help: &str,
    by_task: &std::collections::HashMap<String, Histogram>,
) {
    out.family(name, "histogram", help);
    let mut tasks: Vec<&String> = by_task.keys().collect();
    tasks.sort();
    let bucket = format!("{name}_bucket");
    for task in tasks {
        let h = &by_task[task];
        for (n, bound) in h.buckets.iter().zip(BUCKETS) {
            out.sample(
                &bucket,
                &[("task", task), ("le", &bound.to_string())],
                *n as f64,
            );
        }
        out.sample(&bucket, &[("task", task), ("le", "+Inf")], h.count as f64);
        out.sample(&format!("{name}_sum"), &[("task", task)], h.sum);
        out.sample(&format!("{name}_count"), &[("task", task)], h.count as f64);
    }
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", escape(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
