//! `keelson up`: a whole local cluster from one command.
//!
//! The launcher is itself a supervision tree (`/up`): its admin door, and one
//! `ChildProcess` actor per member, each re-executing this binary as
//! `keelson server`. A member that dies is restarted with back-off (unless
//! `--no-restart`); Ctrl-C stops the members in reverse order and exits.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::FutureExt;
use keelson_actors::member::{launcher_tree, MemberProcess};
use keelson_actors::process::ProcessSpec;
use keelson_actors::runtime::{EventKind, Registry, Restart};
use keelson_config::{AdminConfig, Backoff, Intensity, MemberConfig, SupervisorConfig};

use crate::cli::UpArgs;
use crate::client::DoorClient;
use crate::datadir::{DataDir, DoorFile};
use crate::member::{self, OnReady};

pub fn run(args: UpArgs, data_dir: &std::path::Path, log_format: &str) -> Result<i32> {
    if args.servers == 0 {
        bail!("--servers must be at least 1");
    }
    let data = DataDir::open(data_dir)?;
    if let Ok(door) = data.door("up") {
        if door.alive() && door.pid != std::process::id() {
            bail!(
                "a cluster is already running from {} (launcher pid {}); stop it first",
                data.root().display(),
                door.pid
            );
        }
    }
    let token = data.token()?;
    crate::pki::ca(&data)?;
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let names: Vec<String> = (1..=args.servers).map(|i| format!("server-{i}")).collect();
    let quic = quic_ports(&data, &names)?;
    let api = api_ports(&data, &names)?;
    let kubeconfig = crate::kubeconfig::write(
        &data,
        &api[&names[0]].to_string(),
        "admin",
        &crate::kubeconfig::Credential::Token(token.clone()),
        None,
    )?;
    let mut members = Vec::new();
    for name in &names {
        data.remove_door(name);
        let log = data.member_dir(name)?.join("keelson.log");
        let mut argv = ["server", "--name", name, "--log-format", log_format].map(String::from).to_vec();
        argv.extend(["--data-dir".into(), data.root().display().to_string()]);
        argv.extend(["--quic-listen".into(), quic[name].to_string()]);
        argv.extend(["--api-listen".into(), api[name].to_string()]);
        argv.extend(["--store-members".into(), names.join(",")]);
        argv.extend(args.store.to_args());
        for (peer, addr) in quic.iter().filter(|(p, _)| *p != name) {
            argv.extend(["--peer".into(), format!("{peer}={addr}")]);
        }
        members.push(MemberProcess { name: name.clone(), spec: ProcessSpec { program: exe.clone(), args: argv, log } });
    }
    let mut waits = names.clone();
    let agent_argv = |name: &str, extra: &[String]| {
        let mut argv = ["agent", "--name", name, "--log-format", log_format].map(String::from).to_vec();
        argv.extend(["--data-dir".into(), data.root().display().to_string()]);
        argv.extend(extra.iter().cloned());
        for (peer, addr) in &quic {
            argv.extend(["--peer".into(), format!("{peer}={addr}")]);
        }
        argv
    };
    let agents: Vec<String> = (1..=args.agents).map(|i| format!("agent-{i}")).collect();
    let agent_quic = quic_ports(&data, &agents)?;
    for name in &agents {
        data.remove_door(name);
        let log = data.member_dir(name)?.join("keelson.log");
        let extra = [
            "--runtime".to_string(),
            args.runtime.as_str().into(),
            "--network".into(),
            args.network.as_str().into(),
            "--restart-backoff".into(),
            format!("{}ms", args.restart_backoff.as_millis()),
            "--netns-pool".into(),
            args.netns_pool.to_string(),
            "--quic-listen".into(),
            agent_quic[name].to_string(),
        ];
        let argv = agent_argv(name, &extra);
        members.push(MemberProcess { name: name.clone(), spec: ProcessSpec { program: exe.clone(), args: argv, log } });
        waits.push(name.clone());
    }
    if args.hollow > 0 {
        let name = "hollow".to_string();
        data.remove_door(&name);
        let log = data.member_dir(&name)?.join("keelson.log");
        let argv = agent_argv(&name, &["--hollow".to_string(), args.hollow.to_string()]);
        members.push(MemberProcess { name: name.clone(), spec: ProcessSpec { program: exe.clone(), args: argv, log } });
        waits.push(name);
    }
    let cfg = MemberConfig {
        name: "up".into(),
        data_dir: data.member_dir("up")?,
        admin: AdminConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), token: token.clone() },
        root: SupervisorConfig {
            intensity: args.intensity,
            backoff: Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(10), jitter: 0.2 },
            seed: std::process::id() as u64,
        },
    }
    .validate()?;
    println!(
        "keelson: starting {} server(s) and {} agent(s) in {}",
        args.servers,
        args.agents + u32::from(args.hollow > 0),
        data.root().display()
    );
    let restart = if args.no_restart { Restart::Temporary } else { Restart::Permanent };
    let root = data.root().to_path_buf();
    let on_ready: OnReady =
        Box::new(move |door, registry| report(root, door, waits, token, kubeconfig, registry).boxed_local());
    member::run(cfg, &data, move |cfg, l| launcher_tree(cfg, l, members, restart), Some(on_ready))
}

