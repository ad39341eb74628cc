//! The command line's arguments: the client commands' flags, and how a
//! value on the command line becomes a task argument, a duration or a size.
//! Task arguments are JSON where they are valid JSON (`5` is a number,
//! `'{"a":1}'` an object, `true` a boolean), otherwise strings.

use std::time::Duration;

use clap::Args;

use crate::client::{Client, ClientError};
use crate::manifest::Priority;
use serde_json::{Map, Value};

/// The trace a submit continues: `TRACEPARENT` from the CLI's environment
/// (a traced script that runs `fastworker submit`); none starts a trace.
pub fn env_traceparent() -> Option<String> {
    std::env::var("TRACEPARENT")
        .ok()
        .filter(|t| crate::protocol::trace::parse_traceparent(t).is_some())
}

/// One positional argument: JSON where it is valid JSON, otherwise a string.
pub fn parse_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// One `--args` value, as FastWorker's CLI converts it (`convert_arg_type`):
/// `true`/`false` in any case are booleans, then an integer, then a float
/// (Python's `int()` and `float()`: surrounding spaces, a sign, `_` between
/// digits, exponents), otherwise the string as given. Unlike the
/// positional form, `[1, 2]` or `null` stay strings. A float that is not
/// finite (`nan`, `inf`) stays a string too: JSON cannot carry it.
pub fn parse_fastworker_arg(text: &str) -> Value {
    let lower = text.to_ascii_lowercase();
    if lower == "true" || lower == "false" {
        return Value::Bool(lower == "true");
    }
    let trimmed = text.trim();
    let plain = python_number(trimmed);
    if let Some(digits) = &plain {
        if let Ok(n) = digits.parse::<i64>() {
            return Value::from(n);
        }
        if let Ok(n) = digits.parse::<u64>() {
            return Value::from(n);
        }
        if !digits.contains(['.', 'e', 'E'])
            && let Ok(n) = digits.parse::<f64>()
            && n.is_finite()
        {
            // An integer beyond 64 bits: Python keeps it exact, JSON
            // readers mostly cannot; it goes as the nearest float.
            return Value::from(n);
        }
        if let Ok(n) = digits.parse::<f64>()
            && n.is_finite()
            && let Some(n) = serde_json::Number::from_f64(n)
        {
            return Value::Number(n);
        }
    }
    Value::String(text.to_owned())
}

/// `text` as a number Python's `int()` or `float()` would read, with its
/// `_` separators dropped; none if neither would.
fn python_number(text: &str) -> Option<String> {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') || body.contains("__") {
        return None;
    }
    let ok = body
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '_' | '.' | 'e' | 'E' | '+' | '-'));
    if !ok || !body.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    cleaned.parse::<f64>().ok().map(|_| cleaned)
}

/// `--kwarg key=value` pairs, values parsed like positional arguments.
pub fn parse_kwargs(pairs: &[String]) -> Result<Map<String, Value>, String> {
    let mut kwargs = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("--kwarg '{pair}' is not of the form key=value"));
        };
        if key.is_empty() {
            return Err(format!("--kwarg '{pair}' has an empty key"));
        }
        if kwargs.insert(key.to_owned(), parse_arg(value)).is_some() {
            return Err(format!("--kwarg '{key}' is given twice"));
        }
    }
    Ok(kwargs)
}

/// A size: `64MiB`, `1.5GB`, or a number of bytes; above 0.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let bytes = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("{e} (write e.g. 64MiB, or a number of bytes)"))?
        .as_u64();
    match usize::try_from(bytes) {
        Ok(0) => Err("a size must be above 0".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{bytes} bytes is too large")),
    }
}

/// A duration as the manifest takes it: humantime (`30s`) or seconds (`30`, `0.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|e| e.to_string()),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The task's name in the manifest
    pub task: String,
    /// Arguments: each is JSON where it is valid JSON (5, true, '{"a":1}'),
    /// otherwise a string. Put `--` before arguments that start with `-`.
    #[arg(allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// A keyword argument, key=value (value parsed like an argument); repeatable
    #[arg(long = "kwarg", value_name = "KEY=VALUE")]
    pub kwargs: Vec<String>,
    /// Print the whole result record as JSON (status, result, error, timings, attempts)
    #[arg(long)]
    pub json: bool,
    /// Override the task's timeout: 30s, 2m, 1h 30m, or a number of seconds
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the tasks as JSON
    #[arg(long)]
    pub json: bool,
    /// Only the tasks with a schedule, with their schedules (FastWorker's flag)
    #[arg(long)]
    pub list_periodic: bool,
    /// Ask a running control plane instead of reading the manifest
    #[arg(long)]
    pub remote: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The control plane's base address [default: tcp://127.0.0.1:5555, unless
    /// a discovery address is given]
    #[arg(long, env = "FASTWORKER_BASE_ADDRESS", value_name = "ADDRESS")]
    pub base_address: Option<String>,
    /// Find the control plane through its announcements on this address (used
    /// when no base address is given, as FastWorker's client does)
    #[arg(long, env = "FASTWORKER_DISCOVERY_ADDRESS", value_name = "ADDRESS")]
    pub discovery_address: Option<String>,
    /// How long to wait for the control plane to answer a query
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub token: TokenArgs,
}

