//! How tasks are shown: a call's arguments as one line, the keyword
//! arguments an operator asked to mask (`--gui-redact`), a task's timeline,
//! and the CLI command that submits it again.

use serde_json::{Map, Value};

use crate::protocol::{Attempt, TaskRecord, preview};

/// The characters of a call's arguments a list shows.
pub const INPUT_PREVIEW: usize = 200;
/// The characters of an error a list shows.
pub const ERROR_PREVIEW: usize = 300;
/// What a masked value is shown as.
pub const MASK: &str = "***";

/// The presentation settings: which keyword arguments are masked.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Lowercase key names.
    redact: Vec<String>,
}

impl View {
    pub fn new(redact: &[String]) -> View {
        View {
            redact: redact
                .iter()
                .map(|k| k.trim().to_lowercase())
                .filter(|k| !k.is_empty())
                .collect(),
        }
    }

    pub fn redacted_keys(&self) -> &[String] {
        &self.redact
    }

    fn masks(&self, key: &str) -> bool {
        !self.redact.is_empty() && {
            let key = key.to_lowercase();
            self.redact.contains(&key)
        }
    }

    /// `kwargs` with every value under a masked key (at any depth) shown
    /// as [`MASK`].
    pub fn kwargs(&self, kwargs: &Map<String, Value>) -> Map<String, Value> {
        if self.redact.is_empty() {
            return kwargs.clone();
        }
        kwargs
            .iter()
            .map(|(k, v)| (k.clone(), self.value_under(k, v)))
            .collect()
    }

    fn value_under(&self, key: &str, value: &Value) -> Value {
        if self.masks(key) {
            return Value::String(MASK.to_owned());
        }
        self.value(value)
    }

    fn value(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.value_under(k, v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.value(v)).collect()),
            other => other.clone(),
        }
    }

    /// A record as it may be shown: its keyword arguments masked.
    pub fn record(&self, record: &TaskRecord) -> TaskRecord {
        let mut shown = record.clone();
        if !self.redact.is_empty() {
            shown.kwargs = self.kwargs(&record.kwargs);
        }
        shown
    }

    /// A call's arguments as one line, like a call reads: `5, 3, user="ann"`,
    /// cut at [`INPUT_PREVIEW`] characters.
    pub fn input(&self, args: &[Value], kwargs: &Map<String, Value>) -> String {
        let mut line = String::new();
        for arg in args {
            if line.len() > INPUT_PREVIEW * 4 {
                break;
            }
            if !line.is_empty() {
                line.push_str(", ");
            }
            line.push_str(&preview(arg, INPUT_PREVIEW));
        }
        for (key, value) in kwargs {
            if line.len() > INPUT_PREVIEW * 4 {
                break;
            }
            if !line.is_empty() {
                line.push_str(", ");
            }
            line.push_str(key);
            line.push('=');
            if self.masks(key) {
                line.push_str(&preview(MASK, INPUT_PREVIEW));
            } else if self.redact.is_empty() {
                line.push_str(&preview(value, INPUT_PREVIEW));
            } else {
                line.push_str(&preview(&self.value(value), INPUT_PREVIEW));
            }
        }
        crate::protocol::cut(&line, INPUT_PREVIEW)
    }

    /// The CLI command that submits this task again (masked values stay
    /// masked: the command is then to be completed by hand). Options come
    /// first, and `--` before arguments that would read as options.
    pub fn cli(&self, record: &TaskRecord) -> String {
        let mut words = vec![
            "fastworker".to_owned(),
            "submit".to_owned(),
            "--priority".to_owned(),
            record.priority.to_string(),
        ];
        for (key, value) in self.kwargs(&record.kwargs) {
            words.push("--kwarg".to_owned());
            words.push(shell_word(&format!("{key}={value}")));
        }
        words.push(shell_word(&record.name));
        // A string argument that parses as JSON would be read as that
        // JSON: it goes as its JSON form.
        let args: Vec<String> = record
            .args
            .iter()
            .map(|arg| match arg {
                Value::String(s) if serde_json::from_str::<Value>(s).is_err() => s.clone(),
                other => other.to_string(),
            })
            .collect();
        if args
            .iter()
            .any(|a| a.starts_with('-') && a.parse::<f64>().is_err())
        {
            words.push("--".to_owned());
        }
        words.extend(args.iter().map(|a| shell_word(a)));
        words.join(" ")
    }
}

/// An error as the GUI shows it: a journal failure says what it means to
/// the reader, without the server's paths (the control plane's log has them).
pub fn public_error(error: &str) -> String {
    if error.contains("could not be journaled") || error.contains("journal") && error.contains('/')
    {
        "the control plane could not write the task to its journal (a full or failing disk?); its log says more".to_owned()
    } else {
        crate::protocol::cut(error, ERROR_PREVIEW)
    }
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// One line of a task's timeline.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Moment {
    pub at: chrono::DateTime<chrono::Utc>,
    pub what: String,
    pub detail: String,
}

