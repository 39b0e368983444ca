//! `keelson bench proxy`: the Service proxy's data path (the code a Service actor runs
//! for each connection) against a direct connection, on loopback:
//! - small HTTP requests on `--connections` keep-alive connections for `--seconds`:
//!   requests/s and p50/p99 latency, direct to a backend and through the proxy;
//! - bulk: one connection of `--bulk-mb` MB, MB/s, direct and through the proxy.
//!
//! Each is measured three ways: direct to the backend, through the user-space proxy
//! (what carries node-port traffic from other machines), and with the connect
//! rewritten in the kernel (what carries connects from the node's own processes and
//! pods, as root). The backend, the proxy and the load each run on a runtime thread
//! of their own, as they would as processes (the agent runs its proxy on one thread).

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use keelson_actors::proxy::service::{Forwarder, Listen, Protocol};
use keelson_actors::proxy::ConnectBalancer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Args)]
pub struct ProxyBenchArgs {
    /// Seconds per request/response run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Keep-alive connections sending requests at once.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Megabytes per bulk run.
    #[arg(long, default_value_t = 512)]
    pub bulk_mb: usize,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A runtime on a thread of its own.
fn runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().thread_name(name).build()?)
}

/// The backend: answers each request on a connection (`/`), or counts a bulk upload
/// to its end and answers the byte count.
async fn backend(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 64 * 1024];
            let mut pending = Vec::new();
            let mut bulk = 0u64;
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if bulk > 0 || buf[..n].starts_with(b"BULK") {
                    bulk += n as u64;
                    continue;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    if s.write_all(ANSWER).await.is_err() {
                        return;
                    }
                }
            }
            if bulk > 0 {
                let _ = s.write_all(bulk.to_string().as_bytes()).await;
            }
        });
    }
}

/// `connections` keep-alive loops for `seconds`: (requests/s, p50, p99).
async fn load(at: SocketAddr, connections: usize, seconds: u64) -> Result<(f64, Duration, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let stop = stop.clone();
        let mut s = TcpStream::connect(at).await.context("connecting")?;
        s.set_nodelay(true)?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut buf = vec![0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                if s.write_all(REQUEST).await.is_err() {
                    break;
                }
                let mut got = 0;
                while got < ANSWER.len() {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return latencies,
                        Ok(n) => got += n,
                    }
                }
                latencies.push(began.elapsed());
            }
            latencies
        }));
    }
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let secs = began.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1))).copied();
    Ok((all.len() as f64 / secs, at(0.5).unwrap_or_default(), at(0.99).unwrap_or_default()))
}

/// One upload of `mb` MB: MB/s until the backend has counted it all.
async fn bulk(at: SocketAddr, mb: usize) -> Result<f64> {
    let mut s = TcpStream::connect(at).await?;
    let chunk = vec![7u8; 1 << 20];
    let began = Instant::now();
    s.write_all(b"BULK").await?;
    for _ in 0..mb {
        s.write_all(&chunk).await?;
    }
    s.shutdown().await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let counted: u64 = answer.trim().parse().context("the backend's count")?;
    anyhow::ensure!(counted == (mb as u64) * (1 << 20) + 4, "the backend counted {counted} bytes");
    Ok(mb as f64 / began.elapsed().as_secs_f64())
}

pub fn proxy(args: ProxyBenchArgs) -> Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = runtime("backend").expect("a runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a backend port");
            let _ = ready_tx.send(listener.local_addr().expect("its address"));
            backend(listener).await;
        });
    });
    let direct = ready_rx.recv()?;
    let (proxy_tx, proxy_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = runtime("proxy").expect("a runtime");
        rt.block_on(async move {
            let listen = Listen { protocol: Protocol::Tcp, addr: SocketAddrV4::new([127, 0, 0, 1].into(), 0) };
            let forwarder = Forwarder::start(listen, vec![direct], None).expect("a proxy port");
            let _ = proxy_tx.send(forwarder.local_addr());
            std::future::pending::<()>().await;
        });
    });
    let proxied = proxy_rx.recv()?;
    let SocketAddr::V4(service) = proxied else { anyhow::bail!("the proxy listens on IPv4") };
    // The kernel path: connects to the proxy's address rewritten to the backend's (as
    // the agent does for Service addresses), attached only for its own runs.
    let kernel = || match ConnectBalancer::attach() {
        Ok(lb) => {
            let failed = lb.assign("bench", &[(service, &[direct][..])]);
            anyhow::ensure!(failed.is_empty(), "balancing in the kernel: {failed:?}");
            Ok(Some(lb))
        }
        Err(e) => {
            println!("  (connect-time balancing in the kernel not measured: {e})");
            Ok(None)
        }
    };
    // Each measurement on the three paths: the backend's address, then the proxy's
    // without and with the kernel's balancer (attached for its own run only).
    let on_each_path = |measure: &mut dyn FnMut(&str, SocketAddr) -> Result<f64>| -> Result<Vec<(&'static str, f64)>> {
        let mut out = Vec::new();
        for (name, at) in [("direct", direct), ("user-space proxy", proxied)] {
            out.push((name, measure(name, at)?));
        }
        if let Some(_lb) = kernel()? {
            out.push(("in the kernel", measure("in the kernel", proxied)?));
        }
        Ok(out)
    };
    let rt = runtime("load")?;
    println!("proxy: {} keep-alive connections, {} s per run, small HTTP requests", args.connections, args.seconds);
    let mut p99s = Vec::new();
    let rates = on_each_path(&mut |name, at| {
        let (rate, p50, p99) = rt.block_on(load(at, args.connections, args.seconds))?;
        println!("  {name:<18} {rate:>9.0} requests/s   p50 {:>6} µs   p99 {:>6} µs", p50.as_micros(), p99.as_micros());
        p99s.push(p99.as_micros() as i64);
        Ok(rate)
    })?;
    for (i, (name, rate)) in rates.iter().enumerate().skip(1) {
        println!("  {name}: {:.0}% of direct throughput, p99 {:+} µs", 100.0 * rate / rates[0].1, p99s[i] - p99s[0]);
    }
    println!("bulk: one connection, {} MB", args.bulk_mb);
    let speeds = on_each_path(&mut |name, at| {
        let mbs = rt.block_on(bulk(at, args.bulk_mb))?;
        println!("  {name:<18} {mbs:>9.0} MB/s");
        Ok(mbs)
    })?;
    for (name, mbs) in &speeds[1..] {
        println!("  {name}: {:.0}% of direct", 100.0 * mbs / speeds[0].1);
    }
    Ok(())
}
