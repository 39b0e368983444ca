//! The docker runtime (issue P8, first part), driven with the real kubectl against
//! `keelson up --runtime docker`: the busybox example (an image built locally by
//! `scripts/busybox-image.sh`, no registry) runs 3 pods answering HTTP at their pod
//! IPs on the nodes' Docker networks; `kubectl exec` works; a container killed with
//! `docker kill` is restarted (RESTARTS 1); `kubectl logs` (`--tail`, `--previous`); a
//! memory hog over its 64Mi limit is OOMKilled; a busy loop at 200m is throttled (its
//! cgroup's counters); `kubectl exec -it` gets a terminal that resizes; a Service's
//! cluster IP answers from inside a pod; kill -9 of an
//! agent: the restarted one adopts the running containers; a rolling update and its
//! undo; an image that is not there shows
//! ErrImagePull / ImagePullBackOff and the pod runs once the image is built; a graceful
//! delete removes the pod's containers and sandbox; Ctrl-C leaves no container and no
//! network behind. Skipped, saying why, where no Docker daemon answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::kubectl::{ok, pods};
use crate::support::*;

const IMAGE: &str = "keelson.dev/busybox:1.35";

fn docker(args: &[&str]) -> Option<String> {
    let out = Command::new("docker").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Docker answers and the test image is built (by the repo's script); why not otherwise.
fn docker_ready() -> Result<(), String> {
    docker(&["version", "--format", "{{.Server.Version}}"]).ok_or("no Docker daemon answers")?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/busybox-image.sh");
    let built = Command::new("sh").arg(script).output().map_err(|e| e.to_string())?;
    if !built.status.success() {
        return Err(format!("cannot build {IMAGE}: {}", String::from_utf8_lossy(&built.stderr)));
    }
    Ok(())
}

/// Containers and networks whose names hold `marker` (this cluster's agents').
fn leftovers(marker: &str) -> (String, String) {
    let containers = docker(&["ps", "-a", "--format", "{{.Names}}"]).unwrap_or_default();
    let networks = docker(&["network", "ls", "--format", "{{.Name}}"]).unwrap_or_default();
    let mine = |s: String| s.lines().filter(|l| l.contains(marker)).collect::<Vec<_>>().join(" ");
    (mine(containers), mine(networks))
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
}

fn http_ok(ip: &str, port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) =
        std::net::TcpStream::connect_timeout(&format!("{ip}:{port}").parse().unwrap(), Duration::from_secs(2))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(s, "GET /index.html HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.contains("hello from busybox")
}

/// A busy loop limited to 200m: Docker's cgroup for it counts throttled periods.
fn cpu_throttled(kc: &Path, scratch: &Path) {
    let spin = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: spin}}
spec:
  containers:
  - name: spin
    image: {IMAGE}
    command: [sh, -c, 'while :; do :; done']
    resources: {{limits: {{cpu: 200m}}}}
"
    );
    let file = scratch.join("spin.yaml");
    std::fs::write(&file, spin).unwrap();
    ok(kc, &["apply", "-f", file.to_str().unwrap()]);
    let mut pod = Value::Null;
    eventually("the busy loop running", Duration::from_secs(30), || {
        pod = serde_json::from_str(&ok(kc, &["get", "pod", "spin", "-o", "json"])).unwrap();
        running(&pod)
    });
    let name = format!(
        "keelson_{}_{}.spin.0",
        pod["spec"]["nodeName"].as_str().unwrap(),
        pod["metadata"]["uid"].as_str().unwrap()
    );
    let id = docker(&["inspect", "--format", "{{.Id}}", &name]).expect("the container's id").trim().to_string();
    // Docker's cgroup for it, on the cgroupfs (v1 or v2) or systemd driver.
    let candidates = [
        format!("/sys/fs/cgroup/cpu/docker/{id}/cpu.stat"),
        format!("/sys/fs/cgroup/cpu/system.slice/docker-{id}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/docker/{id}/cpu.stat"),
    ];
    let Some(stat) = candidates.iter().find(|p| Path::new(p).exists()).cloned() else {
        panic!("no cgroup cpu.stat for container {id} (looked at {candidates:?})");
    };
    let field = |name: &str| -> u64 {
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
    };
    eventually("the busy loop throttled by its cgroup", Duration::from_secs(20), || field("nr_throttled ") >= 5);
    // 200m of a 100 ms period: 20 ms of CPU, then held back for the rest of it.
    let time = field("throttled_time ").max(field("throttled_usec "));
    assert!(time > 0, "{}", std::fs::read_to_string(&stat).unwrap_or_default());
    ok(kc, &["delete", "pod", "spin", "--grace-period", "1"]);
}

