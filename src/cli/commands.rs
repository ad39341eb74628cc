//! The commands: `run`, `list` and `check`.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::args::{parse_arg, parse_kwargs};
use super::{Cli, Command, ListArgs, RunArgs};
use crate::executor::{Execution, Executor, Outcome, TaskRequest, retry};
use crate::manifest::{HowToRun, Manifest, ManifestError};

pub(super) const EXIT_FAILED: u8 = 1;
pub(super) const EXIT_UNUSABLE: u8 = 2;
pub(super) const EXIT_CANCELLED: u8 = 130;

pub async fn dispatch(cli: Cli) -> u8 {
    let manifest = cli.manifest.as_deref();
    match cli.command {
        Command::Run(args) => run(manifest, args).await,
        Command::ControlPlane(args) => super::serve::control_plane(manifest, args).await,
        Command::Subworker(args) => super::serve::subworker(manifest, args).await,
        Command::Workers(args) => super::remote::workers(&args).await,
        Command::Submit(args) => super::remote::submit(args).await,
        Command::Status(args) => super::remote::status(args).await,
        Command::Cancel(args) => super::remote::cancel(args).await,
        Command::List(args) if args.remote => super::remote::list(&args).await,
        Command::List(args) => list(manifest, &args),
        Command::Check => check(manifest),
        Command::Journal(args) => super::journal::journal(&args),
    }
}

pub(super) fn report_manifest_error(e: &ManifestError) {
    match e {
        ManifestError::Invalid { problems } => {
            for problem in problems {
                eprintln!("error: {problem}");
            }
        }
        other => eprintln!("error: {other}"),
    }
}

async fn run(manifest: Option<&Path>, args: RunArgs) -> u8 {
    let manifest = match Manifest::discover(manifest) {
        Ok(m) => m,
        Err(e) => {
            report_manifest_error(&e);
            return EXIT_UNUSABLE;
        }
    };
    let Some(spec) = manifest.task(&args.task) else {
        eprintln!("error: {}", manifest.unknown_task(&args.task));
        return EXIT_UNUSABLE;
    };
    let mut spec = Arc::clone(spec);
    if let Some(timeout) = args.timeout {
        Arc::make_mut(&mut spec).timeout = Some(timeout);
    }
    let kwargs = match parse_kwargs(&args.kwargs) {
        Ok(kwargs) => kwargs,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_UNUSABLE;
        }
    };
    let request = TaskRequest::new(
        &args.task,
        args.args.iter().map(|a| parse_arg(a)).collect(),
        kwargs,
    );

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
        return EXIT_CANCELLED;
    };
    if args.json {
        print_result(&record_json(&attempts).to_string());
    } else if let Outcome::Success { result } = &last.outcome {
        print_result(&result.to_string());
    } else {
        print_failure(last);
    }
    match &last.outcome {
        Outcome::Success { .. } => 0,
        Outcome::Cancelled => EXIT_CANCELLED,
        _ => EXIT_FAILED,
    }
}

/// Prints a result line. A closed stdout (`run … | head -c0`) is not an
/// error worth a panic: `run` keeps SIGPIPE ignored because it writes to its
/// task's stdin, so the write error is dropped here instead.
fn print_result(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
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

fn print_failure(e: &Execution) {
    use super::shown;
    eprintln!("error: task '{}' {}", e.name, shown(&e.outcome.to_string()));
    let traceback = match &e.outcome {
        Outcome::Failed {
            error: Some(error), ..
        } => error.traceback.as_deref().filter(|t| !t.trim().is_empty()),
        _ => None,
    };
    if let Some(traceback) = traceback {
        eprint!("{}", shown(traceback.trim_end()));
        eprintln!();
    } else if !e.stderr.trim().is_empty() {
        const LINES: usize = 20;
        let lines: Vec<&str> = e.stderr.trim_end().lines().collect();
        let last = &lines[lines.len().saturating_sub(LINES)..];
        eprintln!("stderr (last {} lines):", last.len());
        for line in last {
            eprintln!("  {}", shown(line));
        }
    }
}

fn list(manifest: Option<&Path>, args: &ListArgs) -> u8 {
    let manifest = match Manifest::discover(manifest) {
        Ok(m) => m,
        Err(e) => {
            report_manifest_error(&e);
            return EXIT_UNUSABLE;
        }
    };
    if args.json {
        let tasks: Vec<Value> = manifest
            .tasks
            .values()
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
                })
            })
            .collect();
        println!("{}", Value::Array(tasks));
        return 0;
    }
    let rows: Vec<[String; 4]> = manifest
        .tasks
        .values()
        .map(|t| {
            let how = t.how.describe(&manifest.dir);
            [
                t.name.clone(),
                how,
                t.mode.to_string(),
                t.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["NAME", "RUNS", "MODE", "DESCRIPTION"], &rows);
    0
}

pub(super) fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(*header);
    for row in rows {
        line(std::array::from_fn(|i| row[i].as_str()));
    }
}

fn check(manifest: Option<&Path>) -> u8 {
    let manifest = match Manifest::discover(manifest) {
        Ok(m) => m,
        Err(e) => {
            report_manifest_error(&e);
            return EXIT_FAILED;
        }
    };
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
    println!(
        "{}: ok, {} task{}",
        manifest.path.display(),
        manifest.tasks.len(),
        if manifest.tasks.len() == 1 { "" } else { "s" }
    );
    0
}
