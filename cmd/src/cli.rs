//! The command line: one binary, one subcommand per job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keelson_actors::runtime::KillMode;
use keelson_config::Intensity;

use crate::up::parse_intensity;

#[derive(Parser)]
#[command(
    name = "keelson",
    version,
    about = "A Kubernetes-style orchestrator built as a tree of supervised actors",
    long_about = "A Kubernetes-style orchestrator built as a tree of supervised actors.\n\n\
Start a local cluster with `keelson up` (leave it running), then, from another terminal in\n\
the same folder: `keelson tree` shows every member's supervision tree, `keelson events`\n\
follows restarts as they happen, and `keelson chaos kill /server-1/admin` kills an actor\n\
to watch it come back."
)]
pub struct Cli {
    /// Log format (logs go to stderr; filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The cluster's data folder; commands find a running cluster through it.
    #[arg(long, global = true, env = "KEELSON_DATA_DIR", default_value = "keelson-data")]
    pub data_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a local cluster: its members as supervised child processes (Ctrl-C stops it).
    Up(UpArgs),
    /// Run one control-plane member (what `up` runs for each server).
    Server(ServerArgs),
    /// Run one node agent: a kubelet running pods (or `--hollow N` simulated nodes).
    Agent(AgentArgs),
    /// Own one container of the process runtime (started by the kubelet, not by hand).
    #[command(hide = true)]
    Shim { dir: PathBuf },
    /// Fork a shim for each container folder of ROOT read from standard input (started
    /// once by the process runtime, not by hand).
    #[command(hide = true)]
    ShimSpawner { root: PathBuf },
    /// Print every running member's supervision tree.
    Tree {
        /// Redraw every --interval.
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Print the trees as JSON instead.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
    },
    /// Follow lifecycle events (started, exited with reason, restarting, gave up).
    Events {
        /// Only this member (e.g. server-2, or up for the launcher).
        #[arg(long)]
        member: Option<String>,
    },
    /// Send pings over QUIC from one member to another's probe, through the first one's door.
    Ping(PingArgs),
    /// Break things on purpose.
    #[command(subcommand)]
    Chaos(ChaosCommand),
    /// Join tokens: let a new member join this cluster.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The cluster's members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Make a kubeconfig for another user of the Kubernetes API: a new token with a role.
    Kubeconfig(KubeconfigArgs),
    /// Talk to the replicated store directly (as etcdctl does).
    Kv {
        /// The member to ask (any member answers; default: the first server found).
        #[arg(long, global = true)]
        member: Option<String>,
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Measure; prints figures (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// The store's tuning, the same on `up` (which hands it to each server) and `server`.
#[derive(Args)]
pub struct StoreArgs {
    /// Store shards (each an independent raft group with a replica on every member).
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Snapshot the store (and compact its log) every this many entries.
    #[arg(long, default_value_t = 5_000)]
    pub snapshot_every: u64,
    /// The store's raft heartbeat. It also bounds each log replication round trip, so it
    /// must exceed the round trip between servers (links slower than ~80 ms need more);
    /// the election timeout is 3 to 6 heartbeats, so a lost leader is replaced in that.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub store_heartbeat: Duration,
    /// Events younger than this stay in each shard's watch window beyond its last 10,000
    /// (up to 50,000): how far behind a watcher may fall under a burst before it must list again.
    #[arg(long, default_value = "75s", value_parser = parse_duration)]
    pub event_window_age: Duration,
}

impl StoreArgs {
    /// These flags as a server's command line takes them (how `up` passes them on).
    pub fn to_args(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        vec![
            "--shards".into(),
            self.shards.to_string(),
            "--snapshot-every".into(),
            self.snapshot_every.to_string(),
            "--store-heartbeat".into(),
            ms(self.store_heartbeat),
            "--event-window-age".into(),
            ms(self.event_window_age),
        ]
    }
}

#[derive(Args)]
pub struct UpArgs {
    /// How many server members to run.
    #[arg(long, default_value_t = 3)]
    pub servers: u32,
    /// Do not restart a member process that dies.
    #[arg(long)]
    pub no_restart: bool,
    /// Member restarts tolerated (N/DURATION) before the launcher gives up.
    #[arg(long, default_value = "10/60s", value_parser = parse_intensity)]
    pub intensity: Intensity,
    #[command(flatten)]
    pub store: StoreArgs,
    /// How many node agents to run (`agent-1` …), each a node that runs pods.
    #[arg(long, default_value_t = 2)]
    pub agents: u32,
    /// Also run an agent (`hollow`) with this many hollow nodes (`hollow.0` …): simulated
    /// nodes that run nothing, tainted so only pods that tolerate `keelson.dev/hollow` land there.
    #[arg(long, default_value_t = 0)]
    pub hollow: u32,
    /// The agents' container runtime.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,
    /// How the agents give pods addresses (see `keelson agent --help`).
    #[arg(long, value_enum, default_value_t = NetworkKind::Auto)]
    pub network: NetworkKind,
    /// The agents' first restart back-off (see `keelson agent --help`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub restart_backoff: Duration,
    /// Pod network namespaces each agent keeps made ahead (see `keelson agent --help`).
    #[arg(long, default_value_t = keelson_config::DEFAULT_NETNS_POOL)]
    pub netns_pool: usize,
}

#[derive(Args)]
pub struct AgentArgs {
    /// This agent's name (its node is `NAME`; its hollow nodes are `NAME.0`, `NAME.1`, …).
    #[arg(long)]
    pub name: String,
    /// Where the admin door listens (port 0: any free port, written to the data folder).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// Restarts the root supervisor tolerates (N/DURATION) before the process exits non-zero.
    #[arg(long, default_value = "10/10s", value_parser = parse_intensity)]
    pub root_intensity: Intensity,
    /// Where the QUIC endpoint listens (UDP; port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub quic_listen: SocketAddr,
    /// A server member: NAME=HOST:PORT of its QUIC endpoint (repeat for each).
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(String, SocketAddr)>,
    /// Join the cluster of the server whose QUIC endpoint is at HOST:PORT (first start only).
    #[arg(long, requires = "token")]
    pub join: Option<SocketAddr>,
    /// The join token (`keelson token create` on a server of that cluster).
    #[arg(long, env = "KEELSON_JOIN_TOKEN")]
    pub token: Option<String>,
    /// Run this many hollow nodes instead of a real one.
    #[arg(long, default_value_t = 0)]
    pub hollow: u32,
    /// The container runtime.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,
    /// How pods get addresses: their own network namespaces on a bridge (needs root),
    /// loopback addresses, or auto (namespaces when running as root).
    #[arg(long, value_enum, default_value_t = NetworkKind::Auto)]
    pub network: NetworkKind,
    /// How many pods the node takes.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// The image of each pod's sandbox container (docker runtime), which holds the pod's
    /// network; `scripts/busybox-image.sh` builds it, no registry needed.
    #[arg(long, default_value = "keelson.dev/busybox:1.35")]
    pub sandbox_image: String,
    /// The first wait before restarting a container that exited; it doubles on each
    /// exit up to --restart-backoff-max (Kubernetes: 10s and 5m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub restart_backoff: Duration,
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub restart_backoff_max: Duration,
    /// Pod network namespaces (netns mode) kept made ahead, so that pods starting together
    /// need not each wait for the kernel to make theirs; 0 makes each when its pod starts.
    #[arg(long, default_value_t = keelson_config::DEFAULT_NETNS_POOL)]
    pub netns_pool: usize,
    /// How often each node renews its heartbeat Lease.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// The Lease's life: a node silent this long is lost (NotReady, its pods evicted).
    #[arg(long, default_value_t = 2)]
    pub lease_seconds: u32,
    /// The node's CPU (a Kubernetes quantity; default: this machine's, or 4 for hollow nodes).
    #[arg(long)]
    pub cpu: Option<String>,
    /// The node's memory (a Kubernetes quantity; default: this machine's, or 16Gi for hollow nodes).
    #[arg(long)]
    pub memory: Option<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum RuntimeKind {
    /// Each container a process on this machine, owned by a small shim (no daemon needed).
    Process,
    /// Containers from images, through the local Docker daemon.
    Docker,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Docker => "docker",
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum NetworkKind {
    Auto,
    Netns,
    Loopback,
}

impl NetworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Netns => "netns",
            Self::Loopback => "loopback",
        }
    }
}

#[derive(Args)]
pub struct ServerArgs {
    /// This member's name: the first segment of its actor paths.
    #[arg(long)]
    pub name: String,
    /// Where the admin door listens (port 0: any free port, written to the data folder).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// Restarts the root supervisor tolerates (N/DURATION) before the process exits non-zero.
    #[arg(long, default_value = "10/10s", value_parser = parse_intensity)]
    pub root_intensity: Intensity,
    /// Where the QUIC endpoint listens (UDP).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub quic_listen: SocketAddr,
    /// Where the Kubernetes API listens (HTTPS; port 0: any free port, written to
    /// `<member>/api-addr`). Needs the cluster CA's key in the data folder.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub api_listen: SocketAddr,
    /// Another member: NAME=HOST:PORT of its QUIC endpoint (repeat for each).
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(String, SocketAddr)>,
    /// Seed of the injected-fault pattern (for replaying a lossy run).
    #[arg(long, default_value_t = 1)]
    pub fault_seed: u64,
    /// Join the cluster of the member whose QUIC endpoint is at HOST:PORT (first start
    /// only: the certificate it gets is kept in the data folder).
    #[arg(long, requires = "token")]
    pub join: Option<SocketAddr>,
    /// The join token (`keelson token create` on a member of that cluster).
    #[arg(long, env = "KEELSON_JOIN_TOKEN")]
    pub token: Option<String>,
    /// The store's voters when the cluster is new (member names, this one included;
    /// the first proposes the membership). Default: this member alone.
    #[arg(long, value_delimiter = ',')]
    pub store_members: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// How long pods stay on a node found lost before they are evicted and replaced,
    /// unless they say otherwise (the not-ready/unreachable tolerations every pod gets).
    #[arg(long, default_value_t = 1)]
    pub default_toleration_seconds: u64,
    /// The pods' address range, one block of it per node.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: keelson_config::Cidr,
    /// The size of each node's block (a prefix length).
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Where Services' cluster IPs come from (the nodes' proxies hold them on an
    /// interface of keelson's own; it must not overlap the host's networks).
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cluster_ip_range: keelson_config::Cidr,
    /// Where node ports come from: `low-high`.
    #[arg(long, default_value = "30000-32767", value_parser = port_range)]
    pub service_node_port_range: (u16, u16),
    /// Where the local cloud provider's load balancers get their addresses (a range of
    /// this machine's loopback by default).
    #[arg(long, default_value = "127.97.0.0/24")]
    pub load_balancer_range: keelson_config::Cidr,
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (low, high) = s.split_once('-').ok_or("expected low-high, e.g. 30000-32767")?;
    let parse = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
    Ok((parse(low)?, parse(high)?))
}

#[derive(Subcommand)]
pub enum KvCommand {
    /// Print a key's value (and its revisions with --json).
    Get {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        /// Attach the key to this lease (it goes when the lease does).
        #[arg(long)]
        lease: Option<u64>,
    },
    /// Run a transaction from a JSON file (`-`: standard input): `{"compares":[…],"success":[…],"failure":[…]}`.
    Txn { file: String },
    /// Grant, renew or revoke a lease.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Delete a key.
    Del { key: String },
    /// List keys under a prefix, in order.
    List {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 500)]
        limit: usize,
    },
    /// Each shard's leader, term and revision.
    Status,
    /// Follow changes under a prefix (from now, or after --cursor), reconnecting as needed.
    Watch {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        cursor: Option<String>,
    },
}

