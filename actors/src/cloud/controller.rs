//! `/<server>/controllers/cloud`: the cloud controller manager's loops on the leader,
//! as Kubernetes' service and cloud-node controllers run them against a provider:
//! - every `type: LoadBalancer` Service gets a load balancer to its node ports on the
//!   Ready nodes, re-made as nodes come and go, its address written to
//!   `status.loadBalancer.ingress`; a Service deleted, or no longer of that type, loses
//!   its balancer (and its ingress);
//! - every node gets the provider's region, zone and instance-type labels (and any
//!   addresses the provider adds).

use std::net::Ipv4Addr;
use std::sync::Arc;

use actix::AsyncContext;
use serde_json::{json, Value};

use super::{CloudProvider, LocalProvider, Target};
use crate::api::client::ignore_missing;
use crate::api::{ApiClient, ApiError};
use crate::controllers::{ControllerContext, SharedCache, SharedInformers};
use crate::kubelet::node;
use crate::runtime::{Actor, Ctx};

pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const REGION: &str = "topology.kubernetes.io/region";
pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";

pub struct CloudController {
    client: ApiClient,
    informers: Arc<SharedInformers>,
    /// Made per incarnation: its balancers go with it (a new leader's controller makes
    /// them again, keeping each Service's address from its status).
    provider: Arc<dyn CloudProvider>,
}

impl CloudController {
    pub fn new(cx: ControllerContext) -> Self {
        let provider = Arc::new(LocalProvider::new(cx.control.load_balancer_cidr));
        Self { client: cx.client, informers: cx.informers, provider }
    }
}

/// The Ready nodes a balancer sends to (hollow ones run nothing).
fn targets(nodes: &SharedCache) -> Vec<Target> {
    let mut out: Vec<Target> = nodes
        .read()
        .unwrap()
        .objects
        .values()
        .filter(|n| node::is_ready(n) && n["metadata"]["labels"][crate::kubelet::HOLLOW_KEY] != "true")
        .filter(|n| n["spec"]["unschedulable"] != true)
        .filter_map(|n| {
            Some(Target { name: n["metadata"]["name"].as_str()?.to_string(), address: node::internal_ip(n)? })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn is_load_balancer(svc: &Value) -> bool {
    svc["spec"]["type"] == "LoadBalancer" && svc["metadata"]["deletionTimestamp"].is_null()
}

fn status_path(key: &str) -> String {
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    format!("/api/v1/namespaces/{ns}/services/{name}/status")
}

struct Loops {
    client: ApiClient,
    provider: Arc<dyn CloudProvider>,
    services: SharedCache,
    nodes: SharedCache,
}

impl Loops {
    /// Every balancer as the Services and nodes say now.
    async fn balancers(&self) -> Result<(), ApiError> {
        let targets = targets(&self.nodes);
        let mut wanted: Vec<(String, Value)> = self
            .services
            .read()
            .unwrap()
            .objects
            .iter()
            .filter(|(_, s)| is_load_balancer(s))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        // Services that have an address first: a provider that starts empty (a new
        // leader's) gives each its own back before it gives any out anew.
        wanted.sort_by_key(|(_, s)| s["status"]["loadBalancer"]["ingress"][0]["ip"].is_null());
        for key in self.provider.load_balancers() {
            if !wanted.iter().any(|(k, _)| *k == key) {
                let _ = self.provider.delete_load_balancer(&key).await;
                tracing::info!(service = %key, "load balancer removed");
                // A Service that changed type keeps no ingress.
                if self.services.read().unwrap().objects.contains_key(&key) {
                    let patch = json!({"status": {"loadBalancer": {"ingress": null}}});
                    ignore_missing(self.client.merge_patch(&status_path(&key), &patch).await)?;
                }
            }
        }
        for (key, svc) in wanted {
            let had: Option<Ipv4Addr> =
                svc["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().and_then(|ip| ip.parse().ok());
            match self.provider.ensure_load_balancer(&key, &svc, &targets, had).await {
                Ok(ips) => {
                    let ingress: Vec<Value> =
                        ips.iter().map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
                    if svc["status"]["loadBalancer"]["ingress"] != json!(ingress) {
                        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
                        ignore_missing(self.client.merge_patch(&status_path(&key), &patch).await)?;
                        tracing::info!(service = %key, ingress = ?ips, "load balancer ready");
                    }
                }
                Err(e) => tracing::warn!(service = %key, error = %e, "load balancer not made"),
            }
        }
        Ok(())
    }

    /// The provider's labels on every node that lacks them.
    async fn nodes(&self) -> Result<(), ApiError> {
        let nodes: Vec<Value> = self.nodes.read().unwrap().objects.values().cloned().collect();
        for node in nodes {
            let labels = &node["metadata"]["labels"];
            if labels[ZONE].is_string() && labels[REGION].is_string() {
                continue;
            }
            let Ok(details) = self.provider.node_details(&node).await else { continue };
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            let patch = json!({"metadata": {"labels": {ZONE: details.zone, REGION: details.region,
                                                       INSTANCE_TYPE: details.instance_type}}});
            ignore_missing(self.client.merge_patch(&format!("/api/v1/nodes/{name}"), &patch).await)?;
            if !details.addresses.is_empty() {
                let mut addresses = node["status"]["addresses"].as_array().cloned().unwrap_or_default();
                for (kind, address) in details.addresses {
                    if !addresses.iter().any(|a| a["type"] == kind.as_str() && a["address"] == address.as_str()) {
                        addresses.push(json!({"type": kind, "address": address}));
                    }
                }
                let patch = json!({"status": {"addresses": addresses}});
                ignore_missing(self.client.merge_patch(&format!("/api/v1/nodes/{name}/status"), &patch).await)?;
            }
        }
        Ok(())
    }
}

impl Actor for CloudController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (caches, mut changes) = self.informers.subscribe_all(&[("/api/v1/services", &[]), ("/api/v1/nodes", &[])]);
        let loops = Loops {
            client: self.client.clone(),
            provider: self.provider.clone(),
            services: caches[0].clone(),
            nodes: caches[1].clone(),
        };
        ctx.spawn(actix::fut::wrap_future(async move {
            while !caches.iter().all(|c| c.read().unwrap().lists >= 1) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            loop {
                // Changes come in bursts: take what is there, then act once.
                while changes.try_recv().is_ok() {}
                let done = match loops.balancers().await {
                    Ok(()) => loops.nodes().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    if e.reason() == Some("Fenced") {
                        return;
                    }
                    tracing::debug!(error = %e, "cloud loops failed; again soon");
                }
                tokio::select! {
                    c = changes.recv() => if c.is_none() { return },
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                }
            }
        }));
    }
}
