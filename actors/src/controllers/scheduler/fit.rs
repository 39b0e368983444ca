//! Where a pod may go and where it goes best: the scheduler's view of the cluster
//! (nodes with what is placed on them) and its filters and scores, kept free of I/O so
//! they are tested on their own.
//!
//! Filters, each giving Kubernetes' reason when it refuses a node: schedulable and
//! ready, untolerated NoSchedule/NoExecute taints, nodeSelector and required node
//! affinity, pod count, CPU and memory requests against allocatable minus what is
//! placed, and required pod anti-affinity (both the pod's own terms and those of the
//! pods already placed). Scores: least allocated (with Kubernetes' non-zero defaults
//! for pods that request nothing) plus, weighted double, spreading a controller's
//! replicas over nodes.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::controllers::labels::{matches, node_selector_matches};
use crate::controllers::quantity::{millicores, units};

/// What scoring assumes a pod without requests uses (Kubernetes' non-zero defaults).
const DEFAULT_CPU: u64 = 100;
const DEFAULT_MEMORY: u64 = 200 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub node: Value,
    pub taints: Vec<Taint>,
    pub schedulable: bool,
    pub ready: bool,
    pub cpu: u64,
    pub memory: u64,
    pub pods: u64,
    /// What is placed here: requested cpu, memory, and the scoring view of them.
    pub used_cpu: u64,
    pub used_memory: u64,
    pub score_cpu: u64,
    pub score_memory: u64,
    pub placed: HashSet<String>,
    /// Pods here by their controller's uid (for spreading).
    pub owners: HashMap<String, u32>,
}

impl NodeInfo {
    pub fn from(node: &Value) -> Self {
        let status = &node["status"];
        let alloc = if status["allocatable"].is_object() { &status["allocatable"] } else { &status["capacity"] };
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let taints = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Taint {
                key: t["key"].as_str().unwrap_or_default().into(),
                value: t["value"].as_str().unwrap_or_default().into(),
                effect: t["effect"].as_str().unwrap_or_default().into(),
            })
            .collect();
        Self {
            name: node["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            node: node.clone(),
            taints,
            schedulable: node["spec"]["unschedulable"] != true,
            ready,
            cpu: millicores(&alloc["cpu"]),
            memory: units(&alloc["memory"]),
            pods: units(&alloc["pods"]),
            used_cpu: 0,
            used_memory: 0,
            score_cpu: 0,
            score_memory: 0,
            placed: HashSet::new(),
            owners: HashMap::new(),
        }
    }
}

/// A pod as the scheduler needs it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub key: String,
    pub namespace: String,
    pub labels: Value,
    pub cpu: u64,
    pub memory: u64,
    /// The controller owning it (its uid), for spreading.
    pub owner: Option<String>,
    pub spec: Value,
    /// Its required pod anti-affinity terms.
    pub anti: Vec<Value>,
}

