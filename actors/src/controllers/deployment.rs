//! `/<server>/controllers/deployment`: rolls Deployments out through ReplicaSets.
//!
//! Each pod template gets a ReplicaSet named after its hash (`<deployment>-<hash>`,
//! labelled `pod-template-hash`); the one whose template is the Deployment's is the
//! new one, the others old. A RollingUpdate scales the new one up while all pods
//! stay within `replicas + maxSurge`, and the old ones down while available pods stay
//! at least `replicas - maxUnavailable` (unhealthy old pods first); Recreate scales the
//! old ones to zero and waits for their pods to go before scaling the new one up.
//!
//! Revisions are Kubernetes': the new ReplicaSet's `deployment.kubernetes.io/revision`
//! is one more than any before it, which is also how `kubectl rollout undo` works —
//! kubectl puts an old ReplicaSet's template back, that ReplicaSet becomes the new one
//! and gets the next revision. Old ReplicaSets at zero beyond `revisionHistoryLimit` are
//! deleted. The status carries what `kubectl rollout status` reads: observedGeneration,
//! replicas, updated/ready/available/unavailable counts, and the Available and
//! Progressing conditions (NewReplicaSetCreated, ReplicaSetUpdated,
//! NewReplicaSetAvailable, DeploymentPaused/Resumed, ProgressDeadlineExceeded once
//! `progressDeadlineSeconds` pass without progress).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::AsyncContext;
use serde_json::{json, Value};

use super::labels::matches;
use super::queue::WorkQueue;
use super::run::{run, Reconcile};
use super::workload::{concerned, controller_ref, controller_uid, deleting, name, namespace, owner_reference, uid};
use crate::api::informer::{Cache, Change};
use crate::api::{parse_time, rfc3339_now, unix_now, ApiClient, ApiError};
use crate::controllers::{ControllerContext, SharedInformers};
use crate::runtime::{Actor, Ctx};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of a Deployment that are its own, not copied to its ReplicaSets.
const NOT_COPIED: &[&str] =
    &[REVISION, REVISION_HISTORY, DESIRED, MAX_REPLICAS, "kubectl.kubernetes.io/last-applied-configuration"];

pub struct DeploymentController {
    client: ApiClient,
    informers: Arc<SharedInformers>,
}

impl DeploymentController {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers }
    }
}

/// FNV-1a (32 bits) of canonical JSON (object keys sorted), as a stable template hash.
fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The `pod-template-hash` of a template (and the Deployment's collision count), in
/// Kubernetes' alphabet (no vowels, so it never spells a word).
pub fn template_hash(template: &Value, collisions: u64) -> String {
    let mut text = String::new();
    canonical(&without_hash(template), &mut text);
    text.push_str(&collisions.to_string());
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    fnv32a(text.as_bytes())
        .to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d - b'0') % ALPHABET.len()] as char)
        .collect()
}

/// `v` without nulls, empty objects and empty lists: the same template however a
/// client spelled it (kubectl's Go structs send `creationTimestamp: null`,
/// `resources: {}` where others send nothing).
fn normalized(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let m: serde_json::Map<String, Value> =
                m.iter().filter_map(|(k, v)| normalized(v).map(|v| (k.clone(), v))).collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        Value::Array(a) => {
            let a: Vec<Value> = a.iter().map(|x| normalized(x).unwrap_or_else(|| json!({}))).collect();
            (!a.is_empty()).then_some(Value::Array(a))
        }
        other => Some(other.clone()),
    }
}

/// A template without its `pod-template-hash` label, normalized (how templates are
/// compared and hashed).
fn without_hash(template: &Value) -> Value {
    let mut t = normalized(template).unwrap_or_else(|| json!({}));
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            t["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }
    }
    if t["metadata"].as_object().is_some_and(|m| m.is_empty()) {
        t.as_object_mut().map(|m| m.remove("metadata"));
    }
    t
}