impl ConnectArgs {
    /// Where the client goes: the base address when one is given (flag or
    /// environment); else through discovery when an address for it is
    /// given; else the default base address.
    pub fn target(&self) -> Target<'_> {
        match (&self.base_address, &self.discovery_address) {
            (Some(base), _) => Target::Base(base),
            (None, Some(discovery)) => Target::Discover(discovery),
            (None, None) => Target::Base(crate::protocol::DEFAULT_BASE_ADDRESS),
        }
    }

    pub async fn client(&self) -> Result<Client, ClientError> {
        let token = self.token.token().map_err(ClientError::Address)?;
        let client = match self.target() {
            Target::Discover(discovery) => Client::discover(discovery, self.connect_timeout).await,
            Target::Base(base) => Client::new(base, self.connect_timeout),
        }?;
        Ok(client.with_auth(token))
    }
}

/// Where a client command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Base(&'a str),
    Discover(&'a str),
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
    pub fn token(&self) -> Result<Option<crate::auth::Token>, String> {
        token_from(self.auth_token.as_deref(), self.auth_token_file.as_deref())
            .map_err(|e| format!("--auth-token: {e}"))
    }
}

/// A token from a flag's value or file, if either is given.
pub fn token_from(
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
    /// Arguments in FastWorker's form (--args 5 3), converted as its CLI does:
    /// true/false, integers, floats, otherwise strings (not JSON)
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
    pub fn id(&self) -> &str {
        self.task_id
            .as_deref()
            .or(self.task_id_flag.as_deref())
            .unwrap_or_default()
    }
}

#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Print the answer as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The time `secs` seconds from now, as RFC 3339; `None` for a negative,
/// infinite or absurdly large countdown.
pub fn countdown_eta(secs: f64) -> Option<String> {
    if !(0.0..=100.0 * 365.0 * 86_400.0).contains(&secs) {
        return None;
    }
    let delta = chrono::TimeDelta::try_milliseconds((secs * 1000.0) as i64)?;
    chrono::Utc::now()
        .checked_add_signed(delta)
        .map(|t| t.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fastworker_args_convert_as_its_cli_does() {
        let cases = [
            ("5", json!(5)),
            ("-3", json!(-3)),
            (" 7 ", json!(7)),
            ("1_000", json!(1000)),
            ("2.5", json!(2.5)),
            ("1e3", json!(1000.0)),
            (".5", json!(0.5)),
            ("TRUE", json!(true)),
            ("False", json!(false)),
            ("[1, 2]", json!("[1, 2]")),
            ("null", json!("null")),
            ("nan", json!("nan")),
            ("inf", json!("inf")),
            ("1__0", json!("1__0")),
            ("_1", json!("_1")),
            ("hello", json!("hello")),
            ("", json!("")),
            (
                "123456789012345678901234567890",
                json!(1.2345678901234568e29),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_fastworker_arg(text), want, "{text:?}");
        }
        assert_eq!(
            parse_arg("[1, 2]"),
            json!([1, 2]),
            "the positional form keeps JSON"
        );
    }

    #[test]
    fn json_where_valid_else_string() {
        assert_eq!(parse_arg("5"), json!(5));
        assert_eq!(parse_arg("-2.5"), json!(-2.5));
        assert_eq!(parse_arg("true"), json!(true));
        assert_eq!(parse_arg("null"), json!(null));
        assert_eq!(parse_arg(r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(parse_arg("[1,2]"), json!([1, 2]));
        assert_eq!(parse_arg(r#""5""#), json!("5"));
        assert_eq!(parse_arg("hello"), json!("hello"));
        assert_eq!(parse_arg("{not json"), json!("{not json"));
    }

    #[test]
    fn kwargs_split_at_the_first_equals() {
        let kw = parse_kwargs(&["a=1".into(), "b=x=y".into()]).unwrap_or_default();
        assert_eq!(Value::Object(kw), json!({"a": 1, "b": "x=y"}));
        assert!(parse_kwargs(&["novalue".into()]).is_err());
        assert!(parse_kwargs(&["=1".into()]).is_err());
        assert!(parse_kwargs(&["a=1".into(), "a=2".into()]).is_err());
    }
}
