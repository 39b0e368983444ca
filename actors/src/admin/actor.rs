//! The admin door as a supervised actor: each incarnation serves the member's
//! listening socket (bound once by the member, so the port survives restarts).

use std::net::TcpListener;
use std::sync::Arc;

use actix::{ActorContext, ActorFutureExt, AsyncContext, Running};
use actix_web::{App, HttpServer};

use super::http::{routes, DoorState};
use crate::runtime::{exit, Actor, ChildContext, Ctx, ExitReason};
use keelson_transport::Transport;

pub struct AdminDoor {
    listener: Arc<TcpListener>,
    state: DoorState,
    server: Option<actix_web::dev::ServerHandle>,
    stopping: bool,
}

impl AdminDoor {
    pub fn new(
        cx: &ChildContext,
        listener: Arc<TcpListener>,
        token: Arc<str>,
        transport: Option<Transport>,
        store: Vec<crate::runtime::Ref<crate::store::Replica>>,
    ) -> Self {
        let state = DoorState { registry: cx.registry.clone(), token, transport, store };
        Self { listener, state, server: None, stopping: false }
    }

    fn serve(&mut self) -> std::io::Result<actix_web::dev::Server> {
        let state = self.state.clone();
        let listener = self.listener.try_clone()?;
        Ok(HttpServer::new(move || App::new().configure(routes(state.clone())))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .listen(listener)?
            .run())
    }
}

impl Actor for AdminDoor {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        match self.serve() {
            Ok(server) => {
                let addr = self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(%addr, "admin door serving");
                self.server = Some(server.handle());
                // The server future is owned by this context: when the incarnation
                // ends for any reason, dropping it stops the accept loop and workers.
                ctx.spawn(actix::fut::wrap_future(server).map(|res, door: &mut crate::Incarnation<Self>, ctx| {
                    door.server = None;
                    if door.stopping {
                        ctx.stop();
                    } else {
                        let why = res.err().map(|e| e.to_string()).unwrap_or_else(|| "server ended".into());
                        exit(ctx, ExitReason::failed(format!("admin HTTP server stopped: {why}")));
                    }
                }));
            }
            Err(e) => exit(ctx, ExitReason::failed(format!("cannot serve the admin door: {e}"))),
        }
    }

    /// Stops gracefully: in-flight answers (such as the reply to a kill of this very
    /// door) are finished, bounded by the server's one-second shutdown timeout.
    fn stopping(&mut self, _ctx: &mut Ctx<Self>) -> Running {
        match (&self.server, self.stopping) {
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
