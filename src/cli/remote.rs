//! The commands that talk to a control plane: `submit`, `status`, `cancel`,
//! `list --remote`.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::ListArgs;
use super::args::{parse_arg, parse_kwargs};
use super::commands::{EXIT_FAILED, EXIT_UNUSABLE, print_table};
use super::{parse_duration, shown};
use crate::client::{Client, ClientError};
use crate::manifest::Priority;
use crate::protocol::{Status, StatusReply, WireTask};

/// Exit code when a blocking submit stops waiting before the task ends.
const EXIT_STILL_RUNNING: u8 = 124;

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The control plane's base address
    #[arg(
        long,
        env = "FASTWORKER_BASE_ADDRESS",
        default_value = crate::protocol::DEFAULT_BASE_ADDRESS
    )]
    pub base_address: String,
    /// Find the control plane through its announcements on this address instead
    #[arg(long, value_name = "ADDRESS")]
    pub discovery_address: Option<String>,
    /// How long to wait for the control plane to answer a query
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub token: TokenArgs,
}

impl ConnectArgs {
    pub(super) async fn client(&self) -> Result<Client, ClientError> {
        let token = self.token.token().map_err(ClientError::Address)?;
        let client = match &self.discovery_address {
            Some(discovery) => Client::discover(discovery, self.connect_timeout).await,
            None => Client::new(&self.base_address, self.connect_timeout),
        }?;
        Ok(client.with_auth(token))
    }
}

/// The token a control plane requires of every request (see
/// docs/security.md). The value on the command line shows in `ps`: prefer
/// the file or the environment.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The control plane's token, sent with every request
    #[arg(
        long,
        env = "FASTWORKER_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub auth_token: Option<String>,
    /// Read the token from this file (its first line)
    #[arg(
        long,
        env = "FASTWORKER_AUTH_TOKEN_FILE",
        conflicts_with = "auth_token",
        value_name = "PATH"
    )]
    pub auth_token_file: Option<std::path::PathBuf>,
}

impl TokenArgs {
    pub(super) fn token(&self) -> Result<Option<crate::auth::Token>, String> {
        token_from(self.auth_token.as_deref(), self.auth_token_file.as_deref())
            .map_err(|e| format!("--auth-token: {e}"))
    }
}

/// A token from a flag's value or file, if either is given.
pub(super) fn token_from(
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<crate::auth::Token>, String> {
    match (value, file) {
        (Some(value), _) => crate::auth::Token::new(value).map(Some),
        (None, Some(file)) => crate::auth::Token::from_file(file).map(Some),
        (None, None) => Ok(None),
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The task's name (or --task-name)
    #[arg(required_unless_present_any = ["task_name", "batch"], conflicts_with = "task_name")]
    pub task: Option<String>,
    /// Arguments: JSON where valid JSON, otherwise strings (or --args)
    #[arg(allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// The task's name (FastWorker's form)
    #[arg(long)]
    pub task_name: Option<String>,
    /// Arguments (FastWorker's form: --args 5 3)
    #[arg(long = "args", num_args = 1.., allow_negative_numbers = true, value_name = "ARG")]
    pub flag_args: Vec<String>,
    /// A keyword argument, key=value (value parsed like an argument); repeatable
    #[arg(long = "kwarg", value_name = "KEY=VALUE")]
    pub kwargs: Vec<String>,
    /// Priority [default: the task's priority in the control plane's manifest]
    #[arg(long, value_enum)]
    pub priority: Option<Priority>,
    /// Print the task id as soon as the task is accepted, instead of waiting
    #[arg(long)]
    pub non_blocking: bool,
    /// How long to wait for the result (the task goes on running after that)
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// The task id to use (a resubmit with a known id never runs it twice) [default: a new UUID]
    #[arg(long)]
    pub id: Option<String>,
    /// Run the task this many seconds from now (answered at once with its id)
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["eta", "json", "non_blocking", "timeout"], allow_negative_numbers = true)]
    pub countdown: Option<f64>,
    /// Run the task at this time, RFC 3339 (answered at once with its id)
    #[arg(long, value_name = "TIME", conflicts_with_all = ["json", "non_blocking", "timeout"])]
    pub eta: Option<String>,
    /// Submit the tasks in FILE instead (JSON lines: {"task_name", "args",
    /// "kwargs", "priority", "eta", "countdown", "id"}; - for stdin); prints their ids
    #[arg(long, value_name = "FILE", conflicts_with_all = ["task", "task_name", "id", "countdown", "eta", "flag_args", "kwargs", "json", "non_blocking", "timeout"])]
    pub batch: Option<std::path::PathBuf>,
    /// With --batch: tasks per message (each message is accepted whole or not at all)
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Print FastWorker's TaskResult record as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct TaskIdArgs {
    /// The task id (or --task-id)
    #[arg(
        required_unless_present = "task_id_flag",
        conflicts_with = "task_id_flag"
    )]
    pub task_id: Option<String>,
    /// The task id (FastWorker's form)
    #[arg(long = "task-id", value_name = "TASK_ID")]
    pub task_id_flag: Option<String>,
    /// Print the reply as JSON (status: the task's whole record; cancel: the cancel reply)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl TaskIdArgs {
    fn id(&self) -> &str {
        self.task_id
            .as_deref()
            .or(self.task_id_flag.as_deref())
            .unwrap_or_default()
    }
}

