//! The one pipeline both doors feed: route → authorize → decode → validate/admit →
//! store. A [`Call`] is a request as the pipeline sees it, whichever door it came
//! through (HTTPS for kubectl and client libraries, actor messages for in-cluster
//! components); authentication is the door's, since each door proves identity its own
//! way (bearer token or client certificate; the QUIC peer's certificate).

use actix_web::web::Bytes;
use futures_util::stream::LocalBoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{authorize, Request as AuthzRequest, Role, User, Verb};
use super::discovery;
use super::http::ApiState;
use super::resources::{find, Resource};
use super::skim::Paths;
use super::status::Failure;
use super::verbs;

/// The HTTP method a call stands for (the actor door carries it as this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn from_http(m: &actix_web::http::Method) -> Option<Self> {
        use actix_web::http::Method as M;
        Some(match *m {
            M::GET => Method::Get,
            M::POST => Method::Post,
            M::PUT => Method::Put,
            M::PATCH => Method::Patch,
            M::DELETE => Method::Delete,
            _ => return None,
        })
    }
}

/// One API request.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// `/api/v1/namespaces/web/pods/p` and the like.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub content_type: String,
    pub accept: String,
    /// Who the client says it is (HTTP: the User-Agent's first word; the actor door:
    /// the calling actor's name): the field manager when the request names none.
    pub agent: String,
    /// The fencing epoch the caller's writes carry (the actor door's controllers).
    pub epoch: Option<u64>,
    pub body: Bytes,
}

