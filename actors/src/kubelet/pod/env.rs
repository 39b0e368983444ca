//! A container's environment and command line, as Kubernetes builds them: the
//! Services' variables (`<SVC>_SERVICE_HOST` …) first, then `envFrom`, then `env`
//! (values with `$(VAR)` expanded from what came before, `fieldRef`,
//! `configMapKeyRef`, `secretKeyRef`), and `$(VAR)` expanded in command and args.
//! A reference to a missing ConfigMap or Secret key is the user's error
//! (`CreateContainerConfigError`), unless it is marked optional.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// The ConfigMaps and Secrets a container refers to, by name (`None`: not found).
#[derive(Debug, Default)]
pub struct Refs {
    pub config_maps: HashMap<String, Option<Value>>,
    pub secrets: HashMap<String, Option<Value>>,
}

impl Refs {
    /// The names of those `container` refers to: (config maps, secrets).
    pub fn wanted(container: &Value) -> (Vec<String>, Vec<String>) {
        let (mut cms, mut secrets) = (Vec::new(), Vec::new());
        for e in container["env"].as_array().into_iter().flatten() {
            if let Some(n) = e["valueFrom"]["configMapKeyRef"]["name"].as_str() {
                cms.push(n.to_string());
            }
            if let Some(n) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                secrets.push(n.to_string());
            }
        }
        for e in container["envFrom"].as_array().into_iter().flatten() {
            if let Some(n) = e["configMapRef"]["name"].as_str() {
                cms.push(n.to_string());
            }
            if let Some(n) = e["secretRef"]["name"].as_str() {
                secrets.push(n.to_string());
            }
        }
        cms.dedup();
        secrets.dedup();
        (cms, secrets)
    }

    /// The entries of a ConfigMap (`data`) or Secret (`data`, decoded).
    fn entries(&self, secret: bool, name: &str) -> Option<BTreeMap<String, String>> {
        let obj = if secret { self.secrets.get(name) } else { self.config_maps.get(name) }?.as_ref()?;
        let data = obj["data"].as_object().cloned().unwrap_or_default();
        Some(
            data.into_iter()
                .filter_map(|(k, v)| {
                    let s = v.as_str()?;
                    let value =
                        if secret { String::from_utf8_lossy(&unbase64(s)?).into_owned() } else { s.to_string() };
                    Some((k, value))
                })
                .collect(),
        )
    }
}

/// Decodes standard base64 (padding optional); `None` if malformed.
pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=' && !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let take = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    Some(out)
}

/// Expands `$(VAR)` from `vars` as Kubernetes does: an unknown name stays as written,
/// `$$` is a literal `$` (so `$$(VAR)` is `$(VAR)`).
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What the node knows of the pod that its spec does not hold.
pub struct PodFacts<'a> {
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    pub node: &'a str,
}

fn field_ref(pod: &Value, path: &str, facts: &PodFacts<'_>) -> Option<String> {
    let meta = &pod["metadata"];
    let quoted = |prefix: &str| path.strip_prefix(prefix)?.strip_suffix("']").map(str::to_string);
    Some(match path {
        "metadata.name" => meta["name"].as_str()?.to_string(),
        "metadata.namespace" => meta["namespace"].as_str()?.to_string(),
        "metadata.uid" => meta["uid"].as_str()?.to_string(),
        "spec.nodeName" => facts.node.to_string(),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        _ => {
            if let Some(k) = quoted("metadata.labels['") {
                meta["labels"][k.as_str()].as_str().unwrap_or_default().to_string()
            } else if let Some(k) = quoted("metadata.annotations['") {
                meta["annotations"][k.as_str()].as_str().unwrap_or_default().to_string()
            } else {
                return None;
            }
        }
    })
}

/// Kubernetes' variables for each Service with a cluster address: `WEB_SERVICE_HOST`,
/// `WEB_SERVICE_PORT`, `WEB_PORT=tcp://10.96.0.5:80`, `WEB_PORT_80_TCP…`.
pub fn service_vars(services: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc["metadata"]["name"].as_str().unwrap_or_default().to_uppercase().replace('-', "_");
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first["port"].to_string()));
        for p in &ports {
            if let Some(pn) = p["name"].as_str().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{name}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")),
                    p["port"].to_string(),
                ));
            }
        }
        let proto = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
        out.push((format!("{name}_PORT"), format!("{}://{ip}:{}", proto(first).to_lowercase(), first["port"])));
        for p in &ports {
            let (port, pr) = (p["port"].to_string(), proto(p));
            let base = format!("{name}_PORT_{port}_{pr}");
            out.push((base.clone(), format!("{}://{ip}:{port}", pr.to_lowercase())));
            out.push((format!("{base}_PROTO"), pr.to_lowercase()));
            out.push((format!("{base}_PORT"), port));
            out.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// Sets `name` in `env` (replacing an earlier value, keeping its place).
fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name.to_string(), value)),
    }
}

/// The variables every container gets before its own (the process runtime starts
/// from an empty environment, as a container image would).
pub fn base_env(pod: &Value, facts: &PodFacts<'_>) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), crate::cri::shim::DEFAULT_PATH.into()),
        ("HOSTNAME".into(), pod["metadata"]["name"].as_str().unwrap_or_default().to_string()),
        ("POD_IP".into(), facts.pod_ip.to_string()),
    ]
}

