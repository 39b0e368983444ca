//! `/openapi/v3`: enough of the OpenAPI v3 documents for kubectl to see that this server
//! validates fields itself. kubectl (1.27+) looks, in the group-version's document, for
//! the PATCH operation of the object's kind (`x-kubernetes-group-version-kind`) and its
//! `fieldValidation` parameter; finding it, it sends objects with
//! `fieldValidation=Strict` and lets the server refuse unknown fields, instead of
//! validating them itself against schemas. Schemas (`components.schemas`, for `kubectl
//! explain` and apply's merge keys) are issue P5's.

use serde_json::{json, Map, Value};

use super::discovery::MINOR;
use super::resources::{Resource, RESOURCES};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A stable tag of a document's content, for the `?hash=` clients cache by.
fn hash(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016X}")
}

/// The root: one entry per group-version, pointing at its document.
pub fn root() -> Value {
    let mut paths = Map::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !seen.contains(&(r.group, r.version)) {
            seen.push((r.group, r.version));
        }
    }
    for (g, v) in seen {
        let p = gv_path(g, v);
        let doc = document(g, v).map(|d| d.to_string()).unwrap_or_default();
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}));
    }
    json!({"paths": paths})
}

fn operation(r: &Resource, namespaced_path: bool) -> Value {
    let scope = if r.namespaced && namespaced_path { "Namespaced" } else { "" };
    let group =
        if r.group.is_empty() { "Core".to_string() } else { r.group.split('.').next().unwrap_or_default().to_string() };
    let group = group[..1].to_uppercase() + &group[1..];
    let version = r.version[..1].to_uppercase() + &r.version[1..];
    json!({
        "operationId": format!("patch{group}{version}{scope}{}", r.kind),
        "description": format!("partially update the specified {}", r.kind),
        "parameters": [
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query",
             "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.",
             "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
        ],
        "requestBody": {"content": {
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
        }, "required": true},
        "responses": {"200": {"description": "OK"}, "201": {"description": "Created"}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
    })
}

/// The document of one group-version, or `None` if not served.
pub fn document(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let base = format!("/{}", gv_path(group, version));
        let path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(path, json!({"patch": operation(r, true)}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{MINOR}.0")},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// Answers `/openapi/v3[/<gv path>]`.
pub fn lookup(rest: &[&str]) -> Option<Value> {
    match rest {
        [] => Some(root()),
        ["api", v] => document("", v),
        ["apis", g, v] => document(g, v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_patch_operation_with_field_validation() {
        let root = root();
        assert!(root["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
        for r in RESOURCES {
            let doc =
                if r.group.is_empty() { lookup(&["api", r.version]) } else { lookup(&["apis", r.group, r.version]) }
                    .unwrap();
            let found = doc["paths"].as_object().unwrap().values().any(|p| {
                p["patch"]["x-kubernetes-group-version-kind"]["kind"] == r.kind
                    && p["patch"]["parameters"].as_array().unwrap().iter().any(|q| q["name"] == "fieldValidation")
            });
            assert!(found, "{}", r.kind);
        }
        assert!(lookup(&["apis", "nope", "v1"]).is_none());
        assert_eq!(
            operation(crate::api::resources::find("apps", "v1", "deployments").unwrap(), true)["operationId"],
            "patchAppsV1NamespacedDeployment"
        );
    }
}
