//! Services' addresses, given out by the API server as Kubernetes' does at create:
//! a cluster IP from `--service-cluster-ip-range` (none for headless Services and
//! ExternalName ones) and a node port per port from `--service-node-port-range` for
//! NodePort and LoadBalancer Services, either as asked (refused with a 422 if taken or
//! out of range) or free ones.
//!
//! Each address is held by a key of its own (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`), created only if absent: two members
//! creating Services at once never give out the same one. A write of the Service that
//! drops an address (a delete, a type or port change) frees its key afterwards. A key
//! whose Service is gone or no longer holds it (a member died between taking it and
//! writing the Service, or before freeing it) is a leak: the next allocation that
//! meets it takes it over once it is a minute old — the repair Kubernetes runs as a
//! loop, done where it matters.

use serde_json::{json, Value};

use super::objects::{unix_now, Objects};
use super::resources::find;
use super::status::Failure;
use crate::store::state::Outcome;
use keelson_config::Cidr;

const IPS: &str = "/registry/ranges/serviceips/";
const PORTS: &str = "/registry/ranges/servicenodeports/";
/// A key this young may belong to a Service being created right now.
const LEAK_AGE_SECS: f64 = 60.0;

/// Where Services' addresses come from.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRanges {
    pub cluster_ips: Cidr,
    pub node_ports: (u16, u16),
}

impl From<&keelson_config::ControlPlaneConfig> for ServiceRanges {
    fn from(control: &keelson_config::ControlPlaneConfig) -> Self {
        Self { cluster_ips: control.service_cidr, node_ports: control.node_ports }
    }
}

/// Whether `svc` gets a cluster IP (not headless, not ExternalName).
pub fn wants_cluster_ip(svc: &Value) -> bool {
    svc["spec"]["type"] != "ExternalName" && svc["spec"]["clusterIP"] != "None"
}

