//! A pod's volumes on its node: `emptyDir` (a folder of the pod's), `configMap` and
//! `secret` (their entries written as files, `items` and modes as Kubernetes reads
//! them), `hostPath` (the node's own path, made if its type says so); and each
//! container's mounts of them (`mountPath`, `subPath`, `readOnly`). Written once when the
//! pod's first container starts; later ConfigMap changes do not reach them yet.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::env::unbase64;
use crate::api::ApiClient;
use crate::cri::Mount;

/// The volumes' folders (or files), by volume name; `Err` names a volume the process
/// runtime cannot provide, kept to fail only the containers that mount it.
pub type Prepared = HashMap<String, Result<PathBuf, String>>;

/// Writes `entries` into `dir` as files: all of them, or only `items` (key → path,
/// with their own modes); files get `default_mode` otherwise.
pub fn write_entries(
    dir: &Path,
    entries: &BTreeMap<String, Vec<u8>>,
    items: &Value,
    default_mode: u32,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let chosen: Vec<(String, String, u32)> = match items.as_array() {
        Some(items) => items
            .iter()
            .filter_map(|i| {
                let key = i["key"].as_str()?.to_string();
                let path = i["path"].as_str().unwrap_or(&key).to_string();
                Some((key, path, i["mode"].as_u64().map_or(default_mode, |m| m as u32)))
            })
            .collect(),
        None => entries.keys().map(|k| (k.clone(), k.clone(), default_mode)).collect(),
    };
    for (key, path, mode) in chosen {
        let Some(data) = entries.get(&key) else { continue };
        if path.split('/').any(|part| part == ".." || part.is_empty()) {
            continue;
        }
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, data)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o777))?;
    }
    Ok(())
}

/// The entries of a ConfigMap (`data`, `binaryData`) or a Secret (`data`, decoded).
fn entries(obj: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (field, encoded) in [("data", secret), ("binaryData", true)] {
        for (k, v) in obj[field].as_object().into_iter().flatten() {
            let Some(s) = v.as_str() else { continue };
            let bytes = if encoded { unbase64(s) } else { Some(s.as_bytes().to_vec()) };
            if let Some(b) = bytes {
                out.insert(k.clone(), b);
            }
        }
    }
    out
}

fn host_path(v: &Value) -> Result<PathBuf, String> {
    let path = PathBuf::from(v["path"].as_str().unwrap_or_default());
    if !path.is_absolute() {
        return Err(format!("hostPath {:?} is not an absolute path", path.display()));
    }
    let io = |e: std::io::Error| format!("hostPath {}: {e}", path.display());
    match v["type"].as_str().unwrap_or_default() {
        "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io)?,
        "FileOrCreate" if !path.exists() => {
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        }
        "Directory" if !path.is_dir() => {
            return Err(format!("hostPath type check failed: {} is not a directory", path.display()))
        }
        "File" if !path.is_file() => {
            return Err(format!("hostPath type check failed: {} is not a file", path.display()))
        }
        _ => {}
    }
    Ok(path)
}

/// Makes the pod's volumes under `base` (`<kubelet>/pods/<uid>/volumes`). `Err`: a
/// ConfigMap or Secret is missing (the containers wait, CreateContainerConfigError).
pub async fn prepare(client: &ApiClient, pod: &Value, base: &Path) -> Result<Prepared, String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut out = Prepared::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let dir = base.join(&name);
        let made = if v["emptyDir"].is_object() {
            std::fs::create_dir_all(&dir).map(|()| dir).map_err(|e| e.to_string())
        } else if v["hostPath"].is_object() {
            host_path(&v["hostPath"])
        } else if v["configMap"].is_object() || v["secret"].is_object() {
            let secret = v["secret"].is_object();
            let src = if secret { &v["secret"] } else { &v["configMap"] };
            let obj_name = src[if secret { "secretName" } else { "name" }].as_str().unwrap_or_default();
            let kind = if secret { "secrets" } else { "configmaps" };
            let mode = src["defaultMode"].as_u64().map_or(0o644, |m| m as u32);
            let found = match client.get(&format!("/api/v1/namespaces/{ns}/{kind}/{obj_name}")).await {
                Ok(o) => Some(o),
                Err(e) if e.code() == Some(404) => None,
                Err(e) => return Err(format!("cannot read {kind}/{obj_name}: {e}")),
            };
            match found {
                Some(o) => write_entries(&dir, &entries(&o, secret), &src["items"], mode)
                    .map(|()| dir)
                    .map_err(|e| e.to_string()),
                None if src["optional"] == true => {
                    std::fs::create_dir_all(&dir).map(|()| dir).map_err(|e| e.to_string())
                }
                None => {
                    let what = if secret { "secret" } else { "configmap" };
                    return Err(format!("{what} \"{obj_name}\" not found"));
                }
            }
        } else {
            Err(format!(
                "volume {name:?}: the process runtime provides emptyDir, configMap, secret and hostPath volumes"
            ))
        };
        out.insert(name, made);
    }
    Ok(out)
}

