//! `/<server>/controllers/node-ipam`: gives each node its pod CIDR (`spec.podCIDR`), a
//! block of the cluster's pod range (`--cluster-cidr`, cut into `--node-cidr-mask-size`
//! blocks), as Kubernetes' node IPAM controller does. The kubelet waits for it before
//! it gives pods addresses. Hollow nodes run nothing and get none.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::AsyncContext;
use keelson_config::{Cidr, ControlPlaneConfig};
use serde_json::{json, Value};

use crate::api::informer::Change;
use crate::api::ApiClient;
use crate::controllers::{ControllerContext, SharedInformers};
use crate::kubelet::HOLLOW_KEY;
use crate::runtime::{Actor, Ctx};

pub struct NodeIpamController {
    client: ApiClient,
    informers: Arc<SharedInformers>,
    control: ControlPlaneConfig,
}

impl NodeIpamController {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers, control: cx.control }
    }
}

/// The first block of `range` that no node in `used` holds.
pub fn next_free(range: Cidr, prefix: u8, used: &HashSet<Cidr>) -> Option<Cidr> {
    let count = 1u64 << (prefix - range.prefix).min(32);
    (0..count).filter_map(|i| range.subnet(prefix, i)).find(|c| !used.iter().any(|u| u.overlaps(c)))
}

fn wants_cidr(node: &Value) -> bool {
    node["spec"]["podCIDR"].as_str().is_none_or(str::is_empty) && node["metadata"]["labels"][HOLLOW_KEY] != "true"
}

impl Actor for NodeIpamController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (cache, mut changes) = self.informers.subscribe("/api/v1/nodes", &[]);
        let (client, control) = (self.client.clone(), self.control);
        ctx.spawn(actix::fut::wrap_future(async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(5), changes.recv()).await {
                    Ok(None) => return,
                    Ok(Some(Change::Upserted(_) | Change::Deleted(..))) | Err(_) => {}
                }
                if cache.read().unwrap().lists == 0 {
                    continue;
                }
                let (mut used, waiting): (HashSet<Cidr>, Vec<String>) = {
                    let c = cache.read().unwrap();
                    let used = c.objects.values().filter_map(|n| n["spec"]["podCIDR"].as_str()?.parse().ok()).collect();
                    let mut waiting: Vec<String> = c
                        .objects
                        .values()
                        .filter(|n| wants_cidr(n))
                        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
                        .collect();
                    waiting.sort();
                    (used, waiting)
                };
                for name in waiting {
                    let Some(cidr) = next_free(control.cluster_cidr, control.node_cidr_prefix, &used) else {
                        tracing::error!(node = %name, range = %control.cluster_cidr, "no pod CIDR left for the node");
                        break;
                    };
                    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
                    match client.merge_patch(&format!("/api/v1/nodes/{name}"), &patch).await {
                        Ok(_) => {
                            tracing::info!(node = %name, cidr = %cidr, "gave the node its pod CIDR");
                            used.insert(cidr);
                        }
                        Err(e) if e.reason() == Some("Fenced") => return,
                        Err(e) => tracing::debug!(node = %name, error = %e, "pod CIDR not given yet"),
                    }
                }
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_handed_out_in_order_without_overlap() {
        let range: Cidr = "10.244.0.0/16".parse().unwrap();
        let mut used = HashSet::new();
        assert_eq!(next_free(range, 24, &used).unwrap().to_string(), "10.244.0.0/24");
        used.insert("10.244.0.0/24".parse().unwrap());
        used.insert("10.244.2.0/23".parse().unwrap());
        assert_eq!(next_free(range, 24, &used).unwrap().to_string(), "10.244.1.0/24");
        used.insert("10.244.1.0/24".parse().unwrap());
        assert_eq!(next_free(range, 24, &used).unwrap().to_string(), "10.244.4.0/24");
        let tiny: Cidr = "10.0.0.0/24".parse().unwrap();
        let full: HashSet<Cidr> = [tiny].into();
        assert!(next_free(tiny, 24, &full).is_none());
        assert!(wants_cidr(&json!({"metadata": {"name": "a"}, "spec": {}})));
        assert!(!wants_cidr(&json!({"metadata": {"name": "a", "labels": {HOLLOW_KEY: "true"}}, "spec": {}})));
        assert!(!wants_cidr(&json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.0.0/24"}})));
    }
}
