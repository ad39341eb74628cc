//! What a listening process allows its peers: how many connections (in all
//! and from one address), how long one may sit idle, and how many bytes of
//! large messages it holds at once. Shared by every socket a control plane
//! listens on, since descriptors and memory are the process's.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::nng::{self, Socket};
use crate::throttle::Throttle;

/// Messages up to this size are always taken in; larger ones count against
/// [`Limits::inflight_bytes`].
pub const SMALL_MESSAGE: usize = 64 << 10;

/// The limits (the control plane's flags).
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest message read; a peer that announces a larger one has
    /// its connection closed before the message is read.
    pub max_message: usize,
    /// Requests one socket works on at once (a blocking submit holds one
    /// until its task ends); past this, requests are answered "busy".
    pub max_pending: usize,
    /// Connections open at once, over all sockets.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_per_peer: usize,
    /// A connection with no request for this long, and none under way, is
    /// closed (NNG clients dial again by themselves when they next send).
    pub idle_timeout: Duration,
    /// Bytes of messages over [`SMALL_MESSAGE`] held at once, while they
    /// are decoded; a large message past this is answered "busy".
    pub inflight_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 64 << 20,
            max_pending: 10_000,
            max_connections: 4096,
            max_per_peer: 1024,
            idle_timeout: Duration::from_secs(300),
            inflight_bytes: 256 << 20,
        }
    }
}

/// Who is at the other end of a connection, for the per-peer limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    Ip(IpAddr),
    /// `ipc://` and `inproc://`: a process on this machine.
    Local,
}

#[derive(Debug)]
struct Conn {
    pipe: nng_sys::nng_pipe,
    peer: Peer,
    last_active: Instant,
    /// Requests received on it and not yet answered.
    pending: u32,
}

#[derive(Debug, Default)]
struct Table {
    conns: HashMap<u32, Conn>,
    per_peer: HashMap<Peer, usize>,
}

/// The connections of every listening socket, with the limits on them.
#[derive(Debug)]
pub struct Guard {
    pub limits: Limits,
    table: Mutex<Table>,
    inflight: AtomicUsize,
    /// Connections refused by a limit, large messages refused by the
    /// budget, idle connections closed.
    refused: AtomicU64,
    busy: AtomicU64,
    closed_idle: AtomicU64,
    /// A flood of refusals is logged once a minute, not per connection.
    throttle: Throttle,
}

/// Counts of what the limits turned away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turned {
    pub connections_refused: u64,
    pub busy_replies: u64,
    pub idle_closed: u64,
    pub open: usize,
}

