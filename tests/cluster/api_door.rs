//! The actor door: an in-cluster component (here the test, holding a node identity
//! "node-a" issued by the cluster CA, as a kubelet will) reads, writes and watches
//! objects through actor messages over QUIC, and meets the same pipeline kubectl does:
//! the node may register its own Node and Lease but no other node's; may change pods
//! bound to it but not others'; gets the same 422 and 409 answers; its watch with a
//! field selector sees only its pods; its writes are what the HTTPS API serves; the
//! events it records (a repeat counted) are what `kubectl describe` shows; a bound pod's
//! deletion waits for its node (graceful deletion). When
//! the server it talks to is cut off, the client moves on to another server.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use keelson_actors::api::informer::{key_of, Informer};
use keelson_actors::api::{ApiClient, ApiRequest, EventRecorder, EventType, Method};
use keelson_actors::runtime::ActorPath;
use keelson_transport::faults::{Direction, LinkFaults};
use keelson_transport::tls::{ClusterCa, Identity, Role};
use keelson_transport::{Transport, TransportConfig};
use serde_json::{json, Value};

use crate::api_watch::Api;
use crate::support::*;

/// Waits until the door serves the default namespaces (kube-node-lease is made last):
/// the store may still be electing, and the door answers 503 until it can serve.
pub(crate) async fn door_ready(client: &ApiClient) {
    for _ in 0..100 {
        if client.get("/api/v1/namespaces/kube-node-lease").await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the door never served the default namespaces");
}

/// A QUIC endpoint holding node `name`'s identity, knowing every server member.
fn node_transport(data: &Path, name: &str) -> (Transport, keelson_transport::TransportRuntime, Vec<String>) {
    member_transport(data, name, Role::Agent)
}

/// A QUIC endpoint holding `name`'s identity (as `role`) from the cluster CA, knowing
/// every server member.
pub(crate) fn member_transport(
    data: &Path,
    name: &str,
    role: Role,
) -> (Transport, keelson_transport::TransportRuntime, Vec<String>) {
    let read = |f: &str| std::fs::read_to_string(data.join(f)).unwrap();
    let ca = ClusterCa::from_pem(read("cluster-id").trim(), &read("ca.crt"), &read("ca.key")).unwrap();
    let creds = ca.issue(&Identity::new(name, role).unwrap()).unwrap();
    let cfg = TransportConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    let (transport, _inbox, runtime) = Transport::start(&creds, cfg).unwrap();
    let mut servers = Vec::new();
    for s in ["server-1", "server-2", "server-3"] {
        let addr = read(&format!("{s}/quic-addr")).trim().parse().unwrap();
        transport.add_peer(Identity::new(s, Role::Server).unwrap(), addr);
        servers.push(s.to_string());
    }
    (transport, runtime, servers)
}

fn pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
}

fn status_code<T>(r: Result<T, keelson_actors::api::ApiError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(e) => e.code().unwrap_or(0),
    }
}

