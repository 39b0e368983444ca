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
use std::ops::Bound;

use serde_json::Value;

use crate::controllers::labels::{matches, node_selector_matches};
use crate::controllers::quantity::{millicores, units};

/// What scoring assumes a pod without requests uses (Kubernetes' non-zero defaults).
const DEFAULT_CPU: u64 = 100;
const DEFAULT_MEMORY: u64 = 200 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl Taint {
    /// Whether the taint keeps pods off (NoSchedule, NoExecute) rather than only
    /// discouraging them (PreferNoSchedule).
    fn repels(&self) -> bool {
        self.effect == "NoSchedule" || self.effect == "NoExecute"
    }
}

/// One toleration of a pod, parsed once per pod rather than once per node it is tried on.
#[derive(Debug, Clone, PartialEq)]
pub struct Toleration {
    key: String,
    exists: bool,
    value: String,
    effect: String,
}

impl Toleration {
    /// A pod's `spec.tolerations`.
    pub fn parse_all(tolerations: &Value) -> Vec<Toleration> {
        let text = |t: &Value, f: &str| t[f].as_str().unwrap_or_default().to_string();
        tolerations
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Toleration {
                key: text(t, "key"),
                exists: t["operator"] == "Exists",
                value: text(t, "value"),
                effect: text(t, "effect"),
            })
            .collect()
    }

    fn tolerates(&self, taint: &Taint) -> bool {
        // An empty key tolerates every taint, but only with `Exists`.
        let key_ok = if self.key.is_empty() { self.exists } else { self.key == taint.key };
        key_ok && (self.effect.is_empty() || self.effect == taint.effect) && (self.exists || self.value == taint.value)
    }
}

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// The node's name and labels, as `{"metadata": {…}}`: all that selectors and
    /// topology keys read (a whole hollow node's copy was kept and made again at
    /// each of its updates).
    pub node: Value,
    pub taints: Vec<Taint>,
    /// Which of the cluster's distinct taint lists this node has: nodes mostly share a
    /// few, so a decision checks tolerations once per list, not once per node.
    taint_set: usize,
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
        let ready = crate::api::condition_is_true(node, "Ready");
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
            node: serde_json::json!({"metadata": {"name": node["metadata"]["name"], "labels": node["metadata"]["labels"]}}),
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
            taint_set: 0,
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
    /// `spec.nodeSelector`'s pairs and the required node affinity (`Null` if none),
    /// taken out once: a decision tries them on hundreds of nodes.
    pub node_selector: Vec<(String, Value)>,
    pub node_affinity: Value,
    pub tolerations: Vec<Toleration>,
    /// Its required pod anti-affinity terms.
    pub anti: Vec<Value>,
}

impl PodInfo {
    pub fn from(key: &str, pod: &Value) -> Self {
        let containers = pod["spec"]["containers"].as_array().map_or(&[][..], Vec::as_slice);
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
            node_selector: pod["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            node_affinity: pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                .clone(),
            tolerations: Toleration::parse_all(&pod["spec"]["tolerations"]),
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

/// Whether `tolerations` (a pod's `spec.tolerations`) tolerate `taint`.
pub fn tolerates(tolerations: &Value, taint: &Taint) -> bool {
    Toleration::parse_all(tolerations).iter().any(|t| t.tolerates(taint))
}

/// The first of `taints` that `tolerations` do not tolerate and that keeps pods off.
fn untolerated<'t>(tolerations: &[Toleration], taints: &'t [Taint]) -> Option<&'t Taint> {
    taints.iter().filter(|t| t.repels()).find(|taint| !tolerations.iter().any(|t| t.tolerates(taint)))
}

/// The cluster as the scheduler sees it.
#[derive(Default)]
pub struct Cluster {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Where each placed pod is (bound, or assumed while its binding is written).
    pub placed: HashMap<String, (String, PodInfo)>,
    /// The node the last search stopped at: the next starts after it (round robin).
    cursor: Option<String>,
    /// How many placed pods have anti-affinity terms (none: nothing to check).
    with_anti: usize,
    /// The distinct taint lists of nodes, to their `NodeInfo::taint_set` number.
    taint_sets: HashMap<Vec<Taint>, usize>,
}

impl Cluster {
    pub fn set_node(&mut self, node: &Value) {
        let mut info = NodeInfo::from(node);
        info.taint_set = self.taint_set(&info.taints);
        if let Some(old) = self.nodes.remove(&info.name) {
            (info.used_cpu, info.used_memory, info.score_cpu, info.score_memory) =
                (old.used_cpu, old.used_memory, old.score_cpu, old.score_memory);
            info.placed = old.placed;
            info.owners = old.owners;
        }
        self.nodes.insert(info.name.clone(), info);
    }