fn revision(rs: &Value) -> u64 {
    rs["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn replicas(obj: &Value) -> i64 {
    obj["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn status_count(obj: &Value, field: &str) -> i64 {
    obj["status"][field].as_i64().unwrap_or(0)
}

/// An int-or-percent of `total` (`"25%"`, `1`), rounded up for surge, down otherwise.
fn int_or_percent(v: &Value, default: &str, total: i64, round_up: bool) -> i64 {
    let v = if v.is_null() { Value::String(default.into()) } else { v.clone() };
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = pct * total as f64 / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i64
        }
        _ => 0,
    }
}

/// maxSurge and maxUnavailable for `want` replicas (never both zero).
pub fn surge_and_unavailable(d: &Value, want: i64) -> (i64, i64) {
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = int_or_percent(&ru["maxSurge"], "25%", want, true);
    let unavailable = int_or_percent(&ru["maxUnavailable"], "25%", want, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// The replica counts a rolling update moves to, one step: `new` (spec, available) and
/// `old` (each old ReplicaSet's spec and available count, oldest first). Returns the new
/// ReplicaSet's replicas and each old one's. Old ones shrink only when `settled` (every
/// ReplicaSet's status describes its current spec), so stale counts never let
/// availability drop below `want - unavailable`.
pub fn rolling_step(
    want: i64,
    surge: i64,
    unavailable: i64,
    new: (i64, i64),
    old: &[(i64, i64)],
    settled: bool,
) -> (i64, Vec<i64>) {
    let (mut new_spec, new_available) = new;
    let total: i64 = new_spec + old.iter().map(|o| o.0).sum::<i64>();
    if new_spec > want {
        new_spec = want;
    } else if new_spec < want {
        let room = want + surge - total;
        if room > 0 {
            new_spec += room.min(want - new_spec);
        }
    }
    let mut olds: Vec<i64> = old.iter().map(|o| o.0).collect();
    if !settled {
        return (new_spec, olds);
    }
    let min_available = want - unavailable;
    let all: i64 = new_spec + olds.iter().sum::<i64>();
    let new_unavailable = (new_spec - new_available).max(0);
    let mut cleanup = all - min_available - new_unavailable;
    if cleanup <= 0 {
        return (new_spec, olds);
    }
    // Old pods that are not available go first: removing them costs no availability.
    for (i, o) in old.iter().enumerate() {
        let unhealthy = (o.0 - o.1).max(0).min(cleanup);
        olds[i] -= unhealthy;
        cleanup -= unhealthy;
    }
    // Then available ones, while enough stay available.
    let available: i64 = new_available + old.iter().map(|o| o.1.min(o.0)).sum::<i64>();
    let mut cut = available - min_available;
    for v in olds.iter_mut() {
        if cut <= 0 {
            break;
        }
        let d = (*v).min(cut);
        *v -= d;
        cut -= d;
    }
    (new_spec, olds)
}

type Shared = std::sync::Arc<std::sync::RwLock<Cache>>;

struct State {
    client: ApiClient,
    deployments: Shared,
    sets: Shared,
    pods: Shared,
    /// Pod → its ReplicaSet's key: a Recreate rollout waits for old pods to go, and a pod
    /// going concerns its ReplicaSet's Deployment.
    pod_owner: HashMap<String, String>,
    queue: WorkQueue,
}

impl State {
    fn deployments_of_set(&self, rs: &Value) -> Vec<String> {
        concerned(rs, "Deployment", &self.deployments)
    }

    fn sets_path(ns: &str) -> String {
        format!("/apis/apps/v1/namespaces/{ns}/replicasets")
    }

    async fn patch_set(&self, rs: &Value, patch: &Value) -> Result<(), ApiError> {
        let path = format!("{}/{}", Self::sets_path(namespace(rs)), name(rs));
        match self.client.merge_patch(&path, patch).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn scale(&self, rs: &Value, to: i64, d: &Value, surge: i64) -> Result<bool, ApiError> {
        if replicas(rs) == to {
            return Ok(false);
        }
        let patch = json!({"metadata": {"annotations": {DESIRED: replicas(d).to_string(),
                                                         MAX_REPLICAS: (replicas(d) + surge).to_string()}},
                           "spec": {"replicas": to}});
        self.patch_set(rs, &patch).await?;
        Ok(true)
    }

    /// The ReplicaSets `d` owns (adopting and releasing by its selector), oldest first.
    async fn claim(&self, d: &Value) -> Result<Vec<Value>, ApiError> {
        let ns = namespace(d);
        let candidates: Vec<Value> = {
            let sets = self.sets.read().unwrap();
            sets.in_namespace(ns).map(|(_, v)| v.clone()).collect()
        };
        let mut owned = Vec::new();
        for rs in candidates {
            let selected = matches(&d["spec"]["selector"], &rs["metadata"]["labels"]);
            let mine = controller_uid(&rs) == Some(uid(d));
            let set_refs = |r: Option<Value>| {
                let mut refs: Vec<Value> = rs["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["controller"] != true)
                    .cloned()
                    .collect();
                refs.extend(r);
                json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs["metadata"]["resourceVersion"]}})
            };
            match (mine, selected) {
                (true, true) => owned.push(rs),
                (true, false) => self.patch_set(&rs, &set_refs(None)).await?,
                (false, true) if controller_ref(&rs).is_none() && !deleting(&rs) && !deleting(d) => {
                    self.patch_set(&rs, &set_refs(Some(owner_reference(d, "apps/v1", "Deployment")))).await?;
                    owned.push(rs);
                }
                _ => {}
            }
        }
        owned.sort_by(|a, b| {
            a["metadata"]["creationTimestamp"]
                .as_str()
                .cmp(&b["metadata"]["creationTimestamp"].as_str())
                .then(name(a).cmp(name(b)))
        });
        Ok(owned)
    }

    async fn sync(&mut self, key: &str) -> Result<(), ApiError> {
        let Some(d) = self.deployments.read().unwrap().objects.get(key).cloned() else { return Ok(()) };
        if deleting(&d) {
            return Ok(());
        }
        let want = replicas(&d).max(0);
        let mut sets = self.claim(&d).await?;
        let template = without_hash(&d["spec"]["template"]);
        let collisions = d["status"]["collisionCount"].as_u64().unwrap_or(0);
        let new_index = sets.iter().position(|rs| without_hash(&rs["spec"]["template"]) == template);
        let paused = d["spec"]["paused"] == true;
        let max_revision = sets.iter().map(revision).max().unwrap_or(0);
        let (surge, unavailable) = surge_and_unavailable(&d, want);
        let recreate = d["spec"]["strategy"]["type"] == "Recreate";
        let mut progressed = None;

        // The new ReplicaSet: found (its revision made the latest) or made.
        let new_index = match new_index {
            Some(i) => {
                let rs = sets[i].clone();
                let rs = &rs;
                let latest = sets.iter().enumerate().all(|(j, o)| j == i || revision(o) < revision(rs));
                if !latest && !paused {
                    let mut history: Vec<String> = rs["metadata"]["annotations"][REVISION_HISTORY]
                        .as_str()
                        .map(|h| h.split(',').map(str::to_string).collect())
                        .unwrap_or_default();
                    history.push(revision(rs).to_string());
                    let next = (max_revision + 1).to_string();
                    let patch =
                        json!({"metadata": {"annotations": {REVISION: next, REVISION_HISTORY: history.join(",")}}});
                    self.patch_set(rs, &patch).await?;
                    sets[i]["metadata"]["annotations"][REVISION] = next.into();
                    progressed = Some(format!("ReplicaSet \"{}\" is progressing.", name(rs)));
                }
                Some(i)
            }
            None if paused => None,
            None => {
                let hash = template_hash(&d["spec"]["template"], collisions);
                let rs_name = format!("{}-{hash}", name(&d));
                let mut tpl = d["spec"]["template"].clone();
                tpl["metadata"]["labels"][HASH_LABEL] = hash.clone().into();
                let mut selector = d["spec"]["selector"].clone();
                selector["matchLabels"][HASH_LABEL] = hash.clone().into();
                let mut annotations = serde_json::Map::new();
                for (k, v) in d["metadata"]["annotations"].as_object().into_iter().flatten() {
                    if !NOT_COPIED.contains(&k.as_str()) {
                        annotations.insert(k.clone(), v.clone());
                    }
                }
                annotations.insert(REVISION.into(), (max_revision + 1).to_string().into());
                annotations.insert(DESIRED.into(), want.to_string().into());
                annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string().into());
                let start = if recreate || sets.iter().all(|s| replicas(s) == 0) {
                    want.min(if recreate { 0 } else { want })
                } else {
                    0
                };
                let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": rs_name, "namespace": namespace(&d), "labels": tpl["metadata"]["labels"],
                                 "annotations": annotations,
                                 "ownerReferences": [owner_reference(&d, "apps/v1", "Deployment")]},
                    "spec": {"replicas": start, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
                             "selector": selector, "template": tpl}});
                match self.client.create(&Self::sets_path(namespace(&d)), &rs).await {
                    Ok(made) => {
                        progressed = Some(format!("Created new replica set \"{rs_name}\""));
                        sets.push(made);
                        Some(sets.len() - 1)
                    }
                    Err(e) if e.code() == Some(409) => {
                        // A ReplicaSet of that name with another template: a hash collision.
                        let existing =
                            self.client.get(&format!("{}/{rs_name}", Self::sets_path(namespace(&d)))).await?;
                        if without_hash(&existing["spec"]["template"]) != template {
                            let path =
                                format!("/apis/apps/v1/namespaces/{}/deployments/{}/status", namespace(&d), name(&d));
                            self.client
                                .merge_patch(&path, &json!({"status": {"collisionCount": collisions + 1}}))
                                .await?;
                        }
                        self.queue.push_after(key, Duration::from_millis(200));
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        };

        // Scale.
        if let Some(i) = new_index {
            let new = sets[i].clone();
            let olds: Vec<Value> = sets.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| s.clone()).collect();
            if paused {
                if olds.iter().all(|o| replicas(o) == 0) && self.scale(&new, want, &d, surge).await? {
                    progressed = Some(format!("ReplicaSet \"{}\" is progressing.", name(&new)));
                }
            } else if recreate {
                let mut scaled = false;
                for o in &olds {
                    scaled |= self.scale(o, 0, &d, surge).await?;
                }
                let old_uids: Vec<&str> = olds.iter().map(uid).collect();
                let old_pods = {
                    let pods = self.pods.read().unwrap();
                    let running = pods.in_namespace(namespace(&d)).any(|(_, p)| {
                        controller_uid(p).is_some_and(|u| old_uids.contains(&u))
                            && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                    });
                    running
                };
                if !scaled && !old_pods {
                    scaled |= self.scale(&new, want, &d, surge).await?;
                }
                if scaled {
                    progressed = Some(format!("ReplicaSet \"{}\" is progressing.", name(&new)));
                }
            } else {
                let old_counts: Vec<(i64, i64)> =
                    olds.iter().map(|o| (replicas(o), status_count(o, "availableReplicas"))).collect();
                let settled = sets.iter().all(|s| {
                    status_count(s, "observedGeneration") >= s["metadata"]["generation"].as_i64().unwrap_or(0)
                });
                let new_counts = (replicas(&new), status_count(&new, "availableReplicas").min(replicas(&new)));
                let (new_to, olds_to) = rolling_step(want, surge, unavailable, new_counts, &old_counts, settled);
                let mut scaled = self.scale(&new, new_to, &d, surge).await?;
                for (o, to) in olds.iter().zip(olds_to) {
                    scaled |= self.scale(o, to, &d, surge).await?;
                }
                if scaled {
                    progressed = Some(format!("ReplicaSet \"{}\" is progressing.", name(&new)));
                }
            }
        }

        // Old ReplicaSets at zero beyond the history limit go, oldest revision first.
        let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
        let mut spent: Vec<&Value> = sets
            .iter()
            .enumerate()
            .filter(|(j, s)| {
                Some(*j) != new_index && replicas(s) == 0 && status_count(s, "replicas") == 0 && !deleting(s)
            })
            .map(|(_, s)| s)
            .collect();
        if spent.len() > limit {
            spent.sort_by_key(|s| revision(s));
            for s in &spent[..spent.len() - limit] {
                let path = format!("{}/{}", Self::sets_path(namespace(s)), name(s));
                match self.client.delete(&path).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(404) => {}
                    Err(e) => return Err(e),
                }
            }
        }

        self.write_status(key, &d, &sets, new_index, progressed, (surge, unavailable)).await
    }

    async fn write_status(
        &mut self,
        key: &str,
        d: &Value,
        sets: &[Value],
        new_index: Option<usize>,
        progressed: Option<String>,
        (_surge, unavailable): (i64, i64),
    ) -> Result<(), ApiError> {
        let want = replicas(d).max(0);
        let sum = |f: &str| sets.iter().map(|s| status_count(s, f)).sum::<i64>();
        let spec_total: i64 = sets.iter().map(replicas).sum();
        let new = new_index.map(|i| &sets[i]);
        let updated = new.map_or(0, |n| status_count(n, "replicas"));
        let (total, ready, available) = (sum("replicas"), sum("readyReplicas"), sum("availableReplicas"));
        let now = rfc3339_now();
        let old = &d["status"];
        let find = |t: &str| old["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == t).cloned();
        let condition = |t: &str, status: &str, reason: &str, message: String, prior: Option<Value>, touch: bool| {
            let same = prior.as_ref().is_some_and(|p| p["status"] == status);
            let transition =
                if same { prior.as_ref().unwrap()["lastTransitionTime"].clone() } else { now.clone().into() };
            let unchanged = prior.as_ref().is_some_and(|p| p["status"] == status && p["reason"] == reason);
            let update = if unchanged && !touch {
                prior.as_ref().unwrap()["lastUpdateTime"].clone()
            } else {
                now.clone().into()
            };
            json!({"type": t, "status": status, "reason": reason, "message": message,
                   "lastTransitionTime": transition, "lastUpdateTime": update})
        };
        let available_cond = if available >= want - unavailable {
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                find("Available"),
                false,
            )
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                find("Available"),
                false,
            )
        };
        let counts_moved = ["replicas", "updatedReplicas", "readyReplicas", "availableReplicas"]
            .iter()
            .zip([total, updated, ready, available])
            .any(|(f, v)| old[*f].as_i64().unwrap_or(0) != v);
        let complete = new.is_some() && updated == want && total == want && available == want && spec_total == want;
        let prior = find("Progressing");
        let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
        let rs_name = new.map(|n| name(n).to_string()).unwrap_or_default();
        let progressing = if d["spec"]["paused"] == true {
            condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), prior, false)
        } else if complete {
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                prior,
                false,
            )
        } else if let Some(message) = progressed {
            let reason = if message.starts_with("Created") { "NewReplicaSetCreated" } else { "ReplicaSetUpdated" };
            condition("Progressing", "True", reason, message, prior, true)
        } else if prior.as_ref().is_some_and(|p| p["reason"] == "DeploymentPaused") {
            condition("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed".into(), prior, true)
        } else if counts_moved || prior.is_none() {
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
                prior,
                true,
            )
        } else {
            let p = prior.unwrap();
            let since = p["lastUpdateTime"].as_str().and_then(parse_time).unwrap_or_else(unix_now);
            if p["reason"] != "ProgressDeadlineExceeded" && since + deadline as f64 <= unix_now() {
                condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    Some(p),
                    true,
                )
            } else {
                if p["reason"] != "ProgressDeadlineExceeded" {
                    let left = (since + deadline as f64 - unix_now()).max(0.0) + 0.5;
                    self.queue.push_after(key, Duration::from_secs_f64(left));
                }
                p
            }
        };
        let mut status = json!({
            "observedGeneration": d["metadata"]["generation"], "replicas": total, "updatedReplicas": updated,
            "readyReplicas": ready, "availableReplicas": available,
            "unavailableReplicas": (spec_total.max(want) - available).max(0),
            "conditions": [available_cond, progressing],
        });
        if let Some(c) = old.get("collisionCount") {
            status["collisionCount"] = c.clone();
        }
        let mut current = old.clone();
        if current.is_null() {
            current = json!({});
        }
        if status == current {
            return Ok(());
        }
        let mut patch = json!({"status": status});
        // Zero counts are left out by Kubernetes; a merge patch must say null to clear them.
        for f in ["replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"] {
            if patch["status"][f] == 0 {
                patch["status"][f] = Value::Null;
            }
        }
        let mut d_annotations = json!({});
        if let Some(n) = new {
            if d["metadata"]["annotations"][REVISION].as_str() != Some(&revision(n).to_string()) {
                d_annotations[REVISION] = revision(n).to_string().into();
            }
        }
        let base = format!("/apis/apps/v1/namespaces/{}/deployments/{}", namespace(d), name(d));
        if d_annotations.as_object().is_some_and(|m| !m.is_empty()) {
            self.client.merge_patch(&base, &json!({"metadata": {"annotations": d_annotations}})).await?;
        }
        match self.client.merge_patch(&format!("{base}/status"), &patch).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Reconcile for State {
    const WHAT: &'static str = "deployment";

    fn queue(&mut self) -> &mut WorkQueue {
        &mut self.queue
    }

    fn on_change(&mut self, source: usize, change: Change) {
        State::on_change(self, source, change);
    }

    async fn reconcile(&mut self, key: &str) -> Result<(), ApiError> {
        self.sync(key).await
    }
}