#[test]
fn components_reach_the_same_pipeline_through_the_actor_door() {
    let _serial = serial();
    let scratch = Scratch::new("api-door");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let (transport, _quic, servers) = node_transport(&data, "node-a");
    let api = Api::of(&data);
    let curl = |method: &str, path: &str, body: &str| api.call(method, path, "application/json", body);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = ApiClient::remote(transport.clone(), &servers, ActorPath::root("node-a").child("kubelet"));
        door_ready(&client).await;

        // Its own Node and Lease: yes. Another node's: 403, and nothing is written.
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}});
        let made = client.create("/api/v1/nodes", &node).await.expect("a node registers itself");
        assert!(made["metadata"]["uid"].is_string(), "the server sets the uid: {made}");
        // The node-ipam controller gives it a pod CIDR (a write of its own): wait for that.
        let mut made = made;
        for _ in 0..100 {
            if made["spec"]["podCIDR"].is_string() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            made = client.get("/api/v1/nodes/node-a").await.unwrap();
        }
        assert!(made["spec"]["podCIDR"].is_string(), "node-ipam gave the node a pod CIDR: {made}");
        let other = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"}});
        let refused = client.create("/api/v1/nodes", &other).await.unwrap_err();
        assert_eq!(refused.code(), Some(403), "{refused}");
        assert!(refused.to_string().contains("User \"system:node:node-a\" cannot create"), "{refused}");
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": "node-a", "namespace": "kube-node-lease"},
                           "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 40}});
        client.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", &lease).await.unwrap();

        // Validation is the pipeline's: the same 422 naming the field; 409 on a stale write.
        let mut bad = made.clone();
        bad["metadata"]["labels"] = json!({"zone": "not a label value!"});
        let invalid = client.update("/api/v1/nodes/node-a", &bad).await.unwrap_err();
        assert_eq!(invalid.code(), Some(422), "{invalid}");
        assert!(invalid.to_string().contains("metadata.labels"), "{invalid}");
        let mut stale = made.clone();
        stale["metadata"]["labels"] = json!({"zone": "a"});
        client.update("/api/v1/nodes/node-a", &stale).await.unwrap();
        stale["metadata"]["labels"] = json!({"zone": "b"});
        assert_eq!(status_code(client.update("/api/v1/nodes/node-a", &stale).await), 409);

        // Pods: made by the admin over HTTPS, one on each node.
        assert_eq!(curl("POST", "/api/v1/namespaces/default/pods", &pod("pa", "node-a").to_string()).0, 201);
        assert_eq!(curl("POST", "/api/v1/namespaces/default/pods", &pod("pb", "node-b").to_string()).0, 201);

        // The node's watch of its own pods: the current one first, then its change.
        let mut events = client
            .watch::<serde_json::Value>("/api/v1/pods", None, &[("fieldSelector", "spec.nodeName=node-a")])
            .await
            .expect("the watch opens");
        let first = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
        assert_eq!((first.kind.as_str(), first.object["metadata"]["name"].as_str()), ("ADDED", Some("pa")));
        let status = json!({"status": {"phase": "Running", "podIP": "10.1.0.7"}});
        client.merge_patch("/api/v1/namespaces/default/pods/pa/status", &status).await.expect("its own pod");
        let next = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(next.kind, "MODIFIED");
        assert_eq!(next.object["status"]["phase"], "Running");
        let theirs = client.merge_patch("/api/v1/namespaces/default/pods/pb/status", &status).await.unwrap_err();
        assert_eq!(theirs.code(), Some(403), "{theirs}");
        // The other node's pod never showed up in this watch, and its change never happened.
        assert!(tokio::time::timeout(Duration::from_millis(500), events.next()).await.is_err());
        let (code, pb) = curl("GET", "/api/v1/namespaces/default/pods/pb", "");
        assert_eq!((code, pb["status"]["phase"].as_str()), (200, Some("Pending")), "{pb}");

        // A quiet client's write: done, answered without the object; a refusal still says why.
        let quiet = client.clone().quiet();
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let answer = quiet.merge_patch("/api/v1/namespaces/default/pods/pa/status", &ready).await.unwrap();
        assert_eq!(answer, Value::Null, "a quiet write is answered without the object");
        let next = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(next.object["status"]["conditions"][0]["type"], "Ready", "the quiet write happened");
        let read = quiet.get("/api/v1/namespaces/default/pods/pa").await.unwrap();
        assert_eq!(read["status"]["phase"], "Running", "a quiet client's reads still answer");
        let refused = quiet.merge_patch("/api/v1/namespaces/default/pods/pb/status", &ready).await.unwrap_err();
        assert_eq!(refused.code(), Some(403), "{refused}");

        // What the door wrote is what HTTPS serves.
        let (code, node) = curl("GET", "/api/v1/nodes/node-a", "");
        assert_eq!((code, node["metadata"]["labels"]["zone"].as_str()), (200, Some("a")));
        let (_, pa) = curl("GET", "/api/v1/namespaces/default/pods/pa", "");
        assert_eq!(pa["status"]["podIP"], "10.1.0.7");

        // Events: recorded through the door, a repeat counted on the same event, and
        // `kubectl describe` shows them as Kubernetes prints them.
        let recorder = EventRecorder::new(client.clone(), "kubelet", "node-a");
        let (_, pa) = curl("GET", "/api/v1/namespaces/default/pods/pa", "");
        for _ in 0..2 {
            recorder.record(&pa, EventType::Normal, "Started", "Started container c").await.unwrap();
        }
        let selector = format!("involvedObject.uid={}", pa["metadata"]["uid"].as_str().unwrap());
        let (_, recorded) = curl("GET", &format!("/api/v1/namespaces/default/events?fieldSelector={selector}"), "");
        let items = recorded["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{recorded}");
        assert_eq!((items[0]["count"].as_i64(), items[0]["source"]["component"].as_str()), (Some(2), Some("kubelet")));
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(data.join("kubeconfig"))
            .args(["describe", "pod", "pa"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let section = text.split("Events:").nth(1).unwrap_or_else(|| panic!("no Events section:\n{text}"));
        let header = section.lines().nth(1).unwrap_or_default().split_whitespace().collect::<Vec<_>>();
        assert_eq!(header, ["Type", "Reason", "Age", "From", "Message"], "{text}");
        let row = section.lines().nth(3).unwrap_or_default();
        let cells = row.split_whitespace().collect::<Vec<_>>();
        assert_eq!((cells[0], cells[1]), ("Normal", "Started"), "{text}");
        assert!(row.contains("(x2 over") && row.contains("kubelet") && row.ends_with("Started container c"), "{text}");

        // An event must live in its object's namespace (Kubernetes' 422).
        let stray = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"},
                           "involvedObject": {"kind": "Pod", "name": "x", "namespace": "kube-system"}});
        let refused = client.create("/api/v1/namespaces/default/events", &stray).await.unwrap_err();
        assert_eq!(refused.code(), Some(422), "{refused}");
        assert!(refused.to_string().contains("does not match event.namespace"), "{refused}");

        // Graceful deletion: a bound pod is marked with its grace period until its node
        // deletes it with grace 0; a later delete may only shorten the period; another
        // node may not delete it; a pod no node runs goes at once.
        let (code, marked) = curl("DELETE", "/api/v1/namespaces/default/pods/pa", "");
        assert_eq!((code, marked["metadata"]["deletionGracePeriodSeconds"].as_i64()), (200, Some(30)), "{marked}");
        let seen = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(seen.kind, "MODIFIED");
        assert!(seen.object["metadata"]["deletionTimestamp"].is_string(), "{:?}", seen.object);
        let (_, longer) = curl("DELETE", "/api/v1/namespaces/default/pods/pa?gracePeriodSeconds=60", "");
        assert_eq!(longer["metadata"]["deletionGracePeriodSeconds"], 30, "{longer}");
        let (_, shorter) = curl("DELETE", "/api/v1/namespaces/default/pods/pa", r#"{"gracePeriodSeconds":5}"#);
        assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 5, "{shorter}");
        let not_mine = client.delete_with_grace("/api/v1/namespaces/default/pods/pb", 0).await.unwrap_err();
        assert_eq!(not_mine.code(), Some(403), "{not_mine}");
        client.delete_with_grace("/api/v1/namespaces/default/pods/pa", 0).await.expect("its kubelet ends it");
        let mut last = String::new();
        while last != "DELETED" {
            let e = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
            last = e.kind;
        }
        assert_eq!(curl("GET", "/api/v1/namespaces/default/pods/pa", "").0, 404);
        let mut unbound = pod("pu", "");
        unbound["spec"].as_object_mut().unwrap().remove("nodeName");
        assert_eq!(curl("POST", "/api/v1/namespaces/default/pods", &unbound.to_string()).0, 201);
        assert_eq!(curl("DELETE", "/api/v1/namespaces/default/pods/pu", "").0, 200);
        assert_eq!(curl("GET", "/api/v1/namespaces/default/pods/pu", "").0, 404);

        // The raw answer of a missing object: its code and Status, as over HTTPS.
        let raw = client.send(ApiRequest::new(Method::Get, "/api/v1/namespaces/nope/pods/x")).await.unwrap();
        assert_eq!(raw.code, 404);

        // Cut server-1 off: the client moves on to another server and keeps working.
        let s1 = transport.peer_addr("server-1").unwrap();
        transport.faults().set(s1, Direction::Out, LinkFaults::cut());
        transport.faults().set(s1, Direction::In, LinkFaults::cut());
        let client = client.with_deadline(Duration::from_secs(3));
        let mut served = None;
        for _ in 0..10 {
            if let Ok(v) = client.get("/api/v1/namespaces/default/pods/pb").await {
                served = Some(v);
                break;
            }
        }
        assert_eq!(served.expect("another server answers")["status"]["phase"], "Pending");
        transport.faults().heal();
    });
    transport.close();
    up.stop(Duration::from_secs(60));
}

