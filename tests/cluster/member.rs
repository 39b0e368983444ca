//! One `keelson server` process on its own.

use std::time::Duration;

use crate::support::*;

#[test]
fn a_root_past_its_intensity_exits_non_zero_with_the_reason() {
    let _one = serial();
    let scratch = Scratch::new("escalate");
    let data = scratch.data();
    let log = scratch.0.join("server.log");
    let mut server = Running::start(&data, &["server", "--name", "solo", "--root-intensity", "2/30s"], &log);
    eventually("the door file", Duration::from_secs(30), || data.join("solo/admin.json").exists());
    eventually("the door answers", Duration::from_secs(30), || actor(&data, "/solo/admin").is_some());

    for incarnation in 1..=3u64 {
        eventually(&format!("admin incarnation {incarnation}"), Duration::from_secs(20), || {
            actor(&data, "/solo/admin").is_some_and(|a| a["state"] == "running" && a["incarnation"] == incarnation)
        });
        run_ok(&data, &["chaos", "kill", "/solo/admin"]);
    }
    assert_eq!(server.wait(Duration::from_secs(30)), 1, "a root that gave up must exit non-zero");
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains(
            "keelson: root supervisor /solo gave up: restart intensity exceeded by /solo/admin (killed (panic))"
        ),
        "{stderr}"
    );
    assert!(!data.join("solo/admin.json").exists());
}

#[test]
fn a_member_stops_in_order_on_sigterm() {
    let _one = serial();
    let scratch = Scratch::new("sigterm");
    let data = scratch.data();
    let log = scratch.0.join("server.log");
    let mut server = Running::start(&data, &["server", "--name", "calm", "--log-format", "json"], &log);
    eventually("the door answers", Duration::from_secs(30), || {
        data.join("calm/admin.json").exists() && actor(&data, "/calm/admin").is_some()
    });
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(30)), 0);
    // JSON logs: every line parses, and the admin door's span carries its actor path.
    let logs = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect();
    assert!(lines.iter().any(|l| l["span"]["path"] == "/calm/admin" || l["spans"].to_string().contains("/calm/admin")));
}
