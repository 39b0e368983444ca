//! `kubectl apply -f` as users run it, again and again on an edited file, with the real
//! kubectl and no extra flags: created; applied unchanged → every object `unchanged`
//! and nothing written; edited (an env value, an image, a port added, a container and a
//! label removed, containers reordered) → exactly those changes, asserted field by
//! field on the stored objects, with what the server or another client set kept.
//! kubectl sends strategic merge patches for these updates (KUBECTL.md §7). `kubectl
//! diff` shows a pending edit through a server-side dry run and changes nothing; `kubectl
//! explain` prints nested fields' docs from the OpenAPI schemas.

use std::time::Duration;

use serde_json::Value;

use crate::kubectl::{kubectl, ok};
use crate::support::*;

const PLAN: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: front, team: blue}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: main
        image: nginx:1.25
        env:
        - {name: MODE, value: fast}
        - {name: COLOR, value: red}
        ports:
        - {containerPort: 80, name: http}
      - name: sidecar
        image: busybox:1.36
        command: [sleep, infinity]
      - name: logger
        image: busybox:1.36
        command: [tail, -f, /dev/null]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 80}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: shop
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData: {password: hunter2}
";

/// The plan after a user's edit: COLOR blue, image 1.26, port 443 added, the sidecar
/// and the `team` label removed, the logger moved before main.
const EDITED: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: front}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: logger
        image: busybox:1.36
        command: [tail, -f, /dev/null]
      - name: main
        image: nginx:1.26
        env:
        - {name: MODE, value: fast}
        - {name: COLOR, value: blue}
        ports:
        - {containerPort: 80, name: http}
        - {containerPort: 443, name: https}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 80}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: shop
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData: {password: hunter2}
";

fn get(kc: &std::path::Path, what: &str) -> Value {
    serde_json::from_str(&ok(kc, &["-n", "shop", "get", what, "-o", "json"])).unwrap()
}