/// What the pipeline answers: an object (or Status) with its code, or a watch's events.
pub enum Answer {
    Value(u16, Value),
    /// An object already printed as JSON (a created one: the bytes the store holds).
    Json(u16, Vec<u8>),
    /// One event per item, until the watch ends.
    Watch(LocalBoxStream<'static, super::watch::WatchItem>),
    /// Plain text as it comes (a container's log).
    Text(LocalBoxStream<'static, Bytes>),
}

impl From<Failure> for Answer {
    fn from(f: Failure) -> Self {
        Answer::Value(f.code, f.to_value())
    }
}

/// Runs `call` for `user` (already authenticated by its door).
pub async fn handle(state: &ApiState, user: &User, call: Call) -> Answer {
    let fenced;
    let state = match call.epoch {
        Some(epoch) => {
            let mut s = state.clone();
            s.objects.epoch = Some(epoch);
            fenced = s;
            &fenced
        }
        None => state,
    };
    let segments: Vec<&str> = call.path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let found = match segments.as_slice() {
        ["api"] => Some(discovery::core_versions(&state.address)),
        ["apis"] => Some(discovery::group_list()),
        ["api", "v1"] => discovery::resource_list("", "v1"),
        ["apis", g] => super::resources::groups().contains(g).then(|| discovery::group(g)),
        ["apis", g, v] => discovery::resource_list(g, v),
        ["openapi", "v3", rest @ ..] => state.openapi.lookup(rest),
        ["api", "v1", rest @ ..] => return timed(&call, objects(state, user, &call, "", "v1", rest)).await,
        ["apis", g, v, rest @ ..] => return timed(&call, objects(state, user, &call, g, v, rest)).await,
        _ => None,
    };
    match found {
        Some(v) if call.method == Method::Get => Answer::Value(200, v),
        Some(_) => Failure::new(405, "MethodNotAllowed", "discovery is read-only").into(),
        None => Failure::new(404, "NotFound", "the server could not find the requested resource").into(),
    }
}

/// A request slower than this is logged with who made it (as kube-apiserver's traces
/// do): a large list or a stalled write shows up in the members' logs by its caller.
const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `answer`, warning when it took longer than [`SLOW_REQUEST`] (for a watch: until
/// its first events are ready, which for a watch without a version includes its list).
async fn timed(call: &Call, answer: impl std::future::Future<Output = Answer>) -> Answer {
    let began = std::time::Instant::now();
    let answer = answer.await;
    let took = began.elapsed();
    if took > SLOW_REQUEST {
        let query: Vec<String> = call.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::warn!(method = ?call.method, path = %call.path, query = %query.join("&"), agent = %call.agent,
            took = ?took, "slow API request");
    }
    answer
}

/// Which object (or collection) a path names.
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

fn target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let named = |res: &'static Resource, ns: Option<&str>, tail: &[&str]| {
        if tail.len() > 2 || (!res.namespaced && ns.is_some()) {
            return None;
        }
        Some(Target {
            res,
            namespace: ns.map(str::to_string),
            name: tail.first().map(|s| s.to_string()),
            sub: tail.get(1).map(|s| s.to_string()),
        })
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(group, version, plural).is_some_and(|r| r.namespaced) => {
            named(find(group, version, plural)?, Some(ns), tail)
        }
        [plural, tail @ ..] => named(find(group, version, plural)?, None, tail),
        [] => None,
    }
}

pub fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn objects(state: &ApiState, user: &User, call: &Call, group: &str, version: &str, rest: &[&str]) -> Answer {
    let Some(t) = target(group, version, rest) else {
        return Failure::new(404, "NotFound", "the server could not find the requested resource").into();
    };
    let q = &call.query;
    // `true`, `1`, or `True` (the Python client's spelling).
    let truthy = |v: Option<&str>| v.is_some_and(|w| w.eq_ignore_ascii_case("true") || w == "1");
    let verb = match (call.method, t.name.is_some()) {
        (Method::Get, true) => Verb::Get,
        (Method::Get, false) if truthy(param(q, "watch")) => Verb::Watch,
        (Method::Get, false) => Verb::List,
        (Method::Post, _) => Verb::Create,
        (Method::Put, _) => Verb::Update,
        (Method::Patch, _) => Verb::Patch,
        (Method::Delete, _) => Verb::Delete,
    };
    let body = if call.content_type.starts_with("application/vnd.kubernetes.protobuf") && !call.body.is_empty() {
        match super::protobuf::decode(&call.body) {
            Ok(v) => Bytes::from(v.to_string()),
            Err(e) => return Failure::new(415, "UnsupportedMediaType", format!("the protobuf body: {e}")).into(),
        }
    } else {
        call.body.clone()
    };
    if let Err(f) = authorized(state, user, &t, verb, &body).await {
        return f.into();
    }
    let as_table = super::table::wanted(&call.accept);
    if let (Method::Get, Some(name), Some("log")) = (call.method, &t.name, t.sub.as_deref()) {
        if t.res.plural == "pods" {
            return match super::logs::logs(state, &t, name, q).await {
                Ok(stream) => Answer::Text(stream),
                Err(f) => f.into(),
            };
        }
    }
    if verb == Verb::Watch {
        return match verbs::watch(state, &t, q, as_table).await {
            Ok(stream) => Answer::Watch(stream),
            Err(f) => f.into(),
        };
    }
    let kind = call.content_type.as_str();
    let manager = param(q, "fieldManager").filter(|m| !m.is_empty()).unwrap_or(match call.agent.as_str() {
        "" => "unknown",
        agent => agent,
    });
    let result = match (call.method, &t.name, t.sub.as_deref()) {
        (Method::Get, None, _) if !as_table => {
            return match verbs::list_json(state, &t, q).await {
                Ok(json) => Answer::Json(200, json),
                Err(f) => f.into(),
            }
        }
        (Method::Get, None, _) => verbs::list_table(state, &t, q).await.map(ok200),
        (Method::Get, Some(name), None | Some("status")) => verbs::get(state, &t, name, as_table).await.map(ok200),
        (Method::Post, None, _) => {
            return match verbs::create(state, &t, q, &body, manager).await {
                Ok(json) => Answer::Json(201, json),
                Err(f) => f.into(),
            }
        }
        (Method::Put, Some(name), None | Some("status")) => {
            verbs::update(state, &t, name, q, &body, manager).await.map(ok200)
        }
        (Method::Patch, Some(name), None | Some("status")) => {
            verbs::patch(state, &t, name, q, kind, &body, manager).await.map(ok200)
        }
        (Method::Post, Some(name), Some("binding")) if t.res.plural == "pods" => {
            verbs::bind(state, &t, name, &body).await.map(|v| (201, v))
        }
        (Method::Post, Some(name), Some("eviction")) if t.res.plural == "pods" => {
            verbs::evict(state, &t, name).await.map(|v| (201, v))
        }
        (Method::Put, Some(name), Some("finalize")) if t.res.kind == "Namespace" => {
            verbs::finalize(state, &t, name, &body).await.map(ok200)
        }
        (Method::Delete, Some(name), None) => verbs::delete(state, &t, name, q, &body).await.map(ok200),
        (Method::Delete, None, None) => verbs::delete_collection(state, &t, q, &body).await.map(ok200),
        (Method::Get, Some(name), Some("scale")) if t.res.subresources.contains(&"scale") => {
            verbs::get_scale(state, &t, name).await.map(ok200)
        }
        (Method::Put | Method::Patch, Some(name), Some("scale")) if t.res.subresources.contains(&"scale") => {
            verbs::rescale(state, &t, name, call.method == Method::Put, kind, &body).await.map(ok200)
        }
        (_, _, Some(sub)) => Err(Failure::new(
            404,
            "NotFound",
            format!("the subresource {sub:?} of {} is not served", t.res.qualified()),
        )),
        (m, _, _) => Err(Failure::new(405, "MethodNotAllowed", format!("{m:?} is not supported here"))),
    };
    match result {
        Ok((code, v)) => Answer::Value(code, v),
        Err(f) => f.into(),
    }
}

fn ok200(v: Value) -> (u16, Value) {
    (200, v)
}

/// Whether `user` may do `verb` to the target. Node identities need two facts the path
/// does not hold: which node a pod is bound to now, and the name in a create's body (a
/// kubelet registers its own Node and Lease; it may create no one else's).
async fn authorized(state: &ApiState, user: &User, t: &Target, verb: Verb, body: &[u8]) -> Result<(), Failure> {
    let Role::Node { .. } = user.role else {
        let request = AuthzRequest {
            verb,
            res: t.res,
            namespace: t.namespace.as_deref(),
            name: t.name.as_deref(),
            bound_to: None,
        };
        return authorize(user, &request);
    };
    let bound_to = match (t.res.plural, &t.name) {
        ("pods", Some(name)) if verb != Verb::Get => {
            let mut node = Paths::default();
            node.keep("spec.nodeName");
            let pod = state.objects.get_cached_part(t.res, t.namespace.as_deref(), name, &node).await;
            pod.ok().and_then(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
        }
        _ => None,
    };
    let created: Option<String> = match verb {
        Verb::Create if t.name.is_none() => {
            serde_json::from_slice::<Value>(body).ok().and_then(|v| v["metadata"]["name"].as_str().map(str::to_string))
        }
        _ => None,
    };
    let request = AuthzRequest {
        verb,
        res: t.res,
        namespace: t.namespace.as_deref(),
        name: t.name.as_deref().or(created.as_deref()),
        bound_to: bound_to.as_deref(),
    };
    authorize(user, &request)
}
