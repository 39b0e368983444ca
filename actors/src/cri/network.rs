//! Pod addresses, from the node's pod CIDR (given by the control plane's node IPAM).
//!
//! - `Netns` (the agent runs as root): the node has a bridge, `kls<hash of node>`,
//!   holding the CIDR's first address (the node's own); each pod gets a network
//!   namespace `keelson-<address>` joined to it by a veth pair `kv<address in hex>`, the
//!   next free address, and a default route through the bridge. Pods bind 0.0.0.0 side
//!   by side; the host reaches every pod through the bridge's route; the bridge's
//!   traffic is let through the host's FORWARD chain (Docker sets it to DROP).
//!
//!   A warm pool: the kernel makes namespaces, links and addresses under one lock
//!   (`rtnl_mutex`), and while many pods start at once each waits for the others there
//!   (a pod's network took 233 ms at the median of a 100-pod burst, most of its start).
//!   So a node keeps a few namespaces made ahead, each with its address and veth, and a
//!   new pod takes one by rewriting the address's claim; the pool is filled again once
//!   the node has been quiet for a moment, never while pods are starting.
//! - `Loopback`: no namespaces; each pod gets the loopback twin of its address
//!   (10.244.3.5 → 127.244.3.5), which every Linux host routes to `lo` already.
//!
//! Only interfaces and namespaces made here are touched; a CIDR that overlaps a route
//! the host already had is refused. Addresses are claimed as files (`<dir>/<ip>` holding
//! the pod's uid), so a restarted kubelet keeps every pod's address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keelson_config::{Cidr, PodNetworkMode};

use crate::hash::fnv1a;

use super::netlink::{self, Netlink};
use super::{Result, RuntimeError};

/// Where named network namespaces live (as `ip netns` keeps them).
const NETNS_DIR: &str = "/run/netns";

/// The CPU priority (nice) a pod makes its own network at, when the pool had none ready.
/// Making one takes the kernel's routing lock (rtnl) for each of a dozen steps; on a node
/// whose CPUs are busy starting other pods, a maker preempted while it holds the lock
/// stalls every other maker, and the pods beyond the pool queue there: they were the
/// tail of a 100-pod burst (BENCHMARKS.md, session 28). Raising needs root, as this mode
/// does; refused, the network is made at the thread's own priority.
const MAKE_NICE: i32 = -10;

/// Runs `f` on this thread at priority `nice`, then gives the thread its own back (it is
/// a pooled blocking thread; the namespace's own thread, spawned meanwhile, inherits it
/// and ends with `f`).
fn at_priority<T>(nice: i32, f: impl FnOnce() -> T) -> T {
    // SAFETY: gettid, getpriority and setpriority on this thread alone; errno is this
    // thread's, cleared first because -1 is also a priority.
    let (tid, before) = unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let before = libc::getpriority(libc::PRIO_PROCESS, tid);
        (tid, (*libc::__errno_location() == 0).then_some(before))
    };
    // The priority to give back, if it was raised.
    // SAFETY: as above.
    let raised_from = before.filter(|&b| b > nice && unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } == 0);
    let out = f();
    if let Some(before) = raised_from {
        // SAFETY: as above; lowering a priority is always allowed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, before) };
    }
    out
}

