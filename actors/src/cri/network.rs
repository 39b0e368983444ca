//! Pod addresses, from the node's pod CIDR (given by the control plane's node IPAM).
//!
//! - `Netns` (the agent runs as root): the node has a bridge, `kls<hash of node>`,
//!   holding the CIDR's first address (the node's own); each pod gets a network
//!   namespace `keelson-<pod uid>` joined to it by a veth pair, the next free address,
//!   and a default route through the bridge. Pods bind 0.0.0.0 side by side; the host
//!   reaches every pod through the bridge's route; the bridge's traffic is let through
//!   the host's FORWARD chain (Docker sets it to DROP).
//! - `Loopback`: no namespaces; each pod gets the loopback twin of its address
//!   (10.244.3.5 → 127.244.3.5), which every Linux host routes to `lo` already.
//!
//! Only interfaces and namespaces made here are touched; a CIDR that overlaps a route
//! the host already had is refused. Addresses are claimed as files (`<dir>/<ip>` holding
//! the pod's uid), so a restarted kubelet keeps every pod's address.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use keelson_config::{Cidr, PodNetworkMode};

use crate::hash::fnv1a;

use super::netlink::{self, Netlink};
use super::{Result, RuntimeError};

/// Where named network namespaces live (as `ip netns` keeps them).
const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    /// The pod's network namespace (`/run/netns/keelson-<uid>`), in netns mode.
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub mode: PodNetworkMode,
    cidr: Cidr,
    bridge: String,
    claims: PathBuf,
}

/// The loopback twin of an address: `127.b.c.d` for `a.b.c.d`.
pub fn loopback_of(ip: Ipv4Addr) -> Ipv4Addr {
    let [_, b, c, d] = ip.octets();
    Ipv4Addr::new(127, b, c, d)
}

