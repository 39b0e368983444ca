//! The actor door's client: how the scheduler, controllers, kubelets and proxies read,
//! write and watch objects. On a server member it is a local message to `/api`; from
//! elsewhere, a QUIC request to a server's `/api`, moving on to the next server when one
//! cannot be reached (and staying with the one that answered).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use keelson_transport::Transport;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use super::door::{ApiRequest, ApiResponse, LocalCall};
use super::pipeline::Method;
use super::ApiServer;
use crate::runtime::{ActorPath, Ref};
use crate::transport::{RemoteError, RemoteRef};

/// What an API call through the actor door can end in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The API answered with a Kubernetes Status (404 NotFound, 409 Conflict, 422 …).
    #[error("{code} {reason}: {message}")]
    Status { code: u16, reason: String, message: String },
    #[error("no API server answered: {0}")]
    Unreachable(String),
    #[error("cannot decode the answer: {0}")]
    Decode(String),
}

/// `Ok` for what is already gone (a 404): deletes and writes to objects that went
/// meanwhile need nothing more.
pub fn ignore_missing<T>(r: Result<T, ApiError>) -> Result<(), ApiError> {
    match r {
        Err(e) if e.code() != Some(404) => Err(e),
        _ => Ok(()),
    }
}

impl ApiError {
    /// The Status code, if the API answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The Status reason, if the API answered (`NotFound`, `Conflict`, `Fenced`, …).
    pub fn reason(&self) -> Option<&str> {
        match self {
            ApiError::Status { reason, .. } => Some(reason),
            _ => None,
        }
    }

    fn from_answer(answer: &ApiResponse) -> Self {
        let v: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        Self::from_status(answer.code, &v)
    }

    /// From a Kubernetes `Status` object answered with `code`.
    fn from_status(code: u16, status: &Value) -> Self {
        ApiError::Status {
            code,
            reason: status["reason"].as_str().unwrap_or("Unknown").to_string(),
            message: status["message"].as_str().unwrap_or_default().to_string(),
        }
    }
}

/// One watch event: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` (or `ERROR`, given as
/// an [`ApiError`] instead, such as 410 Expired).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent<T = Value> {
    pub kind: String,
    pub object: T,
}

enum Door {
    Local(Ref<ApiServer>),
    Remote { servers: Vec<RemoteRef>, preferred: AtomicUsize },
}

#[derive(Clone)]
pub struct ApiClient {
    door: Arc<Door>,
    deadline: Duration,
    /// The fencing epoch every request carries (a controller leader's).
    epoch: Option<u64>,
    /// Writes are answered without their object (see [`ApiClient::quiet`]).
    quiet: bool,
}

impl ApiClient {
    /// Through this member's own API actor.
    pub fn local(api: Ref<ApiServer>) -> Self {
        Self { door: Arc::new(Door::Local(api)), deadline: Duration::from_secs(10), epoch: None, quiet: false }
    }

    /// Through the `/api` of `servers` (member names `transport` can reach); `from` is the
    /// calling actor's path.
    pub fn remote(transport: Transport, servers: &[String], from: ActorPath) -> Self {
        let servers = servers
            .iter()
            .map(|s| RemoteRef::new(transport.clone(), ActorPath::root(s).child("api"), from.clone()))
            .collect();
        Self {
            door: Arc::new(Door::Remote { servers, preferred: AtomicUsize::new(0) }),
            deadline: Duration::from_secs(10),
            epoch: None,
            quiet: false,
        }
    }

    /// How long one call may take (10 s unless set).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Every request carries `epoch`: writes are refused (409 `Fenced`) once a newer
    /// leader has raised the store's epoch.
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// For callers that read only whether a write succeeded: the server answers a
    /// successful write (anything but a GET) without its object, so it is neither
    /// printed nor parsed, and the call gives `Value::Null`. Failures still carry their
    /// Status. Per pod, a kubelet's status write, its event and the scheduler's binding
    /// each returned the whole pod to a caller that dropped it.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Whether `request` is answered without its object: marked so, or a write of a quiet client.
    fn is_quiet(&self, request: &ApiRequest) -> bool {
        request.quiet || (self.quiet && request.method != Method::Get)
    }

    /// The raw answer (any code); only reaching no server at all is an error.
    pub async fn send(&self, mut request: ApiRequest) -> Result<ApiResponse, ApiError> {
        request.epoch = request.epoch.or(self.epoch);
        request.quiet = self.is_quiet(&request);
        match &*self.door {
            Door::Local(api) => {
                let mut answers = local_answers(api, request).await?;
                answers.recv().await.ok_or_else(|| ApiError::Unreachable("the local API stopped".into()))
            }
            Door::Remote { servers, preferred } => {
                first_server(servers, preferred, |i| servers[i].request::<_, ApiResponse>(&request, self.deadline))
                    .await
            }
        }
    }

    /// The answer's object on success (2xx), its Status as an error otherwise.
    pub async fn call(&self, request: ApiRequest) -> Result<Value, ApiError> {
        let quiet = self.is_quiet(&request);
        let answer = self.succeeded(request).await?;
        if answer.body.is_empty() && quiet {
            return Ok(Value::Null);
        }
        decode(&answer.body)
    }

