//! The admin door's routes: the tree as JSON, lifecycle events as a stream of JSON
//! lines, and the chaos endpoint that kills an actor by path.
//!
//! | method | path | auth | answer |
//! | --- | --- | --- | --- |
//! | GET | `/healthz` | none | `ok` |
//! | GET | `/tree` | none | a [`TreeSnapshot`](crate::runtime::TreeSnapshot) |
//! | GET | `/events[?since=N]` | none | `{"bookmark":N}`, then one [`Event`](crate::runtime::Event) per line (kept ones after `since` first) |
//! | POST | `/chaos/kill` | admin token | `{"path":…,"incarnation":…}` |
//! | GET | `/transport` | none | per-peer counters ([`PeerStats`]) |
//! | GET | `/metrics` | none | actors and transport counters, Prometheus text format |
//! | POST | `/transport/ping` | admin token | pings a peer's probe over QUIC: `{"to":…,"count":…,"stream":…}` |
//! | POST | `/chaos/net` | admin token | sets link faults: `{"peer":…,"direction":"out\|in\|both","faults":{…}}` or `{"heal":true}` |
//!
//! Observation is open (the door listens on loopback); anything that changes the tree
//! needs `Authorization: Bearer <admin token>`. Errors are Kubernetes `Status` objects.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::runtime::{ActorPath, KillError, KillMode, Registry};
use crate::transport::{ProbeReply, ProbeRequest, RemoteRef};
use keelson_transport::faults::{Direction, LinkFaults};
use keelson_transport::Transport;

/// What every route needs.
#[derive(Clone)]
pub struct DoorState {
    pub registry: Registry,
    pub token: Arc<str>,
    /// The member's QUIC endpoint, if it has one (the launcher does not).
    pub transport: Option<Transport>,
    /// The member's store replicas, one per shard (none on the launcher).
    pub store: Vec<crate::runtime::Ref<crate::store::Replica>>,
}

/// Body of `POST /chaos/kill`.
#[derive(Debug, Serialize, Deserialize)]
pub struct KillRequest {
    pub path: String,
    #[serde(default = "default_mode")]
    pub mode: KillMode,
}

fn default_mode() -> KillMode {
    KillMode::Panic
}

/// Answer of a successful kill.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Killed {
    pub path: String,
    pub incarnation: u64,
}

pub fn routes(state: DoorState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .app_data(web::JsonConfig::default().content_type_required(false).error_handler(|err, _| {
                let msg = format!("invalid request body: {err}");
                actix_web::error::InternalError::from_response(err, status(StatusCode::BAD_REQUEST, "BadRequest", &msg))
                    .into()
            }))
            .route("/healthz", web::get().to(|| async { "ok" }))
            .route("/tree", web::get().to(tree))
            .route("/events", web::get().to(events))
            .route("/chaos/kill", web::post().to(kill))
            .route("/chaos/net", web::post().to(net))
            .route("/transport", web::get().to(transport_stats))
            .route("/transport/ping", web::post().to(ping))
            .route("/metrics", web::get().to(metrics))
            .configure(super::kv::routes)
            .configure(super::members::routes)
            .default_service(web::to(|req: HttpRequest| async move {
                status(StatusCode::NOT_FOUND, "NotFound", &format!("no route {} {}", req.method(), req.path()))
            }));
    }
}

async fn tree(state: web::Data<DoorState>) -> HttpResponse {
    HttpResponse::Ok().json(state.registry.snapshot())
}

/// Query of `GET /events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Replay the kept events numbered after this one first (a follower reconnecting).
    #[serde(default)]
    pub since: Option<u64>,
}

