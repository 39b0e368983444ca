//! `keelson bench scheduler`: how fast pods get placed, and how fast a lost node's
//! pods come back elsewhere.
//!
//! 1. In memory: the scheduler's own decisions per second over `--nodes` nodes (the
//!    filter and score of `fit.rs`, no I/O), for what the algorithm alone costs.
//! 2. End to end: `keelson up` (3 servers) and one agent of `--nodes` hollow nodes; then
//!    `--pods` pods created over HTTPS by 64 clients while a watch notes when each is
//!    bound: pods bound per second and the time from a pod's creation to its binding.
//! 3. Node loss: a Deployment of 20 on one agent's 2 nodes, a second agent joins, the
//!    first is stopped (SIGSTOP): the time until all 20 run on the second agent's nodes.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use keelson_actors::api::parse_time;
use keelson_actors::controllers::scheduler::fit::{Cluster, PodInfo};
use keelson_actors::kubelet::node::is_ready;
use serde_json::{json, Value};

use super::api::{client, Api};
use super::store::{pct, Keelson};

#[derive(Args)]
pub struct SchedulerBenchArgs {
    /// Hollow nodes.
    #[arg(long, default_value_t = 5_000)]
    pub nodes: u32,
    /// Pods created and placed.
    #[arg(long, default_value_t = 100_000)]
    pub pods: usize,
    /// Clients creating pods.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
}