impl Guard {
    pub fn new(limits: Limits) -> Arc<Guard> {
        Arc::new(Guard {
            limits,
            table: Mutex::default(),
            inflight: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            closed_idle: AtomicU64::new(0),
            throttle: Throttle::new(Duration::from_secs(60)),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn turned(&self) -> Turned {
        Turned {
            connections_refused: self.refused.load(Ordering::Relaxed),
            busy_replies: self.busy.load(Ordering::Relaxed),
            idle_closed: self.closed_idle.load(Ordering::Relaxed),
            open: self.table().conns.len(),
        }
    }

    /// Watches `socket`'s connections: new ones past a limit are closed at
    /// once. The guard stays alive as long as the process (NNG may call
    /// back after the socket is closed, so it is never freed).
    pub fn watch(self: &Arc<Guard>, socket: &Socket) -> Result<(), i32> {
        let arg = Arc::into_raw(Arc::clone(self)).cast_mut().cast::<c_void>();
        for event in [nng_sys::NNG_PIPE_EV_ADD_PRE, nng_sys::NNG_PIPE_EV_REM_POST] {
            // SAFETY: the socket is open; `arg` points to a Guard that is
            // never freed (its count was raised above and never lowered).
            let rv = unsafe { nng_sys::nng_pipe_notify(socket.raw(), event, Some(on_pipe), arg) };
            if rv != 0 {
                return Err(rv);
            }
        }
        Ok(())
    }

    /// A new connection: whether it may stay.
    fn admit(&self, id: u32, pipe: nng_sys::nng_pipe, peer: Peer) -> Result<(), String> {
        let mut table = self.table();
        let total = table.conns.len();
        let from_peer = table.per_peer.get(&peer).copied().unwrap_or(0);
        if total >= self.limits.max_connections {
            return Err(format!(
                "{total} connections are open (--max-connections {})",
                self.limits.max_connections
            ));
        }
        if from_peer >= self.limits.max_per_peer {
            return Err(format!(
                "{from_peer} connections are open from {} (--max-connections-per-peer {})",
                peer_name(peer),
                self.limits.max_per_peer
            ));
        }
        *table.per_peer.entry(peer).or_default() += 1;
        table.conns.insert(
            id,
            Conn {
                pipe,
                peer,
                last_active: Instant::now(),
                pending: 0,
            },
        );
        Ok(())
    }

    fn forget(&self, id: u32) {
        let mut table = self.table();
        if let Some(conn) = table.conns.remove(&id)
            && let Some(n) = table.per_peer.get_mut(&conn.peer)
        {
            *n -= 1;
            if *n == 0 {
                table.per_peer.remove(&conn.peer);
            }
        }
    }

    /// A request came in on connection `id`.
    pub fn request_started(&self, id: u32) {
        if let Some(conn) = self.table().conns.get_mut(&id) {
            conn.last_active = Instant::now();
            conn.pending += 1;
        }
    }

    /// The request on connection `id` has been answered.
    pub fn request_ended(&self, id: u32) {
        if let Some(conn) = self.table().conns.get_mut(&id) {
            conn.last_active = Instant::now();
            conn.pending = conn.pending.saturating_sub(1);
        }
    }

    /// Closes connections idle for [`Limits::idle_timeout`] with nothing
    /// under way; returns how many.
    pub fn close_idle(&self, now: Instant) -> usize {
        let idle: Vec<nng_sys::nng_pipe> = self
            .table()
            .conns
            .values()
            .filter(|c| c.pending == 0 && now >= c.last_active + self.limits.idle_timeout)
            .map(|c| c.pipe)
            .collect();
        for pipe in &idle {
            nng::close_pipe(*pipe);
        }
        self.closed_idle
            .fetch_add(idle.len() as u64, Ordering::Relaxed);
        idle.len()
    }

    /// Runs [`Guard::close_idle`] until `stop`.
    pub async fn sweep(self: Arc<Guard>, stop: tokio_util::sync::CancellationToken) {
        let every = (self.limits.idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(10));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let closed = self.close_idle(Instant::now());
                    if closed > 0 {
                        tracing::debug!(closed, "idle connections closed");
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }

    /// Takes `len` bytes from the budget for large messages; when they do
    /// not fit, why (the caller answers "busy").
    pub fn reserve(self: &Arc<Guard>, len: usize) -> Result<Reserved, String> {
        if len <= SMALL_MESSAGE {
            return Ok(Reserved {
                guard: None,
                len: 0,
            });
        }
        let limit = self.limits.inflight_bytes;
        let taken = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + len <= limit).then_some(used + len)
            });
        match taken {
            Ok(_) => Ok(Reserved {
                guard: Some(Arc::clone(self)),
                len,
            }),
            Err(used) => Err(format!(
                "a message of {len} bytes answered busy: {used} bytes of large messages are being read (--max-inflight-bytes {limit})"
            )),
        }
    }

    /// Counts a request answered "busy".
    pub fn count_busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs `what` at most once a minute, with how many were turned away.
    pub fn warn(&self, what: &str) {
        if self.throttle.allow() {
            let turned = self.turned();
            tracing::warn!(
                refused_connections = turned.connections_refused,
                busy_replies = turned.busy_replies,
                "{what} (logged at most once a minute)"
            );
        }
    }
}

/// Bytes taken from the budget; given back when dropped.
#[derive(Debug)]
pub struct Reserved {
    guard: Option<Arc<Guard>>,
    len: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(guard) = &self.guard {
            guard.inflight.fetch_sub(self.len, Ordering::AcqRel);
        }
    }
}

fn peer_name(peer: Peer) -> String {
    match peer {
        Peer::Ip(ip) => ip.to_string(),
        Peer::Local => "this machine (ipc)".to_owned(),
    }
}

/// NNG's connection events, on an NNG thread.
unsafe extern "C" fn on_pipe(
    pipe: nng_sys::nng_pipe,
    event: nng_sys::nng_pipe_ev,
    arg: *mut c_void,
) {
    // SAFETY: `arg` is the Guard `watch` leaked for this socket, alive for
    // the rest of the process.
    let guard = unsafe { &*arg.cast::<Guard>().cast_const() };
    // SAFETY: nng_pipe_id only reads the handle.
    let id = u32::try_from(unsafe { nng_sys::nng_pipe_id(pipe) }).unwrap_or(0);
    match event {
        nng_sys::NNG_PIPE_EV_ADD_PRE => {
            let peer = nng::peer_ip(pipe).map_or(Peer::Local, Peer::Ip);
            if let Err(why) = guard.admit(id, pipe, peer) {
                guard.refused.fetch_add(1, Ordering::Relaxed);
                guard.warn(&format!(
                    "a connection from {} refused: {why}",
                    peer_name(peer)
                ));
                // SAFETY: closing a pipe from its ADD_PRE callback is how NNG
                // lets an application refuse it.
                unsafe { nng_sys::nng_pipe_close(pipe) };
            }
        }
        nng_sys::NNG_PIPE_EV_REM_POST => guard.forget(id),
        _ => {}
    }
}