    /// As [`ApiClient::call`], the answer read as `T` (an informer's list page, say);
    /// for reads, since a quiet write's empty answer is no `T`.
    pub async fn call_as<T: DeserializeOwned>(&self, request: ApiRequest) -> Result<T, ApiError> {
        decode(&self.succeeded(request).await?.body)
    }

    /// The answer to `request`, or its Status as an error.
    async fn succeeded(&self, request: ApiRequest) -> Result<ApiResponse, ApiError> {
        let answer = self.send(request).await?;
        match (200..300).contains(&answer.code) {
            true => Ok(answer),
            false => Err(ApiError::from_answer(&answer)),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(ApiRequest::new(Method::Get, path)).await
    }

    pub async fn create(&self, collection: &str, object: &Value) -> Result<Value, ApiError> {
        self.call(ApiRequest::new(Method::Post, collection).body("application/json", object.to_string().into_bytes()))
            .await
    }

    /// Replaces the object at `path` (optimistic: 409 if its resourceVersion is stale).
    pub async fn update(&self, path: &str, object: &Value) -> Result<Value, ApiError> {
        self.call(ApiRequest::new(Method::Put, path).body("application/json", object.to_string().into_bytes())).await
    }

    /// A merge patch (`application/merge-patch+json`).
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ApiError> {
        let request =
            ApiRequest::new(Method::Patch, path).body("application/merge-patch+json", patch.to_string().into_bytes());
        self.call(request).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ApiError> {
        self.call(ApiRequest::new(Method::Delete, path)).await
    }

    /// A delete with `gracePeriodSeconds` (a kubelet ends a pod's deletion with 0).
    pub async fn delete_with_grace(&self, path: &str, seconds: i64) -> Result<Value, ApiError> {
        self.call(ApiRequest::new(Method::Delete, path).query("gracePeriodSeconds", seconds.to_string())).await
    }

    /// Events after `resource_version` (none: the current objects first, as ADDED), each
    /// object read as `T` (`Value`, or an informer's `Trimmed`).
    /// The stream ends when the watch does; an ERROR event (410 when the version is too
    /// old) comes as an error item, after which the caller lists again.
    pub async fn watch<T: DeserializeOwned + Send + 'static>(
        &self,
        collection: &str,
        resource_version: Option<&str>,
        query: &[(&str, &str)],
    ) -> Result<BoxStream<'static, Result<WatchEvent<T>, ApiError>>, ApiError> {
        let mut request = ApiRequest::new(Method::Get, collection).query("watch", "true");
        if let Some(rv) = resource_version {
            request = request.query("resourceVersion", rv);
        }
        for (k, v) in query {
            request = request.query(k, *v);
        }
        let answers: BoxStream<'static, Result<ApiResponse, ApiError>> = match &*self.door {
            Door::Local(api) => {
                let rx = local_answers(api, request).await?;
                futures_util::stream::unfold(rx, |mut rx| async move { Some((Ok(rx.recv().await?), rx)) }).boxed()
            }
            Door::Remote { servers, preferred } => {
                let stream =
                    first_server(servers, preferred, |i| servers[i].stream::<_, ApiResponse>(&request, self.deadline))
                        .await?;
                stream.map(|item| item.map_err(|e: RemoteError| ApiError::Unreachable(e.to_string()))).boxed()
            }
        };
        Ok(answers.map(|answer| event(answer?)).boxed())
    }
}

/// This member's API, called with a local message: its answers.
async fn local_answers(api: &Ref<ApiServer>, request: ApiRequest) -> Result<mpsc::Receiver<ApiResponse>, ApiError> {
    api.send(LocalCall(request)).await.map_err(|e| ApiError::Unreachable(format!("the local API: {e}")))
}

/// `attempt` on each server in turn (by index into `servers`), starting with the one
/// that answered last; the first success (that server is kept for next time), or why
/// none answered.
async fn first_server<T, F, Fut>(servers: &[RemoteRef], preferred: &AtomicUsize, attempt: F) -> Result<T, ApiError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    let mut last = String::from("no server is known");
    let first = preferred.load(Ordering::Relaxed);
    for i in (0..servers.len()).map(|k| (first + k) % servers.len()) {
        match attempt(i).await {
            Ok(answer) => {
                preferred.store(i, Ordering::Relaxed);
                return Ok(answer);
            }
            Err(e) => last = format!("{}: {e}", servers[i].path()),
        }
    }
    Err(ApiError::Unreachable(last))
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(undecodable)
}

fn undecodable(e: serde_json::Error) -> ApiError {
    ApiError::Decode(e.to_string())
}

/// One line of a watch's body.
#[derive(serde::Deserialize)]
struct Line<T> {
    #[serde(rename = "type")]
    kind: String,
    object: T,
}

