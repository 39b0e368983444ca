//! The proxy on every agent (`/<agent>/proxy`): Service traffic to ready pods, as
//! kube-proxy's userspace mode carried it, with one actor per Service.
//!
//! ```text
//! /<agent>/proxy              one for all
//!   /service                  one for one: /<namespace>/<name>, one per Service
//!   /sync                     watches Services and EndpointSlices, holds cluster IPs,
//!                             starts and stops the Service actors and tells them of changes
//! ```
//!
//! - `addresses.rs`: cluster IPs on a link of the agent's own;
//! - `balancer.rs`: which endpoint a connection goes to;
//! - `connect_lb.rs`: connects from this machine sent to the pods by the kernel;
//! - `service.rs`: one Service's listeners and forwarding.

pub mod addresses;
pub mod balancer;
pub mod connect_lb;
pub mod service;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::AsyncContext;
use tokio::sync::mpsc;

use crate::api::informer::{Cache, Change, Informer};
use crate::api::ApiClient;
use crate::controllers::endpoints::service_of_slice;
use crate::kubelet::node::internal_ip;
use crate::runtime::{
    Actor, ChildSpec, Ctx, Ref, Restart, StartChild, StopChild, Strategy, Supervisor, SupervisorSpec,
};
pub use addresses::ServiceAddresses;
pub use connect_lb::ConnectBalancer;
use keelson_config::SupervisorConfig;
pub use service::{Resync, ServiceProxy};

/// Whether the agent runs as root (links, addresses and BPF programs need it).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What a node's Service actors share.
pub struct ProxyShared {
    pub services: Arc<RwLock<Cache>>,
    pub slices: Arc<RwLock<Cache>>,
    /// The node's name (`Local` traffic policies keep to its endpoints) and address
    /// (node ports listen there).
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub addresses: Arc<ServiceAddresses>,
    /// Sends this machine's connects to Service addresses straight to the pods, where
    /// the kernel allows it (root, cgroup v2).
    pub connect: Option<ConnectBalancer>,
}

/// `/<agent>/proxy`; `in_kernel`: balance this machine's connects to Services in the
/// kernel where it allows (see `connect_lb`).
pub fn proxy_tree(client: ApiClient, in_kernel: bool) -> ChildSpec {
    let (services, services_ref) = ChildSpec::supervisor(
        "service",
        Restart::Permanent,
        SupervisorSpec::new(Strategy::OneForOne, SupervisorConfig::default()),
    );
    let factory = move |cx: &crate::runtime::ChildContext| Proxy {
        node: cx.path.member().to_string(),
        client: client.clone(),
        services: services_ref.clone(),
        in_kernel,
    };
    let (sync, _) = ChildSpec::new("sync", Restart::Permanent, factory);
    // One for all: the Service actors read the sync actor's informers.
    let spec = SupervisorSpec::new(Strategy::OneForAll, SupervisorConfig::default()).child(services).child(sync);
    ChildSpec::supervisor("proxy", Restart::Permanent, spec).0
}

/// Removes what the proxy made on the machine (its link and the cluster IPs on it):
/// the agent stops for good.
pub fn teardown(node: &str) {
    ServiceAddresses::new(node).teardown();
}

/// `/<agent>/proxy/sync`.
pub struct Proxy {
    node: String,
    client: ApiClient,
    services: Ref<Supervisor>,
    in_kernel: bool,
}

