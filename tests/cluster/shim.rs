//! The process runtime's shim on its own (`keelson shim <dir>`): what the kubelet reads
//! of a container it ran — its output in the log, how it ended — and that the container's
//! whole process group ends with its main process, whose stragglers neither outlive it
//! nor hold the shim for longer than its drain of their output.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::support::{alive, eventually, keelson, serial, Scratch};

/// Runs `script` under `sh -c` as a container in `dir`; the shim's exit and how long it ran.
fn run_container(dir: &std::path::Path, script: &str) -> (bool, Duration) {
    let spec = json!({"pod_uid": "uid-shim", "pod": "default/shim", "name": "c", "attempt": 0, "image": "none",
        "argv": ["sh", "-c", script], "env": [["PATH", "/usr/bin:/bin"]], "working_dir": dir, "netns": null});
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    let began = Instant::now();
    let status = keelson().arg("shim").arg(dir).status().unwrap();
    (status.success(), began.elapsed())
}

/// Whether `pid` is gone or only a zombie (its parent is whoever reaps orphans here).
fn ended(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !alive(pid) || stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
}

fn read_json(path: std::path::PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The log's lines as (stream, text), read as the kubelet reads them.
fn log_lines(dir: &std::path::Path) -> Vec<(String, String)> {
    let log = std::fs::read(dir.join("log")).unwrap_or_default();
    log.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let e = keelson_actors::cri::logs::parse(l).unwrap_or_else(|| panic!("a CRI log line: {l:?}"));
            (e.stream.to_string(), String::from_utf8_lossy(e.text).into_owned())
        })
        .collect()
}

#[test]
fn the_shim_writes_a_containers_output_and_exit_and_ends_its_group_with_it() {
    let _one = serial();
    let scratch = Scratch::new("shim");

    // Output on both streams, then exit 3 while a child in the group sleeps on.
    let dir = scratch.0.join("exits");
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, took) = run_container(
        &dir,
        "echo out; echo err >&2; grep SigBlk /proc/self/status; sleep 30 & echo $! > straggler; exit 3",
    );
    assert!(ok, "the shim itself succeeds whatever the container did");
    let exit = read_json(dir.join("exit.json"));
    assert_eq!((exit["code"].as_i64(), exit["reason"].as_str()), (Some(3), Some("Error")), "{exit}");
    let started = read_json(dir.join("started.json"));
    assert!(started["pid"].as_u64().is_some_and(|p| p > 0), "{started}");
    let mut lines = log_lines(&dir);
    lines.sort();
    // The container blocks no signal, though the shim blocks SIGCHLD to hear of its end.
    let expected = [("stderr", "err"), ("stdout", "SigBlk:\t0000000000000000"), ("stdout", "out")];
    assert_eq!(lines, expected.map(|(s, t)| (s.to_string(), t.to_string())).to_vec());
    let straggler: u32 = std::fs::read_to_string(dir.join("straggler")).unwrap().trim().parse().unwrap();
    eventually("the container's group is killed at its main process's end", Duration::from_secs(5), || {
        ended(straggler)
    });
    // The straggler held the output pipes open: the shim waited at most its drain for them.
    assert!(took < Duration::from_secs(15), "the shim ended {took:?} after it began");

    // A child that leaves the group (its own session, given a moment to make it) and
    // keeps the pipes: the exit is written once the drain is over, not when the child ends.
    let dir = scratch.0.join("drain");
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, took) = run_container(&dir, "setsid sleep 30 & echo $! > straggler; sleep 0.3; echo done; exit 0");
    assert!(ok);
    let exit = read_json(dir.join("exit.json"));
    assert_eq!((exit["code"].as_i64(), exit["reason"].as_str()), (Some(0), Some("Completed")), "{exit}");
    assert_eq!(log_lines(&dir), vec![("stdout".into(), "done".into())]);
    assert!(took >= Duration::from_secs(2), "the shim waited {took:?}: the straggler's output has its drain");
    assert!(took < Duration::from_secs(15), "the shim ended {took:?} after it began: the drain is bounded");
    let straggler: i32 = std::fs::read_to_string(dir.join("straggler")).unwrap().trim().parse().unwrap();
    // SAFETY: ending the test's own straggler.
    unsafe { libc::kill(straggler, libc::SIGKILL) };

    // A container killed by a signal: its code is 128 + the signal.
    let dir = scratch.0.join("signal");
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, _) = run_container(&dir, "kill -9 $$");
    assert!(ok);
    let exit = read_json(dir.join("exit.json"));
    assert_eq!((exit["code"].as_i64(), exit["signal"].as_i64()), (Some(137), Some(9)), "{exit}");
}
