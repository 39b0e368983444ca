//! The scheduler and the workload controllers, driven with the real kubectl against
//! `keelson up --hollow N` (simulated nodes that run nothing and report pods Running):
//!
//! - a Deployment is placed and spread over the nodes, scaled up and down, rolled to a
//!   new image — the pod watch's history never shows fewer than `replicas -
//!   maxUnavailable` available pods nor a ReplicaSet with more than `replicas + maxSurge`
//!   — followed by `kubectl rollout status`, listed by `rollout history`, rolled back by
//!   `rollout undo`, paused and resumed, stuck until `ProgressDeadlineExceeded`, and
//!   deleted with and without its dependents (`--cascade=orphan`);
//! - a DaemonSet covers every node, and a node that joins later; Jobs complete, or stop
//!   at their backoffLimit with the Failed condition;
//! - taints, nodeSelector and anti-affinity keep pods where they are allowed; a pod that
//!   fits nowhere waits with a FailedScheduling event saying why and is placed once a
//!   node that fits joins;
//! - a node whose heartbeat stops goes NotReady with the unreachable taint and its pods
//!   are replaced on other nodes; the controllers' leader dies mid-scale and the new
//!   one finishes without any ReplicaSet exceeding its bound.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::api_watch::Api;
use crate::kubectl::{fails, kubectl, ok};
use crate::support::*;

const TOLERATE: &str = "tolerations: [{key: keelson.dev/hollow, operator: Exists}]";

fn deployment(replicas: u32, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 3, maxUnavailable: 2}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      {TOLERATE}
      containers: [{{name: c, image: \"{image}\"}}]
{extra}"
    )
}

fn apply(kubeconfig: &Path, scratch: &Path, name: &str, yaml: &str) -> String {
    let file = scratch.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    ok(kubeconfig, &["apply", "-f", file.to_str().unwrap()])
}

fn json(kubeconfig: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(kubeconfig, &all)).unwrap()
}

fn items(kubeconfig: &Path, args: &[&str]) -> Vec<Value> {
    json(kubeconfig, args)["items"].as_array().cloned().unwrap_or_default()
}

