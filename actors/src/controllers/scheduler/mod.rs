//! `/<server>/controllers/scheduler`: puts unscheduled pods on nodes.
//!
//! Two informers (nodes; all pods) keep the cluster view (`fit.rs`) current. Pods
//! without a node and for this scheduler (`schedulerName` unset or
//! `default-scheduler`) wait in a queue; each is decided in turn against the view,
//! assumed onto its node at once (so the next decision sees it), and bound through
//! the binding subresource with many bindings in flight at a time — which the store
//! commits together, so under load binding goes in batches. A binding that fails
//! releases the assumption and the pod is tried again. A pod that fits nowhere gets
//! the PodScheduled=False condition and a `FailedScheduling` event saying why, and is
//! tried again whenever a node changes or a placed pod goes (and every 60 s; Kubernetes: at most 5 min).

pub mod fit;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::AsyncContext;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::api::informer::Change;
use crate::api::{rfc3339_now, ApiClient, ApiError, EventRecorder, EventType};
use crate::controllers::{ControllerContext, SharedInformers};
use crate::runtime::{Actor, Ctx};
use fit::{unschedulable_message, Cluster, PodInfo};

/// Bindings written at once.
const IN_FLIGHT: usize = 1024;
/// How often pods that fit nowhere are tried again even if nothing seemed to change.
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(60);

pub struct Scheduler {
    client: ApiClient,
    informers: Arc<SharedInformers>,
}

impl Scheduler {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers }
    }
}

/// How a binding ended.
struct Bound {
    key: String,
    result: Result<(), ApiError>,
    /// How long the binding's write took.
    took: Duration,
}

/// What the scheduler did lately, logged every `REPORT` while it has work: where pods
/// wait (queued for a decision, binding, or seen late from the watch).
#[derive(Default)]
struct Stats {
    decided: u64,
    bound: u64,
    failed: u64,
    bind_time: Duration,
    bind_max: Duration,
    /// Pods first queued, and the whole seconds from their creation until then.
    seen: u64,
    seen_after: u64,
}

/// The longest the loop decides before it lets the rest of its thread run.
const SLICE: Duration = Duration::from_millis(5);

/// How often `Stats` are logged (only when something happened).
const REPORT: Duration = Duration::from_secs(5);

