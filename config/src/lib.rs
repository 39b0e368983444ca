//! Typed configuration for every keelson component.
//!
//! `cmd` parses flags (and, later, files) once, calls [`MemberConfig::validate`],
//! and hands each supervisor its slice at construction. No actor reads the
//! environment or a file on its own: tests build these structs in code, e.g.
//! `SupervisorConfig { intensity: Intensity::new(3, secs(1)), ..Default::default() }`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What went wrong with a configuration; each variant names the offending setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{field}: {problem}")]
    Invalid { field: &'static str, problem: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error::Invalid { field, problem: problem.into() }
}

/// Restart intensity: at most `max_restarts` restarts within `period`; one more and
/// the supervisor stops its children and itself, and its parent decides (escalation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intensity {
    pub max_restarts: u32,
    #[serde(with = "millis")]
    pub period: Duration,
}

impl Intensity {
    pub const fn new(max_restarts: u32, period: Duration) -> Self {
        Self { max_restarts, period }
    }
}

impl Default for Intensity {
    /// Erlang/OTP's default is 1 in 5 s; keelson's components restart cheaply and are
    /// killed on purpose by chaos tests, so the default tolerates a burst of ten.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(10))
    }
}

impl std::str::FromStr for Intensity {
    type Err = Error;

    /// Parses `N/DURATION`, e.g. `10/10s` or `3/500ms`.
    fn from_str(s: &str) -> Result<Self> {
        let (n, period) =
            s.split_once('/').ok_or_else(|| invalid("intensity", format!("{s:?} is not N/DURATION (e.g. 10/10s)")))?;
        let max_restarts = n.trim().parse().map_err(|_| invalid("intensity", format!("{n:?} is not a count")))?;
        let period = parse_duration(period.trim()).map_err(|p| invalid("intensity", p))?;
        Ok(Self { max_restarts, period })
    }
}

/// Exponential back-off between restarts of the same child. The first restart after a
/// quiet spell is immediate (a single crash should cost nothing); each further restart
/// inside the intensity window doubles the delay from `initial` up to `max`, and the
/// delay is spread by ±`jitter` (a fraction) so siblings do not restart in lock step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    #[serde(with = "millis")]
    pub initial: Duration,
    #[serde(with = "millis")]
    pub max: Duration,
    pub jitter: f64,
}

impl Backoff {
    /// No delay at all: restarts as fast as the runtime can (benchmarks, storm tests).
    pub const fn none() -> Self {
        Self { initial: Duration::ZERO, max: Duration::ZERO, jitter: 0.0 }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(10), max: Duration::from_secs(5), jitter: 0.2 }
    }
}

/// How a supervisor runs its children.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct SupervisorConfig {
    pub intensity: Intensity,
    pub backoff: Backoff,
    /// Seed of the jitter source, so a run can be replayed.
    pub seed: u64,
}

impl SupervisorConfig {
    pub fn validate(self) -> Result<Self> {
        if self.intensity.period.is_zero() {
            return Err(invalid("intensity.period", "must be longer than zero"));
        }
        if !(0.0..=1.0).contains(&self.backoff.jitter) {
            return Err(invalid("backoff.jitter", "must be a fraction between 0 and 1"));
        }
        if self.backoff.initial > self.backoff.max {
            return Err(invalid("backoff.initial", "must not exceed backoff.max"));
        }
        Ok(self)
    }
}

/// The member's observation and chaos door (HTTP on loopback, bearer token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminConfig {
    /// Where to listen; port 0 lets the OS pick, and the chosen address is written
    /// to `<data>/admin.json` for `keelson tree` and friends to find.
    pub listen: SocketAddr,
    /// The admin token; requests that change anything must carry it.
    pub token: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 0)), token: String::new() }
    }
}

/// One keelson process (a server member, an agent, or the `up` launcher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberConfig {
    /// The member's name: the first segment of every actor path in it.
    pub name: String,
    /// This member's own folder (`<cluster data>/<name>`).
    pub data_dir: PathBuf,
    pub admin: AdminConfig,
    /// The root supervisor's policy; past its intensity the process exits non-zero.
    pub root: SupervisorConfig,
}

impl MemberConfig {
    pub fn validate(self) -> Result<Self> {
        validate_name(&self.name)?;
        if self.admin.token.len() < 16 {
            return Err(invalid("admin.token", "must be at least 16 characters"));
        }
        let root = self.root.validate()?;
        Ok(Self { root, ..self })
    }
}

