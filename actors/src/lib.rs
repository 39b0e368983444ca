//! keelson's actors: the supervision runtime, and every component built on it.
//!
//! - [`runtime`]: supervisors, stable references, crash containment, the registry.
//! - [`admin`]: each member's HTTP door for observing the tree and killing actors.
//! - [`process`]: an OS child process as a supervised actor (`keelson up`'s members).
//! - [`transport`]: the member's side of QUIC: routing inbound messages, remote
//!   references, and the actors that keep links up.
//! - [`store`]: the replicated, sharded configuration store (openraft + redb).
//! - [`member`]: the tree of one `keelson server` process.

pub mod admin;
pub mod api;
pub mod controllers;
pub mod member;
pub mod process;
pub mod runtime;
pub mod store;
pub mod transport;

pub use runtime::*;
