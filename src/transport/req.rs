//! A REQ socket for many round trips at once: each request gets its own
//! NNG context and aio, driven by the aio's callback (send, then receive
//! the reply) and awaited through a oneshot channel.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::nng::{self, Aio, Ctx, Msg, Protocol, Socket};
use super::{TransportError, c_url};

const SENDING: u8 = 0;
const RECEIVING: u8 = 1;

/// The largest reply a client reads. Replies carry at most one task's
/// record (results are capped at 16 MiB by default) or a list.
pub const MAX_REPLY: usize = 256 << 20;

/// A REQ socket connected to one REP socket, for many requests: each one
/// gets its own NNG context, so any number can be in flight at once and
/// each reply comes back to its own request. NNG redials by itself if the
/// peer goes away and comes back.
#[derive(Debug)]
pub struct Requester {
    socket: Socket,
    url: String,
}

impl Requester {
    /// Connects to `url`; a peer that is not listening is an error now.
    pub async fn dial(url: &str) -> Result<Requester, TransportError> {
        let dial_error = |rv: i32| TransportError::Dial {
            url: url.to_owned(),
            source: std::io::Error::other(nng::error_text(rv)),
        };
        let c = c_url(url)?;
        let socket = tokio::task::spawn_blocking(move || {
            let socket = Socket::open(Protocol::Req)?;
            socket.set_recv_max(MAX_REPLY)?;
            socket.dial(&c)?;
            Ok(socket)
        })
        .await
        .map_err(|e| TransportError::Failed {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .map_err(dial_error)?;
        Ok(Requester {
            socket,
            url: url.to_owned(),
        })
    }

    /// One request and its reply, waiting at most `timeout`.
    pub async fn request(&self, body: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError> {
        tokio::time::timeout(timeout, self.round_trip(body))
            .await
            .unwrap_or_else(|_| {
                Err(TransportError::Timeout {
                    url: self.url.clone(),
                    after: timeout,
                })
            })
    }

    /// Sends `body` and waits for the reply. Dropping the future cancels
    /// the request (and waits the moment NNG takes to let go of it).
    pub async fn round_trip(&self, body: &[u8]) -> Result<Vec<u8>, TransportError> {
        let failed = |step: &str, rv: i32| TransportError::Failed {
            url: self.url.clone(),
            reason: format!("{step}: {}", nng::error_text(rv)),
        };
        let (done, reply) = oneshot::channel();
        let op = Box::new(Op {
            state: AtomicU8::new(SENDING),
            ctx: Ctx::open(&self.socket).map_err(|rv| failed("open a context", rv))?,
            aio: std::sync::OnceLock::new(),
            done: Mutex::new(Some(done)),
        });
        let arg = std::ptr::from_ref::<Op>(&op).cast_mut().cast::<c_void>();
        // SAFETY: `op` outlives its aio: the guard below stops the aio
        // before the box is dropped.
        let aio = unsafe { Aio::new(on_op, arg) }.map_err(|rv| failed("allocate an aio", rv))?;
        let _ = op.aio.set(aio);
        let guard = StopOnDrop(&op);
        let msg = Msg::new(body).map_err(|rv| failed("allocate a message", rv))?;
        op.aio().set_msg(msg);
        op.ctx.send(op.aio());
        let outcome = reply.await;
        drop(guard);
        match outcome {
            Ok(Ok(msg)) => Ok(msg.body().to_vec()),
            Ok(Err((step, rv))) => Err(failed(step, rv)),
            Err(_) => Err(failed("receive", nng_sys::NNG_ECLOSED as i32)),
        }
    }
}

/// How a request ended: its reply, or the step that failed and NNG's error.
type Outcome = Result<Msg, (&'static str, i32)>;

/// One request in flight.
struct Op {
    state: AtomicU8,
    ctx: Ctx,
    aio: std::sync::OnceLock<Aio>,
    done: Mutex<Option<oneshot::Sender<Outcome>>>,
}

impl Op {
    fn aio(&self) -> &Aio {
        match self.aio.get() {
            Some(aio) => aio,
            None => unreachable!("an op's aio is set before its first operation"),
        }
    }

    fn finish(&self, outcome: Outcome) {
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done {
            let _ = done.send(outcome);
        }
    }
}

/// Stops the op's aio when the request ends or its future is dropped, so
/// that no callback runs on a freed op.
struct StopOnDrop<'a>(&'a Op);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.aio().stop();
        // A message left in the aio (a send that failed) is freed here.
        drop(self.0.aio().take_msg());
    }
}

/// The aio callback of a request, on an NNG thread.
unsafe extern "C" fn on_op(arg: *mut c_void) {
    // SAFETY: `arg` is the boxed Op, alive until its aio has stopped.
    let op = unsafe { &*arg.cast::<Op>().cast_const() };
    let aio = op.aio();
    let result = aio.result();
    match op.state.load(Ordering::SeqCst) {
        SENDING if result == 0 => {
            op.state.store(RECEIVING, Ordering::SeqCst);
            op.ctx.receive(aio);
        }
        SENDING => {
            drop(aio.take_msg());
            op.finish(Err(("send", result)));
        }
        _ => match (result, aio.take_msg()) {
            (0, Some(msg)) => op.finish(Ok(msg)),
            (rv, _) => op.finish(Err(("receive", rv))),
        },
    }
}

/// Sends `body` to the REP socket at `url` and waits up to `timeout` for the
/// reply (connecting included), on a connection of its own.
pub async fn request(url: &str, body: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError> {
    tokio::time::timeout(timeout, async {
        Requester::dial(url).await?.round_trip(body).await
    })
    .await
    .unwrap_or_else(|_| {
        Err(TransportError::Timeout {
            url: url.to_owned(),
            after: timeout,
        })
    })
}
