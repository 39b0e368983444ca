//! `/<agent>/kubelet` of a hollow agent: N simulated nodes, as Kubernetes' kubemark and
//! kwok have, for scale tests and benchmarks. Each node registers (labelled and
//! tainted `keelson.dev/hollow=true`, so only pods that tolerate it land there),
//! renews its heartbeat Lease, and reports the pods bound to it Running without
//! running anything; a pod annotated `keelson.dev/hollow-phase: Succeeded` (or
//! `Failed`) ends so at once, which is how tests drive Jobs. A pod being deleted is
//! let go at once (the delete with grace 0 a kubelet makes once its containers stop).
//!
//! One actor stands for all of an agent's hollow nodes: one pod watch and one node
//! watch feed it, rather than one per node, so 5,000 nodes cost the API two watches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::AsyncContext;
use futures_util::StreamExt;
use keelson_config::HeartbeatConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::node::{is_ready, ready_condition, register, renew};
use crate::api::informer::{cache_key, Cached, Change, Informer};
use crate::api::{rfc3339_now, ApiClient, ApiError};
use crate::controllers::queue::WorkQueue;
use crate::runtime::{Actor, ChildContext, Ctx};

/// The label and taint every hollow node carries.
pub const HOLLOW_KEY: &str = "keelson.dev/hollow";
/// The annotation that tells a hollow node how a pod ends (`Succeeded`, `Failed`).
pub const PHASE_ANNOTATION: &str = "keelson.dev/hollow-phase";

/// What a hollow agent keeps of a pod. It caches every bound pod (100,000 in the
/// scheduling bench, where one kubelet would hold its own few dozen), so not the whole
/// object: a pod as a `Value` is about 15 KB in 150 allocations, this a tenth of that,
/// and reading it skips the rest of the JSON.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
struct HollowPod {
    #[serde(deserialize_with = "or_default")]
    metadata: PodMeta,
    #[serde(deserialize_with = "or_default")]
    spec: PodSpec,
    #[serde(deserialize_with = "or_default")]
    status: PodState,
}

/// A part that may be `null`, read as empty.
fn or_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodMeta {
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    deletion_timestamp: Option<String>,
    annotations: Option<Annotations>,
}

/// The one annotation a hollow node reads (serde names it by the literal of
/// `PHASE_ANNOTATION`; the tests below read it through that constant).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
struct Annotations {
    #[serde(rename = "keelson.dev/hollow-phase")]
    phase: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
    containers: Option<Vec<Container>>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
struct Container {
    name: Option<String>,
    image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
struct PodState {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    conditions: Option<Vec<Condition>>,
}

/// A pod condition, as much of it as a kubelet carries over (the scheduler's).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_transition_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl HollowPod {
    fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

impl Cached for HollowPod {
    type Wire = Self;
    fn from_wire(wire: Self) -> Self {
        wire
    }
    fn key(&self) -> String {
        cache_key(self.metadata.namespace.as_deref(), &self.metadata.name)
    }
    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }
}

/// How many writes a hollow agent keeps in flight.
const IN_FLIGHT: usize = 64;

#[derive(Debug, Clone)]
pub struct HollowConfig {
    /// How many nodes; they are named `<agent>.<i>`.
    pub nodes: u32,
    pub heartbeat: HeartbeatConfig,
    /// Each node's capacity (`cpu`, `memory`, `pods`).
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
}

impl HollowConfig {
    pub fn new(nodes: u32, heartbeat: HeartbeatConfig) -> Self {
        Self { nodes, heartbeat, cpu: "4".into(), memory: "16Gi".into(), pods: 110 }
    }
}

pub struct HollowKubelet {
    agent: String,
    client: ApiClient,
    cfg: Arc<HollowConfig>,
}

impl HollowKubelet {
    pub fn new(cx: &ChildContext, client: ApiClient, cfg: HollowConfig) -> Self {
        Self { agent: cx.path.member().to_string(), client, cfg: Arc::new(cfg) }
    }
}

fn node_names(agent: &str, n: u32) -> Vec<String> {
    (0..n).map(|i| format!("{agent}.{i}")).collect()
}

/// A stable made-up address for a node (`10.250.x.y`) or a pod (`10.x.y.z`).
fn address(seed: &str, prefix: &[u8]) -> String {
    let h = crate::hash::fnv1a(seed.as_bytes());
    let bytes = h.to_be_bytes();
    let mut parts: Vec<u8> = prefix.to_vec();
    parts.extend(bytes.iter().rev().take(4 - prefix.len()).map(|b| b.max(&1)));
    parts.iter().map(u8::to_string).collect::<Vec<_>>().join(".")
}

fn node_object(name: &str, cfg: &HollowConfig) -> Value {
    let now = rfc3339_now();
    let capacity = json!({"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods.to_string()});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            HOLLOW_KEY: "true"}},
        "spec": {"taints": [{"key": HOLLOW_KEY, "value": "true", "effect": "NoSchedule"}]},
        "status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [ready_condition(&now, "kubelet is posting ready status (hollow)")],
            "addresses": [{"type": "InternalIP", "address": address(name, &[10, 250])},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": format!("v1.{}.0-keelson", crate::api::MINOR),
                         "kubeProxyVersion": "", "containerRuntimeVersion": "hollow://1",
                         "osImage": "keelson hollow node", "operatingSystem": "linux", "architecture": "amd64",
                         "kernelVersion": "", "machineID": name, "systemUUID": name, "bootID": name},
        }
    })
}