fn node(i: u32) -> Value {
    json!({"metadata": {"name": format!("n{i}"), "labels": {"kubernetes.io/hostname": format!("n{i}")}},
           "spec": {"taints": [{"key": "keelson.dev/hollow", "value": "true", "effect": "NoSchedule"}]},
           "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                      "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "sched"}},
           "spec": {"tolerations": [{"key": "keelson.dev/hollow", "operator": "Exists"}],
                    "containers": [{"name": "c", "image": "busybox",
                                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

/// Decisions per second of the scheduler's filter and score over `nodes` nodes.
fn in_memory(nodes: u32, pods: usize) -> f64 {
    let mut cluster = Cluster::default();
    for i in 0..nodes {
        cluster.set_node(&node(i));
    }
    let began = Instant::now();
    for i in 0..pods {
        let p = PodInfo::from(&format!("bench/p{i}"), &pod(&format!("p{i}")));
        if let Ok(n) = cluster.choose(&p) {
            cluster.place(p, &n);
        }
    }
    pods as f64 / began.elapsed().as_secs_f64()
}

/// A hollow agent this bench started: stopped when dropped, on every way out (an
/// agent left behind would keep loading the machine).
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `keelson agent` with `nodes` hollow nodes, talking to the three servers.
fn agent(data: &Path, name: &str, nodes: u32, heartbeat: &str, lease: &str) -> Result<Agent> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "agent",
        "--name",
        name,
        "--hollow",
        &nodes.to_string(),
        "--heartbeat",
        heartbeat,
        "--lease-seconds",
        lease,
    ]);
    cmd.arg("--data-dir").arg(data);
    for s in ["server-1", "server-2", "server-3"] {
        let addr = std::fs::read_to_string(data.join(s).join("quic-addr")).with_context(|| format!("{s}'s address"))?;
        cmd.args(["--peer", &format!("{s}={}", addr.trim())]);
    }
    // Its output beside the servers' (`<name>/keelson.log`), so its warnings are counted
    // with theirs at the end of the run.
    let folder = data.join(name);
    std::fs::create_dir_all(&folder)?;
    let log = std::fs::File::create(folder.join("keelson.log"))?;
    cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
    Ok(Agent(cmd.stdout(Stdio::null()).stderr(log).spawn()?))
}

impl Api {
    pub(super) async fn get_json(&self, path: &str) -> Result<Value> {
        let mut r = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(serde_json::from_slice(&r.body().limit(1 << 30).await?)?)
    }

    /// Nodes whose names start with `prefix` and are Ready.
    async fn ready_nodes(&self, prefix: &str) -> Result<usize> {
        let nodes = self.get_json("/api/v1/nodes").await?;
        Ok(nodes["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["metadata"]["name"].as_str().is_some_and(|s| s.starts_with(prefix)))
            .filter(|n| is_ready(n))
            .count())
    }

    /// Waits until `n` nodes named `prefix…` are Ready (an API error is tried again,
    /// and reported if they never are); how long that took.
    pub(super) async fn wait_ready(&self, prefix: &str, n: usize) -> Result<Duration> {
        let began = Instant::now();
        loop {
            let last = match self.ready_nodes(prefix).await {
                Ok(ready) if ready >= n => return Ok(began.elapsed()),
                Ok(ready) => format!("{ready} Ready"),
                Err(e) => e.to_string(),
            };
            if began.elapsed() > Duration::from_secs(600) {
                bail!("{n} nodes {prefix}* were not Ready within 10 minutes (last: {last})");
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each event's object of a watch (`path` with its query), as it arrives, decoded as
    /// `T` (a `Value`, or a struct of the few fields a bench reads: at 100,000 pods and
    /// three events each, building every object whole cost the bench a tenth of the CPU
    /// it measures).
    pub(super) async fn watch<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<(T, Instant)>> {
        let mut resp = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        actix_rt::spawn(async move {
            let mut buf = Vec::new();
            let mut events = 0usize;
            let ended = loop {
                match resp.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => break e.to_string(),
                    None => break "the server closed it".into(),
                }
                // Each line read where it lies; what is read leaves the buffer once per chunk.
                let mut start = 0;
                while let Some(end) = buf[start..].iter().position(|b| *b == b'\n') {
                    let line = &buf[start..start + end];
                    start += end + 1;
                    events += 1;
                    let event = match serde_json::from_slice::<Event<T>>(line) {
                        Ok(e) if e.kind != "ERROR" => e,
                        _ => {
                            let v: Value = serde_json::from_slice(line).unwrap_or_default();
                            match v["type"].as_str() {
                                Some("ERROR") => eprintln!(
                                    "the bench's watch ended after {events} events: {}",
                                    v["object"]["message"]
                                ),
                                _ => eprintln!("the bench's watch stopped at event {events}, which it cannot read"),
                            }
                            return;
                        }
                    };
                    if tx.send((event.object, Instant::now())).is_err() {
                        return;
                    }
                }
                buf.drain(..start);
            };
            eprintln!("the bench's watch ended after {events} events: {ended}");
        });
        Ok(rx)
    }

    /// Every pod of `ns` as (creation, PodScheduled) times in seconds since the epoch,
    /// read in pages of 500.
    async fn pods_scheduled(&self, ns: &str) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut next = String::new();
        loop {
            let token = crate::kv::urlencode(&next);
            let page = self.get_json(&format!("/api/v1/namespaces/{ns}/pods?limit=500&continue={token}")).await?;
            for p in page["items"].as_array().into_iter().flatten() {
                let created = p["metadata"]["creationTimestamp"].as_str().and_then(parse_time);
                let scheduled = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "PodScheduled" && c["status"] == "True")
                    .and_then(|c| c["lastTransitionTime"].as_str())
                    .and_then(parse_time);
                if let (Some(c), Some(s)) = (created, scheduled) {
                    out.push((c as u64, s as u64));
                }
            }
            match page["metadata"]["continue"].as_str().filter(|c| !c.is_empty()) {
                Some(c) => next = c.to_string(),
                None => return Ok(out),
            }
        }
    }

    /// Each pod's first event with a node: pod name → when.
    async fn bindings(&self, ns: &str) -> Result<tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>> {
        let mut events = self.watch::<Placed>(&format!("/api/v1/namespaces/{ns}/pods?watch=true")).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        actix_rt::spawn(async move {
            let mut bound = std::collections::HashSet::new();
            while let Some((pod, at)) = events.recv().await {
                if pod.spec.node_name.is_some_and(|n| !n.is_empty())
                    && bound.insert(pod.metadata.name.clone())
                    && tx.send((pod.metadata.name, at)).is_err()
                {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// A watch event as the bench reads it: its type and its object as `T`.
#[derive(serde::Deserialize)]
struct Event<T> {
    #[serde(rename = "type")]
    kind: String,
    object: T,
}

/// What the scheduling bench reads of a pod: its name and node.
#[derive(serde::Deserialize)]
struct Placed {
    metadata: Named,
    #[serde(default)]
    spec: PlacedSpec,
}

#[derive(serde::Deserialize)]
struct Named {
    name: String,
}

#[derive(serde::Deserialize, Default)]
struct PlacedSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

/// From (creation, binding) seconds: how many whole seconds the bindings span (first to
/// last, both counted), and each pod's wait in seconds, sorted.
/// The binding rate over each fifth of the bindings, in order: whether the rate holds
/// as the store grows (a 100,000-pod run has read a third slower than a 20,000 one).
fn rate_by_fifths(mut times: Vec<Instant>) -> Vec<f64> {
    times.sort();
    let n = times.len();
    (0..5)
        .filter_map(|i| {
            let (a, b) = (i * n / 5, ((i + 1) * n / 5).checked_sub(1)?);
            let secs = times.get(b)?.saturating_duration_since(*times.get(a)?).as_secs_f64();
            (b > a && secs > 0.0).then(|| (b - a) as f64 / secs)
        })
        .collect()
}

fn server_side(pods: &[(u64, u64)]) -> (u64, Vec<u64>) {
    let (Some(first), Some(last)) = (pods.iter().map(|p| p.1).min(), pods.iter().map(|p| p.1).max()) else {
        return (0, Vec::new());
    };
    let mut waits: Vec<u64> = pods.iter().map(|(c, s)| s.saturating_sub(*c)).collect();
    waits.sort();
    (last - first + 1, waits)
}

pub fn scheduler(args: SchedulerBenchArgs) -> Result<()> {
    let decisions = in_memory(args.nodes, 20_000);
    println!("scheduling decisions in memory over {} nodes: {decisions:.0}/s (20,000 pods)", args.nodes);
    let dir = std::env::temp_dir().join(format!("keelson-bench-scheduler-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = actix_rt::System::new().block_on(async {
        let keelson = Keelson::start(&dir)?;
        let data = keelson.data.root().to_path_buf();
        let addr = std::fs::read_to_string(data.join("server-1/api-addr"))?;
        let api = Api {
            url: format!("https://{}", addr.trim()),
            token: keelson.token.clone(),
            client: client(&keelson.data, 256)?,
        };
        actix_rt::time::sleep(Duration::from_secs(3)).await;

        // Node loss first, on a small cluster of two agents.
        let lost = agent(&data, "lost", 2, "500ms", "2")?;
        api.wait_ready("lost.", 2).await?;
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "moving"},
            "spec": {"replicas": 20, "selector": {"matchLabels": {"app": "moving"}},
                     "template": {"metadata": {"labels": {"app": "moving"}},
                                  "spec": {"tolerations": [{"key": "keelson.dev/hollow", "operator": "Exists"}],
                                           "containers": [{"name": "c", "image": "busybox"}]}}}});
        if api.post("/apis/apps/v1/namespaces/default/deployments", &deployment).await? != 201 {
            bail!("could not create the Deployment");
        }
        let running_on = |pods: &Value, prefix: &str| {
            pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| p["spec"]["nodeName"].as_str().is_some_and(|n| n.starts_with(prefix)))
                .count()
        };
        while running_on(&api.get_json("/api/v1/namespaces/default/pods?labelSelector=app%3Dmoving").await?, "lost.")
            < 20
        {
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
        let kept = agent(&data, "kept", 2, "500ms", "2")?;
        api.wait_ready("kept.", 2).await?;
        unsafe { libc::kill(lost.0.id() as i32, libc::SIGSTOP) };
        let stopped = Instant::now();
        while running_on(&api.get_json("/api/v1/namespaces/default/pods?labelSelector=app%3Dmoving").await?, "kept.")
            < 20
        {
            if stopped.elapsed() > Duration::from_secs(120) {
                bail!("the pods did not move within 2 minutes");
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "node loss: 20 pods running on other nodes {:.1} s after their 2 nodes stopped (lease 2 s, toleration 1 s)",
            stopped.elapsed().as_secs_f64()
        );
        drop((lost, kept));
        let _ = api
            .client
            .delete(format!("{}/apis/apps/v1/namespaces/default/deployments/moving", api.url))
            .bearer_auth(&api.token)
            .send()
            .await;

        // Throughput: many hollow nodes (slow heartbeats, as at scale), then the pods.
        let hollow = agent(&data, "hollow", args.nodes, "20s", "60")?;
        let took = api.wait_ready("hollow.", args.nodes as usize).await?;
        eprintln!("{} hollow nodes Ready after {:.1} s", args.nodes, took.as_secs_f64());
        if api
            .post(
                "/api/v1/namespaces",
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sched"}}),
            )
            .await?
            != 201
        {
            bail!("could not create the sched namespace");
        }
        let mut bound_rx = api.bindings("sched").await?;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let created: std::sync::Mutex<HashMap<String, Instant>> = std::sync::Mutex::default();
        // Who spends the CPU: each server, the hollow agent, this bench (its clients).
        let mut processes: Vec<(String, u32)> = keelson
            .members()
            .into_iter()
            .filter_map(|(pid, cmd)| {
                let name = cmd.split(' ').skip_while(|a| *a != "--name").nth(1)?.to_string();
                Some((name, pid))
            })
            .collect();
        processes.sort();
        processes.push(("hollow agent".into(), hollow.0.id()));
        processes.push(("bench".into(), std::process::id()));
        let cpu_before = super::cpu::Sample::take(&processes);
        let began = Instant::now();
        // Why creates failed: each cause (a status code, or the client's error) counted.
        let failed: std::sync::Mutex<std::collections::BTreeMap<String, usize>> = std::sync::Mutex::default();
        let workers = (0..args.clients).map(|_| async {
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= args.pods {
                    return errors;
                }
                if i % 10_000 == 9_999 {
                    eprintln!("  … {} pods asked for", i + 1);
                }
                let name = format!("p{i}");
                let cause = match api.post("/api/v1/namespaces/sched/pods", &pod(&name)).await {
                    Ok(201) => {
                        created.lock().unwrap().insert(name, Instant::now());
                        continue;
                    }
                    Ok(code) => format!("HTTP {code}"),
                    Err(e) => e.to_string(),
                };
                errors += 1;
                *failed.lock().unwrap().entry(cause).or_default() += 1;
            }
        });
        let errors: usize = futures_util::future::join_all(workers).await.into_iter().sum();
        let create_secs = began.elapsed().as_secs_f64();
        for (cause, n) in failed.into_inner().unwrap() {
            eprintln!("  {n} creates failed: {cause}");
        }
        let made = args.pods - errors;
        let mut bound_at: HashMap<String, Instant> = HashMap::new();
        while bound_at.len() < made {
            match tokio::time::timeout(Duration::from_secs(60), bound_rx.recv()).await {
                Ok(Some((name, at))) => {
                    bound_at.insert(name, at);
                }
                _ => bail!("only {} of {made} pods were bound", bound_at.len()),
            }
        }
        let cpu_after = super::cpu::Sample::take(&processes);
        let first = bound_at.values().min().copied().unwrap_or(began);
        let last = bound_at.values().max().copied().unwrap_or(began);
        let created = created.into_inner().unwrap();
        let mut lat: Vec<Duration> =
            bound_at.iter().filter_map(|(n, at)| created.get(n).map(|c| at.saturating_duration_since(*c))).collect();
        lat.sort();
        println!(
            "{} pods created over HTTPS by {} clients in {create_secs:.1} s: {:.0}/s ({errors} errors)",
            made,
            args.clients,
            made as f64 / create_secs
        );
        println!(
            "bound: {:.0} pods/s from the first binding to the last ({:.1} s), {:.0}/s from the first create",
            made as f64 / (last - first).as_secs_f64(),
            (last - first).as_secs_f64(),
            made as f64 / (last - began).as_secs_f64()
        );
        let fifths: Vec<String> =
            rate_by_fifths(bound_at.values().copied().collect()).iter().map(|r| format!("{r:.0}")).collect();
        println!("bound per second over each fifth of the pods: {}", fifths.join(", "));
        println!(
            "creation → binding: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
        );
        println!("CPU per pod created and bound: {}", cpu_after.per_unit_since(&cpu_before, made));
        // The servers' own record, independent of how fast this process reads its watch:
        // each pod's creationTimestamp and PodScheduled time (whole seconds, as Kubernetes
        // writes them).
        let (seconds, waits) = server_side(&api.pods_scheduled("sched").await?);
        println!(
            "bound, as the servers recorded it: {:.0} pods/s over {seconds} whole seconds; \
             creation → binding in whole seconds: p50 {} s, p99 {} s",
            waits.len() as f64 / seconds.max(1) as f64,
            waits.get(waits.len() / 2).copied().unwrap_or(0),
            waits.get(waits.len() * 99 / 100).copied().unwrap_or(0),
        );
        super::print_warnings(&dir);
        drop(hollow);
        Ok::<_, anyhow::Error>(())
    });
    super::finish(&dir, result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_side_counts_whole_seconds_and_sorts_waits() {
        let (secs, waits) = super::server_side(&[(10, 12), (10, 10), (11, 14)]);
        assert_eq!(secs, 5, "bindings from second 10 to 14");
        assert_eq!(waits, vec![0, 2, 3]);
        assert_eq!(super::server_side(&[]), (0, vec![]));
    }

    #[test]
    fn fifths_rate_each_slice_of_the_bindings() {
        let t0 = std::time::Instant::now();
        // 10 bindings: the first 6 each 10 ms apart, the last 4 each 100 ms apart.
        let mut at = Vec::new();
        let mut t = t0;
        for i in 0..10u64 {
            at.push(t);
            t += std::time::Duration::from_millis(if i < 5 { 10 } else { 100 });
        }
        at.reverse(); // any order
        let r = super::rate_by_fifths(at);
        assert_eq!(r.len(), 5);
        assert!((r[0] - 100.0).abs() < 1.0, "{r:?}");
        assert!((r[4] - 10.0).abs() < 0.1, "{r:?}");
        assert!(super::rate_by_fifths(vec![t0]).is_empty());
    }
}
