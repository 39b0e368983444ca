//! The store's KV API beyond put and get, on two shards: transactions (one branch, one
//! revision, refused across shards), leases (kept alive, then expired by the leader
//! with their keys), lists whose pages all read the snapshot of the first page, and a
//! watch that reconnects from its cursor after its replicas were killed.

use std::time::Duration;

use keelson_actors::store::shard_of;
use serde_json::{json, Value};

use crate::store::{call, put, START};
use crate::support::*;

fn post(data: &std::path::Path, path: &str, body: Value) -> (u16, Value) {
    call(data, "server-2", "POST", path, body.to_string().as_bytes()).expect("the door answers")
}

fn get_json(data: &std::path::Path, key: &str) -> Option<Value> {
    match call(data, "server-3", "GET", &format!("/kv/key{key}"), b"") {
        Some((200, v)) => Some(v),
        Some((404, _)) => None,
        other => panic!("reading {key}: {other:?}"),
    }
}

#[test]
fn transactions_leases_and_lists_that_read_one_snapshot() {
    let _one = serial();
    let scratch = Scratch::new("kvapi");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0", "--shards", "2"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", START);
    eventually("both shards lead", START, || {
        matches!(call(&data, "server-1", "GET", "/kv/status", b""), Some((200, v))
            if v.as_array().is_some_and(|s| s.iter().all(|s| s["leader"].is_string())))
    });

    // A transaction: compare a key's revision, then write two keys at one revision.
    assert!(put(&data, "server-1", "/t/x/a", "1"));
    let rev = get_json(&data, "/t/x/a").unwrap()["mod_revision"].as_u64().unwrap();
    let txn = json!({
        "compares": [{"key": "/t/x/a", "target": "mod_revision", "cmp": "=", "value": rev}],
        "success": [{"put": {"key": "/t/x/a", "value": "2"}}, {"put": {"key": "/t/x/b", "value": "2"}}],
        "failure": [{"delete": {"key": "/t/x/b"}}],
    });
    let (code, v) = post(&data, "/kv/txn", txn.clone());
    assert_eq!((code, v["succeeded"].as_bool()), (200, Some(true)), "{v}");
    let (a, b) = (get_json(&data, "/t/x/a").unwrap(), get_json(&data, "/t/x/b").unwrap());
    assert_eq!((a["value"].as_str(), b["value"].as_str()), (Some("2"), Some("2")));
    assert_eq!(a["mod_revision"], b["mod_revision"], "one revision for the whole transaction");
    // The same transaction again: the compare fails, the other branch runs.
    let (code, v) = post(&data, "/kv/txn", txn);
    assert_eq!((code, v["succeeded"].as_bool()), (200, Some(false)), "{v}");
    assert!(get_json(&data, "/t/x/b").is_none());
    // Keys on two shards, a bad operator, garbage: refused, nothing written.
    let other = (0..100).map(|i| format!("/t/y{i}/k")).find(|k| shard_of(k, 2) != shard_of("/t/x/a", 2)).unwrap();
    let spread = json!({"success": [{"put": {"key": "/t/x/a", "value": "3"}}, {"put": {"key": other, "value": "3"}}]});
    let (code, v) = post(&data, "/kv/txn", spread);
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("one shard"), "{v}");
    let bad_cmp = json!({"compares": [{"key": "/t/x/a", "target": "version", "cmp": "~", "value": 1}]});
    assert_eq!(post(&data, "/kv/txn", bad_cmp).0, 400);
    assert_eq!(call(&data, "server-1", "POST", "/kv/txn", b"{\"success\": 5}").unwrap().0, 400);
    assert_eq!(get_json(&data, "/t/x/a").unwrap()["value"], "2");

    // A lease: its key lives while it is kept alive, and goes when it is not.
    let (code, lease) = post(&data, "/kv/lease", json!({"ttl_ms": 2000}));
    assert_eq!(code, 200, "{lease}");
    let id = lease["id"].as_u64().unwrap();
    assert_eq!(post(&data, "/kv/lease", json!({"ttl_ms": 10})).0, 400, "a TTL below the minimum");
    assert_eq!(call(&data, "server-1", "PUT", &format!("/kv/key/l/held?lease={id}"), b"v").unwrap().0, 200);
    assert_eq!(call(&data, "server-1", "PUT", "/kv/key/l/nope?lease=12345", b"v").unwrap().0, 404);
    assert_eq!(get_json(&data, "/l/held").unwrap()["lease"], id);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(post(&data, &format!("/kv/lease/{id}/keepalive"), Value::Null).0, 200);
    }
    assert!(get_json(&data, "/l/held").is_some(), "kept alive for 3 s with a 2 s TTL");
    eventually("the lease expires and takes its key", Duration::from_secs(15), || get_json(&data, "/l/held").is_none());
    assert_eq!(post(&data, &format!("/kv/lease/{id}/keepalive"), Value::Null).0, 404);
    // The CLI: grant, put with the lease, revoke.
    let id = run_ok(&data, &["kv", "lease", "grant", "30s"]).trim().to_string();
    run_ok(&data, &["kv", "put", "/l/cli", "v", "--lease", &id]);
    run_ok(&data, &["kv", "lease", "revoke", &id]);
    assert!(get_json(&data, "/l/cli").is_none(), "revoking a lease deletes its keys");

    // A list's pages read one snapshot, across both shards, whatever changes between pages.
    for i in 0..30 {
        assert!(put(&data, "server-1", &format!("/c/k{i:02}/x"), "old"));
    }
    let (code, first) = call(&data, "server-1", "GET", "/kv/range?prefix=/c/&limit=10", b"").unwrap();
    assert_eq!(code, 200, "{first}");
    let token = first["continue"].as_str().unwrap().to_string();
    assert!(put(&data, "server-1", "/c/k15/x", "new"));
    assert_eq!(call(&data, "server-1", "DELETE", "/kv/key/c/k20/x", b"").unwrap().0, 200);
    assert!(put(&data, "server-1", "/c/k99/x", "new"));
    let mut items: Vec<Value> = first["items"].as_array().unwrap().clone();
    let mut token = Some(token);
    while let Some(t) = token {
        let q = format!("/kv/range?prefix=/c/&limit=10&continue={}", t.replace('/', "%2F").replace(':', "%3A"));
        let (code, page) = call(&data, "server-2", "GET", &q, b"").unwrap();
        assert_eq!(code, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        token = page["continue"].as_str().map(str::to_string);
    }
    let keys: Vec<&str> = items.iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 30, "{keys:?}");
    assert!(keys.contains(&"/c/k20/x") && !keys.contains(&"/c/k99/x"), "{keys:?}");
    assert!(items.iter().all(|i| i["value"] == "old"), "a later page saw a later write");
    // A fresh list sees the changes; a forged token is refused.
    let (_, now) = call(&data, "server-1", "GET", "/kv/range?prefix=/c/&limit=100", b"").unwrap();
    assert_eq!(now["items"].as_array().unwrap().len(), 30);
    assert_eq!(call(&data, "server-1", "GET", "/kv/range?prefix=/c/&continue=zz", b"").unwrap().0, 400);

    // A watch whose stream breaks (the replicas it reads from are killed) reconnects
    // from its cursor: every change once, in order per key.
    let mut watch =
        Running::start(&data, &["kv", "watch", "/rw/", "--member", "server-1"], &scratch.0.join("watch.log"));
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..10 {
        assert!(put(&data, "server-2", &format!("/rw/k{}/x", i % 3), &format!("v{i}")));
    }
    let mut seen: Vec<String> = (0..10).map(|_| watch.wait_for_line("PUT /rw/", Duration::from_secs(20))).collect();
    for shard in ["shard-0", "shard-1"] {
        run_ok(&data, &["chaos", "kill", &format!("/server-1/store/{shard}")]);
    }
    for i in 10..20 {
        assert!(put(&data, "server-3", &format!("/rw/k{}/x", i % 3), &format!("v{i}")));
    }
    seen.extend((10..20).map(|_| watch.wait_for_line("PUT /rw/", Duration::from_secs(30))));
    std::thread::sleep(Duration::from_secs(1));
    while let Ok(extra) = watch.stdout.try_recv() {
        assert!(!extra.contains("PUT /rw/"), "a change delivered twice: {extra}");
    }
    for k in 0..3 {
        let got: Vec<&str> = seen
            .iter()
            .filter(|l| l.contains(&format!("/rw/k{k}/x ")))
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        let want: Vec<String> = (0..20).filter(|i| i % 3 == k).map(|i| format!("v{i}")).collect();
        assert_eq!(got, want, "changes to /rw/k{k}/x, across the reconnect");
    }
    drop(watch);

    up.stop(Duration::from_secs(60));
}
