//! Finished tasks' records: an LRU cache (the `lru` crate) with a TTL.
//!
//! A record expires `ttl` after it was stored. Expired records are dropped
//! when read and by [`ResultCache::sweep`], which the control plane runs
//! every minute. When the cache is full, the least recently stored or read
//! record goes first.

use std::num::NonZeroUsize;
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

use crate::protocol::TaskRecord;

#[derive(Debug)]
pub struct ResultCache {
    records: LruCache<String, (TaskRecord, Instant)>,
    ttl: Duration,
    /// Expired records dropped on a read, reported by the next sweep.
    dropped: Vec<String>,
}

impl ResultCache {
    pub fn new(capacity: NonZeroUsize, ttl: Duration) -> Self {
        ResultCache {
            records: LruCache::new(capacity),
            ttl,
            dropped: Vec::new(),
        }
    }

    /// Stores a record for the TTL; returns the id of a record pushed out to
    /// make room (so the journal can forget it too).
    pub fn insert(&mut self, record: TaskRecord) -> Option<String> {
        let expires = Instant::now() + self.ttl;
        self.insert_until(record, expires)
    }

    /// Stores a record until `expires` (a replayed record keeps its own clock).
    pub fn insert_until(&mut self, record: TaskRecord, expires: Instant) -> Option<String> {
        let id = record.task_id.clone();
        match self.records.push(id.clone(), (record, expires)) {
            Some((evicted, _)) if evicted != id => Some(evicted),
            _ => None,
        }
    }

    /// The record of `task_id`, unless it has expired (then it is dropped).
    pub fn get(&mut self, task_id: &str) -> Option<&TaskRecord> {
        let expired = self.records.peek(task_id)?.1 <= Instant::now();
        if expired {
            self.records.pop(task_id);
            self.dropped.push(task_id.to_owned());
            return None;
        }
        self.records.get(task_id).map(|(record, _)| record)
    }

    /// Changes a stored record in place (its TTL and place in the LRU stay);
    /// returns the changed record.
    pub fn update(
        &mut self,
        task_id: &str,
        change: impl FnOnce(&mut TaskRecord),
    ) -> Option<&TaskRecord> {
        let (record, _) = self.records.peek_mut(task_id)?;
        change(record);
        Some(record)
    }

    /// Drops every expired record; returns their ids (and those of records
    /// that expired and were dropped on a read since the last sweep).
    pub fn sweep(&mut self) -> Vec<String> {
        let now = Instant::now();
        let mut expired: Vec<String> = self
            .records
            .iter()
            .filter(|(_, (_, expires))| *expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.records.pop(id);
        }
        expired.append(&mut self.dropped);
        expired
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Status;

    fn record(id: &str) -> TaskRecord {
        TaskRecord::sample(id, Status::Success)
    }

    fn cache(cap: usize, ttl: Duration) -> ResultCache {
        ResultCache::new(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN), ttl)
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut c = cache(2, Duration::from_secs(60));
        c.insert(record("a"));
        c.insert(record("b"));
        assert!(c.get("a").is_some()); // a is now the most recent
        assert_eq!(
            c.insert(record("c")),
            Some("b".to_owned()),
            "b is pushed out"
        );
        assert_eq!(
            c.insert(record("c")),
            None,
            "replacing c pushes nothing out"
        );
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some() && c.get("c").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_after_the_ttl() {
        let mut c = cache(10, Duration::from_secs(60));
        c.insert(record("a"));
        tokio::time::advance(Duration::from_secs(30)).await;
        c.insert(record("b"));
        assert!(c.get("a").is_some());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(c.get("a").is_none(), "expired when read");
        assert_eq!(c.len(), 1);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            c.sweep(),
            ["b", "a"],
            "expired when swept, and when read before"
        );
        assert!(c.is_empty());
    }
}
