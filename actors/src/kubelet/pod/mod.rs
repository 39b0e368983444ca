//! One pod on a node: its worker actor and the pure parts it stands on.
//!
//! - `worker.rs`: the actor (`/<agent>/kubelet/pod/<namespace>/<name>`);
//! - `env.rs`: environments and command lines as Kubernetes builds them;
//! - `probe.rs`: liveness, readiness and startup probes;
//! - `status.rs`: the pod's status from its containers;
//! - `volumes.rs`: emptyDir, configMap, secret and hostPath volumes and their mounts.

pub mod env;
pub mod probe;
pub mod status;
pub mod volumes;
mod worker;

pub use worker::{PodChanged, PodWorker};
