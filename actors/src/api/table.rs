//! Server-side printing: `kubectl get` asks for a `meta.k8s.io/v1` Table and prints its
//! columns. The columns are the ones Kubernetes prints for each kind (its
//! `pkg/printers/internalversion`), `priority: 1` ones only with `-o wide`.

use serde_json::{json, Value};

use super::resources::Resource;

/// (name, type, priority) of each column after NAME.
type Columns = &'static [(&'static str, &'static str, u8)];

fn columns(kind: &str) -> Columns {
    match kind {
        "Pod" => &[
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        "Deployment" => &[
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "ReplicaSet" => &[
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "DaemonSet" => &[
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "Job" => &[
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "Service" => &[
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        "Endpoints" => &[("Endpoints", "string", 0), ("Age", "string", 0)],
        "Node" => &[
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        "Namespace" => &[("Status", "string", 0), ("Age", "string", 0)],
        "ConfigMap" => &[("Data", "integer", 0), ("Age", "string", 0)],
        "Secret" => &[("Type", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)],
        "ServiceAccount" => &[("Secrets", "integer", 0), ("Age", "string", 0)],
        "Lease" => &[("Holder", "string", 0), ("Age", "string", 0)],
        "EndpointSlice" => {
            &[("AddressType", "string", 0), ("Ports", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)]
        }
        _ => &[("Age", "string", 0)],
    }
}

/// Whether a request asked for a Table (`Accept: application/json;as=Table;…`).
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|a| a.contains("as=Table"))
}

/// Whole seconds since the epoch of a time Kubernetes wrote (`2026-11-29T14:41:07Z`),
/// as the AGE and DURATION columns count them.
pub fn parse_time(s: &str) -> Option<u64> {
    super::objects::parse_time(s).and_then(|t| u64::try_from(t.floor() as i64).ok())
}

/// A duration as kubectl's AGE column writes it (apimachinery's `HumanDuration`).
pub fn human(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age(obj: &Value, now: u64) -> String {
    match obj["metadata"]["creationTimestamp"].as_str().and_then(parse_time) {
        Some(t) => human(now as i64 - t as i64),
        None => "<unknown>".into(),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn containers(obj: &Value, template: &Value) -> (String, String, String) {
    let cs = template["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
    let images: Vec<&str> = cs.iter().filter_map(|c| c["image"].as_str()).collect();
    let selector: Vec<String> = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|l| l.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    (names.join(","), images.join(","), none_if_empty(selector.join(",")))
}

fn map_len(v: &Value) -> i64 {
    v.as_object().map_or(0, |o| o.len() as i64)
}

/// A pod's STATUS, ready containers and RESTARTS as kubectl's printer makes them: init
/// containers first (`Init:1/2`, `Init:CrashLoopBackOff`), then the containers' waiting
/// or terminated reasons (`CrashLoopBackOff`, `Error`, `Completed`, `ExitCode:3`),
/// `Terminating` while being deleted; restarts with the last one's age (`2 (5s ago)`).
fn pod_status_column(o: &Value, now: u64) -> (String, usize, String) {
    let status = &o["status"];
    let mut reason = status["reason"].as_str().or(status["phase"].as_str()).unwrap_or("Pending").to_string();
    let mut restarts = 0;
    let mut last_restart: Option<u64> = None;
    let mut note_restart = |c: &Value| {
        restarts += int(&c["restartCount"]);
        if let Some(t) = c["lastState"]["terminated"]["finishedAt"].as_str().and_then(parse_time) {
            last_restart = Some(last_restart.map_or(t, |l: u64| l.max(t)));
        }
    };
    let inits = status["initContainerStatuses"].as_array().cloned().unwrap_or_default();
    let init_total = o["spec"]["initContainers"].as_array().map_or(0, Vec::len);
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        note_restart(c);
        let term = &c["state"]["terminated"];
        let waiting = c["state"]["waiting"]["reason"].as_str().filter(|r| !r.is_empty() && *r != "PodInitializing");
        if term.is_object() && int(&term["exitCode"]) == 0 {
            continue;
        }
        initializing = true;
        reason = if term.is_object() {
            match term["reason"].as_str().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None if int(&term["signal"]) != 0 => format!("Init:Signal:{}", int(&term["signal"])),
                None => format!("Init:ExitCode:{}", int(&term["exitCode"])),
            }
        } else if let Some(w) = waiting {
            format!("Init:{w}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }
    let initialized = super::condition_is_true(o, "Initialized");
    let mut ready = 0;
    if !initializing || initialized {
        restarts = 0;
        last_restart = None;
        let mut has_running = false;
        let statuses = status["containerStatuses"].as_array().cloned().unwrap_or_default();
        for c in statuses.iter().rev() {
            restarts += int(&c["restartCount"]);
            if let Some(t) = c["lastState"]["terminated"]["finishedAt"].as_str().and_then(parse_time) {
                last_restart = Some(last_restart.map_or(t, |l: u64| l.max(t)));
            }
            let (waiting, term) = (&c["state"]["waiting"], &c["state"]["terminated"]);
            if let Some(r) = waiting["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if let Some(r) = term["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if term.is_object() {
                reason = if int(&term["signal"]) != 0 {
                    format!("Signal:{}", int(&term["signal"]))
                } else {
                    format!("ExitCode:{}", int(&term["exitCode"]))
                };
            } else if c["ready"] == true && c["state"]["running"].is_object() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = super::condition_is_true(o, "Ready");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    if o["metadata"]["deletionTimestamp"].is_string() {
        reason = if status["reason"] == "NodeLost" { "Unknown" } else { "Terminating" }.into();
    }
    let restarts = match last_restart {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", human(now as i64 - t as i64)),
        _ => restarts.to_string(),
    };
    (reason, ready, restarts)
}

/// The cells after NAME for one object.
fn cells(kind: &str, o: &Value, now: u64) -> Vec<Value> {
    let age = age(o, now);
    let spec = &o["spec"];
    let status = &o["status"];
    match kind {
        "Pod" => {
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let (phase, ready, restarts) = pod_status_column(o, now);
            vec![
                format!("{ready}/{total}").into(),
                phase.into(),
                restarts.into(),
                age.into(),
                status["podIP"].as_str().unwrap_or("<none>").into(),
                spec["nodeName"].as_str().unwrap_or("<none>").into(),
                status["nominatedNodeName"].as_str().unwrap_or("<none>").into(),
                "<none>".into(),
            ]
        }
        "Deployment" => {
            let (c, i, s) = containers(o, &spec["template"]);
            let want = spec["replicas"].as_i64().unwrap_or(1);
            vec![
                format!("{}/{want}", int(&status["readyReplicas"])).into(),
                int(&status["updatedReplicas"]).into(),
                int(&status["availableReplicas"]).into(),
                age.into(),
                c.into(),
                i.into(),
                s.into(),
            ]
        }
        "ReplicaSet" => {
            let (c, i, s) = containers(o, &spec["template"]);
            vec![
                spec["replicas"].as_i64().unwrap_or(1).into(),
                int(&status["replicas"]).into(),
                int(&status["readyReplicas"]).into(),
                age.into(),
                c.into(),
                i.into(),
                s.into(),
            ]
        }
        "DaemonSet" => {
            let (c, i, s) = containers(o, &spec["template"]);
            let node_selector: Vec<String> = spec["template"]["spec"]["nodeSelector"]
                .as_object()
                .map(|l| l.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
                .unwrap_or_default();
            vec![
                int(&status["desiredNumberScheduled"]).into(),
                int(&status["currentNumberScheduled"]).into(),
                int(&status["numberReady"]).into(),
                int(&status["updatedNumberScheduled"]).into(),
                int(&status["numberAvailable"]).into(),
                none_if_empty(node_selector.join(",")).into(),
                age.into(),
                c.into(),
                i.into(),
                s.into(),
            ]
        }
        "Job" => {
            let (c, i, s) = containers(o, &spec["template"]);
            let completions = spec["completions"].as_i64().unwrap_or(1);
            let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
            let state = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if spec["suspend"] == true {
                "Suspended"
            } else {
                "Running"
            };
            let duration = match (
                status["startTime"].as_str().and_then(parse_time),
                status["completionTime"].as_str().and_then(parse_time),
            ) {
                (Some(s), Some(e)) => human(e as i64 - s as i64),
                (Some(s), None) => human(now as i64 - s as i64),
                _ => String::new(),
            };
            vec![
                state.into(),
                format!("{}/{completions}", int(&status["succeeded"])).into(),
                duration.into(),
                age.into(),
                c.into(),
                i.into(),
                s.into(),
            ]
        }
        "Service" => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_i64() {
                                Some(n) if n > 0 => format!("{}:{n}/{proto}", int(&p["port"])),
                                _ => format!("{}/{proto}", int(&p["port"])),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let external: Vec<String> = status["loadBalancer"]["ingress"]
                .as_array()
                .map(|i| {
                    i.iter().filter_map(|x| x["ip"].as_str().or(x["hostname"].as_str()).map(str::to_string)).collect()
                })
                .unwrap_or_default();
            let kind = spec["type"].as_str().unwrap_or("ClusterIP");
            let external = match (external.is_empty(), kind) {
                (false, _) => external.join(","),
                (true, "LoadBalancer") => "<pending>".into(),
                (true, "ExternalName") => spec["externalName"].as_str().unwrap_or("<none>").into(),
                _ => "<none>".into(),
            };
            let selector: Vec<String> = spec["selector"]
                .as_object()
                .map(|l| l.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
                .unwrap_or_default();
            vec![
                kind.into(),
                spec["clusterIP"].as_str().unwrap_or("<none>").into(),
                external.into(),
                none_if_empty(ports.join(",")).into(),
                age.into(),
                none_if_empty(selector.join(",")).into(),
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for s in o["subsets"].as_array().cloned().unwrap_or_default() {
                for a in s["addresses"].as_array().cloned().unwrap_or_default() {
                    for p in s["ports"].as_array().cloned().unwrap_or_default() {
                        eps.push(format!("{}:{}", a["ip"].as_str().unwrap_or_default(), int(&p["port"])));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![none_if_empty(shown).into(), age.into()]
        }
        "Node" => {
            let ready = super::condition(o, "Ready").map(|c| c["status"] == "True");
            let mut state = match ready {
                Some(true) => "Ready".to_string(),
                Some(false) | None => "NotReady".to_string(),
            };
            if spec["unschedulable"] == true {
                state.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = o["metadata"]["labels"]
                .as_object()
                .map(|l| {
                    l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(str::to_string)).collect()
                })
                .unwrap_or_default();
            let addr = |t: &str| {
                status["addresses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["type"] == t))
                    .and_then(|x| x["address"].as_str())
                    .unwrap_or("<none>")
                    .to_string()
            };
            let info = &status["nodeInfo"];
            vec![
                state.into(),
                none_if_empty(roles.join(",")).into(),
                age.into(),
                info["kubeletVersion"].as_str().unwrap_or("").into(),
                addr("InternalIP").into(),
                addr("ExternalIP").into(),
                info["osImage"].as_str().unwrap_or("<unknown>").into(),
                info["kernelVersion"].as_str().unwrap_or("<unknown>").into(),
                info["containerRuntimeVersion"].as_str().unwrap_or("<unknown>").into(),
            ]
        }
        "Namespace" => vec![status["phase"].as_str().unwrap_or("Active").into(), age.into()],
        "ConfigMap" => vec![(map_len(&o["data"]) + map_len(&o["binaryData"])).into(), age.into()],
        "Secret" => vec![
            o["type"].as_str().unwrap_or("Opaque").into(),
            (map_len(&o["data"]) + map_len(&o["stringData"])).into(),
            age.into(),
        ],
        "ServiceAccount" => vec![o["secrets"].as_array().map_or(0, Vec::len).into(), age.into()],
        "Lease" => vec![spec["holderIdentity"].as_str().unwrap_or("").into(), age.into()],
        "EndpointSlice" => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .map(|p| p.iter().map(|x| int(&x["port"]).to_string()).collect())
                .unwrap_or_default();
            let eps: Vec<String> = o["endpoints"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .flat_map(|x| x["addresses"].as_array().cloned().unwrap_or_default())
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                o["addressType"].as_str().unwrap_or("").into(),
                none_if_empty(ports.join(",")).into(),
                none_if_empty(eps.join(",")).into(),
                age.into(),
            ]
        }
        _ => vec![age.into()],
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn row(res: &Resource, obj: &Value, now: u64) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    cells.extend(self::cells(res.kind, obj, now));
    let m = &obj["metadata"];
    let mut partial = json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": m["name"], "uid": m["uid"], "resourceVersion": m["resourceVersion"],
                     "creationTimestamp": m["creationTimestamp"]},
    });
    if let Some(ns) = m["namespace"].as_str() {
        partial["metadata"]["namespace"] = ns.into();
    }
    let mut row = serde_json::Map::new();
    row.insert("cells".into(), Value::Array(cells));
    row.insert("object".into(), partial);
    Value::Object(row)
}

/// A Table of `objects` (of kind `res`) at `resource_version`.
pub fn table(res: &Resource, objects: &[Value], resource_version: &str) -> Value {
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for (name, ty, priority) in columns(res.kind) {
        defs.push(json!({"name": name, "type": ty, "format": "", "description": "", "priority": priority}));
    }
    let now = now();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
    });
    // Moved in, not through `json!` (which would copy every row by serializing it).
    table["columnDefinitions"] = Value::Array(defs);
    table["rows"] = Value::Array(objects.iter().map(|o| row(res, o, now)).collect());
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::objects::rfc3339;
    use crate::api::resources::find;

    #[test]
    fn ages_read_as_kubectl_writes_them() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (50 * 3600, "2d2h"),
            (10 * 86_400, "10d"),
            (800 * 86_400, "2y70d"),
        ] {
            assert_eq!(human(secs), want, "{secs}");
        }
        assert_eq!(human(-5), "<invalid>");
        let t = 1_795_000_000;
        assert_eq!(parse_time(&rfc3339(t)), Some(t));
    }

    #[test]
    fn pods_and_deployments_get_kubernetes_columns() {
        let pods = find("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "creationTimestamp": rfc3339(now() - 30)},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [{"ready": true, "restartCount": 2, "state": {"running": {}}}, {"ready": false, "restartCount": 1, "state": {"running": {}}}]}});
        let t = table(pods, &[pod], "7");
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(
            (cells[0].as_str(), cells[1].as_str(), cells[2].as_str(), cells[3].as_str()),
            (Some("p"), Some("1/2"), Some("Running"), Some("3"))
        );
        assert_eq!((cells[5].as_str(), cells[6].as_str()), (Some("10.0.0.5"), Some("n1")));
        // As kubectl's printer: waiting reasons, init progress, restarts with their age.
        let crashing = json!({"metadata": {"name": "c"}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [{"ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": rfc3339(now() - 5)}}}]}});
        let (status, ready, restarts) = pod_status_column(&crashing, now());
        assert_eq!((status.as_str(), ready, restarts.as_str()), ("CrashLoopBackOff", 0, "4 (5s ago)"));
        let init = json!({"metadata": {"name": "i"}, "spec": {"initContainers": [{"name": "x"}, {"name": "y"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"restartCount": 0, "state": {"running": {}}}]}});
        assert_eq!(pod_status_column(&init, now()).0, "Init:1/2");
        let failed = json!({"metadata": {"name": "f"}, "status": {"phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 3}}}]}});
        assert_eq!(pod_status_column(&failed, now()).0, "ExitCode:3");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "ns");
        let deployments = find("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "d"}}, "template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let cells = &table(deployments, &[d], "1")["rows"][0]["cells"];
        assert_eq!(cells[1], "2/3");
        assert_eq!((cells[2].as_i64(), cells[3].as_i64()), (Some(3), Some(2)));
        assert_eq!(
            (cells[5].as_str(), cells[6].as_str(), cells[7].as_str()),
            (Some("c"), Some("nginx:1.25"), Some("app=d"))
        );
    }
}