/// Registers `node` (or finds it registered) and its Lease.
async fn register_hollow(client: &ApiClient, node: &str, cfg: &HollowConfig) -> Result<(), ApiError> {
    register(client, &node_object(node, cfg)).await?;
    renew(client, node, cfg.heartbeat).await
}

/// The status a hollow node reports for `pod`: Running, or how its annotation says it ends.
fn pod_status(pod: &HollowPod, node_ip: &str) -> Value {
    let now = rfc3339_now();
    let ends = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.phase.as_deref())
        .filter(|p| ["Succeeded", "Failed"].contains(p));
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let statuses: Vec<Value> = pod
        .spec
        .containers
        .iter()
        .flatten()
        .map(|c| {
            let state = match ends {
                None => json!({"running": {"startedAt": now}}),
                Some(phase) => json!({"terminated": {
                    "exitCode": i32::from(phase == "Failed"), "reason": if phase == "Failed" { "Error" } else { "Completed" },
                    "startedAt": now, "finishedAt": now}}),
            };
            let name = c.name.as_deref().unwrap_or_default();
            json!({"name": name, "image": c.image, "imageID": "", "ready": ends.is_none(),
                   "started": ends.is_none(), "restartCount": 0, "state": state,
                   "containerID": format!("hollow://{uid}-{name}")})
        })
        .collect();
    let ready = if ends.is_none() { "True" } else { "False" };
    let condition = |t: &str, s: &str| json!({"type": t, "status": s, "lastTransitionTime": now});
    // PodScheduled is the scheduler's (its time is the binding's), as a kubelet keeps it.
    let scheduled = pod
        .status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.kind == "PodScheduled" && c.status == "True")
        .map_or_else(|| condition("PodScheduled", "True"), |c| json!(c));
    let key = format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), uid);
    json!({"status": {
        "phase": ends.unwrap_or("Running"),
        "conditions": [scheduled, condition("Initialized", "True"),
                       condition("ContainersReady", ready), condition("Ready", ready)],
        "hostIP": node_ip, "podIP": address(&key, &[10]), "podIPs": [{"ip": address(&key, &[10])}],
        "startTime": now, "containerStatuses": statuses,
    }})
}

/// What a hollow node does about `pod` now, if anything.
enum PodWork {
    Report(Value),
    Release,
}

fn work_for(pod: &HollowPod, mine: &HashSet<String>) -> Option<PodWork> {
    let node = pod.spec.node_name.as_deref()?;
    if !mine.contains(node) {
        return None;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(PodWork::Release);
    }
    match pod.status.phase.as_deref() {
        Some("Succeeded" | "Failed") => None,
        Some("Running") if pod.status.pod_ip.is_some() => None,
        _ => Some(PodWork::Report(pod_status(pod, &address(node, &[10, 250])))),
    }
}

impl Actor for HollowKubelet {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let names = node_names(&self.agent, self.cfg.nodes);
        let mine: Arc<HashSet<String>> = Arc::new(names.iter().cloned().collect());
        // Hollow pods' statuses and releases, node heartbeats: no answer is read.
        let (client, cfg) = (self.client.clone().quiet(), self.cfg.clone());

