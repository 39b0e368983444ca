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
//! truncated frame or a malformed body is a typed [`Error`], never a panic or an
//! unbounded allocation. Next (issue P2): QUIC connections per peer, with mutual TLS
//! and fault injection in the socket layer.

mod frame;

pub use frame::{decode, encode, Address, Envelope, Error, Kind, Result, DEFAULT_MAX_FRAME, HEADER_LEN, WIRE_VERSION};