impl Actor for DeploymentController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (caches, changes) = self.informers.subscribe_all(&[
            ("/apis/apps/v1/deployments", &[]),
            ("/apis/apps/v1/replicasets", &[]),
            ("/api/v1/pods", &[]),
        ]);
        let state = State {
            client: self.client.clone(),
            deployments: caches[0].clone(),
            sets: caches[1].clone(),
            pods: caches[2].clone(),
            pod_owner: HashMap::new(),
            queue: WorkQueue::default(),
        };
        ctx.spawn(actix::fut::wrap_future(run(state, caches, changes)));
    }
}

impl State {
    /// Queues the Deployments a change concerns (0: a Deployment, 1: a ReplicaSet, 2: a pod).
    fn on_change(&mut self, from: usize, change: Change) {
        match (from, change) {
            (0, Change::Upserted(k) | Change::Deleted(k, _)) => self.queue.push(k),
            (1, Change::Upserted(k)) => {
                let rs = self.sets.read().unwrap().objects.get(&k).cloned();
                for d in rs.map(|rs| self.deployments_of_set(&rs)).unwrap_or_default() {
                    self.queue.push(d);
                }
            }
            (1, Change::Deleted(_, rs)) => {
                for d in self.deployments_of_set(&rs) {
                    self.queue.push(d);
                }
            }
            (_, Change::Upserted(k)) => {
                if let Some(rs) = self.pods.read().unwrap().objects.get(&k).and_then(controller_ref) {
                    let ns = k.split('/').next().unwrap_or_default();
                    self.pod_owner.insert(k.clone(), format!("{ns}/{}", rs["name"].as_str().unwrap_or_default()));
                }
            }
            (_, Change::Deleted(k, _)) => {
                // A Recreate rollout waits for old pods to go.
                if let Some(rs_key) = self.pod_owner.remove(&k) {
                    let rs = self.sets.read().unwrap().objects.get(&rs_key).cloned();
                    for d in rs.map(|rs| self.deployments_of_set(&rs)).unwrap_or_default() {
                        let recreate = self
                            .deployments
                            .read()
                            .unwrap()
                            .objects
                            .get(&d)
                            .is_some_and(|d| d["spec"]["strategy"]["type"] == "Recreate");
                        if recreate {
                            self.queue.push(d);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hashes_are_stable_and_ignore_their_own_label() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}});
        let h = template_hash(&t, 0);
        assert!(h.len() >= 8 && h.bytes().all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
        let mut labelled = t.clone();
        labelled["metadata"]["labels"][HASH_LABEL] = h.clone().into();
        assert_eq!(template_hash(&labelled, 0), h);
        assert_eq!(without_hash(&labelled), t);
        // As kubectl sends a template back (rollout undo): the same template.
        let mut go = labelled.clone();
        go["metadata"]["creationTimestamp"] = Value::Null;
        go["spec"]["containers"][0]["resources"] = json!({});
        assert_eq!(without_hash(&go), t);
        let mut other = t.clone();
        other["spec"]["containers"][0]["image"] = "nginx:2".into();
        assert_ne!(template_hash(&other, 0), h);
        assert_ne!(template_hash(&t, 1), h, "a collision count changes the hash");
    }

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        let d = |ru: Value| json!({"spec": {"strategy": {"rollingUpdate": ru}}});
        assert_eq!(surge_and_unavailable(&d(json!({})), 10), (3, 2));
        assert_eq!(surge_and_unavailable(&d(json!({"maxSurge": 0, "maxUnavailable": 0})), 10), (0, 1));
        assert_eq!(surge_and_unavailable(&d(json!({"maxSurge": "50%", "maxUnavailable": 1})), 3), (2, 1));
    }

    /// Runs rolling steps to the end, every pod becoming available at once, checking the
    /// bounds at every step.
    fn roll(want: i64, surge: i64, unavailable: i64, start: i64) -> usize {
        let (mut new, mut old) = (0i64, vec![start]);
        for step in 0..100 {
            let olds: Vec<(i64, i64)> = old.iter().map(|x| (*x, *x)).collect();
            let (n, o) = rolling_step(want, surge, unavailable, (new, new), &olds, true);
            let total: i64 = n + o.iter().sum::<i64>();
            assert!(total <= want + surge, "step {step}: {total} pods exceed {want} + {surge}");
            let available_after: i64 = new.min(n) + o.iter().sum::<i64>();
            assert!(available_after >= want - unavailable, "step {step}: {available_after} available");
            if (n, &o) == (new, &old) {
                assert_eq!((n, o.iter().sum::<i64>()), (want, 0), "stuck at step {step}");
                return step;
            }
            (new, old) = (n, o);
        }
        panic!("never finished");
    }

    #[test]
    fn rolling_updates_stay_within_surge_and_availability() {
        roll(10, 3, 2, 10);
        roll(3, 1, 0, 3);
        roll(3, 0, 1, 3);
        roll(1, 1, 0, 1);
        roll(50, 13, 12, 50);
        // Scaling with no rollout: straight to the count.
        assert_eq!(rolling_step(50, 13, 12, (10, 10), &[], true), (50, vec![]));
        assert_eq!(rolling_step(3, 1, 0, (50, 50), &[], true), (3, vec![]));
        // Stale statuses: the new one may grow, old ones wait.
        assert_eq!(rolling_step(10, 3, 2, (0, 0), &[(10, 10)], false), (3, vec![10]));
    }
}
