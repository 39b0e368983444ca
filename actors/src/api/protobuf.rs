//! Kubernetes protobuf request bodies, read into JSON objects.
//!
//! kubectl 1.32 and later send the objects its generators make (`kubectl create
//! namespace|configmap|secret|deployment|service|job|serviceaccount`, `kubectl run`) as
//! `application/vnd.kubernetes.protobuf`: the bytes `k8s\0`, then a `runtime.Unknown`
//! holding the kind and the object's own message. This module knows the messages those
//! generators fill, by field number (from the Kubernetes API's proto definitions), and
//! turns them into the JSON the rest of the API takes. A nested message it does not
//! know is accepted only when empty, and so is a field it does not know (Go writes every
//! plain field, set or not); either one carrying data is refused, so nothing a client
//! sent is silently dropped. Responses stay JSON (clients
//! accept it). Status is the server's: an object's `status` is skipped.

use serde_json::{Map, Value};

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bytes,
    /// A number or bool the Go types keep as a plain value: zero means unset.
    I32,
    I64,
    Bool,
    /// A number or bool behind a pointer: present means set, even when zero.
    I32Set,
    I64Set,
    BoolSet,
    Msg(&'static str),
    RepStr,
    RepMsg(&'static str),
    MapStr,
    MapBytes,
    MapQty,
    Time,
    IntOrStr,
    /// Owned by the server (status): skipped.
    Skip,
}

use Ty::*;

type Fields = &'static [(u64, &'static str, Ty)];

