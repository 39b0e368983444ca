//! `keelson bench api`: the Kubernetes API over HTTPS under load — pod creates per
//! second at 16 and 64 clients (beside the raw store's puts at the same concurrency),
//! the time of the real `kubectl get pods -A` with 10,000 pods, and how long one change
//! takes to reach 1,000 open watches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;

use super::store::{pct, Keelson};

#[derive(Args)]
pub struct ApiBenchArgs {
    /// Seconds per create cell.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Pods listed by `kubectl get pods -A`.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Open watches for the fan-out figure.
    #[arg(long, default_value_t = 1_000)]
    pub watches: usize,
}

pub(super) struct Api {
    pub(super) url: String,
    pub(super) token: String,
    pub(super) client: awc::Client,
}

pub(super) fn client(data: &crate::datadir::DataDir, limit: usize) -> Result<awc::Client> {
    let ca = std::fs::read_to_string(data.root().join("ca.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.context("the cluster CA")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Pooled connections are dropped before the server would close them idle (90 s), so
    // a request never goes out on a connection the server already closed.
    let connector =
        awc::Connector::new().rustls_0_23(Arc::new(tls)).limit(limit).conn_keep_alive(Duration::from_secs(30));
    Ok(awc::Client::builder().connector(connector).timeout(Duration::from_secs(30)).finish())
}

fn pod(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench"}},
           "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}})
}

impl Api {
    pub(super) async fn post(&self, path: &str, body: &serde_json::Value) -> Result<u16> {
        let mut r = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send_json(body)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let _ = r.body().limit(1 << 20).await;
        Ok(r.status().as_u16())
    }

    /// Creates pods from `clients` tasks for `secs` (or until `total` exist): pods/s, p50, p99.
    async fn creates(
        &self,
        ns: &str,
        prefix: &str,
        clients: usize,
        secs: u64,
        total: Option<usize>,
    ) -> (f64, f64, f64, usize) {
        let until = Instant::now() + Duration::from_secs(secs);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let began = Instant::now();
        let workers = (0..clients).map(|_| async {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if total.map_or(Instant::now() >= until, |t| i >= t) {
                    return (lat, errors);
                }
                let t0 = Instant::now();
                match self.post(&format!("/api/v1/namespaces/{ns}/pods"), &pod(&format!("{prefix}-{i}"))).await {
                    Ok(201) => lat.push(t0.elapsed()),
                    _ => errors += 1,
                }
                if total.is_some() && i % 1_000 == 999 {
                    eprintln!("  … {} pods", i + 1);
                }
            }
        });
        let results = futures_util::future::join_all(workers).await;
        let mut all: Vec<Duration> = results.iter().flat_map(|(l, _)| l.iter().copied()).collect();
        all.sort();
        let errors = results.iter().map(|(_, e)| e).sum();
        (all.len() as f64 / began.elapsed().as_secs_f64(), pct(&all, 0.5), pct(&all, 0.99), errors)
    }
}

/// Raw store puts through a member's door at `clients`, for comparison.
async fn store_puts(k: &Keelson, clients: usize, secs: u64) -> f64 {
    let door = k.data.door("server-1").map(|d| d.url).unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(secs);
    let began = Instant::now();
    let workers = (0..clients).map(|c| {
        let door = door.clone();
        async move {
            let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
            let mut n = 0usize;
            while Instant::now() < until {
                let url = format!("{door}/kv/key/benchapi/c{c}-{n}");
                if let Ok(mut r) = client.put(url).bearer_auth(&k.token).send_body(&[b'x'; 256][..]).await {
                    let _ = r.body().await;
                    n += r.status().is_success() as usize;
                }
            }
            n
        }
    });
    let total: usize = futures_util::future::join_all(workers).await.into_iter().sum();
    total as f64 / began.elapsed().as_secs_f64()
}

/// Opens `n` watches on ConfigMaps in `fan`, then changes one ConfigMap a few times: the
/// delivery latency of each change to each watch.
async fn fan_out(api: &Api, data: &crate::datadir::DataDir, n: usize) -> Result<Vec<Duration>> {
    api.post("/api/v1/namespaces", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fan"}}))
        .await?;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hot"}, "data": {"n": "0"}});
    api.post("/api/v1/namespaces/fan/configmaps", &cm).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, String)>();
    for w in 0..n {
        let url = format!("{}/api/v1/namespaces/fan/configmaps?watch=true&resourceVersion=0", api.url);
        // One client per watch: each keeps its own connection open for the whole run.
        let watch_client = client(data, 1)?;
        let resp = watch_client.get(url).bearer_auth(&api.token).timeout(Duration::from_secs(600)).send().await;
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => bail!("opening watch {w}: {e}"),
        };
        let tx = tx.clone();
        actix_rt::spawn(async move {
            let _keep = watch_client;
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = resp.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
                    let n = v["object"]["data"]["n"].as_str().unwrap_or_default().to_string();
                    if tx.send((w, Instant::now(), n)).is_err() {
                        return;
                    }
                }
            }
        });
    }
    eprintln!("  {n} watches open");
    // Each watch first gets the ConfigMap as ADDED (n = 0): wait for all of them.
    let mut ready = 0;
    while ready < n {
        let (_, _, v) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await?.context("watches ended")?;
        ready += (v == "0") as usize;
    }
    let mut lat = Vec::new();
    for change in 1..=5u32 {
        let t0 = Instant::now();
        let url = format!("{}/api/v1/namespaces/fan/configmaps/hot", api.url);
        let mut r = api
            .client
            .patch(url)
            .bearer_auth(&api.token)
            .content_type("application/merge-patch+json")
            .send_body(json!({"data": {"n": change.to_string()}}).to_string())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let _ = r.body().await;
        let mut got = 0;
        while got < n {
            let (_, at, v) =
                tokio::time::timeout(Duration::from_secs(60), rx.recv()).await?.context("watches ended")?;
            if v == change.to_string() {
                lat.push(at - t0);
                got += 1;
            }
        }
        actix_rt::time::sleep(Duration::from_millis(500)).await;
    }
    lat.sort();
    Ok(lat)
}

