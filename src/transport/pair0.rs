//! Messages to PAIR0 peers: completion callbacks, as FastWorker sends them
//! (its receivers are PAIR0 sockets).

use std::collections::HashMap;
use std::ffi::CString;
use std::time::{Duration, Instant};

use super::nng::{self, Protocol, Socket};
use super::{TransportError, c_url, failed};

/// PAIR0 connections to callback receivers, on threads of their own (NNG's
/// PAIR0 calls block). A socket is kept open per address and reused:
/// closing it right after a send can drop the message still queued in it.
/// Sockets idle for [`PAIR0_IDLE`] are closed.
#[derive(Debug)]
pub struct Pair0Senders {
    /// One thread per shard; an address always goes to the same one (PAIR0
    /// takes one peer, so one connection per address), and a slow receiver
    /// holds up only the addresses that share its shard.
    shards: Vec<std::sync::mpsc::Sender<Job>>,
}

/// How many callback threads send at once.
const SHARDS: usize = 4;

/// How long an unused callback connection stays open.
pub const PAIR0_IDLE: Duration = Duration::from_secs(60);

/// A callback receiver has nothing to say to us.
const MAX_FROM_RECEIVER: usize = 4096;

struct Job {
    url: CString,
    body: Vec<u8>,
    millis: i32,
    done: tokio::sync::oneshot::Sender<Result<(), (&'static str, i32)>>,
}

impl Pair0Senders {
    pub fn new() -> Pair0Senders {
        let shards = (0..SHARDS)
            .map(|i| {
                let (jobs, rx) = std::sync::mpsc::channel::<Job>();
                let spawned = std::thread::Builder::new()
                    .name(format!("fastworker-callbacks-{i}"))
                    .spawn(move || shard(&rx));
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
        let job = Job {
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
            let message = nng::error_text(errno);
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

fn shard(rx: &std::sync::mpsc::Receiver<Job>) {
    let mut open: HashMap<CString, (Socket, Instant)> = HashMap::new();
    loop {
        let job = match rx.recv_timeout(PAIR0_IDLE) {
            Ok(job) => Some(job),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(job) = job {
            let result = match open.remove(&job.url) {
                Some((socket, _)) => Ok(socket),
                None => connect(&job.url),
            }
            .and_then(|socket| {
                socket
                    .set_ms(nng_sys::NNG_OPT_SENDTIMEO, job.millis)
                    .map_err(|rv| ("set send timeout", rv))?;
                socket.send(&job.body).map_err(|rv| ("send", rv))?;
                Ok(socket)
            });
            let result = result.map(|socket| {
                open.insert(job.url.clone(), (socket, Instant::now()));
            });
            let _ = job.done.send(result);
        }
        open.retain(|_, (_, used)| used.elapsed() < PAIR0_IDLE);
    }
}

/// Opens a PAIR0 socket and dials `url` (synchronously: a receiver that is
/// not listening is an error now, and is tried again later).
fn connect(url: &CString) -> Result<Socket, (&'static str, i32)> {
    let socket = Socket::open(Protocol::Pair0).map_err(|rv| ("open", rv))?;
    socket
        .set_recv_max(MAX_FROM_RECEIVER)
        .map_err(|rv| ("set the size limit", rv))?;
    socket.dial(url).map_err(|rv| ("dial", rv))?;
    Ok(socket)
}