/// The replicated store of a server member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Raft groups; keys map to them by their (resource, namespace) prefix.
    pub shards: u32,
    /// `<member data>/store`.
    pub dir: PathBuf,
    /// The voters of a new cluster (member names), in order; shard k is proposed by
    /// member k mod n. Empty for a member that joined and waits to be added.
    pub members: Vec<String>,
    /// Election timeout, randomised between the two.
    #[serde(with = "millis_pair")]
    pub election_timeout: (Duration, Duration),
    #[serde(with = "millis")]
    pub heartbeat: Duration,
    /// Build a snapshot (and purge the log before it, keeping as many entries again for
    /// followers that are behind) after this many entries.
    pub snapshot_every: u64,
    /// How long a client operation may take, forwarding included.
    #[serde(with = "millis")]
    pub deadline: Duration,
    /// How much history each shard keeps for watchers that are behind.
    pub event_window: EventWindow,
}

/// A shard's window of recent events: the last `min` whatever their age, and beyond
/// that up to `max` younger than `age` (as Kubernetes' watch cache keeps 75 s). A
/// watcher or paginated list older than the window is told 410 Expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventWindow {
    pub min: usize,
    pub max: usize,
    #[serde(with = "millis")]
    pub age: Duration,
}

impl Default for EventWindow {
    fn default() -> Self {
        Self { min: 10_000, max: 50_000, age: Duration::from_secs(75) }
    }
}

impl StoreConfig {
    pub fn new(dir: PathBuf, members: Vec<String>) -> Self {
        Self {
            shards: 1,
            dir,
            members,
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            heartbeat: Duration::from_millis(100),
            snapshot_every: 5_000,
            deadline: Duration::from_secs(5),
            event_window: EventWindow::default(),
        }
    }

    /// The raft heartbeat `every`, with the election timeout at 3 to 6 of them (the
    /// defaults' ratio). openraft 0.9 also bounds each AppendEntries by the heartbeat:
    /// over a link whose round trip is longer, every replication times out and no write
    /// commits, so a slow link needs a longer heartbeat (as etcd's tuning guide says to
    /// set its heartbeat near the round trip).
    pub fn with_heartbeat(self, every: Duration) -> Self {
        Self { heartbeat: every, election_timeout: (every * 3, every * 6), ..self }
    }

    pub fn validate(self) -> Result<Self> {
        if !(1..=64).contains(&self.shards) {
            return Err(invalid("store.shards", format!("{} is not 1 to 64", self.shards)));
        }
        for m in &self.members {
            validate_name(m)?;
        }
        if self.members.len() > 7 {
            return Err(invalid("store.members", "at most 7 voters (1, 3 or 5 is the usual)"));
        }
        if self.heartbeat < Duration::from_millis(10) || self.heartbeat > Duration::from_secs(10) {
            return Err(invalid("store.heartbeat", "10 ms to 10 s"));
        }
        let (min, max) = self.election_timeout;
        if min >= max || min <= self.heartbeat * 2 {
            return Err(invalid("store.election_timeout", "must be a range above twice the heartbeat"));
        }
        if self.snapshot_every < 10 {
            return Err(invalid("store.snapshot_every", "at least 10 entries"));
        }
        let w = self.event_window;
        if w.min < 100 || w.max < w.min {
            return Err(invalid("store.event_window", "at least 100 events, and max no less than min"));
        }
        Ok(self)
    }
}

mod millis_pair {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &(Duration, Duration), s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq([d.0.as_millis() as u64, d.1.as_millis() as u64])
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(Duration, Duration), D::Error> {
        let (a, b) = <(u64, u64)>::deserialize(d)?;
        Ok((Duration::from_millis(a), Duration::from_millis(b)))
    }
}

/// A member or actor name: lower-case letters, digits and '-', as Kubernetes names are.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid("name", format!("{name:?} must be 1-63 of [a-z0-9-], not starting or ending with '-'")))
    }
}

/// Parses `250ms`, `2s`, `1m`, `1h` (an integer and a unit).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration like 250ms, 2s, 1m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    Ok(d)
}

