//! The kubelet and the process runtime, driven with the real kubectl against
//! `keelson up` with real agents (issue P7):
//!
//! - the example Deployment (3 × `python3 -m http.server`, binding 0.0.0.0 in its own
//!   network namespace as root; binding its `POD_IP` in loopback mode) runs across both
//!   nodes and every pod answers HTTP at its pod IP from the host;
//! - `kubectl logs` (`--tail`, `-f`, `--previous`); a container killed from outside is
//!   restarted (RESTARTS 1); one that exits at once reaches CrashLoopBackOff with its
//!   back-off doubling; a failing liveness probe restarts, a failing readiness probe
//!   only makes the pod NotReady; init containers run first;
//! - a graceful delete: Terminating, SIGTERM, SIGKILL after the grace period, nothing
//!   left; kill -9 of an agent: its containers are adopted, not started again; a
//!   rolling update and `rollout undo`; a frozen agent's pods come back on the other
//!   node; Ctrl-C leaves no process, namespace or bridge behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kubectl::{kubectl, ok, pods, ready};
use crate::support::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn up(scratch: &Scratch, network: &str) -> (Running, PathBuf) {
    let data = scratch.data();
    let args = ["up", "--servers", "1", "--agents", "2", "--restart-backoff", "1s", "--network", network];
    let mut up = Running::start(&data, &args, &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(90));
    (up, data.join("kubeconfig"))
}

fn get(kubeconfig: &Path, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(kubeconfig, &all)).unwrap()
}

fn apply(kubeconfig: &Path, scratch: &Path, name: &str, yaml: &str) {
    let file = scratch.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    ok(kubeconfig, &["apply", "-f", file.to_str().unwrap()]);
}

/// An HTTP GET from the host; the status code.
fn http_status(ip: &str, port: u16, path: &str) -> Option<u16> {
    let mut s =
        std::net::TcpStream::connect_timeout(&format!("{ip}:{port}").parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}

fn wait_ready(kubeconfig: &Path, selector: &str, n: usize, limit: Duration) -> Vec<Value> {
    let mut last = Vec::new();
    eventually(&format!("{n} ready pods {selector}"), limit, || {
        last = pods(kubeconfig, selector).into_iter().filter(ready).collect();
        last.len() == n
    });
    last
}

/// The container's main process, from the process runtime's files.
fn container_pid(data: &Path, node: &str, uid: &str, container: &str, attempt: u32) -> Option<i32> {
    let dir = data.join(node).join("kubelet/containers").join(format!("{uid}.{container}.{attempt}"));
    let started: Value = serde_json::from_slice(&std::fs::read(dir.join("started.json")).ok()?).ok()?;
    started["pid"].as_i64().map(|p| p as i32)
}

fn attempts(data: &Path, node: &str, uid: &str) -> usize {
    std::fs::read_dir(data.join(node).join("kubelet/containers"))
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with(uid)).count())
        .unwrap_or(0)
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn status_of(kubeconfig: &Path, pod: &str) -> Value {
    get(kubeconfig, &["pod", pod])["status"].clone()
}

/// The example, as it is (netns) or binding its pod IP (loopback: pods share the host's ports).
fn example(network: &str) -> String {
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/web.yaml")).unwrap();
    match network {
        "loopback" => yaml.replace("\"--bind\", \"0.0.0.0\"", "\"--bind\", \"$(POD_IP)\""),
        _ => yaml,
    }
}

fn web_answers(kubeconfig: &Path) -> Vec<Value> {
    let web = wait_ready(kubeconfig, "app=web", 3, Duration::from_secs(60));
    for p in &web {
        let ip = p["status"]["podIP"].as_str().unwrap();
        let mut code = None;
        eventually(&format!("pod {ip} answers HTTP"), Duration::from_secs(10), || {
            code = http_status(ip, 8000, "/");
            code == Some(200)
        });
    }
    web
}

