//! What Kubernetes checks before it stores an object: names, labels, the object's
//! shape (decoded into its `k8s-openapi` type), and, under `fieldValidation=Strict`,
//! fields the type does not know.

use serde_json::Value;

use super::kinds::{visit, KindVisitor};
use super::resources::Resource;

const SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or \
                         '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used \
                         for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must \
                     start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for \
                     validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or \
                           '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or \
                           'my_value',  or '12345', regex used for validation is \
                           '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && alnum_lower(b[0])
        && alnum_lower(b[b.len() - 1])
        && b.iter().all(|c| alnum_lower(*c) || *c == b'-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    s.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// A qualified name (`[prefix/]name`), as label and annotation keys are.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// The name rule of `res`: namespaces (and a few others) are DNS labels, most
/// objects DNS subdomains.
pub fn name_problem(res: &Resource, name: &str) -> Option<String> {
    let (ok, rule) = match res.plural {
        "namespaces" | "services" => (is_dns_label(name), LABEL),
        _ => (is_dns_subdomain(name), SUBDOMAIN),
    };
    (!ok).then(|| format!("Invalid value: \"{name}\": {rule}"))
}

/// Field problems of an object's metadata (name, labels, annotation keys).
pub fn metadata_problems(res: &Resource, meta: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match meta["name"].as_str() {
        Some(n) => {
            if let Some(p) = name_problem(res, n) {
                out.push(("metadata.name".to_string(), p));
            }
        }
        None => out.push(("metadata.name".into(), "Required value: name or generateName is required".into())),
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                out.push(("metadata.labels".into(), format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
            }
            match v.as_str() {
                Some(v) if is_label_value(v) => {}
                Some(v) => out.push(("metadata.labels".into(), format!("Invalid value: \"{v}\": {LABEL_VALUE}"))),
                None => out.push(("metadata.labels".into(), format!("Invalid value: {v}: label values are strings"))),
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        for k in annotations.keys().filter(|k| !is_qualified_name(k)) {
            out.push((
                "metadata.annotations".into(),
                format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'"),
            ));
        }
    }
    out
}

fn containers_problems(spec: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match spec["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                for field in ["name", "image"] {
                    if c[field].as_str().is_none_or(str::is_empty) {
                        out.push((format!("{path}.containers[{i}].{field}"), "Required value".into()));
                    }
                }
                if let Some(name) = c["name"].as_str().filter(|n| !n.is_empty() && !is_dns_label(n)) {
                    out.push((format!("{path}.containers[{i}].name"), format!("Invalid value: \"{name}\": {LABEL}")));
                }
            }
        }
        _ => out.push((format!("{path}.containers"), "Required value".into())),
    }
}

