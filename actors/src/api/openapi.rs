//! `/openapi/v3`: enough of the OpenAPI v3 documents for kubectl to see that this server
//! validates fields itself. kubectl (1.27+) looks, in the group-version's document, for
//! the PATCH operation of the object's kind (`x-kubernetes-group-version-kind`) and its
//! `fieldValidation` parameter; finding it, it sends objects with
//! `fieldValidation=Strict` and lets the server refuse unknown fields, instead of
//! validating them itself against schemas. The schemas (`components.schemas`) are
//! generated from the `k8s-openapi` types: `kubectl explain` reads them, and `kubectl
//! apply` finds each list's merge key in them to compute its patches.

use serde_json::{json, Map, Value};

use super::discovery::MINOR;
use super::kinds::{visit, KindVisitor};
use super::patch_meta::tagged;
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
    let h = crate::hash::fnv1a(text.as_bytes());
    format!("{h:016X}")
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

/// The schemas of one group-version's kinds and everything they refer to, from the
/// `k8s-openapi` types, with what Kubernetes adds: each kind's
/// `x-kubernetes-group-version-kind`, and each list's patch strategy and merge key.
fn schemas(group: &str, version: &str) -> Map<String, Value> {
    struct Add<'a>(&'a mut schemars::SchemaGenerator);
    impl KindVisitor for Add<'_> {
        type Out = ();
        fn visit<T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema>(self) {
            self.0.subschema_for::<T>();
        }
    }
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let kinds: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    for r in &kinds {
        visit(r.kind, Add(&mut generator));
    }
    let mut defs = generator.take_definitions(true);
    // `io.k8s.api.apps.v1.Deployment`: the Go type's name is the last part.
    let gv_prefix = match group {
        "" => format!("io.k8s.api.core.{version}."),
        g => format!("io.k8s.api.{}.{version}.", g.split('.').next().unwrap_or_default()),
    };
    for (name, schema) in defs.iter_mut() {
        let ty = name.rsplit('.').next().unwrap_or_default();
        if let Some(r) = kinds.iter().find(|r| r.kind == ty && name.starts_with(&gv_prefix)) {
            schema["x-kubernetes-group-version-kind"] =
                json!([{"group": r.group, "kind": r.kind, "version": r.version}]);
        }
        for (field, meta) in tagged(ty) {
            let Some(prop) = schema.get_mut("properties").and_then(|p| p.get_mut(field)) else { continue };
            if !meta.strategy.is_empty() {
                prop["x-kubernetes-patch-strategy"] = meta.strategy.into();
            }
            if let Some(key) = meta.key {
                prop["x-kubernetes-patch-merge-key"] = key.into();
            }
        }
    }
    defs
}

/// The document of one group-version, or `None` if not served.
fn document(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        paths.insert(format!("{}/{{name}}", r.path(Some("{namespace}"))), json!({"patch": operation(r, true)}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{MINOR}.0")},
        "paths": paths,
        "components": {"schemas": schemas(group, version)},
    }))
}

/// The documents, made once per API server (they only change with the binary).
pub struct OpenApi {
    root: Value,
    documents: Map<String, Value>,
}

impl OpenApi {
    pub fn new() -> Self {
        let mut documents = Map::new();
        let mut root = Map::new();
        for r in RESOURCES {
            let p = gv_path(r.group, r.version);
            if documents.contains_key(&p) {
                continue;
            }
            let Some(doc) = document(r.group, r.version) else { continue };
            let url = format!("/openapi/v3/{p}?hash={}", hash(&doc.to_string()));
            root.insert(p.clone(), json!({"serverRelativeURL": url}));
            documents.insert(p, doc);
        }
        Self { root: json!({"paths": root}), documents }
    }

    /// Answers `/openapi/v3[/<gv path>]`.
    pub fn lookup(&self, rest: &[&str]) -> Option<Value> {
        if rest.is_empty() {
            return Some(self.root.clone());
        }
        self.documents.get(&rest.join("/")).cloned()
    }
}

impl Default for OpenApi {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_patch_operation_with_field_validation() {
        let api = OpenApi::new();
        let root = api.lookup(&[]).unwrap();
        assert!(root["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
        for r in RESOURCES {
            let doc = if r.group.is_empty() {
                api.lookup(&["api", r.version])
            } else {
                api.lookup(&["apis", r.group, r.version])
            }
            .unwrap();
            let found = doc["paths"].as_object().unwrap().values().any(|p| {
                p["patch"]["x-kubernetes-group-version-kind"]["kind"] == r.kind
                    && p["patch"]["parameters"].as_array().unwrap().iter().any(|q| q["name"] == "fieldValidation")
            });
            assert!(found, "{}", r.kind);
        }
        assert!(api.lookup(&["apis", "nope", "v1"]).is_none());
        let core = api.lookup(&["api", "v1"]).unwrap();
        assert!(core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"].is_object());
        assert!(core["paths"]["/api/v1/nodes/{name}"]["patch"].is_object());
        assert_eq!(
            operation(crate::api::resources::find("apps", "v1", "deployments").unwrap(), true)["operationId"],
            "patchAppsV1NamespacedDeployment"
        );
    }

    #[test]
    fn schemas_carry_kinds_and_merge_keys() {
        let api = OpenApi::new();
        let core = api.lookup(&["api", "v1"]).unwrap();
        let schemas = &core["components"]["schemas"];
        let pod = &schemas["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let probe = &schemas["io.k8s.api.core.v1.Container"]["properties"]["readinessProbe"];
        assert!(probe.to_string().contains("#/components/schemas/io.k8s.api.core.v1.Probe"), "{probe}");
        assert!(schemas["io.k8s.api.core.v1.Probe"]["description"].is_string());
        let apps = api.lookup(&["apis", "apps", "v1"]).unwrap();
        let strategy = &apps["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"];
        assert_eq!(strategy["x-kubernetes-patch-strategy"], "retainKeys");
        // A group-version's document holds its own kinds (and what they use), not others'.
        assert!(apps["components"]["schemas"]["io.k8s.api.core.v1.Pod"].is_null());
    }
}
