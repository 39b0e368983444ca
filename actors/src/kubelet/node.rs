//! A node as the API knows it: its registration and its heartbeat Lease (shared by the
//! real and the hollow kubelet), and the capacity of the machine a real one runs on.

use keelson_config::HeartbeatConfig;
use serde_json::{json, Value};

use crate::api::{micro_time_now, ApiClient, ApiError};

pub fn lease_path(node: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")
}

/// Registers `node` (the object as given), or finds it registered already.
pub async fn register(client: &ApiClient, node: &Value) -> Result<(), ApiError> {
    match client.create("/api/v1/nodes", node).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(409) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renews `node`'s heartbeat Lease (making it if it is not there).
pub async fn renew(client: &ApiClient, node: &str, hb: HeartbeatConfig) -> Result<(), ApiError> {
    let spec = json!({"holderIdentity": node, "leaseDurationSeconds": hb.lease_seconds, "renewTime": micro_time_now()});
    match client.merge_patch(&lease_path(node), &json!({"spec": spec})).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(404) => {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                               "metadata": {"name": node, "namespace": "kube-node-lease"}, "spec": spec});
            match client.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", &lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(409) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The Ready condition a kubelet posts.
pub fn ready_condition(now: &str, message: &str) -> Value {
    json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": message,
           "lastHeartbeatTime": now, "lastTransitionTime": now})
}

/// Whether containers can be held to their resource limits here, as a condition of the
/// kind node-problem-detector adds (True names the problem): without writable cgroups
/// a container with limits does not start, and `kubectl describe node` says why.
pub fn limits_condition(now: &str, unavailable: Option<&str>) -> Value {
    let (status, reason, message) = match unavailable {
        Some(why) => ("True", "NoWritableCgroups", format!("containers with resource limits cannot start: {why}")),
        None => ("False", "CgroupsWritable", "containers are held to their resource limits".to_string()),
    };
    json!({"type": "ResourceLimitsUnavailable", "status": status, "reason": reason, "message": message,
           "lastHeartbeatTime": now, "lastTransitionTime": now})
}

/// The node's `InternalIP` address, once its kubelet has posted it.
pub fn internal_ip(node: &Value) -> Option<std::net::Ipv4Addr> {
    let addresses = node["status"]["addresses"].as_array()?;
    addresses.iter().find(|a| a["type"] == "InternalIP")?["address"].as_str()?.parse().ok()
}

/// Whether the node's Ready condition is True.
pub fn is_ready(node: &Value) -> bool {
    crate::api::condition_is_true(node, "Ready")
}

/// This machine's CPUs and memory, as Kubernetes quantities.
pub fn machine_capacity() -> (String, String) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
        })
        .unwrap_or(1 << 20);
    (cpus.to_string(), format!("{mem_kib}Ki"))
}

/// What the node says about itself (`status.nodeInfo`).
pub fn node_info(name: &str, runtime: &str) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "Linux".into());
    json!({"kubeletVersion": format!("v1.{}.0-keelson", crate::api::MINOR), "kubeProxyVersion": "",
           "containerRuntimeVersion": runtime, "osImage": os, "operatingSystem": "linux",
           "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
           "kernelVersion": read("/proc/sys/kernel/osrelease"), "machineID": read("/etc/machine-id"),
           "systemUUID": name, "bootID": read("/proc/sys/kernel/random/boot_id")})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_has_capacity() {
        let (cpu, mem) = machine_capacity();
        assert!(cpu.parse::<u32>().unwrap() >= 1);
        assert!(crate::controllers::quantity::parse(&mem).is_some_and(|m| m > 1e6), "{mem}");
        let info = node_info("n", "process://0.1.0");
        assert_eq!(info["containerRuntimeVersion"], "process://0.1.0");
        assert!(!info["kernelVersion"].as_str().unwrap().is_empty());
    }
}
