//! `/<server>/controllers/endpoints`: keeps, for every Service with a selector, the
//! Endpoints object and the EndpointSlices naming the pods behind it, as Kubernetes'
//! endpoints and endpointslice controllers do.
//!
//! A pod counts once it has an address and has not finished. Ready pods are ready
//! addresses; pods not ready are `notReadyAddresses` (and `ready: false` in a slice);
//! a pod being deleted leaves the ready set at once (Endpoints drop it, slices mark it
//! `terminating`), so proxies stop sending it new connections before its SIGTERM.
//! A named `targetPort` is resolved per pod from its containers' ports, so pods that
//! name a port differently are grouped by the ports they resolve to (one subset, and
//! one slice, per group).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use actix::AsyncContext;
use serde_json::{json, Value};

use super::queue::WorkQueue;
use super::run::{run, Reconcile};
use super::workload::{deleting, is_ready, name, namespace, owner_reference};
use super::SharedCache;
use crate::api::client::ignore_missing;
use crate::api::informer::Change;
use crate::api::{ApiClient, ApiError};
use crate::controllers::{ControllerContext, SharedInformers};
use crate::runtime::{Actor, Ctx};

/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";

pub struct EndpointsController {
    client: ApiClient,
    informers: Arc<SharedInformers>,
}

impl EndpointsController {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers }
    }
}

/// The key (`namespace/name`) of the Service slice `key` (`namespace/slice`) belongs to.
pub fn service_of_slice(key: &str, slice: &Value) -> Option<String> {
    let svc = slice["metadata"]["labels"][SERVICE_NAME].as_str()?;
    Some(format!("{}/{svc}", key.split('/').next().unwrap_or_default()))
}

/// Whether `slice` belongs to Service `name` in `ns`.
pub fn of_service(slice: &Value, ns: &str, name: &str) -> bool {
    slice["metadata"]["namespace"] == ns && slice["metadata"]["labels"][SERVICE_NAME] == name
}

/// Whether a slice's endpoint is offered as ready (an absent `ready` counts as true,
/// as Kubernetes reads it).
pub fn offered(endpoint: &Value) -> bool {
    endpoint["conditions"]["ready"] != false
}

/// Whether a Service's `spec.selector` (a plain map) selects `labels`; a Service
/// without one has its endpoints kept by someone else.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k.as_str()] == *v))
}

/// One port of a Service as it reaches one pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    name: String,
    port: i64,
    protocol: String,
}

/// The Service's ports resolved for `pod`; `None` if a named target port is not one of
/// the pod's (Kubernetes leaves such a pod out).
fn ports_for(svc: &Value, pod: &Value) -> Option<Vec<Port>> {
    let mut out = Vec::new();
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let protocol = p["protocol"].as_str().unwrap_or("TCP").to_string();
        let port = match &p["targetPort"] {
            Value::Number(n) => n.as_i64()?,
            Value::String(s) => match s.parse::<i64>() {
                Ok(n) => n,
                Err(_) => named_port(pod, s, &protocol)?,
            },
            _ => p["port"].as_i64()?,
        };
        out.push(Port { name: p["name"].as_str().unwrap_or_default().to_string(), port, protocol });
    }
    Some(out)
}

/// The container port of `pod` named `name` (with `protocol`).
fn named_port(pod: &Value, name: &str, protocol: &str) -> Option<i64> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == name && p["protocol"].as_str().unwrap_or("TCP") == protocol)
        .and_then(|p| p["containerPort"].as_i64())
}

/// A pod behind a Service, as both kinds of object name it.
struct Member<'a> {
    pod: &'a Value,
    ip: &'a str,
    ready: bool,
    terminating: bool,
}

impl Member<'_> {
    fn target_ref(&self) -> Value {
        json!({"kind": "Pod", "namespace": namespace(self.pod), "name": name(self.pod), "uid": self.pod["metadata"]["uid"]})
    }

    fn address(&self) -> Value {
        let mut a = json!({"ip": self.ip, "targetRef": self.target_ref()});
        if let Some(n) = self.pod["spec"]["nodeName"].as_str() {
            a["nodeName"] = n.into();
        }
        a
    }
}

