//! `keelson bench pods`: real pods on real agents (the process runtime).
//!
//! 1. Idle memory: `keelson up` (3 servers + 2 agents), settled, its processes' RSS
//!    summed (the launcher and every member; no workload).
//! 2. Pod startup: a Deployment of `--pods` (`sleep`, so no image pull), created over
//!    HTTPS while a watch notes when each pod is first Running: the time from the
//!    create to each pod Running, and from each pod's own creation (its first event)
//!    to Running, p50 and p99.
//! 3. Memory again with the pods running (the members only, not the pods' processes).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Value};

use super::api::{client, Api};
use super::store::{pct, Keelson};

#[derive(Args)]
pub struct PodsBenchArgs {
    /// Pods in the Deployment.
    #[arg(long, default_value_t = 100)]
    pub pods: u32,
    /// How the agents give pods addresses (auto: namespaces as root).
    #[arg(long, default_value = "auto")]
    pub network: String,
    /// Pod network namespaces each agent keeps made ahead (netns mode).
    #[arg(long, default_value_t = keelson_config::DEFAULT_NETNS_POOL)]
    pub netns_pool: usize,
}

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The launcher's and every member's RSS: (sum, per process).
fn cluster_rss(keelson: &Keelson) -> (u64, Vec<(String, u64)>) {
    let members = ["up", "server-1", "server-2", "server-3", "agent-1", "agent-2"];
    let each: Vec<(String, u64)> =
        members.iter().filter_map(|m| keelson.data.door(m).ok().map(|d| (m.to_string(), rss(d.pid)))).collect();
    (each.iter().map(|(_, r)| r).sum(), each)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn pods(args: PodsBenchArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("keelson-bench-pods-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = actix_rt::System::new().block_on(async {
        let pool = args.netns_pool.to_string();
        let keelson = Keelson::start_with(&dir, &["--network", &args.network, "--netns-pool", &pool])?;
        let addr = std::fs::read_to_string(keelson.data.root().join("server-1/api-addr"))?;
        let api =
            Api { url: format!("https://{}", addr.trim()), token: keelson.token.clone(), client: client(&keelson.data, 16)? };
        let up = api.wait_ready("agent-", 2).await?;
        println!("cluster up, 2 nodes Ready: {:.1} s", up.as_secs_f64());
        actix_rt::time::sleep(Duration::from_secs(10)).await;
        let (idle, each) = cluster_rss(&keelson);
        let parts: Vec<String> = each.iter().map(|(m, r)| format!("{m} {:.0}", mb(*r))).collect();
        println!("idle memory (RSS, 3 servers + 2 agents + launcher): {:.0} MB ({})", mb(idle), parts.join(", "));

        let startup = "/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dstartup";
        let mut events = api.watch::<Value>(startup).await?;
        // Events are best effort: how many were written before the last pod ran (work on the burst's path).
        let mut recorded = api.watch::<Value>("/api/v1/namespaces/default/events?watch=true").await?;
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "startup"},
            "spec": {"replicas": args.pods, "selector": {"matchLabels": {"app": "startup"}},
                     "template": {"metadata": {"labels": {"app": "startup"}},
                                  "spec": {"terminationGracePeriodSeconds": 1,
                                           "containers": [{"name": "c", "image": "busybox",
                                                           "command": ["sleep", "3600"]}]}}}});
        let members: Vec<(String, u32)> = ["up", "server-1", "server-2", "server-3", "agent-1", "agent-2"]
            .iter()
            .filter_map(|m| keelson.data.door(m).ok().map(|d| (m.to_string(), d.pid)))
            .collect();
        let (cpu_before, machine_before) = (super::cpu::Sample::take(&members), super::cpu::machine_busy());
        let created = Instant::now();
        if api.post("/apis/apps/v1/namespaces/default/deployments", &deployment).await? != 201 {
            bail!("could not create the Deployment");
        }
        let mut seen: HashMap<String, Instant> = HashMap::new();
        let mut bound: HashMap<String, Instant> = HashMap::new();
        let mut running: HashMap<String, Instant> = HashMap::new();
        while running.len() < args.pods as usize {
            match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
                Ok(Some((o, at))) => {
                    let name = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    seen.entry(name.clone()).or_insert(at);
                    if o["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                        bound.entry(name.clone()).or_insert(at);
                    }
                    let is_running = o["status"]["phase"] == "Running"
                        && o["status"]["containerStatuses"][0]["state"]["running"].is_object();
                    if is_running {
                        running.entry(name).or_insert(at);
                    }
                }
                _ => bail!("only {} of {} pods Running after 2 minutes", running.len(), args.pods),
            }
        }
        let (cpu_after, machine_after) = (super::cpu::Sample::take(&members), super::cpu::machine_busy());
        let mut from_create: Vec<Duration> = running.values().map(|t| t.duration_since(created)).collect();
        let mut from_pod: Vec<Duration> = running.iter().map(|(n, t)| t.duration_since(seen[n])).collect();
        from_create.sort();
        from_pod.sort();
        // Where the time goes: the ReplicaSet's creates, the scheduler, the kubelets.
        let stage = |from: &dyn Fn(&str) -> Option<Instant>, to: &HashMap<String, Instant>| {
            let mut d: Vec<Duration> =
                to.iter().filter_map(|(n, t)| from(n).map(|f| t.saturating_duration_since(f))).collect();
            d.sort();
            format!("p50 {:.0} ms, p99 {:.0} ms", pct(&d, 0.50), pct(&d, 0.99))
        };
        println!(
            "stages: create → each pod created {}; pod created → bound {}; bound → Running {}",
            stage(&|_| Some(created), &seen),
            stage(&|n| seen.get(n).copied(), &bound),
            stage(&|n| bound.get(n).copied(), &running)
        );
        println!(
            "pod startup, Deployment of {} (from its create to each pod Running): p50 {:.0} ms, p99 {:.0} ms, all {:.0} ms",
            args.pods,
            pct(&from_create, 0.50),
            pct(&from_create, 0.99),
            from_create.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
        );
        println!(
            "pod startup (from each pod's creation to Running): p50 {:.0} ms, p99 {:.0} ms",
            pct(&from_pod, 0.50),
            pct(&from_pod, 0.99)
        );
        // The burst is bound by the machine's CPU: what it cost per pod, and where.
        let wall = from_create.last().copied().unwrap_or_default();
        let machine = machine_after.zip(machine_before).map_or(Duration::ZERO, |(a, b)| a.saturating_sub(b));
        println!(
            "CPU from the create to the last pod Running ({:.0} ms): the machine {:.0} ms busy of {} CPUs; per pod the \
             members {}",
            wall.as_secs_f64() * 1e3,
            machine.as_secs_f64() * 1e3,
            std::thread::available_parallelism().map_or(1, usize::from),
            cpu_after.per_unit_since(&cpu_before, args.pods as usize)
        );
        let first = |m: &HashMap<String, Instant>| {
            m.values().min().map_or(0.0, |t| t.saturating_duration_since(created).as_secs_f64() * 1e3)
        };
        println!(
            "first pod created {:.0} ms, first bound {:.0} ms, first Running {:.0} ms after the create",
            first(&seen),
            first(&bound),
            first(&running)
        );
        actix_rt::time::sleep(Duration::from_secs(5)).await;
        let (mut before, mut all) = (0, 0);
        while let Ok((_, at)) = recorded.try_recv() {
            all += 1;
            before += usize::from(at <= created + wall);
        }
        println!("Events: {before} of {all} written by the time the last pod was Running");
        let (busy, _) = cluster_rss(&keelson);
        println!("memory with {} pods running (members only): {:.0} MB", args.pods, mb(busy));
        let url = format!("{}/apis/apps/v1/namespaces/default/deployments/startup", api.url);
        let _ = api.client.delete(url).bearer_auth(&api.token).send().await;
        super::print_warnings(&dir);
        Ok(())
    });
    super::finish(&dir, result)
}
