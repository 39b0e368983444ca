//! Store membership at run time: a member that joined with a token is added to the
//! store (a learner that catches up, then a voter that counts in the quorum), and
//! removed again, while the cluster keeps committing.

use std::time::Duration;

use crate::store::{call, leader, put, START};
use crate::support::*;

#[test]
fn a_joined_member_is_added_to_the_store_votes_and_is_removed() {
    let _one = serial();
    let scratch = Scratch::new("members");
    let data = scratch.data();
    let members = ["server-1", "server-2", "server-3"];
    // No restarts: a member killed below stays down.
    let mut up = Running::start(
        &data,
        &["up", "--agents", "0", "--no-restart", "--snapshot-every", "100"],
        &scratch.0.join("up.log"),
    );
    up.wait_for_line("keelson: ready", START);
    eventually("a leader", START, || leader(&data, &members).is_some());
    for i in 0..250 {
        assert!(put(&data, members[i % 3], &format!("/m/k{i:03}"), &format!("v{i}")));
    }

    // server-4 joins the transport with a token; it holds no store yet.
    let token = run_ok(&data, &["token", "create", "--ttl", "10m"]).trim().to_string();
    let through = std::fs::read_to_string(data.join("server-1/quic-addr")).unwrap();
    let elsewhere = scratch.0.join("elsewhere");
    let mut joiner = Running::start(
        &elsewhere,
        &["server", "--name", "server-4", "--quic-listen", "127.0.0.1:0", "--join", through.trim(), "--token", &token],
        &scratch.0.join("server-4.log"),
    );
    eventually("server-4 serving", START, || elsewhere.join("server-4/admin.json").exists());
    let status4 = || {
        door_call(&elsewhere, "server-4", "GET", "/kv/status", b"", Duration::from_secs(10))
            .filter(|(c, _)| *c == 200)
            .map(|(_, v)| v[0].clone())
    };
    assert_eq!(status4().unwrap()["voters"].as_array().map(Vec::len), Some(0), "a joiner starts outside the store");

    // Added: it catches up (from a snapshot: the leader compacted its log) and votes.
    let out = run_ok(&data, &["member", "add", "server-4"]);
    assert!(out.contains("shard 0: voters") && out.contains("server-4"), "{out}");
    eprintln!("keelson member add server-4:\n{out}");
    let list = run_ok(&data, &["member", "list"]);
    eprintln!("keelson member list:\n{list}");
    assert!(
        list.lines().any(|l| l.starts_with("server-4") && l.contains("remote") && l.contains("follower")),
        "{list}"
    );
    let lead = leader(&data, &members).unwrap();
    let revision = |v: &serde_json::Value| v["revision"].as_u64();
    eventually("server-4 holds every write", START, || {
        let l = call(&data, &lead, "GET", "/kv/status", b"").map(|(_, v)| v[0].clone());
        matches!((status4(), l), (Some(s), Some(l)) if revision(&s) == revision(&l))
    });
    assert!(status4().unwrap()["snapshots_installed"].as_u64() >= Some(1));

    // With four voters the quorum is three: one original member down, and writes
    // still commit only because server-4 votes.
    let victim = members.iter().copied().find(|m| *m != lead).unwrap();
    let pid = door(&data, victim)["pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let alive: Vec<&str> = members.iter().copied().filter(|m| *m != victim).collect();
    for i in 0..20 {
        assert!(put(&data, alive[i % 2], &format!("/m/with-4-{i}"), "v"), "a write with server-4 voting");
    }

    // Removed: the store goes back to three voters (one of them down), server-4 stops,
    // and the two that are left still commit.
    let out = run_ok(&data, &["member", "remove", "server-4"]);
    assert!(out.contains("shard 0: voters") && !out.contains("server-4"), "{out}");
    eprintln!("keelson member remove server-4:\n{out}");
    joiner.signal(libc::SIGTERM);
    assert_eq!(joiner.wait(Duration::from_secs(30)), 0);
    for i in 0..20 {
        assert!(put(&data, alive[i % 2], &format!("/m/after-{i}"), "v"), "a write after server-4 left");
    }
    let (_, st) = call(&data, alive[0], "GET", "/kv/status", b"").unwrap();
    let voters: Vec<&str> = st[0]["voters"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(voters.len(), 3, "{st}");
    assert!(!voters.contains(&"server-4"));
    // Removing what is not a member is refused, and changes nothing.
    let (code, _) = call(&data, alive[0], "POST", "/members/server-4/remove?shard=0", b"").unwrap();
    assert_eq!(code, 409);
    up.stop(Duration::from_secs(60));
}
