//! The API's HTTP door: authentication (bearer token or client certificate), then the
//! pipeline (`pipeline.rs`) with the request as a [`Call`].
//!
//! Paths: `/api/v1/[namespaces/<ns>/]<plural>[/<name>[/<subresource>]]` and
//! `/apis/<group>/<version>/…` likewise. `/version`, `/healthz`, `/readyz` and `/livez`
//! are open, as in Kubernetes; everything else needs a bearer token or a certificate.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::auth::{member_user, Authenticator, User};
use super::discovery;
use super::objects::Objects;
use super::pipeline::{self, Answer, Call, Method};
use super::status::Failure;

/// What every request handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub objects: Objects,
    pub auth: Arc<Authenticator>,
    pub openapi: Arc<super::openapi::OpenApi>,
    /// `https://host:port`, as discovery tells clients.
    pub address: String,
    /// This member's name, and its transport to the nodes' kubelets (logs, exec).
    pub member: String,
    pub transport: Option<keelson_transport::Transport>,
}

pub fn routes(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .app_data(web::PayloadConfig::new(3 << 20))
            .route("/version", web::get().to(|| async { HttpResponse::Ok().json(discovery::version()) }))
            .route("/healthz", web::get().to(ok))
            .route("/readyz", web::get().to(ok))
            .route("/livez", web::get().to(ok))
            .route("/api/v1/namespaces/{ns}/pods/{name}/exec", web::get().to(super::exec::handle))
            .route("/api/v1/namespaces/{ns}/pods/{name}/exec", web::post().to(super::exec::handle))
            .default_service(web::to(dispatch));
    }
}

async fn ok() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// The member identity of a client certificate the TLS handshake verified.
#[derive(Clone)]
struct PeerIdentity(keelson_transport::tls::Identity);

/// Keeps a connection's verified client certificate identity (certificate authentication).
pub fn remember_peer(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let Some(tls) = conn.downcast_ref::<Tls>() else { return };
    let certs = tls.get_ref().1.peer_certificates();
    if let Some(id) = certs.and_then(|c| c.first()).and_then(keelson_transport::tls::identity_of) {
        ext.insert(PeerIdentity(id));
    }
}

/// The user behind the request's bearer token or client certificate, or the 401 to answer.
pub(super) async fn authenticate(req: &HttpRequest, state: &ApiState) -> Result<User, Failure> {
    let unauthorized = || Failure::new(401, "Unauthorized", "Unauthorized");
    if req.headers().get("authorization").is_none() {
        if let Some(PeerIdentity(id)) = req.conn_data::<PeerIdentity>() {
            return Ok(member_user(id));
        }
    }
    let token = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(unauthorized)?;
    state.auth.user(token, &state.objects).await?.ok_or_else(unauthorized)
}

async fn dispatch(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let user = match authenticate(&req, &state).await {
        Ok(u) => u,
        Err(f) => return f.response(),
    };
    let Some(method) = Method::from_http(req.method()) else {
        return Failure::new(405, "MethodNotAllowed", format!("{} is not supported here", req.method())).response();
    };
    let header = |name: &str| req.headers().get(name).and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
    let call = Call {
        method,
        path: req.path().to_string(),
        query: web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default(),
        content_type: header("content-type"),
        accept: header("accept"),
        agent: header("user-agent").split('/').next().unwrap_or_default().trim().to_string(),
        epoch: None,
        body,
    };
    match pipeline::handle(&state, &user, call).await {
        Answer::Value(code, v) => {
            HttpResponse::build(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)).json(v)
        }
        Answer::Json(code, bytes) => {
            HttpResponse::build(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .content_type("application/json")
                .body(bytes)
        }
        Answer::Watch(events) => {
            let lines = events.map(|e| Ok::<_, actix_web::Error>(e.line()));
            HttpResponse::Ok().content_type("application/json").streaming(lines)
        }
        Answer::Text(bytes) => {
            HttpResponse::Ok().content_type("text/plain").streaming(bytes.map(Ok::<_, actix_web::Error>))
        }
    }
}
