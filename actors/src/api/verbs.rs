//! The verbs on objects: list, get, watch, create, update, patch, delete (one,
//! a collection, a namespace), and the pod and scale subresources. Each takes a
//! [`Target`] the pipeline already routed and authorized.

use futures_util::stream::LocalBoxStream;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::http::ApiState;
use super::objects::{admit, as_json, parsed, rfc3339_now, DeleteOptions, ListOptions, Page, Part, Write};
use super::patch;
use super::pipeline::{param, Target};
use super::selector::{FieldSelector, LabelSelector};
use super::status::Failure;
use crate::store::Item;

fn parse_body(body: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::bad_request(format!("the body is not JSON: {e}")))
}

/// `dryRun=All`: everything but the write (`kubectl diff`, `--dry-run=server`).
fn dry_run(q: &[(String, String)]) -> bool {
    param(q, "dryRun").is_some_and(|d| !d.is_empty())
}

fn strict(q: &[(String, String)]) -> bool {
    param(q, "fieldValidation") == Some("Strict")
}

/// The objects a list asks for, each read by `keep`: one page (`limit`; kubectl asks
/// for 500 at a time; `continue` reads on in the snapshot), or all of them.
async fn listed<T>(
    state: &ApiState,
    t: &Target,
    q: &[(String, String)],
    keep: &impl Fn(Item) -> Option<T>,
) -> Result<Page<T>, Failure> {
    let limit = param(q, "limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let continued = param(q, "continue").filter(|c| !c.is_empty());
    state.objects.pages(t.res, t.namespace.as_deref(), limit, continued, keep).await
}

/// A list as JSON (for every caller but one asking for a Table): the objects' stored
/// bytes put together, never parsed (see `objects::as_json`).
pub(super) async fn list_json(state: &ApiState, t: &Target, q: &[(String, String)]) -> Result<Vec<u8>, Failure> {
    let opts = list_options(q)?;
    let page = listed(state, t, q, &as_json(&opts)).await?;
    let mut metadata = json!({"resourceVersion": page.resource_version});
    if let Some(next) = page.next {
        metadata["continue"] = next.into();
    }
    let head = json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": metadata});
    let mut out = Vec::with_capacity(page.items.iter().map(|i| i.len() + 1).sum::<usize>() + 256);
    serde_json::to_writer(&mut out, &head).map_err(|e| Failure::internal(e.to_string()))?;
    out.pop(); // the head's closing brace: the items go in before it
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// A list as a Table (`kubectl get`).
pub(super) async fn list_table(state: &ApiState, t: &Target, q: &[(String, String)]) -> Result<Value, Failure> {
    let opts = list_options(q)?;
    let page = listed(state, t, q, &parsed(&opts)).await?;
    let mut out = super::table::table(t.res, &page.items, &page.resource_version);
    if let Some(next) = page.next {
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

pub(super) async fn watch(
    state: &ApiState,
    t: &Target,
    q: &[(String, String)],
    as_table: bool,
) -> Result<LocalBoxStream<'static, super::watch::WatchItem>, Failure> {
    let timeout = param(q, "timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(3_600u64);
    let request = super::watch::WatchRequest {
        resource_version: param(q, "resourceVersion"),
        opts: list_options(q)?,
        bookmarks: param(q, "allowWatchBookmarks").is_some_and(|b| b.eq_ignore_ascii_case("true")),
        timeout: std::time::Duration::from_secs(timeout.clamp(1, 24 * 3_600)),
        as_table,
    };
    Ok(super::watch::watch(&state.objects, t.res, t.namespace.as_deref(), request).await?.boxed_local())
}

pub(super) async fn get(state: &ApiState, t: &Target, name: &str, as_table: bool) -> Result<Value, Failure> {
    let obj = state.objects.get(t.res, t.namespace.as_deref(), name).await?;
    Ok(match as_table {
        true => {
            let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
            super::table::table(t.res, &[obj], &rv)
        }
        false => obj,
    })
}

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

/// An eviction deletes the pod (no disruption budgets are served, so none refuses it).
pub(super) async fn evict(state: &ApiState, t: &Target, name: &str) -> Result<Value, Failure> {
    state.objects.delete(t.res, t.namespace.as_deref(), name).await.map(|_| success(201))
}

pub(super) async fn get_scale(state: &ApiState, t: &Target, name: &str) -> Result<Value, Failure> {
    state.objects.get(t.res, t.namespace.as_deref(), name).await.map(|o| scale_of(&o))
}

pub(super) async fn create(
    state: &ApiState,
    t: &Target,
    q: &[(String, String)],
    body: &[u8],
    manager: &str,
) -> Result<Vec<u8>, Failure> {
    let mut obj = admit(t.res, t.namespace.as_deref(), parse_body(body)?, strict(q))?;
    obj["metadata"]["managedFields"] = super::apply::track_create(&obj, t.res.kind, manager, &rfc3339_now());
    if dry_run(q) {
        return Ok(serde_json::to_vec(&obj).unwrap_or_default());
    }
    state.objects.create_json(t.res, t.namespace.as_deref(), obj).await
}

pub(super) async fn update(
    state: &ApiState,
    t: &Target,
    name: &str,
    q: &[(String, String)],
    body: &[u8],
    manager: &str,
) -> Result<Value, Failure> {
    let obj = admit(t.res, t.namespace.as_deref(), parse_body(body)?, strict(q))?;
    if obj["metadata"]["name"].as_str() != Some(name) {
        return Err(Failure::bad_request("the name of the object does not match the name on the URL"));
    }
    let how = Write { part: part(t), dry_run: dry_run(q), manager: Some(manager) };
    state.objects.update_with(t.res, t.namespace.as_deref(), name, obj, how).await
}

fn part(t: &Target) -> Part {
    if t.sub.as_deref() == Some("status") {
        Part::Status
    } else {
        Part::Main
    }
}

/// `pods/<name>/binding`: the scheduler's decision, once — a bound pod stays bound.
pub(super) async fn bind(state: &ApiState, t: &Target, name: &str, body: &[u8]) -> Result<Value, Failure> {
    let ns = t.namespace.as_deref();
    let binding = parse_body(body)?;
    let Some(node) = binding["target"]["name"].as_str().filter(|n| !n.is_empty()) else {
        return Err(Failure::invalid(t.res, name, &[("target.name".into(), "Required value".into())]));
    };
    // The node and the PodScheduled condition in one write, as Kubernetes' binding does.
    let how = Write { part: Part::Whole, ..Write::main() };
    state
        .objects
        .modify(t.res, ns, name, how, |current| {
            if let Some(bound) = current["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(Failure::new(
                    409,
                    "Conflict",
                    format!("pod {name} is already assigned to node \"{bound}\""),
                ));
            }
            let mut pod = current.clone();
            pod["spec"]["nodeName"] = node.into();
            let condition = json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339_now()});
            let mut conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conditions.retain(|c| c["type"] != "PodScheduled");
            conditions.push(condition);
            pod["status"]["conditions"] = conditions.into();
            Ok(pod)
        })
        .await?;
    Ok(success(201))
}