/// The Service's pods grouped by the ports they resolve to (sorted, so the result is
/// the same whatever order the cache gives).
fn groups<'a>(svc: &Value, pods: &'a [Value]) -> BTreeMap<Vec<Port>, Vec<Member<'a>>> {
    let mut out: BTreeMap<Vec<Port>, Vec<Member<'a>>> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod["status"]["podIP"].as_str().filter(|ip| !ip.is_empty()) else { continue };
        if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(ports) = ports_for(svc, pod) else { continue };
        let terminating = deleting(pod);
        // `publishNotReadyAddresses`: every pod counts as ready (DNS for StatefulSets).
        let publish = svc["spec"]["publishNotReadyAddresses"] == true;
        let ready = (publish || is_ready(pod)) && !terminating;
        out.entry(ports).or_default().push(Member { pod, ip, ready, terminating });
    }
    for members in out.values_mut() {
        members.sort_by(|a, b| a.ip.cmp(b.ip).then(name(a.pod).cmp(name(b.pod))));
    }
    out
}

fn port_json(p: &Port, with_empty_name: bool) -> Value {
    let mut v = json!({"port": p.port, "protocol": p.protocol});
    if with_empty_name || !p.name.is_empty() {
        v["name"] = p.name.clone().into();
    }
    v
}

/// The Endpoints object for `svc`: terminating pods are left out, as Kubernetes does.
pub fn endpoints_for(svc: &Value, pods: &[Value]) -> Value {
    let mut subsets = Vec::new();
    for (ports, members) in groups(svc, pods) {
        let live: Vec<&Member> = members.iter().filter(|m| !m.terminating).collect();
        // A Service without ports lists addresses only if headless (Kubernetes' rule).
        if live.is_empty() || (ports.is_empty() && svc["spec"]["clusterIP"] != "None") {
            continue;
        }
        let mut subset = json!({});
        if !ports.is_empty() {
            subset["ports"] = ports.iter().map(|p| port_json(p, false)).collect::<Vec<_>>().into();
        }
        let ready: Vec<Value> = live.iter().filter(|m| m.ready).map(|m| m.address()).collect();
        let not_ready: Vec<Value> = live.iter().filter(|m| !m.ready).map(|m| m.address()).collect();
        if !ready.is_empty() {
            subset["addresses"] = ready.into();
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = not_ready.into();
        }
        subsets.push(subset);
    }
    let mut ep = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name(svc), "namespace": namespace(svc), "labels": svc["metadata"]["labels"].clone()}});
    if ep["metadata"]["labels"].is_null() {
        ep["metadata"].as_object_mut().unwrap().remove("labels");
    }
    if !subsets.is_empty() {
        ep["subsets"] = subsets.into();
    }
    ep
}

/// The EndpointSlices for `svc`, one per group of ports, named `<service>-<hash of the
/// ports>` (stable, so a sync rewrites the same slice); a Service with no pods gets one
/// empty slice, as Kubernetes gives it.
pub fn slices_for(svc: &Value, pods: &[Value]) -> Vec<Value> {
    let mut groups = groups(svc, pods);
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    groups
        .into_iter()
        .map(|(ports, members)| {
            let text: Vec<String> = ports.iter().map(|p| format!("{}/{}/{}", p.name, p.port, p.protocol)).collect();
            let hash = crate::hash::fnv1a(text.join(",").as_bytes());
            let endpoints: Vec<Value> = members
                .iter()
                .map(|m| {
                    let mut e = json!({"addresses": [m.ip],
                        "conditions": {"ready": m.ready, "serving": is_ready(m.pod), "terminating": m.terminating},
                        "targetRef": m.target_ref()});
                    if let Some(n) = m.pod["spec"]["nodeName"].as_str() {
                        e["nodeName"] = n.into();
                    }
                    e
                })
                .collect();
            let mut labels = svc["metadata"]["labels"].as_object().cloned().unwrap_or_default();
            labels.insert(SERVICE_NAME.into(), name(svc).into());
            labels.insert(MANAGED_BY.into(), MANAGER.into());
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{}-{:05x}", name(svc), hash & 0xfffff), "namespace": namespace(svc),
                             "labels": labels,
                             "ownerReferences": [owner_reference(svc, "v1", "Service")]},
                "addressType": "IPv4", "endpoints": endpoints,
                "ports": ports.iter().map(|p| port_json(p, true)).collect::<Vec<_>>()})
        })
        .collect()
}