fn schema(message: &str) -> Option<Fields> {
    Some(match message {
        "Unknown" => {
            &[(1, "typeMeta", Msg("TypeMeta")), (2, "raw", Bytes), (3, "contentEncoding", Str), (4, "contentType", Str)]
        }
        "TypeMeta" => &[(1, "apiVersion", Str), (2, "kind", Str)],
        "ObjectMeta" => &[
            (1, "name", Str),
            (2, "generateName", Str),
            (3, "namespace", Str),
            (4, "selfLink", Str),
            (5, "uid", Str),
            (6, "resourceVersion", Str),
            (7, "generation", I64),
            (8, "creationTimestamp", Time),
            (9, "deletionTimestamp", Time),
            (10, "deletionGracePeriodSeconds", I64Set),
            (11, "labels", MapStr),
            (12, "annotations", MapStr),
            (13, "ownerReferences", RepMsg("OwnerReference")),
            (14, "finalizers", RepStr),
            (17, "managedFields", Skip),
        ],
        "OwnerReference" => &[
            (1, "kind", Str),
            (3, "name", Str),
            (4, "uid", Str),
            (5, "apiVersion", Str),
            (6, "controller", BoolSet),
            (7, "blockOwnerDeletion", BoolSet),
        ],
        "LabelSelector" => &[(1, "matchLabels", MapStr), (2, "matchExpressions", RepMsg("LabelSelectorRequirement"))],
        "LabelSelectorRequirement" => &[(1, "key", Str), (2, "operator", Str), (3, "values", RepStr)],
        "LocalObjectReference" => &[(1, "name", Str)],
        "Namespace" => &[(1, "metadata", Msg("ObjectMeta")), (2, "spec", Msg("NamespaceSpec")), (3, "status", Skip)],
        "NamespaceSpec" => &[(1, "finalizers", RepStr)],
        "ConfigMap" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "data", MapStr),
            (3, "binaryData", MapBytes),
            (4, "immutable", BoolSet),
        ],
        "Secret" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "data", MapBytes),
            (3, "type", Str),
            (4, "stringData", MapStr),
            (5, "immutable", BoolSet),
        ],
        "ServiceAccount" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (3, "imagePullSecrets", RepMsg("LocalObjectReference")),
            (4, "automountServiceAccountToken", BoolSet),
        ],
        "Pod" => &[(1, "metadata", Msg("ObjectMeta")), (2, "spec", Msg("PodSpec")), (3, "status", Skip)],
        "PodTemplateSpec" => &[(1, "metadata", Msg("ObjectMeta")), (2, "spec", Msg("PodSpec"))],
        "PodSpec" => &[
            (2, "containers", RepMsg("Container")),
            (3, "restartPolicy", Str),
            (4, "terminationGracePeriodSeconds", I64Set),
            (5, "activeDeadlineSeconds", I64Set),
            (6, "dnsPolicy", Str),
            (7, "nodeSelector", MapStr),
            (8, "serviceAccountName", Str),
            (9, "serviceAccount", Str),
            (10, "nodeName", Str),
            (11, "hostNetwork", Bool),
            (15, "imagePullSecrets", RepMsg("LocalObjectReference")),
            (16, "hostname", Str),
            (17, "subdomain", Str),
            (19, "schedulerName", Str),
            (20, "initContainers", RepMsg("Container")),
            (21, "automountServiceAccountToken", BoolSet),
            (22, "tolerations", RepMsg("Toleration")),
            (24, "priorityClassName", Str),
            (25, "priority", I32Set),
            (30, "enableServiceLinks", BoolSet),
        ],
        "Container" => &[
            (1, "name", Str),
            (2, "image", Str),
            (3, "command", RepStr),
            (4, "args", RepStr),
            (5, "workingDir", Str),
            (6, "ports", RepMsg("ContainerPort")),
            (7, "env", RepMsg("EnvVar")),
            (8, "resources", Msg("ResourceRequirements")),
            (9, "volumeMounts", RepMsg("VolumeMount")),
            (13, "terminationMessagePath", Str),
            (14, "imagePullPolicy", Str),
            (16, "stdin", Bool),
            (17, "stdinOnce", Bool),
            (18, "tty", Bool),
            (20, "terminationMessagePolicy", Str),
        ],
        "ContainerPort" => &[
            (1, "name", Str),
            (2, "hostPort", I32),
            (3, "containerPort", I32),
            (4, "protocol", Str),
            (5, "hostIP", Str),
        ],
        "EnvVar" => &[(1, "name", Str), (2, "value", Str)],
        "ResourceRequirements" => &[(1, "limits", MapQty), (2, "requests", MapQty)],
        "VolumeMount" => &[(1, "name", Str), (2, "readOnly", Bool), (3, "mountPath", Str), (4, "subPath", Str)],
        "Toleration" => &[
            (1, "key", Str),
            (2, "operator", Str),
            (3, "value", Str),
            (4, "effect", Str),
            (5, "tolerationSeconds", I64Set),
        ],
        "Deployment" => &[(1, "metadata", Msg("ObjectMeta")), (2, "spec", Msg("DeploymentSpec")), (3, "status", Skip)],
        "DeploymentSpec" => &[
            (1, "replicas", I32Set),
            (2, "selector", Msg("LabelSelector")),
            (3, "template", Msg("PodTemplateSpec")),
            (4, "strategy", Msg("DeploymentStrategy")),
            (5, "minReadySeconds", I32),
            (6, "revisionHistoryLimit", I32Set),
            (7, "paused", Bool),
            (9, "progressDeadlineSeconds", I32Set),
        ],
        "DeploymentStrategy" => &[(1, "type", Str), (2, "rollingUpdate", Msg("RollingUpdateDeployment"))],
        "RollingUpdateDeployment" => &[(1, "maxUnavailable", IntOrStr), (2, "maxSurge", IntOrStr)],
        "Service" => &[(1, "metadata", Msg("ObjectMeta")), (2, "spec", Msg("ServiceSpec")), (3, "status", Skip)],
        "ServiceSpec" => &[
            (1, "ports", RepMsg("ServicePort")),
            (2, "selector", MapStr),
            (3, "clusterIP", Str),
            (4, "type", Str),
            (5, "externalIPs", RepStr),
            (7, "sessionAffinity", Str),
            (10, "externalName", Str),
            (18, "clusterIPs", RepStr),
        ],
        "ServicePort" => &[
            (1, "name", Str),
            (2, "protocol", Str),
            (3, "port", I32),
            (4, "targetPort", IntOrStr),
            (5, "nodePort", I32),
        ],
        "Job" => &[(1, "metadata", Msg("ObjectMeta")), (2, "spec", Msg("JobSpec")), (3, "status", Skip)],
        "JobSpec" => &[
            (1, "parallelism", I32Set),
            (2, "completions", I32Set),
            (3, "activeDeadlineSeconds", I64Set),
            (4, "selector", Msg("LabelSelector")),
            (5, "manualSelector", BoolSet),
            (6, "template", Msg("PodTemplateSpec")),
            (7, "backoffLimit", I32Set),
            (8, "ttlSecondsAfterFinished", I32Set),
            (9, "completionMode", Str),
            (10, "suspend", BoolSet),
        ],
        _ => return None,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()? as usize;
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or("truncated field")?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            w => Err(format!("wire type {w} is not supported")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), String> {
        self.at = self.at.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or("truncated field")?;
        Ok(())
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (how Kubernetes JSON carries bytes).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// A map entry's key and value bytes.
fn entry(b: &[u8]) -> Result<(String, &[u8]), String> {
    let mut r = Reader { buf: b, at: 0 };
    let (mut key, mut value) = (String::new(), &b[0..0]);
    while r.at < b.len() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => key = text(r.bytes()?)?,
            (2, 2) => value = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    Ok((key, value))
}

fn message(name: &str, b: &[u8]) -> Result<Value, String> {
    let Some(fields) = schema(name) else {
        return if b.is_empty() {
            Ok(Value::Object(Map::new()))
        } else {
            Err(format!("{name} is not readable from protobuf here"))
        };
    };
    let mut out = Map::new();
    let mut r = Reader { buf: b, at: 0 };
    while r.at < b.len() {
        let tag = r.varint()?;
        let (num, wire) = (tag >> 3, tag & 7);
        let Some((_, field, ty)) = fields.iter().find(|(n, _, _)| *n == num) else {
            // Go's encoder writes every plain field, set or not: an unknown one is
            // fine while it holds its zero value, refused once it carries anything.
            let empty = match wire {
                0 => r.varint()? == 0,
                2 => r.bytes()?.is_empty(),
                _ => false,
            };
            if empty {
                continue;
            }
            return Err(format!("field {num} of {name} is not known to this server"));
        };
        let field = *field;
        let scalar = |r: &mut Reader| -> Result<u64, String> {
            if wire != 0 {
                return Err(format!("{name}.{field}: expected a number"));
            }
            r.varint()
        };
        match *ty {
            Skip => r.skip(wire)?,
            Str => {
                let s = text(r.bytes()?)?;
                if !s.is_empty() {
                    out.insert(field.into(), s.into());
                }
            }
            Bytes => {
                out.insert(field.into(), base64(r.bytes()?).into());
            }
            I32 | I64 => {
                let v = scalar(&mut r)?;
                let v = if matches!(ty, I32) { i64::from(v as i32) } else { v as i64 };
                if v != 0 {
                    out.insert(field.into(), v.into());
                }
            }
            I32Set => {
                out.insert(field.into(), i64::from(scalar(&mut r)? as i32).into());
            }
            I64Set => {
                out.insert(field.into(), (scalar(&mut r)? as i64).into());
            }
            Bool => {
                if scalar(&mut r)? != 0 {
                    out.insert(field.into(), true.into());
                }
            }
            BoolSet => {
                out.insert(field.into(), (scalar(&mut r)? != 0).into());
            }
            Msg(m) => {
                let v = message(m, r.bytes()?)?;
                if v.as_object().is_none_or(|o| !o.is_empty()) {
                    out.insert(field.into(), v);
                }
            }
            RepStr => {
                let s = text(r.bytes()?)?;
                push(&mut out, field, s.into());
            }
            RepMsg(m) => {
                let v = message(m, r.bytes()?)?;
                push(&mut out, field, v);
            }
            MapStr | MapBytes | MapQty => {
                let (k, v) = entry(r.bytes()?)?;
                let v: Value = match *ty {
                    MapStr => text(v)?.into(),
                    MapBytes => base64(v).into(),
                    _ => message_quantity(v)?.into(),
                };
                if let Some(o) = out.entry(field).or_insert_with(|| Value::Object(Map::new())).as_object_mut() {
                    o.insert(k, v);
                }
            }
            Time => {
                let mut t = Reader { buf: r.bytes()?, at: 0 };
                let mut secs = 0i64;
                while t.at < t.buf.len() {
                    let tag = t.varint()?;
                    match (tag >> 3, tag & 7) {
                        (1, 0) => secs = t.varint()? as i64,
                        (_, w) => t.skip(w)?,
                    }
                }
                if secs != 0 {
                    out.insert(field.into(), super::objects::rfc3339(secs.max(0) as u64).into());
                }
            }
            IntOrStr => {
                let mut t = Reader { buf: r.bytes()?, at: 0 };
                let (mut kind, mut int, mut string) = (0, 0i64, String::new());
                while t.at < t.buf.len() {
                    let tag = t.varint()?;
                    match (tag >> 3, tag & 7) {
                        (1, 0) => kind = t.varint()?,
                        (2, 0) => int = i64::from(t.varint()? as i32),
                        (3, 2) => string = text(t.bytes()?)?,
                        (_, w) => t.skip(w)?,
                    }
                }
                out.insert(field.into(), if kind == 1 { string.into() } else { int.into() });
            }
        }
    }
    Ok(Value::Object(out))
}

/// Appends to the list `field` of `out`.
fn push(out: &mut Map<String, Value>, field: &str, v: Value) {
    if let Some(a) = out.entry(field).or_insert_with(|| Value::Array(Vec::new())).as_array_mut() {
        a.push(v);
    }
}

fn message_quantity(b: &[u8]) -> Result<String, String> {
    let mut r = Reader { buf: b, at: 0 };
    let mut s = String::new();
    while r.at < b.len() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => s = text(r.bytes()?)?,
            (_, w) => r.skip(w)?,
        }
    }
    Ok(s)
}

