//! The admin door's routes: the tree as JSON, lifecycle events as a stream of JSON
//! lines, and the chaos endpoint that kills an actor by path.
//!
//! | method | path | auth | answer |
//! | --- | --- | --- | --- |
//! | GET | `/healthz` | none | `ok` |
//! | GET | `/tree` | none | a [`TreeSnapshot`](crate::runtime::TreeSnapshot) |
//! | GET | `/events` | none | one [`Event`](crate::runtime::Event) per line, as they happen |
//! | POST | `/chaos/kill` | admin token | `{"path":…,"incarnation":…}` |
//!
//! Observation is open (the door listens on loopback); anything that changes the tree
//! needs `Authorization: Bearer <admin token>`. Errors are Kubernetes `Status` objects.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::runtime::{ActorPath, KillError, KillMode, Registry};

/// What every route needs.
#[derive(Clone)]
pub struct DoorState {
    pub registry: Registry,
    pub token: Arc<str>,
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
            .app_data(web::JsonConfig::default().error_handler(|err, _| {
                let msg = format!("invalid request body: {err}");
                actix_web::error::InternalError::from_response(err, status(StatusCode::BAD_REQUEST, "BadRequest", &msg))
                    .into()
            }))
            .route("/healthz", web::get().to(|| async { "ok" }))
            .route("/tree", web::get().to(tree))
            .route("/events", web::get().to(events))
            .route("/chaos/kill", web::post().to(kill))
            .default_service(web::to(|req: HttpRequest| async move {
                status(StatusCode::NOT_FOUND, "NotFound", &format!("no route {} {}", req.method(), req.path()))
            }));
    }
}

async fn tree(state: web::Data<DoorState>) -> HttpResponse {
    HttpResponse::Ok().json(state.registry.snapshot())
}

async fn events(state: web::Data<DoorState>) -> HttpResponse {
    let rx = state.registry.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = match rx.recv().await {
            Ok(event) => serde_json::to_string(&event).unwrap_or_default(),
            Err(broadcast::error::RecvError::Lagged(n)) => format!("{{\"lagged\":{n}}}"),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, actix_web::Error>(web::Bytes::from(line + "\n")), rx))
    });
    HttpResponse::Ok().content_type("application/x-ndjson").streaming(stream)
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

/// Compares the bearer token in constant time (per byte of the expected token).
fn authorized(req: &HttpRequest, token: &str) -> bool {
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
