//! The control plane's controllers, on server members: `/leader` elects the one member
//! that runs them, and starts them under `/controllers` while it leads (each writes
//! with the leader's fencing epoch). Today: the namespace controller; the scheduler and
//! the workload controllers are issue P6's.

mod elector;
pub mod labels;
mod namespace;
pub mod quantity;
pub mod scheduler;

pub use elector::{Election, Elector, Term, LEADER_KEY};
pub use namespace::NamespaceController;
pub use scheduler::Scheduler;
