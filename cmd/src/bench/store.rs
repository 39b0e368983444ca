//! `keelson bench store`: the replicated store under load, against etcd on the same
//! machine when Debian's `etcd` is installed (`apt-get install etcd-server`).
//!
//! Both run three members on 127.0.0.1 and take the same workload over HTTP/JSON, in
//! alternation: 256-byte values put by 1, 16 and 64 concurrent clients for
//! `--seconds` each (keelson: `PUT /kv/key/…` on a member's door, any member, followers
//! forward to the leader; etcd: `POST /v3/kv/put` on its gateway). Printed: puts/s,
//! p50/p99/p99.9 latency, and CPU time per committed put summed over the three members
//! (from /proc). Then, for keelson, the same at 10% injected loss between members, and
//! the time from SIGKILL of the leader to the first committed put (median and max over
//! `--kills` kills; the launcher restarts the killed member each time), and the same
//! kills for etcd.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::datadir::DataDir;

#[derive(Args)]
pub struct StoreBenchArgs {
    /// Seconds per load cell.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Leader kills for the fail-over figure.
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// Skip etcd even if it is installed.
    #[arg(long)]
    pub no_etcd: bool,
}

const VALUE: [u8; 256] = [b'x'; 256];

/// One system under test: how to put, where its members are, how to find and kill its leader.
trait Target {
    fn endpoints(&self) -> Vec<String>;
    fn put_request(&self, client: &awc::Client, endpoint: &str, key: &str) -> awc::SendClientRequest;
    fn pids(&self) -> Vec<u32>;
    async fn leader(&self, client: &awc::Client) -> Option<usize>;
    /// Brings a killed member back (keelson's launcher does it by itself).
    fn revive(&mut self, _member: usize) -> Result<()> {
        Ok(())
    }
}

pub(super) struct Keelson {
    pub(super) data: DataDir,
    pub(super) token: String,
    up: Child,
}

const MEMBERS: [&str; 3] = ["server-1", "server-2", "server-3"];

impl Keelson {
    /// The `keelson up` process's children (its servers and agents), with their
    /// command lines.
    pub(super) fn members(&self) -> Vec<(u32, String)> {
        super::cpu::children(self.up.id())
    }

    /// `keelson up` with its servers only (the store, API and scheduling benchmarks).
    pub(super) fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, &["--agents", "0"])
    }

    /// `keelson up` with `args` added.
    pub(super) fn start_with(dir: &Path, args: &[&str]) -> Result<Self> {
        let data = dir.join("keelson");
        let mut up = Command::new(std::env::current_exe()?)
            .arg("up")
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            // Warnings only, unless the caller asks for more (e.g. the scheduler's
            // `scheduler: the last 5 s` lines: RUST_LOG=warn,keelson_actors::controllers=info).
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = BufReader::new(up.stdout.take().expect("piped"));
        for line in out.lines() {
            if line?.contains("keelson: ready") {
                break;
            }
        }
        let data = DataDir::existing(&data)?;
        let token = data.token()?;
        Ok(Self { data, token, up })
    }
}

impl Target for Keelson {
    fn endpoints(&self) -> Vec<String> {
        MEMBERS.iter().filter_map(|m| self.data.door(m).ok()).map(|d| d.url).collect()
    }
    fn put_request(&self, client: &awc::Client, endpoint: &str, key: &str) -> awc::SendClientRequest {
        client.put(format!("{endpoint}/kv/key/bench/{key}")).bearer_auth(&self.token).send_body(&VALUE[..])
    }
    fn pids(&self) -> Vec<u32> {
        MEMBERS.iter().filter_map(|m| self.data.door(m).ok()).map(|d| d.pid).collect()
    }
    async fn leader(&self, client: &awc::Client) -> Option<usize> {
        for e in self.endpoints() {
            if let Ok(mut r) = client.get(format!("{e}/kv/status")).bearer_auth(&self.token).send().await {
                let v: Value = r.json().await.ok()?;
                let name = v[0]["leader"].as_str()?;
                return MEMBERS.iter().position(|m| *m == name);
            }
        }
        None
    }
}

impl Drop for Keelson {
    fn drop(&mut self) {
        unsafe { libc::kill(self.up.id() as i32, libc::SIGINT) };
        let _ = self.up.wait();
    }
}

