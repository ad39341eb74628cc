//! Waiting on a deadline that may not be set.

use tokio::time::{Instant, sleep_until};

/// Sleeps until `deadline`, or forever when there is none: a `select!`
/// branch on it fires only once a deadline is set.
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
