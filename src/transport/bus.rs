//! Discovery on an NNG BUS: a control plane announces
//! `WORKER_ANNOUNCE:<id>:<address>` every interval, as FastWorker's clients
//! expect, and clients wait for the first announcement.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::nng::{self, Protocol, Socket};
use super::{TransportError, c_url};

/// Nobody speaks to an announcer, and announcements are short: a peer that
/// sends more is cut off before it is read.
const MAX_ANNOUNCEMENT: usize = 4096;

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
    let listen_error = |rv: i32| TransportError::Listen {
        url: url.to_owned(),
        source: std::io::Error::other(nng::error_text(rv)),
    };
    let socket = Socket::open(Protocol::Bus).map_err(listen_error)?;
    socket
        .set_recv_max(MAX_ANNOUNCEMENT)
        .map_err(listen_error)?;
    socket.listen(&c_url(url)?).map_err(listen_error)?;
    let url = url.to_owned();
    Ok(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(rv) = socket.send_now(message.as_bytes()) {
                tracing::debug!(%url, "announcement not sent: {}", nng::error_text(rv));
            }
            // Peers never speak on this bus; drop anything they send.
            while socket.receive(false).is_ok() {}
        }
    })
}

/// Waits up to `timeout` for the first announcement on the BUS at `url`.
pub async fn discover(url: &str, timeout: Duration) -> Result<(String, String), TransportError> {
    let c = c_url(url)?;
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let found = tokio::task::spawn_blocking(move || {
        let socket = Socket::open(Protocol::Bus).map_err(|rv| ("open", rv))?;
        socket
            .set_recv_max(MAX_ANNOUNCEMENT)
            .map_err(|rv| ("set the size limit", rv))?;
        socket.dial(&c).map_err(|rv| ("dial", rv))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let left = i32::try_from(left.as_millis()).unwrap_or(millis).max(1);
            socket
                .set_ms(nng_sys::NNG_OPT_RECVTIMEO, left)
                .map_err(|rv| ("set the timeout", rv))?;
            let msg = socket.receive(true).map_err(|rv| ("receive", rv))?;
            if let Some(found) = parse_announcement(&String::from_utf8_lossy(msg.body())) {
                return Ok(found);
            }
        }
    })
    .await
    .map_err(|e| TransportError::Failed {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    found.map_err(|(step, rv)| match step {
        "dial" => TransportError::Dial {
            url: url.to_owned(),
            source: std::io::Error::other(nng::error_text(rv)),
        },
        _ if rv == nng_sys::NNG_ETIMEDOUT as i32 => TransportError::Timeout {
            url: url.to_owned(),
            after: timeout,
        },
        _ => TransportError::Failed {
            url: url.to_owned(),
            reason: format!("{step}: {}", nng::error_text(rv)),
        },
    })
}
