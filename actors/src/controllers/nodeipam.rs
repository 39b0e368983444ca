//! `/<server>/controllers/node-ipam`: gives each node its pod CIDR (`spec.podCIDR`), a
//! block of the cluster's pod range (`--cluster-cidr`, cut into `--node-cidr-mask-size`
//! blocks), as Kubernetes' node IPAM controller does. The kubelet waits for it before
//! it gives pods addresses. Hollow nodes run nothing and get none.

use std::collections::{BTreeSet, HashMap, HashSet};
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

/// Which node holds which block, and which nodes wait for one, kept from the nodes'
/// changes: a change reads that one node (5,000 hollow nodes post their status many
/// times a second; reading every node at each change took a tenth of the leader's
/// thread).
#[derive(Default)]
struct Blocks {
    held: HashMap<String, Cidr>,
    waiting: BTreeSet<String>,
    /// Blocks this controller gave that the node cache does not show yet: the node
    /// stays held, so a change read from the cache before the patch's own event
    /// cannot put it back among the waiting and get it a second block.
    given: HashMap<String, Cidr>,
}

impl Blocks {
    /// Node `name` is now `node` (`None`: gone).
    fn note(&mut self, name: &str, node: Option<&Value>) {
        self.held.remove(name);
        self.waiting.remove(name);
        let Some(node) = node else {
            self.given.remove(name);
            return;
        };
        match node["spec"]["podCIDR"].as_str().and_then(|c| c.parse().ok()) {
            Some(cidr) => {
                self.given.remove(name);
                self.held.insert(name.to_string(), cidr);
            }
            None => match self.given.get(name) {
                Some(cidr) => {
                    self.held.insert(name.to_string(), *cidr);
                }
                None if wants_cidr(node) => {
                    self.waiting.insert(name.to_string());
                }
                None => {}
            },
        }
    }

    fn gave(&mut self, name: &str, cidr: Cidr) {
        self.waiting.remove(name);
        self.held.insert(name.to_string(), cidr);
        self.given.insert(name.to_string(), cidr);
    }

    fn used(&self) -> HashSet<Cidr> {
        self.held.values().copied().collect()
    }
}

impl Actor for NodeIpamController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (cache, mut changes) = self.informers.subscribe("/api/v1/nodes", &[]);
        let (client, control) = (self.client.clone(), self.control);
        ctx.spawn(actix::fut::wrap_future(async move {
            let mut blocks = Blocks::default();
            let note = |blocks: &mut Blocks, change: Change| match change {
                Change::Upserted(key) => blocks.note(&key, cache.read().unwrap().objects.get(&key)),
                Change::Deleted(key, _) => blocks.note(&key, None),
            };
            loop {
                // A quiet 5 s retries the nodes still waiting (a patch that failed).
                match tokio::time::timeout(Duration::from_secs(5), changes.recv()).await {
                    Ok(None) => return,
                    Ok(Some(change)) => note(&mut blocks, change),
                    Err(_) => {}
                }
                while let Ok(change) = changes.try_recv() {
                    note(&mut blocks, change);
                }
                if blocks.waiting.is_empty() || cache.read().unwrap().lists == 0 {
                    continue;
                }
                let mut used = blocks.used();
                for name in blocks.waiting.clone() {
                    let Some(cidr) = next_free(control.cluster_cidr, control.node_cidr_prefix, &used) else {
                        tracing::error!(node = %name, range = %control.cluster_cidr, "no pod CIDR left for the node");
                        break;
                    };
                    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
                    match client.merge_patch(&format!("/api/v1/nodes/{name}"), &patch).await {
                        Ok(_) => {
                            tracing::info!(node = %name, cidr = %cidr, "gave the node its pod CIDR");
                            blocks.gave(&name, cidr);
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

    #[test]
    fn a_given_block_is_held_until_the_cache_shows_it() {
        let node = |cidr: Option<&str>| json!({"metadata": {"name": "a"}, "spec": {"podCIDR": cidr}});
        let hollow = json!({"metadata": {"name": "h", "labels": {HOLLOW_KEY: "true"}}, "spec": {}});
        let mut b = Blocks::default();
        b.note("a", Some(&node(None)));
        b.note("h", Some(&hollow));
        assert_eq!(b.waiting.iter().collect::<Vec<_>>(), ["a"], "hollow nodes get no block");
        let cidr: Cidr = "10.244.0.0/24".parse().unwrap();
        b.gave("a", cidr);
        // A change read from a cache that has not seen the patch yet.
        b.note("a", Some(&node(None)));
        assert!(b.waiting.is_empty(), "not waiting again for a second block");
        assert_eq!(b.used(), [cidr].into());
        b.note("a", Some(&node(Some("10.244.0.0/24"))));
        assert!(b.given.is_empty());
        b.note("b", Some(&json!({"metadata": {"name": "b"}, "spec": {"podCIDR": "10.244.1.0/24"}})));
        b.note("a", None);
        assert_eq!(b.used(), ["10.244.1.0/24".parse().unwrap()].into(), "a deleted node frees its block");
    }
}
