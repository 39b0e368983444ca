//! The real kubectl against `keelson up`, with the kubeconfig `up` writes and nothing
//! else: discovery, objects from manifests, reads in every output, labels, patches,
//! replace with a stale resourceVersion, deletes, and the errors Kubernetes prints.
//!
//! Expected texts are Kubernetes' own (kubectl's `<resource>/<name> created` lines, the
//! API server's `Status` messages), not copies of keelson's output.
//!
//! kubectl 1.33's generators (`create namespace|configmap|secret|deployment|service|job`,
//! `run`) send protobuf bodies; `create -f` and `replace -f` send JSON, with
//! `fieldValidation=Strict` once `/openapi/v3` shows the server validates fields.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;

pub(crate) fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl").args(args).env("KUBECONFIG", kubeconfig).output().expect("kubectl runs")
}

/// The pods `selector` picks, as `kubectl get -o json` lists them.
pub(crate) fn pods(kubeconfig: &Path, selector: &str) -> Vec<serde_json::Value> {
    let all: serde_json::Value =
        serde_json::from_str(&ok(kubeconfig, &["get", "pods", "-l", selector, "-o", "json"])).unwrap();
    all["items"].as_array().cloned().unwrap_or_default()
}

/// Ready and not being deleted.
pub(crate) fn ready(pod: &serde_json::Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The ready pods `selector` picks.
pub(crate) fn ready_pods(kubeconfig: &Path, selector: &str) -> Vec<serde_json::Value> {
    pods(kubeconfig, selector).into_iter().filter(ready).collect()
}

pub(crate) fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, args);
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn fails(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, args);
    assert!(!out.status.success(), "kubectl {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

const MANIFEST: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: web
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: web
  labels: {app: web}
data:
  a: b
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: front
  namespace: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: front}
  template:
    metadata:
      labels: {app: front}
    spec:
      containers:
      - name: main
        image: nginx:1.25
";

