//! NNG, and nothing else: the only module that opens sockets. Everyone else
//! sends and receives bytes through these four pieces:
//!
//! - [`ReplyServer`]: a REP socket served by many NNG contexts at once, so that
//!   every reply goes to its own request (FastWorker 0.3.0 used one plain REP
//!   socket and crossed replies under load);
//! - [`Requester`]: a REQ socket for many round trips, each on its own
//!   context, with a timeout ([`request`] for a one-off);
//! - [`announce`]: `WORKER_ANNOUNCE:<id>:<address>` on a BUS socket, every
//!   interval, as FastWorker's clients expect;
//! - [`discover`]: the first such announcement;
//! - [`Pair0Senders`]: messages to PAIR0 peers (completion callbacks, as
//!   FastWorker sends them).
//!
//! Binding: `anng` (the nanomsg project's tokio bindings, NNG 1.11, built from
//! source). Its socket drop runs `block_in_place`, so everything here needs
//! tokio's multi-thread runtime.

use std::ffi::CString;
use std::future::Future;
use std::time::Duration;

use anng::Message;
use anng::protocols::{bus0, reqrep0};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

/// What can go wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{url} is not a valid address: {reason}")]
    BadAddress { url: String, reason: String },
    #[error("cannot listen on {url}: {source}")]
    Listen {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach {url}: {source}")]
    Dial {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no reply from {url} within {}", humantime::format_duration(*after))]
    Timeout { url: String, after: Duration },
    #[error("request to {url} failed: {reason}")]
    Failed { url: String, reason: String },
}

fn c_url(url: &str) -> Result<CString, TransportError> {
    CString::new(url).map_err(|_| TransportError::BadAddress {
        url: url.to_owned(),
        reason: "it contains a NUL byte".to_owned(),
    })
}

/// A listening REP socket.
#[derive(Debug)]
pub struct ReplyServer {
    socket: anng::Socket<reqrep0::Rep0>,
    url: String,
}

impl ReplyServer {
    /// Binds `url` now, so that a bad or busy address is an error at start-up.
    pub async fn listen(url: &str) -> Result<ReplyServer, TransportError> {
        let socket =
            reqrep0::Rep0::listen(c_url(url)?)
                .await
                .map_err(|source| TransportError::Listen {
                    url: url.to_owned(),
                    source,
                })?;
        Ok(ReplyServer {
            socket,
            url: url.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves requests until `shutdown`, `contexts` of them at once: each
    /// context receives one request, awaits `handler` (which may take as long
    /// as a task runs) and replies on that same context. Closes the socket on
    /// return.
    pub async fn serve<H, F>(self, contexts: usize, handler: H, shutdown: CancellationToken)
    where
        H: Fn(Vec<u8>) -> F,
        F: Future<Output = Vec<u8>>,
    {
        let mut loops: FuturesUnordered<_> = (0..contexts.max(1))
            .map(|_| self.context_loop(&handler, &shutdown))
            .collect();
        while loops.next().await.is_some() {}
    }

    async fn context_loop<H, F>(&self, handler: &H, shutdown: &CancellationToken)
    where
        H: Fn(Vec<u8>) -> F,
        F: Future<Output = Vec<u8>>,
    {
        let mut ctx = self.socket.context();
        loop {
            let received = tokio::select! {
                received = ctx.receive() => received,
                () = shutdown.cancelled() => return,
            };
            let (request, responder) = match received {
                Ok(pair) => pair,
                Err(e) => {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tracing::warn!(url = %self.url, "receive failed: {e:?}");
                    continue;
                }
            };
            let reply = handler(request.as_slice().to_vec()).await;
            if let Err((_, e, _)) = responder.reply(Message::from(reply.as_slice())).await {
                // The requester went away; there is no one to tell.
                tracing::debug!(url = %self.url, "reply not delivered: {e:?}");
            }
        }
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

/// A REQ socket connected to one REP socket, for many requests: each one
/// gets its own NNG context, so any number can be in flight at once and
/// each reply comes back to its own request. NNG redials by itself if the
/// peer goes away and comes back.
#[derive(Debug)]
pub struct Requester {
    socket: anng::Socket<reqrep0::Req0>,
    url: String,
}

impl Requester {
    pub async fn dial(url: &str) -> Result<Requester, TransportError> {
        let socket =
            reqrep0::Req0::dial(c_url(url)?)
                .await
                .map_err(|source| TransportError::Dial {
                    url: url.to_owned(),
                    source,
                })?;
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

    async fn round_trip(&self, body: &[u8]) -> Result<Vec<u8>, TransportError> {
        let mut ctx = self.socket.context();
        let reply = ctx
            .request(Message::from(body))
            .await
            .map_err(|(e, _)| failed(&self.url, format!("send: {e:?}")))?;
        let reply = reply
            .await
            .map_err(|e| failed(&self.url, format!("receive: {e:?}")))?;
        Ok(reply.as_slice().to_vec())
    }
}

fn failed(url: &str, reason: String) -> TransportError {
    TransportError::Failed {
        url: url.to_owned(),
        reason,
    }
}

/// The announcement FastWorker's clients look for.
pub fn announcement(worker_id: &str, base_address: &str) -> String {
    format!("WORKER_ANNOUNCE:{worker_id}:{base_address}")
}

/// Parses an announcement into (worker id, base address).
pub fn parse_announcement(text: &str) -> Option<(String, String)> {
    let rest = text.strip_prefix("WORKER_ANNOUNCE:")?;
    let (id, address) = rest.split_once(':')?;
    (!id.is_empty() && !address.is_empty()).then(|| (id.to_owned(), address.to_owned()))
}

/// Binds a BUS socket on `url` and returns a future that sends `message` at
/// once and then every `every` until `shutdown`.
pub async fn announce(
    url: &str,
    message: String,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()> + use<>, TransportError> {
    let mut socket =
        bus0::Bus0::listen(c_url(url)?)
            .await
            .map_err(|source| TransportError::Listen {
                url: url.to_owned(),
                source,
            })?;
    let url = url.to_owned();
    Ok(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if let Err((e, _)) = socket.send(Message::from(message.as_bytes())).await {
                tracing::debug!(%url, "announcement not sent: {e:?}");
            }
            // Peers never speak on this bus; drop anything they send.
            while let Ok(Some(_)) = socket.try_receive() {}
        }
    })
}

/// Waits up to `timeout` for the first announcement on the BUS at `url`.
pub async fn discover(url: &str, timeout: Duration) -> Result<(String, String), TransportError> {
    let mut socket =
        bus0::Bus0::dial(c_url(url)?)
            .await
            .map_err(|source| TransportError::Dial {
                url: url.to_owned(),
                source,
            })?;
    let wait = async {
        loop {
            match socket.receive().await {
                Ok(msg) => {
                    if let Some(found) =
                        parse_announcement(&String::from_utf8_lossy(msg.as_slice()))
                    {
                        return Ok(found);
                    }
                }
                Err(e) => return Err(format!("{e:?}")),
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(reason)) => Err(TransportError::Failed {
            url: url.to_owned(),
            reason,
        }),
        Err(_) => Err(TransportError::Timeout {
            url: url.to_owned(),
            after: timeout,
        }),
    }
}

/// PAIR0 connections to callback receivers: FastWorker's receivers are
/// PAIR0 sockets, and `anng` only has PAIR1 (a different protocol that a
/// PAIR0 peer refuses), so these use NNG's C API directly, on a thread of
/// their own. A socket is kept open per address and reused: closing it right
/// after a send can drop the message still queued in it. Sockets idle for
/// [`PAIR0_IDLE`] are closed.
#[derive(Debug)]
pub struct Pair0Senders {
    /// One thread per shard; an address always goes to the same one (PAIR0
    /// takes one peer, so one connection per address), and a slow receiver
    /// holds up only the addresses that share its shard.
    shards: Vec<std::sync::mpsc::Sender<Pair0Job>>,
}

/// How many callback threads send at once.
const PAIR0_SHARDS: usize = 4;

/// How long an unused callback connection stays open.
pub const PAIR0_IDLE: Duration = Duration::from_secs(60);

struct Pair0Job {
    url: CString,
    body: Vec<u8>,
    millis: i32,
    done: tokio::sync::oneshot::Sender<Result<(), (&'static str, i32)>>,
}

impl Pair0Senders {
    pub fn new() -> Pair0Senders {
        let shards = (0..PAIR0_SHARDS)
            .map(|i| {
                let (jobs, rx) = std::sync::mpsc::channel::<Pair0Job>();
                let spawned = std::thread::Builder::new()
                    .name(format!("fastworker-callbacks-{i}"))
                    .spawn(move || pair0_thread(&rx));
                if let Err(e) = spawned {
                    tracing::error!("cannot start a callback thread: {e}");
                }
                jobs
            })
            .collect();
        Pair0Senders { shards }
    }

    /// Sends one message to the PAIR0 socket listening at `url`, waiting at
    /// most `timeout` for the send.
    pub async fn send(
        &self,
        url: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job = Pair0Job {
            url: c_url(url)?,
            body: body.to_vec(),
            millis: i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX),
            done,
        };
        let shard = {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            BuildHasherDefault::<DefaultHasher>::default().hash_one(url) as usize
                % self.shards.len()
        };
        self.shards[shard]
            .send(job)
            .map_err(|_| failed(url, "the callback thread has stopped".to_owned()))?;
        let result = result
            .await
            .map_err(|_| failed(url, "the callback thread has stopped".to_owned()))?;
        result.map_err(|(step, errno)| {
            let message = nng_error(errno);
            match step {
                "dial" => TransportError::Dial {
                    url: url.to_owned(),
                    source: std::io::Error::other(message),
                },
                _ => failed(url, format!("{step}: {message}")),
            }
        })
    }
}

impl Default for Pair0Senders {
    fn default() -> Self {
        Pair0Senders::new()
    }
}

fn pair0_thread(rx: &std::sync::mpsc::Receiver<Pair0Job>) {
    use std::collections::HashMap;
    use std::time::Instant;
    let mut open: HashMap<CString, (nng_sys::nng_socket, Instant)> = HashMap::new();
    loop {
        let job = match rx.recv_timeout(PAIR0_IDLE) {
            Ok(job) => Some(job),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(job) = job {
            let socket = match open.get(&job.url) {
                Some((socket, _)) => Ok(*socket),
                None => pair0_open(&job.url),
            };
            let result = socket.and_then(|socket| {
                pair0_send(socket, &job.body, job.millis).inspect_err(|_| pair0_close(socket))?;
                open.insert(job.url.clone(), (socket, Instant::now()));
                Ok(())
            });
            if result.is_err() {
                open.remove(&job.url);
            }
            let _ = job.done.send(result);
        }
        open.retain(|_, (socket, used)| {
            let keep = used.elapsed() < PAIR0_IDLE;
            if !keep {
                pair0_close(*socket);
            }
            keep
        });
    }
    for (socket, _) in open.into_values() {
        pair0_close(socket);
    }
}

/// Opens a PAIR0 socket and dials `url` (synchronously: a receiver that is
/// not listening is an error now, and is tried again later).
#[allow(unsafe_code)]
fn pair0_open(url: &CString) -> Result<nng_sys::nng_socket, (&'static str, i32)> {
    let mut socket = nng_sys::nng_socket::default();
    // SAFETY: `socket` is a valid out-pointer for nng_pair0_open.
    let rv = unsafe { nng_sys::nng_pair0_open(&mut socket) };
    if rv != 0 {
        return Err(("open", rv));
    }
    // SAFETY: the socket is open; `url` is NUL-terminated; a null dialer
    // pointer is allowed; flags 0 dial synchronously.
    let rv = unsafe { nng_sys::nng_dial(socket, url.as_ptr(), std::ptr::null_mut(), 0) };
    if rv != 0 {
        pair0_close(socket);
        return Err(("dial", rv));
    }
    Ok(socket)
}

#[allow(unsafe_code)]
fn pair0_send(
    socket: nng_sys::nng_socket,
    body: &[u8],
    millis: i32,
) -> Result<(), (&'static str, i32)> {
    let opt = nng_sys::NNG_OPT_SENDTIMEO.as_ptr().cast();
    // SAFETY: the socket is open; `opt` is a NUL-terminated option name.
    let rv = unsafe { nng_sys::nng_socket_set_ms(socket, opt, millis) };
    if rv != 0 {
        return Err(("set send timeout", rv));
    }
    // SAFETY: the socket is open; without NNG_FLAG_ALLOC nng_send copies
    // `body.len()` bytes from the pointer and does not keep it.
    let rv = unsafe { nng_sys::nng_send(socket, body.as_ptr().cast_mut().cast(), body.len(), 0) };
    if rv != 0 {
        return Err(("send", rv));
    }
    Ok(())
}

#[allow(unsafe_code)]
fn pair0_close(socket: nng_sys::nng_socket) {
    // SAFETY: each socket is closed once, when it leaves the open set.
    unsafe { nng_sys::nng_close(socket) };
}

#[allow(unsafe_code)]
fn nng_error(errno: i32) -> String {
    // SAFETY: nng_strerror returns a pointer to a static NUL-terminated string.
    let text = unsafe { std::ffi::CStr::from_ptr(nng_sys::nng_strerror(errno)) };
    text.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip() {
        let text = announcement("control-plane", "tcp://127.0.0.1:5555");
        assert_eq!(text, "WORKER_ANNOUNCE:control-plane:tcp://127.0.0.1:5555");
        assert_eq!(
            parse_announcement(&text),
            Some(("control-plane".into(), "tcp://127.0.0.1:5555".into()))
        );
        assert_eq!(parse_announcement("HELLO"), None);
    }
}