/// Server-side apply: the applied configuration merged in, its fields owned by the
/// `fieldManager`; the object is created if it does not exist.
async fn server_side_apply(
    state: &ApiState,
    t: &Target,
    name: &str,
    q: &[(String, String)],
    applied: Value,
) -> Result<Value, Failure> {
    let ns = t.namespace.as_deref();
    let Some(manager) = param(q, "fieldManager").filter(|m| !m.is_empty()) else {
        return Err(Failure::invalid_named(
            "PatchOptions.meta.k8s.io",
            "",
            &[("fieldManager".into(), "Required value: is required for apply patch".into())],
        ));
    };
    if applied["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(Failure::bad_request("the name of the object does not match the name on the URL"));
    }
    let force = param(q, "force").is_some_and(|f| f == "true");
    for _ in 0..5 {
        let current = match state.objects.get(t.res, ns, name).await {
            Ok(c) => Some(c),
            Err(f) if f.code == 404 => None,
            Err(f) => return Err(f),
        };
        let live = current.clone().unwrap_or(Value::Null);
        let merged = super::apply::apply(&live, &applied, t.res.kind, manager, &rfc3339_now(), force)
            .map_err(|refused| apply_failure(t, name, &refused))?;
        let obj = admit(t.res, ns, merged, strict(q))?;
        let written = match current {
            None if dry_run(q) => return Ok(obj),
            None => state.objects.create(t.res, ns, obj).await,
            Some(_) => {
                let how = Write { part: part(t), dry_run: dry_run(q), manager: None };
                state.objects.update_with(t.res, ns, name, obj, how).await
            }
        };
        match written {
            Err(f) if f.reason == "Conflict" || f.reason == "AlreadyExists" => continue,
            other => return other,
        }
    }
    Err(Failure::conflict(t.res, name))
}

