//! `keelson bench transport`: QUIC between two processes, at several injected loss rates.
//!
//! The bench runs an echo peer as a second `keelson` process (`bench transport-peer`,
//! hidden), with credentials from a throwaway CA, and drives it from this one:
//! - request/response round trips per second and p50/p99 latency with 1, 16 and 64
//!   requests in flight (64-byte payloads), for `--seconds` each;
//! - bulk: one stream of `--bulk-mb` MB to the peer, MB/s until the peer confirms (the
//!   connection's first bulk is timed apart, before the cells: it runs slower);
//! - each at 0%, 1%, 5% and 20% loss, injected in this process's socket both ways
//!   (requests out, replies in), so every round trip crosses the lossy link twice.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use keelson_transport::faults::{Direction, LinkFaults};
use keelson_transport::tls::{ClusterCa, Credentials, Identity, Role};
use keelson_transport::{Reply, Transport, TransportConfig};

#[derive(Args)]
pub struct TransportBenchArgs {
    /// Seconds per request/response cell.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Megabytes per bulk run.
    #[arg(long, default_value_t = 64)]
    pub bulk_mb: usize,
    /// Loss rates to measure, in percent.
    #[arg(long, value_delimiter = ',', default_value = "0,1,5,20")]
    pub loss: Vec<f64>,
}

#[derive(Args)]
pub struct TransportPeerArgs {
    /// Folder with ca.crt, ca.key and the cluster id, written by the bench.
    #[arg(long)]
    pub dir: PathBuf,
}

fn creds(dir: &std::path::Path, name: &str) -> Result<Credentials> {
    let ca = ClusterCa::from_pem(
        "bench",
        &std::fs::read_to_string(dir.join("ca.crt"))?,
        &std::fs::read_to_string(dir.join("ca.key"))?,
    )?;
    Ok(ca.issue(&Identity::new(name, Role::Server)?)?)
}

/// The echo peer: `/echo` answers the payload, `/sink` reads a stream to its end and
/// answers with the byte count. Prints `ready <addr>` and runs until stdin closes.
pub fn transport_peer(args: TransportPeerArgs) -> Result<()> {
    let creds = creds(&args.dir, "peer")?;
    let cfg = TransportConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..TransportConfig::default() };
    let (t, mut inbox, runtime) = Transport::start(&creds, cfg)?;
    t.runtime().spawn(async move {
        while let Some(m) = inbox.recv().await {
            tokio::spawn(async move {
                match m.reply {
                    Reply::Stream { .. } => {
                        let _ = m.reply.respond(m.envelope.payload).await;
                    }
                    Reply::Open { mut send, mut recv } => {
                        let mut total = 0u64;
                        let mut buf = vec![0u8; 256 * 1024];
                        while let Ok(Some(n)) = recv.read(&mut buf).await {
                            total += n as u64;
                        }
                        let _ = send.write_all(&total.to_be_bytes()).await;
                        let _ = send.finish();
                    }
                    Reply::None => {}
                }
            });
        }
    });
    println!("ready {}", t.local_addr());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(runtime);
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

async fn round_trips(t: &Transport, in_flight: usize, secs: u64) -> (f64, f64, f64, usize) {
    let until = Instant::now() + Duration::from_secs(secs);
    let workers = (0..in_flight).map(|_| {
        let t = t.clone();
        tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < until {
                let began = Instant::now();
                match t.request("peer", "/echo", "/bench", vec![7u8; 64], Duration::from_secs(10)).await {
                    Ok(_) => lat.push(began.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        })
    });
    let began = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers.collect::<Vec<_>>() {
        let (lat, e) = w.await.expect("a bench worker");
        all.extend(lat);
        errors += e;
    }
    let secs = began.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / secs, pct(&all, 0.50), pct(&all, 0.99), errors)
}

async fn bulk(t: &Transport, mb: usize) -> Result<f64> {
    let (mut send, mut recv) = t.open("peer", "/sink", "/bench", vec![], Duration::from_secs(10)).await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let total = mb * 1024 * 1024;
    let began = Instant::now();
    let mut sent = 0;
    while sent < total {
        send.write_all(&chunk).await?;
        sent += chunk.len();
    }
    send.finish()?;
    let answer = recv.read_to_end(8).await?;
    let secs = began.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(answer.try_into().map_err(|_| anyhow::anyhow!("bad sink answer"))?);
    if got as usize != sent {
        bail!("the peer got {got} of {sent} bytes");
    }
    Ok(sent as f64 / 1e6 / secs)
}

pub fn transport(args: TransportBenchArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("keelson-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = ClusterCa::generate("bench")?;
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem)?;
    std::fs::write(dir.join("ca.key"), &ca.key_pem)?;
    let mut peer = Command::new(std::env::current_exe()?)
        .args(["bench", "transport-peer", "--dir"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the echo peer")?;
    let mut first = String::new();
    BufReader::new(peer.stdout.take().expect("piped")).read_line(&mut first)?;
    let addr: SocketAddr = first.trim().strip_prefix("ready ").context("the peer did not start")?.parse()?;
    let me = creds(&dir, "bench")?;
    let (t, _inbox, runtime) =
        Transport::start(&me, TransportConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..Default::default() })?;
    t.add_peer(Identity::new("peer", Role::Server)?, addr);
    let rt = t.runtime().clone();
    let result = rt.block_on(async {
        println!(
            "{:>6} {:>9} {:>12} {:>10} {:>10} {:>7}",
            "loss", "in-flight", "round-trips/s", "p50 ms", "p99 ms", "errors"
        );
        // The first bulk on a connection runs several times slower than the ones after
        // it (memory first touched on both sides, congestion control still ramping), so
        // it is timed apart and the cells below compare like with like.
        let cold = bulk(&t, args.bulk_mb).await?;
        let mut bulk_rows = Vec::new();
        for loss in &args.loss {
            let f = LinkFaults { loss: loss / 100.0, ..LinkFaults::default() };
            t.faults().set(addr, Direction::Out, f);
            t.faults().set(addr, Direction::In, f);
            for in_flight in [1, 16, 64] {
                let (rps, p50, p99, errors) = round_trips(&t, in_flight, args.seconds).await;
                println!("{:>5}% {:>9} {:>12.0} {:>10.2} {:>10.2} {:>7}", loss, in_flight, rps, p50, p99, errors);
            }
            bulk_rows.push((loss, bulk(&t, args.bulk_mb).await?));
        }
        println!();
        println!("{:>6} {:>10}", "loss", "bulk MB/s");
        for (loss, mbs) in bulk_rows {
            println!("{:>5}% {:>10.1}", loss, mbs);
        }
        println!("(the connection's first bulk, clean, before the cells: {cold:.1} MB/s)");
        Ok::<_, anyhow::Error>(())
    });
    drop(peer.stdin.take());
    let _ = peer.wait();
    drop(runtime);
    super::finish(&dir, result)
}
