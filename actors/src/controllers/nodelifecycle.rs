//! `/<server>/controllers/node-lifecycle`: notices nodes that stopped heartbeating and
//! moves their pods elsewhere.
//!
//! A node's kubelet renews its Lease in `kube-node-lease`; this controller notes when it
//! *saw* each renewal (its own clock, so clock skew between machines does not matter,
//! as in Kubernetes). A node silent for longer than its lease's `leaseDurationSeconds`
//! gets Ready=Unknown ("Kubelet stopped posting node status.") and the
//! `node.kubernetes.io/unreachable:NoExecute` taint; the taint goes again when the
//! heartbeat is back (the kubelet reports itself Ready). Pods on a node with a NoExecute
//! taint they do not tolerate are evicted at once; those that tolerate it for
//! `tolerationSeconds` (every pod does, by the API's default tolerations) once that
//! passes — and their controllers replace them elsewhere. A node that never had a
//! Lease (registered by hand) is not judged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::AsyncContext;
use serde_json::{json, Value};

use super::scheduler::fit::{tolerates, Taint};
use super::workload::{deleting, is_active, name, namespace};
use crate::api::informer::{Cache, Change};
use crate::api::{parse_time, rfc3339_now, unix_now, ApiClient, ApiError, EventRecorder, EventType};
use crate::controllers::{ControllerContext, SharedInformers};
use crate::runtime::{Actor, Ctx};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const TICK: Duration = Duration::from_millis(250);

pub struct NodeLifecycleController {
    client: ApiClient,
    informers: Arc<SharedInformers>,
}

impl NodeLifecycleController {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers }
    }
}

type Shared = std::sync::Arc<std::sync::RwLock<Cache>>;

/// When a node's heartbeat was last seen to move, and how long it may be silent.
struct Heartbeat {
    renew: String,
    seen: Instant,
    lease: Duration,
}

fn ready_status(node: &Value) -> Option<&str> {
    crate::api::condition(node, "Ready")?["status"].as_str()
}

fn has_taint(node: &Value, key: &str) -> bool {
    node["spec"]["taints"].as_array().is_some_and(|ts| ts.iter().any(|t| t["key"] == key))
}

/// When `pod` must go from a node with these NoExecute `taints` (seconds since the
/// epoch; `None`: it may stay).
pub fn eviction_time(pod: &Value, taints: &[Value]) -> Option<f64> {
    let mut at: Option<f64> = None;
    for t in taints.iter().filter(|t| t["effect"] == "NoExecute") {
        let taint = Taint {
            key: t["key"].as_str().unwrap_or_default().into(),
            value: t["value"].as_str().unwrap_or_default().into(),
            effect: "NoExecute".into(),
        };
        let tolerations = &pod["spec"]["tolerations"];
        if !tolerates(tolerations, &taint) {
            return Some(0.0);
        }
        // The shortest tolerationSeconds among the tolerations that match; none: forever.
        let seconds = tolerations
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| tolerates(&json!([x]), &taint))
            .map(|x| x["tolerationSeconds"].as_i64())
            .collect::<Vec<_>>();
        if seconds.iter().any(Option::is_none) {
            continue;
        }
        let secs = seconds.into_iter().flatten().min().unwrap_or(0).max(0) as f64;
        let added = t["timeAdded"].as_str().and_then(parse_time).unwrap_or_else(unix_now);
        at = Some(at.map_or(added + secs, |a: f64| a.min(added + secs)));
    }
    at
}

/// Which pods are bound to each node (kept from the pods' changes), so the eviction
/// pass reads the pods of tainted nodes only instead of every pod four times a second.
#[derive(Default)]
struct PodsByNode {
    on: HashMap<String, HashSet<String>>,
    node_of: HashMap<String, String>,
}

