//! Completion callbacks: a task submitted with `callback = {"address",
//! "data"}` has its final state sent to that address (an NNG PAIR0 socket,
//! as FastWorker's `delay_with_callback` expects) when it ends, whatever the
//! outcome. Delivery runs in the background and never holds up the core; a
//! receiver that is not there yet is tried again a few times. How it went is
//! recorded (`callback_sent`), so that a callback still on its way when the
//! control plane stopped is sent after the next start: delivery is at least
//! once.

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
