//! `/<member>/api`: the Kubernetes API gateway of a server member, over HTTPS.
//!
//! - `resources.rs`: what is served (discovery's table, paths, store keys);
//! - `discovery.rs`: `/version`, `/api`, `/apis`, resource lists;
//! - `openapi.rs`: `/openapi/v3`, so kubectl lets the server validate fields;
//! - `objects.rs`: objects in the store (server fields, optimistic concurrency) and admission;
//! - `validate.rs`: names, labels, shapes (the `k8s-openapi` types), unknown fields;
//! - `selector.rs`: label and field selectors;
//! - `patch.rs`: merge and JSON patches;
//! - `protobuf.rs`: protobuf request bodies (kubectl 1.32+'s generators) read into JSON;
//! - `watch.rs`: watches (chunked events from this member's replicas, resumable);
//! - `table.rs`: server-side printing (the Table kubectl prints, with Kubernetes' columns);
//! - `status.rs`: every error as a Kubernetes `Status`;
//! - `auth.rs`: who is asking (tokens), and whether they may (roles);
//! - `http.rs`: routing.
//!
//! Each incarnation serves the member's listening socket (bound once by the member, so
//! the port and the kubeconfig that names it survive restarts).

mod auth;
mod discovery;
mod http;
mod objects;
mod openapi;
mod patch;
mod protobuf;
pub mod resources;
mod selector;
mod status;
mod table;
mod validate;
mod watch;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{AsyncContext, Running};
use actix_web::{App, HttpServer};

pub use auth::{token_hash, Role, TokenRecord, TOKENS_PREFIX};
pub use discovery::MINOR;
pub use http::ApiState;
pub use objects::Objects;
pub use protobuf::base64;

use crate::runtime::{exit, Actor, ChildContext, Ctx, ExitReason, Ref, Serves, Serving};
use crate::store::Replica;

pub struct ApiServer {
    listener: Arc<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    state: ApiState,
    serving: Serving,
}

impl ApiServer {
    pub fn new(
        _cx: &ChildContext,
        listener: Arc<TcpListener>,
        tls: Arc<rustls::ServerConfig>,
        token: Arc<str>,
        replicas: Vec<Ref<Replica>>,
    ) -> Self {
        let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let auth = Arc::new(auth::Authenticator::new(token));
        let state = ApiState { objects: Objects { replicas }, auth, address };
        Self { listener, tls, state, serving: Serving::default() }
    }

    fn serve(&mut self) -> std::io::Result<actix_web::dev::Server> {
        let state = self.state.clone();
        let listener = self.listener.try_clone()?;
        Ok(HttpServer::new(move || App::new().configure(http::routes(state.clone())))
            .on_connect(http::remember_peer)
            .workers(2)
            .disable_signals()
            .shutdown_timeout(1)
            .listen_rustls_0_23(listener, (*self.tls).clone())?
            .run())
    }
}

impl Actor for ApiServer {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        match self.serve() {
            Ok(server) => {
                tracing::info!(addr = %self.state.address, "API serving (HTTPS)");
                Serving::run(ctx, self, server, "the API server");
                // Every cluster has its default namespaces; made once the store answers.
                let objects = self.state.objects.clone();
                ctx.spawn(actix::fut::wrap_future(async move {
                    for _ in 0..600 {
                        match objects.ensure_namespaces().await {
                            Ok(()) => return,
                            Err(f) => tracing::debug!(error = %f.message, "default namespaces not made yet"),
                        }
                        actix_rt::time::sleep(Duration::from_millis(200)).await;
                    }
                }));
            }
            Err(e) => exit(ctx, ExitReason::failed(format!("cannot serve the API: {e}"))),
        }
    }

    fn stopping(&mut self, _ctx: &mut Ctx<Self>) -> Running {
        self.serving.stop()
    }
}

impl Serves for ApiServer {
    fn serving(&mut self) -> &mut Serving {
        &mut self.serving
    }
}
