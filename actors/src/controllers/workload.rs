//! What the workload controllers share: owner references, pods made from templates,
//! and when a pod counts as active, ready and available.

use serde_json::{json, Value};

use super::labels::matches;
use crate::api::{parse_time, unix_now};

/// The controller reference of `obj` (the ownerReference with `controller: true`).
pub fn controller_ref(obj: &Value) -> Option<&Value> {
    obj["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == true)
}

/// The uid of `obj`'s controller, if it has one.
pub fn controller_uid(obj: &Value) -> Option<&str> {
    controller_ref(obj).and_then(|r| r["uid"].as_str())
}

/// The keys (`namespace/name`) of the `kind` controllers `obj` concerns: its controller
/// if it has one of that kind, else (an orphan) those in `owners` whose selector
/// matches it, which may adopt it.
pub fn concerned(obj: &Value, kind: &str, owners: &super::SharedCache) -> Vec<String> {
    let ns = namespace(obj);
    if let Some(r) = controller_ref(obj) {
        return if r["kind"] == kind {
            vec![format!("{ns}/{}", r["name"].as_str().unwrap_or_default())]
        } else {
            vec![]
        };
    }
    let owners = owners.read().unwrap();
    owners
        .in_namespace(ns)
        .filter(|(_, o)| matches(&o["spec"]["selector"], &obj["metadata"]["labels"]))
        .map(|(k, _)| k.clone())
        .collect()
}

/// A controller reference to `owner` (whose kind is `kind` in `api_version`).
pub fn owner_reference(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn namespace(obj: &Value) -> &str {
    obj["metadata"]["namespace"].as_str().unwrap_or("default")
}

pub fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or_default()
}

pub fn deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// A new pod from `template` (a PodTemplateSpec), named `<prefix>-<random>`, owned by `owner_ref`.
pub fn pod_from_template(template: &Value, namespace: &str, prefix: &str, owner_ref: Value) -> Value {
    let mut meta =
        json!({"generateName": format!("{prefix}-"), "namespace": namespace, "ownerReferences": [owner_ref]});
    for field in ["labels", "annotations", "finalizers"] {
        if !template["metadata"][field].is_null() {
            meta[field] = template["metadata"][field].clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
}

/// Not finished and not being deleted: a pod its controller counts.
pub fn is_active(pod: &Value) -> bool {
    !deleting(pod) && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

pub fn is_ready(pod: &Value) -> bool {
    crate::api::condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

/// Ready for at least `min_ready_seconds`: available, as Deployments count it.
pub fn is_available(pod: &Value, min_ready_seconds: i64) -> bool {
    let Some(c) = crate::api::condition(pod, "Ready").filter(|c| c["status"] == "True") else { return false };
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = c["lastTransitionTime"].as_str().and_then(parse_time).unwrap_or(0.0);
    since + min_ready_seconds as f64 <= unix_now()
}

/// Orders pods so the ones to delete first come first: unscheduled before scheduled,
/// pending before running, not ready before ready, newer before older (as Kubernetes'
/// ReplicaSet controller chooses).
pub fn deletion_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    let rank = |p: &Value| {
        let assigned = !p["spec"]["nodeName"].as_str().unwrap_or_default().is_empty();
        let phase = match p["status"]["phase"].as_str() {
            Some("Pending") => 0,
            Some("Running") => 2,
            _ => 1,
        };
        (assigned, phase, is_ready(p))
    };
    fn created(p: &Value) -> &str {
        p["metadata"]["creationTimestamp"].as_str().unwrap_or_default()
    }
    rank(a).cmp(&rank(b)).then_with(|| created(b).cmp(created(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, phase: &str, ready: bool, created: &str) -> Value {
        json!({"metadata": {"name": format!("{node}-{phase}-{ready}-{created}"), "creationTimestamp": created},
               "spec": {"nodeName": node},
               "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn pods_are_deleted_unscheduled_pending_unready_and_newest_first() {
        let mut pods = [
            pod("n1", "Running", true, "2026-01-01T00:00:00Z"),
            pod("n1", "Running", true, "2026-01-02T00:00:00Z"),
            pod("n1", "Running", false, "2026-01-01T00:00:00Z"),
            pod("n1", "Pending", false, "2026-01-01T00:00:00Z"),
            pod("", "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by(deletion_order);
        let order: Vec<&str> = pods.iter().map(name).collect();
        assert_eq!(
            order,
            [
                "-Pending-false-2026-01-01T00:00:00Z",
                "n1-Pending-false-2026-01-01T00:00:00Z",
                "n1-Running-false-2026-01-01T00:00:00Z",
                "n1-Running-true-2026-01-02T00:00:00Z",
                "n1-Running-true-2026-01-01T00:00:00Z"
            ]
        );
    }

    #[test]
    fn templates_make_owned_pods() {
        let rs = json!({"metadata": {"name": "web-abc", "uid": "u1"}});
        let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}});
        let p = pod_from_template(&template, "web", "web-abc", owner_reference(&rs, "apps/v1", "ReplicaSet"));
        assert_eq!(p["metadata"]["generateName"], "web-abc-");
        assert_eq!(controller_uid(&p), Some("u1"));
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        assert!(is_active(&p) && !is_ready(&p));
    }
}
