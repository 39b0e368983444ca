//! How each field of the served kinds merges under a strategic merge patch: the
//! `patchStrategy` and `patchMergeKey` tags of the Kubernetes API's Go types, which
//! `k8s-openapi` does not carry. One table, read by the strategic merge (`strategic.rs`)
//! and written into the OpenAPI schemas (`x-kubernetes-patch-strategy`,
//! `x-kubernetes-patch-merge-key`) that kubectl computes its apply patches from.
//!
//! Source: `k8s.io/api` core/v1, apps/v1, batch/v1 `types.go` (commit 10b39a39, July
//! 2026) and `k8s.io/apimachinery` pkg/apis/meta/v1 `types.go` (commit eed236ce), every
//! tagged field reachable from the served kinds (alpha-only fields left out). A field
//! not listed merges as a map if it is an object and is replaced if it is a list
//! (Kubernetes' default: e.g. `tolerations`, `envFrom`, `taints`, endpoint subsets).
//! The table also names the struct type of each field on the way down to a tagged
//! field, so that nested fields are found (`spec.template.spec.containers[].ports`).

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMerge {
    /// Replaced whole (no patch strategy).
    Replace,
    /// `patchStrategy:"merge"` on a list of primitives: a set union.
    Primitives,
    /// `patchStrategy:"merge"` with `patchMergeKey`: element by element on the key.
    ByKey(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldMeta {
    /// The struct type of the field (of each element, for a list), if it leads on.
    pub ty: Option<&'static str>,
    /// The Go tag's `patchStrategy` (`""`, `"merge"`, `"retainKeys"`, `"merge,retainKeys"`).
    pub strategy: &'static str,
    /// The Go tag's `patchMergeKey`.
    pub key: Option<&'static str>,
    pub list: ListMerge,
}

/// (type, JSON field, field's struct type, patchStrategy, patchMergeKey)
type Row = (&'static str, &'static str, Option<&'static str>, &'static str, Option<&'static str>);

const TABLE: &[Row] = &[
    // The kinds down to their tagged fields (every type's `metadata` is an ObjectMeta).
    ("Pod", "spec", Some("PodSpec"), "", None),
    ("Pod", "status", Some("PodStatus"), "", None),
    ("PodTemplateSpec", "spec", Some("PodSpec"), "", None),
    ("Deployment", "spec", Some("DeploymentSpec"), "", None),
    ("Deployment", "status", Some("DeploymentStatus"), "", None),
    ("DeploymentSpec", "template", Some("PodTemplateSpec"), "", None),
    ("ReplicaSet", "spec", Some("ReplicaSetSpec"), "", None),
    ("ReplicaSet", "status", Some("ReplicaSetStatus"), "", None),
    ("ReplicaSetSpec", "template", Some("PodTemplateSpec"), "", None),
    ("DaemonSet", "spec", Some("DaemonSetSpec"), "", None),
    ("DaemonSet", "status", Some("DaemonSetStatus"), "", None),
    ("DaemonSetSpec", "template", Some("PodTemplateSpec"), "", None),
    ("Job", "spec", Some("JobSpec"), "", None),
    ("Job", "status", Some("JobStatus"), "", None),
    ("JobSpec", "template", Some("PodTemplateSpec"), "", None),
    ("Service", "spec", Some("ServiceSpec"), "", None),
    ("Service", "status", Some("ServiceStatus"), "", None),
    ("Node", "spec", Some("NodeSpec"), "", None),
    ("Node", "status", Some("NodeStatus"), "", None),
    ("Namespace", "status", Some("NamespaceStatus"), "", None),
    ("Volume", "ephemeral", Some("EphemeralVolumeSource"), "", None),
    ("EphemeralVolumeSource", "volumeClaimTemplate", Some("PersistentVolumeClaimTemplate"), "", None),
    // meta/v1 ObjectMeta
    ("ObjectMeta", "ownerReferences", Some("OwnerReference"), "merge", Some("uid")),
    ("ObjectMeta", "finalizers", None, "merge", None),
    // core/v1 PodSpec
    ("PodSpec", "volumes", Some("Volume"), "merge,retainKeys", Some("name")),
    ("PodSpec", "initContainers", Some("Container"), "merge", Some("name")),
    ("PodSpec", "containers", Some("Container"), "merge", Some("name")),
    ("PodSpec", "ephemeralContainers", Some("EphemeralContainer"), "merge", Some("name")),
    ("PodSpec", "imagePullSecrets", Some("LocalObjectReference"), "merge", Some("name")),
    ("PodSpec", "hostAliases", Some("HostAlias"), "merge", Some("ip")),
    ("PodSpec", "topologySpreadConstraints", Some("TopologySpreadConstraint"), "merge", Some("topologyKey")),
    ("PodSpec", "schedulingGates", Some("PodSchedulingGate"), "merge", Some("name")),
    ("PodSpec", "resourceClaims", Some("PodResourceClaim"), "merge,retainKeys", Some("name")),
    // core/v1 Container, and EphemeralContainer (its EphemeralContainerCommon inline)
    ("Container", "ports", Some("ContainerPort"), "merge", Some("containerPort")),
    ("Container", "env", Some("EnvVar"), "merge", Some("name")),
    ("Container", "volumeMounts", Some("VolumeMount"), "merge", Some("mountPath")),
    ("Container", "volumeDevices", Some("VolumeDevice"), "merge", Some("devicePath")),
    ("EphemeralContainer", "ports", Some("ContainerPort"), "merge", Some("containerPort")),
    ("EphemeralContainer", "env", Some("EnvVar"), "merge", Some("name")),
    ("EphemeralContainer", "volumeMounts", Some("VolumeMount"), "merge", Some("mountPath")),
    ("EphemeralContainer", "volumeDevices", Some("VolumeDevice"), "merge", Some("devicePath")),
    // core/v1 statuses
    ("PodStatus", "conditions", Some("PodCondition"), "merge", Some("type")),
    ("PodStatus", "hostIPs", Some("HostIP"), "merge", Some("ip")),
    ("PodStatus", "podIPs", Some("PodIP"), "merge", Some("ip")),
    ("PodStatus", "resourceClaimStatuses", Some("PodResourceClaimStatus"), "merge,retainKeys", Some("name")),
    ("NodeStatus", "conditions", Some("NodeCondition"), "merge", Some("type")),
    ("NodeStatus", "addresses", Some("NodeAddress"), "merge", Some("type")),
    ("NamespaceStatus", "conditions", Some("NamespaceCondition"), "merge", Some("type")),
    ("ServiceStatus", "conditions", Some("Condition"), "merge", Some("type")),
    // core/v1 other specs
    ("ServiceSpec", "ports", Some("ServicePort"), "merge", Some("port")),
    ("NodeSpec", "podCIDRs", None, "merge", None),
    ("ServiceAccount", "secrets", Some("ObjectReference"), "merge", Some("name")),
    // apps/v1, batch/v1
    ("DeploymentSpec", "strategy", Some("DeploymentStrategy"), "retainKeys", None),
    ("DeploymentStatus", "conditions", Some("DeploymentCondition"), "merge", Some("type")),
    ("ReplicaSetStatus", "conditions", Some("ReplicaSetCondition"), "merge", Some("type")),
    ("DaemonSetStatus", "conditions", Some("DaemonSetCondition"), "merge", Some("type")),
    ("JobStatus", "conditions", Some("JobCondition"), "merge", Some("type")),
];

/// How `field` of struct type `ty` merges, if the table says anything about it.
pub fn field_meta(ty: &str, field: &str) -> Option<FieldMeta> {
    if field == "metadata" {
        return Some(FieldMeta { ty: Some("ObjectMeta"), strategy: "", key: None, list: ListMerge::Replace });
    }
    let &(_, _, child, strategy, key) = TABLE.iter().find(|(t, f, ..)| *t == ty && *f == field)?;
    let list = match (strategy.split(',').any(|s| s == "merge"), key) {
        (true, Some(k)) => ListMerge::ByKey(k),
        (true, None) => ListMerge::Primitives,
        (false, _) => ListMerge::Replace,
    };
    Some(FieldMeta { ty: child, strategy, key, list })
}

/// The tagged fields (a patch strategy or merge key) of struct type `ty`.
pub fn tagged(ty: &str) -> impl Iterator<Item = (&'static str, FieldMeta)> + '_ {
    TABLE
        .iter()
        .filter(move |(t, _, _, s, k)| *t == ty && (!s.is_empty() || k.is_some()))
        .filter_map(move |(_, f, ..)| Some((*f, field_meta(ty, f)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_as_the_go_tags() {
        assert_eq!(field_meta("PodSpec", "containers").unwrap().list, ListMerge::ByKey("name"));
        assert_eq!(field_meta("Container", "ports").unwrap().list, ListMerge::ByKey("containerPort"));
        assert_eq!(field_meta("ObjectMeta", "finalizers").unwrap().list, ListMerge::Primitives);
        assert_eq!(field_meta("DeploymentSpec", "strategy").unwrap().strategy, "retainKeys");
        assert_eq!(field_meta("Deployment", "metadata").unwrap().ty, Some("ObjectMeta"));
        // Untagged lists are atomic in Kubernetes: not in the table.
        assert!(field_meta("PodSpec", "tolerations").is_none());
        assert!(field_meta("Container", "envFrom").is_none());
        assert_eq!(tagged("Container").count(), 4);
        assert_eq!(tagged("Pod").count(), 0, "spec and status lead on but carry no tags");
        // Every type with rows is a served kind or reached from one (a typo breaks a path).
        let kinds =
            ["Pod", "Deployment", "ReplicaSet", "DaemonSet", "Job", "Service", "Node", "Namespace", "ServiceAccount"];
        for (ty, ..) in TABLE {
            let reached = *ty == "ObjectMeta" || TABLE.iter().any(|(_, _, child, ..)| *child == Some(*ty));
            assert!(kinds.contains(ty) || reached, "{ty} is not reachable from a served kind");
        }
    }
}
