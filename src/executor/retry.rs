//! A task's retry policy: which outcomes are retried and how long to wait.
//!
//! Attempt `n` (1-based) that ends retryably is followed, if `n <= retries`, by
//! attempt `n + 1` after `retry_backoff * 2^(n-1)`, capped at [`MAX_BACKOFF`],
//! then scaled by a random factor in [0.5, 1.0] ("equal jitter") so that tasks
//! that failed together do not retry in lockstep. Which outcomes are retryable
//! is [`Outcome::is_retryable`]: failures, timeouts and lost processes; never
//! a cancel.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Execution, Executor, Outcome, Started, TaskRequest};
use crate::manifest::TaskSpec;

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The wait before the attempt after `failed_attempt`, without jitter.
pub fn base_delay(backoff: Duration, failed_attempt: u32) -> Duration {
    let exponent = failed_attempt.saturating_sub(1).min(31);
    backoff.saturating_mul(1u32 << exponent).min(MAX_BACKOFF)
}

/// The wait before the attempt after `failed_attempt`, with jitter.
pub fn delay(backoff: Duration, failed_attempt: u32) -> Duration {
    base_delay(backoff, failed_attempt).mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Whether attempt number `attempt` (1-based, counting only the attempts
/// that count against `retries`), which ended with `outcome`, should be
/// followed by another.
pub fn should_retry(spec: &TaskSpec, outcome: &Outcome, attempt: u32) -> bool {
    outcome.is_retryable() && retryable(spec.retries, attempt)
}

/// Whether `retries` allow another attempt after attempt number `attempt`
/// (counting only the attempts that count against `retries`).
pub fn retryable(retries: u32, attempt: u32) -> bool {
    attempt <= retries
}

/// Runs a task until it succeeds, ends in a way that is not retried, runs out
/// of retries, or is cancelled (also while waiting between attempts).
/// `on_attempt` sees each attempt as it ends, with the wait before the next.
pub async fn run_with_retries(
    executor: &Executor,
    spec: &Arc<TaskSpec>,
    mut request: TaskRequest,
    cancel: &CancellationToken,
    mut on_attempt: impl FnMut(&Execution, Option<Duration>),
) -> Vec<Execution> {
    let mut attempts = Vec::new();
    loop {
        let execution = executor.run(spec, &request, cancel).await;
        let wait = should_retry(spec, &execution.outcome, request.attempt)
            .then(|| delay(spec.retry_backoff, request.attempt));
        on_attempt(&execution, wait);
        attempts.push(execution);
        let Some(wait) = wait else { break };
        request.attempt += 1;
        let waiting = Started::now();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => {
                // Cancelled while waiting to retry: the task ends cancelled,
                // as the attempt that never started.
                let cancelled = waiting.finish(&request, Outcome::Cancelled, String::new(), None);
                on_attempt(&cancelled, None);
                attempts.push(cancelled);
                break;
            }
        }
    }
    attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_secs(2);
        assert_eq!(base_delay(b, 1), Duration::from_secs(2));
        assert_eq!(base_delay(b, 2), Duration::from_secs(4));
        assert_eq!(base_delay(b, 3), Duration::from_secs(8));
        assert_eq!(base_delay(b, 40), MAX_BACKOFF);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        for attempt in 1..10 {
            let d = delay(Duration::from_millis(100), attempt);
            let base = base_delay(Duration::from_millis(100), attempt);
            assert!(d <= base && d >= base / 2, "{d:?} vs {base:?}");
        }
    }
}
