//! `/<server>/controllers/daemonset`: one pod of each DaemonSet on every node it fits.
//!
//! A node is eligible when it matches the template's nodeSelector and required node
//! affinity and its NoSchedule/NoExecute taints are tolerated (DaemonSet pods also
//! tolerate what Kubernetes adds for them: not-ready, unreachable, unschedulable and the
//! pressure taints). Each pod is pinned to its node by required node affinity on
//! `metadata.name` and placed by the scheduler, as in Kubernetes. A node that joins
//! later gets its pod; a node no longer eligible loses it. Pods carry the template's
//! hash (`controller-revision-hash`); a RollingUpdate replaces old ones at most
//! `maxUnavailable` at a time, OnDelete leaves them until they are deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::AsyncContext;
use futures_util::future::join_all;
use serde_json::{json, Value};

use super::deployment::template_hash;
use super::labels::node_selector_matches;
use super::queue::WorkQueue;
use super::run::{run, Reconcile};
use super::scheduler::fit::{tolerates, Taint};
use super::workload::{
    controller_uid, deleting, is_active, is_available, name, namespace, owner_reference, pod_from_template, uid,
};
use crate::api::informer::{Cache, Change};
use crate::api::{ApiClient, ApiError};
use crate::controllers::{ControllerContext, SharedInformers};
use crate::runtime::{Actor, Ctx};

pub const HASH_LABEL: &str = "controller-revision-hash";
const PENDING_EXPIRE: Duration = Duration::from_secs(15);

pub struct DaemonSetController {
    client: ApiClient,
    informers: Arc<SharedInformers>,
}

impl DaemonSetController {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers }
    }
}

/// The tolerations every DaemonSet pod gets (Kubernetes adds the same).
fn daemon_tolerations(template: &Value) -> Value {
    let mut ts: Vec<Value> = template["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    for (key, effect) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        ts.push(json!({"key": key, "operator": "Exists", "effect": effect}));
    }
    Value::Array(ts)
}

/// Whether the DaemonSet's pods belong on `node`.
pub fn eligible(template: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let selected =
        template["spec"]["nodeSelector"].as_object().into_iter().flatten().all(|(k, v)| labels[k.as_str()] == *v);
    let affinity = &template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    let tolerations = daemon_tolerations(template);
    let tolerated = node["spec"]["taints"].as_array().into_iter().flatten().all(|t| {
        let effect = t["effect"].as_str().unwrap_or_default();
        effect == "PreferNoSchedule"
            || tolerates(
                &tolerations,
                &Taint {
                    key: t["key"].as_str().unwrap_or_default().into(),
                    value: t["value"].as_str().unwrap_or_default().into(),
                    effect: effect.into(),
                },
            )
    });
    selected && (!affinity.is_object() || node_selector_matches(affinity, node)) && tolerated
}

/// The pod's template for `node`: pinned there by node affinity, tolerating what
/// DaemonSet pods tolerate, labelled with the template's hash.
fn pod_for(ds: &Value, node: &str, hash: &str) -> Value {
    let mut template = ds["spec"]["template"].clone();
    template["metadata"]["labels"][HASH_LABEL] = hash.into();
    template["spec"]["tolerations"] = daemon_tolerations(&template);
    template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
    pod_from_template(&template, namespace(ds), name(ds), owner_reference(ds, "apps/v1", "DaemonSet"))
}

/// The node a DaemonSet pod is for (where it runs, or where its affinity pins it).
fn node_of(pod: &Value) -> Option<String> {
    if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let terms =
        &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    terms[0]["matchFields"][0]["values"][0].as_str().map(str::to_string)
}

type Shared = std::sync::Arc<std::sync::RwLock<Cache>>;

struct State {
    client: ApiClient,
    sets: Shared,
    nodes: Shared,
    pods: Shared,
    /// Pods created and not seen yet: (DaemonSet, node) → when.
    pending: HashMap<(String, String), Instant>,
    queue: WorkQueue,
}

