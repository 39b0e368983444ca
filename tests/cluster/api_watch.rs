//! A cluster-wide watch over HTTPS, with one and with four store shards: ten concurrent
//! writers make 1,000 changes to ConfigMaps in four namespaces; the watch sees each
//! change exactly once, in order per object, and a watch reopened from any delivered
//! resourceVersion gets exactly the changes after it; paged lists read one snapshot. (curl is the client: a plain
//! HTTPS client outside the project.) Also: status as a subresource, and binding.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

#[derive(Clone)]
pub(crate) struct Api {
    url: String,
    ca: String,
    token: String,
}

impl Api {
    pub(crate) fn of(data: &Path) -> Self {
        Self::on(data, "server-1")
    }

    /// The admin's HTTPS API on `member`.
    pub(crate) fn on(data: &Path, member: &str) -> Self {
        let addr = std::fs::read_to_string(data.join(member).join("api-addr")).unwrap();
        Self {
            url: format!("https://{}", addr.trim()),
            ca: data.join("ca.crt").display().to_string(),
            token: std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_string(),
        }
    }

    pub(crate) fn call(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let out = Command::new("curl")
            .args(["-sS", "--cacert", &self.ca, "-X", method, "-H"])
            .arg(format!("Authorization: Bearer {}", self.token))
            .args(["-H", &format!("Content-Type: {content_type}"), "-w", "\n%{http_code}", "--data-binary", body])
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), serde_json::from_str(json).unwrap_or(Value::Null))
    }

    /// Watch lines on a channel, from a curl that runs until killed.
    pub(crate) fn watch(&self, path: &str) -> (std::process::Child, mpsc::Receiver<Value>) {
        let mut child = Command::new("curl")
            .args(["-sSN", "--cacert", &self.ca, "-H"])
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg(format!("{}{path}", self.url))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        (child, rx)
    }
}

/// (namespace/name, the change number) of a watch event, for changes the writers made.
fn change(e: &Value) -> Option<(String, u64)> {
    let o = &e["object"];
    let n = o["data"]["n"].as_str()?.parse().ok()?;
    Some((format!("{}/{}", o["metadata"]["namespace"].as_str()?, o["metadata"]["name"].as_str()?), n))
}

fn collect(rx: &mpsc::Receiver<Value>, want: usize) -> Vec<Value> {
    let began = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && began.elapsed() < Duration::from_secs(90) {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
            if e["type"] == "ADDED" || e["type"] == "MODIFIED" {
                out.push(e);
            }
        }
    }
    // Anything more would be a duplicate.
    while let Ok(e) = rx.recv_timeout(Duration::from_millis(1_500)) {
        if e["type"] == "ADDED" || e["type"] == "MODIFIED" {
            out.push(e);
        }
    }
    out
}