fn volumes(kc: &Path, scratch: &Path, marker: &str) {
    apply(
        kc,
        scratch,
        "volumes",
        &format!(
            "apiVersion: v1
kind: ConfigMap
metadata: {{name: vol-config}}
data: {{greeting: hello-from-a-configmap, app.conf: 'port=80'}}
---
apiVersion: v1
kind: Secret
metadata: {{name: vol-secret}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: vol, labels: {{t: vol}}}}
spec:
  volumes:
  - {{name: cfg, configMap: {{name: vol-config}}}}
  - {{name: sec, secret: {{secretName: vol-secret, defaultMode: 0400}}}}
  - {{name: scratch, emptyDir: {{}}}}
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'cat /etc/{marker}/cfg/greeting; echo; cat /etc/{marker}/secret/password; echo; echo made > /var/{marker}/file; sleep 3600']
    volumeMounts:
    - {{name: cfg, mountPath: /etc/{marker}/cfg, readOnly: true}}
    - {{name: sec, mountPath: /etc/{marker}/secret}}
    - {{name: scratch, mountPath: /var/{marker}}}
    - {{name: cfg, mountPath: /etc/{marker}/app.conf, subPath: app.conf}}
"
        ),
    );
    wait_ready(kc, "t=vol", 1, Duration::from_secs(30));
    eventually("the container read its volumes", Duration::from_secs(10), || {
        let logs = String::from_utf8_lossy(&kubectl(kc, &["logs", "vol"]).stdout).into_owned();
        logs.contains("hello-from-a-configmap") && logs.contains("s3cret")
    });
    assert_eq!(ok(kc, &["exec", "vol", "--", "cat", &format!("/var/{marker}/file")]), "made\n");
    assert_eq!(ok(kc, &["exec", "vol", "--", "cat", &format!("/etc/{marker}/app.conf")]), "port=80");
    let write = kubectl(kc, &["exec", "vol", "--", "sh", "-c", &format!("echo x > /etc/{marker}/cfg/new")]);
    assert!(!write.status.success(), "the ConfigMap is mounted read-only");
    assert!(String::from_utf8_lossy(&write.stderr).contains("Read-only"), "{write:?}");
    assert!(
        !Path::new(&format!("/etc/{marker}/cfg/greeting")).exists(),
        "the host does not see the container's mounts"
    );
    ok(kc, &["delete", "pod", "vol", "--grace-period", "1"]);
}