impl PodInfo {
    pub fn from(key: &str, pod: &Value) -> Self {
        let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
        let sum = |f: fn(&Value) -> u64, what: &str| -> u64 {
            let main: u64 = containers.iter().map(|c| f(&c["resources"]["requests"][what])).sum();
            // An init container runs alone, before the others: the larger of the two counts.
            let init = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| f(&c["resources"]["requests"][what]))
                .max()
                .unwrap_or(0);
            main.max(init)
        };
        let owner = pod["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["controller"] == true)
            .and_then(|r| r["uid"].as_str())
            .map(str::to_string);
        Self {
            key: key.to_string(),
            namespace: pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
            labels: pod["metadata"]["labels"].clone(),
            cpu: sum(millicores, "cpu"),
            memory: sum(units, "memory"),
            owner,
            spec: pod["spec"].clone(),
            anti: pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn score_cpu(&self) -> u64 {
        if self.cpu == 0 {
            DEFAULT_CPU
        } else {
            self.cpu
        }
    }

    fn score_memory(&self) -> u64 {
        if self.memory == 0 {
            DEFAULT_MEMORY
        } else {
            self.memory
        }
    }
}

/// Whether `tolerations` tolerate `taint`.
pub fn tolerates(tolerations: &Value, taint: &Taint) -> bool {
    tolerations.as_array().into_iter().flatten().any(|t| {
        let effect = t["effect"].as_str().unwrap_or_default();
        let key = t["key"].as_str().unwrap_or_default();
        let effect_ok = effect.is_empty() || effect == taint.effect;
        let key_ok = key.is_empty() || key == taint.key;
        let value_ok = match t["operator"].as_str().unwrap_or("Equal") {
            "Exists" => true,
            _ => t["value"].as_str().unwrap_or_default() == taint.value,
        };
        effect_ok && key_ok && value_ok && !(key.is_empty() && t["operator"] != "Exists")
    })
}

/// The cluster as the scheduler sees it.
#[derive(Default)]
pub struct Cluster {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Where each placed pod is (bound, or assumed while its binding is written).
    pub placed: HashMap<String, (String, PodInfo)>,
    /// Where the next search starts (round robin over the nodes).
    next: usize,
    /// How many placed pods have anti-affinity terms (none: nothing to check).
    with_anti: usize,
}

impl Cluster {
    pub fn set_node(&mut self, node: &Value) {
        let mut info = NodeInfo::from(node);
        if let Some(old) = self.nodes.remove(&info.name) {
            (info.used_cpu, info.used_memory, info.score_cpu, info.score_memory) =
                (old.used_cpu, old.used_memory, old.score_cpu, old.score_memory);
            info.placed = old.placed;
            info.owners = old.owners;
        }
        self.nodes.insert(info.name.clone(), info);
    }

    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Accounts `pod` to `node` (replacing where it was before).
    pub fn place(&mut self, pod: PodInfo, node: &str) {
        self.unplace(&pod.key);
        if let Some(n) = self.nodes.get_mut(node) {
            n.used_cpu += pod.cpu;
            n.used_memory += pod.memory;
            n.score_cpu += pod.score_cpu();
            n.score_memory += pod.score_memory();
            n.placed.insert(pod.key.clone());
            if let Some(o) = &pod.owner {
                *n.owners.entry(o.clone()).or_default() += 1;
            }
        }
        self.with_anti += usize::from(!pod.anti.is_empty());
        self.placed.insert(pod.key.clone(), (node.to_string(), pod));
    }

    pub fn unplace(&mut self, key: &str) {
        let Some((node, pod)) = self.placed.remove(key) else { return };
        self.with_anti -= usize::from(!pod.anti.is_empty());
        if let Some(n) = self.nodes.get_mut(&node) {
            n.used_cpu -= pod.cpu;
            n.used_memory -= pod.memory;
            n.score_cpu -= pod.score_cpu();
            n.score_memory -= pod.score_memory();
            n.placed.remove(key);
            if let Some(o) = &pod.owner {
                if let Some(c) = n.owners.get_mut(o) {
                    *c -= 1;
                    if *c == 0 {
                        n.owners.remove(o);
                    }
                }
            }
        }
    }

    /// Why `pod` cannot go to `node`, or `None` if it can.
    fn refuse(&self, pod: &PodInfo, node: &NodeInfo, blocked: &HashSet<String>) -> Option<String> {
        if !node.schedulable {
            return Some("node(s) were unschedulable".into());
        }
        for taint in node.taints.iter().filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute") {
            if !tolerates(&pod.spec["tolerations"], taint) {
                return Some(format!("node(s) had untolerated taint {{{}: {}}}", taint.key, taint.value));
            }
        }
        if !node.ready {
            return Some("node(s) were not ready".into());
        }
        let labels = &node.node["metadata"]["labels"];
        let selected =
            pod.spec["nodeSelector"].as_object().into_iter().flatten().all(|(k, v)| labels[k.as_str()] == *v);
        let required = &pod.spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
        if !selected || (required.is_object() && !node_selector_matches(required, &node.node)) {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
        if node.placed.len() as u64 + 1 > node.pods {
            return Some("Too many pods".into());
        }
        if pod.cpu > 0 && node.used_cpu + pod.cpu > node.cpu {
            return Some("Insufficient cpu".into());
        }
        if pod.memory > 0 && node.used_memory + pod.memory > node.memory {
            return Some("Insufficient memory".into());
        }
        if blocked.contains(&node.name) {
            return Some("node(s) didn't match pod anti-affinity rules".into());
        }
        None
    }

    /// The nodes that required anti-affinity rules close to `pod`: its own terms against
    /// pods placed, and placed pods' terms against it (by topology domain).
    fn anti_affinity_blocked(&self, pod: &PodInfo) -> HashSet<String> {
        let mut blocked = HashSet::new();
        let mut domains: Vec<(String, String)> = Vec::new(); // (topology key, value) closed
        let own = &pod.anti;
        if own.is_empty() && self.with_anti == 0 {
            return blocked;
        }
        for (node, other) in self.placed.values() {
            let Some(n) = self.nodes.get(node) else { continue };
            let n_labels = &n.node["metadata"]["labels"];
            for (term, subject, owner_ns) in own
                .iter()
                .map(|t| (t, other, &pod.namespace))
                .chain(other.anti.iter().map(|t| (t, pod, &other.namespace)))
            {
                let namespaces: Vec<&str> =
                    term["namespaces"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let in_ns = if namespaces.is_empty() {
                    subject.namespace == *owner_ns
                } else {
                    namespaces.contains(&subject.namespace.as_str())
                };
                if in_ns && matches(&term["labelSelector"], &subject.labels) {
                    let key = term["topologyKey"].as_str().unwrap_or_default();
                    if let Some(v) = n_labels[key].as_str() {
                        domains.push((key.to_string(), v.to_string()));
                    }
                }
            }
        }
        for n in self.nodes.values() {
            let labels = &n.node["metadata"]["labels"];
            if domains.iter().any(|(k, v)| labels[k.as_str()].as_str() == Some(v)) {
                blocked.insert(n.name.clone());
            }
        }
        blocked
    }

    /// How many feasible nodes to find before choosing (Kubernetes' adaptive share:
    /// all of up to 100 nodes; of more, 50% less 1% per 125 nodes, at least 5%, at least 100).
    fn enough(&self) -> usize {
        let n = self.nodes.len();
        if n <= 100 {
            return n;
        }
        let pct = (50 - (n / 125) as i64).max(5) as usize;
        (n * pct / 100).max(100)
    }

    /// The best node for `pod`, or why none fits (reason → how many nodes said it).
    pub fn choose(&mut self, pod: &PodInfo) -> Result<String, BTreeMap<String, usize>> {
        let blocked = self.anti_affinity_blocked(pod);
        let names: Vec<&NodeInfo> = self.nodes.values().collect();
        let total = names.len();
        let want = self.enough();
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut visited = 0;
        for i in 0..total {
            let node = names[(self.next + i) % total];
            visited += 1;
            match self.refuse(pod, node, &blocked) {
                None => {
                    feasible.push(node);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Some(why) => *reasons.entry(why).or_default() += 1,
            }
        }
        let start = self.next;
        if feasible.is_empty() {
            return Err(reasons);
        }
        let most = pod
            .owner
            .as_ref()
            .map_or(0, |o| feasible.iter().map(|n| n.owners.get(o).copied().unwrap_or(0)).max().unwrap_or(0));
        let score = |n: &NodeInfo| -> u64 {
            let free = |cap: u64, used: u64| (cap.saturating_sub(used) * 100).checked_div(cap).unwrap_or(0);
            let least =
                (free(n.cpu, n.score_cpu + pod.score_cpu()) + free(n.memory, n.score_memory + pod.score_memory())) / 2;
            let spread = match &pod.owner {
                Some(o) if most > 0 => u64::from(most - n.owners.get(o).copied().unwrap_or(0)) * 100 / u64::from(most),
                _ => 100,
            };
            least + 2 * spread
        };
        let mut best = feasible[0];
        let mut best_score = score(best);
        for n in &feasible[1..] {
            let s = score(n);
            if s > best_score {
                (best, best_score) = (n, s);
            }
        }
        let chosen = best.name.clone();
        self.next = (start + visited) % total.max(1);
        Ok(chosen)
    }
}

/// Kubernetes' FailedScheduling message: `0/3 nodes are available: 1 Insufficient cpu,
/// 2 node(s) had untolerated taint {…}.`
pub fn unschedulable_message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(why, n)| format!("{n} {why}")).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total} nodes are available.");
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: Value, taints: Value, cpu: &str) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
               "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "10"},
                          "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(name: &str, spec: Value) -> PodInfo {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "x", "resources": spec["resources"].clone()}]);
        PodInfo::from(
            &format!("web/{name}"),
            &json!({"metadata": {"name": name, "namespace": "web",
            "labels": {"app": "web"}, "ownerReferences": [{"uid": "rs1", "controller": true}]}, "spec": spec}),
        )
    }

    fn cluster(nodes: &[Value]) -> Cluster {
        let mut c = Cluster::default();
        for n in nodes {
            c.set_node(n);
        }
        c
    }

    #[test]
    fn taints_keep_away_pods_that_do_not_tolerate_them() {
        let mut c = cluster(&[node("a", json!({}), json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]), "2")]);
        let err = c.choose(&pod("p", json!({}))).unwrap_err();
        assert_eq!(unschedulable_message(1, &err), "0/1 nodes are available: 1 node(s) had untolerated taint {k: v}.");
        let tolerant = pod("p", json!({"tolerations": [{"key": "k", "operator": "Equal", "value": "v"}]}));
        assert_eq!(c.choose(&tolerant).unwrap(), "a");
        let exists = pod("p", json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(c.choose(&exists).unwrap(), "a");
        let other = pod("p", json!({"tolerations": [{"key": "k", "value": "w"}]}));
        assert!(c.choose(&other).is_err());
    }

    #[test]
    fn selectors_and_node_affinity_choose_among_nodes() {
        let mut c = cluster(&[node("a", json!({"disk": "ssd"}), json!([]), "2"), node("b", json!({}), json!([]), "2")]);
        for _ in 0..4 {
            assert_eq!(c.choose(&pod("p", json!({"nodeSelector": {"disk": "ssd"}}))).unwrap(), "a");
        }
        let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "DoesNotExist"}]}]}}}});
        assert_eq!(c.choose(&pod("p", affinity)).unwrap(), "b");
        let err = c.choose(&pod("p", json!({"nodeSelector": {"disk": "hdd"}}))).unwrap_err();
        assert_eq!(err.get("node(s) didn't match Pod's node affinity/selector"), Some(&2));
    }

    #[test]
    fn requests_fill_nodes_and_spreading_balances_replicas() {
        let mut c = cluster(&[node("a", json!({}), json!([]), "1"), node("b", json!({}), json!([]), "1")]);
        let big = || pod("p", json!({"resources": {"requests": {"cpu": "600m"}}}));
        let first = c.choose(&big()).unwrap();
        c.place(PodInfo { key: "web/1".into(), ..big() }, &first);
        let second = c.choose(&big()).unwrap();
        assert_ne!(first, second, "600m does not fit twice in 1 CPU");
        c.place(PodInfo { key: "web/2".into(), ..big() }, &second);
        assert_eq!(c.choose(&big()).unwrap_err().get("Insufficient cpu"), Some(&2));
        c.unplace("web/1");
        assert_eq!(c.choose(&big()).unwrap(), first);
        // Replicas of one controller go to different nodes while they can.
        let mut c = cluster(&[
            node("a", json!({}), json!([]), "4"),
            node("b", json!({}), json!([]), "4"),
            node("c", json!({}), json!([]), "4"),
        ]);
        let mut used = Vec::new();
        for i in 0..3 {
            let p = PodInfo { key: format!("web/{i}"), ..pod("p", json!({})) };
            let n = c.choose(&p).unwrap();
            c.place(p, &n);
            used.push(n);
        }
        used.sort();
        assert_eq!(used, ["a", "b", "c"]);
    }

    #[test]
    fn anti_affinity_by_hostname_keeps_replicas_apart() {
        let host = |n: &str| node(n, json!({"kubernetes.io/hostname": n}), json!([]), "4");
        let mut c = cluster(&[host("a"), host("b")]);
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let mut used = Vec::new();
        for i in 0..2 {
            let p = PodInfo { key: format!("web/{i}"), owner: None, ..pod("p", anti.clone()) };
            let n = c.choose(&p).unwrap();
            c.place(p, &n);
            used.push(n);
        }
        assert_ne!(used[0], used[1]);
        let err = c.choose(&pod("p", anti)).unwrap_err();
        assert_eq!(err.get("node(s) didn't match pod anti-affinity rules"), Some(&2));
        // Placed pods' own terms refuse newcomers they select, too.
        assert!(c.choose(&pod("q", json!({}))).is_err());
    }

    #[test]
    fn large_clusters_search_a_share_of_their_nodes() {
        let nodes: Vec<Value> = (0..1000).map(|i| node(&format!("n{i}"), json!({}), json!([]), "4")).collect();
        let c = cluster(&nodes);
        assert_eq!(c.enough(), 420);
    }
}
