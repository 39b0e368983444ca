//! Discovery: `/version`, `/api`, `/apis` and each group-version's resource list, as
//! kubectl reads them to map `kubectl get deploy` to `/apis/apps/v1/…/deployments`.

use serde_json::{json, Value};

use super::resources::{groups, RESOURCES};

/// The Kubernetes version the object types follow (k8s-openapi's `v1_33`): kubectl's
/// dispatcher runs the matching kubectl.
pub const MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0+keelson-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "keelson",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24 (keelson is Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

pub fn group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// The APIResourceList of `group`/`version` (`""` for the core group), or `None`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for sub in r.subresources {
            let (kind, group, version, verbs): (&str, &str, &str, &[&str]) = match *sub {
                "scale" => ("Scale", "autoscaling", "v1", &["get", "patch", "update"]),
                "status" => (r.kind, r.group, r.version, &["get", "patch", "update"]),
                "log" => ("Pod", "", "v1", &["get"]),
                "exec" => ("PodExecOptions", "", "v1", &["create", "get"]),
                "binding" => ("Binding", "", "v1", &["create"]),
                "eviction" => ("Eviction", "policy", "v1", &["create"]),
                _ => continue,
            };
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if group != r.group || version != r.version {
                entry["group"] = group.into();
                entry["version"] = version.into();
            }
            resources.push(entry);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_every_resource_with_its_subresources() {
        let core = resource_list("", "v1").unwrap();
        let names: Vec<&str> =
            core["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"pods") && names.contains(&"pods/log") && names.contains(&"configmaps"));
        let apps = resource_list("apps", "v1").unwrap();
        let scale = apps["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments/scale").unwrap();
        assert_eq!((scale["group"].as_str(), scale["kind"].as_str()), (Some("autoscaling"), Some("Scale")));
        assert!(resource_list("apps", "v2").is_none());
        assert_eq!(group_list()["groups"].as_array().unwrap().len(), 4);
        assert_eq!(version()["minor"], "33");
    }
}
