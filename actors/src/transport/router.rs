//! Delivers inbound messages to actors by path.
//!
//! A message normally goes through its actor's mailbox. An actor whose messages must not
//! wait behind the rest of its thread (a store replica's raft RPCs: a heartbeat answered
//! late starts an election) may also open an inline lane: while the lane's guard lives,
//! its messages are handled on the transport's runtime as they arrive; the mailbox takes
//! them again once the guard is dropped (the actor stopped or closed what the lane used).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use keelson_transport::{Inbound, Reply};
use tokio::sync::mpsc;

use super::remote::Delivered;
use crate::runtime::{ActorPath, Handler, Ref};

type Route = Arc<dyn Fn(Inbound) + Send + Sync>;

/// Actor paths this process answers on, each bound to a stable reference.
#[derive(Default)]
pub struct Router {
    routes: RwLock<HashMap<String, Route>>,
    inline: RwLock<HashMap<String, Route>>,
}

/// Keeps an inline lane open; dropping it closes the lane (and only that lane: not one
/// opened on the same path since).
pub struct InlineLane {
    router: std::sync::Weak<Router>,
    path: String,
    route: Route,
}

impl Drop for InlineLane {
    fn drop(&mut self) {
        let Some(router) = self.router.upgrade() else { return };
        let mut inline = router.inline.write().unwrap();
        if inline.get(&self.path).is_some_and(|r| Arc::ptr_eq(r, &self.route)) {
            inline.remove(&self.path);
        }
    }
}

impl Router {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Messages for `path` go to whatever incarnation `target` reaches.
    pub fn route<A: Handler<Delivered>>(&self, path: &ActorPath, target: Ref<A>) {
        self.route_well_known(path.as_str(), target);
    }

    /// Like [`Router::route`], for a path that is not an actor path (such as `/join`,
    /// which a joiner sends to before it knows any member's name).
    pub fn route_well_known<A: Handler<Delivered>>(&self, path: &str, target: Ref<A>) {
        let path = path.to_string();
        let name = path.clone();
        let route: Route = Arc::new(move |inbound: Inbound| {
            if target.incarnation().is_none() {
                tokio::spawn(fail(
                    inbound.reply,
                    503,
                    format!("{name} is not running (not started yet, or restarting)"),
                ));
                return;
            }
            let target = target.clone();
            tokio::spawn(async move {
                // If the actor dies holding the message, the reply is dropped with it and
                // the caller sees the stream end without a reply: a typed error there.
                let _ = target.send(Delivered(inbound)).await;
            });
        });
        self.routes.write().unwrap().insert(path, route);
    }

    /// Until the returned lane is dropped, messages for `path` are given to `handle` on
    /// the transport's runtime instead of the actor's mailbox.
    pub fn inline(self: &Arc<Self>, path: &ActorPath, handle: impl Fn(Inbound) + Send + Sync + 'static) -> InlineLane {
        let route: Route = Arc::new(handle);
        self.inline.write().unwrap().insert(path.as_str().to_string(), route.clone());
        InlineLane { router: Arc::downgrade(self), path: path.as_str().to_string(), route }
    }

    /// Consumes the endpoint's inbox (on the transport's runtime) for as long as it lives.
    pub fn pump(self: &Arc<Self>, mut inbox: mpsc::Receiver<Inbound>, runtime: &tokio::runtime::Handle) {
        let router = self.clone();
        runtime.spawn(async move {
            while let Some(inbound) = inbox.recv().await {
                router.deliver(inbound);
            }
        });
    }

    fn deliver(&self, inbound: Inbound) {
        let path = &inbound.envelope.to.path;
        let inline = self.inline.read().unwrap().get(path).cloned();
        let route = inline.or_else(|| self.routes.read().unwrap().get(path).cloned());
        match route {
            Some(route) => route(inbound),
            None => {
                let msg = format!("no actor at {} on this member", inbound.envelope.to.path);
                tokio::spawn(fail(inbound.reply, 404, msg));
            }
        }
    }
}

async fn fail(reply: Reply, code: u16, message: String) {
    if let Reply::Stream { .. } = reply {
        let _peer_gone = reply.fail(code, &message).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use keelson_transport::frame::{Address, Envelope, Kind};

    use super::*;

    fn inbound(path: &str) -> Inbound {
        let to = Address { member: "m".into(), path: path.into() };
        let from = Address { member: "other".into(), path: "/other".into() };
        let envelope = Envelope { to, from, correlation: 1, kind: Kind::OneWay, payload: Vec::new() };
        Inbound { from: None, envelope, reply: Reply::None }
    }

    #[tokio::test]
    async fn an_inline_lane_takes_its_path_while_its_guard_lives() {
        let router = Router::new();
        let path = ActorPath::root("m").child("store").child("shard-0");
        let (first, second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let count = |n: &Arc<AtomicUsize>| {
            let n = n.clone();
            move |_: Inbound| {
                n.fetch_add(1, Ordering::SeqCst);
            }
        };
        let old = router.inline(&path, count(&first));
        router.deliver(inbound(path.as_str()));
        router.deliver(inbound("/m/elsewhere"));
        assert_eq!(first.load(Ordering::SeqCst), 1, "only its own path");
        // A later lane on the same path (the next incarnation) replaces it, and the old
        // guard's drop must not close the new lane.
        let new = router.inline(&path, count(&second));
        drop(old);
        router.deliver(inbound(path.as_str()));
        assert_eq!((first.load(Ordering::SeqCst), second.load(Ordering::SeqCst)), (1, 1));
        drop(new);
        router.deliver(inbound(path.as_str()));
        assert_eq!(second.load(Ordering::SeqCst), 1, "closed: back to the (here missing) mailbox route");
        assert!(router.inline.read().unwrap().is_empty());
    }
}
