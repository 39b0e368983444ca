//! Test actors and helpers shared by the runtime tests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{ActorFutureExt, Message, Running};
use keelson_actors::runtime::{
    install_panic_hook, start_root, Actor, ActorInfo, ActorPath, AsyncReply, ChildContext, ChildSpec, Ctx, Handler,
    Registry, Restart, Root, Strategy, SupervisorSpec,
};
use keelson_config::{Backoff, Intensity, SupervisorConfig};

/// A worker that answers pings with its incarnation and crashes on request.
pub struct Worker {
    pub incarnation: u64,
}

#[derive(Message)]
#[rtype(result = "u64")]
pub struct Ping;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

#[derive(Message)]
#[rtype(result = "()")]
pub struct CrashLater(pub Duration);

impl Actor for Worker {}

impl Handler<Ping> for Worker {
    type Result = u64;
    fn handle(&mut self, _: Ping, _: &mut Ctx<Self>) -> u64 {
        self.incarnation
    }
}

impl Handler<Crash> for Worker {
    type Result = ();
    fn handle(&mut self, _: Crash, _: &mut Ctx<Self>) {
        panic!("boom in a sync handler");
    }
}

impl Handler<CrashLater> for Worker {
    type Result = AsyncReply<Self, ()>;
    fn handle(&mut self, CrashLater(after): CrashLater, _: &mut Ctx<Self>) -> Self::Result {
        Box::pin(
            actix::fut::wrap_future(actix_rt::time::sleep(after)).map(|_, _, _| panic!("boom in an async handler")),
        )
    }
}

pub fn worker(name: &str, restart: Restart) -> (ChildSpec, keelson_actors::runtime::Ref<Worker>) {
    ChildSpec::new(name, restart, |cx: &ChildContext| Worker { incarnation: cx.incarnation })
}

/// Panics in `started` for its first `fail` starts (counted across incarnations).
pub struct Flaky {
    pub starts: Arc<AtomicU32>,
    pub fail: u32,
}

impl Actor for Flaky {
    fn started(&mut self, _: &mut Ctx<Self>) {
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= self.fail {
            panic!("boom in started ({n})");
        }
    }
}

impl Handler<Ping> for Flaky {
    type Result = u64;
    fn handle(&mut self, _: Ping, _: &mut Ctx<Self>) -> u64 {
        self.starts.load(Ordering::SeqCst) as u64
    }
}

/// Refuses to stop: `stopping` always answers Continue.
pub struct Stubborn;

impl Actor for Stubborn {
    fn stopping(&mut self, _: &mut Ctx<Self>) -> Running {
        Running::Continue
    }
}

/// Panics in `stopping`.
pub struct PanicsOnStop;

impl Actor for PanicsOnStop {
    fn stopping(&mut self, _: &mut Ctx<Self>) -> Running {
        panic!("boom in stopping");
    }
}

pub fn config(max: u32, period_ms: u64) -> SupervisorConfig {
    SupervisorConfig {
        intensity: Intensity::new(max, Duration::from_millis(period_ms)),
        backoff: Backoff::none(),
        seed: 7,
    }
}

pub fn root(member: &str, strategy: Strategy, cfg: SupervisorConfig, children: Vec<ChildSpec>) -> (Registry, Root) {
    install_panic_hook(true);
    let registry = Registry::new(member);
    let spec = children.into_iter().fold(SupervisorSpec::new(strategy, cfg), SupervisorSpec::child);
    let root = start_root(&registry, spec);
    (registry, root)
}

pub fn path(s: &str) -> ActorPath {
    ActorPath::parse(s).unwrap()
}

pub fn info(registry: &Registry, p: &str) -> ActorInfo {
    registry.info(&path(p)).unwrap_or_else(|| panic!("no actor at {p}"))
}

/// Polls `cond` every 5 ms for up to 20 s (a bound on a hang, not a timing claim).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..4000 {
        if cond() {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

pub async fn running_incarnation(registry: &Registry, p: &str, incarnation: u64) {
    eventually(&format!("{p} running as incarnation {incarnation}"), || {
        registry
            .info(&path(p))
            .is_some_and(|i| i.state == keelson_actors::runtime::ActorState::Running && i.incarnation == incarnation)
    })
    .await;
}