/// An informer over the actor door keeps a cache equal to a fresh list while four
/// writers create, change and delete ConfigMaps, and while the server its watch is on
/// is stopped and restarted (it resumes on another server from the last version).
#[test]
fn an_informer_keeps_its_cache_equal_to_the_store_through_a_server_restart() {
    let _serial = serial();
    let scratch = Scratch::new("api-informer");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let (transport, _quic, servers) = node_transport(&data, "server-9");
    let api = Api::on(&data, "server-2");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let client = ApiClient::remote(transport.clone(), &servers, ActorPath::root("server-9").child("test"));
        door_ready(&client).await;
        // More than two pages of the informer's list (500 each) before it starts.
        let creators: Vec<_> = (0..8)
            .map(|c| {
                let api = api.clone();
                std::thread::spawn(move || {
                    for i in (c..1_100).step_by(8) {
                        let cm =
                            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("pre-{i}")}});
                        let (code, _) = api.call(
                            "POST",
                            "/api/v1/namespaces/default/configmaps",
                            "application/json",
                            &cm.to_string(),
                        );
                        assert_eq!(code, 201);
                    }
                })
            })
            .collect();
        for c in creators {
            c.join().unwrap();
        }
        let informer = Informer::new(client.clone(), "/api/v1/namespaces/default/configmaps", &[]);
        let cache = informer.cache();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(informer.run(tx));
        let listed = tokio::time::Instant::now();
        while cache.read().unwrap().lists == 0 {
            assert!(listed.elapsed() < Duration::from_secs(30), "the informer never listed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(cache.read().unwrap().objects.len() >= 1_100, "every page of the first list is in the cache");
        let seen = tokio::spawn(async move {
            let mut n = 0u64;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        // Writers over HTTPS (server-2), the informer's watch on server-1 at first.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let api = api.clone();
                std::thread::spawn(move || {
                    // A write the API could not make while server-1 was stopping (no raft
                    // leader yet: 5xx, or no answer) is tried again; any other answer is final.
                    let call = |method: &str, path: &str, body: &str| {
                        for _ in 0..100 {
                            let (code, _) = api.call(method, path, "application/merge-patch+json", body);
                            if code != 0 && code < 500 {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    };
                    for i in 0..30 {
                        let name = format!("w{w}-{i}");
                        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": name}, "data": {"n": "0"}});
                        call("POST", "/api/v1/namespaces/default/configmaps", &cm.to_string());
                        call(
                            "PATCH",
                            &format!("/api/v1/namespaces/default/configmaps/{name}"),
                            r#"{"data":{"n":"1"}}"#,
                        );
                        if i % 3 == 0 {
                            call("DELETE", &format!("/api/v1/namespaces/default/configmaps/{name}"), "");
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        run_ok(&data, &["chaos", "kill", "/up/server-1", "--mode", "stop"]);
        for w in writers {
            w.join().unwrap();
        }
        // The cache converges on a fresh list: the same keys at the same versions.
        let fresh = || async {
            let list = client.get("/api/v1/namespaces/default/configmaps").await.unwrap();
            let mut v: Vec<(String, String)> = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (key_of(o), o["metadata"]["resourceVersion"].as_str().unwrap().to_string()))
                .collect();
            v.sort();
            v
        };
        let mut last = (Vec::new(), Vec::new());
        let mut same = false;
        for _ in 0..100 {
            let want = fresh().await;
            let mut have: Vec<(String, String)> = cache
                .read()
                .unwrap()
                .objects
                .values()
                .map(|o| (key_of(o), o["metadata"]["resourceVersion"].as_str().unwrap().to_string()))
                .collect();
            have.sort();
            if have == want {
                same = true;
                break;
            }
            last = (have, want);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(same, "cache {:?}\n   != list {:?}", last.0, last.1);
        assert_eq!(fresh().await.len(), 1_180, "1,100 before, 120 made, 40 deleted");
        assert!(cache.read().unwrap().lists >= 1);
        drop(cache);
        seen.abort();
    });
    transport.close();
    up.stop(Duration::from_secs(60));
}