/// The container's environment, or the `CreateContainerConfigError` message.
pub fn resolve(
    pod: &Value,
    container: &Value,
    refs: &Refs,
    facts: &PodFacts<'_>,
    services: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let mut env = base_env(pod, facts);
    for (k, v) in services {
        set(&mut env, k, v.clone());
    }
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (secret, r) =
            if from["secretRef"].is_object() { (true, &from["secretRef"]) } else { (false, &from["configMapRef"]) };
        let name = r["name"].as_str().unwrap_or_default();
        match refs.entries(secret, name) {
            Some(entries) => {
                for (k, v) in entries {
                    set(&mut env, &format!("{prefix}{k}"), v);
                }
            }
            None if r["optional"] == true => {}
            None => return Err(format!("{} \"{name}\" not found", if secret { "secret" } else { "configmap" })),
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let Some(name) = e["name"].as_str() else { continue };
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            let vars: HashMap<String, String> = env.iter().cloned().collect();
            expand(v, &vars)
        } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            field_ref(pod, path, facts).ok_or_else(|| format!("unsupported fieldPath {path:?} in env {name:?}"))?
        } else if from["resourceFieldRef"].is_object() {
            String::new()
        } else if from.is_object() {
            let (secret, r) = if from["secretKeyRef"].is_object() {
                (true, &from["secretKeyRef"])
            } else {
                (false, &from["configMapKeyRef"])
            };
            let (obj, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
            let what = if secret { "secret" } else { "configmap" };
            match refs.entries(secret, obj).map(|m| m.get(key).cloned()) {
                Some(Some(v)) => v,
                _ if r["optional"] == true => continue,
                Some(None) => return Err(format!("couldn't find key {key} in {what} {}/{obj}", ns(pod))),
                None => return Err(format!("{what} \"{obj}\" not found")),
            }
        } else {
            String::new()
        };
        set(&mut env, name, value);
    }
    Ok(env)
}

fn ns(pod: &Value) -> &str {
    pod["metadata"]["namespace"].as_str().unwrap_or("default")
}

/// The container's `command` and `args`, each with `$(VAR)` expanded; `None` where the
/// spec leaves one out (an image's own entrypoint or command then applies).
pub fn command_and_args(container: &Value, env: &[(String, String)]) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let expanded = |field: &str| -> Option<Vec<String>> {
        let list = container[field].as_array()?;
        Some(list.iter().filter_map(|s| s.as_str()).map(|s| expand(s, &vars)).collect())
    };
    (expanded("command"), expanded("args"))
}

/// The program and arguments: `command` then `args`.
pub fn argv(command: &Option<Vec<String>>, args: &Option<Vec<String>>) -> Vec<String> {
    command.iter().chain(args).flatten().cloned().collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: HashMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$$", &vars), "$");
        assert_eq!(expand("cost $5 $(A", &vars), "cost $5 $(A");
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(unbase64("TWFu").unwrap(), b"Man");
        assert_eq!(unbase64("TWE=").unwrap(), b"Ma");
        assert_eq!(unbase64("cw==").unwrap(), b"s");
        assert!(unbase64("!!!!").is_none());
    }

    #[test]
    fn environment_in_kubernetes_order() {
        let pod = json!({"metadata": {"name": "web-1", "namespace": "shop", "uid": "u", "labels": {"app": "web"}},
                         "spec": {"nodeName": "agent-1"}});
        let container = json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "GREETING", "value": "hi $(CFG_WHO) at $(MY_IP)"},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "LATER", "value": "$(MY_IP)"},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope", "optional": true}}},
            ],
            "command": ["echo"], "args": ["$(GREETING)", "$(NOPE)"],
        });
        let mut refs = Refs::default();
        refs.config_maps.insert("cfg".into(), Some(json!({"data": {"WHO": "you"}})));
        refs.secrets.insert("s".into(), Some(json!({"data": {"password": "czNjcmV0"}})));
        let facts = PodFacts { pod_ip: "10.244.1.5", host_ip: "10.244.1.1", node: "agent-1" };
        let svc = service_vars(&[json!({"metadata": {"name": "my-db"},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "pg", "port": 5432}]}})]);
        let env = resolve(&pod, &container, &refs, &facts, &svc).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GREETING"), Some("hi you at $(MY_IP)"), "only earlier variables expand");
        assert_eq!(get("LATER"), Some("10.244.1.5"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("PASS"), Some("s3cret"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("HOSTNAME"), Some("web-1"));
        assert_eq!(get("MY_DB_SERVICE_HOST"), Some("10.96.0.9"));
        assert_eq!(get("MY_DB_SERVICE_PORT_PG"), Some("5432"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_ADDR"), Some("10.96.0.9"));
        let (command, args) = command_and_args(&container, &env);
        assert_eq!(argv(&command, &args), vec!["echo", "hi you at $(MY_IP)", "$(NOPE)"]);

        refs.config_maps.insert("cfg".into(), None);
        assert_eq!(resolve(&pod, &container, &refs, &facts, &[]).unwrap_err(), "configmap \"cfg\" not found");
        refs.config_maps.insert("cfg".into(), Some(json!({"data": {}})));
        refs.secrets.insert("s".into(), Some(json!({"data": {}})));
        assert_eq!(
            resolve(&pod, &container, &refs, &facts, &[]).unwrap_err(),
            "couldn't find key password in secret shop/s"
        );
    }
}