/// The owner written in the claim of an address held ready in the node's pool.
const POOL: &str = "pool";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    /// The pod's network namespace (`/run/netns/keelson-<address>`), in netns mode.
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub mode: PodNetworkMode,
    cidr: Cidr,
    bridge: String,
    claims: PathBuf,
    /// Addresses whose namespace and veth are made, waiting for a pod (netns mode).
    pool: Arc<Mutex<Vec<Ipv4Addr>>>,
    /// When a pod last took an address: the pool is refilled only after a quiet spell.
    last_taken: Arc<Mutex<Option<Instant>>>,
    /// Where the search for a free address starts: after the last one given, so a freed
    /// address is given again only after the rest of the range (as Kubernetes' host-local
    /// IPAM does), not to the very next pod.
    next: Arc<Mutex<u64>>,
    /// The claims (address → owner) as the files say, read once and kept in step with
    /// every change made here: finding a pod's address read every claim file, which
    /// under a burst of 50 pods a node was 50 reads per pod on the agent's thread.
    owners: Arc<Mutex<Option<BTreeMap<Ipv4Addr, String>>>>,
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
        Self {
            mode,
            cidr,
            bridge: format!("kls{:08x}", fnv1a(node.as_bytes()) as u32),
            claims: dir,
            pool: Arc::default(),
            last_taken: Arc::default(),
            next: Arc::new(Mutex::new(2)),
            owners: Arc::default(),
        }
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

    /// The namespace of the pod (or pool entry) holding `ip`.
    fn ns_path(ip: Ipv4Addr) -> PathBuf {
        Path::new(NETNS_DIR).join(format!("keelson-{ip}"))
    }

    /// The host end of the veth of the pod (or pool entry) holding `ip`.
    fn veth(ip: Ipv4Addr) -> String {
        format!("kv{:08x}", u32::from(ip))
    }

    /// Where keelson before session 18 put a pod's namespace and veth (by its uid): still
    /// found, so pods running across an upgrade keep their network.
    fn legacy(uid: &str) -> (PathBuf, String) {
        (
            Path::new(NETNS_DIR).join(format!("keelson-{uid}")),
            format!("kv{:012x}", fnv1a(uid.as_bytes()) & 0xffff_ffff_ffff),
        )
    }

    fn forward_rules(&self) -> [[&str; 4]; 2] {
        [["FORWARD", "-i", &self.bridge, "-j"], ["FORWARD", "-o", &self.bridge, "-j"]]
    }

    /// Makes the node's bridge (netns mode), refusing a CIDR that overlaps the host's
    /// own routes. Idempotent.
    pub fn setup(&self) -> Result<()> {
        std::fs::create_dir_all(&self.claims).map_err(RuntimeError::io(format!("{}", self.claims.display())))?;
        // A restarted agent goes on after the last address claimed, not from the range's
        // start, where addresses its pods just gave up would be handed out first.
        let offsets = self.owners().into_iter().filter(|(ip, _)| self.cidr.contains(*ip));
        if let Some(last) = offsets.map(|(ip, _)| u64::from(u32::from(ip) - u32::from(self.cidr.base))).max() {
            *self.next.lock().unwrap() = last + 1;
        }
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
        // The pool a restarted agent left: entries still whole are kept, the rest undone.
        let mut pool = self.pool.lock().unwrap();
        pool.clear();
        for ip in self.pooled() {
            if self.cidr.contains(ip) && Self::ns_path(ip).exists() && Self::link_exists(&Self::veth(ip)) {
                pool.push(ip);
            } else {
                self.unpool(ip);
            }
        }
        Ok(())
    }

    fn link_exists(name: &str) -> bool {
        Path::new("/sys/class/net").join(name).exists()
    }

    /// The addresses the claims give to the pool.
    fn pooled(&self) -> Vec<Ipv4Addr> {
        self.owners().into_iter().filter(|(_, owner)| owner == POOL).map(|(ip, _)| ip).collect()
    }

    /// The claims, read from their files the first time.
    fn index(&self) -> std::sync::MutexGuard<'_, Option<BTreeMap<Ipv4Addr, String>>> {
        let mut index = self.owners.lock().unwrap();
        if index.is_none() {
            let read = std::fs::read_dir(&self.claims).into_iter().flatten().filter_map(|e| {
                let e = e.ok()?;
                let ip = e.file_name().to_str()?.parse().ok()?;
                Some((ip, std::fs::read_to_string(e.path()).ok()?.trim().to_string()))
            });
            *index = Some(read.collect());
        }
        index
    }

    /// Notes that `ip` is now `owner`'s (`None`: free), once its claim file says so.
    fn note(&self, ip: Ipv4Addr, owner: Option<&str>) {
        if let Some(index) = self.index().as_mut() {
            match owner {
                Some(o) => index.insert(ip, o.to_string()),
                None => index.remove(&ip),
            };
        }
    }

    /// Every claimed address and its owner.
    fn owners(&self) -> Vec<(Ipv4Addr, String)> {
        self.index().iter().flatten().map(|(ip, owner)| (*ip, owner.clone())).collect()
    }

    /// Undoes a pool entry: its veth, namespace and claim.
    fn unpool(&self, ip: Ipv4Addr) {
        if let Err(e) = Self::unmake(&Self::veth(ip), &Self::ns_path(ip)) {
            tracing::warn!(%ip, error = %e, "cannot undo a pooled pod network");
        }
        self.release(ip);
    }

    /// Makes pool entries until the pool holds `target`, while no pod has taken an
    /// address for `quiet`; how many it made. Blocking.
    pub fn refill(&self, target: usize, quiet: Duration) -> Result<usize> {
        if self.mode != PodNetworkMode::Netns {
            return Ok(0);
        }
        let mut made = 0;
        while self.pool.lock().unwrap().len() < target {
            if self.last_taken.lock().unwrap().is_some_and(|t| t.elapsed() < quiet) {
                break;
            }
            let ip = self.claim_free(POOL)?;
            if let Err(e) = self.make(ip) {
                self.release(ip);
                return Err(e);
            }
            self.pool.lock().unwrap().push(ip);
            made += 1;
        }
        Ok(made)
    }

    /// How many pool entries are ready.
    pub fn pooled_count(&self) -> usize {
        self.pool.lock().unwrap().len()
    }

    /// Gives every address back, the pods' and the pool's, and in netns mode removes
    /// their networks, the bridge and its rules: the agent stopping for good, its
    /// containers stopped.
    ///
    /// No address will be given again by this agent, so each namespace is only
    /// unmounted: the kernel destroys the namespaces, and their veths with them, in one
    /// batch. Deleting each veth first, as a pod's end does so that its address can be
    /// given again at once, waits for the kernel once per veth (~45 ms: a pool of 64 on
    /// each of two nodes made a stop 3 s longer). The kernel's batch is awaited, so
    /// nothing is left when the agent is gone.
    pub fn teardown(&self) {
        let netns = self.mode == PodNetworkMode::Netns;
        self.pool.lock().unwrap().clear();
        let claims = self.owners();
        for (ip, owner) in &claims {
            if netns {
                if owner != POOL {
                    let (path, veth) = Self::legacy(owner);
                    let _ = Self::unmake(&veth, &path);
                }
                if let Err(e) = netlink::remove_namespace(&Self::ns_path(*ip)) {
                    tracing::warn!(%ip, error = %e, "cannot remove a pod network's namespace");
                }
            }
            self.release(*ip);
        }
        if !netns {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let left = || claims.iter().map(|(ip, _)| Self::veth(*ip)).filter(|v| Self::link_exists(v)).collect::<Vec<_>>();
        while !left().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for veth in left() {
            // Still there: a process outside the agent holds its namespace.
            if let Err(e) = Netlink::open().and_then(|mut nl| nl.delete(&veth)) {
                tracing::warn!(%veth, error = %e, "cannot remove a pod network's veth");
            }
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
        self.index().iter().flatten().find(|(_, owner)| *owner == uid).map(|(ip, _)| *ip)
    }

    /// Gives `ip` up: its claim is removed.
    fn release(&self, ip: Ipv4Addr) {
        let _ = std::fs::remove_file(self.claims.join(ip.to_string()));
        self.note(ip, None);
    }

    /// Claims the first free address for `owner`.
    fn claim_free(&self, owner: &str) -> Result<Ipv4Addr> {
        // .0 is the block, .1 the node, the last the broadcast.
        let end = self.cidr.size().saturating_sub(1);
        let mut next = self.next.lock().unwrap();
        let from = (*next).clamp(2, end.max(2));
        for i in (from..end).chain(2..from) {
            let Some(ip) = self.cidr.nth(i) else { break };
            let path = self.claims.join(ip.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(owner.as_bytes()).map_err(RuntimeError::io(format!("{}", path.display())))?;
                    *next = i + 1;
                    self.note(ip, Some(owner));
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RuntimeError::io(format!("{}", path.display()))(e)),
            }
        }
        Err(RuntimeError::Network(format!("no address left in the node's pod range {}", self.cidr)))
    }

    /// Gives pod `uid` a pool entry, if one is ready: its claim is rewritten (a new
    /// file renamed over it, so a crash leaves it the pool's or the pod's, never neither).
    fn take_pooled(&self, uid: &str) -> Result<Option<Ipv4Addr>> {
        let mut pool = self.pool.lock().unwrap();
        *self.last_taken.lock().unwrap() = Some(Instant::now());
        while let Some(ip) = pool.pop() {
            if !Self::ns_path(ip).exists() || !Self::link_exists(&Self::veth(ip)) {
                self.unpool(ip); // taken apart from outside meanwhile
                continue;
            }
            let (path, tmp) = (self.claims.join(ip.to_string()), self.claims.join(format!(".{ip}.{uid}")));
            std::fs::write(&tmp, uid)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(RuntimeError::io(format!("{}", path.display())))?;
            self.note(ip, Some(uid));
            return Ok(Some(ip));
        }
        Ok(None)
    }

    /// Gives pod `uid` its address (and namespace, in netns mode). Idempotent: a pod
    /// attached before keeps what it has.
    pub fn attach(&self, uid: &str) -> Result<PodAddress> {
        let ip = match self.claimed(uid) {
            Some(ip) => ip,
            None if self.mode == PodNetworkMode::Netns => match self.take_pooled(uid)? {
                Some(ip) => return Ok(PodAddress { ip, netns: Some(Self::ns_path(ip)) }),
                None => self.claim_free(uid)?,
            },
            None => self.claim_free(uid)?,
        };
        match self.mode {
            PodNetworkMode::Loopback => return Ok(PodAddress { ip: loopback_of(ip), netns: None }),
            PodNetworkMode::Docker => return Ok(PodAddress { ip, netns: None }),
            PodNetworkMode::Netns => {}
        }
        let (legacy, _) = Self::legacy(uid);
        if legacy.exists() {
            return Ok(PodAddress { ip, netns: Some(legacy) });
        }
        at_priority(MAKE_NICE, || self.make(ip))?;
        Ok(PodAddress { ip, netns: Some(Self::ns_path(ip)) })
    }

    /// Makes the namespace and veth for `ip` (netns mode), unless they are there.
    fn make(&self, ip: Ipv4Addr) -> Result<()> {
        let (path, veth) = (Self::ns_path(ip), Self::veth(ip));
        if Self::link_exists(&veth) {
            if path.exists() {
                return Ok(());
            }
            // A veth whose namespace is gone: one the kernel has yet to destroy after a
            // stop for good (`teardown` leaves that to it). Taken away, and made anew.
            Self::unmake(&veth, &path)?;
        }
        let fail = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| RuntimeError::Network(format!("{what}: {e}"))
        };
        let mut host = Netlink::open().map_err(fail("a netlink socket"))?;
        let bridge = host.index(&self.bridge).map_err(fail(&format!("the bridge {}", self.bridge)))?;
        // The address may have been another pod's, whose MAC the host may still have.
        host.forget_neighbour(bridge, ip).map_err(fail(&format!("forgetting the old neighbour {ip}")))?;
        let (prefix, gw) = (self.cidr.prefix, self.node_ip());
        netlink::in_namespace(&path, move || {
            let ns = netlink::this_namespace()?;
            host.veth(&veth, bridge, "eth0", &ns)?;
            host.no_ipv6_address(&veth)?;
            host.up(&veth)?;
            let mut inside = Netlink::open()?;
            inside.up("lo")?;
            inside.no_ipv6_address("eth0")?;
            let eth0 = inside.index("eth0")?;
            inside.address(eth0, ip, prefix)?;
            inside.up("eth0")?;
            inside.default_route(gw)
        })
        .map_err(|e| {
            // Half made: gone, so the next attempt starts clean (the veth goes with it).
            let _ = netlink::remove_namespace(&path);
            RuntimeError::Network(format!("the pod's network ({}): {e}", path.display()))
        })
    }

    /// Removes a veth and a namespace, whichever are there.
    fn unmake(veth: &str, path: &Path) -> Result<()> {
        // The veth first, at once: a namespace only goes when the kernel gets to it
        // (later, under load), and until then its eth0 would still answer for an
        // address the next pod may be given.
        if Self::link_exists(veth) {
            match Netlink::open().and_then(|mut nl| nl.delete(veth)) {
                Err(e) if e.raw_os_error() != Some(libc::ENODEV) => {
                    return Err(RuntimeError::Network(format!("removing {veth}: {e}")));
                }
                _ => {}
            }
        }
        if path.exists() {
            netlink::remove_namespace(path)
                .map_err(|e| RuntimeError::Network(format!("removing {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Takes pod `uid`'s address and namespace back.
    pub fn detach(&self, uid: &str) -> Result<()> {
        let ip = self.claimed(uid);
        if self.mode == PodNetworkMode::Netns {
            let (path, veth) = Self::legacy(uid);
            Self::unmake(&veth, &path)?;
            if let Some(ip) = ip {
                Self::unmake(&Self::veth(ip), &Self::ns_path(ip))?;
            }
        }
        if let Some(ip) = ip {
            self.release(ip);
        }
        Ok(())
    }

    /// The pods (uids) holding an address here.
    pub fn attached(&self) -> Vec<String> {
        self.owners().into_iter().map(|(_, owner)| owner).filter(|owner| owner != POOL).collect()
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
        // A stop for good gives every address back.
        again.teardown();
        assert!(again.owners().is_empty() && again.attached().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_network_is_made_at_a_raised_priority_and_the_thread_gets_its_own_back() {
        // SAFETY: reading and setting this test thread's own priority.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let before = nice();
        let inside = at_priority(MAKE_NICE, || (nice(), std::thread::spawn(nice).join().unwrap()));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(inside, (MAKE_NICE, MAKE_NICE), "raised, and a thread it starts inherits it");
        } else {
            assert_eq!(inside, (before, before), "without root it runs at its own priority");
        }
        assert_eq!(nice(), before);
    }

    /// Needs root (a bridge, namespaces): skipped, and says so, without it; CI runs as root.
    #[test]
    fn pods_take_namespaces_made_ahead_and_nothing_is_left_behind() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (network namespaces and a bridge)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("keelson-pool-{}", std::process::id()));
        let cidr: Cidr = "10.254.77.0/28".parse().unwrap();
        let node = format!("pool-test-{}", std::process::id());
        let net = PodNetwork::new(PodNetworkMode::Netns, &node, cidr, dir.clone());
        net.setup().unwrap();
        assert_eq!(net.refill(3, Duration::from_secs(1)).unwrap(), 3);
        assert_eq!(net.pooled_count(), 3);
        assert!(net.attached().is_empty(), "pool entries are nobody's pods");
        let pooled = net.pooled();
        let a = net.attach("uid-a").unwrap();
        assert!(pooled.contains(&a.ip), "{a:?} came from the pool {pooled:?}");
        assert_eq!(a.netns.as_deref(), Some(PodNetwork::ns_path(a.ip).as_path()));
        assert!(a.netns.as_ref().unwrap().exists() && PodNetwork::link_exists(&PodNetwork::veth(a.ip)));
        assert_eq!(net.attach("uid-a").unwrap(), a, "the same pod keeps its address");
        assert_eq!((net.pooled_count(), net.attached()), (2, vec!["uid-a".to_string()]));
        // No refill right after a pod took one; one after a quiet spell.
        assert_eq!(net.refill(3, Duration::from_secs(60)).unwrap(), 0);
        assert_eq!(net.refill(3, Duration::ZERO).unwrap(), 1);
        // A restarted agent finds its pool again.
        let again = PodNetwork::new(PodNetworkMode::Netns, &node, cidr, dir.clone());
        again.setup().unwrap();
        assert_eq!(again.pooled_count(), 3);
        let b = again.attach("uid-b").unwrap();
        assert!(b.ip != a.ip && b.netns.as_ref().unwrap().exists());
        again.detach("uid-a").unwrap();
        assert!(!PodNetwork::ns_path(a.ip).exists() && !PodNetwork::link_exists(&PodNetwork::veth(a.ip)));
        // Links named as veths of free addresses, with no namespace: what a stop for good
        // leaves until the kernel destroys its namespaces. A new entry replaces its own.
        let claimed: Vec<Ipv4Addr> = again.owners().into_iter().map(|(ip, _)| ip).collect();
        let lingering: Vec<(Ipv4Addr, String)> = (2..cidr.size() - 1)
            .filter_map(|i| cidr.nth(i))
            .filter(|ip| !claimed.contains(ip))
            .map(|ip| (ip, format!("kt{:08x}", u32::from(ip))))
            .collect();
        for (ip, peer) in &lingering {
            run_ip(&["link", "add", &PodNetwork::veth(*ip), "type", "veth", "peer", "name", peer], None).unwrap();
        }
        assert_eq!(again.refill(again.pooled_count() + 1, Duration::ZERO).unwrap(), 1);
        let made = *again.pooled().iter().find(|ip| !claimed.contains(ip)).expect("a new entry");
        let (_, old_peer) = lingering.iter().find(|(ip, _)| *ip == made).expect("made over a lingering veth");
        assert!(PodNetwork::ns_path(made).exists() && PodNetwork::link_exists(&PodNetwork::veth(made)));
        assert!(!PodNetwork::link_exists(old_peer), "the lingering pair is gone, a new one made");
        for (ip, _) in lingering.iter().filter(|(ip, _)| *ip != made) {
            run_ip(&["link", "del", &PodNetwork::veth(*ip)], None).unwrap();
        }
        // A stop for good takes down the pods' networks (uid-b's) and the pool's alike.
        let left: Vec<Ipv4Addr> = again.owners().into_iter().map(|(ip, _)| ip).collect();
        assert_eq!(left.len(), 4, "uid-b and three pool entries");
        again.teardown();
        for ip in left {
            assert!(!PodNetwork::ns_path(ip).exists() && !PodNetwork::link_exists(&PodNetwork::veth(ip)), "{ip}");
        }
        assert!(again.owners().is_empty(), "every claim is gone");
        assert!(!PodNetwork::link_exists(again.bridge()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_restarted_network_hands_out_addresses_after_the_last_claimed() {
        let dir = std::env::temp_dir().join(format!("keelson-ipam-next-{}", std::process::id()));
        let cidr: Cidr = "10.244.5.0/28".parse().unwrap();
        let net = PodNetwork::new(PodNetworkMode::Loopback, "agent-1", cidr, dir.clone());
        net.setup().unwrap();
        let ips: Vec<u8> = ["a", "b", "c"].iter().map(|u| net.attach(u).unwrap().ip.octets()[3]).collect();
        assert_eq!(ips, vec![2, 3, 4]);
        net.detach("a").unwrap();
        net.detach("b").unwrap();
        // As if the agent restarted: .2 and .3 were just given up, so the next is .5.
        let again = PodNetwork::new(PodNetworkMode::Loopback, "agent-1", cidr, dir.clone());
        again.setup().unwrap();
        assert_eq!(again.attach("d").unwrap().ip, Ipv4Addr::new(127, 244, 5, 5));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bridge_and_veth_names_fit_linux_limits() {
        let net = PodNetwork::new(PodNetworkMode::Netns, "agent-1", "10.244.0.0/24".parse().unwrap(), "/x".into());
        assert!(net.bridge().len() <= 15);
        assert!(PodNetwork::veth(Ipv4Addr::new(10, 244, 255, 254)).len() <= 15);
        assert!(PodNetwork::legacy("0b6a0d8e-5c8e-4c5e-9a54-2f2c1d7c9e11").1.len() <= 15);
    }
}