/// The required fields and cross-field rules Kubernetes checks for these kinds (before
/// the shape: a missing required field is a 422 naming it, not a decode error).
pub fn spec_problems(res: &Resource, obj: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let spec = &obj["spec"];
    match res.kind {
        "Pod" => containers_problems(spec, "spec", &mut out),
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            if let Some(r) = spec["replicas"].as_i64().filter(|r| *r < 0) {
                out.push(("spec.replicas".into(), format!("Invalid value: {r}: must be greater than or equal to 0")));
            }
            let selector = &spec["selector"];
            if !selector.is_object() {
                out.push(("spec.selector".into(), "Required value".into()));
            }
            let labels = &spec["template"]["metadata"]["labels"];
            if let Some(want) = selector["matchLabels"].as_object() {
                if want.iter().any(|(k, v)| labels.get(k) != Some(v)) {
                    out.push((
                        "spec.template.metadata.labels".into(),
                        format!("Invalid value: {labels}: `selector` does not match template `labels`"),
                    ));
                }
            }
            containers_problems(&spec["template"]["spec"], "spec.template.spec", &mut out);
        }
        "Job" => containers_problems(&spec["template"]["spec"], "spec.template.spec", &mut out),
        // As Kubernetes' legacy event validation: an event lives in its object's namespace.
        "Event" if obj["eventTime"].is_null() => {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
            let involved = obj["involvedObject"]["namespace"].as_str().unwrap_or_default();
            let agree = if involved.is_empty() { ns.is_empty() || ns == "default" } else { ns == involved };
            if !agree {
                out.push((
                    "involvedObject.namespace".into(),
                    format!("Invalid value: {involved:?}: does not match event.namespace"),
                ));
            }
        }
        "Service" => {
            let external = spec["type"] == "ExternalName";
            let headless = spec["clusterIP"] == "None";
            if !external && !headless && spec["ports"].as_array().is_none_or(|p| p.is_empty()) {
                out.push(("spec.ports".into(), "Required value".into()));
            }
        }
        "ConfigMap" | "Secret" => {
            for map in ["data", "binaryData", "stringData"] {
                for key in obj[map].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                    let ok = !key.is_empty()
                        && key.len() <= 253
                        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                    if !ok {
                        out.push((
                            format!("{map}[{key}]"),
                            format!("Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// `obj` decoded as the `k8s-openapi` type of its kind, read where it lies (no copy),
/// and printed back to JSON only when `back` (what the type knows, for strict checks).
fn read_as_type(res: &Resource, obj: &Value, back: bool) -> Result<Option<Value>, String> {
    struct Read<'a>(&'a Value, bool);
    impl KindVisitor for Read<'_> {
        type Out = Result<Option<Value>, String>;
        fn visit<T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema>(self) -> Self::Out {
            let typed = T::deserialize(self.0).map_err(|e| e.to_string())?;
            self.1.then(|| serde_json::to_value(typed).map_err(|e| e.to_string())).transpose()
        }
    }
    visit(res.kind, Read(obj, back)).unwrap_or_else(|| Err(format!("no type for kind {}", res.kind)))
}

/// Whether `obj` decodes as its kind's type (a shape error is a decode error, 400):
/// every create and patch pays this, so nothing is printed back.
pub fn check(res: &Resource, obj: &Value) -> Result<(), String> {
    read_as_type(res, obj, false).map(drop)
}

/// Decodes `obj` into the `k8s-openapi` type of its kind and back: the round trip is
/// what the type knows (for strict checks).
pub fn decode(res: &Resource, obj: &Value) -> Result<Value, String> {
    read_as_type(res, obj, true).map(Option::unwrap_or_default)
}

/// The first field of `given` that `known` (its decoded round trip) lacks, as a path
/// (`spec.foo`, `spec.containers[0].imagee`); null fields are not counted.
pub fn unknown_field(given: &Value, known: &Value) -> Option<String> {
    fn walk(given: &Value, known: &Value, path: &str) -> Option<String> {
        match (given, known) {
            (Value::Object(g), Value::Object(k)) => g.iter().find_map(|(key, v)| {
                let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match k.get(key) {
                    None if v.is_null() => None,
                    // Empty maps and lists may be dropped by the round trip.
                    None if v.as_object().is_some_and(|o| o.is_empty())
                        || v.as_array().is_some_and(|a| a.is_empty()) =>
                    {
                        None
                    }
                    None => Some(here),
                    Some(kv) => walk(v, kv, &here),
                }
            }),
            (Value::Array(g), Value::Array(k)) => {
                g.iter().zip(k).enumerate().find_map(|(i, (gv, kv))| walk(gv, kv, &format!("{path}[{i}]")))
            }
            _ => None,
        }
    }
    walk(given, known, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::find;
    use serde_json::json;

    #[test]
    fn names_and_labels_follow_kubernetes_rules() {
        let cm = find("", "v1", "configmaps").unwrap();
        let ns = find("", "v1", "namespaces").unwrap();
        assert!(name_problem(cm, "a.b-c").is_none());
        assert!(name_problem(cm, "Bad_Name").unwrap().contains("RFC 1123 subdomain"));
        assert!(name_problem(ns, "a.b").unwrap().contains("RFC 1123 label"));
        let p = metadata_problems(cm, &json!({"name": "x", "labels": {"app": "ok", "tier": "bad value!"}}));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "metadata.labels");
        assert!(p[0].1.contains("\"bad value!\""));
        assert!(metadata_problems(cm, &json!({"labels": {"example.com/app": "v"}}))[0].1.contains("Required"));
    }

    #[test]
    fn required_fields_and_cross_field_rules() {
        let d = find("apps", "v1", "deployments").unwrap();
        let p = spec_problems(
            d,
            &json!({"spec": {"replicas": -1, "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c"}]}}}}),
        );
        let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.replicas", "spec.selector", "spec.template.spec.containers[0].image"]);
        let p = spec_problems(
            d,
            &json!({"spec": {"selector": {"matchLabels": {"app": "y"}}, "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        );
        assert!(p[0].1.ends_with("`selector` does not match template `labels`"), "{p:?}");
        let svc = find("", "v1", "services").unwrap();
        assert_eq!(spec_problems(svc, &json!({"spec": {}}))[0].0, "spec.ports");
        assert!(spec_problems(svc, &json!({"spec": {"type": "ExternalName"}})).is_empty());
        let cm = find("", "v1", "configmaps").unwrap();
        assert_eq!(spec_problems(cm, &json!({"data": {"bad key": "v", "ok.key": "v"}}))[0].0, "data[bad key]");
    }

    #[test]
    fn decoding_finds_bad_shapes_and_unknown_fields() {
        let d = find("apps", "v1", "deployments").unwrap();
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "replicaz": 3,
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "i", "imagee": "x"}]}}}
        });
        let known = decode(d, &obj).unwrap();
        assert_eq!(unknown_field(&obj, &known).as_deref(), Some("spec.replicaz"));
        let mut fixed = obj.clone();
        fixed["spec"].as_object_mut().unwrap().remove("replicaz");
        assert_eq!(
            unknown_field(&fixed, &decode(d, &fixed).unwrap()).as_deref(),
            Some("spec.template.spec.containers[0].imagee")
        );
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": "three"}});
        assert!(decode(d, &bad).is_err());
        assert_eq!(check(d, &bad), decode(d, &bad).map(drop), "the same error without the round trip");
        assert_eq!(check(d, &fixed), Ok(()));
    }
}