#[derive(Args)]
pub struct KubeconfigArgs {
    /// admin, read-only, or node (a node may change only its own Node, Lease and bound pods).
    #[arg(long, default_value = "read-only")]
    pub role: String,
    /// The user's name (as 403 messages name it); default: after the role.
    #[arg(long)]
    pub user: Option<String>,
    /// With --role node: the node's name.
    #[arg(long)]
    pub node: Option<String>,
    /// Where to write it (default: <data>/kubeconfig-<user>).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// With --role node: authenticate with a client certificate from the cluster CA
    /// (`<node>.agent.keelson`) instead of a token.
    #[arg(long)]
    pub cert: bool,
}

#[derive(Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease living TTL (e.g. 10s) without keep-alives; prints its id.
    Grant {
        #[arg(value_parser = humantime_ms)]
        ttl: u64,
    },
    /// Keep a lease alive: renew it every third of its TTL until interrupted (or once, with --once).
    Keepalive {
        id: u64,
        #[arg(long)]
        once: bool,
    },
    /// Revoke a lease now, deleting its keys.
    Revoke { id: u64 },
}

fn humantime_ms(s: &str) -> Result<u64, String> {
    parse_duration(s).map(|d| d.as_millis() as u64)
}

#[derive(Subcommand)]
pub enum MemberCommand {
    /// Each member's name, QUIC address, process id and role in every store shard.
    List,
    /// Add a running member (started with `keelson server --join`) to every store
    /// shard: a learner first, a voter once it has caught up.
    Add {
        name: String,
        /// The member to ask (default: the first server found).
        #[arg(long)]
        member: Option<String>,
    },
    /// Remove a member from every store shard's voters (stop its process afterwards).
    Remove {
        name: String,
        #[arg(long)]
        member: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it.
    Create {
        /// How long it stays valid.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (never their secrets).
    List,
    /// Revoke a join token by id.
    Revoke { id: String },
}

#[derive(Args)]
pub struct PingArgs {
    /// The member to ping.
    pub to: String,
    /// The member that sends the pings.
    #[arg(long)]
    pub from: String,
    #[arg(long, default_value_t = 3)]
    pub count: u32,
    /// Ask for one streamed reply of N items instead.
    #[arg(long, default_value_t = 0)]
    pub stream: u32,
    /// Send N one-way notes first; replies then show how many the probe has received.
    #[arg(long, default_value_t = 0)]
    pub notes: u32,
    /// Deadline of each ping.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub deadline: Duration,
}

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Kill one actor by path, or --random N of them.
    Kill(KillArgs),
    /// Degrade or cut links between members (faults injected in their UDP sockets).
    Net(NetArgs),
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["between", "partition", "heal"]))]
pub struct NetArgs {
    /// Degrade every link among these members, both ways (e.g. server-1,server-2).
    #[arg(long, value_delimiter = ',')]
    pub between: Vec<String>,
    /// Cut this member off from the --from members.
    #[arg(long, requires = "from")]
    pub partition: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub from: Vec<String>,
    /// With --partition: drop only what the --from members send to it.
    #[arg(long, requires = "partition")]
    pub one_way: bool,
    /// Remove every fault on every member.
    #[arg(long)]
    pub heal: bool,
    /// Share of datagrams dropped (20% or 0.2).
    #[arg(long, value_parser = parse_share, default_value = "0")]
    pub loss: f64,
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub delay: Duration,
    /// The delay varies by this much either way.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub jitter: Duration,
    #[arg(long, value_parser = parse_share, default_value = "0")]
    pub duplicate: f64,
    #[arg(long, value_parser = parse_share, default_value = "0")]
    pub reorder: f64,
}

