//! The control plane's controllers, on server members. Today: `/leader`, the election
//! of the one member that runs the scheduler and controllers (issue P6 adds them, as
//! children that start when this member leads).

mod elector;

pub use elector::{Election, Elector, Term, LEADER_KEY};
