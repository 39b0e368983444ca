//! The cloud controller manager's seam: what a cloud provider does for the cluster
//! (load balancers for `type: LoadBalancer` Services, what it knows of its machines),
//! behind one trait, as Kubernetes' `cloudprovider.Interface`; and the controller that
//! drives it (`/<leader>/controllers/cloud`, `controller.rs`).
//!
//! - `local.rs`: the provider of a cluster on one machine: a load balancer is a
//!   listener on an address of this machine's loopback range (`--load-balancer-range`,
//!   127.97.0.0/24: local without any link, reachable from the host) balancing to the
//!   Service's node ports on the Ready nodes.

pub mod controller;
pub mod local;

use std::net::Ipv4Addr;

use futures_util::future::BoxFuture;
use serde_json::Value;

pub use controller::CloudController;
pub use local::LocalProvider;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("no address left for load balancers in {0}")]
    Exhausted(String),
    #[error("{0}")]
    Failed(String),
}

/// A node as a load balancer sends to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub address: Ipv4Addr,
}

/// What the provider knows of a machine: the labels and addresses Kubernetes' cloud
/// node controller sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDetails {
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    /// `(type, address)` pairs to add to the node's (`ExternalIP`, …).
    pub addresses: Vec<(String, String)>,
}

pub trait CloudProvider: Send + Sync {
    /// Makes or updates the load balancer of Service `key` (`namespace/name`) sending
    /// its ports to their node ports on `targets`; answers its ingress addresses.
    /// `wanted`: the address it had (kept if still free).
    fn ensure_load_balancer<'a>(
        &'a self,
        key: &'a str,
        service: &'a Value,
        targets: &'a [Target],
        wanted: Option<Ipv4Addr>,
    ) -> BoxFuture<'a, Result<Vec<Ipv4Addr>, CloudError>>;
    /// Removes Service `key`'s load balancer, if it has one.
    fn delete_load_balancer<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CloudError>>;
    /// The load balancers it keeps now (by Service key).
    fn load_balancers(&self) -> Vec<String>;
    /// What it knows of `node`.
    fn node_details<'a>(&'a self, node: &'a Value) -> BoxFuture<'a, Result<NodeDetails, CloudError>>;
}