#[derive(Args)]
pub struct KillArgs {
    /// The actor's path, e.g. /server-1/admin.
    #[arg(required_unless_present = "random", conflicts_with = "random")]
    pub path: Option<String>,
    /// panic: crash it inside its own task; stop: make it stop (both count as kills).
    #[arg(long, default_value = "panic", value_parser = parse_mode)]
    pub mode: KillMode,
    /// Kill this many actors chosen at random (roots excepted), printing each path.
    #[arg(long)]
    pub random: Option<u32>,
    /// Pause between random kills.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub every: Duration,
    /// Only paths matching this glob (`*` within a segment, `**` across).
    #[arg(long = "match", default_value = "/**")]
    pub pattern: String,
    /// Seed for the random choice (same seed and tree: same paths).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The supervision runtime: message throughput, restart latency, memory per actor.
    Actors(crate::bench::ActorBenchArgs),
    /// QUIC between two processes: round trips and bulk throughput under injected loss.
    Transport(crate::bench::TransportBenchArgs),
    /// The replicated store (against etcd when installed): puts/s, latency, CPU, fail-over.
    Store(crate::bench::StoreBenchArgs),
    /// The Kubernetes API over HTTPS: pod creates/s, a 10,000-pod `kubectl get pods -A`, watch fan-out.
    Api(crate::bench::ApiBenchArgs),
    /// Scheduling: decisions/s in memory, pods bound/s over thousands of hollow nodes, node loss to pods moved.
    Scheduler(crate::bench::SchedulerBenchArgs),
    /// Real pods: idle memory of `keelson up`, pod startup latency of a Deployment.
    Pods(crate::bench::PodsBenchArgs),
    /// The Service proxy's data path against a direct connection: requests/s, p99, bulk MB/s.
    Proxy(crate::bench::ProxyBenchArgs),
    /// The echo peer `bench transport` starts (not for direct use).
    #[command(hide = true)]
    TransportPeer(crate::bench::TransportPeerArgs),
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    keelson_config::parse_duration(s)
}