impl PodsByNode {
    /// Pod `key` is now on `node` (`None`: unbound or gone).
    fn place(&mut self, key: String, node: Option<&str>) {
        if self.node_of.get(&key).map(String::as_str) == node {
            return;
        }
        if let Some(old) = self.node_of.remove(&key) {
            if let Some(set) = self.on.get_mut(&old) {
                set.remove(&key);
                if set.is_empty() {
                    self.on.remove(&old);
                }
            }
        }
        if let Some(node) = node {
            self.on.entry(node.to_string()).or_default().insert(key.clone());
            self.node_of.insert(key, node.to_string());
        }
    }

    fn on(&self, node: &str) -> impl Iterator<Item = &String> {
        self.on.get(node).into_iter().flatten()
    }
}

struct State {
    client: ApiClient,
    recorder: EventRecorder,
    nodes: Shared,
    leases: Shared,
    pods: Shared,
    beats: HashMap<String, Heartbeat>,
    by_node: PodsByNode,
    taints: NodeTaints,
}

/// The NoExecute taints of each node, kept from the nodes' changes, so a pass reads
/// the few tainted nodes instead of every node's JSON four times a second.
#[derive(Default)]
struct NodeTaints {
    no_execute: HashMap<String, Vec<Value>>,
}

impl NodeTaints {
    /// Node `name` is now `node` (`None`: gone).
    fn note(&mut self, name: &str, node: Option<&Value>) {
        let taints: Vec<Value> = node
            .and_then(|n| n["spec"]["taints"].as_array())
            .into_iter()
            .flatten()
            .filter(|t| t["effect"] == "NoExecute")
            .cloned()
            .collect();
        if taints.is_empty() {
            self.no_execute.remove(name);
        } else {
            self.no_execute.insert(name.to_string(), taints);
        }
    }

    fn unreachable(&self) -> impl Iterator<Item = &String> {
        self.no_execute.iter().filter(|(_, ts)| ts.iter().any(|t| t["key"] == UNREACHABLE)).map(|(n, _)| n)
    }
}

impl State {
    fn on_pod(&mut self, change: Change) {
        match change {
            Change::Upserted(key) => {
                let pods = self.pods.read().unwrap();
                let node =
                    pods.objects.get(&key).and_then(|p| p["spec"]["nodeName"].as_str()).filter(|n| !n.is_empty());
                self.by_node.place(key, node);
            }
            Change::Deleted(key, _) => self.by_node.place(key, None),
        }
    }

    fn on_node(&mut self, change: Change) {
        match change {
            Change::Upserted(key) => {
                let nodes = self.nodes.read().unwrap();
                self.taints.note(&key, nodes.objects.get(&key));
            }
            Change::Deleted(key, _) => self.taints.note(&key, None),
        }
    }

    fn on_lease(&mut self, change: Change) {
        match change {
            Change::Upserted(key) => {
                let leases = self.leases.read().unwrap();
                let Some(lease) = leases.objects.get(&key) else { return };
                let node = name(lease);
                let renew = lease["spec"]["renewTime"].as_str().unwrap_or_default();
                let lease_for = Duration::from_secs(lease["spec"]["leaseDurationSeconds"].as_u64().unwrap_or(40));
                match self.beats.get_mut(node) {
                    Some(b) if b.renew == renew => b.lease = lease_for,
                    _ => {
                        let beat = Heartbeat { renew: renew.to_string(), seen: Instant::now(), lease: lease_for };
                        self.beats.insert(node.to_string(), beat);
                    }
                }
            }
            Change::Deleted(key, _) => {
                self.beats.remove(key.rsplit('/').next().unwrap_or_default());
            }
        }
    }

    fn silent(&self, node: &str) -> Option<Duration> {
        let beat = self.beats.get(node)?;
        let quiet = beat.seen.elapsed();
        (quiet > beat.lease).then_some(quiet)
    }

