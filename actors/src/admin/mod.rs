//! The admin door of a member: observe its tree, follow its lifecycle events, and
//! kill any of its actors by path (chaos). Supervised like any other actor, at
//! `/<member>/admin`; the routes are listed in [`http`].

mod actor;
pub mod http;
pub mod kv;
mod members;
mod metrics;
#[cfg(test)]
mod tests;

pub use actor::AdminDoor;
pub use http::{KillRequest, Killed, NetDirection, NetRequest, PingOutcome, PingRequest};