impl State {
    async fn sync(&mut self, key: &str) -> Result<(), ApiError> {
        let Some(ds) = self.sets.read().unwrap().objects.get(key).cloned() else { return Ok(()) };
        if deleting(&ds) {
            return Ok(());
        }
        let hash = template_hash(&ds["spec"]["template"], 0);
        let nodes: Vec<Value> = self.nodes.read().unwrap().objects.values().cloned().collect();
        let pods: Vec<Value> = {
            let pods = self.pods.read().unwrap();
            let mine = |p: &&Value| controller_uid(p) == Some(uid(&ds)) && is_active(p);
            pods.in_namespace(namespace(&ds)).map(|(_, p)| p).filter(mine).cloned().collect()
        };
        let mut by_node: HashMap<String, Vec<&Value>> = HashMap::new();
        for p in &pods {
            if let Some(n) = node_of(p) {
                by_node.entry(n).or_default().push(p);
            }
        }
        let wanted: HashSet<String> =
            nodes.iter().filter(|n| eligible(&ds["spec"]["template"], n)).map(|n| name(n).to_string()).collect();
        self.pending.retain(|(d, n), at| d != key || (at.elapsed() < PENDING_EXPIRE && !by_node.contains_key(n)));
        let mut creates = Vec::new();
        let mut deletes: Vec<&Value> = Vec::new();
        for n in &wanted {
            match by_node.get(n) {
                None if !self.pending.contains_key(&(key.to_string(), n.clone())) => creates.push(n.clone()),
                Some(ps) if ps.len() > 1 => deletes.extend(ps[1..].iter().copied()),
                _ => {}
            }
        }
        for (n, ps) in &by_node {
            if !wanted.contains(n) {
                deletes.extend(ps.iter().copied());
            }
        }
        // Rolling update: old pods go while no more than maxUnavailable are unavailable.
        let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let on_delete = ds["spec"]["updateStrategy"]["type"] == "OnDelete";
        let max_unavailable = match &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] {
            Value::Number(n) => n.as_i64().unwrap_or(1),
            Value::String(p) => {
                let pct: f64 = p.trim_end_matches('%').parse().unwrap_or(0.0);
                ((pct * wanted.len() as f64 / 100.0).floor() as i64).max(1)
            }
            _ => 1,
        };
        if !on_delete {
            let unavailable = wanted
                .iter()
                .filter(|n| by_node.get(*n).is_none_or(|ps| !ps.iter().any(|p| is_available(p, min_ready))))
                .count() as i64;
            let mut budget = max_unavailable - unavailable;
            for n in &wanted {
                let Some(ps) = by_node.get(n) else { continue };
                let old = ps.iter().find(|p| p["metadata"]["labels"][HASH_LABEL] != hash.as_str());
                if let Some(old) = old {
                    // An old pod that is not available anyway costs nothing to replace.
                    if !is_available(old, min_ready) {
                        deletes.push(old);
                    } else if budget > 0 {
                        deletes.push(old);
                        budget -= 1;
                    }
                }
            }
        }
        for n in &creates {
            self.pending.insert((key.to_string(), n.clone()), Instant::now());
        }
        let collection = format!("/api/v1/namespaces/{}/pods", namespace(&ds));
        let bodies: Vec<Value> = creates.iter().map(|n| pod_for(&ds, n, &hash)).collect();
        let made = join_all(bodies.iter().map(|b| self.client.create(&collection, b))).await;
        for (n, r) in creates.iter().zip(made) {
            if let Err(e) = r {
                tracing::debug!(node = %n, error = %e, "cannot create a daemon pod");
                self.pending.remove(&(key.to_string(), n.clone()));
                self.queue.push_after(key, Duration::from_secs(1));
            }
        }
        for p in &deletes {
            let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(p), name(p));
            match self.client.delete(&path).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        // Status, as `kubectl rollout status ds` reads it.
        let scheduled = |n: &String| by_node.contains_key(n);
        let available = wanted
            .iter()
            .filter(|n| by_node.get(*n).is_some_and(|ps| ps.iter().any(|p| is_available(p, min_ready))))
            .count();
        let ready = wanted
            .iter()
            .filter(|n| by_node.get(*n).is_some_and(|ps| ps.iter().any(|p| super::workload::is_ready(p))))
            .count();
        let updated = pods.iter().filter(|p| p["metadata"]["labels"][HASH_LABEL] == hash.as_str()).count();
        let status = json!({
            "desiredNumberScheduled": wanted.len(),
            "currentNumberScheduled": wanted.iter().filter(|n| scheduled(n)).count(),
            "numberMisscheduled": by_node.keys().filter(|n| !wanted.contains(*n)).count(),
            "numberReady": ready, "numberAvailable": available,
            "numberUnavailable": wanted.len() - available,
            "updatedNumberScheduled": updated,
            "observedGeneration": ds["metadata"]["generation"],
        });
        if available < ready {
            self.queue.push_after(key, Duration::from_secs(min_ready.max(1) as u64));
        }
        let same = status
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| ds["status"][k].as_i64().unwrap_or(0) == v.as_i64().unwrap_or(0));
        if same {
            return Ok(());
        }
        let path = format!("/apis/apps/v1/namespaces/{}/daemonsets/{}/status", namespace(&ds), name(&ds));
        match self.client.merge_patch(&path, &json!({"status": status})).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn all_sets(&mut self) {
        let keys: Vec<String> = self.sets.read().unwrap().objects.keys().cloned().collect();
        for k in keys {
            self.queue.push(k);
        }
    }

    fn on_pod(&mut self, change: Change) {
        // The owning DaemonSet's key, read in place (most pods are no DaemonSet's).
        let set_of = |pod: &Value| {
            let owner = super::workload::controller_ref(pod).filter(|r| r["kind"] == "DaemonSet")?;
            Some(format!("{}/{}", namespace(pod), owner["name"].as_str().unwrap_or_default()))
        };
        let set = match change {
            Change::Upserted(k) => self.pods.read().unwrap().objects.get(&k).and_then(set_of),
            Change::Deleted(_, p) => set_of(&p),
        };
        if let Some(set) = set {
            self.queue.push(set);
        }
    }
}

