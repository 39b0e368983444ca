//! The controllers' leader: exactly one server member holds the store key
//! `/keelson/leader/controllers`; when it stops, another takes over within seconds with
//! a higher fencing epoch, and from then on writes carrying the old epoch are refused
//! (409 `Fenced`) and change nothing, while the new epoch's writes go through; the
//! controllers (here the namespace controller) now run on the new leader. A leader cut
//! off by a partition stops its controllers, the others elect a new one, and once healed
//! its old epoch's writes — sent through its own member — are refused as fenced.

use std::path::Path;
use std::time::{Duration, Instant};

use keelson_actors::api::ApiClient;
use keelson_actors::runtime::ActorPath;
use keelson_transport::tls::Role;
use serde_json::{json, Value};

use crate::api_door::member_transport;
use crate::support::*;

/// (holder, epoch) of the leader key, if someone leads.
fn leader(data: &Path) -> Option<(String, u64)> {
    let out = run(data, &["kv", "get", "/keelson/leader/controllers", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let value: Value = serde_json::from_str(v["value"].as_str()?).ok()?;
    Some((value["member"].as_str()?.to_string(), v["create_revision"].as_u64()?))
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

#[test]
fn a_new_controller_leader_fences_the_old_one() {
    let _serial = serial();
    let scratch = Scratch::new("leader");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let mut first = None;
    eventually("a controller leader", Duration::from_secs(30), || {
        first = leader(&data);
        first.is_some()
    });
    let (holder, old) = first.unwrap();
    let (transport, _quic, servers) = member_transport(&data, "server-9", Role::Server);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = ApiClient::remote(transport.clone(), &servers, ActorPath::root("server-9").child("controllers"));
        let mut made = false;
        for _ in 0..100 {
            if client.clone().with_epoch(old).create("/api/v1/namespaces/default/configmaps", &cm("a")).await.is_ok() {
                made = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(made, "a write at the current epoch goes through");
    });

    run_ok(&data, &["chaos", "kill", &format!("/up/{holder}"), "--mode", "stop"]);
    let stopped = Instant::now();
    let mut next = None;
    eventually("another leader", Duration::from_secs(20), || {
        next = leader(&data).filter(|(_, epoch)| *epoch > old);
        next.is_some()
    });
    let (_, new) = next.unwrap();
    eprintln!("takeover after {:?} (epoch {old} → {new})", stopped.elapsed());

    rt.block_on(async {
        let client = ApiClient::remote(transport.clone(), &servers, ActorPath::root("server-9").child("controllers"));
        let mut refused = None;
        for _ in 0..50 {
            match client.clone().with_epoch(old).create("/api/v1/namespaces/default/configmaps", &cm("b")).await {
                Err(e) if e.code() == Some(409) => {
                    refused = Some(e);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Ok(v) => panic!("the old leader's write went through: {v}"),
            }
        }
        let refused = refused.expect("the old epoch's write is answered");
        assert!(refused.to_string().contains("Fenced"), "{refused}");
        let gone = client.get("/api/v1/namespaces/default/configmaps/b").await.unwrap_err();
        assert_eq!(gone.code(), Some(404), "a fenced write changes nothing");
        let ok = client.clone().with_epoch(new).create("/api/v1/namespaces/default/configmaps", &cm("c")).await;
        assert!(ok.is_ok(), "the new leader writes: {ok:?}");
        // Updates and deletes are fenced too.
        let mut a = client.get("/api/v1/namespaces/default/configmaps/a").await.unwrap();
        a["data"]["k"] = "w".into();
        let stale = client.clone().with_epoch(old).update("/api/v1/namespaces/default/configmaps/a", &a).await;
        assert_eq!(stale.unwrap_err().code(), Some(409));
        let deleted = client.clone().with_epoch(old).delete("/api/v1/namespaces/default/configmaps/a").await;
        assert_eq!(deleted.unwrap_err().code(), Some(409));
        assert_eq!(client.get("/api/v1/namespaces/default/configmaps/a").await.unwrap()["data"]["k"], "v");

        // The controllers moved with the leadership: the new leader's namespace
        // controller empties and removes a deleted namespace.
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gone"}});
        client.create("/api/v1/namespaces", &ns).await.unwrap();
        client.create("/api/v1/namespaces/gone/configmaps", &cm("inside")).await.unwrap();
        let marked = client.delete("/api/v1/namespaces/gone").await.unwrap();
        assert_eq!(marked["status"]["phase"], "Terminating", "{marked}");
        let began = Instant::now();
        while client.get("/api/v1/namespaces/gone").await.is_ok() {
            assert!(began.elapsed() < Duration::from_secs(20), "the namespace is still there");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let inside = client.get("/api/v1/namespaces/gone/configmaps/inside").await.unwrap_err();
        assert_eq!(inside.code(), Some(404));

        // While something inside holds it (a finalizer), the namespace stays Terminating
        // and refuses new content with Kubernetes' 403; released, it goes.
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "held"}});
        client.create("/api/v1/namespaces", &ns).await.unwrap();
        let mut holder = cm("holder");
        holder["metadata"]["finalizers"] = json!(["example.com/hold"]);
        client.create("/api/v1/namespaces/held/configmaps", &holder).await.unwrap();
        client.delete("/api/v1/namespaces/held").await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let refused = client.create("/api/v1/namespaces/held/configmaps", &cm("late")).await.unwrap_err();
        assert_eq!(refused.code(), Some(403), "{refused}");
        assert!(refused.to_string().contains("because it is being terminated"), "{refused}");
        let ns_now = client.get("/api/v1/namespaces/held").await.unwrap();
        assert_eq!(ns_now["status"]["phase"], "Terminating");
        let mut release = client.get("/api/v1/namespaces/held/configmaps/holder").await.unwrap();
        release["metadata"]["finalizers"] = json!([]);
        client.update("/api/v1/namespaces/held/configmaps/holder", &release).await.unwrap();
        let began = Instant::now();
        while client.get("/api/v1/namespaces/held").await.is_ok() {
            assert!(began.elapsed() < Duration::from_secs(20), "the released namespace is still there");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    transport.close();
    up.stop(Duration::from_secs(60));
}

/// The controllers running on `member`, from its tree.
fn controllers_on(data: &Path, member: &str) -> Vec<String> {
    trees(data)
        .into_iter()
        .filter(|t| t["member"] == member)
        .flat_map(|t| t["actors"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["path"].as_str().map(str::to_string))
        .filter(|p| p.starts_with(&format!("/{member}/controllers/")))
        .collect()
}

#[test]
fn a_partitioned_controller_leader_stops_and_is_fenced_off() {
    let _serial = serial();
    let scratch = Scratch::new("leader-partition");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let mut first = None;
    eventually("a controller leader", Duration::from_secs(30), || {
        first = leader(&data);
        first.is_some()
    });
    let (old_leader, old) = first.unwrap();
    eventually("the leader's controllers", Duration::from_secs(30), || {
        controllers_on(&data, &old_leader).iter().any(|p| p.ends_with("/scheduler"))
    });
    let others: Vec<String> =
        ["server-1", "server-2", "server-3"].iter().filter(|m| **m != old_leader).map(|m| m.to_string()).collect();

    // Cut the leader off: the others elect a new one with a higher epoch, and the old one
    // stops its controllers (it cannot renew its lease) instead of acting on its own.
    run_ok(&data, &["chaos", "net", "--partition", &old_leader, "--from", &others.join(",")]);
    let mut next = None;
    eventually("a leader among the others", Duration::from_secs(30), || {
        let out = run(&data, &["kv", "get", "/keelson/leader/controllers", "--json", "--member", &others[0]]);
        next = serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|v| {
            let value: Value = serde_json::from_str(v["value"].as_str()?).ok()?;
            Some((value["member"].as_str()?.to_string(), v["create_revision"].as_u64()?))
        });
        next.as_ref().is_some_and(|(m, e)| *e > old && others.contains(m))
    });
    let (new_leader, new) = next.unwrap();
    eventually("the cut-off leader's controllers stopped", Duration::from_secs(30), || {
        controllers_on(&data, &old_leader).is_empty()
    });
    assert!(controllers_on(&data, &new_leader).iter().any(|p| p.ends_with("/scheduler")), "{new_leader} runs them");

    // Healed: whatever the old leader still sends with its epoch, through its own API,
    // is refused as fenced and changes nothing.
    run_ok(&data, &["chaos", "net", "--heal"]);
    let (transport, _quic, _servers) = member_transport(&data, "server-9", Role::Server);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let through_old = ApiClient::remote(
            transport.clone(),
            std::slice::from_ref(&old_leader),
            ActorPath::root("server-9").child("c"),
        );
        let mut refused = None;
        for _ in 0..100 {
            match through_old.clone().with_epoch(old).create("/api/v1/namespaces/default/configmaps", &cm("late")).await
            {
                Err(e) if e.code() == Some(409) => {
                    refused = Some(e);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Ok(v) => panic!("the cut-off leader's write went through: {v}"),
            }
        }
        let refused = refused.expect("the old leader's member answers once healed");
        assert_eq!(refused.reason(), Some("Fenced"), "{refused}");
        let absent = through_old.get("/api/v1/namespaces/default/configmaps/late").await.unwrap_err();
        assert_eq!(absent.code(), Some(404), "a fenced write changes nothing");
        let ok = through_old.clone().with_epoch(new).create("/api/v1/namespaces/default/configmaps", &cm("now")).await;
        assert!(ok.is_ok(), "the new epoch writes through any member: {ok:?}");
    });
    transport.close();
    up.stop(Duration::from_secs(60));
}