/// The mounts of `container` over the prepared volumes.
pub fn mounts(container: &Value, prepared: &Prepared) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().unwrap_or_default();
        let source = match prepared.get(name) {
            Some(Ok(p)) => p.clone(),
            Some(Err(e)) => return Err(e.clone()),
            None => return Err(format!("volume {name:?} is not one of the pod's volumes")),
        };
        let source = match m["subPath"].as_str().filter(|s| !s.is_empty()) {
            Some(sub) if sub.starts_with('/') || sub.split('/').any(|p| p == "..") => {
                return Err(format!("subPath {sub:?} must be a relative path within its volume"))
            }
            Some(sub) => {
                // A subPath the volume lacks is made as a folder, as Kubernetes does.
                let path = source.join(sub);
                if source.is_dir() && !path.exists() {
                    std::fs::create_dir_all(&path).map_err(|e| format!("subPath {sub:?}: {e}"))?;
                }
                path
            }
            None => source,
        };
        let target = m["mountPath"].as_str().unwrap_or_default().to_string();
        if !target.starts_with('/') {
            return Err(format!("mountPath {target:?} is not an absolute path"));
        }
        out.push(Mount { source, target, read_only: m["readOnly"] == true });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn entries_become_files_with_their_modes() {
        let dir = std::env::temp_dir().join(format!("keelson-volumes-{}", std::process::id()));
        let cm = json!({"data": {"app.conf": "port=80\n", "other": "x"}, "binaryData": {"blob": "AAEC"}});
        write_entries(&dir.join("all"), &entries(&cm, false), &Value::Null, 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("all/app.conf")).unwrap(), "port=80\n");
        assert_eq!(std::fs::read(dir.join("all/blob")).unwrap(), vec![0, 1, 2]);
        let items = json!([{"key": "app.conf", "path": "conf/app.conf", "mode": 0o600}, {"key": "nope"}]);
        write_entries(&dir.join("some"), &entries(&cm, false), &items, 0o644).unwrap();
        let f = dir.join("some/conf/app.conf");
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.join("some/other").exists(), "only the items asked for");
        let secret = json!({"data": {"password": "czNjcmV0"}});
        write_entries(&dir.join("s"), &entries(&secret, true), &Value::Null, 0o400).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("s/password")).unwrap(), "s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mounts_resolve_volumes_and_sub_paths() {
        let prepared: Prepared = [
            ("cfg".to_string(), Ok(PathBuf::from("/k/cfg"))),
            ("bad".to_string(), Err("volume \"bad\": unsupported".to_string())),
        ]
        .into();
        let c = json!({"volumeMounts": [{"name": "cfg", "mountPath": "/etc/app", "readOnly": true},
                                        {"name": "cfg", "mountPath": "/etc/one.conf", "subPath": "one.conf"}]});
        let m = mounts(&c, &prepared).unwrap();
        assert_eq!(m[0], Mount { source: "/k/cfg".into(), target: "/etc/app".into(), read_only: true });
        assert_eq!(m[1].source, PathBuf::from("/k/cfg/one.conf"));
        assert!(mounts(&json!({"volumeMounts": [{"name": "bad", "mountPath": "/x"}]}), &prepared).is_err());
        assert!(mounts(&json!({"volumeMounts": [{"name": "zzz", "mountPath": "/x"}]}), &prepared).is_err());
        let escape = json!({"volumeMounts": [{"name": "cfg", "mountPath": "/x", "subPath": "../../etc"}]});
        assert!(mounts(&escape, &prepared).is_err());
        let absolute = json!({"volumeMounts": [{"name": "cfg", "mountPath": "/x", "subPath": "/etc"}]});
        assert!(mounts(&absolute, &prepared).is_err());
    }
}
