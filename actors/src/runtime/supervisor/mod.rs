//! Supervisors: actors that own children through specs, restart them by strategy,
//! bound restarts by an intensity, back off between restarts, escalate past it, and
//! shut down in order.
//!
//! ```text
//!  ChildExited ─▶ actor.rs ─▶ state.rs (pure) ─▶ [Command] ─▶ actor.rs launches,
//!                 (actix)      decides               stops, aborts, sets timers
//! ```
//!
//! A supervisor is itself a keelson actor, so it shows in the tree, can be killed,
//! and is restarted by its own parent (with fresh children) when it escalates.

mod actor;
mod messages;
mod state;
#[cfg(test)]
mod tests;

pub use actor::{start_root, Root, Supervisor, SupervisorSpec};
pub use messages::{StartChild, StopChild};

/// What a supervisor's own API can refuse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("a child named {0:?} already exists")]
    DuplicateChild(String),
    #[error("no child named {0:?}")]
    NoSuchChild(String),
    #[error("the supervisor is shutting down")]
    ShuttingDown,
}