fn apply_failure(t: &Target, name: &str, refused: &super::apply::Refused) -> Failure {
    let super::apply::Refused::Conflicts(conflicts) = refused else {
        return Failure::bad_request(refused.message());
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({"reason": "FieldManagerConflict", "field": c.path,
                   "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version)})
        })
        .collect();
    let mut f = Failure::new(409, "Conflict", refused.message());
    f.details = Some(json!({"name": name, "group": t.res.group, "kind": t.res.plural, "causes": causes}));
    f
}

/// `current` after a patch of content type `kind`; `ty` is the object's schema type
/// (which fields a strategic merge patch merges by key).
fn apply_patch(current: &Value, kind: &str, doc: &Value, ty: &str) -> Result<Value, Failure> {
    let kind = kind.split(';').next().unwrap_or_default().trim();
    match kind {
        "application/json-patch+json" => patch::json_patch(current, doc).map_err(|e| Failure::new(422, "Invalid", e)),
        "application/merge-patch+json" => Ok(patch::merge_patch(current, doc)),
        "application/strategic-merge-patch+json" => {
            super::strategic::strategic_merge(current, doc, ty).map_err(Failure::bad_request)
        }
        _ => Err(Failure::new(415, "UnsupportedMediaType", format!("the patch type {kind:?} is not supported"))),
    }
}

pub(super) async fn patch(
    state: &ApiState,
    t: &Target,
    name: &str,
    q: &[(String, String)],
    kind: &str,
    body: &[u8],
    manager: &str,
) -> Result<Value, Failure> {
    let ns = t.namespace.as_deref();
    let patch_doc = parse_body(body)?;
    if kind.starts_with("application/apply-patch") {
        return server_side_apply(state, t, name, q, patch_doc).await;
    }
    // Retried on a concurrent change, as the API server does for patches.
    let how = Write { part: part(t), dry_run: dry_run(q), manager: Some(manager) };
    state
        .objects
        .modify(t.res, ns, name, how, |current| {
            admit(t.res, ns, apply_patch(current, kind, &patch_doc, t.res.kind)?, false)
        })
        .await
}

/// DeleteOptions from the body (kubectl sends `{"propagationPolicy":"Background"}`) or
/// the query. Dependents are the garbage collector's (the legacy `orphanDependents: true`
/// is the Orphan policy).
fn delete_options(q: &[(String, String)], body: &[u8]) -> Result<DeleteOptions, Failure> {
    let v: Value = if body.is_empty() { Value::Null } else { parse_body(body)? };
    let policy = v["propagationPolicy"].as_str().or(param(q, "propagationPolicy"));
    if let Some(p) = policy.filter(|p| !["Orphan", "Background", "Foreground"].contains(p)) {
        return Err(Failure::bad_request(format!(
            "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Orphan\", \"Background\", \"Foreground\""
        )));
    }
    let grace = match v["gracePeriodSeconds"].as_i64() {
        Some(g) => Some(g),
        None => match param(q, "gracePeriodSeconds") {
            Some(g) => Some(g.parse::<i64>().map_err(|_| {
                Failure::bad_request(format!("gracePeriodSeconds: Invalid value: {g:?}: must be an integer"))
            })?),
            None => None,
        },
    };
    Ok(DeleteOptions {
        uid: v["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: v["preconditions"]["resourceVersion"].as_str().map(str::to_string),
        grace_period: grace,
        propagation: policy
            .map(str::to_string)
            .or_else(|| (v["orphanDependents"] == Value::Bool(true)).then(|| "Orphan".to_string())),
    })
}

pub(super) async fn delete(
    state: &ApiState,
    t: &Target,
    name: &str,
    q: &[(String, String)],
    body: &[u8],
) -> Result<Value, Failure> {
    let ns = t.namespace.as_deref();
    let opts = delete_options(q, body)?;
    if dry_run(q) {
        return state.objects.get(t.res, ns, name).await;
    }
    // A namespace goes Terminating here; the namespace controller (on the controllers'
    // leader) empties it, then finalizes it.
    state.objects.delete_with(t.res, ns, name, &opts).await
}

/// `namespaces/<name>/finalize`: the namespace's `spec.finalizers` as sent; a Terminating
/// namespace left with none is removed (the namespace controller's last step).
pub(super) async fn finalize(state: &ApiState, t: &Target, name: &str, body: &[u8]) -> Result<Value, Failure> {
    let sent = parse_body(body)?;
    let mut current = state.objects.get(t.res, None, name).await?;
    let finalizers = sent["spec"]["finalizers"].as_array().cloned().unwrap_or_default();
    let done = finalizers.is_empty() && current["status"]["phase"] == "Terminating";
    current["spec"]["finalizers"] = Value::Array(finalizers);
    let updated = state.objects.update(t.res, None, name, current).await?;
    if done {
        return state.objects.delete(t.res, None, name).await;
    }
    Ok(updated)
}

/// deletecollection: every object the selectors pick, deleted one by one.
pub(super) async fn delete_collection(
    state: &ApiState,
    t: &Target,
    q: &[(String, String)],
    body: &[u8],
) -> Result<Value, Failure> {
    let opts = delete_options(q, body)?;
    let (items, rv) = state.objects.list(t.res, t.namespace.as_deref(), &list_options(q)?).await?;
    let mut gone = Vec::new();
    let items = if dry_run(q) {
        gone = items;
        Vec::new()
    } else {
        items
    };
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
pub(super) async fn rescale(
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
        let scale = if put { sent.clone() } else { apply_patch(&scale_of(&current), kind, &sent, "Scale")? };
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
