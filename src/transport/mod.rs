//! NNG, and nothing else: the only module that opens sockets (through
//! `nng-sys`, NNG 1.11 built from source). Everyone else sends and receives
//! bytes through these pieces:
//!
//! - [`ReplyServer`] ([`rep`]): a REP socket served by NNG contexts, so
//!   that every reply goes to its own request (FastWorker 0.3.0 used one
//!   plain REP socket and crossed replies under load), with [`Limits`] on
//!   message size, requests under way, connections and memory;
//! - [`Requester`] ([`req`]): a REQ socket for many round trips, each on its
//!   own context, with a timeout ([`request`] for a one-off);
//! - [`announce`] and [`discover`] ([`bus`]): `WORKER_ANNOUNCE:<id>:<address>`
//!   on a BUS socket, as FastWorker's clients expect;
//! - [`Pair0Senders`] ([`pair0`]): messages to PAIR0 peers (completion
//!   callbacks, as FastWorker sends them).
//!
//! [`nng`] owns NNG's C objects; [`limits`] what a listener allows its peers.
//! NNG calls back on its own threads; those callbacks only hand work over
//! (a channel send, the next receive), never block, and never free the
//! object they run for.

pub mod bus;
pub mod limits;
mod nng;
pub mod pair0;
pub mod rep;
pub mod req;

use std::ffi::CString;
use std::time::Duration;

pub use self::bus::{announce, announcement, discover, parse_announcement};
pub use self::limits::{Guard, Limits, Turned};
pub use self::pair0::{PAIR0_IDLE, Pair0Senders};
pub use self::rep::{ReplyServer, Request};
pub use self::req::{Requester, request};

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

fn failed(url: &str, reason: String) -> TransportError {
    TransportError::Failed {
        url: url.to_owned(),
        reason,
    }
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
