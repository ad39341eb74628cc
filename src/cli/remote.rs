//! The commands that talk to a control plane: `submit`, `status`, `cancel`,
//! `list --remote`, `workers`.

use serde_json::Value;

use super::args::{
    ConnectArgs, ListArgs, SubmitArgs, TaskIdArgs, WorkersArgs, countdown_eta, parse_arg,
    parse_fastworker_arg, parse_kwargs,
};
use super::error::{CliError, CliResult, EXIT_FAILED, EXIT_UNUSABLE};
use super::output::{print_table, shown};
use crate::client::{Client, ClientError};
use crate::protocol::{Status, StatusReply, WireTask};

/// A client of the control plane `connect` names.
async fn connect(connect: &ConnectArgs) -> Result<Client, CliError> {
    connect
        .client()
        .await
        .map_err(|e| CliError::unreachable(&e, connect))
}

/// The task a submit's arguments describe.
fn task(args: &SubmitArgs) -> Result<WireTask, CliError> {
    let name = args
        .task
        .clone()
        .or(args.task_name.clone())
        .unwrap_or_default();
    let eta = match (args.countdown, &args.eta) {
        (Some(secs), _) => Some(countdown_eta(secs).ok_or_else(|| {
            CliError::Unusable(format!(
                "--countdown takes seconds from now, from 0 up to 100 years (got {secs:e})"
            ))
        })?),
        (None, Some(eta)) => Some(
            crate::protocol::parse_time(eta)
                .map_err(|e| CliError::Unusable(format!("--eta: {e}")))?
                .to_rfc3339(),
        ),
        (None, None) => None,
    };
    let kwargs = parse_kwargs(&args.kwargs).map_err(CliError::Unusable)?;
    if let Some(id) = &args.id {
        crate::protocol::check_task_id(id).map_err(|e| CliError::Unusable(format!("--id: {e}")))?;
    }
    Ok(WireTask {
        id: args
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        name,
        args: args
            .args
            .iter()
            .map(|a| parse_arg(a))
            .chain(args.flag_args.iter().map(|a| parse_fastworker_arg(a)))
            .collect(),
        kwargs,
        priority: None,
        eta,
        callback: None,
        reply: Default::default(),
        traceparent: super::args::env_traceparent(),
        tracestate: std::env::var("TRACESTATE").ok(),
    })
}

pub async fn submit(args: SubmitArgs) -> CliResult {
    let task = task(&args)?;
    let (name, task_id, delayed) = (task.name.clone(), task.id.clone(), task.eta.is_some());
    let client = connect(&args.connect).await?;

    if args.non_blocking || delayed {
        let ack = client
            .submit_ack(task, args.priority)
            .await
            .map_err(|e| CliError::unreachable(&e, &args.connect))?;
        if !ack.accepted {
            return Err(CliError::Unusable(ack.error.unwrap_or_default()));
        }
        println!("{}", ack.task_id);
        if let Some(note) = &ack.note {
            eprintln!("note: {}", shown(note));
        }
        return Ok(());
    }

    let waiting = client.submit(task, args.priority, args.timeout);
    let reply = tokio::select! {
        reply = waiting => reply,
        _ = tokio::signal::ctrl_c() => {
            return Err(CliError::Interrupted(format!("stopped waiting; {}", fate(&client, &task_id).await)));
        }
    };
    let result = match reply {
        Ok(result) => result,
        Err(ClientError::Transport(crate::transport::TransportError::Timeout { .. })) => {
            return Err(CliError::StillRunning(format!(
                "no result within {}; {}",
                humantime::format_duration(args.timeout),
                fate(&client, &task_id).await
            )));
        }
        Err(e) => return Err(CliError::unreachable(&e, &args.connect)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&result).unwrap_or_default());
        return match result.status {
            Status::Success => Ok(()),
            _ if result.refused => Err(CliError::Exit(EXIT_UNUSABLE)),
            _ => Err(CliError::Exit(EXIT_FAILED)),
        };
    }
    match result.status {
        Status::Success => {
            println!("{}", result.result);
            Ok(())
        }
        _ if result.refused => Err(CliError::Unusable(result.error.unwrap_or_default())),
        // Taken while the control plane stops: it waits in the journal.
        status if !status.is_final() => Err(CliError::StillRunning(format!(
            "task '{name}' ({task_id}) {}: {}",
            status.as_str(),
            result.error.unwrap_or_default()
        ))),
        status => Err(CliError::Failed(format!(
            "task '{name}' ({task_id}) {}: {}",
            status.as_str(),
            result.error.unwrap_or_default()
        ))),
    }
}

