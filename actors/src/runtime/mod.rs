//! The supervision runtime every keelson component stands on.
//!
//! actix gives actors and mailboxes; this module adds what a fault-tolerant system
//! needs on top: supervisors with strategies, restart types, intensity limits,
//! back-off and escalation ([`supervisor`]); references that survive restarts
//! ([`Ref`]); crash containment that turns any panic into an exit reason
//! ([`incarnation`], [`panic`]); and the tree as data, with a kill switch on every
//! actor ([`Registry`]).
//!
//! Writing an actor: implement [`Actor`] and [`Handler`] (keelson's, not actix's),
//! describe it with a [`ChildSpec`], and hand the spec to a supervisor.

mod exit;
pub mod incarnation;
mod panic;
mod path;
mod reference;
pub mod registry;
mod serving;
mod signal;
mod spec;
pub mod supervisor;

pub use exit::{ExitReason, KillMode};
pub use incarnation::{exit, Actor, AsyncReply, ChildContext, Ctx, Handler, Incarnation};
pub use panic::install_panic_hook;
pub use path::{glob_match, ActorPath};
pub use reference::{Ref, SendError};
pub use registry::{ActorInfo, ActorState, Event, EventKind, KillError, Registry, TreeSnapshot};
pub use serving::{Serves, Serving};
pub use spec::{ChildSpec, Restart, Strategy, SUPERVISOR_SHUTDOWN, WORKER_SHUTDOWN};
pub use supervisor::{start_root, Root, StartChild, StopChild, Supervisor, SupervisorSpec};