async fn events(state: web::Data<DoorState>, query: web::Query<EventsQuery>) -> HttpResponse {
    let (replay, rx, last) = state.registry.events_since(query.since.unwrap_or(u64::MAX));
    // First a bookmark (the number of the last event so far), so a follower that sees
    // no event before a disconnect still knows where to resume.
    let mut lines = vec![web::Bytes::from(format!("{{\"bookmark\":{last}}}\n"))];
    lines.extend(replay.iter().map(|e| web::Bytes::from(serde_json::to_string(e).unwrap_or_default() + "\n")));
    let replayed = futures_util::stream::iter(lines.into_iter().map(Ok::<_, actix_web::Error>));
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = match rx.recv().await {
            Ok(event) => serde_json::to_string(&event).unwrap_or_default(),
            Err(broadcast::error::RecvError::Lagged(n)) => format!("{{\"lagged\":{n}}}"),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, actix_web::Error>(web::Bytes::from(line + "\n")), rx))
    });
    use futures_util::StreamExt;
    HttpResponse::Ok().content_type("application/x-ndjson").streaming(replayed.chain(live))
}

async fn kill(req: HttpRequest, state: web::Data<DoorState>, body: web::Json<KillRequest>) -> HttpResponse {
    if !authorized(&req, &state.token) {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the chaos door needs the admin token (Authorization: Bearer …)",
        );
    }
    let Some(path) = ActorPath::parse(&body.path) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("{:?} is not an actor path like /member/child", body.path),
        );
    };
    match state.registry.kill(&path, body.mode) {
        Ok(incarnation) => {
            tracing::warn!(%path, incarnation, mode = ?body.mode, "killed through the chaos door");
            HttpResponse::Ok().json(Killed { path: path.to_string(), incarnation })
        }
        Err(e @ KillError::NoSuchActor(_)) => status(StatusCode::NOT_FOUND, "NotFound", &e.to_string()),
        Err(e) => status(StatusCode::CONFLICT, "Conflict", &e.to_string()),
    }
}

fn no_transport() -> HttpResponse {
    status(StatusCode::NOT_FOUND, "NotFound", "this process has no transport endpoint")
}

async fn transport_stats(state: web::Data<DoorState>) -> HttpResponse {
    match &state.transport {
        Some(t) => HttpResponse::Ok().json(t.stats()),
        None => no_transport(),
    }
}

/// Body of `POST /transport/ping`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PingRequest {
    pub to: String,
    #[serde(default = "one")]
    pub count: u32,
    /// Ask for a streamed reply of this many items instead of single pings.
    #[serde(default)]
    pub stream: u32,
    /// Send this many one-way notes first (each reply then counts them).
    #[serde(default)]
    pub notes: u32,
    #[serde(default = "default_ping_deadline")]
    pub deadline_ms: u64,
}

fn one() -> u32 {
    1
}

fn default_ping_deadline() -> u64 {
    2000
}

/// One ping's outcome.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct PingOutcome {
    pub rtt_us: Option<u64>,
    pub reply: Option<ProbeReply>,
    pub error: Option<String>,
}

async fn ping(req: HttpRequest, state: web::Data<DoorState>, body: web::Json<PingRequest>) -> HttpResponse {
    if !authorized(&req, &state.token) {
        return unauthorized();
    }
    let Some(t) = state.transport.clone() else { return no_transport() };
    if !t.peers().contains(&body.to) {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("{:?} is not a peer of this member", body.to));
    }
    let me = ActorPath::root(state.registry.member()).child("admin");
    let Some(target) = ActorPath::parse(&format!("/{}/transport/probe", body.to)) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "peer names are path segments");
    };
    let remote = RemoteRef::new(t, target, me);
    let deadline = std::time::Duration::from_millis(body.deadline_ms);
    let mut outcomes = Vec::new();
    for _ in 0..body.notes {
        if let Err(e) = remote.tell(&ProbeRequest::Note, deadline).await {
            outcomes.push(PingOutcome { rtt_us: None, reply: None, error: Some(format!("note: {e}")) });
        }
    }
    if body.stream > 0 {
        use futures_util::StreamExt;
        let began = std::time::Instant::now();
        match remote.stream::<_, ProbeReply>(&ProbeRequest::Count(body.stream), deadline).await {
            Ok(items) => {
                let mut items = std::pin::pin!(items);
                while let Some(item) = items.next().await {
                    let rtt_us = Some(began.elapsed().as_micros() as u64);
                    outcomes.push(match item {
                        Ok(reply) => PingOutcome { rtt_us, reply: Some(reply), error: None },
                        Err(e) => PingOutcome { rtt_us: None, reply: None, error: Some(e.to_string()) },
                    });
                }
            }
            Err(e) => outcomes.push(PingOutcome { rtt_us: None, reply: None, error: Some(e.to_string()) }),
        }
    } else {
        for _ in 0..body.count.max(1) {
            let began = std::time::Instant::now();
            outcomes.push(match remote.request::<_, ProbeReply>(&ProbeRequest::Ping, deadline).await {
                Ok(reply) => {
                    PingOutcome { rtt_us: Some(began.elapsed().as_micros() as u64), reply: Some(reply), error: None }
                }
                Err(e) => PingOutcome { rtt_us: None, reply: None, error: Some(e.to_string()) },
            });
        }
    }
    HttpResponse::Ok().json(outcomes)
}