/// Whether `svc`'s ports get node ports.
pub fn wants_node_ports(svc: &Value) -> bool {
    matches!(svc["spec"]["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

/// Addresses a Service of its type does not have: node ports unless NodePort or
/// LoadBalancer, cluster IPs of an ExternalName one (Kubernetes clears them on a type
/// change, and an apply that merges the live ports would carry them along).
pub fn drop_unwanted(svc: &mut Value) {
    if !wants_node_ports(svc) {
        for port in svc["spec"]["ports"].as_array_mut().into_iter().flatten() {
            if let Some(p) = port.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
    if svc["spec"]["type"] == "ExternalName" {
        if let Some(spec) = svc["spec"].as_object_mut() {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    }
}

/// An update keeps what the Service was given (a client replacing it need not send
/// it back) and may not change its cluster IP, as in Kubernetes.
pub fn carry_over(current: &Value, obj: &mut Value) -> Result<(), Failure> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if wants_cluster_ip(obj) {
        let spec = &mut obj["spec"];
        for field in ["clusterIP", "clusterIPs"] {
            if spec[field].is_null() || spec[field] == "" {
                spec[field] = current["spec"][field].clone();
            }
        }
        let (was, is) = (current["spec"]["clusterIP"].as_str(), obj["spec"]["clusterIP"].as_str());
        if was.is_some_and(|w| !w.is_empty()) && was != is {
            return Err(Failure::invalid_named(
                "Service",
                &name,
                &[("spec.clusterIP".into(), format!("Invalid value: {:?}: field is immutable", is.unwrap_or("")))],
            ));
        }
    }
    drop_unwanted(obj);
    if wants_node_ports(obj) {
        let before: Vec<Value> = current["spec"]["ports"].as_array().cloned().unwrap_or_default();
        for port in obj["spec"]["ports"].as_array_mut().into_iter().flatten() {
            if !port["nodePort"].is_null() {
                continue;
            }
            let same = before.iter().find(|b| {
                b["port"] == port["port"]
                    && b["protocol"].as_str().unwrap_or("TCP") == port["protocol"].as_str().unwrap_or("TCP")
            });
            if let Some(n) = same.map(|b| &b["nodePort"]).filter(|n| n.is_u64()) {
                port["nodePort"] = n.clone();
            }
        }
    }
    Ok(())
}

/// The addresses `svc` holds: its keys.
fn keys_of(svc: &Value) -> Vec<String> {
    let mut keys: Vec<String> = svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(|ip| format!("{IPS}{ip}"))
        .into_iter()
        .collect();
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_u64() {
            keys.push(format!("{PORTS}{n}"));
        }
    }
    keys
}

fn invalid(svc: &Value, field: &str, message: String) -> Failure {
    Failure::invalid_named("Service", svc["metadata"]["name"].as_str().unwrap_or_default(), &[(field.into(), message)])
}

impl Objects {
    /// Gives `svc` (in `ns`, about to be created, or written over `current`) the
    /// addresses it names or lacks, except those `current` holds already; returns the
    /// keys taken, for `release_keys` if the write does not happen.
    pub async fn allocate(&self, ns: &str, svc: &mut Value, current: Option<&Value>) -> Result<Vec<String>, Failure> {
        let owner = format!("{ns}/{}", svc["metadata"]["name"].as_str().unwrap_or_default());
        let held = current.map(keys_of).unwrap_or_default();
        let mut taken = Vec::new();
        let result = self.allocate_into(&owner, svc, &held, &mut taken).await;
        if result.is_err() {
            self.release_keys(&owner, &taken).await;
        }
        result.map(|()| taken)
    }

    async fn allocate_into(
        &self,
        owner: &str,
        svc: &mut Value,
        held: &[String],
        taken: &mut Vec<String>,
    ) -> Result<(), Failure> {
        let ranges = self.services;
        if wants_cluster_ip(svc) {
            let range = ranges.cluster_ips;
            match svc["spec"]["clusterIP"].as_str().filter(|s| !s.is_empty()) {
                Some(asked) => {
                    let ip: std::net::Ipv4Addr = asked.parse().map_err(|_| {
                        invalid(svc, "spec.clusterIP", format!("Invalid value: {asked:?}: must be a valid IP address"))
                    })?;
                    if !range.contains(ip) {
                        return Err(invalid(
                            svc,
                            "spec.clusterIP",
                            format!(
                                "Invalid value: {asked:?}: provided IP is not in the valid range. The range of valid IPs is {range}"
                            ),
                        ));
                    }
                    let key = format!("{IPS}{ip}");
                    if !held.contains(&key) {
                        if !self.take(&key, owner).await? {
                            return Err(invalid(
                                svc,
                                "spec.clusterIP",
                                format!("Invalid value: {asked:?}: provided IP is already allocated"),
                            ));
                        }
                        taken.push(key);
                    }
                }
                None => {
                    // The network address, .1 (Kubernetes' own `kubernetes` Service's) and
                    // the broadcast address are never given.
                    let size = range.size();
                    let usable = size.saturating_sub(3).max(1);
                    let start = fastrand::u64(..usable);
                    let mut found = None;
                    for i in 0..usable.min(4096) {
                        let Some(ip) = range.nth(2 + (start + i) % usable) else { continue };
                        let key = format!("{IPS}{ip}");
                        if self.take(&key, owner).await? {
                            taken.push(key);
                            found = Some(ip);
                            break;
                        }
                    }
                    let ip = found.ok_or_else(|| {
                        Failure::new(
                            500,
                            "InternalError",
                            format!("Internal error occurred: failed to allocate a serviceIP: range {range} is full"),
                        )
                    })?;
                    svc["spec"]["clusterIP"] = ip.to_string().into();
                }
            }
            svc["spec"]["clusterIPs"] = json!([svc["spec"]["clusterIP"]]);
        }
        if wants_node_ports(svc) {
            let (low, high) = ranges.node_ports;
            let count = svc["spec"]["ports"].as_array().map_or(0, Vec::len);
            for i in 0..count {
                let asked = svc["spec"]["ports"][i]["nodePort"].as_u64();
                match asked {
                    Some(n) => {
                        let field = format!("spec.ports[{i}].nodePort");
                        if n < low as u64 || n > high as u64 {
                            return Err(invalid(
                                svc,
                                &field,
                                format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {low}-{high}"),
                            ));
                        }
                        let key = format!("{PORTS}{n}");
                        if !held.contains(&key) && !taken.contains(&key) {
                            if !self.take(&key, owner).await? {
                                return Err(invalid(
                                    svc,
                                    &field,
                                    format!("Invalid value: {n}: provided port is already allocated"),
                                ));
                            }
                            taken.push(key);
                        }
                    }
                    None => {
                        let span = (high - low) as u64 + 1;
                        let start = fastrand::u64(..span);
                        let mut found = None;
                        for j in 0..span.min(4096) {
                            let n = low as u64 + (start + j) % span;
                            let key = format!("{PORTS}{n}");
                            if !taken.contains(&key) && self.take(&key, owner).await? {
                                taken.push(key);
                                found = Some(n);
                                break;
                            }
                        }
                        let n = found.ok_or_else(|| {
                            Failure::new(500, "InternalError", format!("Internal error occurred: failed to allocate a nodePort: range {low}-{high} is full"))
                        })?;
                        svc["spec"]["ports"][i]["nodePort"] = n.into();
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes `key` for `owner`: absent, or leaked (its Service gone or not holding it).
    async fn take(&self, key: &str, owner: &str) -> Result<bool, Failure> {
        let value = json!({"metadata": {"name": key.rsplit('/').next()}, "owner": owner, "at": unix_now()});
        match self.cas(key, 0, Some(&value)).await? {
            Outcome::Done { .. } => return Ok(true),
            Outcome::Conflict { .. } => {}
            other => return Err(Failure::unavailable(format!("unexpected store outcome {other:?}"))),
        }
        let Some((held, revision)) = self.read(key).await? else { return Ok(false) };
        let holder = held["owner"].as_str().unwrap_or_default();
        // Young keys may be a create in flight; a key this Service's name holds is
        // checked as any other (a Service of that name deleted while its member died,
        // and made again, must not be refused its own address forever).
        if held["at"].as_f64().unwrap_or(0.0) + LEAK_AGE_SECS > unix_now() {
            return Ok(false);
        }
        let (ns, name) = holder.split_once('/').unwrap_or(("default", holder));
        let services = find("", "v1", "services").expect("services are served");
        if let Some((svc, _)) = self.read(&services.key(Some(ns), name)).await? {
            if keys_of(&svc).iter().any(|k| k == key) {
                return Ok(false);
            }
        }
        tracing::info!(key, leaked_by = holder, "taking over a leaked service address");
        Ok(matches!(self.cas(key, revision, Some(&value)).await?, Outcome::Done { .. }))
    }

    /// Frees `svc`'s addresses (it is gone).
    /// Frees what Service `before` held and `after` (its written successor; none: it is
    /// gone) does not, once the write has landed.
    pub async fn release_dropped(&self, ns: &str, before: &Value, after: Option<&Value>) {
        let owner = format!("{ns}/{}", before["metadata"]["name"].as_str().unwrap_or_default());
        let kept = after.map(keys_of).unwrap_or_default();
        let dropped: Vec<String> = keys_of(before).into_iter().filter(|k| !kept.contains(k)).collect();
        self.release_keys(&owner, &dropped).await;
    }

    /// Frees `keys` that `owner` holds (a key since taken over by another is left).
    pub async fn release_keys(&self, owner: &str, keys: &[String]) {
        for key in keys {
            if let Ok(Some((held, revision))) = self.read(key).await {
                if held["owner"] == owner {
                    let _ = self.cas(key, revision, None).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_keep_addresses_and_refuse_a_new_cluster_ip() {
        let current = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.7",
            "clusterIPs": ["10.96.0.7"], "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let mut replaced = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort",
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]}});
        carry_over(&current, &mut replaced).unwrap();
        assert_eq!(replaced["spec"]["clusterIP"], "10.96.0.7");
        assert_eq!(replaced["spec"]["ports"][0]["nodePort"], 30080);
        assert!(replaced["spec"]["ports"][1]["nodePort"].is_null());
        let mut moved = current.clone();
        moved["spec"]["clusterIP"] = "10.96.0.8".into();
        let refused = carry_over(&current, &mut moved).unwrap_err();
        assert_eq!(refused.code, 422);
        assert!(refused.message.contains("field is immutable"), "{}", refused.message);
        assert_eq!(keys_of(&current), vec![format!("{IPS}10.96.0.7"), format!("{PORTS}30080")]);
    }

    #[test]
    fn headless_and_external_name_services_get_no_cluster_ip() {
        assert!(!wants_cluster_ip(&json!({"spec": {"clusterIP": "None"}})));
        assert!(!wants_cluster_ip(&json!({"spec": {"type": "ExternalName"}})));
        assert!(wants_cluster_ip(&json!({"spec": {"type": "ClusterIP"}})));
        let mut cluster = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 1, "nodePort": 30001}]}});
        drop_unwanted(&mut cluster);
        assert!(cluster["spec"]["ports"][0]["nodePort"].is_null(), "no node port on a ClusterIP Service");
        assert!(keys_of(&json!({"spec": {"clusterIP": "None"}})).is_empty());
    }
}