/// The JSON object in a protobuf request body (`k8s\0` + `runtime.Unknown`).
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body.strip_prefix(b"k8s\0").ok_or("not a Kubernetes protobuf body (no k8s\\0 prefix)")?;
    let mut r = Reader { buf: rest, at: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &rest[0..0]);
    while r.at < rest.len() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let meta = message("TypeMeta", r.bytes()?)?;
                api_version = meta["apiVersion"].as_str().unwrap_or_default().to_string();
                kind = meta["kind"].as_str().unwrap_or_default().to_string();
            }
            (2, 2) => raw = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    let mut obj = message(&kind, raw).map_err(|e| format!("reading a {kind} from protobuf: {e}"))?;
    obj["apiVersion"] = api_version.into();
    obj["kind"] = kind.into();
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn field(num: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(num << 3 | 2, &mut out);
        varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }
    fn num(num: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(num << 3, &mut out);
        varint(v, &mut out);
        out
    }
    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        [field(1, k.as_bytes()), field(2, v)].concat()
    }
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let tm = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
        [b"k8s\0".to_vec(), field(1, &tm), field(2, raw), field(3, b""), field(4, b"")].concat()
    }

    #[test]
    fn reads_a_configmap_and_a_deployment_as_kubectl_sends_them() {
        let meta = [field(1, b"cfg"), field(3, b"web"), field(8, b""), field(11, &entry("app", b"web"))].concat();
        let raw = [field(1, &meta), field(2, &entry("a", b"b")), field(3, &entry("bin", b"\x00\x01"))].concat();
        let v = decode(&envelope("v1", "ConfigMap", &raw)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cfg", "namespace": "web", "labels": {"app": "web"}},
                   "data": {"a": "b"}, "binaryData": {"bin": "AAE="}})
        );
        let container = [field(1, b"main"), field(2, b"nginx:1.25"), field(8, b""), field(6, &num(3, 80))].concat();
        let spec = [
            num(1, 0),
            field(2, &field(1, &entry("app", b"web"))),
            field(3, &[field(1, &field(11, &entry("app", b"web"))), field(2, &field(2, &container))].concat()),
            field(4, b""),
        ]
        .concat();
        let status = [num(2, 0), num(3, 0)].concat();
        let raw = [field(1, &field(1, b"web")), field(2, &spec), field(3, &status)].concat();
        let v = decode(&envelope("apps/v1", "Deployment", &raw)).unwrap();
        assert_eq!(v["spec"]["replicas"], 0, "a pointer field set to zero stays");
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0],
            json!({"name": "main", "image": "nginx:1.25", "ports": [{"containerPort": 80}]})
        );
        assert!(v.get("status").is_none(), "status is the server's");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(decode(b"{}").is_err());
        let zero = [field(1, &field(1, b"x")), field(9, b""), num(10, 0)].concat();
        assert!(decode(&envelope("v1", "ConfigMap", &zero)).is_ok(), "unknown fields at their zero value");
        let unknown_field = [field(1, &field(1, b"x")), field(9, b"zz")].concat();
        assert!(decode(&envelope("v1", "ConfigMap", &unknown_field)).unwrap_err().contains("field 9 of ConfigMap"));
        assert!(decode(&envelope("v1", "Node", &field(1, b"x"))).is_err());
        let truncated = envelope("v1", "ConfigMap", &[0x0a, 0x10, 0x01]);
        assert!(decode(&truncated).is_err());
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
    }
}
