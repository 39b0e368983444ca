//! Delivers inbound messages to actors by path.

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
                tokio::spawn(fail(inbound.reply, 503, format!("{name} is not running (restarting)")));
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
        let route = self.routes.read().unwrap().get(&inbound.envelope.to.path).cloned();
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