pub(super) fn unreachable(e: &ClientError, connect: &ConnectArgs) -> u8 {
    eprintln!("error: {e}");
    let dial_failed = matches!(
        e,
        ClientError::Transport(crate::transport::TransportError::Dial { .. })
    );
    if dial_failed && connect.discovery_address.is_none() {
        eprintln!(
            "is `fastworker control-plane` running with --base-address {}?",
            connect.base_address
        );
    }
    EXIT_UNUSABLE
}

pub async fn submit(args: SubmitArgs) -> u8 {
    if let Some(file) = &args.batch {
        return super::batch::submit_batch(&args, file).await;
    }
    let name = args
        .task
        .clone()
        .or(args.task_name.clone())
        .unwrap_or_default();
    let eta = match (args.countdown, &args.eta) {
        (Some(secs), _) => match countdown_eta(secs) {
            Some(eta) => Some(eta),
            None => {
                eprintln!(
                    "error: --countdown takes seconds from now, from 0 up to 100 years (got {secs:e})"
                );
                return EXIT_UNUSABLE;
            }
        },
        (None, Some(eta)) => match crate::protocol::parse_time(eta) {
            Ok(t) => Some(t.to_rfc3339()),
            Err(e) => {
                eprintln!("error: --eta: {e}");
                return EXIT_UNUSABLE;
            }
        },
        (None, None) => None,
    };
    let kwargs = match parse_kwargs(&args.kwargs) {
        Ok(kwargs) => kwargs,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_UNUSABLE;
        }
    };
    if let Some(id) = &args.id
        && let Err(e) = crate::protocol::check_task_id(id)
    {
        eprintln!("error: --id: {}", shown(&e));
        return EXIT_UNUSABLE;
    }
    let task = WireTask {
        id: args
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        name: name.clone(),
        args: args
            .args
            .iter()
            .chain(&args.flag_args)
            .map(|a| parse_arg(a))
            .collect(),
        kwargs,
        priority: None,
        eta,
        callback: None,
        reply: Default::default(),
    };
    let delayed = task.eta.is_some();
    let task_id = task.id.clone();
    let client = match args.connect.client().await {
        Ok(client) => client,
        Err(e) => return unreachable(&e, &args.connect),
    };

    if args.non_blocking || delayed {
        return match client.submit_ack(task, args.priority).await {
            Ok(ack) if ack.accepted => {
                println!("{}", ack.task_id);
                0
            }
            Ok(ack) => {
                eprintln!("error: {}", shown(&ack.error.unwrap_or_default()));
                EXIT_UNUSABLE
            }
            Err(e) => unreachable(&e, &args.connect),
        };
    }

    let waiting = client.submit(task, args.priority, args.timeout);
    let reply = tokio::select! {
        reply = waiting => reply,
        _ = tokio::signal::ctrl_c() => {
            let fate = fate(&client, &task_id).await;
            eprintln!("stopped waiting; {fate}");
            return super::commands::EXIT_CANCELLED;
        }
    };
    let result = match reply {
        Ok(result) => result,
        Err(ClientError::Transport(crate::transport::TransportError::Timeout { .. })) => {
            let fate = fate(&client, &task_id).await;
            eprintln!(
                "no result within {}; {fate}",
                humantime::format_duration(args.timeout)
            );
            return EXIT_STILL_RUNNING;
        }
        Err(e) => return unreachable(&e, &args.connect),
    };
    if args.json {
        println!("{}", serde_json::to_string(&result).unwrap_or_default());
        return match result.status {
            Status::Success => 0,
            _ if result.refused => EXIT_UNUSABLE,
            _ => EXIT_FAILED,
        };
    }
    match result.status {
        Status::Success => {
            println!("{}", result.result);
            0
        }
        _ if result.refused => {
            eprintln!("error: {}", shown(&result.error.unwrap_or_default()));
            EXIT_UNUSABLE
        }
        status => {
            eprintln!(
                "error: task '{name}' ({task_id}) {}: {}",
                status.as_str(),
                shown(&result.error.unwrap_or_default())
            );
            EXIT_FAILED
        }
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

pub async fn status(args: TaskIdArgs) -> u8 {
    let client = match args.connect.client().await {
        Ok(client) => client,
        Err(e) => return unreachable(&e, &args.connect),
    };
    let reply = match client.status(args.id()).await {
        Ok(reply) => reply,
        Err(e) => return unreachable(&e, &args.connect),
    };
    let Some(task) = reply.task else {
        eprintln!("error: {}", shown(&reply.error.unwrap_or_default()));
        return EXIT_FAILED;
    };
    if args.json {
        println!("{}", serde_json::to_string(&task).unwrap_or_default());
        return 0;
    }
    println!("{}  {}  {}", task.task_id, task.name, task.status.as_str());
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
    0
}

pub async fn cancel(args: TaskIdArgs) -> u8 {
    let client = match args.connect.client().await {
        Ok(client) => client,
        Err(e) => return unreachable(&e, &args.connect),
    };
    match client.cancel(args.id()).await {
        Ok(reply) if args.json => {
            println!("{}", serde_json::to_string(&reply).unwrap_or_default());
            if reply.cancelled { 0 } else { EXIT_FAILED }
        }
        Ok(reply) if reply.cancelled => {
            match reply.status {
                Some(Status::Running) => println!(
                    "cancelling {}: it was running; its process group is being stopped",
                    reply.task_id
                ),
                _ => println!("cancelled {}", reply.task_id),
            }
            0
        }
        Ok(reply) => {
            eprintln!("error: {}", shown(&reply.error.unwrap_or_default()));
            EXIT_FAILED
        }
        Err(e) => unreachable(&e, &args.connect),
    }
}

pub async fn list(args: &ListArgs) -> u8 {
    let client = match args.connect.client().await {
        Ok(client) => client,
        Err(e) => return unreachable(&e, &args.connect),
    };
    let list = match client.list().await {
        Ok(list) => list,
        Err(e) => return unreachable(&e, &args.connect),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_value(&list.tasks).unwrap_or(Value::Null)
        );
        return 0;
    }
    let rows: Vec<[String; 4]> = list
        .tasks
        .into_iter()
        .map(|t| [t.name, t.runs, t.mode, t.description.unwrap_or_default()])
        .collect();
    print_table(&["NAME", "RUNS", "MODE", "DESCRIPTION"], &rows);
    0
}

#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Print the workers as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `fastworker workers`: the control plane's own slots and each subworker.
pub async fn workers(args: &WorkersArgs) -> u8 {
    let client = match args.connect.client().await {
        Ok(client) => client,
        Err(e) => return unreachable(&e, &args.connect),
    };
    let list = match client.workers().await {
        Ok(list) => list,
        Err(e) => return unreachable(&e, &args.connect),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_value(&list.workers).unwrap_or(Value::Null)
        );
        return 0;
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
    0
}

/// The time `secs` seconds from now, as RFC 3339; `None` for a negative,
/// infinite or absurdly large countdown.
pub(super) fn countdown_eta(secs: f64) -> Option<String> {
    if !(0.0..=100.0 * 365.0 * 86_400.0).contains(&secs) {
        return None;
    }
    let delta = chrono::TimeDelta::try_milliseconds((secs * 1000.0) as i64)?;
    chrono::Utc::now()
        .checked_add_signed(delta)
        .map(|t| t.to_rfc3339())
}