fn run(shards: &str) {
    let scratch = Scratch::new(&format!("apiwatch-{shards}"));
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0", "--shards", shards], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let api = Api::of(&data);
    eventually("the API answers", Duration::from_secs(60), || {
        api.call("GET", "/api/v1/namespaces/default", "application/json", "").0 == 200
    });
    for i in 0..4 {
        let ns = format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"w{i}"}}}}"#);
        assert_eq!(api.call("POST", "/api/v1/namespaces", "application/json", &ns).0, 201);
    }
    let (_, list) = api.call("GET", "/api/v1/configmaps", "application/json", "");
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let (mut watcher, events) = api.watch(&format!("/api/v1/configmaps?watch=true&resourceVersion={rv}"));
    std::thread::sleep(Duration::from_millis(300));

    // Ten writers, 100 changes each, to ten objects each, in four namespaces.
    let writers: Vec<_> = (0..10)
        .map(|w| {
            let api = Api::of(&data);
            std::thread::spawn(move || {
                for j in 0..100u64 {
                    let (ns, name) = (format!("w{}", w % 4), format!("c{w}-{}", j % 10));
                    let (code, _) = if j < 10 {
                        let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"n":"{j}"}}}}"#);
                        api.call("POST", &format!("/api/v1/namespaces/{ns}/configmaps"), "application/json", &body)
                    } else {
                        let body = format!(r#"{{"data":{{"n":"{j}"}}}}"#);
                        api.call("PATCH", &format!("/api/v1/namespaces/{ns}/configmaps/{name}"), "application/merge-patch+json", &body)
                    };
                    assert!(code == 200 || code == 201, "writer {w} change {j}: {code}");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let seen = collect(&events, 1_000);
    let _ = watcher.kill();
    let changes: Vec<(String, u64)> = seen.iter().filter_map(change).collect();
    assert_eq!(changes.len(), 1_000, "every change exactly once (shards {shards})");
    let mut per_object: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (o, n) in &changes {
        per_object.entry(o.as_str()).or_default().push(*n);
    }
    assert_eq!(per_object.len(), 100);
    for (o, ns) in &per_object {
        assert!(ns.windows(2).all(|w| w[0] < w[1]) && ns.len() == 10, "{o}: {ns:?}");
    }

    // Reopened from a delivered resourceVersion: exactly the later changes.
    for at in [0usize, 499, 998] {
        let rv = seen[at]["object"]["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        let (mut again, rx) = api.watch(&format!("/api/v1/configmaps?watch=true&resourceVersion={rv}"));
        let later = collect(&rx, 999 - at);
        let _ = again.kill();
        let mut got: Vec<(String, u64)> = later.iter().filter_map(change).collect();
        let mut want: Vec<(String, u64)> = changes[at + 1..].to_vec();
        got.sort();
        want.sort();
        assert_eq!(got, want, "reopened after event {at} (shards {shards})");
    }
    // A list in pages of 7 reads one snapshot, whatever changes between the pages.
    let (mut seen_names, mut token) = (Vec::new(), None::<String>);
    loop {
        let more = token.as_deref().map(|t| format!("&continue={t}")).unwrap_or_default();
        let (code, page) = api.call("GET", &format!("/api/v1/configmaps?limit=7{more}"), "application/json", "");
        assert_eq!(code, 200, "{page}");
        for i in page["items"].as_array().unwrap() {
            assert_ne!(i["data"]["n"], "late", "a later page saw a change made after the first");
            seen_names.push(format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap()
            ));
        }
        let late = api.call(
            "PATCH",
            "/api/v1/namespaces/w0/configmaps/c0-0",
            "application/merge-patch+json",
            r#"{"data":{"n":"late"}}"#,
        );
        assert_eq!(late.0, 200);
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    let unique: std::collections::BTreeSet<&String> = seen_names.iter().collect();
    assert_eq!((seen_names.len(), unique.len()), (100, 100), "every object once across the pages (shards {shards})");
    up.stop(Duration::from_secs(60));
}

#[test]
fn a_cluster_wide_watch_sees_every_change_once_and_resumes_from_any_version() {
    let _one = serial();
    run("1");
    run("4");
}

/// Status is a subresource (writes to the object keep it, writes to `/status` change
/// only it), a new pod starts Pending, a pod is bound to a node once, and an eviction
/// deletes it.
#[test]
fn pod_status_is_a_subresource_a_pod_binds_once_and_eviction_deletes() {
    let _one = serial();
    let scratch = Scratch::new("apistatus");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let api = Api::of(&data);
    eventually("the API answers", Duration::from_secs(60), || {
        api.call("GET", "/api/v1/namespaces/default", "application/json", "").0 == 200
    });
    let pods = "/api/v1/namespaces/default/pods";
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"i:1"}]},"status":{"phase":"Running"}}"#;
    let (code, made) = api.call("POST", pods, "application/json", pod);
    assert_eq!((code, made["status"]["phase"].as_str()), (201, Some("Pending")), "{made}");

    // The object's PATCH cannot change status; /status's cannot change the spec.
    let (code, v) = api.call(
        "PATCH",
        &format!("{pods}/p"),
        "application/merge-patch+json",
        r#"{"status":{"phase":"Failed"},"metadata":{"labels":{"a":"b"}}}"#,
    );
    assert_eq!(
        (code, v["status"]["phase"].as_str(), v["metadata"]["labels"]["a"].as_str()),
        (200, Some("Pending"), Some("b")),
        "{v}"
    );
    let (code, v) = api.call(
        "PATCH",
        &format!("{pods}/p/status"),
        "application/merge-patch+json",
        r#"{"status":{"phase":"Running"},"spec":{"nodeName":"sneaky"}}"#,
    );
    assert_eq!((code, v["status"]["phase"].as_str()), (200, Some("Running")), "{v}");
    assert!(v["spec"]["nodeName"].is_null(), "{v}");

    // Binding: once.
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"apiVersion":"v1","kind":"Node","name":"n1"}}"#;
    assert_eq!(api.call("POST", &format!("{pods}/p/binding"), "application/json", binding).0, 201);
    let (_, v) = api.call("GET", &format!("{pods}/p"), "application/json", "");
    assert_eq!(v["spec"]["nodeName"], "n1");
    assert!(
        v["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "PodScheduled" && c["status"] == "True"),
        "{v}"
    );
    let (code, v) = api.call("POST", &format!("{pods}/p/binding"), "application/json", &binding.replace("n1", "n2"));
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["message"], "pod p is already assigned to node \"n1\"");
    // Eviction deletes it.
    let eviction = r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p","namespace":"default"}}"#;
    assert_eq!(api.call("POST", &format!("{pods}/p/eviction"), "application/json", eviction).0, 201);
    assert_eq!(api.call("GET", &format!("{pods}/p"), "application/json", "").0, 404);
    up.stop(Duration::from_secs(60));
}
