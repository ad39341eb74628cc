//! A listening REP socket, served by NNG contexts.
//!
//! Each context is a small state machine driven by its aio's callback, on
//! NNG's threads: receiving → handling → sending → receiving. A request that
//! arrives goes over a channel to [`ReplyServer::serve`], which runs the
//! handler and starts the reply on the same context, so every reply goes to
//! its own request. Contexts are added as requests are held (a blocking
//! submit holds one until its task ends), so that there are always some
//! receiving, up to [`Limits::max_pending`] requests at once; past that, and
//! for large messages past the in-flight budget, requests are answered with
//! the `busy` reply at once instead of waiting unseen.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::limits::{Guard, Limits, Reserved};
use super::nng::{self, Aio, Ctx, Msg, Protocol, Socket};
use super::{TransportError, c_url};

/// Contexts kept receiving while others hold requests.
const SPARE: usize = 8;

/// How long a stopping server waits for the requests under way to be
/// answered.
const DRAIN: Duration = Duration::from_secs(5);

const RECEIVING: u8 = 0;
const HANDLING: u8 = 1;
const SENDING: u8 = 2;
const STOPPED: u8 = 3;

/// A request as received: its bytes stay in NNG's message (no copy), and
/// large ones hold their share of the in-flight budget until dropped.
#[derive(Debug)]
pub struct Request {
    msg: Msg,
    _reserved: Reserved,
}

impl Request {
    pub fn bytes(&self) -> &[u8] {
        self.msg.body()
    }
}

/// One context with its aio. Boxed, so that the address the callback gets
/// stays put; freed only after its aio has stopped.
struct Slot {
    index: usize,
    state: AtomicU8,
    /// Set when the server stops: a context that has sent its reply does
    /// not receive again.
    stopping: Arc<AtomicBool>,
    ctx: Ctx,
    aio: std::sync::OnceLock<Aio>,
    events: mpsc::UnboundedSender<(usize, Msg)>,
}

impl Slot {
    fn aio(&self) -> &Aio {
        match self.aio.get() {
            Some(aio) => aio,
            None => unreachable!("a slot's aio is set before its first operation"),
        }
    }

    /// Starts receiving the next request.
    fn receive(&self) {
        self.state.store(RECEIVING, Ordering::SeqCst);
        self.ctx.receive(self.aio());
    }
}

impl Drop for Slot {
    /// Whatever dropped the server (a stop, or its task aborted), no
    /// callback may run once the slot's memory is freed.
    fn drop(&mut self) {
        if let Some(aio) = self.aio.get() {
            aio.stop();
        }
    }
}

/// The server's slots. Each is boxed on purpose: its aio's callback holds
/// its address, which must not move when the vector grows.
#[allow(clippy::vec_box)]
type Slots = Vec<Box<Slot>>;

/// The aio callback of a slot, on an NNG thread. It does not touch the
/// slot after handing a request over or starting the next receive: by then
/// the slot may be in use elsewhere.
unsafe extern "C" fn on_slot(arg: *mut c_void) {
    // SAFETY: `arg` is the boxed Slot this aio belongs to, freed only after
    // the aio has stopped (so after this callback has returned).
    let slot = unsafe { &*arg.cast::<Slot>().cast_const() };
    let aio = slot.aio();
    let result = aio.result();
    match slot.state.load(Ordering::SeqCst) {
        RECEIVING => {
            if result == 0
                && let Some(msg) = aio.take_msg()
            {
                slot.state.store(HANDLING, Ordering::SeqCst);
                if let Err(mpsc::error::SendError((_, msg))) = slot.events.send((slot.index, msg)) {
                    // The server is gone: nobody will answer.
                    drop(msg);
                    slot.state.store(STOPPED, Ordering::SeqCst);
                }
                return;
            }
            if closing(result) {
                slot.state.store(STOPPED, Ordering::SeqCst);
                return;
            }
            // Any other error (a connection that broke mid-message): go on.
            slot.ctx.receive(aio);
        }
        SENDING => {
            // A failed send leaves the message with us; the requester will
            // send again, or is gone.
            drop(aio.take_msg());
            if closing(result) || slot.stopping.load(Ordering::SeqCst) {
                slot.state.store(STOPPED, Ordering::SeqCst);
                return;
            }
            slot.receive();
        }
        _ => {}
    }
}

fn closing(result: i32) -> bool {
    result == nng_sys::NNG_ECLOSED as i32 || result == nng_sys::NNG_ECANCELED as i32
}

/// A listening REP socket.
#[derive(Debug)]
pub struct ReplyServer {
    socket: Socket,
    url: String,
    guard: Arc<Guard>,
}

