//! `keelson up` as a user drives it.

use std::time::Duration;

use crate::support::*;

const START: Duration = Duration::from_secs(60);

#[test]
fn up_tree_chaos_and_a_clean_stop() {
    let _one = serial();
    let scratch = Scratch::new("up");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0", "--servers", "2"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", START);

    // The tree shows the launcher and both members.
    let members: Vec<String> = trees(&data).iter().map(|t| t["member"].as_str().unwrap().to_string()).collect();
    assert_eq!(members, ["up", "server-1", "server-2"]);
    let printed = run_ok(&data, &["tree"]);
    for needle in ["/server-1", "├─ admin", "└─ transport", "├─ server-1", "RESTARTS", "running", "one_for_one 10/60s"]
    {
        assert!(printed.contains(needle), "`keelson tree` lacks {needle:?}:\n{printed}");
    }

    // `keelson events` follows lifecycle events live.
    let mut events = Running::start(&data, &["events", "--member", "server-1"], &scratch.0.join("events.log"));
    std::thread::sleep(Duration::from_millis(500));

    // Kill an actor inside a member: it comes back, and the tree counts one restart.
    let out = run_ok(&data, &["chaos", "kill", "/server-1/admin"]);
    assert_eq!(out.trim(), "killed /server-1/admin (incarnation 1)");
    eventually("/server-1/admin back with one restart", Duration::from_secs(20), || {
        actor(&data, "/server-1/admin")
            .is_some_and(|a| a["state"] == "running" && a["restarts"] == 1 && a["kills"] == 1)
    });

    events.wait_for_line("/server-1/admin  #1  exited: killed (panic)", START);
    events.wait_for_line("/server-1/admin  #2  started", START);
    drop(events);

    // Kill a member process (through its actor in the launcher): a new process replaces it.
    let old_pid = door(&data, "server-2")["pid"].as_u64().unwrap() as u32;
    run_ok(&data, &["chaos", "kill", "/up/server-2", "--mode", "stop"]);
    up.wait_for_line("keelson: server-2 restarted (incarnation 2)", START);
    eventually("server-2 serving again from a new process", START, || {
        try_door(&data, "server-2").is_some_and(|d| d["pid"].as_u64().is_some_and(|p| p as u32 != old_pid))
            && actor(&data, "/server-2").is_some_and(|a| a["state"] == "running")
    });
    assert!(!alive(old_pid), "the old member process is still there");

    // Random kills print each path they killed, one a line, and the same seed picks
    // the same paths on the same tree.
    let out = run_ok(
        &data,
        &["chaos", "kill", "--random", "3", "--every", "300ms", "--match", "/server-*/**", "--seed", "9"],
    );
    let killed: Vec<&str> = out.lines().collect();
    assert_eq!(killed.len(), 3, "{out}");
    assert!(killed.iter().all(|p| p.starts_with("/server-") && p.matches('/').count() >= 2), "{out}");

    // Without the admin token the door answers 401 and kills nothing.
    let url = door(&data, "server-1")["url"].as_str().unwrap().to_string();
    let before = actor(&data, "/server-1/admin").unwrap()["kills"].as_u64().unwrap();
    let (code, body) = http_post(&url, "/chaos/kill", r#"{"path":"/server-1/admin"}"#, None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
    let (code, _) = http_post(&url, "/chaos/kill", r#"{"path":"/server-1/admin"}"#, Some("not-the-token-at-all"));
    assert_eq!(code, 401);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(actor(&data, "/server-1/admin").unwrap()["kills"].as_u64().unwrap(), before);

    // A second `up` on the same folder refuses.
    let second = run(&data, &["up", "--agents", "0", "--servers", "1"]);
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    // Ctrl-C: members stop in order, nothing is left behind.
    let pids: Vec<u32> =
        ["server-1", "server-2"].iter().map(|m| door(&data, m)["pid"].as_u64().unwrap() as u32).collect();
    up.stop(Duration::from_secs(30));
    for pid in pids {
        assert!(!alive(pid), "member pid {pid} outlived the launcher");
    }
    assert!(!data.join("up/admin.json").exists(), "the launcher's door file was left behind");
}

#[test]
fn a_member_left_alone_is_not_restarted_with_no_restart() {
    let _one = serial();
    let scratch = Scratch::new("norestart");
    let data = scratch.data();
    let mut up =
        Running::start(&data, &["up", "--agents", "0", "--servers", "1", "--no-restart"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", START);
    let pid = door(&data, "server-1")["pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    up.wait_for_line("keelson: server-1 exited", START);
    std::thread::sleep(Duration::from_millis(1500));
    let a = actor(&data, "/up/server-1").unwrap();
    assert_eq!((a["state"].as_str(), a["incarnation"].as_u64()), (Some("failed"), Some(1)), "{a}");
    up.signal(libc::SIGTERM);
    assert_eq!(up.wait(Duration::from_secs(30)), 0);
}
