//! The admin door as a supervised actor: each incarnation serves the member's
//! listening socket (bound once by the member, so the port survives restarts).

use std::net::TcpListener;
use std::sync::Arc;

use actix::Running;
use actix_web::{App, HttpServer};

use super::http::{routes, DoorState};
use crate::runtime::{exit, Actor, ChildContext, Ctx, ExitReason, Serves, Serving};
use keelson_transport::Transport;

pub struct AdminDoor {
    listener: Arc<TcpListener>,
    state: DoorState,
    serving: Serving,
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
        Self { listener, state, serving: Serving::default() }
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

impl Serves for AdminDoor {
    fn serving(&mut self) -> &mut Serving {
        &mut self.serving
    }
}

impl Actor for AdminDoor {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        match self.serve() {
            Ok(server) => {
                let addr = self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(%addr, "admin door serving");
                Serving::run(ctx, self, server, "the admin HTTP server");
            }
            Err(e) => exit(ctx, ExitReason::failed(format!("cannot serve the admin door: {e}"))),
        }
    }

    /// Stops gracefully: in-flight answers (such as the reply to a kill of this very
    /// door) are finished, bounded by the server's one-second shutdown timeout.
    fn stopping(&mut self, _ctx: &mut Ctx<Self>) -> Running {
        self.serving.stop()
    }
}