impl Reconcile for State {
    const WHAT: &'static str = "daemonset";

    fn queue(&mut self) -> &mut WorkQueue {
        &mut self.queue
    }

    fn on_change(&mut self, source: usize, change: Change) {
        match (source, change) {
            (0, Change::Upserted(k) | Change::Deleted(k, _)) => self.queue.push(k),
            // A node came, went or changed: every DaemonSet may want it (or not) now.
            (1, _) => self.all_sets(),
            (_, c) => self.on_pod(c),
        }
    }

    async fn reconcile(&mut self, key: &str) -> Result<(), ApiError> {
        self.sync(key).await
    }
}

impl Actor for DaemonSetController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (caches, changes) = self.informers.subscribe_all(&[
            ("/apis/apps/v1/daemonsets", &[]),
            ("/api/v1/nodes", &[]),
            ("/api/v1/pods", &[]),
        ]);
        let state = State {
            client: self.client.clone(),
            sets: caches[0].clone(),
            nodes: caches[1].clone(),
            pods: caches[2].clone(),
            pending: HashMap::new(),
            queue: WorkQueue::default(),
        };
        ctx.spawn(actix::fut::wrap_future(run(state, caches, changes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_pods_go_where_selected_and_tolerated() {
        let node = |labels: Value, taints: Value| json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}});
        let template = json!({"spec": {"nodeSelector": {"role": "edge"}}});
        assert!(eligible(&template, &node(json!({"role": "edge"}), json!([]))));
        assert!(!eligible(&template, &node(json!({}), json!([]))));
        let hollow = json!([{"key": "keelson.dev/hollow", "value": "true", "effect": "NoSchedule"}]);
        assert!(!eligible(&json!({}), &node(json!({}), hollow.clone())));
        let tolerant = json!({"spec": {"tolerations": [{"key": "keelson.dev/hollow", "operator": "Exists"}]}});
        assert!(eligible(&tolerant, &node(json!({}), hollow)));
        // What Kubernetes lets daemons tolerate: a lost node keeps its daemon pod.
        let lost = json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
        assert!(eligible(&json!({}), &node(json!({}), lost)));
        let ds =
            json!({"metadata": {"name": "agent", "namespace": "kube-system", "uid": "u"}, "spec": {"template": {}}});
        let pod = pod_for(&ds, "n7", "h1");
        assert_eq!(node_of(&pod).as_deref(), Some("n7"));
        assert_eq!(pod["metadata"]["labels"][HASH_LABEL], "h1");
    }
}