/// What became of a task whose submit got no answer: whether the control
/// plane has it (and it goes on), or never took it.
async fn fate(client: &Client, task_id: &str) -> String {
    match client.status(task_id).await {
        Ok(StatusReply {
            task: Some(task), ..
        }) => format!(
            "task {task_id} goes on ({}; fastworker status {task_id}, fastworker cancel {task_id})",
            task.status.as_str()
        ),
        Ok(_) => format!(
            "task {task_id} was not accepted: the control plane does not know it (submit it again)"
        ),
        Err(e) => format!(
            "whether task {task_id} was accepted is unknown: the control plane does not answer ({e})"
        ),
    }
}

pub async fn status(args: TaskIdArgs) -> CliResult {
    let client = connect(&args.connect).await?;
    let reply = client
        .status(args.id())
        .await
        .map_err(|e| CliError::unreachable(&e, &args.connect))?;
    let Some(task) = reply.task else {
        return Err(CliError::Failed(reply.error.unwrap_or_default()));
    };
    if args.json {
        println!("{}", serde_json::to_string(&task).unwrap_or_default());
        return Ok(());
    }
    println!("{}  {}  {}", task.task_id, task.name, task.status.as_str());
    if let Some(trace) = &task.trace {
        println!("  trace {}", trace.trace_id);
    }
    if task.status == Status::Success {
        println!("  result: {}", task.result);
    }
    if let Some(error) = &task.error {
        println!("  error: {}", shown(error));
    }
    let mut facts = vec![format!("priority {}", task.priority)];
    if let (Status::Scheduled, Some(eta)) = (task.status, task.eta) {
        facts.push(format!(
            "runs at {}",
            eta.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ));
    }
    if !task.attempts.is_empty() {
        facts.push(format!("attempts {}", task.attempts.len()));
    }
    facts.push(format!(
        "submitted {}",
        task.submitted_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    ));
    if let (Some(started), Some(finished)) = (task.started_at, task.finished_at) {
        let took = (finished - started).to_std().unwrap_or_default();
        facts.push(format!("took {:.1} ms", took.as_secs_f64() * 1e3));
    }
    println!("  {}", facts.join(", "));
    Ok(())
}

pub async fn cancel(args: TaskIdArgs) -> CliResult {
    let client = connect(&args.connect).await?;
    let reply = client
        .cancel(args.id())
        .await
        .map_err(|e| CliError::unreachable(&e, &args.connect))?;
    if args.json {
        println!("{}", serde_json::to_string(&reply).unwrap_or_default());
        return if reply.cancelled {
            Ok(())
        } else {
            Err(CliError::Exit(EXIT_FAILED))
        };
    }
    if !reply.cancelled {
        return Err(CliError::Failed(reply.error.unwrap_or_default()));
    }
    match reply.status {
        Some(Status::Running) => println!(
            "cancelling {}: it was running; its process group is being stopped",
            reply.task_id
        ),
        _ => println!("cancelled {}", reply.task_id),
    }
    Ok(())
}