/// What happened to a task, in order, as its record tells it.
pub fn timeline(record: &TaskRecord, local_worker: &str) -> Vec<Moment> {
    let mut moments = vec![Moment {
        at: record.submitted_at,
        what: "submitted".to_owned(),
        detail: format!(
            "priority {}{}",
            record.priority,
            record
                .retry_of
                .as_deref()
                .map(|old| format!(", a retry of {old}"))
                .unwrap_or_default()
        ),
    }];
    if let Some(eta) = record.eta {
        moments.push(Moment {
            at: eta,
            what: "due".to_owned(),
            detail: "its eta".to_owned(),
        });
    }
    for attempt in &record.attempts {
        let n = attempt_number(attempt);
        let worker = attempt.worker().unwrap_or(local_worker);
        match attempt {
            Attempt::Ran { execution, .. } => {
                let pid = execution
                    .pid
                    .map(|p| format!(", pid {p}"))
                    .unwrap_or_default();
                moments.push(Moment {
                    at: execution.started_at,
                    what: format!("attempt {n} started"),
                    detail: format!("on {worker}{pid}"),
                });
                let ended = match &execution.outcome {
                    crate::executor::Outcome::Success { .. } => "succeeded".to_owned(),
                    outcome => outcome.to_string(),
                };
                moments.push(Moment {
                    at: execution.finished_at,
                    what: format!("attempt {n} {}", ended_as(attempt.status())),
                    detail: format!(
                        "{ended}, after {}",
                        humantime::format_duration(round_ms(execution.duration))
                    ),
                });
            }
            Attempt::CutShort {
                started_at, error, ..
            } => {
                if let Some(at) = started_at {
                    moments.push(Moment {
                        at: *at,
                        what: format!("attempt {n} {}", ended_as(attempt.status())),
                        detail: format!("on {worker}: {error}"),
                    });
                }
            }
            Attempt::Other(_) => {}
        }
    }
    if record.status.is_final()
        && let Some(at) = record.finished_at
    {
        moments.push(Moment {
            at,
            what: record.status.as_str().to_owned(),
            detail: record.error.clone().unwrap_or_else(|| "done".to_owned()),
        });
    }
    moments.sort_by_key(|m| m.at);
    moments
}

/// How an attempt ended, as a timeline says it.
fn ended_as(status: &str) -> String {
    match status {
        "success" => "succeeded".to_owned(),
        "timeout" => "timed out".to_owned(),
        "output_too_large" => "wrote too much output".to_owned(),
        "invalid_output" => "wrote invalid output".to_owned(),
        "spawn_failed" => "could not start".to_owned(),
        "limit_exceeded" => "hit a resource limit".to_owned(),
        other => other.replace('_', " "),
    }
}

fn attempt_number(attempt: &Attempt) -> u32 {
    match attempt {
        Attempt::Ran { execution, .. } => execution.attempt,
        Attempt::CutShort { attempt, .. } => *attempt,
        Attempt::Other(v) => v
            .get("attempt")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
    }
}

fn round_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Status;
    use serde_json::json;

    fn kwargs(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn masked_keys_are_masked_at_any_depth_and_nothing_else() {
        let view = View::new(&["Password".to_owned(), "token".to_owned()]);
        let shown = view.kwargs(&kwargs(json!({
            "user": "ann",
            "password": "hunter2",
            "nested": {"TOKEN": "abc", "list": [{"token": 1}, 2]}
        })));
        assert_eq!(
            Value::Object(shown),
            json!({"user": "ann", "password": "***", "nested": {"TOKEN": "***", "list": [{"token": "***"}, 2]}})
        );
        let line = view.input(
            &[json!(5)],
            &kwargs(json!({"password": "hunter2", "n": {"token": "t"}})),
        );
        assert_eq!(line, r#"5, password="***", n={"token":"***"}"#);
        assert!(!line.contains("hunter2"));
    }

    #[test]
    fn the_input_line_reads_like_a_call_and_is_cut() {
        let view = View::default();
        assert_eq!(
            view.input(&[json!(5), json!("x")], &kwargs(json!({"k": true}))),
            r#"5, "x", k=true"#
        );
        let long = view.input(&[json!("a".repeat(10_000))], &Map::new());
        assert_eq!(long.chars().count(), INPUT_PREVIEW + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn an_argument_that_reads_as_an_option_comes_after_the_separator() {
        let mut record = TaskRecord::sample("t", Status::Failure);
        record.name = "echo".into();
        record.args = vec![json!("--help"), json!(-5)];
        assert_eq!(
            View::default().cli(&record),
            "fastworker submit --priority high echo -- --help -5"
        );
    }

    #[test]
    fn the_cli_command_quotes_what_the_shell_would_split() {
        let mut record = TaskRecord::sample("t", Status::Failure);
        record.name = "add".into();
        record.args = vec![json!(5), json!("it's"), json!("7"), json!({"a": 1})];
        record.kwargs = kwargs(json!({"user": "ann", "secret": "s"}));
        let view = View::new(&["secret".to_owned()]);
        assert_eq!(
            view.cli(&record),
            r#"fastworker submit --priority high --kwarg 'user="ann"' --kwarg 'secret="***"' add 5 'it'\''s' '"7"' '{"a":1}'"#
        );
    }
}