fn versions(kc: &std::path::Path) -> Vec<String> {
    ["deploy/web", "svc/web", "cm/cfg", "secret/creds"]
        .iter()
        .map(|w| get(kc, w)["metadata"]["resourceVersion"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn kubectl_apply_again_and_again_changes_exactly_what_the_file_changed() {
    let _one = serial();
    let scratch = Scratch::new("kubectl-apply");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let kc = data.join("kubeconfig");
    eventually("the default namespaces", Duration::from_secs(30), || {
        kubectl(&kc, &["get", "namespace", "default"]).status.success()
    });
    let plan = scratch.0.join("plan.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let file = plan.to_str().unwrap();

    assert_eq!(
        ok(&kc, &["apply", "-f", file]),
        "namespace/shop created\ndeployment.apps/web created\nservice/web created\nconfigmap/cfg created\nsecret/creds created\n"
    );
    let d = get(&kc, "deploy/web");
    let annotation = d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].as_str();
    assert!(annotation.is_some_and(|a| a.contains("\"nginx:1.25\"")), "{d}");

    // Unchanged: kubectl finds nothing to send, and nothing is written. (The Secret says
    // `configured`, as with Kubernetes: its stringData is folded into data and never read
    // back, so kubectl always patches it — kubernetes/kubernetes#87736 — and the server
    // finds nothing changed.)
    let before = versions(&kc);
    assert_eq!(
        ok(&kc, &["apply", "-f", file]),
        "namespace/shop unchanged\ndeployment.apps/web unchanged\nservice/web unchanged\nconfigmap/cfg unchanged\nsecret/creds configured\n"
    );
    assert_eq!(versions(&kc), before);

    // Someone else's change that the file does not mention: it must survive the apply.
    ok(&kc, &["-n", "shop", "annotate", "deploy/web", "owner=ops"]);
    ok(&kc, &["-n", "shop", "label", "svc/web", "scraped=yes"]);

    std::fs::write(&plan, EDITED).unwrap();
    assert_eq!(
        ok(&kc, &["apply", "-f", file]),
        "namespace/shop unchanged\ndeployment.apps/web configured\nservice/web unchanged\nconfigmap/cfg unchanged\nsecret/creds configured\n"
    );
    let d = get(&kc, "deploy/web");
    let containers = d["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    let names: Vec<&str> = containers.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["logger", "main"], "the sidecar removed, the logger first: {d}");
    let main = &containers[1];
    assert_eq!(main["image"], "nginx:1.26");
    assert_eq!(main["env"], serde_json::json!([{"name": "MODE", "value": "fast"}, {"name": "COLOR", "value": "blue"}]));
    let ports: Vec<i64> =
        main["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].as_i64().unwrap()).collect();
    assert_eq!(ports, [80, 443]);
    assert_eq!(main["ports"][0]["name"], "http");
    assert_eq!(containers[0]["command"], serde_json::json!(["tail", "-f", "/dev/null"]));
    let labels = &d["metadata"]["labels"];
    assert_eq!(labels, &serde_json::json!({"app": "web", "tier": "front"}), "the team label removed: {d}");
    assert_eq!(d["metadata"]["annotations"]["owner"], "ops", "another client's annotation kept: {d}");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["generation"], 2, "one spec change, one generation: {d}");
    let svc = get(&kc, "svc/web");
    assert_eq!(svc["metadata"]["labels"]["scraped"], "yes");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);

    // Only an env value changes: the ports (not in the patch) stay as they are.
    std::fs::write(&plan, EDITED.replace("value: blue", "value: green")).unwrap();
    let out = ok(&kc, &["apply", "-f", file]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let d = get(&kc, "deploy/web");
    let main = &d["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(main["env"][1]["value"], "green");
    assert_eq!(main["ports"].as_array().map(Vec::len), Some(2), "{d}");

    // `kubectl diff`: the pending change (a server-side dry run), and nothing changes.
    let before = versions(&kc);
    std::fs::write(&plan, EDITED.replace("value: blue", "value: green").replace("nginx:1.26", "nginx:1.27")).unwrap();
    let diff = kubectl(&kc, &["diff", "-f", file]);
    let text = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(diff.status.code(), Some(1), "diff exits 1 when there are differences: {text}");
    assert!(text.contains("-        image: nginx:1.26") && text.contains("+        image: nginx:1.27"), "{text}");
    let changed: Vec<&str> = text
        .lines()
        .filter(|l| (l.starts_with('+') || l.starts_with('-')) && !l.starts_with("+++") && !l.starts_with("---"))
        .collect();
    assert!(changed.iter().all(|l| l.contains("image: nginx") || l.contains("generation:")), "only the image: {text}");
    assert_eq!(versions(&kc), before, "a diff writes nothing");
    assert_eq!(get(&kc, "deploy/web")["spec"]["template"]["spec"]["containers"][1]["image"], "nginx:1.26");

    // `kubectl explain` reads the field docs from the OpenAPI schemas, down to nested fields.
    let probe = ok(&kc, &["explain", "pod.spec.containers.readinessProbe"]);
    for line in ["KIND:       Pod", "VERSION:    v1", "FIELD: readinessProbe <Probe>", "DESCRIPTION:", "FIELDS:"] {
        assert!(probe.lines().any(|l| l == line), "{line:?} missing:\n{probe}");
    }
    assert!(probe.contains("Periodic probe of container service readiness"), "{probe}");
    assert!(probe.contains("  httpGet\t<HTTPGetAction>"), "{probe}");
    let strategy = ok(&kc, &["explain", "deployment.spec.strategy"]);
    for line in ["GROUP:      apps", "KIND:       Deployment", "FIELD: strategy <DeploymentStrategy>"] {
        assert!(strategy.lines().any(|l| l == line), "{line:?} missing:\n{strategy}");
    }
    assert!(strategy.contains("  rollingUpdate\t<RollingUpdateDeployment>"), "{strategy}");

    up.stop(Duration::from_secs(60));
}

/// `kubectl apply --server-side`: the same plan, applied and re-applied; a second field
/// manager changing a field the first owns gets Kubernetes' conflict, `--force-conflicts`
/// takes the field over, and `managedFields` shows both managers.
#[test]
fn server_side_apply_tracks_managers_and_their_conflicts() {
    let _one = serial();
    let scratch = Scratch::new("kubectl-ssa");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let kc = data.join("kubeconfig");
    eventually("the default namespaces", Duration::from_secs(30), || {
        kubectl(&kc, &["get", "namespace", "default"]).status.success()
    });
    let plan = scratch.0.join("plan.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let file = plan.to_str().unwrap();
    let applied = "namespace/shop serverside-applied\ndeployment.apps/web serverside-applied\nservice/web serverside-applied\nconfigmap/cfg serverside-applied\nsecret/creds serverside-applied\n";
    assert_eq!(ok(&kc, &["apply", "--server-side", "-f", file]), applied);
    let before = versions(&kc);
    assert_eq!(ok(&kc, &["apply", "--server-side", "-f", file]), applied);
    assert_eq!(versions(&kc), before, "re-applying the same plan writes nothing");

    // Another manager wants 5 replicas: the field is kubectl's, with another value.
    let scale = scratch.0.join("scale.yaml");
    std::fs::write(
        &scale,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  replicas: 5\n",
    )
    .unwrap();
    let scale = scale.to_str().unwrap();
    let refused = kubectl(&kc, &["apply", "--server-side", "--field-manager=ops", "-f", scale]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas"),
        "{err}"
    );
    assert!(err.contains("--force-conflicts"), "kubectl's advice follows: {err}");
    assert_eq!(get(&kc, "deploy/web")["spec"]["replicas"], 2, "a refused apply changes nothing");

    assert_eq!(
        ok(&kc, &["apply", "--server-side", "--field-manager=ops", "--force-conflicts", "-f", scale]),
        "deployment.apps/web serverside-applied\n"
    );
    let d: Value =
        serde_json::from_str(&ok(&kc, &["-n", "shop", "get", "deploy/web", "-o", "json", "--show-managed-fields"]))
            .unwrap();
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.25", "the rest stays: {d}");
    let managers: Vec<(&str, &str)> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["manager"].as_str().unwrap(), e["operation"].as_str().unwrap()))
        .collect();
    assert!(managers.contains(&("kubectl", "Apply")) && managers.contains(&("ops", "Apply")), "{managers:?}");
    let ops = d["metadata"]["managedFields"].as_array().unwrap().iter().find(|e| e["manager"] == "ops").unwrap();
    assert_eq!(ops["fieldsV1"], serde_json::json!({"f:spec": {"f:replicas": {}}}));

    // Now kubectl's plan (2 replicas) conflicts with ops.
    let back = kubectl(&kc, &["apply", "--server-side", "-f", file]);
    assert!(String::from_utf8_lossy(&back.stderr).contains("conflict with \"ops\""));

    up.stop(Duration::from_secs(60));
}
