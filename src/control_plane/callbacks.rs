//! Completion callbacks: a task submitted with `callback = {"address",
//! "data"}` has its final state sent to that address (an NNG PAIR0 socket,
//! as FastWorker's `delay_with_callback` expects) when it ends, whatever the
//! outcome. Delivery runs in the background and never holds up the core; a
//! receiver that is not there yet is tried again a few times. How it went is
//! recorded (`callback_sent`), so that a callback still on its way when the
//! control plane stopped is sent after the next start: delivery is at least
//! once.
//!
//! A callback makes the control plane dial an address a client chose, so
//! only addresses a [`CallbackPolicy`] allows are accepted (by default,
//! TCP on loopback); a submit naming another is refused.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::protocol::TaskRecord;
use crate::transport::Pair0Senders;

/// Waits before each try: at once, then with growing pauses (~6 s in all).
const TRIES: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(600),
    Duration::from_secs(1),
    Duration::from_secs(4),
];
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Where callbacks may go: address patterns in which `*` stands for any
/// run of characters (`tcp://127.0.0.1:*`, `tcp://10.0.0.*:17566`,
/// `ipc:///run/app/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackPolicy {
    allow: Vec<String>,
}

impl Default for CallbackPolicy {
    fn default() -> Self {
        CallbackPolicy::new(Self::LOOPBACK.iter().map(|p| (*p).to_owned()).collect())
    }
}

impl CallbackPolicy {
    /// The default: TCP on loopback, any port.
    pub const LOOPBACK: [&'static str; 3] =
        ["tcp://127.0.0.1:*", "tcp://localhost:*", "tcp://[::1]:*"];

    pub fn new(allow: Vec<String>) -> CallbackPolicy {
        CallbackPolicy { allow }
    }

    /// Checks a submit's callback: an object with a string `address` that
    /// a pattern allows.
    pub fn check(&self, callback: &Value) -> Result<(), String> {
        let Some(address) = callback.get("address").and_then(Value::as_str) else {
            return Err(
                "a callback needs an `address` (an NNG PAIR0 address, e.g. tcp://127.0.0.1:17566)"
                    .to_owned(),
            );
        };
        if self.allow.iter().any(|p| glob(p, address)) {
            return Ok(());
        }
        let shown: String = address.chars().take(100).collect();
        Err(format!(
            "callback address {shown:?} is not allowed; allowed: {} (see --callback-allow)",
            if self.allow.is_empty() {
                "none".to_owned()
            } else {
                self.allow.join(", ")
            }
        ))
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return pattern == text;
    }
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The callback address of a record, if it has one.
pub fn address(record: &TaskRecord) -> Option<String> {
    record
        .callback
        .as_ref()?
        .get("address")?
        .as_str()
        .map(str::to_owned)
}

/// FastWorker's callback message.
pub fn message(record: &TaskRecord) -> Value {
    json!({
        "task_id": record.task_id,
        "status": record.status,
        "result": record.result,
        "error": record.error,
        "started_at": record.started_at,
        "completed_at": record.finished_at,
        "callback_data": record.callback.as_ref().and_then(|c| c.get("data")).cloned().unwrap_or(Value::Null),
    })
}

/// Sends the record's final state to its callback address, in the
/// background; `then` is told whether it was delivered. Nothing happens for
/// a record with no callback address.
pub fn deliver(
    senders: &Arc<Pair0Senders>,
    record: &TaskRecord,
    then: impl FnOnce(bool) + Send + 'static,
) {
    let Some(address) = address(record) else {
        return;
    };
    let body = message(record).to_string().into_bytes();
    let task_id = record.task_id.clone();
    let senders = Arc::clone(senders);
    tokio::spawn(async move {
        let mut last_error = String::new();
        for wait in TRIES {
            tokio::time::sleep(wait).await;
            match senders.send(&address, &body, SEND_TIMEOUT).await {
                Ok(()) => {
                    tracing::debug!(%task_id, %address, "callback delivered");
                    then(true);
                    return;
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        tracing::warn!(%task_id, %address, "callback not delivered after {} tries: {last_error}", TRIES.len());
        then(false);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_with_stars() {
        assert!(glob("tcp://127.0.0.1:*", "tcp://127.0.0.1:17566"));
        assert!(!glob("tcp://127.0.0.1:*", "tcp://127.0.0.10:1"));
        assert!(!glob("tcp://127.0.0.1:*", "ipc:///var/run/docker.sock"));
        assert!(glob("tcp://10.0.*.*:17566", "tcp://10.0.3.4:17566"));
        assert!(!glob("tcp://10.0.*.*:17566", "tcp://10.0.3.4:17567"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
        assert!(glob("*", "anything"));
    }

    #[test]
    fn the_default_allows_loopback_tcp_only() {
        let policy = CallbackPolicy::default();
        let cb = |a: &str| json!({"address": a, "data": null});
        assert!(policy.check(&cb("tcp://127.0.0.1:17566")).is_ok());
        assert!(policy.check(&cb("tcp://[::1]:1")).is_ok());
        let err = policy
            .check(&cb("ipc:///var/run/docker.sock"))
            .expect_err("refused");
        assert!(
            err.contains("is not allowed") && err.contains("--callback-allow"),
            "{err}"
        );
        assert!(policy.check(&cb("tcp://10.0.0.1:80")).is_err());
        assert!(policy.check(&json!({"data": 1})).is_err());
    }
}
