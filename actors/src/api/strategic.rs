//! Strategic merge patch (`application/strategic-merge-patch+json`), what `kubectl
//! apply` and `kubectl set image` send: a merge patch that knows, per field, whether a
//! list is replaced whole, merged element by element on a merge key (containers by
//! `name`, container ports by `containerPort`, …), or merged as a set of primitives;
//! and the directives `$patch` (replace, delete, merge), `$setElementOrder/<list>`,
//! `$retainKeys` and `$deleteFromPrimitiveList/<list>`.
//!
//! No well-kept Rust crate implements it (checked on crates.io and docs.rs: `json-patch`
//! does RFC 6902 and 7386 only; kube-rs sends strategic patches but leaves applying them
//! to the API server), so it is written here, after the semantics of
//! `k8s.io/apimachinery/pkg/util/strategicpatch` and the design document
//! (community/contributors/devel/sig-api-machinery/strategic-merge-patch.md). Which field
//! merges how is `patch_meta.rs`'s table.

use serde_json::{Map, Value};

use super::patch_meta::{field_meta, ListMerge};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

/// `original` with `patch` applied, for an object whose schema type is `ty` (`"Pod"`,
/// `"Deployment"`, …; fields the table does not know merge as maps and replace as lists).
pub fn strategic_merge(original: &Value, patch: &Value, ty: &str) -> Result<Value, String> {
    let Value::Object(p) = patch else {
        return Err("a strategic merge patch is a JSON object".into());
    };
    match original {
        Value::Object(o) => Ok(merge_map(o.clone(), p, Some(ty))?.map(Value::Object).unwrap_or(Value::Null)),
        _ => Ok(merge_map(Map::new(), p, Some(ty))?.map(Value::Object).unwrap_or(Value::Null)),
    }
}

/// Merges `patch` into `original`; `None` when the patch deletes the map (`$patch: delete`).
fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    ty: Option<&str>,
) -> Result<Option<Map<String, Value>>, String> {
    match patch.get(PATCH).map(|d| d.as_str().unwrap_or_default()) {
        None | Some("merge") => {}
        Some("replace") => {
            // The map is replaced by the patch (its directives applied to nothing).
            return merge_map(Map::new(), &without(patch, PATCH), ty);
        }
        Some("delete") => return Ok(None),
        Some(other) => return Err(format!("unknown patch type: {other:?} in map: {}", Value::Object(patch.clone()))),
    }
    if let Some(keys) = patch.get(RETAIN_KEYS) {
        let keys = keys.as_array().ok_or("$retainKeys must be a list")?;
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        original.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        let Some(field) = k.strip_prefix(DELETE_PRIMITIVES) else { continue };
        let gone = v.as_array().ok_or_else(|| format!("{k} must be a list"))?;
        if let Some(Value::Array(list)) = original.get_mut(field) {
            list.retain(|x| !gone.contains(x));
        }
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            if k != PATCH && k != RETAIN_KEYS && !k.starts_with(SET_ORDER) && !k.starts_with(DELETE_PRIMITIVES) {
                return Err(format!("unknown directive {k:?}"));
            }
            continue;
        }
        if v.is_null() {
            original.remove(k);
            continue;
        }
        let meta = ty.and_then(|t| field_meta(t, k));
        let child = meta.and_then(|m| m.ty);
        let current = original.remove(k).unwrap_or(Value::Null);
        let merged = match (current, v) {
            (Value::Object(o), Value::Object(p)) => merge_map(o, p, child)?.map(Value::Object),
            (_, Value::Object(p)) => merge_map(Map::new(), p, child)?.map(Value::Object),
            (cur, Value::Array(p)) => {
                let cur = match cur {
                    Value::Array(c) => c,
                    _ => Vec::new(),
                };
                let how = meta.map_or(ListMerge::Replace, |m| m.list);
                Some(Value::Array(merge_list(cur, p, how, child, k)?))
            }
            (_, v) => Some(v.clone()),
        };
        if let Some(m) = merged {
            original.insert(k.clone(), m);
        }
    }
    for (k, order) in patch {
        let Some(field) = k.strip_prefix(SET_ORDER) else { continue };
        let order = order.as_array().ok_or_else(|| format!("{k} must be a list"))?;
        let how = ty.and_then(|t| field_meta(t, field)).map_or(ListMerge::Replace, |m| m.list);
        if let Some(Value::Array(list)) = original.get_mut(field) {
            *list = reorder(std::mem::take(list), order, how);
        }
    }
    Ok(Some(original))
}