fn run_ip(args: &[&str], batch: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = match batch {
        Some(lines) => {
            use std::io::Write;
            cmd.args(["-batch", "-"]).stdin(std::process::Stdio::piped());
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().map_err(|e| RuntimeError::Network(format!("cannot run `ip`: {e}")))?;
            child.stdin.take().expect("piped").write_all(lines.as_bytes()).ok();
            child.wait_with_output()
        }
        None => cmd.output(),
    }
    .map_err(|e| RuntimeError::Network(format!("cannot run `ip`: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(RuntimeError::Network(format!("ip {}: {}", args.join(" "), err.trim())))
    }
}

/// Runs `iptables` with `rule` unless the rule is there already (`-C` finds it).
fn iptables_ensure(rule: &[&str]) -> Result<()> {
    let check = Command::new("iptables").args(["-w", "-C"]).args(rule).output();
    if check.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let out = Command::new("iptables")
        .args(["-w", "-I"])
        .args(rule)
        .output()
        .map_err(|e| RuntimeError::Network(format!("cannot run iptables: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Network(format!("iptables: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn iptables_remove(rule: &[&str]) {
    while Command::new("iptables").args(["-w", "-D"]).args(rule).output().is_ok_and(|o| o.status.success()) {}
}

/// Routes the host already has (destination, device), from `ip -4 route`.
fn host_routes() -> Vec<(Cidr, String)> {
    let Ok(out) = Command::new("ip").args(["-4", "-o", "route", "show", "table", "all"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().peekable();
            if matches!(words.peek(), Some(&("local" | "broadcast" | "unicast"))) {
                words.next();
            }
            let dest = words.next()?;
            let cidr: Cidr = if dest.contains('/') { dest.parse().ok()? } else { format!("{dest}/32").parse().ok()? };
            let dev = line.split_whitespace().skip_while(|w| *w != "dev").nth(1)?.to_string();
            Some((cidr, dev))
        })
        .collect()
}

impl PodNetwork {
    /// The network of node `node`, whose pods take addresses from `cidr`; claims in `dir`.
    pub fn new(mode: PodNetworkMode, node: &str, cidr: Cidr, dir: PathBuf) -> Self {
        Self { mode, cidr, bridge: format!("kls{:08x}", fnv1a(node.as_bytes()) as u32), claims: dir }
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// How an address of the CIDR is seen: itself, or its loopback twin.
    fn seen(&self, ip: Ipv4Addr) -> Ipv4Addr {
        match self.mode {
            PodNetworkMode::Netns | PodNetworkMode::Docker => ip,
            PodNetworkMode::Loopback => loopback_of(ip),
        }
    }

    /// The node's own address among its pods' (the bridge's, or its loopback twin).
    pub fn node_ip(&self) -> Ipv4Addr {
        self.seen(self.cidr.nth(1).unwrap_or(self.cidr.base))
    }

    fn ns_name(uid: &str) -> String {
        format!("keelson-{uid}")
    }

    fn veth(uid: &str) -> String {
        format!("kv{:012x}", fnv1a(uid.as_bytes()) & 0xffff_ffff_ffff)
    }

    fn forward_rules(&self) -> [[&str; 4]; 2] {
        [["FORWARD", "-i", &self.bridge, "-j"], ["FORWARD", "-o", &self.bridge, "-j"]]
    }

    /// Makes the node's bridge (netns mode), refusing a CIDR that overlaps the host's
    /// own routes. Idempotent.
    pub fn setup(&self) -> Result<()> {
        std::fs::create_dir_all(&self.claims).map_err(RuntimeError::io(format!("{}", self.claims.display())))?;
        if self.mode != PodNetworkMode::Netns {
            return Ok(()); // loopback needs nothing; Docker's network is the runtime's
        }
        if let Some((cidr, dev)) = host_routes().into_iter().find(|(c, d)| *d != self.bridge && c.overlaps(&self.cidr))
        {
            return Err(RuntimeError::Network(format!(
                "the pod range {} overlaps {cidr} on {dev}, which this machine already has: choose another \
                 cluster CIDR (keelson server --cluster-cidr)",
                self.cidr
            )));
        }
        if !Path::new("/sys/class/net").join(&self.bridge).exists() {
            run_ip(&["link", "add", &self.bridge, "type", "bridge"], None)?;
        }
        let gw = format!("{}/{}", self.node_ip(), self.cidr.prefix);
        let has_addr = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", &self.bridge])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {gw} ")));
        if !has_addr {
            run_ip(&["addr", "add", &gw, "dev", &self.bridge], None)?;
        }
        run_ip(&["link", "set", &self.bridge, "up"], None)?;
        for rule in self.forward_rules() {
            let mut r = rule.to_vec();
            r.push("ACCEPT");
            if let Err(e) = iptables_ensure(&r) {
                tracing::warn!(error = %e, "pods on other bridges may not reach these pods");
            }
        }
        Ok(())
    }

    /// Removes the bridge and its rules (netns mode): the agent stopping for good.
    pub fn teardown(&self) {
        if self.mode != PodNetworkMode::Netns {
            return;
        }
        for rule in self.forward_rules() {
            let mut r = rule.to_vec();
            r.push("ACCEPT");
            iptables_remove(&r);
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            if let Err(e) = run_ip(&["link", "del", &self.bridge], None) {
                tracing::warn!(error = %e, "cannot remove the node's bridge");
            }
        }
    }

    /// The address claimed for pod `uid`, if any.
    fn claimed(&self, uid: &str) -> Option<Ipv4Addr> {
        std::fs::read_dir(&self.claims).ok()?.filter_map(|e| e.ok()).find_map(|e| {
            let owner = std::fs::read_to_string(e.path()).ok()?;
            (owner.trim() == uid).then(|| e.file_name().to_str()?.parse().ok())?
        })
    }

    fn claim(&self, uid: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.claimed(uid) {
            return Ok(ip);
        }
        // .0 is the block, .1 the node, the last the broadcast.
        for i in 2..self.cidr.size().saturating_sub(1) {
            let Some(ip) = self.cidr.nth(i) else { break };
            let path = self.claims.join(ip.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(uid.as_bytes()).map_err(RuntimeError::io(format!("{}", path.display())))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RuntimeError::io(format!("{}", path.display()))(e)),
            }
        }
        Err(RuntimeError::Network(format!("no address left in the node's pod range {}", self.cidr)))
    }

    /// Gives pod `uid` its address (and namespace, in netns mode). Idempotent: a pod
    /// attached before keeps what it has.
    pub fn attach(&self, uid: &str) -> Result<PodAddress> {
        let ip = self.claim(uid)?;
        match self.mode {
            PodNetworkMode::Loopback => return Ok(PodAddress { ip: loopback_of(ip), netns: None }),
            PodNetworkMode::Docker => return Ok(PodAddress { ip, netns: None }),
            PodNetworkMode::Netns => {}
        }
        let path = Path::new(NETNS_DIR).join(Self::ns_name(uid));
        let veth = Self::veth(uid);
        if !Path::new("/sys/class/net").join(&veth).exists() {
            let fail = |what: &str| {
                let what = what.to_string();
                move |e: std::io::Error| RuntimeError::Network(format!("{what}: {e}"))
            };
            let mut host = Netlink::open().map_err(fail("a netlink socket"))?;
            let bridge = host.index(&self.bridge).map_err(fail(&format!("the bridge {}", self.bridge)))?;
            let (prefix, gw) = (self.cidr.prefix, self.node_ip());
            netlink::in_namespace(&path, move || {
                let ns = netlink::this_namespace()?;
                host.veth(&veth, bridge, "eth0", &ns)?;
                let mut inside = Netlink::open()?;
                inside.up("lo")?;
                let eth0 = inside.index("eth0")?;
                inside.address(eth0, ip, prefix)?;
                inside.up("eth0")?;
                inside.default_route(gw)
            })
            .map_err(|e| {
                // Half made: gone, so the next attempt starts clean (the veth goes with it).
                let _ = netlink::remove_namespace(&path);
                RuntimeError::Network(format!("the pod's network ({}): {e}", path.display()))
            })?;
        }
        Ok(PodAddress { ip, netns: Some(path) })
    }

    /// Takes pod `uid`'s address and namespace back.
    pub fn detach(&self, uid: &str) -> Result<()> {
        if self.mode == PodNetworkMode::Netns {
            // The veth first, at once: a namespace only goes when the kernel gets to it
            // (later, under load), and until then its eth0 would still answer for an
            // address the next pod may be given.
            let veth = Self::veth(uid);
            if Path::new("/sys/class/net").join(&veth).exists() {
                match Netlink::open().and_then(|mut nl| nl.delete(&veth)) {
                    Err(e) if e.raw_os_error() != Some(libc::ENODEV) => {
                        return Err(RuntimeError::Network(format!("removing {veth}: {e}")));
                    }
                    _ => {}
                }
            }
            let path = Path::new(NETNS_DIR).join(Self::ns_name(uid));
            if path.exists() {
                netlink::remove_namespace(&path)
                    .map_err(|e| RuntimeError::Network(format!("removing {}: {e}", path.display())))?;
            }
        }
        if let Some(ip) = self.claimed(uid) {
            let _ = std::fs::remove_file(self.claims.join(ip.to_string()));
        }
        Ok(())
    }

    /// The pods (uids) holding an address here.
    pub fn attached(&self) -> Vec<String> {
        std::fs::read_dir(&self.claims)
            .map(|d| d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).map(|s| s.trim().into()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_pods_get_distinct_addresses_that_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("keelson-ipam-{}", std::process::id()));
        let cidr: Cidr = "10.244.3.0/30".parse().unwrap();
        let net = PodNetwork::new(PodNetworkMode::Loopback, "agent-1", cidr, dir.clone());
        net.setup().unwrap();
        assert_eq!(net.node_ip(), Ipv4Addr::new(127, 244, 3, 1));
        let a = net.attach("uid-a").unwrap();
        assert_eq!(a, PodAddress { ip: Ipv4Addr::new(127, 244, 3, 2), netns: None });
        assert_eq!(net.attach("uid-a").unwrap(), a, "the same pod keeps its address");
        assert!(net.attach("uid-b").is_err(), "a /30 has one pod address");
        net.detach("uid-a").unwrap();
        let again = PodNetwork::new(PodNetworkMode::Loopback, "agent-1", cidr, dir.clone());
        assert_eq!(again.attach("uid-b").unwrap().ip, Ipv4Addr::new(127, 244, 3, 2));
        assert_eq!(again.attached(), vec!["uid-b".to_string()]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bridge_and_veth_names_fit_linux_limits() {
        let net = PodNetwork::new(PodNetworkMode::Netns, "agent-1", "10.244.0.0/24".parse().unwrap(), "/x".into());
        assert!(net.bridge().len() <= 15);
        assert!(PodNetwork::veth("0b6a0d8e-5c8e-4c5e-9a54-2f2c1d7c9e11").len() <= 15);
    }
}
