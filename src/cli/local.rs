//! The commands that need no control plane: `run`, `list` and `check`.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::args::{ListArgs, RunArgs, parse_arg, parse_kwargs};
use super::error::{CliError, CliResult, EXIT_FAILED, EXIT_UNUSABLE};
use super::output::{print_result, print_table};
use crate::executor::{Execution, Executor, Outcome, TaskRequest, retry};
use crate::manifest::HowToRun;

pub async fn run(manifest: &super::Sources, args: RunArgs) -> CliResult {
    let manifest = manifest
        .load()
        .map_err(|e| CliError::manifest(&e, EXIT_UNUSABLE))?;
    let Some(spec) = manifest.task(&args.task) else {
        return Err(CliError::Unusable(manifest.unknown_task(&args.task)));
    };
    let mut spec = Arc::clone(spec);
    if let Some(timeout) = args.timeout {
        Arc::make_mut(&mut spec).timeout = Some(timeout);
    }
    let kwargs = parse_kwargs(&args.kwargs).map_err(CliError::Unusable)?;
    let mut request = TaskRequest::new(
        &args.task,
        args.args.iter().map(|a| parse_arg(a)).collect(),
        kwargs,
    );
    // A traced script that runs `fastworker run`: its task is in the
    // script's trace (run exports no spans of its own).
    request.traceparent = super::args::env_traceparent();
    if request.traceparent.is_some() {
        request.tracestate = std::env::var("TRACESTATE").ok().filter(|s| !s.is_empty());
    }

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });

    let executor = Executor::new();
    let attempts = retry::run_with_retries(&executor, &spec, request, &cancel, |e, wait| {
        if let Some(wait) = wait {
            eprintln!(
                "attempt {} {}; retrying in {}",
                e.attempt,
                e.outcome,
                humantime::format_duration(round_ms(wait))
            );
        }
    })
    .await;
    executor.shutdown().await;

    let Some(last) = attempts.last() else {
        return Err(CliError::Interrupted("interrupted".to_owned()));
    };
    if args.json {
        print_result(&record_json(&attempts).to_string());
    } else if let Outcome::Success { result } = &last.outcome {
        print_result(&result.to_string());
    }
    match &last.outcome {
        Outcome::Success { .. } => Ok(()),
        Outcome::Cancelled if args.json => Err(CliError::Exit(super::error::EXIT_INTERRUPTED)),
        Outcome::Cancelled => Err(CliError::Cancelled(failure(last))),
        _ if args.json => Err(CliError::Exit(EXIT_FAILED)),
        _ => Err(CliError::Failed(failure(last))),
    }
}

fn round_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// The last attempt's record, with every attempt summarized under `attempts`.
fn record_json(attempts: &[Execution]) -> Value {
    let Some(last) = attempts.last() else {
        return Value::Null;
    };
    let mut record = serde_json::to_value(last).unwrap_or(Value::Null);
    let summaries: Vec<Value> = attempts
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            if let Some(map) = v.as_object_mut() {
                const PER_TASK: [&str; 5] = ["task_id", "name", "stderr", "result", "task_error"];
                map.retain(|key, _| !PER_TASK.contains(&key.as_str()));
            }
            v
        })
        .collect();
    if let Some(map) = record.as_object_mut() {
        map.insert("attempts".to_owned(), Value::Array(summaries));
    }
    record
}

/// How a failed run is told: its outcome, then its traceback or the last
/// lines of its stderr.
fn failure(e: &Execution) -> String {
    let mut text = format!("task '{}' {}", e.name, e.outcome);
    let traceback = match &e.outcome {
        Outcome::Failed {
            error: Some(error), ..
        } => error.traceback.as_deref().filter(|t| !t.trim().is_empty()),
        _ => None,
    };
    if let Some(traceback) = traceback {
        text.push('\n');
        text.push_str(traceback.trim_end());
    } else if !e.stderr.trim().is_empty() {
        const LINES: usize = 20;
        let lines: Vec<&str> = e.stderr.trim_end().lines().collect();
        let last = &lines[lines.len().saturating_sub(LINES)..];
        text.push_str(&format!("\nstderr (last {} lines):", last.len()));
        for line in last {
            text.push_str(&format!("\n  {line}"));
        }
    }
    text
}