/// Prints each member as it starts serving, then `keelson: ready`, then member
/// restarts as they happen.
async fn report(
    root: std::path::PathBuf,
    launcher: DoorFile,
    names: Vec<String>,
    token: String,
    kubeconfig: std::path::PathBuf,
    registry: Registry,
) {
    let mut events = registry.subscribe();
    let data = match DataDir::open(&root) {
        Ok(d) => d,
        Err(e) => return eprintln!("keelson: {e:#}"),
    };
    let client = DoorClient::new(token);
    for name in &names {
        loop {
            match data.door(name) {
                Ok(door) if door.alive() && client.healthy(&door).await => {
                    say(&format!("keelson: {name} serving (pid {}, admin {})", door.pid, door.url));
                    break;
                }
                _ => actix_rt::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    say(&format!("keelson: admin door {} (token in {})", launcher.url, data.token_path().display()));
    say(&format!(
        "keelson: Kubernetes API on {} — export KUBECONFIG={}",
        api_url(&data, &names[0]),
        kubeconfig.display()
    ));
    say("keelson: ready");
    while let Ok(e) = events.recv().await {
        let member = e.path.name();
        if e.path.as_str().matches('/').count() != 2 || e.path.as_str().starts_with("/up/admin") {
            continue;
        }
        match e.event {
            EventKind::Exited { reason } if reason.is_abnormal() => say(&format!("keelson: {member} exited: {reason}")),
            EventKind::Started if e.incarnation > 1 => {
                say(&format!("keelson: {member} restarted (incarnation {})", e.incarnation))
            }
            _ => {}
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Each member's QUIC address: kept in `<member>/quic-addr` so a restarted cluster
/// reuses it, else a free UDP port on 127.0.0.1 chosen by the OS.
fn quic_ports(data: &DataDir, names: &[String]) -> Result<std::collections::BTreeMap<String, SocketAddr>> {
    kept_ports(data, names, "quic-addr", |a| std::net::UdpSocket::bind(a)?.local_addr())
}

/// Each member's API address: kept in `<member>/api-addr` so the kubeconfig stays
/// right across restarts, else a free TCP port on 127.0.0.1.
fn api_ports(data: &DataDir, names: &[String]) -> Result<std::collections::BTreeMap<String, SocketAddr>> {
    kept_ports(data, names, "api-addr", |a| std::net::TcpListener::bind(a)?.local_addr())
}

/// Each member's address in `<member>/<file>`: the kept one while it can still be
/// bound (`bind` tries it), else one the OS picks on 127.0.0.1; written back.
fn kept_ports(
    data: &DataDir,
    names: &[String],
    file: &str,
    bind: impl Fn(SocketAddr) -> std::io::Result<SocketAddr>,
) -> Result<std::collections::BTreeMap<String, SocketAddr>> {
    let mut out = std::collections::BTreeMap::new();
    for name in names {
        let path = data.member_dir(name)?.join(file);
        let kept = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<SocketAddr>().ok());
        let addr = match kept.filter(|a| bind(*a).is_ok()) {
            Some(a) => a,
            None => bind(SocketAddr::from(([127, 0, 0, 1], 0)))?,
        };
        std::fs::write(&path, addr.to_string())?;
        out.insert(name.clone(), addr);
    }
    Ok(out)
}

fn api_url(data: &DataDir, member: &str) -> String {
    let addr = std::fs::read_to_string(data.root().join(member).join("api-addr")).unwrap_or_default();
    format!("https://{}", addr.trim())
}

/// Parses `N/DURATION` for clap.
pub fn parse_intensity(s: &str) -> Result<Intensity, String> {
    s.parse().map_err(|e: keelson_config::Error| e.to_string())
}