/// Serde for a `Duration` as whole milliseconds (`#[serde(with = "keelson_config::millis")]`).
pub mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_config_validates() {
        let ok = StoreConfig::new("/tmp/s".into(), vec!["server-1".into()]);
        assert!(ok.clone().validate().is_ok());
        assert!(StoreConfig { shards: 0, ..ok.clone() }.validate().is_err());
        assert!(StoreConfig { snapshot_every: 3, ..ok.clone() }.validate().is_err());
        let slow = ok.clone().with_heartbeat(Duration::from_millis(300)).validate().unwrap();
        assert_eq!(slow.election_timeout, (Duration::from_millis(900), Duration::from_millis(1800)));
        assert_eq!(ok.clone().with_heartbeat(Duration::from_millis(100)).election_timeout, ok.election_timeout);
        assert!(ok.clone().with_heartbeat(Duration::from_millis(1)).validate().is_err());
        let window = |min, max| EventWindow { min, max, ..EventWindow::default() };
        assert!(StoreConfig { event_window: window(10, 50), ..ok.clone() }.validate().is_err());
        assert!(StoreConfig { event_window: window(2_000, 1_000), ..ok.clone() }.validate().is_err());
        assert!(StoreConfig { event_window: window(1_000, 1_000), ..ok.clone() }.validate().is_ok());
        assert!(StoreConfig { members: vec!["Bad Name".into()], ..ok.clone() }.validate().is_err());
        let slow_heartbeat = StoreConfig { heartbeat: Duration::from_millis(200), ..ok };
        assert!(slow_heartbeat.validate().is_err());
    }

    #[test]
    fn intensity_parses_and_rejects() {
        assert_eq!("3/500ms".parse::<Intensity>().unwrap(), Intensity::new(3, Duration::from_millis(500)));
        assert_eq!("10/10s".parse::<Intensity>().unwrap(), Intensity::default());
        assert!("10".parse::<Intensity>().is_err());
        assert!("x/1s".parse::<Intensity>().is_err());
        assert!("1/1y".parse::<Intensity>().is_err());
    }

    #[test]
    fn supervisor_config_is_checked() {
        let bad = SupervisorConfig { intensity: Intensity::new(1, Duration::ZERO), ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = SupervisorConfig { backoff: Backoff { jitter: 1.5, ..Backoff::default() }, ..Default::default() };
        assert!(bad.validate().is_err());
        assert!(SupervisorConfig::default().validate().is_ok());
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(validate_name("server-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a/b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn member_config_needs_a_real_token() {
        let cfg = MemberConfig {
            name: "server-1".into(),
            data_dir: "/tmp/x".into(),
            admin: AdminConfig::default(),
            root: SupervisorConfig::default(),
        };
        assert_eq!(cfg.clone().validate().unwrap_err(), invalid("admin.token", "must be at least 16 characters"));
        let ok = MemberConfig { admin: AdminConfig { token: "0123456789abcdef".into(), ..cfg.admin.clone() }, ..cfg };
        assert!(ok.validate().is_ok());
    }
}

/// What the control plane decides on behalf of workloads: admission defaults, and how
/// soon a silent node counts as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneConfig {
    /// The `tolerationSeconds` of the not-ready/unreachable tolerations every pod gets
    /// unless it says otherwise (Kubernetes: 300): how long its pods stay on a node
    /// found lost before they are evicted and replaced elsewhere.
    pub default_toleration_seconds: u64,
    /// The pods' address range, cut into one `node_cidr_prefix` block per node
    /// (Kubernetes' `--cluster-cidr` and `--node-cidr-mask-size`).
    pub cluster_cidr: Cidr,
    pub node_cidr_prefix: u8,
    /// Where Services' cluster IPs come from (`--service-cluster-ip-range`): held by the
    /// nodes' proxies on an interface of the project's own, so it must not overlap
    /// the host's networks.
    pub service_cidr: Cidr,
    /// Where node ports come from (`--service-node-port-range`), inclusive.
    pub node_ports: (u16, u16),
    /// Where the `local` cloud provider's load balancers get their addresses
    /// (`--load-balancer-range`; loopback by default: local with no link, reachable
    /// from the host).
    pub load_balancer_cidr: Cidr,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            default_toleration_seconds: 1,
            cluster_cidr: Cidr::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16),
            node_cidr_prefix: 24,
            service_cidr: Cidr::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 16),
            node_ports: (30000, 32767),
            load_balancer_cidr: Cidr::new(std::net::Ipv4Addr::new(127, 97, 0, 0), 24),
        }
    }
}

impl ControlPlaneConfig {
    pub fn validate(self) -> Result<Self> {
        if self.node_cidr_prefix < self.cluster_cidr.prefix || self.node_cidr_prefix > 30 {
            return Err(invalid(
                "node_cidr_prefix",
                format!("must lie between the cluster range's /{} and /30", self.cluster_cidr.prefix),
            ));
        }
        if self.service_cidr.prefix > 30 || self.service_cidr.overlaps(&self.cluster_cidr) {
            return Err(invalid("service_cidr", "must hold at least 2 addresses and not overlap the pods' range"));
        }
        if self.node_ports.0 == 0 || self.node_ports.0 > self.node_ports.1 {
            return Err(invalid("node_ports", "must be a range low-high of ports above 0"));
        }
        Ok(self)
    }
}