/// Whether `current` already says what `wanted` does (the fields this controller owns).
fn same(current: &Value, wanted: &Value) -> bool {
    ["subsets", "endpoints", "ports", "addressType"].iter().all(|f| current[*f] == wanted[*f])
        && current["metadata"]["labels"] == wanted["metadata"]["labels"]
}

struct State {
    client: ApiClient,
    services: SharedCache,
    pods: SharedCache,
    endpoints: SharedCache,
    slices: SharedCache,
    queue: WorkQueue,
}

impl State {
    async fn put(&self, collection: &str, current: Option<&Value>, wanted: &Value) -> Result<(), ApiError> {
        match current {
            Some(c) if same(c, wanted) => Ok(()),
            Some(c) => {
                let mut next = wanted.clone();
                next["metadata"]["resourceVersion"] = c["metadata"]["resourceVersion"].clone();
                self.client.update(&format!("{collection}/{}", name(wanted)), &next).await.map(drop)
            }
            // A 409: the cache is behind; the failed key is tried again soon.
            None => self.client.create(collection, wanted).await.map(drop),
        }
    }

    async fn sync(&mut self, key: &str) -> Result<(), ApiError> {
        let (ns, svc_name) = key.split_once('/').unwrap_or(("default", key));
        let svc = self.services.read().unwrap().objects.get(key).cloned();
        let ep_path = format!("/api/v1/namespaces/{ns}/endpoints");
        let slice_path = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices");
        let existing: Vec<Value> = self
            .slices
            .read()
            .unwrap()
            .objects
            .values()
            .filter(|s| of_service(s, ns, svc_name) && s["metadata"]["labels"][MANAGED_BY] == MANAGER)
            .cloned()
            .collect();
        // ExternalName Services name a host elsewhere: no endpoints, selector or not.
        let selector = svc
            .as_ref()
            .filter(|s| s["spec"]["type"] != "ExternalName")
            .map(|s| &s["spec"]["selector"])
            .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()));
        let (Some(svc), Some(selector)) = (svc.as_ref(), selector) else {
            // Gone (or no longer selecting): what this controller wrote for it goes.
            if svc.is_none() && self.endpoints.read().unwrap().objects.contains_key(key) {
                ignore_missing(self.client.delete(&format!("{ep_path}/{svc_name}")).await)?;
            }
            for s in existing {
                ignore_missing(self.client.delete(&format!("{slice_path}/{}", name(&s))).await)?;
            }
            return Ok(());
        };
        let pods: Vec<Value> = self
            .pods
            .read()
            .unwrap()
            .objects
            .values()
            .filter(|p| namespace(p) == ns && selects(selector, &p["metadata"]["labels"]))
            .cloned()
            .collect();
        // Slices first: proxies read them, and a pod leaving the ready set should reach
        // them as soon as it can.
        let wanted = slices_for(svc, &pods);
        let names: HashSet<&str> = wanted.iter().map(name).collect();
        for w in &wanted {
            let current = existing.iter().find(|s| name(s) == name(w));
            self.put(&slice_path, current, w).await?;
        }
        for s in existing.iter().filter(|s| !names.contains(name(s))) {
            ignore_missing(self.client.delete(&format!("{slice_path}/{}", name(s))).await)?;
        }
        let current = self.endpoints.read().unwrap().objects.get(key).cloned();
        self.put(&ep_path, current.as_ref(), &endpoints_for(svc, &pods)).await
    }

    /// Every Service of `ns` (a pod there changed: its labels may have, too).
    fn services_of(&mut self, ns: &str) {
        let keys: Vec<String> =
            self.services.read().unwrap().objects.keys().filter(|k| k.split('/').next() == Some(ns)).cloned().collect();
        for k in keys {
            self.queue.push(k);
        }
    }
}

/// `namespace/name` → `namespace`.
fn ns_of(key: &str) -> &str {
    key.split('/').next().unwrap_or_default()
}

impl Reconcile for State {
    const WHAT: &'static str = "endpoints";

    fn queue(&mut self) -> &mut WorkQueue {
        &mut self.queue
    }

