//! `/<member>/api`: the Kubernetes API gateway of a server member, over HTTPS.
//!
//! - `resources.rs`: what is served (discovery's table, paths, store keys);
//! - `kinds.rs`: each kind's `k8s-openapi` type;
//! - `discovery.rs`: `/version`, `/api`, `/apis`, resource lists;
//! - `openapi.rs`: `/openapi/v3` with schemas from the types (validation, explain, apply);
//! - `objects.rs`: objects in the store (server fields, optimistic concurrency) and admission;
//! - `defaults.rs`: the defaults Kubernetes fills in (strategies, pod spec fields);
//! - `validate.rs`: names, labels, shapes (the `k8s-openapi` types), unknown fields;
//! - `selector.rs`: label and field selectors;
//! - `patch.rs`: merge and JSON patches (the `json-patch` crate);
//! - `strategic.rs`, `patch_meta.rs`: strategic merge patch, and which field merges how;
//! - `apply.rs`: server-side apply and managed fields;
//! - `protobuf.rs`: protobuf request bodies (kubectl 1.32+'s generators) read into JSON;
//! - `watch.rs`: watches (chunked events from this member's replicas, resumable);
//! - `skim.rs`: a stored object's bytes read in part (a watch's selectors, its resourceVersion);
//! - `table.rs`: server-side printing (the Table kubectl prints, with Kubernetes' columns);
//! - `status.rs`: every error as a Kubernetes `Status`;
//! - `auth.rs`: who is asking (tokens), and whether they may (roles);
//! - `pipeline.rs`: the one pipeline both doors feed (route, authorize, decode);
//! - `verbs.rs`: what each verb and subresource does;
//! - `http.rs`: the HTTPS door (authentication by token or client certificate);
//! - `door.rs`: the actor door (in-cluster components, over QUIC or locally);
//! - `client.rs`: the actor door's client, for those components;
//! - `logs.rs`: container logs, streamed from the pod's kubelet;
//! - `exec.rs`: `kubectl exec` over a websocket, carried to the pod's kubelet;
//! - `kubelet.rs`: the streams to a node's kubelet both of those open;
//! - `recorder.rs`: Events, recorded by components (repeats counted);
//! - `informer.rs`: a collection cached in memory by list and watch, changes by key.
//!
//! Each incarnation serves the member's listening socket (bound once by the member, so
//! the port and the kubeconfig that names it survive restarts). A member without HTTPS
//! credentials (one that joined and holds no CA key) serves only the actor door.

mod apply;
mod auth;
pub mod client;
mod defaults;
mod discovery;
pub mod door;
mod exec;
mod http;
pub mod informer;
mod kinds;
mod kubelet;
mod logs;
mod objects;
mod openapi;
mod patch;
mod patch_meta;
pub mod pipeline;
mod protobuf;
pub mod recorder;
pub mod resources;
mod selector;
pub mod services;
mod skim;
mod status;
mod strategic;
mod table;
mod validate;
mod verbs;
mod watch;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{AsyncContext, Running};
use actix_web::{App, HttpServer};
use keelson_config::ControlPlaneConfig;

pub use auth::{token_hash, Role, TokenRecord, User, TOKENS_PREFIX};
pub use client::{ApiClient, ApiError};
pub use discovery::MINOR;
pub use door::{ApiRequest, ApiResponse, LocalCall};
pub use http::ApiState;
pub use pipeline::Method;
pub use recorder::{EventRecorder, EventType};
pub use watch::WatchItem;

pub use objects::{condition, condition_is_true, micro_time_now, parse_time, rfc3339, rfc3339_now, unix_now, Objects};
pub use protobuf::base64;

use crate::runtime::{exit, Actor, ChildContext, Ctx, ExitReason, Handler, Ref, Serves, Serving};
use crate::store::Replica;
use crate::transport::Delivered;