    /// The number of `taints` among the distinct lists seen (numbered if new). Lists of
    /// nodes long gone are forgotten once there are twice as many lists as nodes (and at
    /// least 1,024), by numbering again those of the nodes there are.
    fn taint_set(&mut self, taints: &[Taint]) -> usize {
        if let Some(i) = self.taint_sets.get(taints) {
            return *i;
        }
        if self.taint_sets.len() >= (2 * self.nodes.len()).max(1024) {
            self.taint_sets.clear();
            for n in self.nodes.values_mut() {
                let next = self.taint_sets.len();
                n.taint_set = *self.taint_sets.entry(n.taints.clone()).or_insert(next);
            }
            if let Some(i) = self.taint_sets.get(taints) {
                return *i;
            }
        }
        let next = self.taint_sets.len();
        self.taint_sets.insert(taints.to_vec(), next);
        next
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
    /// `taints` remembers, for this decision, which taint sets the pod tolerates.
    fn refuse(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        blocked: &HashSet<String>,
        taints: &mut Vec<Option<Option<String>>>,
    ) -> Option<String> {
        if !node.schedulable {
            return Some("node(s) were unschedulable".into());
        }
        if taints.len() <= node.taint_set {
            taints.resize(node.taint_set + 1, None);
        }
        let verdict = taints[node.taint_set].get_or_insert_with(|| {
            untolerated(&pod.tolerations, &node.taints)
                .map(|t| format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value))
        });
        if verdict.is_some() {
            return verdict.clone();
        }
        if !node.ready {
            return Some("node(s) were not ready".into());
        }
        let selected = pod.node_selector.is_empty() || {
            let labels = &node.node["metadata"]["labels"];
            pod.node_selector.iter().all(|(k, v)| labels[k.as_str()] == *v)
        };
        let required = &pod.node_affinity;
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
        let want = self.enough();
        let mut feasible: Vec<(&NodeInfo, u32)> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut taints = Vec::new();
        let mut last = None;
        // Round robin: from just after where the last search stopped, wrapping around.
        let after = self.cursor.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let upto = self.cursor.as_deref().map_or(Bound::Excluded(""), Bound::Included);
        let order = self
            .nodes
            .range::<str, _>((after, Bound::Unbounded))
            .chain(self.nodes.range::<str, _>((Bound::Unbounded, upto)));
        for (name, node) in order {
            last = Some(name);
            match self.refuse(pod, node, &blocked, &mut taints) {
                None => {
                    let mine = pod.owner.as_ref().and_then(|o| node.owners.get(o)).copied().unwrap_or(0);
                    feasible.push((node, mine));
                    if feasible.len() >= want {
                        break;
                    }
                }
                Some(why) => *reasons.entry(why).or_default() += 1,
            }
        }
        if feasible.is_empty() {
            return Err(reasons);
        }
        let most = feasible.iter().map(|(_, mine)| *mine).max().unwrap_or(0);
        let score = |(n, mine): &(&NodeInfo, u32)| -> u64 {
            let free = |cap: u64, used: u64| (cap.saturating_sub(used) * 100).checked_div(cap).unwrap_or(0);
            let least =
                (free(n.cpu, n.score_cpu + pod.score_cpu()) + free(n.memory, n.score_memory + pod.score_memory())) / 2;
            let spread = if most > 0 { u64::from(most - mine) * 100 / u64::from(most) } else { 100 };
            least + 2 * spread
        };
        let mut best = &feasible[0];
        let mut best_score = score(best);
        for n in &feasible[1..] {
            let s = score(n);
            if s > best_score {
                (best, best_score) = (n, s);
            }
        }
        let chosen = best.0.name.clone();
        self.cursor = last.cloned();
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
    fn nodes_sharing_taints_are_judged_alike_and_others_apart() {
        let taint = |k: &str, effect: &str| json!([{"key": k, "value": "v", "effect": effect}]);
        let mut c = cluster(&[
            node("a", json!({}), taint("x", "NoSchedule"), "2"),
            node("b", json!({}), taint("y", "NoExecute"), "2"),
            node("c", json!({}), taint("x", "NoSchedule"), "2"),
            node("d", json!({}), taint("y", "PreferNoSchedule"), "2"),
        ]);
        let tolerates_x = || pod("p", json!({"tolerations": [{"key": "x", "operator": "Exists"}]}));
        let mut chosen = HashSet::new();
        for i in 0..8 {
            let p = PodInfo { key: format!("web/{i}"), ..tolerates_x() };
            let n = c.choose(&p).unwrap();
            c.place(p, &n);
            chosen.insert(n);
        }
        assert_eq!(chosen, HashSet::from(["a".to_string(), "c".into(), "d".into()]), "b repels it; d only prefers not");
        assert_eq!(c.choose(&pod("p", json!({}))).unwrap(), "d");
        c.remove_node("d");
        let err = c.choose(&pod("p", json!({}))).unwrap_err();
        assert_eq!(err.get("node(s) had untolerated taint {x: v}"), Some(&2));
        assert_eq!(err.get("node(s) had untolerated taint {y: v}"), Some(&1));
    }

    #[test]
    fn taint_lists_of_nodes_gone_are_forgotten_and_many_live_ones_are_kept() {
        let tainted = |i: usize| {
            node(&format!("n{i}"), json!({}), json!([{"key": format!("k{i}"), "effect": "NoSchedule"}]), "2")
        };
        let mut c = Cluster::default();
        // 3,000 nodes come and go, each with a taint of its own: the lists of gone ones are forgotten.
        for i in 0..3_000 {
            c.set_node(&tainted(i));
            c.remove_node(&format!("n{i}"));
        }
        assert!(c.taint_sets.len() <= 1024, "{} lists kept", c.taint_sets.len());
        // 1,500 live nodes with 1,500 distinct lists: each keeps its own, numbered apart.
        for i in 0..1_500 {
            c.set_node(&tainted(i));
        }
        let numbers: HashSet<usize> = c.nodes.values().map(|n| n.taint_set).collect();
        assert_eq!(numbers.len(), 1_500);
        let tolerates = |i: usize| pod("p", json!({"tolerations": [{"key": format!("k{i}"), "operator": "Exists"}]}));
        assert_eq!(c.choose(&tolerates(1_234)).unwrap(), "n1234");
    }

    #[test]
    fn searches_go_round_the_nodes() {
        let nodes: Vec<Value> = (0..300).map(|i| node(&format!("n{i:03}"), json!({}), json!([]), "4")).collect();
        let mut c = cluster(&nodes);
        assert_eq!(c.enough(), 144);
        // Equal scores pick the first feasible node: each search starts where the last stopped.
        let firsts: Vec<String> = (0..4).map(|_| c.choose(&pod("p", json!({}))).unwrap()).collect();
        assert_eq!(firsts, ["n000", "n144", "n288", "n132"]);
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
