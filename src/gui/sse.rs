//! The event stream's fan-out: every event is encoded once as a
//! Server-Sent Events frame, kept in a ring (for reconnects with
//! `Last-Event-ID`) and broadcast to every client. A client never holds
//! anything up: one that falls more than the buffer behind gets a `resync`
//! frame and goes on from the newest event.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One message of the stream: one or more frames, as sent.
#[derive(Debug)]
pub struct Frame {
    /// The numbers of its first and last events (0, 0: frames that are
    /// not replayed, like `stats`).
    first: u64,
    last: u64,
    pub bytes: Bytes,
    /// Where each event's frame starts in `bytes`.
    marks: Vec<(u64, usize)>,
}

impl Frame {
    /// The frames of the events after `seen`.
    fn after(&self, seen: u64) -> Option<Bytes> {
        if self.last <= seen {
            return None;
        }
        if self.first > seen {
            return Some(self.bytes.clone());
        }
        let at = self.marks.iter().find(|(seq, _)| *seq > seen)?.1;
        Some(self.bytes.slice(at..))
    }
}

/// Events' frames, built together and sent as one message (one wake-up of
/// each client for many events).
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    marks: Vec<(u64, usize)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Adds event `seq` named `name`; `data` writes its JSON (one line).
    pub fn push(&mut self, hub: &Hub, seq: u64, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
        use std::io::Write;
        self.marks.push((seq, self.buf.len()));
        let _ = write!(self.buf, "id: {}-{seq}\nevent: {name}\ndata: ", hub.boot);
        data(&mut self.buf);
        self.buf.extend_from_slice(b"\n\n");
    }
}

/// The frames of the stream, and its clients.
#[derive(Debug)]
pub struct Hub {
    boot: String,
    tx: broadcast::Sender<Arc<Frame>>,
    inner: Mutex<Ring>,
    clients: AtomicUsize,
    keep_alive: Duration,
}

#[derive(Debug)]
struct Ring {
    frames: VecDeque<Arc<Frame>>,
    /// Events in `frames`, and how many it keeps.
    events: usize,
    cap: usize,
    /// A client that has seen event `floor` (or a later one) can be given
    /// every event after it without a gap.
    floor: u64,
    /// The last event published.
    last: u64,
}

/// What a client that (re)connects gets first.
#[derive(Debug)]
pub struct Start {
    pub replay: Vec<Bytes>,
    /// Why it must reload what it shows, if it must.
    pub resync: Option<String>,
    pub rx: broadcast::Receiver<Arc<Frame>>,
}

impl Hub {
    /// A hub whose clients may fall `buffer` messages behind, that keeps
    /// the last `ring` events for reconnects, from event `floor` on.
    pub fn new(boot: String, buffer: usize, ring: usize, floor: u64, keep_alive: Duration) -> Hub {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Hub {
            boot,
            tx,
            inner: Mutex::new(Ring {
                frames: VecDeque::new(),
                events: 0,
                cap: ring.max(1),
                floor,
                last: floor,
            }),
            clients: AtomicUsize::new(0),
            keep_alive,
        }
    }

    pub fn boot(&self) -> &str {
        &self.boot
    }

