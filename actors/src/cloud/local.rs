//! The `local` provider: a cluster on one machine. A load balancer is a listener per
//! Service port on an address of `range` (a loopback range by default, so it is local
//! without any link and reachable from the host), balancing new connections round robin
//! over the Ready nodes' node ports, passing over a node that refuses, as a cloud's
//! balancer does with its health checks. Machines are all in one zone.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use keelson_config::Cidr;
use serde_json::Value;

use super::{CloudError, CloudProvider, NodeDetails, Target};
use crate::proxy::service::{reconcile, Forwarder, Listen, Protocol};

struct Balancer {
    ip: Ipv4Addr,
    /// One per Service port, by its listening address.
    listeners: HashMap<Listen, Forwarder>,
}

pub struct LocalProvider {
    range: Cidr,
    balancers: Mutex<HashMap<String, Balancer>>,
}

impl LocalProvider {
    pub fn new(range: Cidr) -> Self {
        Self { range, balancers: Mutex::new(HashMap::new()) }
    }

    /// `wanted` if it is in the range and free, or the first free address.
    fn address(
        &self,
        key: &str,
        wanted: Option<Ipv4Addr>,
        taken: &HashMap<String, Balancer>,
    ) -> Result<Ipv4Addr, CloudError> {
        if let Some(b) = taken.get(key) {
            return Ok(b.ip);
        }
        let used = |ip: Ipv4Addr| taken.values().any(|b| b.ip == ip);
        if let Some(ip) = wanted.filter(|ip| self.range.contains(*ip) && !used(*ip)) {
            return Ok(ip);
        }
        (1..self.range.size().saturating_sub(1))
            .filter_map(|i| self.range.nth(i))
            .find(|ip| !used(*ip))
            .ok_or_else(|| CloudError::Exhausted(self.range.to_string()))
    }
}

/// Each port of `service` that a balancer carries: (protocol, port, node port).
fn ports(service: &Value) -> Vec<(Protocol, u16, u16)> {
    let port = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok());
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((Protocol::of(p)?, port(&p["port"])?, port(&p["nodePort"])?)))
        .collect()
}

impl CloudProvider for LocalProvider {
    fn ensure_load_balancer<'a>(
        &'a self,
        key: &'a str,
        service: &'a Value,
        targets: &'a [Target],
        wanted: Option<Ipv4Addr>,
    ) -> BoxFuture<'a, Result<Vec<Ipv4Addr>, CloudError>> {
        async move {
            let mut all = self.balancers.lock().unwrap();
            let ip = self.address(key, wanted, &all)?;
            let mut balancer = all.remove(key).unwrap_or_else(|| Balancer { ip, listeners: HashMap::new() });
            let wanted = ports(service).into_iter().map(|(protocol, port, node_port)| {
                let endpoints = targets.iter().map(|t| SocketAddr::from((t.address, node_port))).collect();
                (Listen { protocol, addr: SocketAddrV4::new(ip, port) }, endpoints, None)
            });
            let (keep, failed) = reconcile(std::mem::take(&mut balancer.listeners), wanted);
            balancer.listeners = keep;
            let failed = failed.first().map(|(addr, e)| format!("cannot listen on {addr}: {e}"));
            all.insert(key.to_string(), balancer);
            match failed {
                Some(why) => Err(CloudError::Failed(why)),
                None => Ok(vec![ip]),
            }
        }
        .boxed()
    }

    fn delete_load_balancer<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        let gone = self.balancers.lock().unwrap().remove(key);
        drop(gone); // its listeners stop
        async { Ok(()) }.boxed()
    }

    fn load_balancers(&self) -> Vec<String> {
        self.balancers.lock().unwrap().keys().cloned().collect()
    }

    fn node_details<'a>(&'a self, _node: &'a Value) -> BoxFuture<'a, Result<NodeDetails, CloudError>> {
        let details = NodeDetails {
            region: "local".into(),
            zone: "local-a".into(),
            instance_type: "keelson-node".into(),
            addresses: Vec::new(),
        };
        async move { Ok(details) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn balancers_keep_their_address_and_share_none() {
        let p = LocalProvider::new("127.97.0.0/24".parse().unwrap());
        let svc = json!({"spec": {"ports": [{"port": 0, "protocol": "TCP", "nodePort": 30001}]}});
        let node = [Target { name: "n".into(), address: Ipv4Addr::LOCALHOST }];
        let a = p.ensure_load_balancer("ns/a", &svc, &node, None).await.unwrap();
        let b = p.ensure_load_balancer("ns/b", &svc, &node, a.first().copied()).await.unwrap();
        assert_ne!(a, b, "an address in use is not given again");
        assert_eq!(p.ensure_load_balancer("ns/a", &svc, &[], None).await.unwrap(), a, "kept across updates");
        p.delete_load_balancer("ns/a").await.unwrap();
        assert_eq!(p.load_balancers(), vec!["ns/b".to_string()]);
        let again = p.ensure_load_balancer("ns/c", &svc, &node, a.first().copied()).await.unwrap();
        assert_eq!(again, a, "a freed address can be had again");
    }
}