fn parse_mode(s: &str) -> Result<KillMode, String> {
    s.parse()
}

fn parse_peer(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=HOST:PORT"))?;
    keelson_config::validate_name(name).map_err(|e| e.to_string())?;
    Ok((name.to_string(), addr.parse().map_err(|e| format!("{addr:?}: {e}"))?))
}

/// `20%` or `0.2`.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a share like 20% or 0.2"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} is not between 0% and 100%"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// What `up` is given for the store reaches each server it starts unchanged.
    #[test]
    fn up_hands_its_store_flags_to_the_servers() {
        let up = ["keelson", "up", "--shards", "2", "--snapshot-every", "100"];
        let up = Cli::try_parse_from(
            up.iter().copied().chain(["--store-heartbeat", "300ms"]).chain(["--event-window-age", "5s"]),
        )
        .unwrap();
        let Command::Up(up) = up.command else { panic!("not up") };
        let server = ["keelson", "server", "--name", "server-1"].map(String::from);
        let server = Cli::try_parse_from(server.into_iter().chain(up.store.to_args())).unwrap();
        let Command::Server(server) = server.command else { panic!("not server") };
        let fields = |s: &StoreArgs| (s.shards, s.snapshot_every, s.store_heartbeat, s.event_window_age);
        assert_eq!(fields(&server.store), (2, 100, Duration::from_millis(300), Duration::from_secs(5)));
        assert_eq!(fields(&server.store), fields(&up.store));
    }
}
