//! `fastworker submit --batch FILE`: many tasks from JSON lines.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::args::{SubmitArgs, countdown_eta};
use super::error::{CliError, CliResult, EXIT_FAILED};
use crate::manifest::Priority;
use crate::protocol::{self, WireTask};

/// One line of a batch file: FastWorker's `submit_batch` task spec.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(alias = "name")]
    task_name: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    eta: Option<String>,
    #[serde(default)]
    countdown: Option<f64>,
    #[serde(default)]
    id: Option<String>,
}

/// Reads and checks the whole file first (an error names its line), then
/// sends it in messages of `--batch-size` tasks, each accepted whole or not
/// at all, and prints the ids of the accepted tasks.
pub async fn submit_batch(args: &SubmitArgs, file: &Path) -> CliResult {
    let tasks = read(file, args.priority).map_err(CliError::Unusable)?;
    let client = args
        .connect
        .client()
        .await
        .map_err(|e| CliError::unreachable(&e, &args.connect))?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(tasks.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} tasks submitted ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut accepted = 0usize;
    for chunk in tasks.chunks(args.batch_size as usize) {
        let reply = client
            .submit_batch(chunk, args.priority.unwrap_or(Priority::Normal))
            .await;
        match reply {
            Ok(reply) if reply.batch_accepted => {
                for id in &reply.task_ids {
                    println!("{id}");
                }
                if let Some(note) = &reply.note {
                    eprintln!("note: {}", super::output::shown(note));
                }
                accepted += chunk.len();
                if let Some(bar) = &bar {
                    bar.inc(chunk.len() as u64);
                }
            }
            Ok(reply) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                let error = format!(
                    "tasks {}–{} refused: {} ({accepted} of {} accepted before them)",
                    accepted + 1,
                    accepted + chunk.len(),
                    reply.error.unwrap_or_default(),
                    tasks.len()
                );
                return Err(if accepted == 0 {
                    CliError::Unusable(error)
                } else {
                    CliError::Failed(error)
                });
            }
            Err(e) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                let unreachable = CliError::unreachable(&e, &args.connect);
                if accepted == 0 {
                    return Err(unreachable);
                }
                unreachable.print();
                eprintln!(
                    "{accepted} of {} tasks were accepted before that",
                    tasks.len()
                );
                return Err(CliError::Exit(EXIT_FAILED));
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(())
}

fn read(file: &Path, priority: Option<Priority>) -> Result<Vec<WireTask>, String> {
    let name = file.display().to_string();
    let reader: Box<dyn BufRead> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file).map_err(|e| format!("cannot read {name}: {e}"))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut tasks = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {name}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: String| format!("{name}:{}: {e}", n + 1);
        let spec: Spec = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        let eta = match (spec.countdown, spec.eta) {
            (Some(secs), _) => Some(countdown_eta(secs).ok_or_else(|| {
                at(format!(
                    "countdown takes seconds from now, from 0 up to 100 years (got {secs:e})"
                ))
            })?),
            (None, Some(eta)) => Some(protocol::parse_time(&eta).map_err(at)?.to_rfc3339()),
            (None, None) => None,
        };
        if let Some(id) = &spec.id {
            protocol::check_task_id(id).map_err(at)?;
        }
        tasks.push(WireTask {
            id: spec.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            name: spec.task_name,
            args: spec.args,
            kwargs: spec.kwargs,
            priority: spec.priority.or(priority),
            eta,
            callback: None,
            reply: Default::default(),
            traceparent: super::args::env_traceparent(),
            tracestate: std::env::var("TRACESTATE").ok(),
        });
    }
    if tasks.is_empty() {
        return Err(format!("{name} holds no tasks"));
    }
    let mut ids = std::collections::HashSet::new();
    if let Some(dup) = tasks.iter().find(|t| !ids.insert(t.id.as_str())) {
        return Err(format!("{name}: task id {} appears twice", dup.id));
    }
    Ok(tasks)
}