/// Limits (as root: the container's own cgroups): a memory hog over 64Mi is OOMKilled;
/// a busy loop at `cpu: 200m` is throttled, by its cgroup's own counters.
fn limits(kc: &Path, scratch: &Path) {
    // Each node says whether it can hold containers to their limits.
    let nodes = get(kc, &["nodes"]);
    let conditions: Vec<&Value> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "ResourceLimitsUnavailable"))
        .collect();
    assert_eq!(conditions.len(), 2, "both nodes report ResourceLimitsUnavailable: {nodes}");
    if let Some(c) = conditions.iter().find(|c| c["status"] == "True") {
        eprintln!("skipped the limits checks: {}", c["message"]);
        return;
    }
    apply(
        kc,
        scratch,
        "limits",
        "apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: python
    command: [python3, -c, \"x = b'a' * (200 << 20)\"]
    resources: {limits: {memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: spin, labels: {t: spin}}
spec:
  containers:
  - name: spin
    image: python
    command: [python3, -c, 'while True: pass']
    resources: {limits: {cpu: 200m}}
",
    );
    eventually("the hog OOMKilled", Duration::from_secs(30), || {
        status_of(kc, "hog")["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    });
    let spin = wait_ready(kc, "t=spin", 1, Duration::from_secs(30));
    let uid = spin[0]["metadata"]["uid"].as_str().unwrap();
    let stat = std::path::PathBuf::from(format!("/sys/fs/cgroup/cpu/keelson/{uid}.spin.0/cpu.stat"));
    let throttled = |field: &str| -> u64 {
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(field)?.trim().parse().ok()).unwrap_or(0)
    };
    eventually("the busy loop throttled by its cgroup", Duration::from_secs(20), || throttled("nr_throttled ") >= 5);
    // 200m of a 100 ms period: 20 ms of CPU, then held back for the rest of it.
    assert!(throttled("throttled_time ") > 0, "{}", std::fs::read_to_string(&stat).unwrap_or_default());
    ok(kc, &["delete", "pod", "hog", "spin", "--grace-period", "1"]);
}

/// Every process on the machine: its pid and its command line (arguments joined by spaces).
fn processes() -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect()
}

/// The pids of the processes whose command lines hold every one of `parts`.
fn pids_running(parts: &[&str]) -> Vec<i32> {
    processes().into_iter().filter(|(_, cmd)| parts.iter().all(|p| cmd.contains(p))).map(|(pid, _)| pid).collect()
}

fn no_leftovers(data: &Path) {
    let ours = |cmd: &str| cmd.contains(data.to_str().unwrap()) || cmd.contains("keelson-kt-");
    let procs: Vec<String> = processes().into_iter().map(|(_, cmd)| cmd).filter(|c| ours(c)).collect();
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
}

fn lifecycle(network: &str) {
    let _one = serial();
    let scratch = Scratch::new(&format!("kubelet-{network}"));
    let data = scratch.data();
    let (mut up, kc) = up(&scratch, network);
    eventually("2 Ready nodes with pod CIDRs", Duration::from_secs(60), || {
        let nodes = get(&kc, &["nodes"])["items"].as_array().cloned().unwrap_or_default();
        nodes.len() == 2 && nodes.iter().all(|n| ready(n) && n["spec"]["podCIDR"].is_string())
    });

    // The example: 3 pods across both nodes, each answering at its own address.
    apply(&kc, &scratch.0, "web", &example(network));
    let web = web_answers(&kc);
    let nodes: std::collections::BTreeSet<&str> = web.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    assert_eq!(nodes.len(), 2, "spread over both nodes: {nodes:?}");
    let ips: std::collections::BTreeSet<&str> = web.iter().filter_map(|p| p["status"]["podIP"].as_str()).collect();
    assert_eq!(ips.len(), 3, "one address per pod");
    if network == "loopback" {
        assert!(ips.iter().all(|ip| ip.starts_with("127.")), "{ips:?}");
    }
    let table = ok(&kc, &["get", "pods", "-o", "wide"]);
    assert_eq!(table.matches("Running").count(), 3, "{table}");

    // Logs: the tail, a follower that sees a new line live, the previous run's.
    let first = web[0]["metadata"]["name"].as_str().unwrap().to_string();
    let ip = web[0]["status"]["podIP"].as_str().unwrap().to_string();
    assert_eq!(http_status(&ip, 8000, "/before"), Some(404));
    let tail = ok(&kc, &["logs", &first, "--tail", "1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let all = ok(&kc, &["logs", &first, "--timestamps"]);
    assert!(all.contains("GET /before"), "{all}");
    assert!(all.lines().all(|l| l.split(' ').next().is_some_and(|t| t.ends_with('Z'))), "{all}");
    let mut follower = Follower::start(&kc, &["logs", "-f", &first]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http_status(&ip, 8000, "/followed-live"), Some(404));
    follower.expect("GET /followed-live");

    // exec: a command's output and exit code, and a shell on a terminal that resizes.
    let host = std::fs::read_to_string("/etc/hostname").unwrap();
    assert_eq!(ok(&kc, &["exec", &first, "--", "cat", "/etc/hostname"]), host);
    exec_checks(&kc, &first);

    // Killed from outside: restarted, RESTARTS 1, the previous run's log kept.
    let (node, uid) = (web[0]["spec"]["nodeName"].as_str().unwrap(), web[0]["metadata"]["uid"].as_str().unwrap());
    let pid = container_pid(&data, node, uid, "web", 0).expect("the container's pid");
    // SAFETY: killing the test's own container process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eventually("the killed container restarted", Duration::from_secs(20), || {
        let s = status_of(&kc, &first);
        s["containerStatuses"][0]["restartCount"] == 1 && s["containerStatuses"][0]["state"]["running"].is_object()
    });
    let s = status_of(&kc, &first);
    assert_eq!(s["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 137, "{s}");
    let previous = ok(&kc, &["logs", &first, "--previous"]);
    assert!(previous.contains("GET /followed-live"), "{previous}");
    let row = ok(&kc, &["get", "pod", &first, "--no-headers"]);
    assert!(row.split_whitespace().nth(3) == Some("1"), "RESTARTS 1: {row}");
    wait_ready(&kc, "app=web", 3, Duration::from_secs(30));

    // Crash loop, liveness, readiness and init containers.
    let marker = format!("keelson-kt-{}", std::process::id());
    apply(
        &kc,
        &scratch.0,
        "probes",
        &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: crash, labels: {{t: crash}}}}
spec:
  containers: [{{name: c, image: busybox, command: [sh, -c, 'echo crashing; exit 1']}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: live, labels: {{t: live}}}}
spec:
  containers:
  - name: c
    image: busybox
    command: [sleep, '3600']
    livenessProbe: {{exec: {{command: [test, -e, /nonexistent-{marker}]}}, periodSeconds: 1, failureThreshold: 2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: unready, labels: {{t: unready}}}}
spec:
  containers:
  - name: c
    image: busybox
    command: [sleep, '3600']
    readinessProbe: {{tcpSocket: {{port: 9}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: init, labels: {{t: init}}}}
spec:
  initContainers:
  - {{name: first, image: busybox, command: [sh, -c, 'sleep 1; date +%s%N > /tmp/{marker}-init']}}
  containers:
  - {{name: main, image: busybox, command: [sh, -c, 'cat /tmp/{marker}-init && echo main-ran; rm -f /tmp/{marker}-init; sleep 3600']}}
"
        ),
    );
    let mut messages = Vec::new();
    let mut restart_times: Vec<(i64, Instant)> = Vec::new();
    eventually("CrashLoopBackOff with doubling back-off", Duration::from_secs(40), || {
        let s = status_of(&kc, "crash");
        let c = &s["containerStatuses"][0];
        let n = c["restartCount"].as_i64().unwrap_or(0);
        if restart_times.last().is_none_or(|(m, _)| *m < n) {
            restart_times.push((n, Instant::now()));
        }
        if let Some(m) = c["state"]["waiting"]["message"].as_str() {
            let m = m.split(" restarting").next().unwrap_or_default().to_string();
            if !messages.contains(&m) {
                messages.push(m);
            }
        }
        n >= 4 && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    assert!(messages.contains(&"back-off 2s".to_string()), "{messages:?}");
    assert!(messages.contains(&"back-off 4s".to_string()), "{messages:?}");
    let gap = |a: i64, b: i64| {
        let at = |n: i64| restart_times.iter().find(|(m, _)| *m >= n).map(|(_, t)| *t).unwrap();
        at(b).duration_since(at(a))
    };
    assert!(gap(3, 4) >= Duration::from_millis(3500), "the 4th restart waited 4 s: {:?}", gap(3, 4));
    assert!(gap(3, 4) > gap(2, 3), "back-off grew: {:?} then {:?}", gap(2, 3), gap(3, 4));
    let row = ok(&kc, &["get", "pod", "crash", "--no-headers"]);
    assert!(row.contains("CrashLoopBackOff"), "{row}");
    assert!(ok(&kc, &["describe", "pod", "crash"]).contains("Back-off restarting failed container c"));
    assert!(ok(&kc, &["logs", "crash", "--previous"]).contains("crashing"));

    eventually("a failing liveness probe restarts", Duration::from_secs(20), || {
        status_of(&kc, "live")["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0) >= 1
    });
    assert!(ok(&kc, &["describe", "pod", "live"]).contains("Liveness probe failed"));
    let s = status_of(&kc, "unready");
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["containerStatuses"][0]["ready"], false, "{s}");
    assert_eq!(s["containerStatuses"][0]["restartCount"], 0, "readiness never restarts: {s}");
    assert!(ok(&kc, &["get", "pod", "unready", "--no-headers"]).contains("0/1"));
    eventually("the main container ran after the init container", Duration::from_secs(20), || {
        kubectl(&kc, &["logs", "init", "-c", "main"]).stdout.windows(8).any(|w| w == b"main-ran")
    });
    let s = status_of(&kc, "init");
    assert_eq!(s["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed", "{s}");
    let init_done = s["initContainerStatuses"][0]["state"]["terminated"]["finishedAt"].as_str().unwrap().to_string();
    let main_began = s["containerStatuses"][0]["state"]["running"]["startedAt"].as_str().unwrap().to_string();
    assert!(init_done <= main_began, "init ended {init_done}, main began {main_began}");
    ok(&kc, &["delete", "pod", "crash", "live", "unready", "init", "--grace-period", "1"]);

    // Volumes (as root: each container gets a mount namespace): a ConfigMap read-only, a
    // Secret, an emptyDir; seen by the container and by exec, not by the host.
    if is_root() {
        volumes(&kc, &scratch.0, &marker);
        limits(&kc, &scratch.0);
    }

    // A graceful delete of a pod that ignores SIGTERM: Terminating, then SIGKILL after 3 s.
    apply(
        &kc,
        &scratch.0,
        "stubborn",
        "apiVersion: v1
kind: Pod
metadata: {name: stubborn, labels: {t: stubborn}}
spec:
  terminationGracePeriodSeconds: 3
  containers: [{name: c, image: busybox, command: [sh, -c, 'trap \"echo got TERM\" TERM; while true; do sleep 0.2; done']}]
",
    );
    let s = wait_ready(&kc, "t=stubborn", 1, Duration::from_secs(30));
    let (node, uid) = (s[0]["spec"]["nodeName"].as_str().unwrap(), s[0]["metadata"]["uid"].as_str().unwrap());
    let pid = container_pid(&data, node, uid, "c", 0).unwrap();
    let began = Instant::now();
    ok(&kc, &["delete", "pod", "stubborn", "--wait=false"]);
    let row = ok(&kc, &["get", "pod", "stubborn", "--no-headers"]);
    assert!(row.contains("Terminating"), "{row}");
    eventually("the pod is gone", Duration::from_secs(20), || {
        !kubectl(&kc, &["get", "pod", "stubborn"]).status.success()
    });
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(2500), "SIGTERM was ignored, so it took the grace period: {took:?}");
    assert!(!alive(pid), "the container was killed after the grace period");
    assert_eq!(attempts(&data, node, uid), 0, "its files are gone");

    // kill -9 of an agent: its containers run on and are adopted, not started again.
    let web = wait_ready(&kc, "app=web", 3, Duration::from_secs(30));
    let on_1: Vec<(String, i32, usize)> = web
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "agent-1")
        .map(|p| {
            let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
            let restarts = p["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap() as u32;
            let pid = container_pid(&data, "agent-1", &uid, "web", restarts).unwrap();
            let n = attempts(&data, "agent-1", &uid);
            (uid, pid, n)
        })
        .collect();
    assert!(!on_1.is_empty());
    let agent_pid = door(&data, "agent-1")["pid"].as_i64().unwrap() as i32;
    // SAFETY: killing the test's own agent process.
    unsafe { libc::kill(agent_pid, libc::SIGKILL) };
    up.wait_for_line("keelson: agent-1 restarted", Duration::from_secs(30));
    eventually("agent-1 adopted its pods", Duration::from_secs(30), || {
        std::fs::read_to_string(data.join("agent-1/keelson.log"))
            .is_ok_and(|l| l.contains("adopted the pod's running containers"))
    });
    std::thread::sleep(Duration::from_secs(3));
    for (uid, pid, n) in &on_1 {
        assert!(alive(*pid), "container {pid} of {uid} still runs");
        assert_eq!(attempts(&data, "agent-1", uid), *n, "no container started again for {uid}");
    }
    web_answers(&kc);

    // The kubelet's node actor killed (a panic inside it): its supervisor restarts it and
    // the pod workers with it; they adopt their containers, and a deleted pod is replaced.
    let before: Vec<i32> = ["agent-1", "agent-2"]
        .iter()
        .flat_map(|n| {
            let data = data.clone();
            pods(&kc, "app=web").into_iter().filter(move |p| p["spec"]["nodeName"] == *n).map(move |p| {
                let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
                let r = p["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap() as u32;
                container_pid(&data, n, &uid, "web", r).unwrap()
            })
        })
        .collect();
    run_ok(&data, &["chaos", "kill", "/agent-1/kubelet/node"]);
    eventually("the kubelet's node actor is back", Duration::from_secs(20), || {
        actor(&data, "/agent-1/kubelet/node").is_some_and(|a| a["incarnation"].as_u64() >= Some(2))
    });
    // The agents' shim spawners killed: the replacement below needs one, and gets it
    // started again; the running containers are not theirs to lose.
    // (The shims it forked share its command line; they are named keelson-shim.)
    let comm = |pid: &i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let spawners: Vec<i32> = pids_running(&["shim-spawner", data.to_str().unwrap()])
        .into_iter()
        .filter(|p| comm(p).trim() != "keelson-shim")
        .collect();
    assert!(!spawners.is_empty(), "agent-2 has started containers, so it has a spawner");
    for pid in &spawners {
        // SAFETY: killing the test's own spawner processes.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let victim = pods(&kc, "app=web").into_iter().find(|p| p["spec"]["nodeName"] == "agent-1").unwrap();
    let victim = victim["metadata"]["name"].as_str().unwrap().to_string();
    ok(&kc, &["delete", "pod", &victim, "--grace-period", "1"]);
    let web = web_answers(&kc);
    assert!(web.iter().all(|p| p["metadata"]["name"] != victim.as_str()));
    let alive_before = before.iter().filter(|p| alive(**p)).count();
    assert_eq!(alive_before, before.len() - 1, "only the deleted pod's process ended");

    // A rolling update (a new env value) and its undo, followed by rollout status.
    ok(&kc, &["set", "env", "deployment/web", "GREETING=bonjour"]);
    ok(&kc, &["rollout", "status", "deployment/web", "--timeout", "90s"]);
    let web = web_answers(&kc);
    assert!(web.iter().all(|p| p["spec"]["containers"][0]["env"][0]["value"] == "bonjour"));
    ok(&kc, &["rollout", "undo", "deployment/web"]);
    ok(&kc, &["rollout", "status", "deployment/web", "--timeout", "90s"]);
    let web = web_answers(&kc);
    assert!(web.iter().all(|p| p["spec"]["containers"][0]["env"][0]["value"] == "hello"));

    // An agent that stops answering (frozen): its pods are replaced on the other node.
    let agent_pid = door(&data, "agent-2")["pid"].as_i64().unwrap() as i32;
    // SAFETY: freezing and thawing the test's own agent process.
    unsafe { libc::kill(agent_pid, libc::SIGSTOP) };
    eventually("3 ready web pods, all on agent-1", Duration::from_secs(60), || {
        let live: Vec<Value> = pods(&kc, "app=web").into_iter().filter(ready).collect();
        live.len() == 3 && live.iter().all(|p| p["spec"]["nodeName"] == "agent-1")
    });
    unsafe { libc::kill(agent_pid, libc::SIGCONT) };
    web_answers(&kc);
    eventually("the frozen node's old pods are gone once it is back", Duration::from_secs(60), || {
        pods(&kc, "app=web").len() == 3
    });

    // Ctrl-C: everything stops, and nothing is left behind.
    up.stop(Duration::from_secs(60));
    no_leftovers(&data);
    let marker = format!("keelson-kt-{}", std::process::id());
    for made in [format!("/etc/{marker}"), format!("/var/{marker}")] {
        assert!(!Path::new(&made).exists(), "mount point {made} left behind");
    }
    let netns = std::process::Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&netns).contains("keelson-"),
        "namespaces left: {}",
        String::from_utf8_lossy(&netns)
    );
    let links = std::process::Command::new("ip").args(["-br", "link"]).output().map(|o| o.stdout).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&links).contains("kls"), "bridges left");
}

#[test]
fn pods_run_restart_log_and_stop_in_their_own_network_namespaces() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root (CI runs as root); the loopback test covers the rest");
        return;
    }
    lifecycle("netns");
}

#[test]
fn pods_run_restart_log_and_stop_on_loopback_addresses() {
    lifecycle("loopback");
}
