//! An actix-web server owned by an actor (the admin door, the API): the server runs as
//! long as the incarnation, a server that ends on its own ends the incarnation with the
//! reason, and stopping finishes in-flight answers first (bounded by the server's
//! shutdown timeout).

use actix::{ActorContext, ActorFutureExt, AsyncContext, Running};

use super::{exit, Actor, Ctx, ExitReason, Incarnation};

/// The server an actor runs, and whether it is being stopped on purpose.
#[derive(Default)]
pub struct Serving {
    handle: Option<actix_web::dev::ServerHandle>,
    stopping: bool,
}

/// An actor that runs one HTTP server.
pub trait Serves: Actor {
    fn serving(&mut self) -> &mut Serving;
}

impl Serving {
    /// Runs `server` inside the incarnation: dropping the context stops its accept loop
    /// and workers; a server that ends by itself ends the incarnation (`what` names it).
    pub fn run<A: Serves>(ctx: &mut Ctx<A>, me: &mut A, server: actix_web::dev::Server, what: &'static str) {
        me.serving().handle = Some(server.handle());
        ctx.spawn(actix::fut::wrap_future(server).map(move |res, me: &mut Incarnation<A>, ctx| {
            let serving = me.serving();
            serving.handle = None;
            if serving.stopping {
                ctx.stop();
            } else {
                let why = res.err().map(|e| e.to_string()).unwrap_or_else(|| "server ended".into());
                exit(ctx, ExitReason::failed(format!("{what} stopped: {why}")));
            }
        }));
    }

    /// For `Actor::stopping`: asks the server to finish gracefully, and keeps the
    /// incarnation until it has.
    pub fn stop(&mut self) -> Running {
        match (&self.handle, self.stopping) {
            (Some(handle), false) => {
                self.stopping = true;
                drop(handle.stop(true));
                Running::Continue
            }
            (Some(_), true) => Running::Continue,
            (None, _) => Running::Stop,
        }
    }
}
