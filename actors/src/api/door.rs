//! The actor door: in-cluster components (scheduler, controllers, kubelets, proxies)
//! reach the same pipeline as kubectl through actor messages, over QUIC from other
//! members or as a local message on the same member. The caller is the member its
//! certificate proves (an agent is its node's identity); there is no token to send.
//!
//! A call is an HTTP request in all but transport: method, path, query and a JSON body.
//! Its answer is one [`ApiResponse`] (code and JSON body: the object, the list or a
//! Status), or for a watch a stream of them, one event each.

use actix_web::web::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::auth::{member_user, User};
use super::http::ApiState;
use super::pipeline::{self, Answer, Call, Method};
use super::status::Failure;
use super::watch::WatchItem;

/// A request through the actor door.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiRequest {
    pub method: Method,
    /// `/api/v1/namespaces/web/pods/p` and the like.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// `application/json` unless a patch: `application/merge-patch+json`,
    /// `application/json-patch+json`, `application/strategic-merge-patch+json`.
    pub content_type: String,
    /// JSON (Kubernetes objects do not survive bincode; they ride as JSON bytes).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The controller leader's fencing epoch: its writes are refused (409 `Fenced`)
    /// once a newer leader raised the store's.
    pub epoch: Option<u64>,
    /// The caller reads only whether a write succeeded (a kubelet's status, a binding,
    /// an event): a success is answered without the object, which is then neither
    /// printed here nor parsed there.
    pub quiet: bool,
}

impl ApiRequest {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            content_type: "application/json".into(),
            body: Vec::new(),
            epoch: None,
            quiet: false,
        }
    }

    pub fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_string(), value.into()));
        self
    }

    pub fn body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.content_type = content_type.to_string();
        self.body = body;
        self
    }

    /// A watch answers with a stream of events rather than one response.
    pub fn is_watch(&self) -> bool {
        self.method == Method::Get
            && pipeline::param(&self.query, "watch").is_some_and(|w| w.eq_ignore_ascii_case("true") || w == "1")
    }
}

/// One answer, or one watch event: the HTTP status code and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResponse {
    pub code: u16,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// A watch event handed to a caller on this member as it is (then `body` is empty):
    /// never printed and parsed again. Not sent over the wire.
    #[serde(skip)]
    pub event: Option<WatchItem>,
}

impl ApiResponse {
    pub fn new(code: u16, body: Vec<u8>) -> Self {
        Self { code, body, event: None }
    }

    fn failure(f: &Failure) -> Self {
        Self::new(f.code, f.to_value().to_string().into_bytes())
    }
}

/// A call from a component of this member (a local actor message; the member itself
/// is the caller). The answers arrive on the receiver.
#[derive(actix::Message)]
#[rtype(result = "mpsc::Receiver<ApiResponse>")]
pub struct LocalCall(pub ApiRequest);

/// The user a remote caller's certificate proves; none (a joiner without one) → 401.
pub fn caller(from: Option<&keelson_transport::tls::Identity>) -> Result<User, Failure> {
    from.map(member_user).ok_or_else(|| Failure::new(401, "Unauthorized", "Unauthorized"))
}

/// Runs `request` for `user` through the pipeline; answers (one, or a watch's events)
/// go to the returned receiver. Runs on the caller's arbiter.
/// `agent` names the caller (the field manager of its writes unless it names one);
/// `local`: the caller is on this member (watch events are handed over unprinted).
pub fn serve(
    state: ApiState,
    user: Result<User, Failure>,
    agent: String,
    request: ApiRequest,
    local: bool,
) -> mpsc::Receiver<ApiResponse> {
    let (tx, rx) = mpsc::channel(64);
    actix_rt::spawn(async move {
        let user = match user {
            Ok(u) => u,
            Err(f) => {
                let _caller_gone = tx.send(ApiResponse::failure(&f)).await;
                return;
            }
        };
        let quiet = request.quiet;
        let call = Call {
            method: request.method,
            path: request.path,
            query: request.query,
            content_type: request.content_type,
            accept: "application/json".into(),
            agent,
            epoch: request.epoch,
            body: Bytes::from(request.body),
        };
        match pipeline::handle(&state, &user, call).await {
            Answer::Value(code, _) | Answer::Json(code, _) if quiet && (200..300).contains(&code) => {
                let _caller_gone = tx.send(ApiResponse::new(code, Vec::new())).await;
            }
            Answer::Value(code, v) => {
                let _caller_gone = tx.send(ApiResponse::new(code, v.to_string().into_bytes())).await;
            }
            Answer::Json(code, bytes) => {
                let _caller_gone = tx.send(ApiResponse::new(code, bytes)).await;
            }
            Answer::Text(mut bytes) => {
                let mut body = Vec::new();
                while let Some(b) = bytes.next().await {
                    body.extend_from_slice(&b);
                }
                let _caller_gone = tx.send(ApiResponse::new(200, body)).await;
            }
            Answer::Watch(mut events) => {
                while let Some(event) = events.next().await {
                    let answer = match local {
                        true => ApiResponse { code: 200, body: Vec::new(), event: Some(event) },
                        false => ApiResponse::new(200, event.to_json()),
                    };
                    if tx.send(answer).await.is_err() {
                        return; // the watcher went away
                    }
                }
            }
        }
    });
    rx
}

/// Sends what `answers` yields back over QUIC: one response, or a watch's items.
pub async fn reply(mut reply: keelson_transport::Reply, watch: bool, mut answers: mpsc::Receiver<ApiResponse>) {
    use keelson_transport::frame::to_payload;
    if !watch {
        let Some(answer) = answers.recv().await else {
            let _caller_gone = reply.fail(503, "the API server stopped").await;
            return;
        };
        match to_payload(&answer) {
            Ok(bytes) => {
                let _caller_gone = reply.respond(bytes).await;
            }
            Err(e) => {
                let _caller_gone = reply.fail(500, &e.to_string()).await;
            }
        }
        return;
    }
    let mut seq = 0;
    while let Some(answer) = answers.recv().await {
        let Ok(bytes) = to_payload(&answer) else { continue };
        if reply.item(seq, bytes).await.is_err() {
            return; // the watcher went away; dropping `answers` ends the watch
        }
        seq += 1;
    }
    let _caller_gone = reply.end().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_survive_the_wire_and_know_watches() {
        let r = ApiRequest::new(Method::Get, "/api/v1/pods").query("watch", "true").query("resourceVersion", "7");
        let bytes = keelson_transport::frame::to_payload(&r).unwrap();
        let back: ApiRequest = keelson_transport::frame::from_payload(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.is_watch());
        assert!(!ApiRequest::new(Method::Get, "/api/v1/pods").is_watch());
        assert!(!ApiRequest::new(Method::Post, "/api/v1/pods").query("watch", "1").is_watch());
    }

    #[test]
    fn a_caller_without_a_certificate_is_unauthorized() {
        assert_eq!(caller(None).unwrap_err().code, 401);
        let node = keelson_transport::tls::Identity::new("n1", keelson_transport::tls::Role::Agent).unwrap();
        assert_eq!(caller(Some(&node)).unwrap().name, "system:node:n1");
    }
}
