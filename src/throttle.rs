//! Saying something at most once a period: a flood of refused connections
//! or requests is logged once a minute, with counts, not once each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    epoch: Instant,
    /// When it last allowed, in milliseconds since `epoch` plus one (0: never).
    last: AtomicU64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// True the first time, then at most once per period (from any thread).
    pub fn allow(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let every = u64::try_from(self.every.as_millis()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last.saturating_add(every))
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_period() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert!(t.allow());
        assert!(!t.allow());
        let t = Throttle::new(Duration::ZERO);
        assert!(t.allow() && t.allow());
    }
}