pub async fn list(args: &ListArgs) -> CliResult {
    let client = connect(&args.connect).await?;
    let list = client
        .list()
        .await
        .map_err(|e| CliError::unreachable(&e, &args.connect))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_value(&list.tasks).unwrap_or(Value::Null)
        );
        return Ok(());
    }
    let rows: Vec<[String; 4]> = list
        .tasks
        .into_iter()
        .map(|t| [t.name, t.runs, t.mode, t.description.unwrap_or_default()])
        .collect();
    print_table(&["NAME", "RUNS", "MODE", "DESCRIPTION"], &rows);
    Ok(())
}

/// `fastworker reload`: the control plane loads its manifest again; what
/// changed, or every problem.
pub async fn reload(args: &WorkersArgs) -> CliResult {
    let client = connect(&args.connect).await?;
    let reply = client
        .reload()
        .await
        .map_err(|e| CliError::unreachable(&e, &args.connect))?;
    if args.json {
        println!("{}", serde_json::to_string(&reply).unwrap_or_default());
    } else if let Some(report) = &reply.report {
        println!("reloaded: {report}");
    }
    if reply.reloaded {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "reload refused, the manifest stays as it was:\n{}",
            reply
                .errors
                .iter()
                .map(|e| format!("  {}", shown(e)))
                .collect::<Vec<_>>()
                .join("\n")
        )))
    }
}

pub async fn schedules(args: &WorkersArgs) -> CliResult {
    let client = connect(&args.connect).await?;
    let list = client
        .schedules()
        .await
        .map_err(|e| CliError::unreachable(&e, &args.connect))?;
    if args.json {
        println!("{}", Value::Array(list.schedules));
        return Ok(());
    }
    let text = |v: &Value, key: &str| match &v[key] {
        Value::Null => "-".to_owned(),
        Value::String(s) => shown(s).into_owned(),
        other => other.to_string(),
    };
    let rows: Vec<[String; 7]> = list
        .schedules
        .iter()
        .map(|s| {
            let last = match (&s["last_task"], &s["last_status"]) {
                (Value::String(id), Value::String(status)) => {
                    format!("{} {}", shown(id), shown(status))
                }
                (Value::String(id), _) => format!("{} (result no longer kept)", shown(id)),
                _ => "-".to_owned(),
            };
            let limit = match (&s["count"], &s["fires"]) {
                (Value::Number(count), fires) => format!("{fires}/{count}"),
                (_, fires) => fires.to_string(),
            };
            [
                text(s, "name"),
                format!("{} ({})", text(s, "rule"), text(s, "timezone")),
                match &s["next"] {
                    Value::Null => "over".to_owned(),
                    _ => text(s, "next"),
                },
                last,
                limit,
                text(s, "skipped"),
                text(s, "missed"),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME", "SCHEDULE", "NEXT", "LAST RUN", "FIRES", "SKIPPED", "MISSED",
        ],
        &rows,
    );
    Ok(())
}

pub async fn workers(args: &WorkersArgs) -> CliResult {
    let client = connect(&args.connect).await?;
    let list = client
        .workers()
        .await
        .map_err(|e| CliError::unreachable(&e, &args.connect))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_value(&list.workers).unwrap_or(Value::Null)
        );
        return Ok(());
    }
    let now = chrono::Utc::now();
    let rows: Vec<[String; 7]> = list
        .workers
        .iter()
        .map(|w| {
            let seen = match w.last_seen {
                Some(at) if w.kind == "subworker" => {
                    let ago = (now - at).to_std().unwrap_or_default();
                    format!("{:.1}s ago", ago.as_secs_f64())
                }
                Some(_) => "now".to_owned(),
                None => "never".to_owned(),
            };
            [
                w.worker_id.clone(),
                w.address.clone(),
                w.status.clone(),
                format!("{}/{}", w.load, w.capacity),
                w.tasks_done.to_string(),
                seen,
                w.tasks.join(","),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "ADDRESS",
            "STATUS",
            "LOAD",
            "DONE",
            "LAST SEEN",
            "TASKS",
        ],
        &rows,
    );
    for w in &list.workers {
        for warning in &w.warnings {
            println!("warning: {}", shown(warning));
        }
    }
    Ok(())
}