/// Whether this scheduler should place `pod` now.
fn wants_placing(pod: &Value) -> bool {
    let name = pod["spec"]["schedulerName"].as_str().unwrap_or("default-scheduler");
    pod["spec"]["nodeName"].as_str().unwrap_or_default().is_empty()
        && name == "default-scheduler"
        && !pod["metadata"]["deletionTimestamp"].is_string()
        && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// The namespace and name of the pod at cache key `key` (`namespace/name`).
fn namespace_and_name(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// The API path of the pod at cache key `key`.
fn pod_path(key: &str) -> String {
    let (namespace, name) = namespace_and_name(key);
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

struct Queue {
    cluster: Cluster,
    active: VecDeque<String>,
    queued: HashSet<String>,
    unschedulable: HashSet<String>,
    /// Bindings written but not yet seen by the informer: pod → node.
    assumed: HashMap<String, String>,
    stats: Stats,
}

impl Queue {
    fn push(&mut self, key: String) {
        if self.queued.insert(key.clone()) {
            self.active.push_back(key);
        }
    }

    fn retry_unschedulable(&mut self) {
        for key in std::mem::take(&mut self.unschedulable) {
            self.push(key);
        }
    }

    fn on_node(&mut self, change: Change, nodes: &BTreeMap<String, Value>) {
        match change {
            Change::Upserted(name) => {
                if let Some(n) = nodes.get(&name) {
                    self.cluster.set_node(n);
                }
            }
            Change::Deleted(name, _) => self.cluster.remove_node(&name),
        }
        self.retry_unschedulable();
    }

    /// A binding that failed releases its node; the pod is tried again unless it is
    /// gone or was bound meanwhile (the informer then says what it is now).
    fn on_bound(&mut self, b: Bound) {
        self.stats.bind_time += b.took;
        self.stats.bind_max = self.stats.bind_max.max(b.took);
        let Err(e) = b.result else {
            self.stats.bound += 1;
            return;
        };
        self.stats.failed += 1;
        self.assumed.remove(&b.key);
        self.cluster.unplace(&b.key);
        if !matches!(e.code(), Some(404 | 409)) {
            tracing::debug!(pod = %b.key, error = %e, "binding failed; trying again");
            self.push(b.key);
        }
    }

    fn on_pod(&mut self, change: Change, pods: &BTreeMap<String, Value>) {
        match change {
            Change::Upserted(key) => {
                let Some(pod) = pods.get(&key) else { return };
                let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
                let terminal = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
                if !node.is_empty() {
                    self.assumed.remove(&key);
                    self.unschedulable.remove(&key);
                    if terminal {
                        self.cluster.unplace(&key);
                        self.retry_unschedulable();
                    } else {
                        self.cluster.place(PodInfo::from(&key, pod), node);
                    }
                } else if wants_placing(pod) && !self.assumed.contains_key(&key) && !self.unschedulable.contains(&key) {
                    if !self.queued.contains(&key) {
                        let created = pod["metadata"]["creationTimestamp"].as_str().and_then(crate::api::parse_time);
                        self.stats.seen += 1;
                        self.stats.seen_after += created.map_or(0, |c| (crate::api::unix_now() - c).max(0.0) as u64);
                    }
                    self.push(key);
                }
            }
            Change::Deleted(key, _) => {
                self.assumed.remove(&key);
                self.unschedulable.remove(&key);
                if self.cluster.placed.contains_key(&key) {
                    self.cluster.unplace(&key);
                    self.retry_unschedulable();
                }
            }
        }
    }
}

impl Actor for Scheduler {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (node_cache, mut nodes_rx) = self.informers.subscribe("/api/v1/nodes", &[]);
        let (pod_cache, mut pods_rx) = self.informers.subscribe("/api/v1/pods", &[]);
        // Bindings and Unschedulable statuses: their answers are not read.
        let client = self.client.clone().quiet();
        let recorder = EventRecorder::new(client.clone(), "default-scheduler", "");
        ctx.spawn(actix::fut::wrap_future(async move {
            let mut q = Queue {
                cluster: Cluster::default(),
                active: VecDeque::new(),
                queued: HashSet::new(),
                unschedulable: HashSet::new(),
                assumed: HashMap::new(),
                stats: Stats::default(),
            };
            let mut reported = tokio::time::Instant::now();
            let (bound_tx, mut bound_rx) = mpsc::unbounded_channel::<Bound>();
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            let mut retry = tokio::time::interval(RETRY_UNSCHEDULABLE);
            let mut slice = tokio::time::Instant::now();
            loop {
                // A long queue must not hold this member's thread: its store replica's
                // raft messages, its API and the other controllers run on it too.
                if slice.elapsed() >= SLICE {
                    tokio::task::yield_now().await;
                    slice = tokio::time::Instant::now();
                }
                if reported.elapsed() >= REPORT {
                    reported = tokio::time::Instant::now();
                    let s = std::mem::take(&mut q.stats);
                    if s.decided + s.bound + s.failed + s.seen > 0 {
                        let done = (s.bound + s.failed).max(1) as u32;
                        tracing::info!(
                            decided = s.decided,
                            bound = s.bound,
                            failed = s.failed,
                            queued = q.active.len(),
                            binding = IN_FLIGHT - slots.available_permits(),
                            bind_ms_avg = (s.bind_time / done).as_millis() as u64,
                            bind_ms_max = s.bind_max.as_millis() as u64,
                            seen_s_after_creation_avg = s.seen_after / s.seen.max(1),
                            "scheduler: the last {} s",
                            REPORT.as_secs()
                        );
                    }
                }
                // Take in everything that changed, then decide as many pods as are queued.
                while let Ok(c) = nodes_rx.try_recv() {
                    let nodes = node_cache.read().unwrap();
                    q.on_node(c, &nodes.objects);
                }
                while let Ok(c) = pods_rx.try_recv() {
                    let pods = pod_cache.read().unwrap();
                    q.on_pod(c, &pods.objects);
                }
                while let Ok(b) = bound_rx.try_recv() {
                    q.on_bound(b);
                }
                if let Some(key) = q.active.pop_front() {
                    q.queued.remove(&key);
                    // Read under the cache's lock; the pod itself is copied only to say
                    // why it fits nowhere.
                    let info = match pod_cache.read().unwrap().objects.get(&key) {
                        Some(pod) if wants_placing(pod) && !q.assumed.contains_key(&key) => PodInfo::from(&key, pod),
                        _ => continue,
                    };
                    match q.cluster.choose(&info) {
                        Ok(node) => {
                            q.stats.decided += 1;
                            q.cluster.place(info, &node);
                            q.assumed.insert(key.clone(), node.clone());
                            let permit = slots.clone().acquire_owned().await.expect("never closed");
                            let (client, tx) = (client.clone(), bound_tx.clone());
                            actix_rt::spawn(async move {
                                let began = tokio::time::Instant::now();
                                let result = bind(&client, &key, &node).await;
                                drop(permit);
                                let _scheduler_gone = tx.send(Bound { key, result, took: began.elapsed() });
                            });
                        }
                        Err(reasons) => {
                            let message = unschedulable_message(q.cluster.nodes.len(), &reasons);
                            let Some(pod) = pod_cache.read().unwrap().objects.get(&key).cloned() else { continue };
                            q.unschedulable.insert(key.clone());
                            let (client, recorder) = (client.clone(), recorder.clone());
                            actix_rt::spawn(
                                async move { unschedulable(&client, &recorder, &key, &pod, &message).await },
                            );
                        }
                    }
                    continue;
                }
                slice = tokio::time::Instant::now();
                tokio::select! {
                    c = nodes_rx.recv() => match c {
                        Some(c) => { let nodes = node_cache.read().unwrap(); q.on_node(c, &nodes.objects); }
                        None => return,
                    },
                    c = pods_rx.recv() => match c {
                        Some(c) => { let pods = pod_cache.read().unwrap(); q.on_pod(c, &pods.objects); }
                        None => return,
                    },
                    Some(b) = bound_rx.recv() => q.on_bound(b),
                    _ = retry.tick() => q.retry_unschedulable(),
                }
            }
        }));
    }
}

/// Binds the pod at cache key `key` (`namespace/name`) to `node`.
async fn bind(client: &ApiClient, key: &str, node: &str) -> Result<(), ApiError> {
    let (namespace, name) = namespace_and_name(key);
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    client.create(&format!("{}/binding", pod_path(key)), &binding).await.map(drop)
}

/// Says why `pod` waits: its PodScheduled condition and a FailedScheduling event.
async fn unschedulable(client: &ApiClient, recorder: &EventRecorder, key: &str, pod: &Value, message: &str) {
    let already = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "PodScheduled" && c["message"] == message);
    if !already {
        let condition = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                               "message": message, "lastTransitionTime": rfc3339_now(), "lastProbeTime": null});
        let patch = json!({"status": {"conditions": [condition]}});
        if let Err(e) = client.merge_patch(&format!("{}/status", pod_path(key)), &patch).await {
            tracing::debug!(error = %e, "cannot mark a pod unschedulable");
        }
    }
    if let Err(e) = recorder.record(pod, EventType::Warning, "FailedScheduling", message).await {
        tracing::debug!(error = %e, "cannot record FailedScheduling");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unbound_live_pods_of_this_scheduler_are_placed() {
        let pod = |spec: Value, meta: Value| json!({"metadata": meta, "spec": spec, "status": {"phase": "Pending"}});
        assert!(wants_placing(&pod(json!({}), json!({}))));
        assert!(!wants_placing(&pod(json!({"nodeName": "n1"}), json!({}))));
        assert!(!wants_placing(&pod(json!({"schedulerName": "other"}), json!({}))));
        assert!(wants_placing(&pod(json!({"schedulerName": "default-scheduler"}), json!({}))));
        assert!(!wants_placing(&pod(json!({}), json!({"deletionTimestamp": "2026-11-29T00:00:00Z"}))));
    }
}