    /// The id a client sees for event `seq`.
    pub fn event_id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.boot)
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends event `seq` named `name` with `data` (JSON) to every client,
    /// and keeps it for reconnects.
    pub fn publish(&self, seq: u64, name: &str, data: &str) {
        let mut batch = Batch::default();
        batch.push(self, seq, name, |buf| {
            buf.extend_from_slice(data.as_bytes())
        });
        self.publish_batch(batch);
    }

    /// Sends a batch of events to every client as one message, and keeps
    /// it for reconnects.
    pub fn publish_batch(&self, batch: Batch) {
        let (Some(first), Some(last)) = (batch.marks.first(), batch.marks.last()) else {
            return;
        };
        let frame = Arc::new(Frame {
            first: first.0,
            last: last.0,
            bytes: Bytes::from(batch.buf),
            marks: batch.marks,
        });
        let mut ring = self.ring();
        ring.last = frame.last;
        ring.events += frame.marks.len();
        ring.frames.push_back(Arc::clone(&frame));
        while ring.events > ring.cap && ring.frames.len() > 1 {
            if let Some(old) = ring.frames.pop_front() {
                ring.events -= old.marks.len();
                ring.floor = old.last;
            }
        }
        // Sent under the ring's lock: a client that subscribes gets each
        // frame once, from the ring or from the channel.
        let _ = self.tx.send(frame);
    }

    /// Sends a frame that is not kept (like `stats`) to every client.
    pub fn broadcast(&self, name: &str, data: &str) {
        let _ = self
            .tx
            .send(unnumbered(format!("event: {name}\ndata: {data}\n\n")));
    }

    /// Events up to `seq` could not be published (the feed fell behind and
    /// reloaded): every client reloads, and no reconnect is replayed
    /// across the gap.
    pub fn gap(&self, seq: u64, reason: &str) {
        let mut ring = self.ring();
        ring.frames.clear();
        ring.events = 0;
        ring.floor = seq;
        ring.last = seq;
        let data = serde_json::json!({"reason": reason, "last_event_id": self.event_id(seq)});
        let _ = self
            .tx
            .send(unnumbered(format!("event: resync\ndata: {data}\n\n")));
    }

    /// A client (re)connecting, having seen `last` (its `Last-Event-ID`).
    pub fn subscribe(&self, last: Option<&str>) -> Start {
        let ring = self.ring();
        let rx = self.tx.subscribe();
        let mut start = Start {
            replay: Vec::new(),
            resync: None,
            rx,
        };
        let Some(last) = last.map(str::trim).filter(|l| !l.is_empty()) else {
            return start;
        };
        let seen = last
            .rsplit_once('-')
            .filter(|(boot, _)| *boot == self.boot)
            .and_then(|(_, n)| n.parse::<u64>().ok());
        match seen {
            None => {
                start.resync = Some(
                    "the control plane restarted since the last event this client saw".to_owned(),
                );
            }
            Some(n) if n < ring.floor => {
                start.resync = Some(
                    "the events since the last one this client saw are no longer kept".to_owned(),
                );
            }
            Some(n) => {
                start.replay = ring.frames.iter().filter_map(|f| f.after(n)).collect();
            }
        }
        start
    }

    /// The body of one client's stream: `retry`, `hello`, what it missed
    /// (or `resync`), then every message as it comes, with keep-alive
    /// comments in quiet times; it ends at `stop`.
    pub fn stream(
        self: &Arc<Self>,
        last: Option<&str>,
        last_event: u64,
        stop: CancellationToken,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + use<>
    {
        let start = self.subscribe(last);
        let hello = serde_json::json!({
            "boot": self.boot,
            "last_event_id": self.event_id(last_event),
        });
        let mut first = format!("retry: 2000\n\nevent: hello\ndata: {hello}\n\n").into_bytes();
        match &start.resync {
            Some(reason) => first.extend_from_slice(
                format!(
                    "event: resync\ndata: {}\n\n",
                    serde_json::json!({"reason": reason, "last_event_id": self.event_id(last_event)})
                )
                .as_bytes(),
            ),
            None => {
                for bytes in &start.replay {
                    first.extend_from_slice(bytes);
                }
            }
        }
        self.clients.fetch_add(1, Ordering::Relaxed);
        let client = Client {
            hub: Arc::clone(self),
            rx: start.rx,
            first: Some(Bytes::from(first)),
            stop,
        };
        futures_util::stream::unfold(client, |mut client| async move {
            let chunk = client.next().await?;
            Some((Ok(chunk), client))
        })
    }
}

fn unnumbered(text: String) -> Arc<Frame> {
    Arc::new(Frame {
        first: 0,
        last: 0,
        bytes: Bytes::from(text),
        marks: Vec::new(),
    })
}