/// The node's InternalIP, once its kubelet has posted it.
async fn node_ip(client: &ApiClient, node: &str) -> Ipv4Addr {
    loop {
        if let Some(ip) = client.get(&format!("/api/v1/nodes/{node}")).await.ok().as_ref().and_then(internal_ip) {
            return ip;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether the proxy serves `svc` (it has a cluster IP or node ports).
fn served(svc: &serde_json::Value) -> bool {
    if svc["spec"]["type"] == "ExternalName" {
        return false;
    }
    let ip = svc["spec"]["clusterIP"].as_str().is_some_and(|ip| ip.parse::<Ipv4Addr>().is_ok());
    ip || crate::api::services::wants_node_ports(svc)
}

impl Actor for Proxy {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (node, client, supervisor) = (self.node.clone(), self.client.clone(), self.services.clone());
        let in_kernel = self.in_kernel;
        ctx.spawn(actix::fut::wrap_future(async move {
            let node_ip = node_ip(&client, &node).await;
            let mut addresses = ServiceAddresses::new(&node);
            if let Err(why) = addresses.setup() {
                tracing::warn!("cluster IPs are not served on this node: {why}");
            }
            let addresses = Arc::new(addresses);
            let attached = if in_kernel { ConnectBalancer::attach().map(Some) } else { Ok(None) };
            let connect = match attached {
                Ok(None) => None,
                Ok(Some(lb)) => {
                    tracing::info!(cgroup = %lb.cgroup().display(), "connects to Services go straight to pods (in the kernel)");
                    Some(lb)
                }
                Err(e) => {
                    tracing::info!(error = %e, "connects to Services go through the user-space proxy");
                    None
                }
            };
            let services = Informer::new(client.clone(), "/api/v1/services", &[]);
            let slices = Informer::new(client.clone(), "/apis/discovery.k8s.io/v1/endpointslices", &[]);
            let shared = Arc::new(ProxyShared {
                services: services.cache(),
                slices: slices.cache(),
                node: node.clone(),
                node_ip,
                addresses,
                connect,
            });
            let (tx, mut rx) = mpsc::channel(1024);
            let (stx, mut srx) = mpsc::channel(1024);
            actix_rt::spawn(services.run(tx));
            actix_rt::spawn(slices.run(stx));
            tracing::info!(%node_ip, link = %shared.addresses.link(), "proxy serving");
            let mut running: HashMap<String, Ref<ServiceProxy>> = HashMap::new();
            let mut held: HashSet<Ipv4Addr> = HashSet::new();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                // Which Services changed (all of them at a tick: nothing is missed for long).
                let mut touched: HashSet<String> = HashSet::new();
                let mut all = false;
                tokio::select! {
                    c = rx.recv() => match c {
                        Some(Change::Upserted(k) | Change::Deleted(k, _)) => { touched.insert(k); }
                        None => return,
                    },
                    c = srx.recv() => match c {
                        Some(Change::Upserted(k)) => {
                            let s = shared.slices.read().unwrap().objects.get(&k).cloned();
                            touched.extend(s.and_then(|s| service_of_slice(&k, &s)));
                        }
                        Some(Change::Deleted(k, s)) => touched.extend(service_of_slice(&k, &s)),
                        None => return,
                    },
                    _ = tick.tick() => all = true,
                }
                let wanted: HashMap<String, Option<Ipv4Addr>> = shared
                    .services
                    .read()
                    .unwrap()
                    .objects
                    .iter()
                    .filter(|(_, s)| served(s))
                    .map(|(k, s)| (k.clone(), s["spec"]["clusterIP"].as_str().and_then(|ip| ip.parse().ok())))
                    .collect();
                // Cluster IPs held before anything listens on them; let go once unused.
                if shared.addresses.available() {
                    let ips: HashSet<Ipv4Addr> = wanted.values().flatten().copied().collect();
                    for ip in held.difference(&ips).copied().collect::<Vec<_>>() {
                        shared.addresses.release(ip);
                        held.remove(&ip);
                    }
                    // Held only once it worked: a failure is tried again next pass.
                    for ip in ips.difference(&held).copied().collect::<Vec<_>>() {
                        match shared.addresses.hold(ip) {
                            Ok(()) => {
                                held.insert(ip);
                            }
                            Err(e) => tracing::warn!(%ip, error = %e, "cannot hold a cluster IP"),
                        }
                    }
                }
                if let Some(lb) = &shared.connect {
                    lb.retain(|owner| wanted.contains_key(owner));
                }
                let gone: Vec<String> = running.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
                for key in gone {
                    running.remove(&key);
                    let _ = supervisor.send(StopChild { name: key }).await;
                }
                for key in wanted.keys() {
                    if let Some(r) = running.get(key) {
                        if all || touched.contains(key) {
                            let _ = r.tell(Resync);
                        }
                        continue;
                    }
                    let (k, s) = (key.clone(), shared.clone());
                    let (spec, r) = ChildSpec::new(key, Restart::Permanent, move |_| ServiceProxy::new(k.clone(), s.clone()));
                    match supervisor.send(StartChild(spec)).await {
                        Ok(Ok(_)) => {
                            running.insert(key.clone(), r);
                        }
                        other => tracing::debug!(service = %key, result = ?other.map(|r| r.map(drop)), "service actor not started yet"),
                    }
                }
            }
        }));
    }
}