pub fn list(manifest: &super::Sources, args: &ListArgs) -> CliResult {
    let manifest = manifest
        .load()
        .map_err(|e| CliError::manifest(&e, EXIT_UNUSABLE))?;
    let tasks: Vec<&crate::manifest::TaskSpec> = manifest
        .tasks
        .values()
        .map(AsRef::as_ref)
        .filter(|t| !args.list_periodic || t.schedule.is_some())
        .collect();
    let now = chrono::Utc::now();
    if args.json {
        let tasks: Vec<Value> = tasks
            .iter()
            .map(|t| {
                let how = match &t.how {
                    HowToRun::Command { argv } => json!({"kind": "command", "command": argv}),
                    HowToRun::Script { path, interpreter } => {
                        json!({"kind": "script", "script": path, "interpreter": interpreter})
                    }
                    HowToRun::Runner { runner, function } => {
                        json!({"kind": "runner", "runner": runner, "function": function})
                    }
                };
                json!({
                    "name": t.name,
                    "description": t.description,
                    "runs": how,
                    "program": t.launch.program.as_ref().ok(),
                    "mode": t.mode,
                    "pool_size": (t.mode == crate::manifest::Mode::Pool).then_some(t.pool_size),
                    "priority": t.priority,
                    "timeout_ms": t.timeout.map(|d| d.as_millis()),
                    "retries": t.retries,
                    "source": t.origin.describe(&manifest.path),
                    "schedule": t.schedule.as_ref().map(|s| schedule_json(s, now)),
                })
            })
            .collect();
        println!("{}", Value::Array(tasks));
        return Ok(());
    }
    if args.list_periodic {
        let rows: Vec<[String; 5]> = tasks
            .iter()
            .filter_map(|t| {
                let s = t.schedule.as_ref()?;
                let next = s.next_after(now, now).map_or_else(
                    || "none".to_owned(),
                    |n| n.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
                let bounds = match (s.count, s.until) {
                    (Some(c), Some(u)) => format!("{c} fires, until {}", u.to_rfc3339()),
                    (Some(c), None) => format!("{c} fires"),
                    (None, Some(u)) => format!("until {}", u.to_rfc3339()),
                    (None, None) => String::new(),
                };
                Some([
                    t.name.clone(),
                    format!("{} ({})", s.rule, s.timezone),
                    next,
                    bounds,
                    t.origin.describe(&manifest.path),
                ])
            })
            .collect();
        print_table(
            &["NAME", "SCHEDULE", "NEXT (FROM NOW)", "LIMITS", "SOURCE"],
            &rows,
        );
        return Ok(());
    }
    let rows: Vec<[String; 5]> = tasks
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.how.describe(&manifest.dir),
                t.mode.to_string(),
                t.origin.describe(&manifest.path),
                t.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["NAME", "RUNS", "MODE", "SOURCE", "DESCRIPTION"], &rows);
    Ok(())
}

/// A schedule as `list --json` shows it.
fn schedule_json(s: &crate::schedule::Schedule, now: chrono::DateTime<chrono::Utc>) -> Value {
    let (cron, every) = match &s.rule {
        crate::schedule::Rule::Cron { expr, .. } => (Some(expr.clone()), None),
        crate::schedule::Rule::Every(d) => (None, Some(d.as_secs_f64())),
    };
    json!({
        "cron": cron,
        "every_seconds": every,
        "timezone": s.timezone.name(),
        "count": s.count,
        "until": s.until,
        "next_from_now": s.next_after(now, now),
    })
}

pub fn check(sources: &super::Sources) -> CliResult {
    let manifest = sources
        .load()
        .map_err(|e| CliError::manifest(&e, EXIT_FAILED))?;
    // Which interpreter each runner uses, once per runner.
    let mut runners: std::collections::BTreeMap<(&str, String), Vec<&str>> = Default::default();
    for task in manifest.tasks.values() {
        match (&task.launch.program, &task.how) {
            (Ok(path), HowToRun::Runner { runner, .. }) => runners
                .entry((runner.as_str(), path.display().to_string()))
                .or_default()
                .push(&task.name),
            (Ok(_), _) => {}
            (Err(e), _) => println!("warning: task '{}': {e} (it will fail to start)", task.name),
        }
    }
    for ((runner, program), tasks) in &runners {
        println!("runner {runner}: {program} (for {})", tasks.join(", "));
    }
    if manifest.tasks.values().any(|t| t.limits.any()) {
        let cgroups = crate::executor::limits::Cgroups::detect();
        println!("resource limits: {}", cgroups.describe());
        for task in manifest.tasks.values() {
            if task.limits.processes.is_some() && !cgroups.processes_bound() {
                println!(
                    "warning: task '{}': max_processes does not bind here (running as root, with no pids cgroup to use)",
                    task.name
                );
            }
        }
    }
    let problems = manifest.import_problems();
    if !problems.is_empty() {
        return Err(CliError::Failed(problems.join("\n")));
    }
    println!(
        "{}: ok, {} task{}",
        sources.describe(&manifest),
        manifest.tasks.len(),
        if manifest.tasks.len() == 1 { "" } else { "s" }
    );
    Ok(())
}
