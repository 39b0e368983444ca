//! The API's HTTP side: authentication, then discovery or objects by path.
//!
//! Paths: `/api/v1/[namespaces/<ns>/]<plural>[/<name>[/<subresource>]]` and
//! `/apis/<group>/<version>/…` likewise. `/version`, `/healthz`, `/readyz` and `/livez`
//! are open, as in Kubernetes; everything else needs a bearer token.

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::auth::{authorize, Authenticator, Request as AuthzRequest, Role, User, Verb};
use super::discovery;
use super::objects::{admit, DeleteOptions, ListOptions, Objects, Part};
use super::patch;
use super::resources::{find, Resource};
use super::selector::{FieldSelector, LabelSelector};
use super::status::Failure;

/// What every request handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub objects: Objects,
    pub auth: Arc<Authenticator>,
    /// `https://host:port`, as discovery tells clients.
    pub address: String,
}

pub fn routes(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .app_data(web::PayloadConfig::new(3 << 20))
            .route("/version", web::get().to(|| async { HttpResponse::Ok().json(discovery::version()) }))
            .route("/healthz", web::get().to(ok))
            .route("/readyz", web::get().to(ok))
            .route("/livez", web::get().to(ok))
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
async fn authenticate(req: &HttpRequest, state: &ApiState) -> Result<User, Failure> {
    let unauthorized = || Failure::new(401, "Unauthorized", "Unauthorized");
    if req.headers().get("authorization").is_none() {
        if let Some(PeerIdentity(id)) = req.conn_data::<PeerIdentity>() {
            use keelson_transport::tls::Role as Member;
            return Ok(match id.role {
                Member::Agent => {
                    User { name: format!("system:node:{}", id.name), role: Role::Node { node: id.name.clone() } }
                }
                Member::Server | Member::Launcher => {
                    User { name: format!("system:keelson:{}", id.name), role: Role::Admin }
                }
            });
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
    let segments: Vec<&str> = req.path().trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let found = match segments.as_slice() {
        ["api"] => Some(discovery::core_versions(&state.address)),
        ["apis"] => Some(discovery::group_list()),
        ["api", "v1"] => discovery::resource_list("", "v1"),
        ["apis", g] => crate::api::resources::groups().contains(g).then(|| discovery::group(g)),
        ["apis", g, v] => discovery::resource_list(g, v),
        ["openapi", "v3", rest @ ..] => super::openapi::lookup(rest),
        ["api", "v1", rest @ ..] => return objects(&req, &state, &user, "", "v1", rest, body).await,
        ["apis", g, v, rest @ ..] => return objects(&req, &state, &user, g, v, rest, body).await,
        _ => None,
    };
    match found {
        Some(v) if req.method() == Method::GET => HttpResponse::Ok().json(v),
        Some(_) => Failure::new(405, "MethodNotAllowed", "discovery is read-only").response(),
        None => Failure::new(404, "NotFound", "the server could not find the requested resource").response(),
    }
}

/// Which object (or collection) a path names.
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
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

fn query(req: &HttpRequest) -> Vec<(String, String)> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string()).map(|q| q.into_inner()).unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[allow(clippy::too_many_arguments)]
async fn objects(
    req: &HttpRequest,
    state: &ApiState,
    user: &User,
    group: &str,
    version: &str,
    rest: &[&str],
    body: web::Bytes,
) -> HttpResponse {
    let Some(t) = target(group, version, rest) else {
        return Failure::new(404, "NotFound", "the server could not find the requested resource").response();
    };
    let q = query(req);
    // `true`, `1`, or `True` (the Python client's spelling).
    let truthy = |v: Option<&str>| v.is_some_and(|w| w.eq_ignore_ascii_case("true") || w == "1");
    let watching = truthy(param(&q, "watch"));
    let verb = match (req.method().clone(), t.name.is_some()) {
        (Method::GET, true) => Verb::Get,
        (Method::GET, false) if watching => Verb::Watch,
        (Method::GET, false) => Verb::List,
        (Method::POST, _) => Verb::Create,
        (Method::PUT, _) => Verb::Update,
        (Method::PATCH, _) => Verb::Patch,
        _ => Verb::Delete,
    };
    // A node may change a pod only while the pod is bound to it.
    let bound_to = match (&user.role, t.res.plural, &t.name) {
        (Role::Node { .. }, "pods", Some(name)) if verb != Verb::Get => state
            .objects
            .get(t.res, t.namespace.as_deref(), name)
            .await
            .ok()
            .and_then(|p| p["spec"]["nodeName"].as_str().map(str::to_string)),
        _ => None,
    };
    let request = AuthzRequest {
        verb,
        res: t.res,
        namespace: t.namespace.as_deref(),
        name: t.name.as_deref(),
        bound_to: bound_to.as_deref(),
    };
    if let Err(f) = authorize(user, &request) {
        return f.response();
    }
    let content_type = req.headers().get("content-type").and_then(|h| h.to_str().ok()).unwrap_or_default();
    let body = if content_type.starts_with("application/vnd.kubernetes.protobuf") && !body.is_empty() {
        match super::protobuf::decode(&body) {
            Ok(v) => web::Bytes::from(v.to_string()),
            Err(e) => return Failure::new(415, "UnsupportedMediaType", format!("the protobuf body: {e}")).response(),
        }
    } else {
        body
    };
    let accept = req.headers().get("accept").and_then(|h| h.to_str().ok()).unwrap_or_default();
    let as_table = super::table::wanted(accept);
    if verb == Verb::Watch {
        return watch(state, &t, &q, as_table).await.unwrap_or_else(|f| f.response());
    }
    let result = match (req.method().clone(), &t.name, t.sub.as_deref()) {
        (Method::GET, None, _) => list(state, &t, &q, as_table).await.map(ok200),
        (Method::GET, Some(name), None | Some("status")) => {
            let obj = state.objects.get(t.res, t.namespace.as_deref(), name).await;
            match as_table {
                true => obj.map(|o| {
                    let rv = o["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
                    ok200(super::table::table(t.res, &[o], &rv))
                }),
                false => obj.map(ok200),
            }
        }
        (Method::POST, None, _) => create(state, &t, &q, &body).await.map(|v| (201, v)),
        (Method::PUT, Some(name), None | Some("status")) => update(state, &t, name, &q, &body).await.map(ok200),
        (Method::PATCH, Some(name), None | Some("status")) => {
            let kind = req.headers().get("content-type").and_then(|h| h.to_str().ok()).unwrap_or_default();
            patch_object(state, &t, name, kind, &body).await.map(ok200)
        }
        (Method::POST, Some(name), Some("binding")) if t.res.plural == "pods" => {
            bind(state, &t, name, &body).await.map(|v| (201, v))
        }
        // An eviction deletes the pod (no disruption budgets are served, so none refuses it).
        (Method::POST, Some(name), Some("eviction")) if t.res.plural == "pods" => {
            state.objects.delete(t.res, t.namespace.as_deref(), name).await.map(|_| {
                (201, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
            })
        }
        (Method::DELETE, Some(name), None) => delete(state, &t, name, &q, &body).await.map(ok200),
        (Method::DELETE, None, None) => delete_collection(state, &t, &q, &body).await.map(ok200),
        (Method::GET, Some(name), Some("scale")) if t.res.subresources.contains(&"scale") => {
            state.objects.get(t.res, t.namespace.as_deref(), name).await.map(|o| ok200(scale_of(&o)))
        }
        (Method::PUT | Method::PATCH, Some(name), Some("scale")) if t.res.subresources.contains(&"scale") => {
            let kind = req.headers().get("content-type").and_then(|h| h.to_str().ok()).unwrap_or_default();
            rescale(state, &t, name, req.method() == Method::PUT, kind, &body).await.map(ok200)
        }
        (_, _, Some(sub)) => Err(Failure::new(
            404,
            "NotFound",
            format!("the subresource {sub:?} of {} is not served", t.res.qualified()),
        )),
        (m, _, _) => Err(Failure::new(405, "MethodNotAllowed", format!("{m} is not supported here"))),
    };
    match result {
        Ok((201, v)) => HttpResponse::Created().json(v),
        Ok((_, v)) => HttpResponse::Ok().json(v),
        Err(f) => f.response(),
    }
}

fn ok200(v: Value) -> (u16, Value) {
    (200, v)
}

fn parse_body(body: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::bad_request(format!("the body is not JSON: {e}")))
}

fn strict(q: &[(String, String)]) -> bool {
    param(q, "fieldValidation") == Some("Strict")
}

async fn list(state: &ApiState, t: &Target, q: &[(String, String)], as_table: bool) -> Result<Value, Failure> {
    let opts = list_options(q)?;
    let ns = t.namespace.as_deref();
    // `limit` pages (kubectl asks for 500 at a time); `continue` reads on in the snapshot.
    let (items, rv, next) = match param(q, "limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0) {
        Some(limit) => {
            let page =
                state.objects.page(t.res, ns, &opts, limit, param(q, "continue").filter(|c| !c.is_empty())).await?;
            (page.items, page.resource_version, page.next)
        }
        None => {
            let (items, rv) = state.objects.list(t.res, ns, &opts).await?;
            (items, rv, None)
        }
    };
    let mut out = if as_table {
        super::table::table(t.res, &items, &rv)
    } else {
        let mut list = json!({
            "kind": format!("{}List", t.res.kind),
            "apiVersion": t.res.api_version(),
            "metadata": {"resourceVersion": rv},
        });
        // Moved in, not through `json!` (which would copy every object by serializing it).
        list["items"] = Value::Array(items);
        list
    };
    if let Some(next) = next {
        out["metadata"]["continue"] = next.into();
    }
    Ok(out)
}

fn list_options(q: &[(String, String)]) -> Result<ListOptions, Failure> {
    Ok(ListOptions {
        labels: LabelSelector::parse(param(q, "labelSelector").unwrap_or_default()).map_err(Failure::bad_request)?,
        fields: FieldSelector::parse(param(q, "fieldSelector").unwrap_or_default()).map_err(Failure::bad_request)?,
    })
}

async fn watch(state: &ApiState, t: &Target, q: &[(String, String)], as_table: bool) -> Result<HttpResponse, Failure> {
    let timeout = param(q, "timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(3_600u64);
    let request = super::watch::WatchRequest {
        resource_version: param(q, "resourceVersion"),
        opts: list_options(q)?,
        bookmarks: param(q, "allowWatchBookmarks").is_some_and(|b| b.eq_ignore_ascii_case("true")),
        timeout: std::time::Duration::from_secs(timeout.clamp(1, 24 * 3_600)),
        as_table,
    };
    let stream = super::watch::watch(&state.objects, t.res, t.namespace.as_deref(), request).await?;
    Ok(HttpResponse::Ok().content_type("application/json").streaming(stream))
}

async fn create(state: &ApiState, t: &Target, q: &[(String, String)], body: &[u8]) -> Result<Value, Failure> {
    let obj = admit(t.res, t.namespace.as_deref(), parse_body(body)?, strict(q))?;
    if param(q, "dryRun").is_some() {
        return Ok(obj);
    }
    state.objects.create(t.res, t.namespace.as_deref(), obj).await
}

async fn update(
    state: &ApiState,
    t: &Target,
    name: &str,
    q: &[(String, String)],
    body: &[u8],
) -> Result<Value, Failure> {
    let obj = admit(t.res, t.namespace.as_deref(), parse_body(body)?, strict(q))?;
    if obj["metadata"]["name"].as_str() != Some(name) {
        return Err(Failure::bad_request("the name of the object does not match the name on the URL"));
    }
    state.objects.update_part(t.res, t.namespace.as_deref(), name, obj, part(t)).await
}

fn part(t: &Target) -> Part {
    if t.sub.as_deref() == Some("status") {
        Part::Status
    } else {
        Part::Main
    }
}

/// `pods/<name>/binding`: the scheduler's decision, once — a bound pod stays bound.
async fn bind(state: &ApiState, t: &Target, name: &str, body: &[u8]) -> Result<Value, Failure> {
    let ns = t.namespace.as_deref();
    let binding = parse_body(body)?;
    let Some(node) = binding["target"]["name"].as_str().filter(|n| !n.is_empty()) else {
        return Err(Failure::invalid(t.res, name, &[("target.name".into(), "Required value".into())]));
    };
    for _ in 0..5 {
        let mut pod = state.objects.get(t.res, ns, name).await?;
        if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(Failure::new(409, "Conflict", format!("pod {name} is already assigned to node \"{bound}\"")));
        }
        pod["spec"]["nodeName"] = node.into();
        match state.objects.update(t.res, ns, name, pod).await {
            Ok(mut bound) => {
                // The PodScheduled condition is status: written through the status part.
                let condition = json!({"type": "PodScheduled", "status": "True",
                                       "lastTransitionTime": bound["metadata"]["creationTimestamp"]});
                let mut conditions = bound["status"]["conditions"].as_array().cloned().unwrap_or_default();
                conditions.retain(|c| c["type"] != "PodScheduled");
                conditions.push(condition);
                bound["status"]["conditions"] = conditions.into();
                state.objects.update_part(t.res, ns, name, bound, Part::Status).await?;
                return Ok(
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                );
            }
            Err(f) if f.reason == "Conflict" => continue,
            Err(f) => return Err(f),
        }
    }
    Err(Failure::conflict(t.res, name))
}

async fn patch_object(state: &ApiState, t: &Target, name: &str, kind: &str, body: &[u8]) -> Result<Value, Failure> {
    let ns = t.namespace.as_deref();
    let patch_doc = parse_body(body)?;
    // Retried on a concurrent change, as the API server does for patches.
    for _ in 0..5 {
        let current = state.objects.get(t.res, ns, name).await?;
        let patched = if kind.starts_with("application/json-patch+json") {
            patch::json_patch(&current, &patch_doc).map_err(|e| Failure::new(422, "Invalid", e))?
        } else if kind.starts_with("application/merge-patch+json")
            || kind.starts_with("application/strategic-merge-patch+json")
        {
            patch::merge_patch(&current, &patch_doc)
        } else {
            return Err(Failure::new(415, "UnsupportedMediaType", format!("the patch type {kind:?} is not supported")));
        };
        let obj = admit(t.res, ns, patched, false)?;
        match state.objects.update_part(t.res, ns, name, obj, part(t)).await {
            Err(f) if f.reason == "Conflict" => continue,
            other => return other,
        }
    }
    Err(Failure::conflict(t.res, name))
}

/// DeleteOptions from the body (kubectl sends `{"propagationPolicy":"Background"}`) or
/// the query. Propagation is accepted; dependents are the garbage collector's (P6).
fn delete_options(q: &[(String, String)], body: &[u8]) -> Result<DeleteOptions, Failure> {
    let v: Value = if body.is_empty() { Value::Null } else { parse_body(body)? };
    let policy = v["propagationPolicy"].as_str().or(param(q, "propagationPolicy"));
    if let Some(p) = policy.filter(|p| !["Orphan", "Background", "Foreground"].contains(p)) {
        return Err(Failure::bad_request(format!(
            "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Orphan\", \"Background\", \"Foreground\""
        )));
    }
    Ok(DeleteOptions {
        uid: v["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: v["preconditions"]["resourceVersion"].as_str().map(str::to_string),
    })
}

async fn delete(
    state: &ApiState,
    t: &Target,
    name: &str,
    q: &[(String, String)],
    body: &[u8],
) -> Result<Value, Failure> {
    let ns = t.namespace.as_deref();
    let opts = delete_options(q, body)?;
    if t.res.kind != "Namespace" {
        return state.objects.delete_with(t.res, ns, name, &opts).await;
    }
    // A namespace goes Terminating (no new content), its contents are deleted, then it goes.
    let current = state.objects.get(t.res, None, name).await?;
    if current["status"]["phase"] == "Terminating" {
        return Ok(current);
    }
    let mut terminating = current.clone();
    terminating["status"]["phase"] = "Terminating".into();
    terminating["metadata"]["deletionTimestamp"] = super::objects::rfc3339_now().into();
    let marked = state.objects.update(t.res, None, name, terminating).await?;
    let objects = state.objects.clone();
    let namespace = name.to_string();
    actix_rt::spawn(async move {
        for _ in 0..600 {
            match empty_namespace(&objects, &namespace).await {
                Ok(true) => {
                    let namespaces = crate::api::resources::find("", "v1", "namespaces").expect("served");
                    if let Err(f) = objects.delete(namespaces, None, &namespace).await {
                        tracing::warn!(namespace = %namespace, error = %f.message, "removing a namespace");
                    }
                    return;
                }
                Ok(false) => {}
                Err(f) => tracing::debug!(namespace = %namespace, error = %f.message, "emptying a namespace"),
            }
            actix_rt::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        tracing::warn!(namespace = %namespace, "namespace still has content after 10 minutes (finalizers?)");
    });
    Ok(marked)
}

/// Deletes what is in `namespace`; true once nothing is left.
async fn empty_namespace(objects: &Objects, namespace: &str) -> Result<bool, Failure> {
    let mut left = 0;
    for res in crate::api::resources::RESOURCES.iter().filter(|r| r.namespaced) {
        let (items, _) = objects.list(res, Some(namespace), &ListOptions::default()).await?;
        left += items.len();
        for item in items.iter().filter(|i| !i["metadata"]["deletionTimestamp"].is_string()) {
            if let Some(n) = item["metadata"]["name"].as_str() {
                match objects.delete(res, Some(namespace), n).await {
                    Ok(_) => {}
                    Err(f) if f.reason == "NotFound" => {}
                    Err(f) => return Err(f),
                }
            }
        }
    }
    Ok(left == 0)
}

/// deletecollection: every object the selectors pick, deleted one by one.
async fn delete_collection(
    state: &ApiState,
    t: &Target,
    q: &[(String, String)],
    body: &[u8],
) -> Result<Value, Failure> {
    let opts = delete_options(q, body)?;
    let (items, rv) = state.objects.list(t.res, t.namespace.as_deref(), &list_options(q)?).await?;
    let mut gone = Vec::new();
    for item in items {
        let (ns, name) =
            (item["metadata"]["namespace"].as_str(), item["metadata"]["name"].as_str().unwrap_or_default());
        match state.objects.delete_with(t.res, ns, name, &opts).await {
            Ok(v) => gone.push(v),
            Err(f) if f.reason == "NotFound" => {}
            Err(f) => return Err(f),
        }
    }
    Ok(
        json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": {"resourceVersion": rv}, "items": gone}),
    )
}

/// The `autoscaling/v1` Scale of a deployment or replica set.
fn scale_of(obj: &Value) -> Value {
    let m = &obj["metadata"];
    let selector: Vec<String> = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|l| l.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",")},
    })
}

/// Sets `spec.replicas` through the scale subresource: a whole Scale (PUT, at its
/// resourceVersion) or a patch of one.
async fn rescale(
    state: &ApiState,
    t: &Target,
    name: &str,
    put: bool,
    kind: &str,
    body: &[u8],
) -> Result<Value, Failure> {
    let ns = t.namespace.as_deref();
    let sent = parse_body(body)?;
    for _ in 0..5 {
        let current = state.objects.get(t.res, ns, name).await?;
        let scale = if put {
            sent.clone()
        } else if kind.starts_with("application/json-patch+json") {
            patch::json_patch(&scale_of(&current), &sent).map_err(|e| Failure::new(422, "Invalid", e))?
        } else {
            patch::merge_patch(&scale_of(&current), &sent)
        };
        let Some(replicas) = scale["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
            let cause =
                [("spec.replicas".to_string(), "Invalid value: must be greater than or equal to 0".to_string())];
            return Err(Failure::invalid(t.res, name, &cause));
        };
        let mut obj = current;
        obj["spec"]["replicas"] = replicas.into();
        if let Some(rv) = scale["metadata"]["resourceVersion"].as_str().filter(|_| put) {
            obj["metadata"]["resourceVersion"] = rv.into();
        }
        match state.objects.update(t.res, ns, name, obj).await {
            Ok(updated) => return Ok(scale_of(&updated)),
            Err(f) if f.reason == "Conflict" && !put => continue,
            Err(f) => return Err(f),
        }
    }
    Err(Failure::conflict(t.res, name))
}