    fn on_change(&mut self, source: usize, change: Change) {
        match (source, change) {
            (0, Change::Upserted(k) | Change::Deleted(k, _)) => self.queue.push(k),
            (1, Change::Upserted(k) | Change::Deleted(k, _)) => self.services_of(ns_of(&k)),
            (2, Change::Upserted(k) | Change::Deleted(k, _)) => self.queue.push(k),
            (_, Change::Deleted(k, slice)) => {
                if let Some(svc) = service_of_slice(&k, &slice) {
                    self.queue.push(svc);
                }
            }
            (_, Change::Upserted(k)) => {
                let svc = self.slices.read().unwrap().objects.get(&k).and_then(|s| service_of_slice(&k, s));
                if let Some(svc) = svc {
                    self.queue.push(svc);
                }
            }
        }
    }

    async fn reconcile(&mut self, key: &str) -> Result<(), ApiError> {
        self.sync(key).await
    }
}

impl Actor for EndpointsController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (caches, changes) = self.informers.subscribe_all(&[
            ("/api/v1/services", &[]),
            ("/api/v1/pods", &[]),
            ("/api/v1/endpoints", &[]),
            ("/apis/discovery.k8s.io/v1/endpointslices", &[]),
        ]);
        let state = State {
            client: self.client.clone(),
            services: caches[0].clone(),
            pods: caches[1].clone(),
            endpoints: caches[2].clone(),
            slices: caches[3].clone(),
            queue: WorkQueue::default(),
        };
        ctx.spawn(actix::fut::wrap_future(run(state, caches, changes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "labels": {"app": "web"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": port_name, "containerPort": port}]}]},
               "status": {"phase": "Running", "podIP": ip,
                          "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn service() -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}})
    }

    #[test]
    fn ready_not_ready_and_terminating_pods_are_told_apart() {
        let mut going = pod("c", "10.0.0.3", true, "web", 8000);
        going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        let pods = vec![pod("b", "10.0.0.2", false, "web", 8000), pod("a", "10.0.0.1", true, "web", 8000), going];
        let ep = endpoints_for(&service(), &pods);
        let subset = &ep["subsets"][0];
        assert_eq!(subset["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(subset["addresses"].as_array().unwrap().len(), 1, "the terminating pod is out at once");
        assert_eq!(subset["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert_eq!(subset["ports"][0], json!({"name": "http", "port": 8000, "protocol": "TCP"}));
        let slices = slices_for(&service(), &pods);
        assert_eq!(slices.len(), 1);
        let eps = slices[0]["endpoints"].as_array().unwrap();
        let conditions: Vec<(&str, bool, bool)> = eps
            .iter()
            .map(|e| {
                let c = &e["conditions"];
                (
                    e["addresses"][0].as_str().unwrap(),
                    c["ready"].as_bool().unwrap(),
                    c["terminating"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(conditions, vec![("10.0.0.1", true, false), ("10.0.0.2", false, false), ("10.0.0.3", false, true)]);
        assert_eq!(slices[0]["metadata"]["labels"][SERVICE_NAME], "web");
        assert_eq!(slices[0]["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
    }

    #[test]
    fn named_target_ports_are_resolved_per_pod() {
        let pods = vec![
            pod("a", "10.0.0.1", true, "web", 8000),
            pod("b", "10.0.0.2", true, "web", 9000),
            pod("c", "10.0.0.3", true, "other", 7000),
        ];
        let ep = endpoints_for(&service(), &pods);
        let subsets = ep["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 2, "one subset per resolved port; the pod without the port is left out");
        let ports: Vec<i64> = subsets.iter().map(|s| s["ports"][0]["port"].as_i64().unwrap()).collect();
        assert_eq!(ports, vec![8000, 9000]);
        let slices = slices_for(&service(), &pods);
        assert_eq!(slices.len(), 2);
        assert_ne!(slices[0]["metadata"]["name"], slices[1]["metadata"]["name"]);
        assert_eq!(slices_for(&service(), &pods)[0]["metadata"]["name"], slices[0]["metadata"]["name"], "stable names");
    }

    #[test]
    fn services_without_pods_or_selector() {
        let empty = slices_for(&service(), &[]);
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0]["endpoints"], json!([]));
        assert!(endpoints_for(&service(), &[])["subsets"].is_null());
        assert!(!selects(&json!({}), &json!({"app": "web"})));
        assert!(!selects(&Value::Null, &json!({"app": "web"})));
        assert!(selects(&json!({"app": "web"}), &json!({"app": "web", "v": "1"})));
    }
}
