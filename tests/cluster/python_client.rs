//! The official Kubernetes Python client (`pip install kubernetes`: installed by `.ci/run`,
//! or by this test when missing) creates, lists, watches and deletes pods and deployments through the
//! kubeconfig `keelson up` writes (`python/client.py` does the talking).

use std::process::Command;
use std::time::Duration;

use crate::support::*;

#[test]
fn the_official_python_client_creates_lists_watches_and_deletes() {
    let has_client =
        || Command::new("python3").args(["-c", "import kubernetes"]).output().is_ok_and(|o| o.status.success());
    if !has_client() {
        // A fresh machine: the README's test command installs it (as .ci/run does).
        let _ = Command::new("python3").args(["-m", "pip", "install", "--quiet", "kubernetes"]).status();
    }
    assert!(has_client(), "the Python client is missing and `python3 -m pip install kubernetes` failed");
    let _one = serial();
    let scratch = Scratch::new("python");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    let line = up.wait_for_line("export KUBECONFIG=", Duration::from_secs(60));
    up.wait_for_line("keelson: ready", Duration::from_secs(60));
    let kubeconfig = line.rsplit_once("KUBECONFIG=").unwrap().1.trim().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/cluster/python/client.py");
    eventually("the default namespace", Duration::from_secs(30), || data.join("server-1/api-addr").exists());
    let out = Command::new("python3").args([script, &kubeconfig]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for step in [
        "pod created p1",
        "pods listed 1",
        "watch saw",
        "deployment created",
        "conflict 409",
        "deployment deleted",
        "done",
    ] {
        assert!(stdout.contains(step), "{step} missing:\n{stdout}");
    }
    up.stop(Duration::from_secs(60));
}
