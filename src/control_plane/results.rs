//! Finished tasks' records: an LRU cache (the `lru` crate) with a TTL,
//! bounded by count and by bytes.
//!
//! A record expires `ttl` after it was stored. Expired records are dropped
//! when read and by [`ResultCache::sweep`], which the control plane runs
//! every minute. When the cache holds more than its count or its bytes,
//! the least recently stored or read records go first; the newest record
//! always stays, even alone over the byte bound. A record's bytes are those
//! of its JSON encoding (what the journal stores).

use std::num::NonZeroUsize;
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

use crate::protocol::TaskRecord;

#[derive(Debug)]
struct Entry {
    record: TaskRecord,
    expires: Instant,
    bytes: usize,
}

#[derive(Debug)]
pub struct ResultCache {
    records: LruCache<String, Entry>,
    ttl: Duration,
    max_bytes: usize,
    bytes: usize,
    /// Expired records dropped on a read, reported by the next sweep.
    dropped: Vec<String>,
    /// Records pushed out to stay within the bounds, since the start.
    evictions: u64,
}

impl ResultCache {
    pub fn new(capacity: NonZeroUsize, max_bytes: usize, ttl: Duration) -> Self {
        ResultCache {
            records: LruCache::new(capacity),
            ttl,
            max_bytes,
            bytes: 0,
            dropped: Vec::new(),
            evictions: 0,
        }
    }

    /// Stores a record of `bytes` for the TTL; returns the ids of records
    /// pushed out to make room (so the journal can forget them too).
    pub fn insert(&mut self, record: TaskRecord, bytes: usize) -> Vec<String> {
        let expires = Instant::now() + self.ttl;
        self.insert_until(record, bytes, expires)
    }

    /// Stores a record until `expires` (a replayed record keeps its own clock).
    pub fn insert_until(
        &mut self,
        record: TaskRecord,
        bytes: usize,
        expires: Instant,
    ) -> Vec<String> {
        let id = record.task_id.clone();
        let mut evicted = Vec::new();
        self.bytes += bytes;
        let entry = Entry {
            record,
            expires,
            bytes,
        };
        if let Some((old_id, old)) = self.records.push(id.clone(), entry) {
            self.bytes -= old.bytes;
            if old_id != id {
                evicted.push(old_id);
            }
        }
        while self.bytes > self.max_bytes && self.records.len() > 1 {
            match self.records.pop_lru() {
                Some((old_id, old)) => {
                    self.bytes -= old.bytes;
                    evicted.push(old_id);
                }
                None => break,
            }
        }
        self.evictions += evicted.len() as u64;
        evicted
    }

    /// The record of `task_id`, unless it has expired (then it is dropped).
    pub fn get(&mut self, task_id: &str) -> Option<&TaskRecord> {
        let expired = self.records.peek(task_id)?.expires <= Instant::now();
        if expired {
            if let Some(old) = self.records.pop(task_id) {
                self.bytes -= old.bytes;
            }
            self.dropped.push(task_id.to_owned());
            return None;
        }
        self.records.get(task_id).map(|e| &e.record)
    }

    /// Changes a stored record in place (its TTL, size and place in the
    /// LRU stay); returns the changed record.
    pub fn update(
        &mut self,
        task_id: &str,
        change: impl FnOnce(&mut TaskRecord),
    ) -> Option<&TaskRecord> {
        let entry = self.records.peek_mut(task_id)?;
        change(&mut entry.record);
        Some(&entry.record)
    }

    /// Drops every expired record; returns their ids (and those of records
    /// that expired and were dropped on a read since the last sweep).
    pub fn sweep(&mut self) -> Vec<String> {
        let now = Instant::now();
        let mut expired: Vec<String> = self
            .records
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Some(old) = self.records.pop(id) {
                self.bytes -= old.bytes;
            }
        }
        expired.append(&mut self.dropped);
        expired
    }

    /// Drops a record (a delete); whether it was there.
    pub fn remove(&mut self, task_id: &str) -> bool {
        match self.records.pop(task_id) {
            Some(old) => {
                self.bytes -= old.bytes;
                true
            }
            None => false,
        }
    }

    /// Every record not expired, without touching their places in the LRU.
    pub fn records(&self) -> impl Iterator<Item = &TaskRecord> {
        let now = Instant::now();
        self.records
            .iter()
            .filter(move |(_, e)| e.expires > now)
            .map(|(_, e)| &e.record)
    }

    /// A record, without touching its place in the LRU (none if expired).
    pub fn peek(&self, task_id: &str) -> Option<&TaskRecord> {
        self.records
            .peek(task_id)
            .filter(|e| e.expires > Instant::now())
            .map(|e| &e.record)
    }

    /// How many records it may keep.
    pub fn capacity(&self) -> usize {
        self.records.cap().get()
    }

    /// The bytes the records may take.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The bytes the records take (as encoded).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records pushed out by the bounds since the start.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The bytes of a record's JSON encoding, counted without building it.
pub fn encoded_size(record: &TaskRecord) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, record);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Status;

    fn record(id: &str) -> TaskRecord {
        TaskRecord::sample(id, Status::Success)
    }

    fn cache(cap: usize, ttl: Duration) -> ResultCache {
        ResultCache::new(
            NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN),
            usize::MAX,
            ttl,
        )
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut c = cache(2, Duration::from_secs(60));
        c.insert(record("a"), 1);
        c.insert(record("b"), 1);
        assert!(c.get("a").is_some()); // a is now the most recent
        assert_eq!(c.insert(record("c"), 1), ["b"], "b is pushed out");
        assert!(
            c.insert(record("c"), 1).is_empty(),
            "replacing c pushes nothing out"
        );
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some() && c.get("c").is_some());
    }

    #[test]
    fn bytes_bound_the_cache_as_well_as_the_count() {
        let mut c = ResultCache::new(
            NonZeroUsize::new(100).unwrap_or(NonZeroUsize::MIN),
            100,
            Duration::from_secs(60),
        );
        c.insert(record("a"), 40);
        c.insert(record("b"), 40);
        assert_eq!(c.insert(record("c"), 40), ["a"]);
        assert_eq!(c.bytes(), 80);
        // One record over the whole bound still stays, alone.
        assert_eq!(c.insert(record("big"), 500), ["b", "c"]);
        assert_eq!((c.len(), c.bytes(), c.evictions()), (1, 500, 3));
        assert!(c.get("big").is_some());
        // Replacing a record counts its new size, not both.
        c.insert(record("big"), 10);
        assert_eq!(c.bytes(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_after_the_ttl() {
        let mut c = cache(10, Duration::from_secs(60));
        c.insert(record("a"), 5);
        tokio::time::advance(Duration::from_secs(30)).await;
        c.insert(record("b"), 5);
        assert!(c.get("a").is_some());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(c.get("a").is_none(), "expired when read");
        assert_eq!((c.len(), c.bytes()), (1, 5));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            c.sweep(),
            ["b", "a"],
            "expired when swept, and when read before"
        );
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn the_encoded_size_is_the_json_length() {
        let r = record("a");
        assert_eq!(
            encoded_size(&r),
            serde_json::to_vec(&r).map(|v| v.len()).unwrap_or(0)
        );
    }
}