#[test]
fn the_real_kubectl_creates_reads_changes_and_deletes_objects() {
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        panic!("kubectl is not installed (every machine of this kind has it)");
    }
    let _one = serial();
    let scratch = Scratch::new("kubectl");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    let line = up.wait_for_line("export KUBECONFIG=", Duration::from_secs(60));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let kc = std::path::PathBuf::from(line.rsplit_once("KUBECONFIG=").unwrap().1.trim());
    assert!(kc.is_absolute() && kc.exists(), "{line}");

    // Discovery: the server's version decides the kubectl that runs; resources listed.
    let version = ok(&kc, &["version"]);
    assert!(version.contains("Server Version: v1.33."), "{version}");
    let resources = ok(&kc, &["api-resources"]);
    for row in ["configmaps", "cm", "deployments", "deploy", "apps/v1", "namespaces", "ns"] {
        assert!(resources.contains(row), "{row} missing from:\n{resources}");
    }
    eventually("the default namespaces", Duration::from_secs(30), || {
        ok(&kc, &["get", "namespaces", "-o", "name"]).contains("namespace/default")
    });

    // Objects from a manifest.
    let manifest = scratch.0.join("web.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let created = ok(&kc, &["create", "-f", manifest.to_str().unwrap()]);
    assert_eq!(created, "namespace/web created\nconfigmap/cfg created\ndeployment.apps/front created\n");
    let yaml = ok(&kc, &["-n", "web", "get", "configmap", "cfg", "-o", "yaml"]);
    for field in ["uid: ", "creationTimestamp: ", "resourceVersion: ", "namespace: web", "  a: b"] {
        assert!(yaml.contains(field), "{field} missing:\n{yaml}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&kc, &["-n", "web", "get", "deploy", "front", "-o", "json"])).unwrap();
    assert_eq!(json["metadata"]["generation"], 1);
    assert_eq!(json["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.25");

    // kubectl's generators (protobuf bodies) and scale.
    assert_eq!(ok(&kc, &["create", "namespace", "gen"]), "namespace/gen created\n");
    assert_eq!(ok(&kc, &["-n", "gen", "create", "configmap", "c", "--from-literal=k=v"]), "configmap/c created\n");
    assert_eq!(
        ok(&kc, &["-n", "gen", "create", "secret", "generic", "s", "--from-literal=pw=hunter2"]),
        "secret/s created\n"
    );
    assert_eq!(ok(&kc, &["-n", "gen", "get", "secret", "s", "-o", "jsonpath={.data.pw}"]), "aHVudGVyMg==");
    assert_eq!(
        ok(&kc, &["-n", "gen", "create", "deployment", "d", "--image=nginx:1.25", "--replicas=2", "--port=80"]),
        "deployment.apps/d created\n"
    );
    assert_eq!(
        ok(
            &kc,
            &[
                "-n",
                "gen",
                "get",
                "deploy",
                "d",
                "-o",
                "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort}"
            ]
        ),
        "2 80"
    );
    assert_eq!(ok(&kc, &["-n", "gen", "create", "service", "clusterip", "d", "--tcp=80:8080"]), "service/d created\n");
    assert_eq!(
        ok(&kc, &["-n", "gen", "get", "svc", "d", "-o", "jsonpath={.spec.ports[0].targetPort} {.spec.selector.app}"]),
        "8080 d"
    );
    assert_eq!(ok(&kc, &["-n", "gen", "scale", "deploy", "d", "--replicas=5"]), "deployment.apps/d scaled\n");
    assert_eq!(
        ok(&kc, &["-n", "gen", "get", "deploy", "d", "-o", "jsonpath={.spec.replicas} {.metadata.generation}"]),
        "5 2"
    );

    // Server-side printing: the columns Kubernetes prints for each kind.
    let header = |out: &str| out.lines().next().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(header(&ok(&kc, &["-n", "gen", "get", "deploy"])), "NAME READY UP-TO-DATE AVAILABLE AGE");
    assert_eq!(
        header(&ok(&kc, &["-n", "gen", "get", "deploy", "-o", "wide"])),
        "NAME READY UP-TO-DATE AVAILABLE AGE CONTAINERS IMAGES SELECTOR"
    );
    assert_eq!(header(&ok(&kc, &["-n", "gen", "get", "svc"])), "NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE");
    assert_eq!(header(&ok(&kc, &["-n", "gen", "get", "secrets"])), "NAME TYPE DATA AGE");
    assert_eq!(header(&ok(&kc, &["get", "cm", "-A"])), "NAMESPACE NAME DATA AGE");
    assert_eq!(header(&ok(&kc, &["get", "ns"])), "NAME STATUS AGE");
    // No node runs pods here: the Deployment's five are made (up to date) and none is ready.
    eventually("the deployment's pods made", Duration::from_secs(30), || {
        let row = ok(&kc, &["-n", "gen", "get", "deploy", "d", "--no-headers"]);
        row.split_whitespace().take(4).collect::<Vec<_>>() == ["d", "0/5", "5", "0"]
    });
    let described = ok(&kc, &["-n", "gen", "describe", "cm", "c"]);
    assert!(described.contains("Name:         c") && described.contains("Events:  <none>"), "{described}");

    // `get -w` sees a change another command makes.
    let mut watch = std::process::Command::new("kubectl")
        .args(["-n", "gen", "get", "cm", "c", "-w", "--no-headers"])
        .env("KUBECONFIG", &kc)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    ok(&kc, &["-n", "gen", "label", "cm", "c", "seen=yes"]);
    std::thread::sleep(Duration::from_millis(1_500));
    let _ = watch.kill();
    let seen = String::from_utf8(watch.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(seen.lines().filter(|l| l.starts_with("c ")).count(), 2, "the object, then its change:\n{seen}");

    // Labels, annotations, selectors, patches.
    assert_eq!(ok(&kc, &["-n", "web", "label", "cm", "cfg", "tier=front"]), "configmap/cfg labeled\n");
    assert_eq!(ok(&kc, &["-n", "web", "annotate", "cm", "cfg", "note=hi"]), "configmap/cfg annotated\n");
    assert_eq!(ok(&kc, &["get", "cm", "-A", "-l", "tier in (front),app", "-o", "name"]), "configmap/cfg\n");
    assert_eq!(ok(&kc, &["get", "cm", "-A", "-l", "tier=back", "-o", "name"]), "");
    let by_field = ok(&kc, &["get", "cm", "-A", "--field-selector", "metadata.name=cfg"]);
    assert!(by_field.starts_with("NAMESPACE") && by_field.contains("web") && by_field.contains("cfg"), "{by_field}");
    ok(
        &kc,
        &["-n", "web", "patch", "cm", "cfg", "--type=json", "-p", r#"[{"op":"add","path":"/data/c","value":"d"}]"#],
    );
    ok(&kc, &["-n", "web", "patch", "cm", "cfg", "--type=merge", "-p", r#"{"data":{"e":"f"}}"#]);
    assert_eq!(ok(&kc, &["-n", "web", "get", "cm", "cfg", "-o", "jsonpath={.data}"]), r#"{"a":"b","c":"d","e":"f"}"#);
    ok(&kc, &["-n", "web", "patch", "deploy", "front", "--type=merge", "-p", r#"{"spec":{"replicas":3}}"#]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&kc, &["-n", "web", "get", "deploy", "front", "-o", "json"])).unwrap();
    assert_eq!((json["spec"]["replicas"].as_u64(), json["metadata"]["generation"].as_u64()), (Some(3), Some(2)));

    // Replace with a stale resourceVersion: Kubernetes' conflict, nothing changed.
    let stale = ok(&kc, &["-n", "web", "get", "cm", "cfg", "-o", "json"]);
    ok(&kc, &["-n", "web", "label", "cm", "cfg", "moved=on"]);
    let stale_file = scratch.0.join("stale.json");
    std::fs::write(&stale_file, stale.replace("\"a\": \"b\"", "\"a\": \"stale\"")).unwrap();
    let err = fails(&kc, &["replace", "-f", stale_file.to_str().unwrap()]);
    assert!(
        err.contains("Error from server (Conflict)")
            && err.contains("Operation cannot be fulfilled on configmaps \"cfg\": the object has been modified; please apply your changes to the latest version and try again"),
        "{err}"
    );
    assert_eq!(ok(&kc, &["-n", "web", "get", "cm", "cfg", "-o", "jsonpath={.data.a}"]), "b");

    // Errors, as Kubernetes words them, and nothing changed.
    let err = fails(&kc, &["create", "-f", manifest.to_str().unwrap()]);
    assert!(
        err.contains("Error from server (AlreadyExists): error when creating")
            && err.contains("namespaces \"web\" already exists"),
        "{err}"
    );
    assert_eq!(
        fails(&kc, &["-n", "web", "get", "cm", "nope"]),
        "Error from server (NotFound): configmaps \"nope\" not found\n"
    );
    let bad_label = scratch.0.join("bad.yaml");
    std::fs::write(
        &bad_label,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n  namespace: web\n  labels: {app: \"not ok!\"}\n",
    )
    .unwrap();
    let err = fails(&kc, &["create", "-f", bad_label.to_str().unwrap()]);
    // kubectl words a 422 itself: "The <Kind> "<name>" is invalid: <causes>".
    assert!(
        err.contains("The ConfigMap \"bad\" is invalid: metadata.labels: Invalid value: \"not ok!\": a valid label must be an empty string"),
        "{err}"
    );
    let wrong = scratch.0.join("wrong-token");
    let admin_token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    std::fs::write(
        &wrong,
        std::fs::read_to_string(&kc).unwrap().replace(admin_token.trim(), "not-the-token-0123456789"),
    )
    .unwrap();
    let err = fails(&wrong, &["get", "cm", "-n", "web"]);
    assert!(err.contains("error: You must be logged in to the server (Unauthorized)"), "{err}");

    // Roles: a read-only user reads and may not write; a node may not touch a pod bound
    // to another node. Both get Kubernetes' 403, and nothing changes.
    let made = run_ok(&data, &["kubeconfig", "--role", "read-only", "--user", "viewer"]);
    let viewer = std::path::PathBuf::from(made.trim().strip_prefix("export KUBECONFIG=").unwrap());
    assert!(ok(&viewer, &["-n", "web", "get", "cm", "cfg", "-o", "name"]).contains("configmap/cfg"));
    let err = fails(&viewer, &["-n", "web", "delete", "cm", "cfg"]);
    assert_eq!(
        err,
        "Error from server (Forbidden): configmaps \"cfg\" is forbidden: User \"viewer\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"web\"\n"
    );
    let pod = scratch.0.join("pod.yaml");
    std::fs::write(&pod, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: web\nspec:\n  nodeName: n2\n  containers:\n  - name: c\n    image: busybox:1.36\n").unwrap();
    ok(&kc, &["create", "-f", pod.to_str().unwrap()]);
    let made = run_ok(&data, &["kubeconfig", "--role", "node", "--node", "n1"]);
    let node = std::path::PathBuf::from(made.trim().strip_prefix("export KUBECONFIG=").unwrap());
    let err = fails(&node, &["-n", "web", "label", "pod", "p", "touched=yes"]);
    assert!(err.contains("Error from server (Forbidden): pods \"p\" is forbidden: User \"system:node:n1\" cannot patch resource \"pods\""), "{err}");
    assert_eq!(ok(&kc, &["-n", "web", "get", "pod", "p", "-o", "jsonpath={.metadata.labels}"]), "");
    // An unknown field: kubectl leaves validation to the server, which refuses it.
    let typo = scratch.0.join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\n  namespace: web\ndatta:\n  a: b\n",
    )
    .unwrap();
    let err = fails(&kc, &["create", "-f", typo.to_str().unwrap()]);
    assert!(
        err.contains("Error from server (BadRequest): error when creating") && err.contains("ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"datta\""),
        "{err}"
    );
    assert!(fails(&kc, &["-n", "web", "get", "cm", "typo"]).contains("not found"));
    // A node identity by client certificate (`n1.agent.keelson` from the cluster CA):
    // its own Node, yes; another's, no.
    let nodes = scratch.0.join("nodes.yaml");
    std::fs::write(
        &nodes,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: n2\n",
    )
    .unwrap();
    ok(&kc, &["create", "-f", nodes.to_str().unwrap()]);
    let made = run_ok(&data, &["kubeconfig", "--role", "node", "--node", "n1", "--cert"]);
    let by_cert = std::path::PathBuf::from(made.trim().strip_prefix("export KUBECONFIG=").unwrap());
    assert!(std::fs::read_to_string(&by_cert).unwrap().contains("client-certificate:"));
    assert_eq!(ok(&by_cert, &["label", "node", "n1", "up=yes"]), "node/n1 labeled\n");
    let err = fails(&by_cert, &["label", "node", "n2", "up=yes"]);
    assert_eq!(
        err,
        "Error from server (Forbidden): nodes \"n2\" is forbidden: User \"system:node:n1\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope\n"
    );
    // Graceful deletion: pod p is bound to n2, which exists, so it is Terminating until
    // n2's kubelet ends it (there is none here); `--force --grace-period=0` ends it now.
    assert_eq!(ok(&kc, &["-n", "web", "delete", "pod", "p", "--wait=false"]), "pod \"p\" deleted\n");
    let row = ok(&kc, &["-n", "web", "get", "pod", "p", "--no-headers"]);
    assert_eq!(row.split_whitespace().nth(2), Some("Terminating"), "{row}");
    let forced = kubectl(&kc, &["-n", "web", "delete", "pod", "p", "--force", "--grace-period=0"]);
    assert!(forced.status.success());
    assert_eq!(String::from_utf8_lossy(&forced.stdout), "pod \"p\" force deleted\n");
    let warning = String::from_utf8_lossy(&forced.stderr);
    assert!(warning.starts_with("Warning: Immediate deletion does not wait for confirmation"), "{warning}");
    let gone = fails(&kc, &["-n", "web", "get", "pod", "p"]);
    assert_eq!(gone, "Error from server (NotFound): pods \"p\" not found\n");
    // A missing required field: Kubernetes' 422, naming the field.
    let no_image = scratch.0.join("no-image.yaml");
    std::fs::write(
        &no_image,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: q\n  namespace: web\nspec:\n  containers:\n  - name: c\n",
    )
    .unwrap();
    let err = fails(&kc, &["create", "-f", no_image.to_str().unwrap()]);
    assert!(err.contains("The Pod \"q\" is invalid: spec.containers[0].image: Required value"), "{err}");

    // Finalizers: a delete only marks the object; removing the last finalizer removes it.
    let held = scratch.0.join("held.yaml");
    std::fs::write(&held, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: web\n  finalizers: [example.com/hold]\n").unwrap();
    ok(&kc, &["create", "-f", held.to_str().unwrap()]);
    assert_eq!(ok(&kc, &["-n", "web", "delete", "cm", "held", "--wait=false"]), "configmap \"held\" deleted\n");
    assert!(!ok(&kc, &["-n", "web", "get", "cm", "held", "-o", "jsonpath={.metadata.deletionTimestamp}"]).is_empty());
    ok(
        &kc,
        &[
            "-n",
            "web",
            "patch",
            "cm",
            "held",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    );
    assert!(fails(&kc, &["-n", "web", "get", "cm", "held"]).contains("configmaps \"held\" not found"));

    // Deletes: one object, then a namespace with what is left in it.
    assert_eq!(ok(&kc, &["-n", "web", "delete", "cm", "cfg"]), "configmap \"cfg\" deleted\n");
    assert_eq!(ok(&kc, &["delete", "namespace", "web"]), "namespace \"web\" deleted\n");
    assert_eq!(ok(&kc, &["get", "deploy", "-A", "-o", "name"]), "deployment.apps/d\n", "web's deployment went with it");
    let err = fails(&kc, &["get", "ns", "web"]);
    assert!(err.contains("namespaces \"web\" not found"), "{err}");

    up.stop(Duration::from_secs(60));
}