        // Register, then heartbeat every node; a node the node lifecycle controller marked
        // not ready is reported ready again once its heartbeat is back.
        let nodes = Informer::new(client.clone(), "/api/v1/nodes", &[("labelSelector", &format!("{HOLLOW_KEY}=true"))]);
        let node_cache = nodes.cache();
        let (node_tx, mut node_changes) = tokio::sync::mpsc::channel(1024);
        ctx.spawn(actix::fut::wrap_future(nodes.run(node_tx)));
        ctx.spawn(actix::fut::wrap_future(async move { while node_changes.recv().await.is_some() {} }));
        let (c, n, cf) = (client.clone(), names.clone(), cfg.clone());
        ctx.spawn(actix::fut::wrap_future(async move {
            let mut pending = n.clone();
            while !pending.is_empty() {
                let failed: Vec<String> = futures_util::stream::iter(pending)
                    .map(|node| {
                        let (c, cf) = (c.clone(), cf.clone());
                        async move { register_hollow(&c, &node, &cf).await.err().map(|e| (node, e)) }
                    })
                    .buffer_unordered(IN_FLIGHT)
                    .filter_map(|r| async move { r })
                    .map(|(node, e)| {
                        tracing::debug!(node = %node, error = %e, "cannot register yet");
                        node
                    })
                    .collect()
                    .await;
                pending = failed;
                if !pending.is_empty() {
                    actix_rt::time::sleep(Duration::from_millis(500)).await;
                }
            }
            tracing::info!(nodes = n.len(), "hollow nodes registered");
            loop {
                actix_rt::time::sleep(cf.heartbeat.renew).await;
                let not_ready: HashSet<String> = {
                    let cache = node_cache.read().unwrap();
                    cache
                        .objects
                        .values()
                        .filter(|node| !is_ready(node))
                        .filter_map(|node| node["metadata"]["name"].as_str().map(str::to_string))
                        .collect()
                };
                futures_util::stream::iter(n.iter())
                    .for_each_concurrent(IN_FLIGHT, |node| {
                        let (c, hb, stale) = (c.clone(), cf.heartbeat, not_ready.contains(node));
                        async move {
                            if let Err(e) = renew(&c, node, hb).await {
                                tracing::debug!(node = %node, error = %e, "heartbeat failed");
                            } else if stale {
                                let ready = ready_condition(&rfc3339_now(), "kubelet is posting ready status (hollow)");
                                let patch = json!({"status": {"conditions": [ready]}});
                                let _next_beat_retries =
                                    c.merge_patch(&format!("/api/v1/nodes/{node}/status"), &patch).await;
                            }
                        }
                    })
                    .await;
            }
        }));

        // Pods bound to these nodes: reported Running (or ended), or let go when deleted.
        // The informer's changes go into a queue that holds each pod once and never makes
        // the informer wait: status writes cannot keep up with a burst of bindings, and an
        // informer waiting on its reader stops reading its watch, which then falls out of
        // the store's event window and lists every pod again (100 MB at 100,000 pods).
        let pods = Informer::<HollowPod>::of(client.clone(), "/api/v1/pods", &[("fieldSelector", "spec.nodeName!=")]);
        let pod_cache = pods.cache();
        let (tx, mut changes) = tokio::sync::mpsc::channel(4096);
        ctx.spawn(actix::fut::wrap_future(pods.run(tx)));
        let work = Pending::default();
        let w = work.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            while let Some(change) = changes.recv().await {
                if let Change::Upserted(key) = change {
                    w.push(key);
                }
            }
        }));
        for _ in 0..IN_FLIGHT {
            let (client, cache, mine, work) = (client.clone(), pod_cache.clone(), mine.clone(), work.clone());
            ctx.spawn(actix::fut::wrap_future(async move {
                loop {
                    let key = work.next().await;
                    // Level-triggered: what the pod needs is worked out from the cache, in
                    // place (a copy of each pod was a fifteenth of this agent's time).
                    let found = cache.read().unwrap().objects.get(&key).and_then(|pod| {
                        let path = format!("/api/v1/namespaces/{}/pods/{}", pod.namespace(), pod.metadata.name);
                        Some((work_for(pod, &mine)?, path))
                    });
                    let Some((todo, path)) = found else { continue };
                    let done = match todo {
                        PodWork::Report(status) => {
                            client.merge_patch(&format!("{path}/status"), &status).await.map(drop)
                        }
                        PodWork::Release => client.delete_with_grace(&path, 0).await.map(drop),
                    };
                    match done {
                        Ok(()) => {}
                        Err(e) if e.code() == Some(404) => {}
                        // An API server going away mid-request, say: again in 1 s.
                        Err(e) => {
                            tracing::debug!(pod = %key, error = %e, "hollow pod update failed; again in 1 s");
                            let again = work.clone();
                            actix_rt::spawn(async move {
                                actix_rt::time::sleep(Duration::from_secs(1)).await;
                                again.push(key);
                            });
                        }
                    }
                }
            }));
        }
    }
}

/// Pods with work to do, each queued once, for `IN_FLIGHT` workers to take.
#[derive(Clone, Default)]
struct Pending {
    queue: Arc<Mutex<WorkQueue>>,
    ready: Arc<tokio::sync::Notify>,
}

impl Pending {
    fn push(&self, key: String) {
        self.queue.lock().unwrap().push(key);
        self.ready.notify_one();
    }