    async fn tick(&mut self) -> Result<(), ApiError> {
        // Heartbeats are checked by time alone; a node's JSON is read only when its
        // heartbeat lapsed or it carries the unreachable taint.
        let (lost, back) = {
            let nodes = self.nodes.read().unwrap();
            let lost: Vec<(Value, Duration)> = self
                .beats
                .keys()
                .filter_map(|n| Some((n, self.silent(n)?)))
                .filter_map(|(n, quiet)| nodes.objects.get(n).map(|node| (node, quiet)))
                .filter(|(node, _)| ready_status(node) != Some("Unknown") || !has_taint(node, UNREACHABLE))
                .map(|(node, quiet)| (node.clone(), quiet))
                .collect();
            let back: Vec<Value> = self
                .taints
                .unreachable()
                .filter(|n| self.beats.contains_key(*n) && self.silent(n).is_none())
                .filter_map(|n| nodes.objects.get(n))
                .filter(|node| ready_status(node) == Some("True"))
                .cloned()
                .collect();
            (lost, back)
        };
        for (node, silent) in lost {
            self.mark_lost(&node, silent).await?;
        }
        for node in back {
            let n = name(&node);
            let taints: Vec<&Value> =
                node["spec"]["taints"].as_array().into_iter().flatten().filter(|t| t["key"] != UNREACHABLE).collect();
            self.client.merge_patch(&format!("/api/v1/nodes/{n}"), &json!({"spec": {"taints": taints}})).await?;
            tracing::info!(node = %n, "heartbeat back; untainted");
        }
        // Evictions from nodes with NoExecute taints.
        if self.taints.no_execute.is_empty() {
            return Ok(());
        }
        let now = unix_now();
        let due: Vec<Value> = {
            let pods = self.pods.read().unwrap();
            self.taints
                .no_execute
                .iter()
                .flat_map(|(node, ts)| self.by_node.on(node).map(move |key| (key, ts)))
                .filter_map(|(key, ts)| pods.objects.get(key).map(|p| (p, ts)))
                .filter(|(p, ts)| is_active(p) && !deleting(p) && eviction_time(p, ts).is_some_and(|at| at <= now))
                .map(|(p, _)| p.clone())
                .collect()
        };
        for pod in due {
            let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(&pod), name(&pod));
            match self.client.delete(&path).await {
                Ok(_) => {
                    let message = format!("Marking for deletion Pod {}/{}", namespace(&pod), name(&pod));
                    let _best_effort =
                        self.recorder.record(&pod, EventType::Normal, "TaintManagerEviction", &message).await;
                }
                Err(e) if e.code() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn mark_lost(&self, node: &Value, silent: Duration) -> Result<(), ApiError> {
        let n = name(node);
        let now = rfc3339_now();
        let mut conditions: Vec<Value> = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conditions.retain(|c| c["type"] != "Ready");
        conditions.push(json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.", "lastHeartbeatTime": now, "lastTransitionTime": now}));
        self.client
            .merge_patch(&format!("/api/v1/nodes/{n}/status"), &json!({"status": {"conditions": conditions}}))
            .await?;
        if !has_taint(node, UNREACHABLE) {
            let mut taints: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
            taints.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": now}));
            self.client.merge_patch(&format!("/api/v1/nodes/{n}"), &json!({"spec": {"taints": taints}})).await?;
        }
        tracing::info!(node = %n, silent_ms = silent.as_millis() as u64, "node lost: NotReady, tainted unreachable");
        let message = format!("Node {n} status is now: NodeNotReady");
        let _best_effort = self.recorder.record(node, EventType::Normal, "NodeNotReady", &message).await;
        Ok(())
    }
}

impl Actor for NodeLifecycleController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (nodes_cache, mut nodes_rx) = self.informers.subscribe("/api/v1/nodes", &[]);
        let (leases_cache, mut leases_rx) =
            self.informers.subscribe("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", &[]);
        // The controllers' shared pod informer (not a second watch of bound pods only).
        let (pods_cache, mut pods_rx) = self.informers.subscribe("/api/v1/pods", &[]);
        let mut state = State {
            client: self.client.clone(),
            recorder: EventRecorder::new(self.client.clone(), "node-controller", ""),
            nodes: nodes_cache,
            leases: leases_cache,
            pods: pods_cache,
            beats: HashMap::new(),
            by_node: PodsByNode::default(),
            taints: NodeTaints::default(),
        };
        ctx.spawn(actix::fut::wrap_future(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    c = leases_rx.recv() => match c { Some(c) => state.on_lease(c), None => return },
                    c = nodes_rx.recv() => match c { Some(c) => state.on_node(c), None => return },
                    c = pods_rx.recv() => match c { Some(c) => state.on_pod(c), None => return },
                    _ = tick.tick() => {
                        while let Ok(c) = leases_rx.try_recv() {
                            state.on_lease(c);
                        }
                        while let Ok(c) = nodes_rx.try_recv() {
                            state.on_node(c);
                        }
                        while let Ok(c) = pods_rx.try_recv() {
                            state.on_pod(c);
                        }
                        if let Err(e) = state.tick().await {
                            if e.reason() == Some("Fenced") {
                                return;
                            }
                            tracing::debug!(error = %e, "node lifecycle pass failed");
                        }
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
    fn pods_are_indexed_by_the_node_they_are_bound_to() {
        let mut idx = PodsByNode::default();
        let on = |idx: &PodsByNode, n: &str| {
            let mut v: Vec<String> = idx.on(n).cloned().collect();
            v.sort();
            v
        };
        idx.place("a/p1".into(), None);
        assert!(idx.on.is_empty(), "an unbound pod is on no node");
        idx.place("a/p1".into(), Some("n1"));
        idx.place("a/p2".into(), Some("n1"));
        idx.place("a/p3".into(), Some("n2"));
        assert_eq!(on(&idx, "n1"), ["a/p1", "a/p2"]);
        // Deleted and made again under the same name, elsewhere.
        idx.place("a/p1".into(), None);
        idx.place("a/p1".into(), Some("n2"));
        assert_eq!((on(&idx, "n1"), on(&idx, "n2")), (vec!["a/p2".to_string()], vec!["a/p1".into(), "a/p3".into()]));
        idx.place("a/p2".into(), None);
        assert!(!idx.on.contains_key("n1"), "an emptied node is forgotten");
        assert_eq!(idx.node_of.len(), 2);
    }

    #[test]
    fn only_no_execute_taints_are_kept_and_unreachable_nodes_are_found() {
        let mut t = NodeTaints::default();
        let node = |taints: Value| json!({"metadata": {"name": "n"}, "spec": {"taints": taints}});
        t.note("n1", Some(&node(json!([{"key": "x", "effect": "NoSchedule"}]))));
        assert!(t.no_execute.is_empty(), "a NoSchedule taint evicts nothing");
        t.note(
            "n1",
            Some(&node(json!([{"key": "x", "effect": "NoSchedule"}, {"key": UNREACHABLE, "effect": "NoExecute"}]))),
        );
        t.note("n2", Some(&node(json!([{"key": "gpu", "effect": "NoExecute"}]))));
        assert_eq!(
            t.no_execute["n1"],
            json!([{"key": UNREACHABLE, "effect": "NoExecute"}]).as_array().unwrap().clone()
        );
        assert_eq!(t.unreachable().collect::<Vec<_>>(), ["n1"]);
        t.note("n1", Some(&node(json!([]))));
        t.note("n2", None);
        assert!(t.no_execute.is_empty(), "untainted and deleted nodes are forgotten");
    }

    #[test]
    fn pods_leave_tainted_nodes_when_their_toleration_runs_out() {
        let taint = json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-11-29T10:00:00Z"});
        let added = parse_time("2026-11-29T10:00:00Z").unwrap();
        let pod = |tolerations: Value| json!({"spec": {"tolerations": tolerations}});
        assert_eq!(eviction_time(&pod(json!([])), std::slice::from_ref(&taint)), Some(0.0));
        let for_five =
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]);
        assert_eq!(eviction_time(&pod(for_five), std::slice::from_ref(&taint)), Some(added + 5.0));
        let forever = json!([{"operator": "Exists"}]);
        assert_eq!(eviction_time(&pod(forever), std::slice::from_ref(&taint)), None);
        let no_schedule = json!({"key": "x", "effect": "NoSchedule"});
        assert_eq!(eviction_time(&pod(json!([])), &[no_schedule]), None);
    }
}