/// A watch's answer as an event, its object read as `T`; an `ERROR` event's Status as
/// an error (read as a value, since a `T` may not hold one).
fn event<T: DeserializeOwned>(answer: ApiResponse) -> Result<WatchEvent<T>, ApiError> {
    if answer.code != 200 {
        return Err(ApiError::from_answer(&answer));
    }
    let failed = |status: &Value| ApiError::from_status(status["code"].as_u64().unwrap_or(500) as u16, status);
    match answer.event {
        // From this member's own API: the event as it is.
        Some(e) if e.kind == "ERROR" => Err(failed(&e.into_object().map_err(undecodable)?)),
        Some(e) => Ok(WatchEvent { kind: e.kind.to_string(), object: e.decode().map_err(undecodable)? }),
        None => match decode::<Line<T>>(&answer.body) {
            Ok(line) if line.kind != "ERROR" => Ok(WatchEvent { kind: line.kind, object: line.object }),
            read => {
                let line: Line<Value> = decode(&answer.body)?;
                match line.kind == "ERROR" {
                    true => Err(failed(&line.object)),
                    false => Err(read.err().unwrap_or_else(|| ApiError::Decode("an unreadable event".into()))),
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::watch::WatchItem;
    use super::*;

    #[test]
    fn watch_events_and_errors_are_told_apart() {
        let line = |s: &str| ApiResponse::new(200, s.as_bytes().to_vec());
        let e = event::<Value>(line(r#"{"type":"ADDED","object":{"metadata":{"name":"p"}}}"#)).unwrap();
        assert_eq!((e.kind.as_str(), e.object["metadata"]["name"].as_str()), ("ADDED", Some("p")));
        let expired =
            r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}"#;
        assert_eq!(event::<Value>(line(expired)).unwrap_err().code(), Some(410));
        assert_eq!(event::<Value>(line(expired)).unwrap_err().reason(), Some("Expired"));
        let forbidden = ApiResponse::new(403, br#"{"reason":"Forbidden","message":"no"}"#.to_vec());
        assert_eq!(
            event::<Value>(forbidden).unwrap_err(),
            ApiError::Status { code: 403, reason: "Forbidden".into(), message: "no".into() }
        );
        // Read as an informer reads them: the same, but for managed fields; errors alike.
        use crate::api::skim::Trimmed;
        let managed = r#"{"type":"ADDED","object":{"metadata":{"name":"p","managedFields":[{"manager":"m"}]}}}"#;
        let e = event::<Trimmed>(line(managed)).unwrap();
        assert_eq!(e.object.0, serde_json::json!({"metadata": {"name": "p"}}));
        assert_eq!(event::<Trimmed>(line(expired)).unwrap_err().code(), Some(410));
        let local = |kind, o: Value| ApiResponse { code: 200, body: Vec::new(), event: Some(WatchItem::new(kind, o)) };
        let status = serde_json::json!({"kind": "Status", "code": 410, "reason": "Expired"});
        assert_eq!(event::<Trimmed>(local("ERROR", status)).unwrap_err().code(), Some(410));
        let e = event::<Trimmed>(local("MODIFIED", serde_json::from_str::<Value>(managed).unwrap()["object"].take()));
        assert_eq!(e.unwrap().object.0, serde_json::json!({"metadata": {"name": "p"}}));
        assert!(matches!(event::<Trimmed>(line(r#"{"type":"ADDED"}"#)), Err(ApiError::Decode(_))));
    }

    #[test]
    fn a_local_event_arrives_unprinted_and_reads_as_its_printed_form_does() {
        let item = WatchItem::new("MODIFIED", serde_json::json!({"metadata": {"name": "p"}}));
        let local = ApiResponse { code: 200, body: Vec::new(), event: Some(item.clone()) };
        let printed = ApiResponse::new(200, item.clone().to_json());
        assert_eq!(event::<Value>(local).unwrap(), event::<Value>(printed).unwrap());
        // As the stored bytes, spliced: the same event.
        let raw = WatchItem::json("MODIFIED", br#"{"metadata":{"name":"p"}}"#.to_vec());
        let local = ApiResponse { code: 200, body: Vec::new(), event: Some(raw.clone()) };
        assert_eq!(
            event::<Value>(local).unwrap(),
            event::<Value>(ApiResponse::new(200, raw.clone().to_json())).unwrap()
        );
        assert_eq!(
            event::<Value>(ApiResponse::new(200, raw.to_json())).unwrap(),
            event::<Value>(ApiResponse::new(200, item.to_json())).unwrap()
        );
        let expired = WatchItem::new("ERROR", serde_json::json!({"code": 410, "reason": "Expired"}));
        let local = ApiResponse { code: 200, body: Vec::new(), event: Some(expired) };
        assert_eq!(event::<Value>(local).unwrap_err().code(), Some(410));
        // The event never crosses a wire: a remote caller gets the printed body only.
        let sent = ApiResponse { code: 200, body: b"{}".to_vec(), event: None };
        let bytes = keelson_transport::frame::to_payload(&sent).unwrap();
        assert_eq!(keelson_transport::frame::from_payload::<ApiResponse>(&bytes).unwrap(), sent);
    }
}