pub fn api(args: ApiBenchArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("keelson-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = actix_rt::System::new().block_on(async {
        let keelson = Keelson::start(&dir)?;
        let addr = std::fs::read_to_string(keelson.data.root().join("server-1/api-addr"))?;
        let api = Api {
            url: format!("https://{}", addr.trim()),
            token: keelson.token.clone(),
            client: client(&keelson.data, 256)?,
        };
        actix_rt::time::sleep(Duration::from_secs(3)).await;
        for name in ["bench", "load"] {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            if api.post("/api/v1/namespaces", &ns).await? != 201 {
                bail!("could not create the {name} namespace");
            }
        }
        // The list first: exactly `--pods` pods in `bench`; the timed creates go to `load`.
        eprintln!("creating {} pods …", args.pods);
        api.creates("bench", "fill", 64, 3_600, Some(args.pods)).await;
        let kubeconfig = keelson.data.root().join("kubeconfig");
        let mut times = Vec::new();
        let mut count = 0;
        for _ in 0..3 {
            let t0 = Instant::now();
            let out = std::process::Command::new("kubectl")
                .args(["get", "pods", "-A", "--no-headers"])
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .context("kubectl")?;
            times.push(t0.elapsed());
            count = String::from_utf8_lossy(&out.stdout).lines().count();
        }
        times.sort();
        println!(
            "kubectl get pods -A with {count} pods: median {:.0} ms, best {:.0} ms (3 runs)",
            times[1].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3
        );
        println!("{:<28} {:>8} {:>9} {:>8} {:>8} {:>7}", "what", "clients", "per s", "p50 ms", "p99 ms", "errors");
        for clients in [16usize, 64] {
            let (rate, p50, p99, errors) =
                api.creates("load", &format!("c{clients}"), clients, args.seconds, None).await;
            println!("{:<28} {clients:>8} {rate:>9.0} {p50:>8.2} {p99:>8.2} {errors:>7}", "pod creates (HTTPS)");
            let puts = store_puts(&keelson, clients, args.seconds).await;
            println!("{:<28} {clients:>8} {puts:>9.0}", "store puts (door, 256 B)");
            println!("  creates / puts: {:.2}", rate / puts);
        }
        let lat = fan_out(&api, &keelson.data, args.watches).await?;
        println!(
            "one change to {} watches: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} deliveries)",
            args.watches,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            lat.len()
        );
        Ok::<_, anyhow::Error>(())
    });
    super::finish(&dir, result)
}
