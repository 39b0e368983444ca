//! `/<member>/transport/<peer>`: keeps the link to one peer up.
//!
//! It dials at start, watches the connection, and when it closes dials again with
//! exponential back-off and jitter (100 ms doubling to 5 s). The endpoint shares one
//! connection per peer among all callers (concurrent dials are de-duplicated there);
//! this actor makes the link's life visible (its tree line shows state, RTT and
//! counters) and killable like any other component.

use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext};
use keelson_transport::{Link, Transport};

use super::{ProbeRequest, RemoteRef};
use crate::runtime::{Actor, ActorPath, ChildContext, Ctx, Incarnation, Registry};

fn probe_of(peer: &str) -> ActorPath {
    ActorPath::root(peer).child("transport").child("probe")
}

const DIAL_DEADLINE: Duration = Duration::from_secs(3);
const REDIAL_INITIAL: Duration = Duration::from_millis(100);
const REDIAL_MAX: Duration = Duration::from_secs(5);

pub struct PeerLink {
    transport: Transport,
    peer: String,
    path: ActorPath,
    registry: Registry,
    failures: u32,
    state: String,
    rng: fastrand::Rng,
}

impl PeerLink {
    pub fn new(cx: &ChildContext, transport: Transport, peer: &str) -> Self {
        Self {
            transport,
            peer: peer.to_string(),
            path: cx.path.clone(),
            registry: cx.registry.clone(),
            failures: 0,
            state: "dialing".into(),
            rng: fastrand::Rng::with_seed(cx.incarnation),
        }
    }

    fn dial(&mut self, ctx: &mut Ctx<Self>) {
        let (t, peer) = (self.transport.clone(), self.peer.clone());
        let dial = async move { t.connect(&peer, DIAL_DEADLINE).await };
        ctx.spawn(actix::fut::wrap_future(dial).map(|res, me: &mut Incarnation<Self>, ctx| match res {
            Ok(link) => me.up(link, ctx),
            Err(e) => me.down(e.to_string(), ctx),
        }));
    }

    fn up(&mut self, link: Link, ctx: &mut Ctx<Self>) {
        self.failures = 0;
        // A hello, so a peer that does not know us yet (we joined later) learns where
        // we listen from this first message.
        let hello = RemoteRef::new(self.transport.clone(), probe_of(&self.peer), self.path.clone());
        actix::spawn(async move {
            let _best_effort = hello.tell(&ProbeRequest::Hello, DIAL_DEADLINE).await;
        });
        self.state = format!("up {}", link.remote());
        tracing::info!(peer = %self.peer, remote = %link.remote(), "link up");
        self.report();
        let closed = async move { link.closed().await };
        ctx.spawn(actix::fut::wrap_future(closed).map(|reason, me: &mut Incarnation<Self>, ctx| me.down(reason, ctx)));
    }

    fn down(&mut self, reason: String, ctx: &mut Ctx<Self>) {
        self.failures += 1;
        let exp = REDIAL_INITIAL.saturating_mul(1 << self.failures.min(10)).min(REDIAL_MAX);
        let wait = exp.mul_f64(0.5 + self.rng.f64() / 2.0);
        tracing::info!(peer = %self.peer, %reason, retry_in = ?wait, "link down");
        self.state = format!("down ({reason}); retry in {} ms", wait.as_millis());
        self.report();
        ctx.run_later(wait, |me, ctx| me.dial(ctx));
    }

    /// The tree's detail line: state, then the endpoint's counters for this peer.
    fn report(&self) {
        let stats = self.transport.stats().into_iter().find(|s| s.peer == self.peer);
        let line = match stats {
            Some(s) => format!(
                "{}; rtt {:.1} ms, {} requests, {} errors, {} lost packets, {} injected drops",
                self.state,
                s.rtt_us as f64 / 1000.0,
                s.requests,
                s.errors,
                s.lost_packets,
                s.injected_drops
            ),
            None => self.state.clone(),
        };
        self.registry.set_info(&self.path, line);
    }
}

impl Actor for PeerLink {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        self.dial(ctx);
        ctx.run_interval(Duration::from_secs(1), |me, _| me.report());
    }
}