/// The HTTPS door's socket (bound once by the member) and TLS configuration.
#[derive(Clone)]
pub struct HttpsSetup {
    pub listener: Arc<TcpListener>,
    pub tls: Arc<rustls::ServerConfig>,
}

pub struct ApiServer {
    https: Option<HttpsSetup>,
    state: ApiState,
    /// Who local calls come from: this member.
    me: User,
    serving: Serving,
}

impl ApiServer {
    pub fn new(
        cx: &ChildContext,
        https: Option<HttpsSetup>,
        token: Arc<str>,
        replicas: Vec<Ref<Replica>>,
        control: ControlPlaneConfig,
        transport: Option<keelson_transport::Transport>,
    ) -> Self {
        let address =
            https.as_ref().and_then(|h| h.listener.local_addr().ok()).map(|a| a.to_string()).unwrap_or_default();
        let auth = Arc::new(auth::Authenticator::new(token));
        let openapi = Arc::new(openapi::OpenApi::new());
        let state = ApiState {
            objects: Objects {
                replicas,
                epoch: None,
                toleration_seconds: control.default_toleration_seconds as i64,
                services: (&control).into(),
            },
            auth,
            openapi,
            address,
            member: cx.path.member().to_string(),
            transport,
        };
        let me = User { name: format!("system:keelson:{}", cx.path.member()), role: Role::Admin };
        Self { https, state, me, serving: Serving::default() }
    }

    fn serve(&mut self, https: &HttpsSetup) -> std::io::Result<actix_web::dev::Server> {
        let state = self.state.clone();
        let listener = https.listener.try_clone()?;
        Ok(HttpServer::new(move || App::new().configure(http::routes(state.clone())))
            .on_connect(http::remember_peer)
            .workers(2)
            // Idle connections stay open as long as Kubernetes' API server keeps them
            // (90 s): clients pool them (client-go up to 90 s, awc 15 s by default) and a
            // request sent on one the server has just closed fails.
            .keep_alive(Duration::from_secs(90))
            .disable_signals()
            .shutdown_timeout(1)
            .listen_rustls_0_23(listener, (*https.tls).clone())?
            .run())
    }
}

impl Actor for ApiServer {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let served = match self.https.clone() {
            Some(https) => self.serve(&https).map(Some),
            None => Ok(None),
        };
        match served {
            Ok(server) => {
                if let Some(server) = server {
                    tracing::info!(addr = %self.state.address, "API serving (HTTPS and actor door)");
                    Serving::run(ctx, self, server, "the API server");
                } else {
                    tracing::info!("API serving (actor door only: no HTTPS credentials on this member)");
                }
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

impl Handler<Delivered> for ApiServer {
    type Result = ();

    fn handle(&mut self, Delivered(inbound): Delivered, _: &mut Ctx<Self>) {
        use keelson_transport::frame::from_payload;
        let reply = inbound.reply;
        if !matches!(reply, keelson_transport::Reply::Stream { .. }) {
            return;
        }
        match from_payload::<ApiRequest>(&inbound.envelope.payload) {
            Ok(request) => {
                let watch = request.is_watch();
                let agent = inbound.envelope.from.path.rsplit('/').next().unwrap_or_default().to_string();
                let answers =
                    door::serve(self.state.clone(), door::caller(inbound.from.as_ref()), agent, request, false);
                actix_rt::spawn(door::reply(reply, watch, answers));
            }
            Err(e) => {
                actix_rt::spawn(async move {
                    let _caller_gone = reply.fail(400, &format!("not an API request: {e}")).await;
                });
            }
        }
    }
}

impl Handler<LocalCall> for ApiServer {
    type Result = actix::MessageResult<LocalCall>;

    fn handle(&mut self, LocalCall(request): LocalCall, _: &mut Ctx<Self>) -> Self::Result {
        actix::MessageResult(door::serve(self.state.clone(), Ok(self.me.clone()), "keelson".into(), request, true))
    }
}

impl Serves for ApiServer {
    fn serving(&mut self) -> &mut Serving {
        &mut self.serving
    }
}