struct Etcd {
    dir: PathBuf,
    procs: Vec<Option<Child>>,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    fn available() -> bool {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn start(dir: &Path) -> Result<Self> {
        let client_ports = (0..3).map(|_| free_port()).collect::<Result<Vec<_>>>()?;
        let peer_ports = (0..3).map(|_| free_port()).collect::<Result<Vec<_>>>()?;
        let mut e = Self { dir: dir.join("etcd"), procs: vec![None, None, None], client_ports, peer_ports };
        for i in 0..3 {
            e.spawn(i)?;
        }
        Ok(e)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let cluster: Vec<String> = (0..3).map(|j| format!("e{j}=http://127.0.0.1:{}", self.peer_ports[j])).collect();
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("e{i}")))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", self.client_ports[i])])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{}", self.client_ports[i])])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", self.peer_ports[i])])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", self.peer_ports[i])])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?;
        self.procs[i] = Some(child);
        Ok(())
    }
}

impl Target for Etcd {
    fn endpoints(&self) -> Vec<String> {
        self.client_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect()
    }
    fn put_request(&self, client: &awc::Client, endpoint: &str, key: &str) -> awc::SendClientRequest {
        let b64 = keelson_actors::api::base64;
        let body = json!({"key": b64(format!("/bench/{key}").as_bytes()), "value": b64(&VALUE)});
        client.post(format!("{endpoint}/v3/kv/put")).send_json(&body)
    }
    fn pids(&self) -> Vec<u32> {
        self.procs.iter().flatten().map(|c| c.id()).collect()
    }
    async fn leader(&self, client: &awc::Client) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for e in self.endpoints() {
            let v: Value = match client.post(format!("{e}/v3/maintenance/status")).send_json(&json!({})).await {
                Ok(mut r) => r.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            };
            ids.push(v["header"]["member_id"].as_str().map(str::to_string));
            if leader.is_none() {
                leader = v["leader"].as_str().map(str::to_string);
            }
        }
        ids.iter().position(|id| id.is_some() && *id == leader)
    }
    fn revive(&mut self, member: usize) -> Result<()> {
        if let Some(mut c) = self.procs[member].take() {
            let _ = c.wait();
        }
        self.spawn(member)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The CPU time `pids` have used so far, together.
fn cpu_used(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| super::cpu::used(*p)).sum()
}

struct Cell {
    puts_per_s: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu_us_per_put: f64,
    errors: usize,
}

pub(super) fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