fn without(map: &Map<String, Value>, key: &str) -> Map<String, Value> {
    let mut m = map.clone();
    m.remove(key);
    m
}

fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    how: ListMerge,
    elem: Option<&str>,
    field: &str,
) -> Result<Vec<Value>, String> {
    match how {
        ListMerge::Replace => Ok(patch.to_vec()),
        ListMerge::Primitives => {
            let mut out = original;
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListMerge::ByKey(key) => {
            // `{"$patch": "replace"}` among the elements: the list is the rest of the patch.
            let replace = patch.iter().any(|e| e.get(PATCH).and_then(Value::as_str) == Some("replace"));
            let mut out = if replace { Vec::new() } else { original };
            for e in patch {
                let Value::Object(p) = e else {
                    return Err(format!("{field}: a list merged by {key:?} holds objects, not {e}"));
                };
                let directive = p.get(PATCH).and_then(Value::as_str);
                if directive == Some("replace") && p.len() == 1 {
                    continue;
                }
                let id = p.get(key).ok_or_else(|| {
                    format!("map: {} does not contain declared merge key: {key}", Value::Object(p.clone()))
                })?;
                let at = out.iter().position(|o| o.get(key) == Some(id));
                match (directive, at) {
                    (Some("delete"), Some(i)) => {
                        out.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        let Value::Object(o) = std::mem::take(&mut out[i]) else {
                            out[i] = Value::Object(merge_map(Map::new(), p, elem)?.unwrap_or_default());
                            continue;
                        };
                        match merge_map(o, p, elem)? {
                            Some(m) => out[i] = Value::Object(m),
                            None => {
                                out.remove(i);
                            }
                        }
                    }
                    (_, None) => {
                        if let Some(m) = merge_map(Map::new(), p, elem)? {
                            out.push(Value::Object(m));
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

/// `$setElementOrder`: the listed elements in the listed order; elements the order does
/// not name (the server's own) stay after the element they followed before.
fn reorder(list: Vec<Value>, order: &[Value], how: ListMerge) -> Vec<Value> {
    let id = |v: &Value| -> Value {
        match how {
            ListMerge::ByKey(key) => v.get(key).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(id).collect();
    let rank = |v: &Value| wanted.iter().position(|w| *w == id(v));
    let mut named: Vec<(usize, Value)> = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    // Server-only elements, each kept behind the listed element that preceded it.
    let mut behind: Vec<(Option<usize>, Value)> = Vec::new();
    let mut last: Option<usize> = None;
    for v in list {
        match rank(&v) {
            Some(r) => {
                last = Some(r);
                named.push((r, v));
            }
            None => behind.push((last, v)),
        }
    }
    named.sort_by_key(|(r, _)| *r);
    out.extend(behind.iter().filter(|(p, _)| p.is_none()).map(|(_, v)| v.clone()));
    for (r, v) in named {
        out.push(v);
        for (_, s) in behind.iter().filter(|(p, _)| *p == Some(r)) {
            out.push(s.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sources of the cases:
    /// - DOC: community/contributors/devel/sig-api-machinery/strategic-merge-patch.md
    ///   (the strategic merge patch design document), its sections named;
    /// - CONV: community/contributors/devel/sig-architecture/api-conventions.md, "Patch
    ///   operations" / "Strategic Merge Patch";
    /// - KUBECTL: a patch the real kubectl 1.33 sent for `apply` (../shared/KUBECTL.md §7);
    /// - TAGS: the Go tags of k8s.io/api (patch_meta.rs), for which list merges how.
    struct Case {
        source: &'static str,
        ty: &'static str,
        original: Value,
        patch: Value,
        want: Result<Value, &'static str>,
    }

    fn cases() -> Vec<Case> {
        let two = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}]}});
        vec![
            Case {
                source: "DOC 'Basic Patch': lists with a merge key merge element by element",
                ty: "Pod",
                original: two.clone(),
                patch: json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}}),
                want: Ok(json!({"spec": {"containers": [
                    {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
                    {"name": "b", "image": "b:2"}]}})),
            },
            Case {
                source: "KUBECTL apply: image changed under $setElementOrder; the ports stay",
                ty: "Deployment",
                original: json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
                    {"name": "main", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]}}}}),
                patch: json!({"spec": {"template": {"spec": {
                    "$setElementOrder/containers": [{"name": "main"}],
                    "containers": [{"image": "nginx:1.26", "name": "main"}]}}}}),
                want: Ok(json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
                    {"name": "main", "image": "nginx:1.26", "ports": [{"containerPort": 80}]}]}}}})),
            },
            Case {
                source: "CONV: env merges by name, container ports by containerPort (TAGS)",
                ty: "Pod",
                original: json!({"spec": {"containers": [{"name": "a",
                    "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                    "ports": [{"containerPort": 80, "name": "http"}]}]}}),
                patch: json!({"spec": {"containers": [{"name": "a",
                    "env": [{"name": "Y", "value": "3"}],
                    "ports": [{"containerPort": 443, "name": "https"}]}]}}),
                want: Ok(json!({"spec": {"containers": [{"name": "a",
                    "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}],
                    "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "https"}]}]}})),
            },
            Case {
                source: "TAGS: service ports merge by port",
                ty: "Service",
                original: json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}),
                patch: json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
                want: Ok(json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}})),
            },
            Case {
                source: "CONV: a list without a patch strategy is replaced (tolerations, TAGS: atomic)",
                ty: "Pod",
                original: json!({"spec": {"tolerations": [{"key": "a"}, {"key": "b"}]}}),
                patch: json!({"spec": {"tolerations": [{"key": "c"}]}}),
                want: Ok(json!({"spec": {"tolerations": [{"key": "c"}]}})),
            },
            Case {
                source: "DOC 'Merging a list of primitives': finalizers are a set (merge, no key)",
                ty: "ConfigMap",
                original: json!({"metadata": {"finalizers": ["a", "b"]}}),
                patch: json!({"metadata": {"finalizers": ["b", "c"]}}),
                want: Ok(json!({"metadata": {"finalizers": ["a", "b", "c"]}})),
            },
            Case {
                source: "CONV: null deletes a field, as in a JSON merge patch",
                ty: "Pod",
                original: json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
                patch: json!({"metadata": {"labels": {"a": null}}}),
                want: Ok(json!({"metadata": {"labels": {"b": "2"}}})),
            },
            Case {
                source: "DOC '$patch: replace' in a map: the map is replaced, not merged",
                ty: "Pod",
                original: json!({"spec": {"hostname": "h", "containers": [{"name": "a", "image": "a:1"}]}}),
                patch: json!({"spec": {"$patch": "replace", "containers": [{"name": "n", "image": "n:1"}]}}),
                want: Ok(json!({"spec": {"containers": [{"name": "n", "image": "n:1"}]}})),
            },
            Case {
                source: "DOC '$patch: replace' in a list: the list is the patch's elements",
                ty: "Pod",
                original: two.clone(),
                patch: json!({"spec": {"containers": [{"name": "n", "image": "n:1"}, {"$patch": "replace"}]}}),
                want: Ok(json!({"spec": {"containers": [{"name": "n", "image": "n:1"}]}})),
            },
            Case {
                source: "DOC '$patch: merge' (the default, said explicitly): the map merges",
                ty: "Pod",
                original: json!({"metadata": {"labels": {"a": "1"}}}),
                patch: json!({"metadata": {"labels": {"$patch": "merge", "b": "2"}}}),
                want: Ok(json!({"metadata": {"labels": {"a": "1", "b": "2"}}})),
            },
            Case {
                source: "DOC '$patch: delete' in a list: the element with that key goes",
                ty: "Pod",
                original: two.clone(),
                patch: json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
                want: Ok(json!({"spec": {"containers": [{"name": "b", "image": "b:1"}]}})),
            },
            Case {
                source: "DOC '$patch: delete' in a map: the map goes",
                ty: "Deployment",
                original: json!({"spec": {"replicas": 1, "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1}}}}),
                patch: json!({"spec": {"strategy": {"rollingUpdate": {"$patch": "delete"}}}}),
                want: Ok(json!({"spec": {"replicas": 1, "strategy": {"type": "RollingUpdate"}}})),
            },
            Case {
                source: "DOC '$deleteFromPrimitiveList': values removed from a primitive list",
                ty: "ConfigMap",
                original: json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
                patch: json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}}),
                want: Ok(json!({"metadata": {"finalizers": ["a", "c"]}})),
            },
            Case {
                source: "DOC '$setElementOrder': the patch orders the list (kubectl apply reorders containers)",
                ty: "Pod",
                original: two.clone(),
                patch: json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
                want: Ok(json!({"spec": {"containers": [
                    {"name": "b", "image": "b:1"},
                    {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]}]}})),
            },
            Case {
                source: "DOC '$setElementOrder': an element only the server has stays after the one it followed",
                ty: "Pod",
                original: json!({"spec": {"containers": [{"name": "a"}, {"name": "sidecar"}, {"name": "b"}]}}),
                patch: json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
                want: Ok(json!({"spec": {"containers": [{"name": "b"}, {"name": "a"}, {"name": "sidecar"}]}})),
            },
            Case {
                source: "DOC '$setElementOrder' on a primitive list",
                ty: "ConfigMap",
                original: json!({"metadata": {"finalizers": ["a", "b"]}}),
                patch: json!({"metadata": {"$setElementOrder/finalizers": ["b", "a", "c"], "finalizers": ["c"]}}),
                want: Ok(json!({"metadata": {"finalizers": ["b", "a", "c"]}})),
            },
            Case {
                source: "DOC '$retainKeys': fields not listed are cleared (strategy type changed)",
                ty: "Deployment",
                original: json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
                patch: json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
                want: Ok(json!({"spec": {"strategy": {"type": "Recreate"}}})),
            },
            Case {
                source: "TAGS: owner references merge by uid",
                ty: "ReplicaSet",
                original: json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "d"}]}}),
                patch: json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "e"}]}}),
                want: Ok(
                    json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "d"}, {"uid": "2", "name": "e"}]}}),
                ),
            },
            Case {
                source: "DOC: a new element's own directives apply (nothing of them is stored)",
                ty: "Pod",
                original: json!({"spec": {}}),
                patch: json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X", "$patch": "delete"}]}]}}),
                want: Ok(json!({"spec": {"containers": [{"name": "a", "env": []}]}})),
            },
            Case {
                source: "apimachinery strategicpatch: an element without the merge key is refused",
                ty: "Pod",
                original: two.clone(),
                patch: json!({"spec": {"containers": [{"image": "x"}]}}),
                want: Err("does not contain declared merge key: name"),
            },
            Case {
                source: "apimachinery strategicpatch: an unknown $patch value is refused",
                ty: "Pod",
                original: two,
                patch: json!({"spec": {"$patch": "explode"}}),
                want: Err("unknown patch type"),
            },
        ]
    }

    #[test]
    fn strategic_merge_follows_the_design_document_and_the_tags() {
        for c in cases() {
            let got = strategic_merge(&c.original, &c.patch, c.ty);
            match (&c.want, got) {
                (Ok(want), Ok(got)) => assert_eq!(&got, want, "{}", c.source),
                (Err(text), Err(e)) => assert!(e.contains(text), "{}: {e}", c.source),
                (want, got) => panic!("{}: wanted {want:?}, got {got:?}", c.source),
            }
        }
    }
}
