//! `keelson bench actors`: figures for the supervision runtime (BENCHMARKS.md).
//!
//! - request/reply messages per second through one actor, and through a chain of 10
//!   actors that each forward to the next and relay the reply back;
//! - restart latency: from a kill (panic) to the new incarnation answering, p50/p99;
//! - memory per idle actor, from the process's resident set before and after starting
//!   N idle actors under 100 supervisors.

use std::time::{Duration, Instant};

use actix::{ActorFutureExt, Message};
use anyhow::{ensure, Result};
use clap::Args;
use futures_util::future::join_all;
use keelson_actors::runtime::{
    install_panic_hook, start_root, Actor, ActorPath, ActorState, AsyncReply, ChildSpec, Ctx, Handler, KillMode, Ref,
    Registry, Restart, Strategy, SupervisorSpec,
};
use keelson_config::{Backoff, Intensity, SupervisorConfig};

#[derive(Args)]
pub struct ActorBenchArgs {
    /// Request/reply messages per throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Messages in flight at once.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Kills for the restart-latency run.
    #[arg(long, default_value_t = 2_000)]
    pub restarts: usize,
    /// Idle actors for the memory run.
    #[arg(long, default_value_t = 100_000)]
    pub idle: usize,
}

#[derive(Message)]
#[rtype(result = "u64")]
struct Hop(u64);

/// Answers `Hop(n)` with n+1, or forwards it to `next` and relays the answer.
struct Relay {
    next: Option<Ref<Relay>>,
}

impl Actor for Relay {}

impl Handler<Hop> for Relay {
    type Result = AsyncReply<Self, u64>;
    fn handle(&mut self, Hop(n): Hop, _: &mut Ctx<Self>) -> Self::Result {
        match self.next.clone() {
            None => Box::pin(actix::fut::ready(n + 1)),
            Some(next) => Box::pin(
                actix::fut::wrap_future(async move { next.send(Hop(n + 1)).await }).map(|r, _, _| r.unwrap_or(0)),
            ),
        }
    }
}

struct Idle;
impl Actor for Idle {}

fn config() -> SupervisorConfig {
    SupervisorConfig { intensity: Intensity::new(1_000_000, Duration::from_secs(1)), backoff: Backoff::none(), seed: 1 }
}

async fn running(registry: &Registry, path: &str, incarnation: u64) {
    let path = ActorPath::parse(path).expect("valid path");
    while !registry.info(&path).is_some_and(|i| i.state == ActorState::Running && i.incarnation >= incarnation) {
        actix_rt::task::yield_now().await;
    }
}

/// Drives `total` hops through `head` with `in_flight` concurrent senders.
async fn throughput(head: &Ref<Relay>, total: usize, in_flight: usize, expect: u64) -> Result<f64> {
    let per = total / in_flight;
    let began = Instant::now();
    let senders = (0..in_flight).map(|_| async {
        let mut ok = 0usize;
        for _ in 0..per {
            if head.send(Hop(0)).await == Ok(expect) {
                ok += 1;
            }
        }
        ok
    });
    let ok: usize = join_all(senders).await.into_iter().sum();
    let secs = began.elapsed().as_secs_f64();
    ensure!(ok == per * in_flight, "only {ok} of {} replies were right", per * in_flight);
    Ok(ok as f64 / secs)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

pub fn actors(args: ActorBenchArgs) -> Result<()> {
    install_panic_hook(false);
    actix_rt::System::new().block_on(async move {
        // 1 and 10 actors in a chain.
        let registry = Registry::new("bench");
        let mut spec = SupervisorSpec::new(Strategy::OneForOne, config());
        let mut next: Option<Ref<Relay>> = None;
        let mut refs = Vec::new();
        for i in (0..10).rev() {
            let n = next.clone();
            let (child, r) = ChildSpec::new(&format!("hop{i}"), Restart::Permanent, move |_| Relay { next: n.clone() });
            spec = spec.child(child);
            refs.push(r.clone());
            next = Some(r);
        }
        let (single, single_ref) = ChildSpec::new("single", Restart::Permanent, |_| Relay { next: None });
        spec = spec.child(single);
        let _root = start_root(&registry, spec);
        running(&registry, "/bench/single", 1).await;
        running(&registry, "/bench/hop0", 1).await;
        let head = refs.last().expect("ten hops").clone();

        let one = throughput(&single_ref, args.messages, args.in_flight, 1).await?;
        println!("messages/s through 1 actor ({} in flight):    {:>12.0}", args.in_flight, one);
        let chain = throughput(&head, args.messages / 10, args.in_flight, 10).await?;
        println!("messages/s through a chain of 10 ({} in flight): {:>9.0}", args.in_flight, chain);
        println!("  (actor-hops/s in the chain:                  {:>12.0})", chain * 10.0);

        // Restart latency: kill, then ask until the new incarnation answers.
        let mut lat = Vec::with_capacity(args.restarts);
        let victim = ActorPath::parse("/bench/single").expect("valid path");
        for i in 0..args.restarts {
            let began = Instant::now();
            registry.kill(&victim, KillMode::Panic).map_err(|e| anyhow::anyhow!("{e}"))?;
            loop {
                if single_ref.incarnation() == Some(i as u64 + 2) && single_ref.send(Hop(0)).await == Ok(1) {
                    break;
                }
                actix_rt::task::yield_now().await;
            }
            lat.push(began.elapsed());
        }
        lat.sort();
        println!(
            "restart latency, kill to serving ({} kills):   p50 {:>7.1} µs   p99 {:>7.1} µs   max {:>7.1} µs",
            args.restarts,
            percentile(&lat, 0.50).as_secs_f64() * 1e6,
            percentile(&lat, 0.99).as_secs_f64() * 1e6,
            lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
        );

        // Memory per idle actor.
        let before = rss_bytes();
        let idle_registry = Registry::new("idle");
        let groups = 100;
        let mut spec = SupervisorSpec::new(Strategy::OneForOne, config());
        for g in 0..groups {
            let mut sup = SupervisorSpec::new(Strategy::OneForOne, config());
            for i in 0..args.idle / groups {
                sup = sup.child(ChildSpec::new(&format!("a{i}"), Restart::Permanent, |_| Idle).0);
            }
            spec = spec.child(ChildSpec::supervisor(&format!("g{g}"), Restart::Permanent, sup).0);
        }
        let began = Instant::now();
        let _idle_root = start_root(&idle_registry, spec);
        let last = format!("/idle/g{}/a{}", groups - 1, args.idle / groups - 1);
        running(&idle_registry, &last, 1).await;
        let took = began.elapsed();
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        let after = rss_bytes();
        let n = (args.idle / groups) * groups + groups;
        println!(
            "idle actors: {n} started in {:.2} s; resident memory +{:.1} MB ({:.0} bytes per actor)",
            took.as_secs_f64(),
            (after - before) as f64 / 1e6,
            (after - before) as f64 / n as f64
        );
        Ok(())
    })
}