/// kill -9 of a docker agent: the restarted agent adopts the containers that run on
/// (the same Docker containers, no new attempt), and its pods stay Running.
fn adopted_after_kill_9(kc: &Path, data: &Path, up: &mut Running) {
    let mine = || {
        let list = docker(&[
            "ps",
            "-a",
            "--filter",
            "label=keelson.node=agent-1",
            "--format",
            "{{.ID}} {{.Names}} {{.State}}",
        ]);
        let mut lines: Vec<String> = list.unwrap_or_default().lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    let before = mine();
    assert!(before.iter().any(|l| l.ends_with(" running") && l.contains(".httpd.")), "{before:?}");
    let agent = door(data, "agent-1")["pid"].as_i64().unwrap() as i32;
    // SAFETY: killing the test's own agent process.
    unsafe { libc::kill(agent, libc::SIGKILL) };
    up.wait_for_line("keelson: agent-1 restarted", Duration::from_secs(30));
    eventually("agent-1 adopted its pods", Duration::from_secs(30), || {
        std::fs::read_to_string(data.join("agent-1/keelson.log"))
            .is_ok_and(|l| l.contains("adopted the pod's running containers"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mine(), before, "the same containers, still running, none started again");
    eventually("3 busybox pods running", Duration::from_secs(30), || {
        pods(kc, "app=busybox-web").into_iter().filter(running).count() == 3
    });
}

#[test]
fn docker_runtime_runs_images_restarts_and_cleans_up() {
    if let Err(why) = docker_ready() {
        eprintln!("skipped: the docker runtime needs a Docker daemon and a local image: {why}");
        return;
    }
    let _serial = serial();
    let scratch = Scratch::new("docker");
    let data = scratch.data();
    let args = ["up", "--servers", "1", "--agents", "2", "--runtime", "docker", "--restart-backoff", "1s"];
    let mut up = Running::start(&data, &args, &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(90));
    let kc: PathBuf = data.join("kubeconfig");
    let mut nodes = String::new();
    eventually("both nodes Ready with the docker runtime", Duration::from_secs(60), || {
        nodes = ok(&kc, &["get", "nodes", "-o", "wide"]);
        nodes.lines().filter(|l| l.contains(" Ready ") && l.contains("docker://")).count() == 2
    });

    // The example, as it is.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/busybox-web.yaml");
    ok(&kc, &["apply", "-f", example]);
    let mut web = Vec::new();
    eventually("3 busybox pods running", Duration::from_secs(60), || {
        web = pods(&kc, "app=busybox-web").into_iter().filter(running).collect();
        web.len() == 3
    });
    let hosts: std::collections::BTreeSet<&str> = web.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    assert_eq!(hosts.len(), 2, "spread across both nodes");
    for p in &web {
        let ip = p["status"]["podIP"].as_str().unwrap().to_string();
        eventually(&format!("{ip} answers HTTP"), Duration::from_secs(20), || http_ok(&ip, 8080));
    }
    let name = web[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(ok(&kc, &["exec", &name, "--", "cat", "/etc/hostname"]).trim(), name, "the pod's hostname");
    // Pipes and a terminal (Docker's exec with a tty, through the Engine API), resized.
    exec_checks(&kc, &name);

    // A Service in front of them: its cluster IP answers from inside a Docker pod (its
    // default route leads to the host, where the proxies hold the address).
    ok(&kc, &["expose", "deployment", "busybox-web", "--port", "80", "--target-port", "8080"]);
    let svc: Value = serde_json::from_str(&ok(&kc, &["get", "svc", "busybox-web", "-o", "json"])).unwrap();
    // (busybox's nc: its static wget crashes on port-80 URLs in this image.)
    let ask =
        format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc {} 80", svc["spec"]["clusterIP"].as_str().unwrap());
    eventually("the cluster IP answers from inside a docker pod", Duration::from_secs(30), || {
        let out = crate::kubectl::kubectl(&kc, &["exec", &name, "--", "sh", "-c", &ask]);
        String::from_utf8_lossy(&out.stdout).contains("hello from busybox")
    });

    cpu_throttled(&kc, &scratch.0);
    adopted_after_kill_9(&kc, &data, &mut up);

    // A rolling update and its undo, followed by rollout status; every pod answers.
    for (greeting, step) in [
        ("bonjour", &["set", "env", "deployment/busybox-web", "GREETING=bonjour"][..]),
        ("", &["rollout", "undo", "deployment/busybox-web"][..]),
    ] {
        ok(&kc, step);
        ok(&kc, &["rollout", "status", "deployment/busybox-web", "--timeout", "90s"]);
        let mut now = Vec::new();
        eventually("3 pods of the new template running", Duration::from_secs(30), || {
            now = pods(&kc, "app=busybox-web").into_iter().filter(running).collect();
            now.len() == 3
        });
        for p in &now {
            let env = p["spec"]["containers"][0]["env"][0]["value"].as_str().unwrap_or_default();
            assert_eq!(env, greeting, "{p}");
            let ip = p["status"]["podIP"].as_str().unwrap().to_string();
            eventually(&format!("{ip} answers HTTP"), Duration::from_secs(20), || http_ok(&ip, 8080));
        }
    }
    let web: Vec<Value> = pods(&kc, "app=busybox-web").into_iter().filter(running).collect();
    let name = web[0]["metadata"]["name"].as_str().unwrap().to_string();

    // `docker kill` of a container: restarted, RESTARTS 1.
    let uid = web[0]["metadata"]["uid"].as_str().unwrap().to_string();
    let node = web[0]["spec"]["nodeName"].as_str().unwrap().to_string();
    let container = format!("keelson_{node}_{uid}.httpd.0");
    docker(&["kill", &container]).expect("docker kill");
    eventually("the killed container restarted", Duration::from_secs(30), || {
        let p = pods(&kc, "app=busybox-web").into_iter().find(|p| p["metadata"]["name"] == name.as_str());
        p.is_some_and(|p| {
            p["status"]["containerStatuses"][0]["restartCount"] == 1
                && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
        })
    });

    // Logs: a container's output, its tail, and the previous run's after a kill.
    let talk = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done";
    ok(&kc, &["run", "talker", "--image", IMAGE, "--command", "--", "sh", "-c", talk]);
    eventually("the talker's output in kubectl logs", Duration::from_secs(30), || {
        let out = crate::kubectl::kubectl(&kc, &["logs", "talker", "--tail", "2"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && text.lines().count() == 2 && text.starts_with("line ")
    });
    let mut follower = Follower::start(&kc, &["logs", "-f", "talker"]);
    std::thread::sleep(Duration::from_millis(500));
    ok(&kc, &["exec", "talker", "--", "sh", "-c", "echo followed-live > /proc/1/fd/1"]);
    follower.expect("followed-live");
    drop(follower);
    let talker: Value = serde_json::from_str(&ok(&kc, &["get", "pod", "talker", "-o", "json"])).unwrap();
    let first = format!(
        "keelson_{}_{}.talker.0",
        talker["spec"]["nodeName"].as_str().unwrap(),
        talker["metadata"]["uid"].as_str().unwrap()
    );
    docker(&["kill", &first]).expect("docker kill");
    eventually("the previous run's output", Duration::from_secs(30), || {
        let out = crate::kubectl::kubectl(&kc, &["logs", "talker", "--previous"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("line 0\n")
    });

    // A memory hog over its 64Mi limit: OOMKilled, as Kubernetes reports it.
    let hog = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: {IMAGE}
    command: [dd, if=/dev/zero, of=/dev/null, bs=200M, count=1]
    resources: {{limits: {{memory: 64Mi}}}}
"
    );
    let hog_file = scratch.0.join("hog.yaml");
    std::fs::write(&hog_file, hog).unwrap();
    ok(&kc, &["apply", "-f", hog_file.to_str().unwrap()]);
    eventually("the hog OOMKilled", Duration::from_secs(30), || {
        let p: Value = serde_json::from_str(&ok(&kc, &["get", "pod", "hog", "-o", "json"])).unwrap();
        p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    });
    assert!(ok(&kc, &["describe", "pod", "hog"]).contains("OOMKilled"));

    // An image that is not there (a registry on this machine's loopback that does not
    // exist: the pull fails at once and nothing leaves the machine), then built.
    let missing = "localhost:5999/keelson/missing:1";
    let _ = docker(&["rmi", missing]);
    ok(&kc, &["run", "missing", "--image", missing, "--command", "--", "sleep", "3600"]);
    let mut reasons = std::collections::BTreeSet::new();
    eventually("ErrImagePull then ImagePullBackOff", Duration::from_secs(30), || {
        let s: Value = serde_json::from_str(&ok(&kc, &["get", "pod", "missing", "-o", "json"])).unwrap();
        if let Some(r) = s["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str() {
            reasons.insert(r.to_string());
        }
        reasons.contains("ImagePullBackOff")
    });
    let table = ok(&kc, &["get", "pod", "missing"]);
    assert!(table.contains("ImagePullBackOff") || table.contains("ErrImagePull"), "{table}");
    let describe = ok(&kc, &["describe", "pod", "missing"]);
    assert!(describe.contains("Back-off pulling image"), "{describe}");
    docker(&["tag", IMAGE, missing]).expect("docker tag");
    eventually("the pod runs once its image is there", Duration::from_secs(60), || {
        pods(&kc, "run=missing").iter().any(running)
    });

    // A graceful delete takes the pod's containers and sandbox away.
    ok(&kc, &["delete", "pod", &name, "--grace-period", "2"]);
    eventually("the deleted pod's containers are gone", Duration::from_secs(30), || {
        let all = docker(&["ps", "-a", "--format", "{{.Names}}"]).unwrap_or_default();
        !all.contains(&uid)
    });

    // Ctrl-C: nothing of this cluster's is left in Docker.
    up.stop(Duration::from_secs(60));
    let _ = docker(&["rmi", missing]);
    let (containers, networks) = leftovers("keelson_agent-");
    assert!(containers.is_empty(), "containers left: {containers}");
    assert!(!networks.contains("keelson-agent-"), "networks left: {networks}");
}
