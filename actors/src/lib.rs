//! keelson's actors: the supervision runtime, and every component built on it.
//!
//! - [`runtime`]: supervisors, stable references, crash containment, the registry.
//! - [`admin`]: each member's HTTP door for observing the tree and killing actors.
//! - [`process`]: an OS child process as a supervised actor (`keelson up`'s members).
//! - [`transport`]: the member's side of QUIC: routing inbound messages, remote
//!   references, and the actors that keep links up.
//! - [`store`]: the replicated, sharded configuration store (openraft on an append-only log).
//! - [`api`]: the Kubernetes API gateway, its actor door and client, informers.
//! - [`cloud`]: the cloud provider seam (load balancers, machines) and its controller.
//! - [`controllers`]: the leader election, the scheduler and the controllers.
//! - [`kubelet`]: a node agent's kubelet and its pod workers (or hollow nodes).
//! - [`proxy`]: a node agent's Service proxy, one actor per Service.
//! - [`cri`]: container runtimes behind one trait (the process runtime and its shim),
//!   pod networks, container logs.
//! - [`hash`]: one stable hash (FNV-1a) for names.
//! - [`member`]: the trees of `keelson server` and `keelson agent` processes.

pub mod admin;
pub mod api;
pub mod cloud;
pub mod controllers;
pub mod cri;
pub mod hash;
pub mod kubelet;
pub mod member;
pub mod process;
pub mod proxy;
pub mod runtime;
pub mod store;
pub mod transport;

pub use runtime::*;
