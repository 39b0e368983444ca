//! The resources the API serves: what discovery lists, how paths name them, and
//! where their objects live in the store.

/// One served resource (a Kubernetes kind in one group-version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served (`status`, `scale`, …).
    pub subresources: &'static [&'static str],
}

const ALL: &[&str] = &["all"];

macro_rules! resource {
    ($group:expr, $version:expr, $plural:expr, $singular:expr, $kind:expr, $ns:expr, $short:expr, $cat:expr, $sub:expr) => {
        Resource {
            group: $group,
            version: $version,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
        }
    };
}

/// Every served resource, in discovery order.
pub const RESOURCES: &[Resource] = &[
    resource!("", "v1", "namespaces", "namespace", "Namespace", false, &["ns"], &[], &["status"]),
    resource!("", "v1", "nodes", "node", "Node", false, &["no"], &[], &["status"]),
    resource!("", "v1", "pods", "pod", "Pod", true, &["po"], ALL, &["status", "binding", "log", "exec", "eviction"]),
    resource!("", "v1", "services", "service", "Service", true, &["svc"], ALL, &["status"]),
    resource!("", "v1", "endpoints", "endpoints", "Endpoints", true, &["ep"], &[], &[]),
    resource!("", "v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], &[], &[]),
    resource!("", "v1", "secrets", "secret", "Secret", true, &[], &[], &[]),
    resource!("", "v1", "events", "event", "Event", true, &["ev"], &[], &[]),
    resource!("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], &[], &[]),
    resource!("apps", "v1", "deployments", "deployment", "Deployment", true, &["deploy"], ALL, &["status", "scale"]),
    resource!("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, &["rs"], ALL, &["status", "scale"]),
    resource!("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true, &["ds"], ALL, &["status"]),
    resource!("batch", "v1", "jobs", "job", "Job", true, &[], ALL, &["status"]),
    resource!("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, &[], &[], &[]),
    resource!("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", true, &[], &[], &[]),
];

/// The API groups besides the core one, each with its one version.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

/// The resource `plural` of `group`/`version`, if served.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

impl Resource {
    /// `v1` or `apps/v1`, as objects carry it.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `deployments.apps`, as Kubernetes names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The URL path of this resource's collection in `namespace` (all namespaces, or a
    /// cluster-scoped resource, when `None`): `/api/v1/namespaces/web/pods`,
    /// `/apis/apps/v1/deployments`.
    pub fn path(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }

    /// The store key prefix of this resource's objects in `namespace` (all namespaces
    /// when `None`). The first five segments decide the shard, so one namespace's
    /// objects of one kind share a shard.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() { "core" } else { self.group };
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{group}/{}/{ns}/", self.plural),
            (false, _) => format!("/registry/{group}/{}/-/", self.plural),
            (true, None) => format!("/registry/{group}/{}/", self.plural),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// The verbs discovery lists.
    pub fn verbs(&self) -> &'static [&'static str] {
        &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::shard_of;

    #[test]
    fn keys_of_one_namespace_and_kind_share_a_shard() {
        let pods = find("", "v1", "pods").unwrap();
        let a = shard_of(&pods.key(Some("web"), "a"), 4);
        assert_eq!(a, shard_of(&pods.key(Some("web"), "zzz"), 4));
        assert!(pods.key(Some("web"), "a").starts_with(&pods.prefix(None)));
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(ns.key(None, "default"), "/registry/core/namespaces/-/default");
        assert_eq!(find("apps", "v1", "deployments").unwrap().qualified(), "deployments.apps");
        assert_eq!(groups(), ["apps", "batch", "coordination.k8s.io", "discovery.k8s.io"]);
    }
}