/// An IPv4 block, `10.244.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cidr {
    pub base: std::net::Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// The block of `prefix` bits holding `addr` (host bits cleared).
    pub fn new(addr: std::net::Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Self { base: std::net::Ipv4Addr::from(u32::from(addr) & Self::mask(prefix)), prefix }
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// How many addresses it spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// Its `i`-th address (0: the block's own address).
    pub fn nth(&self, i: u64) -> Option<std::net::Ipv4Addr> {
        (i < self.size()).then(|| std::net::Ipv4Addr::from(u32::from(self.base) + i as u32))
    }

    pub fn contains(&self, addr: std::net::Ipv4Addr) -> bool {
        u32::from(addr) & Self::mask(self.prefix) == u32::from(self.base)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// Its `i`-th sub-block of `prefix` bits.
    pub fn subnet(&self, prefix: u8, i: u64) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 || i >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        let step = 1u64 << (32 - u32::from(prefix));
        Some(Cidr { base: std::net::Ipv4Addr::from(u32::from(self.base) + (i * step) as u32), prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || invalid("cidr", format!("{s:?} is not an IPv4 block such as 10.244.0.0/16"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        Ok(Self::new(addr, prefix))
    }
}

/// A node's heartbeat: how often its kubelet renews its Lease, and the lease's life
/// (`leaseDurationSeconds`): once that passes unrenewed, the node lifecycle controller
/// calls it lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatConfig {
    pub renew: Duration,
    pub lease_seconds: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self { renew: Duration::from_millis(500), lease_seconds: 2 }
    }
}

impl HeartbeatConfig {
    pub fn validate(self) -> Result<Self> {
        if self.lease_seconds == 0 {
            return Err(invalid("lease_seconds", "must be at least 1"));
        }
        if self.renew.is_zero() || self.renew >= Duration::from_secs(self.lease_seconds.into()) {
            return Err(invalid("renew", format!("must be above 0 and below the lease ({} s)", self.lease_seconds)));
        }
        Ok(self)
    }
}

/// How a node's pods get their addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodNetworkMode {
    /// Each pod in its own network namespace on a bridge the agent makes (needs root):
    /// pods bind any address and port, side by side.
    Netns,
    /// Each pod gets its own loopback address (127.x.y.z) and shares the host's network:
    /// works unprivileged; pods must bind their `POD_IP`.
    Loopback,
    /// The docker runtime's: each pod's address on a Docker network the runtime makes
    /// for the node (its sandbox container holds the pod's network namespace).
    Docker,
}

/// What a node's kubelet runs with (`keelson agent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConfig {
    pub heartbeat: HeartbeatConfig,
    pub network: PodNetworkMode,
    /// Where containers' files (specs, logs, exit records) and address claims live.
    pub root_dir: PathBuf,
    /// The node's capacity (Kubernetes quantities) and pod count.
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    /// The first wait before restarting a container that exited (doubling each time up
    /// to `restart_backoff_max`; Kubernetes: 10 s and 300 s).
    pub restart_backoff_base: Duration,
    pub restart_backoff_max: Duration,
    /// How often a pod worker looks at its containers (exits, probes due).
    pub sync_every: Duration,
    /// Pod network namespaces kept made ahead (netns mode): a burst of pod starts takes
    /// them instead of queueing on the kernel's routing lock for new ones. Each costs
    /// the kernel about a quarter of a megabyte while it waits; never more are kept
    /// than the node takes pods.
    pub netns_pool: usize,
}

/// The default `netns_pool`: a Deployment of 100 spread over two nodes starts with no
/// namespace made in its burst. Each one made in a burst cost about 1.4 ms of CPU and
/// was on the burst's tail (BENCHMARKS.md, session 30); 64 ready cost the kernel about
/// 15 MB per node.
pub const DEFAULT_NETNS_POOL: usize = 64;

impl KubeletConfig {
    pub fn validate(self) -> Result<Self> {
        self.heartbeat.validate()?;
        if self.restart_backoff_base.is_zero() || self.restart_backoff_max < self.restart_backoff_base {
            return Err(invalid("restart_backoff", "the base must be above 0 and at most the maximum"));
        }
        if self.pods == 0 {
            return Err(invalid("pods", "must be at least 1"));
        }
        if self.sync_every.is_zero() {
            return Err(invalid("sync_every", "must be above 0"));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod cidr_tests {
    use super::*;

    #[test]
    fn blocks_parse_split_and_contain() {
        let c: Cidr = "10.244.7.9/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.244.3.0/24");
        assert!(c.subnet(24, 256).is_none());
        let n = c.subnet(24, 3).unwrap();
        assert_eq!(n.nth(1).unwrap().to_string(), "10.244.3.1");
        assert!(n.contains("10.244.3.200".parse().unwrap()) && !n.contains("10.244.4.1".parse().unwrap()));
        assert!(c.overlaps(&n) && n.overlaps(&c) && !n.overlaps(&c.subnet(24, 4).unwrap()));
        for bad in ["10.244.0.0", "10.244.0.0/33", "x/8", "10.244.0/16"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
        let mut cp = ControlPlaneConfig::default();
        assert!(cp.validate().is_ok());
        cp.node_cidr_prefix = 8;
        assert!(cp.validate().is_err());
    }
}
