//! Messages between keelson processes.
//!
//! Today: the wire format. An [`Envelope`] names its target (member and actor path),
//! its sender, a correlation id and what kind of message it is; its payload is opaque
//! bytes (Kubernetes objects ride there as JSON, since they do not survive bincode).
//! Envelopes are encoded with bincode 2 (serde) inside frames:
//!
//! ```text
//! +---------+----------------+---------------------------+
//! | version | length (u32 BE)| bincode(Envelope)         |
//! |  1 byte |     4 bytes    | `length` bytes            |
//! +---------+----------------+---------------------------+
//! ```
//!
//! Decoding never trusts the peer: an unknown version, a length past the limit, a
//! truncated frame or a malformed body is a typed error, never a panic or an
//! unbounded allocation.
//!
//! - [`tls`]: the cluster CA and members' identities (mutual TLS 1.3, ring only);
//! - [`faults`]: loss, delay, duplication, reordering and partitions in the socket layer;
//! - [`join`]: tokens, and joining a cluster with one;
//! - [`socket`]: the UDP socket's options (datagrams apart, a wide receive buffer);
//! - [`endpoint`]: one QUIC endpoint per process: request/response, one-way, streamed
//!   replies and raw bidirectional streams, with reconnection and per-peer counters.

mod endpoint;
pub mod faults;
pub mod frame;
pub mod join;
pub mod socket;
pub mod tls;

use std::time::Duration;

pub use endpoint::{
    Congestion, Inbound, Link, PeerStats, Reply, Transport, TransportConfig, TransportRuntime, MAX_DATAGRAM,
};
pub use frame::{Address, Envelope, Kind};
pub use quinn::{RecvStream, SendStream};

/// What a transport caller can run into. Retryable faults (`Unreachable`, `Timeout`,
/// `Closed`) are apart from answers (`Remote`) and misconfiguration (`Refused`, `Config`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{peer} unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    #[error("no reply from {peer} within {after:?}")]
    Timeout { peer: String, after: Duration },
    #[error("{peer} refused: {reason}")]
    Refused { peer: String, reason: String },
    #[error("remote failure {code}: {message}")]
    Remote { code: u16, message: String },
    #[error("stream closed: {0}")]
    Closed(String),
    #[error("unknown peer {0:?}")]
    UnknownPeer(String),
    #[error(transparent)]
    Frame(#[from] frame::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("socket: {0}")]
    Io(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