/// Running pods by node, for pods labelled `selector`.
fn placement(kubeconfig: &Path, selector: &str) -> BTreeMap<String, usize> {
    let mut by_node = BTreeMap::new();
    for p in items(kubeconfig, &["get", "pods", "-l", selector]) {
        if p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null() {
            *by_node.entry(p["spec"]["nodeName"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
        }
    }
    by_node
}

fn up(scratch: &Scratch, args: &[&str]) -> (Running, PathBuf) {
    let data = scratch.data();
    let mut all = vec!["up", "--agents", "0"];
    all.extend(args);
    let mut up = Running::start(&data, &all, &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(90));
    (up, data.join("kubeconfig"))
}

fn wait_nodes(kubeconfig: &Path, n: usize) {
    eventually(&format!("{n} Ready nodes"), Duration::from_secs(60), || {
        let ready = items(kubeconfig, &["get", "nodes"])
            .iter()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        ready == n
    });
}

/// Another agent of hollow nodes (`<name>.0` …), started by hand as a user would.
fn agent(data: &Path, scratch: &Path, name: &str, nodes: u32, extra: &[&str]) -> Running {
    let quic = std::fs::read_to_string(data.join("server-1").join("quic-addr")).unwrap();
    let peer = format!("server-1={}", quic.trim());
    let mut args = vec!["agent", "--name", name, "--hollow"];
    let n = nodes.to_string();
    args.push(&n);
    args.extend(["--peer", &peer]);
    args.extend(extra);
    Running::start(data, &args, &scratch.join(format!("{name}.log")))
}

/// Follows the pods labelled `app=web` from a watch, measuring after every event the
/// available pods (Ready, not being deleted) and each ReplicaSet's live pods: the
/// lowest and highest seen.
struct Bounds {
    events: mpsc::Receiver<Value>,
    pods: HashMap<String, Value>,
    lowest: usize,
    highest: usize,
}

impl Bounds {
    /// Starts the watch and takes in its opening events (one per pod already there, at
    /// least `present`) unmeasured: on a slow machine they can come after a short lull,
    /// and measured one by one they would read as pods going away.
    fn follow(api: &Api, present: usize) -> (std::process::Child, Self) {
        let (child, events) = api.watch("/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dweb");
        let mut bounds = Self { events, pods: HashMap::new(), lowest: usize::MAX, highest: 0 };
        eventually(&format!("the watch's opening {present} pods"), Duration::from_secs(30), || {
            bounds.drain(false);
            bounds.pods.len() >= present
        });
        (child, bounds)
    }

    /// Takes in every event that arrived, measuring after each.
    fn drain(&mut self, measure: bool) {
        while let Ok(e) = self.events.recv_timeout(Duration::from_millis(200)) {
            let name = e["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string();
            match e["type"].as_str() {
                Some("DELETED") => {
                    self.pods.remove(&name);
                }
                Some("ADDED" | "MODIFIED") => {
                    self.pods.insert(name, e["object"].clone());
                }
                _ => continue,
            }
            if measure {
                let live: Vec<&Value> = self
                    .pods
                    .values()
                    .filter(|p| {
                        p["metadata"]["deletionTimestamp"].is_null()
                            && p["status"]["phase"] != "Succeeded"
                            && p["status"]["phase"] != "Failed"
                    })
                    .collect();
                let available = live
                    .iter()
                    .filter(|p| {
                        p["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                    .count();
                let mut per_set: HashMap<String, usize> = HashMap::new();
                for p in &live {
                    let owner = p["metadata"]["ownerReferences"][0]["name"].as_str().unwrap_or_default().to_string();
                    *per_set.entry(owner).or_insert(0) += 1;
                }
                self.lowest = self.lowest.min(available);
                self.highest = self.highest.max(per_set.values().copied().max().unwrap_or(0));
            }
        }
    }
}

#[test]
fn deployments_place_scale_roll_out_and_roll_back_with_kubectl() {
    let _serial = serial();
    let scratch = Scratch::new("deployments");
    let (_up, kc) = up(&scratch, &["--servers", "1", "--hollow", "5"]);
    wait_nodes(&kc, 5);
    let api = Api::of(&scratch.data());

    // Ten replicas, bound and spread: two per node.
    apply(&kc, &scratch.0, "d1", &deployment(10, "nginx:1", ""));
    ok(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
    let spread = placement(&kc, "app=web");
    assert_eq!(spread.values().sum::<usize>(), 10, "{spread:?}");
    assert_eq!((spread.len(), spread.values().max()), (5, Some(&2)), "spread over every node: {spread:?}");

    ok(&kc, &["scale", "deploy/web", "--replicas=50"]);
    ok(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
    eventually("50 pods running", Duration::from_secs(60), || placement(&kc, "app=web").values().sum::<usize>() == 50);
    ok(&kc, &["scale", "deploy/web", "--replicas=3"]);
    eventually("3 pods left", Duration::from_secs(60), || items(&kc, &["get", "pods", "-l", "app=web"]).len() == 3);
    ok(&kc, &["scale", "deploy/web", "--replicas=10"]);
    ok(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);

    // A rolling update, bounded at every event of the pods' watch.
    let (mut watch, mut bounds) = Bounds::follow(&api, 10);
    ok(&kc, &["set", "image", "deploy/web", "c=nginx:2"]);
    let status = ok(&kc, &["rollout", "status", "deploy/web", "--timeout=90s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    eventually("every pod on the new template", Duration::from_secs(30), || {
        bounds.drain(true);
        let pods = items(&kc, &["get", "pods", "-l", "app=web"]);
        pods.len() == 10 && pods.iter().all(|p| p["spec"]["containers"][0]["image"] == "nginx:2")
    });
    bounds.drain(true);
    let _ = watch.kill();
    assert!(bounds.lowest >= 10 - 2, "available pods dropped to {} (< replicas - maxUnavailable = 8)", bounds.lowest);
    assert!(bounds.highest <= 10 + 3, "a ReplicaSet owned {} pods (> replicas + maxSurge = 13)", bounds.highest);
    assert!(bounds.highest >= 10, "the watch saw the rollout ({} at most per ReplicaSet)", bounds.highest);

    // History, undo: the first template is back, as revision 3.
    let history = ok(&kc, &["rollout", "history", "deploy/web"]);
    assert!(history.contains("REVISION") && history.contains("\n1 ") && history.contains("\n2 "), "{history}");
    ok(&kc, &["rollout", "undo", "deploy/web"]);
    ok(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
    let d = json(&kc, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1");
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    let history = ok(&kc, &["rollout", "history", "deploy/web"]);
    assert!(history.contains("\n2 ") && history.contains("\n3 ") && !history.contains("\n1 "), "{history}");
    assert_eq!(items(&kc, &["get", "rs", "-l", "app=web"]).len(), 2, "undo reuses the first ReplicaSet");

    // Paused: a new template makes no ReplicaSet until resumed.
    ok(&kc, &["rollout", "pause", "deploy/web"]);
    ok(&kc, &["set", "image", "deploy/web", "c=nginx:3"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(items(&kc, &["get", "rs", "-l", "app=web"]).len(), 2, "paused: no new ReplicaSet");
    ok(&kc, &["rollout", "resume", "deploy/web"]);
    ok(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(items(&kc, &["get", "rs", "-l", "app=web"]).len(), 3);

    // A template no node can take: the rollout reports its deadline passed.
    let stuck = r#"{"spec":{"progressDeadlineSeconds":3,"template":{"spec":{"nodeSelector":{"nowhere":"x"}}}}}"#;
    ok(&kc, &["patch", "deploy/web", "-p", stuck]);
    let err = fails(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    let d = json(&kc, &["get", "deploy", "web"]);
    let progressing =
        d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Progressing").cloned().unwrap();
    assert_eq!(
        (progressing["status"].as_str(), progressing["reason"].as_str()),
        (Some("False"), Some("ProgressDeadlineExceeded"))
    );
    let pending = items(&kc, &["get", "pods", "-l", "app=web", "--field-selector", "status.phase=Pending"]);
    assert!(!pending.is_empty(), "the new pods wait for a node");
    let describe = ok(&kc, &["describe", "pod", pending[0]["metadata"]["name"].as_str().unwrap()]);
    assert!(
        describe.contains("FailedScheduling") && describe.contains("didn't match Pod's node affinity/selector"),
        "{describe}"
    );

    // Deleting: with its dependents by default, without them when orphaned.
    ok(&kc, &["delete", "deploy", "web"]);
    eventually("ReplicaSets and pods collected", Duration::from_secs(60), || {
        items(&kc, &["get", "rs,pods", "-l", "app=web"]).is_empty()
    });
    apply(&kc, &scratch.0, "d2", &deployment(4, "nginx:1", ""));
    ok(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
    ok(&kc, &["delete", "deploy", "web", "--cascade=orphan", "--timeout=30s"]);
    assert!(kubectl(&kc, &["get", "deploy", "web"]).status.code() != Some(0), "the Deployment is gone");
    let sets = items(&kc, &["get", "rs", "-l", "app=web"]);
    assert_eq!(sets.len(), 1);
    assert!(
        sets[0]["metadata"]["ownerReferences"].as_array().is_none_or(|r| r.is_empty()),
        "released: {}",
        sets[0]["metadata"]
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(placement(&kc, "app=web").values().sum::<usize>(), 4, "orphaned pods keep running");
}

#[test]
fn daemonsets_jobs_and_placement_rules() {
    let _serial = serial();
    let scratch = Scratch::new("placement");
    let (_up, kc) = up(&scratch, &["--servers", "1", "--hollow", "3"]);
    let data = scratch.data();
    wait_nodes(&kc, 3);

    // One daemon pod per node, and one on a node that joins later.
    let ds = format!(
        "apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      {TOLERATE}
      containers: [{{name: c, image: agent}}]
"
    );
    apply(&kc, &scratch.0, "ds", &ds);
    ok(&kc, &["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert_eq!(placement(&kc, "app=agent").values().copied().collect::<Vec<_>>(), [1, 1, 1]);
    let _late = agent(&data, &scratch.0, "late", 1, &[]);
    eventually("a daemon pod on the node that joined", Duration::from_secs(60), || {
        placement(&kc, "app=agent").get("late.0") == Some(&1)
    });

    // Jobs: five completions two at a time; a failing one stops at its backoff limit.
    let job = |name: &str, phase: &str, spec: &str| {
        format!(
            "apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{spec}
  template:
    metadata: {{annotations: {{keelson.dev/hollow-phase: {phase}}}}}
    spec:
      restartPolicy: Never
      {TOLERATE}
      containers: [{{name: c, image: job}}]
"
        )
    };
    apply(&kc, &scratch.0, "ok", &job("ok", "Succeeded", "  completions: 5\n  parallelism: 2"));
    apply(&kc, &scratch.0, "bad", &job("bad", "Failed", "  backoffLimit: 2"));
    ok(&kc, &["wait", "--for=condition=complete", "job/ok", "--timeout=60s"]);
    ok(&kc, &["wait", "--for=condition=failed", "job/bad", "--timeout=60s"]);
    let done = json(&kc, &["get", "job", "ok"]);
    assert_eq!(done["status"]["succeeded"], 5);
    let failed = json(&kc, &["get", "job", "bad"]);
    assert_eq!(failed["status"]["failed"], 3, "backoffLimit 2: the third failure ends it");
    assert_eq!(failed["status"]["conditions"][0]["reason"], "BackoffLimitExceeded");

    // Taints: a pod that does not tolerate the hollow taint goes nowhere, and says why.
    let pod = |name: &str, spec: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n{spec}\n  containers: [{{name: c, image: x}}]\n")
    };
    apply(&kc, &scratch.0, "plain", &pod("plain", ""));
    eventually("FailedScheduling for the taint", Duration::from_secs(30), || {
        ok(&kc, &["describe", "pod", "plain"]).contains("4 node(s) had untolerated taint {keelson.dev/hollow: true}")
    });
    assert_eq!(json(&kc, &["get", "pod", "plain"])["spec"]["nodeName"], Value::Null);

    // nodeSelector: only the labelled node.
    ok(&kc, &["label", "node", "hollow.1", "disk=ssd"]);
    for i in 0..3 {
        apply(
            &kc,
            &scratch.0,
            &format!("ssd{i}"),
            &pod(&format!("ssd{i}"), &format!("  {TOLERATE}\n  nodeSelector: {{disk: ssd}}")),
        );
    }
    eventually("selected pods placed", Duration::from_secs(30), || {
        (0..3).all(|i| json(&kc, &["get", "pod", &format!("ssd{i}")])["spec"]["nodeName"] == "hollow.1")
    });

    // Required anti-affinity by hostname: four replicas on four nodes, a fifth waits.
    let anti = "      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - {labelSelector: {matchLabels: {app: solo}}, topologyKey: kubernetes.io/hostname}";
    let solo = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: solo}}
spec:
  replicas: 5
  selector: {{matchLabels: {{app: solo}}}}
  template:
    metadata: {{labels: {{app: solo}}}}
    spec:
      {TOLERATE}
{anti}
      containers: [{{name: c, image: x}}]
"
    );
    apply(&kc, &scratch.0, "solo", &solo);
    eventually("four apart, one waiting", Duration::from_secs(60), || {
        let spread = placement(&kc, "app=solo");
        spread.len() == 4 && spread.values().all(|n| *n == 1)
    });
    let waiting = items(&kc, &["get", "pods", "-l", "app=solo", "--field-selector", "status.phase=Pending"]);
    assert_eq!(waiting.len(), 1);
    let why = ok(&kc, &["describe", "pod", waiting[0]["metadata"]["name"].as_str().unwrap()]);
    assert!(why.contains("didn't match pod anti-affinity rules"), "{why}");

    // Too big for every node: Pending with the reason, placed once a big node joins.
    let big = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: big}}\nspec:\n  {TOLERATE}\n  \
         containers: [{{name: c, image: x, resources: {{requests: {{cpu: \"32\"}}}}}}]\n"
    );
    apply(&kc, &scratch.0, "big", &big);
    eventually("FailedScheduling for cpu", Duration::from_secs(30), || {
        ok(&kc, &["describe", "pod", "big"]).contains("Insufficient cpu")
    });
    assert_eq!(json(&kc, &["get", "pod", "big"])["spec"]["nodeName"], Value::Null);
    let _big = agent(&data, &scratch.0, "roomy", 1, &["--cpu", "64"]);
    eventually("the big pod on the big node", Duration::from_secs(60), || {
        json(&kc, &["get", "pod", "big"])["spec"]["nodeName"] == "roomy.0"
    });
}

#[test]
fn lost_nodes_and_a_lost_leader_are_replaced() {
    let _serial = serial();
    let scratch = Scratch::new("losses");
    let (_up, kc) = up(&scratch, &["--servers", "3", "--hollow", "3"]);
    let data = scratch.data();
    let spare = agent(&data, &scratch.0, "spare", 2, &[]);
    wait_nodes(&kc, 5);
    apply(&kc, &scratch.0, "d", &deployment(6, "nginx:1", ""));
    ok(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);

    // The `hollow` agent stops (SIGSTOP: silent, not dead): its nodes go NotReady and
    // their pods come back on `spare`'s nodes.
    let hollow_pid: u32 = std::fs::read_to_string(data.join("hollow").join("admin.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["pid"].as_u64())
        .expect("the hollow agent's door names its pid") as u32;
    unsafe { libc::kill(hollow_pid as i32, libc::SIGSTOP) };
    eventually("six pods running on spare's nodes", Duration::from_secs(60), || {
        let spread = placement(&kc, "app=web");
        spread.iter().filter(|(n, _)| n.starts_with("spare.")).map(|(_, c)| c).sum::<usize>() == 6
    });
    let nodes = ok(&kc, &["get", "nodes"]);
    assert!(nodes.lines().any(|l| l.starts_with("hollow.0") && l.contains("NotReady")), "{nodes}");
    let describe = ok(&kc, &["describe", "node", "hollow.0"]);
    assert!(describe.contains("node.kubernetes.io/unreachable:NoExecute"), "{describe}");
    assert!(describe.contains("Kubelet stopped posting node status."), "{describe}");
    assert!(describe.contains("NodeNotReady"), "{describe}");
    unsafe { libc::kill(hollow_pid as i32, libc::SIGCONT) };
    wait_nodes(&kc, 5);
    eventually("the taint is lifted", Duration::from_secs(30), || {
        !ok(&kc, &["describe", "node", "hollow.0"]).contains("unreachable")
    });
    drop(spare);

    // The controllers' leader dies while the Deployment grows: another member finishes
    // the job, and no ReplicaSet ever owns more pods than it may.
    let api = Api::of(&data);
    let (mut watch, mut bounds) = Bounds::follow(&api, 6);
    let leader = ok_leader(&data);
    ok(&kc, &["scale", "deploy/web", "--replicas=30"]);
    run_ok(&data, &["chaos", "kill", &format!("/up/{}", leader.0), "--mode", "panic"]);
    eventually("30 pods running after the handover", Duration::from_secs(90), || {
        bounds.drain(true);
        kubectl(&kc, &["get", "pods", "-l", "app=web", "-o", "json"]).status.success()
            && placement(&kc, "app=web").values().sum::<usize>() == 30
    });
    bounds.drain(true);
    let _ = watch.kill();
    assert!(bounds.highest <= 30, "a ReplicaSet owned {} pods (> 30) across the handover", bounds.highest);
    let next = ok_leader(&data);
    assert_ne!(next.1, leader.1, "a new term leads (fencing epoch {} → {})", leader.1, next.1);
}

/// The member holding the controllers' lease, and its term's fencing epoch.
fn ok_leader(data: &Path) -> (String, u64) {
    let mut holder = None;
    eventually("a controller leader", Duration::from_secs(30), || {
        let out = run(data, &["kv", "get", "/keelson/leader/controllers", "--json"]);
        holder = serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|v| {
            let value: Value = serde_json::from_str(v["value"].as_str()?).ok()?;
            Some((value["member"].as_str()?.to_string(), v["create_revision"].as_u64()?))
        });
        holder.is_some()
    });
    holder.unwrap()
}