    /// The next key; waits for one. A key pushed while no worker waits leaves a permit,
    /// and workers look at the queue before they wait, so none is left behind.
    async fn next(&self) -> String {
        loop {
            if let Some(key) = self.queue.lock().unwrap().pop() {
                return key;
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, annotations: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "web", "uid": "u1", "annotations": annotations},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
               "status": {"phase": "Pending"}})
    }

    /// What the agent's cache makes of `pod`.
    fn read(pod: &Value) -> HollowPod {
        serde_json::from_value(pod.clone()).unwrap()
    }

    #[tokio::test]
    async fn pending_pods_are_taken_once_each_and_wake_a_waiting_worker() {
        let work = Pending::default();
        let waiting = tokio::spawn({
            let work = work.clone();
            async move { work.next().await }
        });
        tokio::task::yield_now().await;
        work.push("web/a".into());
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").unwrap();
        assert_eq!(got, "web/a");
        // A pod changed twice before a worker got to it is worked on once.
        work.push("web/b".into());
        work.push("web/b".into());
        work.push("web/c".into());
        assert_eq!(work.next().await, "web/b");
        assert_eq!(work.next().await, "web/c");
        assert!(tokio::time::timeout(Duration::from_millis(50), work.next()).await.is_err(), "nothing left");
    }

    #[test]
    fn hollow_nodes_report_their_pods_and_no_others() {
        let mine: HashSet<String> = node_names("hollow", 2).into_iter().collect();
        assert!(mine.contains("hollow.1"));
        assert!(work_for(&read(&pod("other.0", json!({}))), &mine).is_none());
        let Some(PodWork::Report(s)) = work_for(&read(&pod("hollow.0", json!({}))), &mine) else { panic!("reported") };
        assert_eq!(s["status"]["phase"], "Running");
        assert_eq!(s["status"]["containerStatuses"][0]["ready"], true);
        assert!(s["status"]["podIP"].as_str().unwrap().starts_with("10."));
        let ended = pod("hollow.0", json!({PHASE_ANNOTATION: "Failed"}));
        let Some(PodWork::Report(s)) = work_for(&read(&ended), &mine) else { panic!("reported") };
        assert_eq!(s["status"]["phase"], "Failed");
        assert_eq!(s["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 1);
        let mut running = pod("hollow.0", json!({}));
        running["status"] = s["status"].clone();
        running["status"]["phase"] = "Running".into();
        assert!(work_for(&read(&running), &mine).is_none(), "reported once");
        running["metadata"]["deletionTimestamp"] = "2026-11-29T00:00:00Z".into();
        assert!(matches!(work_for(&read(&running), &mine), Some(PodWork::Release)));
    }

    #[test]
    fn the_binding_time_stays_the_scheduler_s() {
        let mine: HashSet<String> = node_names("hollow", 1).into_iter().collect();
        let mut bound = pod("hollow.0", json!({}));
        bound["status"]["conditions"] =
            json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-29T00:00:00Z"}]);
        let Some(PodWork::Report(s)) = work_for(&read(&bound), &mine) else { panic!("reported") };
        let scheduled = s["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "PodScheduled");
        assert_eq!(scheduled.unwrap()["lastTransitionTime"], "2026-11-29T00:00:00Z");
    }

    #[test]
    fn the_cache_reads_what_it_needs_of_any_pod() {
        let full = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "web", "uid": "u1", "resourceVersion": "42",
                         "labels": {"app": "x"}, "annotations": null,
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"nodeName": "hollow.0", "containers": [{"name": "c", "image": null, "ports": []}],
                     "tolerations": [{"operator": "Exists"}]},
            "status": null});
        let p = read(&full);
        assert_eq!((p.key(), p.resource_version()), ("web/p".to_string(), Some("42")));
        assert_eq!(p.spec.node_name.as_deref(), Some("hollow.0"));
        assert_eq!(p.status, PodState::default());
        let bookmark = read(&json!({"kind": "Pod", "metadata": {"resourceVersion": "43"}}));
        assert_eq!(bookmark.resource_version(), Some("43"));
        let mine: HashSet<String> = node_names("hollow", 1).into_iter().collect();
        let Some(PodWork::Report(s)) = work_for(&p, &mine) else { panic!("reported") };
        assert_eq!(s["status"]["containerStatuses"][0]["name"], "c");
    }

    #[test]
    fn hollow_nodes_are_labelled_and_tainted() {
        let n = node_object("hollow.3", &HollowConfig::new(1, HeartbeatConfig::default()));
        assert_eq!(n["metadata"]["labels"][HOLLOW_KEY], "true");
        assert_eq!(n["spec"]["taints"][0]["effect"], "NoSchedule");
        assert_eq!(n["status"]["allocatable"]["pods"], "110");
        let ip = n["status"]["addresses"][0]["address"].as_str().unwrap();
        assert!(ip.starts_with("10.250.") && ip.split('.').count() == 4);
    }
}