/// Body of `POST /chaos/net`.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct NetRequest {
    #[serde(default)]
    pub heal: bool,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub direction: Option<NetDirection>,
    #[serde(default)]
    pub faults: LinkFaults,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetDirection {
    Out,
    In,
    Both,
}

async fn net(req: HttpRequest, state: web::Data<DoorState>, body: web::Json<NetRequest>) -> HttpResponse {
    if !authorized(&req, &state.token) {
        return unauthorized();
    }
    let Some(t) = &state.transport else { return no_transport() };
    let table = t.faults();
    if body.heal {
        table.heal();
        tracing::warn!("network faults healed through the chaos door");
    } else {
        let Some(peer) = &body.peer else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "say which peer (or heal)");
        };
        let Some(addr) = t.peer_addr(peer) else {
            return status(StatusCode::NOT_FOUND, "NotFound", &format!("{peer:?} is not a peer of this member"));
        };
        if let Err(e) = body.faults.validate() {
            return status(StatusCode::BAD_REQUEST, "BadRequest", &e);
        }
        let dirs: &[Direction] = match body.direction.unwrap_or(NetDirection::Out) {
            NetDirection::Out => &[Direction::Out],
            NetDirection::In => &[Direction::In],
            NetDirection::Both => &[Direction::Out, Direction::In],
        };
        for d in dirs {
            table.set(addr, *d, body.faults);
        }
        tracing::warn!(%peer, faults = ?body.faults, "network faults set through the chaos door");
    }
    let rules: Vec<serde_json::Value> = table
        .rules()
        .into_iter()
        .map(|(addr, dir, f)| {
            let peer = t.peers().into_iter().find(|p| t.peer_addr(p) == Some(addr));
            serde_json::json!({"peer": peer, "addr": addr.to_string(), "direction": dir, "faults": f})
        })
        .collect();
    HttpResponse::Ok().json(rules)
}

/// Actors and transport counters in the Prometheus text format.
async fn metrics(state: web::Data<DoorState>) -> HttpResponse {
    let snapshot = state.registry.snapshot();
    let stats = state.transport.as_ref().map(|t| t.stats()).unwrap_or_default();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(super::metrics::render(&snapshot, &stats))
}

fn unauthorized() -> HttpResponse {
    status(StatusCode::UNAUTHORIZED, "Unauthorized", "this needs the admin token (Authorization: Bearer …)")
}

/// Compares the bearer token in constant time (per byte of the expected token).
pub(crate) fn authorized(req: &HttpRequest, token: &str) -> bool {
    let Some(given) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) else { return false };
    let Some(given) = given.strip_prefix("Bearer ") else { return false };
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// A Kubernetes-shaped `Status` error.
pub fn status(code: StatusCode, reason: &str, message: &str) -> HttpResponse {
    HttpResponse::build(code).json(serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    }))
}
