//! `keelson`: the one binary. See `keelson --help`.

mod allocator;
mod bench;
mod cli;
mod client;
mod datadir;
mod joined;
mod kubeconfig;
mod kv;
mod member;
mod members;
mod observe;
mod pki;
mod render;
mod tokens;
mod up;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use keelson_actors::api::HttpsSetup;
use keelson_actors::cri::{volatile, ContainerRuntime, DockerRuntime, ProcessRuntime};
use keelson_actors::kubelet::HollowConfig;
use keelson_actors::member::{agent_tree, server_tree, AgentNode, ServerParts};
use keelson_actors::store::StoreConfig;
use keelson_actors::transport::{Admission, Router};
use keelson_config::{
    AdminConfig, Backoff, ControlPlaneConfig, EventWindow, HeartbeatConfig, KubeletConfig, MemberConfig,
    PodNetworkMode, SupervisorConfig,
};
use keelson_transport::tls::{Identity, Role};
use keelson_transport::{Transport, TransportConfig};
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

use cli::{BenchCommand, ChaosCommand, Cli, Command, LogFormat, MemberCommand, NetworkKind, TokenCommand};
use datadir::DataDir;

/// The member's HTTPS API: bound now (so the port is known before anything serves),
/// with a serving certificate from the cluster CA for the addresses clients dial.
/// A member without the CA's key (one that joined) serves no API.
fn api_setup(data: &DataDir, name: &str, listen: std::net::SocketAddr) -> Result<Option<HttpsSetup>> {
    let Some(ca) = pki::ca_if_present(data)? else {
        tracing::info!("no cluster CA key here: this member serves no Kubernetes API");
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("cannot bind the API on {listen}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let hosts = vec![addr.ip().to_string(), "127.0.0.1".into(), "localhost".into(), name.to_string()];
    let (cert, key) = ca.issue_https(name, &hosts)?;
    let tls = keelson_transport::tls::https_server_config(&cert, &key, &ca.cert_pem)?;
    std::fs::write(data.member_dir(name)?.join("api-addr"), addr.to_string())?;
    Ok(Some(HttpsSetup { listener: Arc::new(listener), tls: Arc::new(tls) }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The shim and its spawner stay small: no logging set-up, no runtime.
    match &cli.command {
        Command::Shim { dir } => return ExitCode::from(keelson_actors::cri::shim::run(dir) as u8),
        Command::ShimSpawner { root } => return ExitCode::from(keelson_actors::cri::spawner::serve(root) as u8),
        _ => {}
    }
    let quiet = !matches!(cli.command, Command::Up(_) | Command::Server(_) | Command::Agent(_));
    init_logging(cli.log_format, if quiet { "warn" } else { "info" });
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("keelson: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: members' logs go to files (`keelson.log`), read and
    // searched as text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn dispatch(cli: Cli) -> Result<i32> {
    let data_dir = cli.data_dir;
    match cli.command {
        Command::Up(args) => up::run(args, &data_dir, cli.log_format.as_str()),
        Command::Server(args) => server(args, &data_dir),
        Command::Agent(args) => agent(args, &data_dir),
        Command::Shim { .. } | Command::ShimSpawner { .. } => unreachable!("dispatched in main"),
        Command::Tree { watch, interval, json } => {
            let data = DataDir::existing(&data_dir)?;
            block_on(observe::tree(&data, json, watch.then_some(interval)))
        }
        Command::Events { member } => block_on(observe::events(&DataDir::existing(&data_dir)?, member)),
        Command::Ping(p) => {
            let data = DataDir::existing(&data_dir)?;
            actix_rt::System::new().block_on(observe::ping(&data, p))
        }
        Command::Chaos(ChaosCommand::Net(n)) => block_on(observe::net(&DataDir::existing(&data_dir)?, n)),
        Command::Chaos(ChaosCommand::Kill(k)) => {
            let data = DataDir::existing(&data_dir)?;
            match (k.path, k.random) {
                (Some(path), _) => block_on(observe::kill(&data, &path, k.mode)),
                (None, Some(n)) => block_on(observe::kill_random(&data, n, k.every, &k.pattern, k.mode, k.seed)),
                (None, None) => unreachable!("clap requires a path or --random"),
            }
        }
        Command::Bench(BenchCommand::Actors(args)) => bench::actors(args).map(|()| 0),
        Command::Bench(BenchCommand::Transport(args)) => bench::transport(args).map(|()| 0),
        Command::Bench(BenchCommand::Store(args)) => bench::store(args).map(|()| 0),
        Command::Bench(BenchCommand::Api(args)) => bench::api(args).map(|()| 0),
        Command::Bench(BenchCommand::Scheduler(args)) => bench::scheduler(args).map(|()| 0),
        Command::Bench(BenchCommand::Pods(args)) => bench::pods(args).map(|()| 0),
        Command::Bench(BenchCommand::Proxy(args)) => bench::proxy(args).map(|()| 0),
        Command::Bench(BenchCommand::TransportPeer(args)) => bench::transport_peer(args).map(|()| 0),
        Command::Kubeconfig(args) => {
            let data = DataDir::existing(&data_dir)?;
            let path = actix_rt::System::new().block_on(kubeconfig::make(&data, args))?;
            println!("export KUBECONFIG={}", path.display());
            Ok(0)
        }
        Command::Member(MemberCommand::List) => {
            let data = DataDir::existing(&data_dir)?;
            print!("{}", actix_rt::System::new().block_on(members::list(&data))?);
            Ok(0)
        }
        Command::Member(MemberCommand::Add { name, member }) => {
            let data = DataDir::existing(&data_dir)?;
            actix_rt::System::new().block_on(members::change(&data, member, &name, "add"))?;
            Ok(0)
        }
        Command::Member(MemberCommand::Remove { name, member }) => {
            let data = DataDir::existing(&data_dir)?;
            actix_rt::System::new().block_on(members::change(&data, member, &name, "remove"))?;
            Ok(0)
        }
        Command::Kv { member, command } => {
            let data = DataDir::existing(&data_dir)?;
            actix_rt::System::new().block_on(kv::run(&data, member, command))
        }
        Command::Token(t) => {
            let data = DataDir::existing(&data_dir)?;
            match t {
                TokenCommand::Create { ttl, description } => println!("{}", tokens::create(&data, ttl, &description)?),
                TokenCommand::List => print!("{}", tokens::list(&data)?),
                TokenCommand::Revoke { id } => {
                    tokens::revoke(&data, &id)?;
                    println!("revoked {id}");
                }
            }
            Ok(0)
        }
    }
}

fn block_on(fut: impl std::future::Future<Output = Result<()>>) -> Result<i32> {
    actix_rt::System::new().block_on(fut).map(|()| 0)
}

/// What a member process (server or agent) starts from: its configuration, its bound
/// QUIC socket, its credentials (kept from before, issued here by the CA, or got by
/// joining with a token) and the members it knows.
struct MemberStart {
    cfg: MemberConfig,
    socket: std::net::UdpSocket,
    quic: std::net::SocketAddr,
    creds: keelson_transport::tls::Credentials,
    peers: Vec<(Identity, std::net::SocketAddr)>,
}

impl MemberStart {
    fn new(
        data: &DataDir,
        identity: Identity,
        (admin_listen, root_intensity): (std::net::SocketAddr, keelson_config::Intensity),
        quic_listen: std::net::SocketAddr,
        join: Option<(std::net::SocketAddr, String)>,
    ) -> Result<Self> {
        let cfg = MemberConfig {
            name: identity.name.clone(),
            data_dir: data.member_dir(&identity.name)?,
            admin: AdminConfig { listen: admin_listen, token: data.token()? },
            root: SupervisorConfig {
                intensity: root_intensity,
                backoff: Backoff::default(),
                seed: std::process::id() as u64,
            },
        }
        .validate()?;
        let socket =
            std::net::UdpSocket::bind(quic_listen).with_context(|| format!("cannot bind QUIC on {quic_listen}"))?;
        let quic = socket.local_addr()?;
        let (creds, peers) = match (pki::stored(data, &identity)?, join) {
            (Some(creds), _) => (creds, joined::peers(data, &identity)?),
            (None, Some((addr, token))) => joined::join(data, &identity, addr, &token, quic)?,
            (None, None) => (pki::credentials(data, &pki::ca(data)?, &identity)?, Vec::new()),
        };
        Ok(Self { cfg, socket, quic, creds, peers })
    }
}

fn server(args: cli::ServerArgs, data_dir: &std::path::Path) -> Result<i32> {
    keelson_config::validate_name(&args.name)?;
    let data = DataDir::open(data_dir)?;
    let m = MemberStart::new(
        &data,
        Identity::new(&args.name, Role::Server)?,
        (args.admin_listen, args.root_intensity),
        args.quic_listen,
        args.join.map(|a| (a, args.token.clone().unwrap_or_default())),
    )?;
    let MemberStart { cfg, socket, quic, creds, mut peers } = m;
    // A member holding the CA's key can admit new members.
    let admission = pki::ca_if_present(&data)?
        .filter(|ca| ca.cert_pem == creds.ca_pem)
        .map(|ca| Admission { ca, tokens: Arc::new(tokens::FileTokenBook::new(&data)) });
    peers.extend(args.peers.iter().map(|(n, a)| (Identity { name: n.clone(), role: Role::Server }, *a)));
    let tcfg = TransportConfig {
        listen: args.quic_listen,
        fault_seed: args.fault_seed,
        reset_secret: Some(pki::reset_secret(&data, &args.name)?),
        ..TransportConfig::default()
    };
    let (transport, inbox, _quic_runtime) =
        Transport::start_with_socket(&creds, tcfg, socket).with_context(|| format!("cannot start QUIC on {quic}"))?;
    for (id, addr) in peers.into_iter().filter(|(id, _)| id.name != args.name) {
        transport.add_peer(id, addr);
    }
    let router = Router::new();
    router.pump(inbox, transport.runtime());
    tracing::info!(quic = %transport.local_addr(), peers = ?transport.peers(), "transport up");
    let t = transport.clone();
    // A member that joined with a token starts with no store of its own: it waits to
    // be added (`keelson member add`). A member on its own starts a store of one.
    let joined = data.member_dir(&args.name)?.join("peers.json").exists();
    let members = match (args.store_members.is_empty(), joined) {
        (false, _) => args.store_members.clone(),
        (true, true) => Vec::new(),
        (true, false) => vec![args.name.clone()],
    };
    if !members.is_empty() && !members.contains(&args.name) {
        anyhow::bail!("--store-members must include this member ({})", args.name);
    }
    let store = StoreConfig {
        shards: args.store.shards.max(1),
        snapshot_every: args.store.snapshot_every,
        event_window: EventWindow { age: args.store.event_window_age, ..EventWindow::default() },
        ..StoreConfig::new(data.member_dir(&args.name)?.join("store"), members)
            .with_heartbeat(args.store.store_heartbeat)
    }
    .validate()?;
    let api = api_setup(&data, &args.name, args.api_listen)?;
    let control = ControlPlaneConfig {
        default_toleration_seconds: args.default_toleration_seconds,
        cluster_cidr: args.cluster_cidr,
        node_cidr_prefix: args.node_cidr_mask_size,
        service_cidr: args.service_cluster_ip_range,
        node_ports: args.service_node_port_range,
        load_balancer_cidr: args.load_balancer_range,
    }
    .validate()?;
    let code = member::run(
        cfg,
        &data,
        move |cfg, l| server_tree(cfg, l, t, router, admission, ServerParts { store, https: api, control }),
        None,
    );
    transport.close();
    code
}

fn agent(args: cli::AgentArgs, data_dir: &std::path::Path) -> Result<i32> {
    keelson_config::validate_name(&args.name)?;
    let heartbeat = HeartbeatConfig { renew: args.heartbeat, lease_seconds: args.lease_seconds }.validate()?;
    for (what, q) in [("--cpu", &args.cpu), ("--memory", &args.memory)] {
        if let Some(q) = q.as_deref().filter(|q| keelson_actors::controllers::quantity::parse(q).is_none()) {
            anyhow::bail!("{what} {q:?} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)");
        }
    }
    let data = DataDir::open(data_dir)?;
    let node = if args.hollow > 0 {
        AgentNode::Hollow(HollowConfig {
            cpu: args.cpu.clone().unwrap_or_else(|| "4".into()),
            memory: args.memory.clone().unwrap_or_else(|| "16Gi".into()),
            ..HollowConfig::new(args.hollow, heartbeat)
        })
    } else {
        real_node(&args, &data, heartbeat)?
    };
    let m = MemberStart::new(
        &data,
        Identity::new(&args.name, Role::Agent)?,
        (args.admin_listen, args.root_intensity),
        args.quic_listen,
        args.join.map(|a| (a, args.token.clone().unwrap_or_default())),
    )?;
    let MemberStart { cfg, socket, quic, creds, mut peers } = m;
    peers.extend(args.peers.iter().map(|(n, a)| (Identity { name: n.clone(), role: Role::Server }, *a)));
    let servers: Vec<String> =
        peers.iter().filter(|(id, _)| id.role == Role::Server).map(|(id, _)| id.name.clone()).collect();
    if servers.is_empty() {
        anyhow::bail!("no server to talk to: give --peer NAME=HOST:PORT or --join HOST:PORT --token T");
    }
    let tcfg = TransportConfig { listen: args.quic_listen, ..TransportConfig::default() };
    let (transport, inbox, _quic_runtime) =
        Transport::start_with_socket(&creds, tcfg, socket).with_context(|| format!("cannot start QUIC on {quic}"))?;
    for (id, addr) in peers {
        transport.add_peer(id, addr);
    }
    let router = Router::new();
    router.pump(inbox, transport.runtime());
    tracing::info!(quic = %transport.local_addr(), servers = ?servers, hollow = args.hollow, "agent up");
    let t = transport.clone();
    let stop = match &node {
        AgentNode::Real { runtime, cfg } => Some((runtime.clone(), cfg.clone())),
        AgentNode::Hollow(_) => None,
    };
    let code = member::run(cfg, &data, move |cfg, l| agent_tree(cfg, l, t, router, servers, node), None);
    transport.close();
    // Stopped on purpose (not killed): the node's containers and network go too.
    if let (Ok(0), Some((runtime, cfg))) = (&code, stop) {
        tracing::info!("stopping this node's containers and taking its pod network down");
        keelson_actors::kubelet::stop_everything(runtime.as_ref(), &cfg, &args.name, Duration::from_secs(5));
        keelson_actors::proxy::teardown(&args.name);
    }
    code
}

/// The kubelet of a real node: its runtime (this binary is each container's shim) and
/// configuration.
fn real_node(args: &cli::AgentArgs, data: &DataDir, heartbeat: HeartbeatConfig) -> Result<AgentNode> {
    // /proc/self belongs to the effective user.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0;
    let network = match args.network {
        _ if args.runtime == cli::RuntimeKind::Docker => PodNetworkMode::Docker,
        NetworkKind::Netns if !root => anyhow::bail!("--network netns needs root (network namespaces and a bridge)"),
        NetworkKind::Netns => PodNetworkMode::Netns,
        NetworkKind::Loopback => PodNetworkMode::Loopback,
        NetworkKind::Auto if root => PodNetworkMode::Netns,
        NetworkKind::Auto => PodNetworkMode::Loopback,
    };
    let (cpu, memory) = keelson_actors::kubelet::node::machine_capacity();
    let dir = data.member_dir(&args.name)?.join("kubelet");
    let cfg = KubeletConfig {
        heartbeat,
        network,
        root_dir: dir.clone(),
        cpu: args.cpu.clone().unwrap_or(cpu),
        memory: args.memory.clone().unwrap_or(memory),
        pods: args.max_pods,
        restart_backoff_base: args.restart_backoff,
        restart_backoff_max: args.restart_backoff_max.max(args.restart_backoff),
        sync_every: Duration::from_secs(1),
        netns_pool: args.netns_pool,
    }
    .validate()?;
    volatile::link(&dir, &volatile::KUBELET, &volatile::TMPFS)
        .with_context(|| format!("cannot make the node's state folders in {}", dir.display()))?;
    let runtime: Arc<dyn ContainerRuntime> = match args.runtime {
        cli::RuntimeKind::Process => {
            keelson_actors::cri::process::become_subreaper().context("cannot become the containers' subreaper")?;
            let shim = std::env::current_exe().context("cannot find this program's own path (the shim)")?;
            Arc::new(ProcessRuntime::new(dir.join("containers"), dir.join("logs"), shim)?)
        }
        cli::RuntimeKind::Docker => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let docker = rt
                .block_on(DockerRuntime::connect(&args.name, &args.sandbox_image, dir.join("docker-logs")))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Arc::new(docker)
        }
    };
    tracing::info!(runtime = %runtime.version(), network = ?network, "node runtime ready");
    if let Some(why) = runtime.limits_unavailable() {
        tracing::warn!("containers with resource limits cannot start on this node: {why}");
        eprintln!("keelson: {}: containers with resource limits cannot start here: {why}", args.name);
    }
    Ok(AgentNode::Real { runtime, cfg: Arc::new(cfg) })
}
