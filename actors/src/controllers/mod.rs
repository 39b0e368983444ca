//! The control plane's controllers, on server members: `/leader` elects the one member
//! that runs them, and starts them under `/controllers` while it leads (each writes
//! with the leader's fencing epoch): namespace, scheduler, replicaset, deployment,
//! garbage-collector, node-lifecycle, daemonset, job, node-ipam, endpoints, cloud. Each is an actor fed by informers
//! (shared among them: one watch per collection), reconciling one key at a time from a
//! work queue (level-triggered: it reads the latest state).

mod daemonset;
pub mod deployment;
mod elector;
pub mod endpoints;
mod gc;
mod job;
pub mod labels;
mod namespace;
mod nodeipam;
pub mod nodelifecycle;
pub mod quantity;
pub(crate) mod queue;
mod replicaset;
mod run;
pub mod scheduler;
mod shared;
pub mod workload;

pub use daemonset::DaemonSetController;
pub use deployment::DeploymentController;
pub use elector::{Election, Elector, Term, LEADER_KEY};
pub use endpoints::EndpointsController;
pub use gc::GarbageCollector;
pub use job::JobController;
pub use namespace::NamespaceController;
pub use nodeipam::NodeIpamController;
pub use nodelifecycle::NodeLifecycleController;
pub use replicaset::ReplicaSetController;
pub use scheduler::Scheduler;
pub use shared::SharedInformers;

use std::sync::Arc;

use crate::api::ApiClient;

/// An informer's cache, shared.
pub type SharedCache = Arc<std::sync::RwLock<crate::api::informer::Cache>>;

/// What every controller of one leadership term gets: the API (writing with the term's
/// fencing epoch) and the term's shared informers.
#[derive(Clone)]
pub struct ControllerContext {
    pub client: ApiClient,
    pub informers: Arc<SharedInformers>,
    pub control: keelson_config::ControlPlaneConfig,
}