async fn load(t: &impl Target, clients: usize, secs: u64, round: usize) -> Cell {
    let endpoints = t.endpoints();
    let pids = t.pids();
    let cpu_before = cpu_used(&pids);
    let until = Instant::now() + Duration::from_secs(secs);
    let began = Instant::now();
    let workers = (0..clients).map(|c| {
        let endpoint = endpoints[c % endpoints.len()].clone();
        async move {
            let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
            let (mut lat, mut errors, mut i) = (Vec::new(), 0, 0usize);
            while Instant::now() < until {
                let key = format!("r{round}-c{c}-{i}");
                i += 1;
                let t0 = Instant::now();
                match t.put_request(&client, &endpoint, &key).await {
                    Ok(mut r) if r.status().is_success() => {
                        let _ = r.body().await;
                        lat.push(t0.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }
    });
    let results = futures_util::future::join_all(workers).await;
    let secs = began.elapsed().as_secs_f64();
    let cpu = cpu_used(&pids).saturating_sub(cpu_before);
    let mut all: Vec<Duration> = results.iter().flat_map(|(l, _)| l.iter().copied()).collect();
    let errors = results.iter().map(|(_, e)| e).sum();
    all.sort();
    Cell {
        puts_per_s: all.len() as f64 / secs,
        p50: pct(&all, 0.5),
        p99: pct(&all, 0.99),
        p999: pct(&all, 0.999),
        cpu_us_per_put: cpu.as_secs_f64() * 1e6 / all.len().max(1) as f64,
        errors,
    }
}

/// SIGKILL the leader, then put through the others until one is committed: the time
/// it took, per kill.
async fn failovers(t: &mut impl Target, kills: usize) -> Result<Vec<Duration>> {
    let client = awc::Client::builder().timeout(Duration::from_millis(500)).finish();
    let mut out = Vec::new();
    for k in 0..kills {
        let mut leader = None;
        for _ in 0..200 {
            leader = t.leader(&client).await;
            if leader.is_some() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        let leader = leader.context("no leader to kill")?;
        let pids = t.pids();
        let endpoints = t.endpoints();
        let victim = *pids.get(leader).context("no pid for the leader")?;
        let began = Instant::now();
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        let others: Vec<&String> = endpoints.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, e)| e).collect();
        let mut i = 0;
        loop {
            let e = others[i % others.len()];
            i += 1;
            if let Ok(mut r) = t.put_request(&client, e, &format!("failover-{k}-{i}")).await {
                if r.status().is_success() {
                    let _ = r.body().await;
                    break;
                }
            }
            if began.elapsed() > Duration::from_secs(30) {
                bail!("no committed put within 30 s of killing the leader");
            }
        }
        out.push(began.elapsed());
        t.revive(leader)?;
        actix_rt::time::sleep(Duration::from_secs(2)).await;
    }
    out.sort();
    Ok(out)
}

/// The fail-over times of `who` (sorted), as median and max.
fn print_failovers(who: &str, times: &[Duration]) {
    let (Some(median), Some(max)) = (times.get(times.len() / 2), times.last()) else {
        println!("{who}: no fail-over measured");
        return;
    };
    println!(
        "{who}: SIGKILL of the leader to the first committed put: median {:.0} ms, max {:.0} ms ({} kills)",
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        times.len()
    );
}

fn print_cell(name: &str, loss: &str, clients: usize, c: &Cell) {
    println!(
        "{:<9} {:>5} {:>7} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>9.0} {:>6}",
        name, loss, clients, c.puts_per_s, c.p50, c.p99, c.p999, c.cpu_us_per_put, c.errors
    );
}

async fn set_loss(k: &Keelson, share: f64) -> Result<()> {
    let client = awc::Client::default();
    for (i, e) in k.endpoints().iter().enumerate() {
        for (j, peer) in MEMBERS.iter().enumerate() {
            if i == j {
                continue;
            }
            let body = if share > 0.0 {
                json!({"peer": peer, "direction": "out", "faults": {"loss": share}})
            } else {
                json!({"heal": true})
            };
            let r = client.post(format!("{e}/chaos/net")).bearer_auth(&k.token).send_json(&body).await;
            if !r.is_ok_and(|r| r.status().is_success()) {
                bail!("could not set faults on {e}");
            }
        }
    }
    Ok(())
}

pub fn store(args: StoreBenchArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("keelson-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = actix_rt::System::new().block_on(async {
        let mut keelson = Keelson::start(&dir)?;
        let mut etcd = if !args.no_etcd && Etcd::available() { Some(Etcd::start(&dir)?) } else { None };
        if etcd.is_none() {
            println!("(etcd not found: install Debian's etcd-server to compare)");
        }
        actix_rt::time::sleep(Duration::from_secs(3)).await;
        println!(
            "{:<9} {:>5} {:>7} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6}",
            "system", "loss", "clients", "puts/s", "p50 ms", "p99 ms", "p99.9 ms", "cpu µs/put", "errors"
        );
        let mut rows = Vec::new();
        for (round, clients) in [1usize, 16, 64].into_iter().enumerate() {
            let k = load(&keelson, clients, args.seconds, round).await;
            print_cell("keelson", "0%", clients, &k);
            if let Some(e) = &etcd {
                let c = load(e, clients, args.seconds, round).await;
                print_cell("etcd 3.4", "0%", clients, &c);
                rows.push((clients, k.puts_per_s / c.puts_per_s, k.p99 / c.p99, k.cpu_us_per_put / c.cpu_us_per_put));
            }
        }
        set_loss(&keelson, 0.10).await?;
        for (round, clients) in [1usize, 16, 64].into_iter().enumerate() {
            let k = load(&keelson, clients, args.seconds, 10 + round).await;
            print_cell("keelson", "10%", clients, &k);
        }
        set_loss(&keelson, 0.0).await?;
        if !rows.is_empty() {
            println!("\nkeelson / etcd: clients, throughput ratio, p99 ratio, CPU-per-put ratio");
            for (c, t, p, cpu) in rows {
                println!("  {c:>3}: {t:.2}x throughput, {p:.2}x p99, {cpu:.2}x CPU per put");
            }
        }
        if args.kills == 0 {
            return Ok(());
        }
        let k = failovers(&mut keelson, args.kills).await?;
        print_failovers("\nkeelson", &k);
        if let Some(e) = etcd.as_mut() {
            print_failovers("etcd 3.4", &failovers(e, args.kills).await?);
        }
        Ok::<_, anyhow::Error>(())
    });
    super::finish(&dir, result)
}