impl ReplyServer {
    /// Binds `url` now, so that a bad or busy address is an error at
    /// start-up, with `guard`'s limits on its connections and messages.
    pub fn listen(url: &str, guard: &Arc<Guard>) -> Result<ReplyServer, TransportError> {
        let listen_error = |rv: i32| TransportError::Listen {
            url: url.to_owned(),
            source: std::io::Error::other(nng::error_text(rv)),
        };
        let socket = Socket::open(Protocol::Rep).map_err(listen_error)?;
        socket
            .set_recv_max(guard.limits.max_message)
            .map_err(listen_error)?;
        guard.watch(&socket).map_err(listen_error)?;
        socket.listen(&c_url(url)?).map_err(listen_error)?;
        Ok(ReplyServer {
            socket,
            url: url.to_owned(),
            guard: Arc::clone(guard),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves requests until `shutdown`: each is handed to `handler` (which
    /// may take as long as a task runs) and its reply sent back on its own
    /// context. `busy` is the reply to a request turned away by a limit.
    /// On `shutdown` it stops receiving, lets the requests under way be
    /// answered (for [`DRAIN`] at most), then closes the socket.
    pub async fn serve<H, F>(self, handler: H, busy: Vec<u8>, shutdown: CancellationToken)
    where
        H: Fn(Request) -> F,
        F: Future<Output = Vec<u8>>,
    {
        let limits: Limits = self.guard.limits.clone();
        let (events, mut received) = mpsc::unbounded_channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let mut slots: Slots = Vec::new();
        let mut handling = 0usize;
        let handler = &handler;
        let mut running = FuturesUnordered::new();
        for _ in 0..SPARE {
            self.add_slot(&mut slots, &events, &stopping);
        }
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if let Some(until) = drain_until {
                let sending = slots
                    .iter()
                    .any(|s| s.state.load(Ordering::SeqCst) == SENDING);
                if (running.is_empty() && !sending) || tokio::time::Instant::now() >= until {
                    break;
                }
            }
            tokio::select! {
                Some((index, msg)) = received.recv() => {
                    if drain_until.is_some() {
                        // Came in as the server stopped: left unanswered
                        // (the requester sends it again elsewhere or later).
                        continue;
                    }
                    let pipe = msg.pipe();
                    self.guard.request_started(pipe);
                    let reserved = if handling >= limits.max_pending {
                        Err(format!(
                            "a request on {} answered busy: {handling} requests are under way (--max-pending {})",
                            self.url, limits.max_pending
                        ))
                    } else {
                        self.guard.reserve(msg.body().len())
                    };
                    let reserved = match reserved {
                        Ok(reserved) => reserved,
                        Err(why) => {
                            self.guard.count_busy();
                            self.guard.warn(&why);
                            drop(msg);
                            self.reply(&slots[index], &busy, pipe);
                            continue;
                        }
                    };
                    handling += 1;
                    let request = Request { msg, _reserved: reserved };
                    running.push(async move { (index, pipe, handler(request).await) });
                    // Keep some contexts receiving, up to the limit.
                    while slots.len() < handling + SPARE && slots.len() < limits.max_pending + SPARE {
                        if !self.add_slot(&mut slots, &events, &stopping) {
                            break;
                        }
                    }
                }
                Some((index, pipe, reply)) = running.next(), if !running.is_empty() => {
                    handling -= 1;
                    self.reply(&slots[index], &reply, pipe);
                }
                () = shutdown.cancelled(), if drain_until.is_none() => {
                    drain_until = Some(tokio::time::Instant::now() + DRAIN);
                    stopping.store(true, Ordering::SeqCst);
                    for slot in &slots {
                        if slot.state.load(Ordering::SeqCst) == RECEIVING {
                            slot.aio().stop();
                        }
                    }
                }
                // While draining, look again at the contexts still sending.
                () = tokio::time::sleep(Duration::from_millis(5)), if drain_until.is_some() => {}
            }
        }
        // Stop every context before any is freed: a callback may still run
        // until its aio has stopped.
        for slot in &slots {
            slot.aio().stop();
        }
        drop(running);
        drop(slots);
    }

    /// Opens one more context and starts it receiving; false if NNG says no.
    fn add_slot(
        &self,
        slots: &mut Slots,
        events: &mpsc::UnboundedSender<(usize, Msg)>,
        stopping: &Arc<AtomicBool>,
    ) -> bool {
        let ctx = match Ctx::open(&self.socket) {
            Ok(ctx) => ctx,
            Err(rv) => {
                tracing::error!(url = %self.url, "cannot open another context: {}", nng::error_text(rv));
                return false;
            }
        };
        let slot = Box::new(Slot {
            index: slots.len(),
            state: AtomicU8::new(RECEIVING),
            stopping: Arc::clone(stopping),
            ctx,
            aio: std::sync::OnceLock::new(),
            events: events.clone(),
        });
        let arg = std::ptr::from_ref::<Slot>(&slot)
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: the box stays alive (in `slots`) until after the aio has
        // stopped, in `serve`.
        match unsafe { Aio::new(on_slot, arg) } {
            Ok(aio) => {
                let _ = slot.aio.set(aio);
            }
            Err(rv) => {
                tracing::error!(url = %self.url, "cannot allocate an aio: {}", nng::error_text(rv));
                return false;
            }
        }
        slot.receive();
        slots.push(slot);
        true
    }

    /// Starts `body` back to the request the slot holds, and the slot's
    /// next receive after it (in the callback).
    fn reply(&self, slot: &Slot, body: &[u8], pipe: u32) {
        self.guard.request_ended(pipe);
        match Msg::new(body) {
            Ok(msg) => {
                slot.aio().set_msg(msg);
                slot.state.store(SENDING, Ordering::SeqCst);
                slot.ctx.send(slot.aio());
            }
            Err(rv) => {
                // Out of memory: the request goes unanswered (the requester
                // sends it again) and the context receives the next one.
                tracing::error!(url = %self.url, "cannot allocate a reply: {}", nng::error_text(rv));
                slot.receive();
            }
        }
    }
}
