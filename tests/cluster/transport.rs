//! Members of `keelson up` talking over QUIC, driven with `keelson ping` and
//! `keelson chaos net`.

use std::time::Duration;

use crate::support::*;

const START: Duration = Duration::from_secs(60);

fn ping(data: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["ping"];
    all.extend_from_slice(args);
    let out = run(data, &all);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn three_members_exchange_messages_survive_kills_and_partitions() {
    let _one = serial();
    let scratch = Scratch::new("quic");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0", "--servers", "3"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", START);

    // Every member reaches every other: request/response, and a streamed reply.
    for (from, to) in [("server-1", "server-2"), ("server-2", "server-3"), ("server-3", "server-1")] {
        let (ok, out) = ping(&data, &[to, "--from", from, "--count", "2"]);
        assert!(ok, "{out}");
        assert_eq!(out.matches(&format!("reply from /{to}/transport/probe (incarnation 1")).count(), 2, "{out}");
    }
    let (ok, out) = ping(&data, &["server-1", "--from", "server-3", "--stream", "4"]);
    assert!(ok && out.contains("item 4") && out.lines().count() == 4, "{out}");
    // One-way notes arrive, each once (streams are independent, so a ping may overtake
    // the last notes: ask again until all five are counted, and never more).
    let (ok, out) = ping(&data, &["server-3", "--from", "server-2", "--notes", "5", "--count", "1"]);
    assert!(ok, "{out}");
    eventually("five notes counted", Duration::from_secs(10), || {
        let (_, out) = ping(&data, &["server-3", "--from", "server-2", "--count", "1"]);
        assert!(!out.contains("6 notes"), "{out}");
        out.contains("5 notes")
    });

    // The certificates were issued by the cluster CA in the data folder.
    assert!(data.join("ca.crt").exists() && data.join("server-1/tls.crt").exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(data.join("ca.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // A restarted remote actor is reached again through the same path.
    run_ok(&data, &["chaos", "kill", "/server-2/transport/probe"]);
    eventually("server-2's probe back", Duration::from_secs(20), || {
        ping(&data, &["server-2", "--from", "server-1", "--count", "1"]).1.contains("(incarnation 2")
    });

    // The links show up in the tree, with their counters.
    let link = actor(&data, "/server-1/transport/server-2").unwrap();
    assert!(link["info"].as_str().unwrap_or_default().starts_with("up "), "{link}");

    // A partition fails pings within their deadline; healing brings them back.
    run_ok(&data, &["chaos", "net", "--partition", "server-1", "--from", "server-2"]);
    let (ok, out) = ping(&data, &["server-2", "--from", "server-1", "--count", "1", "--deadline", "500ms"]);
    assert!(!ok && out.contains("error"), "{out}");
    let (ok, out) = ping(&data, &["server-3", "--from", "server-1", "--count", "1"]);
    assert!(ok, "server-1 -> server-3 is not part of the partition: {out}");
    run_ok(&data, &["chaos", "net", "--heal"]);
    eventually("server-1 reaches server-2 again", Duration::from_secs(30), || {
        ping(&data, &["server-2", "--from", "server-1", "--count", "1", "--deadline", "1s"]).0
    });

    // Loss and delay: pings still get their answers, and /metrics counts the drops.
    run_ok(
        &data,
        &["chaos", "net", "--between", "server-1,server-3", "--loss", "30%", "--delay", "20ms", "--jitter", "10ms"],
    );
    let (ok, out) = ping(&data, &["server-3", "--from", "server-1", "--count", "20", "--deadline", "10s"]);
    assert!(ok && out.matches("reply from").count() == 20, "{out}");
    let url = door(&data, "server-1")["url"].as_str().unwrap().to_string();
    let metrics = http_get(&url, "/metrics");
    let drops = metrics
        .lines()
        .find(|l| l.starts_with("keelson_transport_injected_drops_total{member=\"server-1\",peer=\"server-3\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(drops > 0.0, "no injected drops counted:\n{metrics}");
    run_ok(&data, &["chaos", "net", "--heal"]);

    up.stop(Duration::from_secs(30));
}

#[test]
fn a_new_member_joins_with_a_token_and_a_revoked_one_is_refused() {
    let _one = serial();
    let scratch = Scratch::new("join");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0", "--servers", "2"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", START);

    let token = run_ok(&data, &["token", "create", "--ttl", "10m", "--description", "for server-9"]).trim().to_string();
    assert!(token.starts_with("keelson1."), "{token}");
    let through = std::fs::read_to_string(data.join("server-1/quic-addr")).unwrap();
    let elsewhere = scratch.0.join("elsewhere");
    let mut joiner = Running::start(
        &elsewhere,
        &["server", "--name", "server-9", "--quic-listen", "127.0.0.1:0", "--join", through.trim(), "--token", &token],
        &scratch.0.join("server-9.log"),
    );
    eventually("server-9 serving", START, || elsewhere.join("server-9/admin.json").exists());
    // The joiner got its certificate from the cluster's CA, and talks both ways, with
    // the member it joined through and with one it only learned about.
    assert_eq!(std::fs::read(elsewhere.join("server-9/ca.crt")).unwrap(), std::fs::read(data.join("ca.crt")).unwrap());
    assert!(!elsewhere.join("ca.key").exists(), "a joiner never gets the CA's key");
    for to in ["server-1", "server-2"] {
        let (ok, out) = ping(&elsewhere, &[to, "--from", "server-9", "--count", "1"]);
        assert!(ok, "server-9 -> {to}: {out}");
    }
    for from in ["server-1", "server-2"] {
        eventually(&format!("{from} reaches server-9"), Duration::from_secs(20), || {
            ping(&data, &["server-9", "--from", from, "--count", "1"]).0
        });
    }
    eventually("a link keeper for server-9 on server-2", Duration::from_secs(20), || {
        actor(&data, "/server-2/transport/server-9").is_some_and(|a| a["state"] == "running")
    });

    // Revoked: refused, with the reason, and nothing joins.
    let id = token.split('.').nth(2).unwrap().to_string();
    run_ok(&data, &["token", "revoke", &id]);
    assert!(run_ok(&data, &["token", "list"]).contains("revoked"));
    let late = scratch.0.join("late");
    let out = keelson()
        .args([
            "server",
            "--name",
            "server-8",
            "--quic-listen",
            "127.0.0.1:0",
            "--join",
            through.trim(),
            "--token",
            &token,
        ])
        .arg("--data-dir")
        .arg(&late)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token revoked"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!late.join("server-8/tls.crt").exists());

    joiner.signal(libc::SIGTERM);
    assert_eq!(joiner.wait(Duration::from_secs(30)), 0);
    up.stop(Duration::from_secs(30));
}