struct Client {
    hub: Arc<Hub>,
    rx: broadcast::Receiver<Arc<Frame>>,
    first: Option<Bytes>,
    stop: CancellationToken,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.hub.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Client {
    /// The next message, a `resync` if it fell behind, or a keep-alive
    /// after a quiet spell.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let received = tokio::select! {
            () = self.stop.cancelled() => return None,
            received = tokio::time::timeout(self.hub.keep_alive, self.rx.recv()) => received,
        };
        match received {
            Err(_) => Some(Bytes::from_static(b": keep-alive\n\n")),
            Ok(Ok(frame)) => Some(frame.bytes.clone()),
            Ok(Err(broadcast::error::RecvError::Closed)) => None,
            Ok(Err(broadcast::error::RecvError::Lagged(missed))) => Some(self.resync(missed)),
        }
    }

    /// Fell `missed` messages behind: it skips to the newest (so that it
    /// does not fall behind again at once) and is told to reload.
    fn resync(&mut self, missed: u64) -> Bytes {
        let mut skipped = 0u64;
        loop {
            match self.rx.try_recv() {
                Ok(_) => skipped += 1,
                Err(broadcast::error::TryRecvError::Lagged(n)) => skipped += n,
                Err(_) => break,
            }
        }
        let last = self.hub.ring().last;
        let data = serde_json::json!({
            "reason": format!(
                "this client fell behind the stream: {} messages were dropped for it",
                missed + skipped
            ),
            "last_event_id": self.hub.event_id(last),
        });
        Bytes::from(format!("event: resync\ndata: {data}\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn text(chunks: &[Bytes]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    fn ids(text: &str) -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix("id: boot-"))
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    async fn read(
        stream: &mut (impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Unpin),
        n: usize,
    ) -> String {
        let mut chunks = Vec::new();
        for _ in 0..n {
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(Ok(c))) => chunks.push(c),
                _ => break,
            }
        }
        text(&chunks)
    }

    #[tokio::test]
    async fn a_reconnect_gets_what_it_missed_once_and_in_order() {
        let hub = Arc::new(Hub::new("boot".into(), 64, 100, 0, Duration::from_secs(60)));
        for seq in 1..=10 {
            hub.publish(seq, "task.queued", "{}");
        }
        let stop = CancellationToken::new();
        let mut stream = Box::pin(hub.stream(Some("boot-4"), 10, stop.clone()));
        let first = read(&mut stream, 1).await;
        assert!(
            first.starts_with("retry: 2000\n\nevent: hello\n"),
            "{first}"
        );
        assert_eq!(ids(&first), [5, 6, 7, 8, 9, 10]);
        let mut batch = Batch::default();
        for seq in 11..=13 {
            batch.push(&hub, seq, "task.started", |b| b.extend_from_slice(b"{}"));
        }
        hub.publish_batch(batch);
        assert_eq!(
            ids(&read(&mut stream, 1).await),
            [11, 12, 13],
            "one message"
        );
        let mut middle = Box::pin(hub.stream(Some("boot-11"), 13, CancellationToken::new()));
        assert_eq!(
            ids(&read(&mut middle, 1).await),
            [12, 13],
            "a batch is cut where it was left"
        );
        drop(middle);
        assert_eq!(hub.clients(), 1);
        stop.cancel();
        assert_eq!(read(&mut stream, 1).await, "", "the stream ends at stop");
        drop(stream);
        assert_eq!(hub.clients(), 0);
    }

    #[tokio::test]
    async fn an_id_from_another_boot_or_older_than_the_ring_gets_resync() {
        let hub = Arc::new(Hub::new("boot".into(), 64, 5, 0, Duration::from_secs(60)));
        for seq in 1..=20 {
            hub.publish(seq, "task.queued", "{}");
        }
        for last in ["other-3", "boot-2", "nonsense"] {
            let first = read(
                &mut Box::pin(hub.stream(Some(last), 20, CancellationToken::new())),
                1,
            )
            .await;
            assert!(first.contains("event: resync"), "{last}: {first}");
            assert!(
                ids(&first).is_empty(),
                "{last}: nothing replayed across a gap"
            );
        }
        let first = read(
            &mut Box::pin(hub.stream(Some("boot-15"), 20, CancellationToken::new())),
            1,
        )
        .await;
        assert_eq!(
            ids(&first),
            [16, 17, 18, 19, 20],
            "the ring still holds these"
        );
        hub.gap(25, "the feed fell behind");
        let first = read(
            &mut Box::pin(hub.stream(Some("boot-20"), 25, CancellationToken::new())),
            1,
        )
        .await;
        assert!(
            first.contains("event: resync"),
            "no replay across a gap: {first}"
        );
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_a_tiny_buffer_gets_resync_and_goes_on() {
        let hub = Arc::new(Hub::new("boot".into(), 4, 100, 0, Duration::from_secs(60)));
        let mut stream = Box::pin(hub.stream(None, 0, CancellationToken::new()));
        let _hello = read(&mut stream, 1).await;
        for seq in 1..=10 {
            hub.publish(seq, "task.queued", "{}");
        }
        let next = read(&mut stream, 1).await;
        assert!(next.starts_with("event: resync\n"), "{next}");
        assert!(next.contains("10 messages were dropped for it"), "{next}");
        assert!(next.contains(r#""last_event_id":"boot-10""#), "{next}");
        hub.publish(11, "task.queued", "{}");
        assert_eq!(
            ids(&read(&mut stream, 1).await),
            [11],
            "it goes on from the newest"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_streams_get_keep_alive_comments() {
        let hub = Arc::new(Hub::new("boot".into(), 4, 100, 0, Duration::from_secs(1)));
        let mut stream = Box::pin(hub.stream(None, 0, CancellationToken::new()));
        let _hello = read(&mut stream, 1).await;
        assert_eq!(read(&mut stream, 1).await, ": keep-alive\n\n");
    }
}
