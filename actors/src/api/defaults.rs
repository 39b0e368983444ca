//! Defaulting, as Kubernetes' API server does it on every create and update: the
//! fields clients may leave out and controllers (and kubectl) read, e.g. a
//! Deployment's strategy or a DaemonSet's updateStrategy (`kubectl rollout status`
//! refuses a DaemonSet without one).

use serde_json::{json, Value};

/// Sets `obj[field]` to `value` unless it is there.
fn or(obj: &mut Value, field: &str, value: Value) {
    if obj.get(field).is_none_or(Value::is_null) {
        obj[field] = value;
    }
}

fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    or(spec, "restartPolicy", "Always".into());
    or(spec, "dnsPolicy", "ClusterFirst".into());
    or(spec, "schedulerName", "default-scheduler".into());
    or(spec, "terminationGracePeriodSeconds", 30.into());
}

/// A Secret's `stringData` is written into `data` (base64) and not stored, as the
/// Kubernetes API server does; its entries win over `data`'s.
fn string_data(secret: &mut Value) {
    let Some(strings) = secret.as_object_mut().and_then(|o| o.remove("stringData")) else { return };
    let Some(strings) = strings.as_object().cloned() else { return };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (k, v) in strings {
        if let Some(s) = v.as_str() {
            secret["data"][k.as_str()] = super::protobuf::base64(s.as_bytes()).into();
        }
    }
}

/// Fills in `obj`'s defaults for its kind.
pub fn apply(kind: &str, obj: &mut Value) {
    if kind == "Secret" {
        string_data(obj);
        return;
    }
    // Only kinds with a spec have defaults there (indexing would add a null one).
    if !obj.get("spec").is_some_and(Value::is_object) {
        return;
    }
    let spec = &mut obj["spec"];
    match kind {
        "Pod" => pod_spec(spec),
        "Deployment" => {
            or(spec, "replicas", 1.into());
            or(spec, "revisionHistoryLimit", 10.into());
            or(spec, "progressDeadlineSeconds", 600.into());
            or(spec, "strategy", json!({"type": "RollingUpdate"}));
            if spec["strategy"]["type"] == "RollingUpdate" {
                let ru = &mut spec["strategy"]["rollingUpdate"];
                if !ru.is_object() {
                    *ru = json!({});
                }
                or(ru, "maxSurge", "25%".into());
                or(ru, "maxUnavailable", "25%".into());
            }
            pod_spec(&mut spec["template"]["spec"]);
        }
        "ReplicaSet" => {
            or(spec, "replicas", 1.into());
            pod_spec(&mut spec["template"]["spec"]);
        }
        "DaemonSet" => {
            or(spec, "revisionHistoryLimit", 10.into());
            or(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
            if spec["updateStrategy"]["type"] == "RollingUpdate" {
                let ru = &mut spec["updateStrategy"]["rollingUpdate"];
                if !ru.is_object() {
                    *ru = json!({});
                }
                or(ru, "maxUnavailable", 1.into());
                or(ru, "maxSurge", 0.into());
            }
            pod_spec(&mut spec["template"]["spec"]);
        }
        "Service" => {
            or(spec, "type", "ClusterIP".into());
            or(spec, "sessionAffinity", "None".into());
            if spec["type"] != "ExternalName" {
                or(spec, "internalTrafficPolicy", "Cluster".into());
                or(spec, "ipFamilies", json!(["IPv4"]));
                or(spec, "ipFamilyPolicy", "SingleStack".into());
            }
            if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer")) {
                or(spec, "externalTrafficPolicy", "Cluster".into());
            }
            for port in spec["ports"].as_array_mut().into_iter().flatten() {
                or(port, "protocol", "TCP".into());
                let number = port["port"].clone();
                or(port, "targetPort", number);
            }
        }
        "Job" => {
            if spec["completions"].is_null() && spec["parallelism"].is_null() {
                spec["completions"] = 1.into();
            }
            or(spec, "parallelism", 1.into());
            or(spec, "backoffLimit", 6.into());
            or(spec, "completionMode", "NonIndexed".into());
            or(spec, "suspend", false.into());
            pod_spec(&mut spec["template"]["spec"]);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_keep_string_data_as_data() {
        let mut s = json!({"kind": "Secret", "data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "s3cret"}});
        apply("Secret", &mut s);
        assert_eq!(s, json!({"kind": "Secret", "data": {"a": "eA==", "b": "czNjcmV0"}}));
    }

    #[test]
    fn workloads_get_kubernetes_defaults_and_keep_what_they_say() {
        let mut d = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": []}}}});
        apply("Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let mut r = json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply("Deployment", &mut r);
        assert!(r["spec"]["strategy"].get("rollingUpdate").is_none());
        let mut ds = json!({"spec": {"template": {}}});
        apply("DaemonSet", &mut ds);
        assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
        let mut job = json!({"spec": {"parallelism": 2, "template": {"spec": {"restartPolicy": "Never"}}}});
        apply("Job", &mut job);
        assert!(job["spec"]["completions"].is_null(), "a work queue Job keeps completions unset");
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    }
}
