//! `/<agent>/proxy/service/<namespace>/<name>`: one Service on this node. It listens on
//! the Service's cluster IP (each port, TCP or UDP) and on each node port at the node's
//! address, and forwards every new connection (or UDP flow) to a ready endpoint from
//! the Service's EndpointSlices: round robin, or by client under `ClientIP` affinity;
//! an endpoint that refuses is passed over for the next. TCP connections are forwarded
//! on tasks of their own, so ones in flight to a pod that is going away finish (drain)
//! even as the pod leaves the endpoints, and survive a restart of this actor; UDP flows
//! belong to their listener and end with it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::balancer::Backends;
use super::ProxyShared;
use crate::runtime::{Actor, Ctx, Handler};

/// How long a connection to an endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Each direction's copy buffer.
const COPY_BUF: usize = 64 << 10;
/// A UDP flow with nothing sent either way for this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(30);
/// The most UDP flows one listener keeps (each holds a socket); more are refused.
const UDP_FLOWS: usize = 4096;
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const AFFINITY_DEFAULT: u64 = 10_800;

/// Read the Service and its slices again (one of them changed).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Resync;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// A Service port's `protocol` (TCP when absent); SCTP is not carried.
    pub fn of(port: &Value) -> Option<Self> {
        match port["protocol"].as_str().unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// One address the proxy listens on for a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listen {
    pub protocol: Protocol,
    pub addr: SocketAddrV4,
}

/// What one listening address of a Service asks of this node: where to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub listen: Listen,
    pub endpoints: Vec<SocketAddr>,
    pub affinity: Option<Duration>,
}

/// The endpoints of the port named `name` (`protocol`) in `slices`: the ready ones, or,
/// if none is, the ones still serving while they terminate (as kube-proxy falls back).
/// `on`: only endpoints on that node (a `Local` traffic policy).
fn endpoints_of(slices: &[&Value], name: &str, protocol: &str, on: Option<&str>) -> Vec<SocketAddr> {
    let mut ready = Vec::new();
    let mut serving = Vec::new();
    for slice in slices {
        let Some(port) = slice["ports"].as_array().into_iter().flatten().find_map(|p| {
            let same =
                p["name"].as_str().unwrap_or_default() == name && p["protocol"].as_str().unwrap_or("TCP") == protocol;
            same.then(|| p["port"].as_u64()).flatten()
        }) else {
            continue;
        };
        for e in slice["endpoints"].as_array().into_iter().flatten() {
            if on.is_some_and(|node| e["nodeName"] != node) {
                continue;
            }
            let c = &e["conditions"];
            let addrs =
                e["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()?.parse::<Ipv4Addr>().ok());
            for ip in addrs {
                let at = SocketAddr::from((ip, port as u16));
                if crate::controllers::endpoints::offered(e) {
                    ready.push(at);
                } else if c["serving"] == true && c["terminating"] == true {
                    serving.push(at);
                }
            }
        }
    }
    if ready.is_empty() {
        serving
    } else {
        ready
    }
}

/// What `svc` asks of node `node` at `node_ip` (cluster IPs only where `cluster_ips`).
/// `internalTrafficPolicy: Local` keeps cluster-IP traffic, `externalTrafficPolicy:
/// Local` node-port traffic, on this node's endpoints (none: the connection is closed,
/// as Kubernetes drops it).
pub fn forwards(svc: &Value, slices: &[&Value], node: &str, node_ip: Ipv4Addr, cluster_ips: bool) -> Vec<Forward> {
    let cluster_ip =
        svc["spec"]["clusterIP"].as_str().and_then(|ip| ip.parse::<Ipv4Addr>().ok()).filter(|_| cluster_ips);
    let affinity = (svc["spec"]["sessionAffinity"] == "ClientIP").then(|| {
        let t = svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"].as_u64();
        Duration::from_secs(t.unwrap_or(AFFINITY_DEFAULT))
    });
    let node_ports = crate::api::services::wants_node_ports(svc);
    let internal = (svc["spec"]["internalTrafficPolicy"] == "Local").then_some(node);
    let external = (svc["spec"]["externalTrafficPolicy"] == "Local").then_some(node);
    let port_of = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0);
    let mut out = Vec::new();
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let Some(protocol) = Protocol::of(p) else { continue };
        let proto_name = p["protocol"].as_str().unwrap_or("TCP");
        let name = p["name"].as_str().unwrap_or_default();
        if let (Some(ip), Some(port)) = (cluster_ip, port_of(&p["port"])) {
            let endpoints = endpoints_of(slices, name, proto_name, internal);
            out.push(Forward { listen: Listen { protocol, addr: SocketAddrV4::new(ip, port) }, endpoints, affinity });
        }
        if let Some(port) = port_of(&p["nodePort"]).filter(|_| node_ports) {
            let endpoints = endpoints_of(slices, name, proto_name, external);
            out.push(Forward {
                listen: Listen { protocol, addr: SocketAddrV4::new(node_ip, port) },
                endpoints,
                affinity,
            });
        }
    }
    out
}

/// A socket bound to `addr` with `SO_REUSEPORT` (several agents on one machine share
/// a cluster IP's port), listening if it is a stream.
fn bind(addr: SocketAddrV4, kind: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2), then setsockopt/bind/listen on the descriptor we own, with
    // pointers to values that live across each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&one as *const libc::c_int).cast(), size) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = addr.port().to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(addr.ip().octets());
        let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), size) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if kind == libc::SOCK_STREAM && libc::listen(fd, 1024) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(owned)
    }
}

/// A listener's endpoints as it reads them (replaced whole on a change).
type Table = Arc<RwLock<Arc<Backends>>>;

/// A listening address forwarding to endpoints that may be replaced while it runs;
/// it stops listening when dropped (connections already forwarded go on).
pub struct Forwarder {
    table: Table,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forwarder {
    /// Listens on `listen` (port 0: one the system picks) and forwards to `endpoints`.
    pub fn start(listen: Listen, endpoints: Vec<SocketAddr>, affinity: Option<Duration>) -> std::io::Result<Self> {
        let table: Table = Arc::new(RwLock::new(Arc::new(Backends::new(endpoints, affinity))));
        let (task, addr) = match listen.protocol {
            Protocol::Tcp => {
                let std = std::net::TcpListener::from(bind(listen.addr, libc::SOCK_STREAM)?);
                let addr = std.local_addr()?;
                (tokio::spawn(serve_tcp(TcpListener::from_std(std)?, table.clone())), addr)
            }
            Protocol::Udp => {
                let std = std::net::UdpSocket::from(bind(listen.addr, libc::SOCK_DGRAM)?);
                let addr = std.local_addr()?;
                (tokio::spawn(serve_udp(UdpSocket::from_std(std)?, table.clone())), addr)
            }
        };
        Ok(Self { table, addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards new connections to `endpoints` from now on (round robin and clients'
    /// affinity carried over); whether they differ from before.
    pub fn set(&self, endpoints: Vec<SocketAddr>, affinity: Option<Duration>) -> bool {
        let mut slot = self.table.write().unwrap();
        let next = Arc::new(slot.replaced_by(Backends::new(endpoints, affinity)));
        let changed = next.endpoints() != slot.endpoints();
        *slot = next;
        changed
    }
}

async fn serve_tcp(listener: TcpListener, table: Table) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let backends = table.read().unwrap().clone();
        tokio::spawn(forward_tcp(client, peer, backends));
    }
}

/// Forwards one connection to the first endpoint that takes it.
async fn forward_tcp(mut client: TcpStream, peer: SocketAddr, backends: Arc<Backends>) {
    let _ = client.set_nodelay(true);
    for endpoint in backends.candidates(peer.ip()) {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
            Ok(Ok(mut upstream)) => {
                backends.used(peer.ip(), endpoint);
                let _ = upstream.set_nodelay(true);
                // 64 KiB each way (the default 8 KiB quarters bulk throughput in syscalls).
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUF, COPY_BUF).await;
                return;
            }
            Ok(Err(e)) => tracing::debug!(%endpoint, error = %e, "endpoint refused; trying the next"),
            Err(_) => tracing::debug!(%endpoint, "endpoint did not answer; trying the next"),
        }
    }
    tracing::debug!(client = %peer, "no endpoint took the connection");
}

/// A UDP flow: its socket to the endpoint, and when the client last sent on it.
struct Flow {
    upstream: Arc<UdpSocket>,
    last: Arc<std::sync::atomic::AtomicU64>,
}

/// Seconds since `epoch`, for flows' idle clocks.
fn since(epoch: tokio::time::Instant) -> u64 {
    epoch.elapsed().as_secs()
}

async fn serve_udp(socket: UdpSocket, table: Table) {
    use std::sync::atomic::Ordering::Relaxed;
    let socket = Arc::new(socket);
    let epoch = tokio::time::Instant::now();
    // Flow tasks belong to this listener: dropping it (the task aborted) ends them, so
    // no flow keeps the Service's socket bound after its listener is gone.
    let mut tasks = tokio::task::JoinSet::new();
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut ended = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while let Some(done) = tasks.try_join_next() {
            if let Ok(client) = done {
                ended.push(client);
            }
        }
        for c in ended.drain(..) {
            flows.remove(&c);
        }
        if !flows.contains_key(&client) && flows.len() >= UDP_FLOWS {
            continue; // full: a flood of sources must not take every descriptor
        }
        let flow = match flows.get(&client) {
            Some(flow) => flow,
            None => {
                let backends = table.read().unwrap().clone();
                let Some(endpoint) = backends.candidates(client.ip()).first().copied() else { continue };
                let Ok(upstream) = UdpSocket::bind("0.0.0.0:0").await else { continue };
                if upstream.connect(endpoint).await.is_err() {
                    continue;
                }
                backends.used(client.ip(), endpoint);
                let flow = Flow { upstream: Arc::new(upstream), last: Arc::default() };
                let (up, down, last) = (flow.upstream.clone(), socket.clone(), flow.last.clone());
                // Answers go back to the client from the Service's address; the flow
                // ends once neither side has sent for UDP_IDLE.
                tasks.spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match tokio::time::timeout(UDP_IDLE, up.recv(&mut buf)).await {
                            Ok(Ok(n)) => {
                                if down.send_to(&buf[..n], client).await.is_err() {
                                    return client;
                                }
                            }
                            Ok(Err(_)) => return client,
                            Err(_) if since(epoch).saturating_sub(last.load(Relaxed)) >= UDP_IDLE.as_secs() => {
                                return client
                            }
                            Err(_) => {}
                        }
                    }
                });
                flows.entry(client).or_insert(flow)
            }
        };
        flow.last.store(since(epoch), Relaxed);
        let _ = flow.upstream.send(&buf[..n]).await;
    }
}

/// The forwarders `wanted` (listen address, endpoints, affinity) asks for, from those
/// `existing` has (their endpoints replaced) or started; those not wanted are dropped
/// (they stop). Addresses that could not be listened on are returned with the error.
pub fn reconcile(
    mut existing: HashMap<Listen, Forwarder>,
    wanted: impl IntoIterator<Item = (Listen, Vec<SocketAddr>, Option<Duration>)>,
) -> (HashMap<Listen, Forwarder>, Vec<(SocketAddrV4, std::io::Error)>) {
    let mut keep = HashMap::new();
    let mut failed = Vec::new();
    for (listen, endpoints, affinity) in wanted {
        let forwarder = match existing.remove(&listen) {
            Some(f) => {
                if f.set(endpoints.clone(), affinity) {
                    tracing::debug!(addr = %listen.addr, ?endpoints, "endpoints changed");
                }
                f
            }
            None => match Forwarder::start(listen, endpoints, affinity) {
                Ok(f) => f,
                Err(e) => {
                    failed.push((listen.addr, e));
                    continue;
                }
            },
        };
        keep.insert(listen, forwarder);
    }
    (keep, failed)
}

pub struct ServiceProxy {
    key: String,
    shared: Arc<ProxyShared>,
    listeners: HashMap<Listen, Forwarder>,
}

impl ServiceProxy {
    pub fn new(key: String, shared: Arc<ProxyShared>) -> Self {
        Self { key, shared, listeners: HashMap::new() }
    }

    /// Hands `wanted`'s TCP addresses without client affinity to the kernel's
    /// connect-time balancer, if the node has one (the others stay in user space).
    fn balance_in_kernel(&self, wanted: &[Forward]) {
        let Some(lb) = &self.shared.connect else { return };
        let tcp = wanted.iter().filter(|f| f.listen.protocol == Protocol::Tcp && f.affinity.is_none());
        let wanted: Vec<(SocketAddrV4, &[SocketAddr])> = tcp.map(|f| (f.listen.addr, &f.endpoints[..])).collect();
        for (addr, e) in lb.assign(&self.key, &wanted) {
            tracing::warn!(service = %self.key, %addr, error = %e, "cannot balance in the kernel; user space carries it");
        }
    }

    fn resync(&mut self) {
        let Some(svc) = self.shared.services.read().unwrap().objects.get(&self.key).cloned() else { return };
        let (ns, name) = self.key.split_once('/').unwrap_or(("default", &self.key));
        let slices = self.shared.slices.read().unwrap();
        let mine: Vec<&Value> =
            slices.objects.values().filter(|s| crate::controllers::endpoints::of_service(s, ns, name)).collect();
        let wanted = forwards(&svc, &mine, &self.shared.node, self.shared.node_ip, self.shared.addresses.available());
        drop(slices);
        self.balance_in_kernel(&wanted);
        let wanted = wanted.into_iter().map(|f| (f.listen, f.endpoints, f.affinity));
        let (keep, failed) = reconcile(std::mem::take(&mut self.listeners), wanted);
        for (addr, e) in failed {
            tracing::warn!(service = %self.key, %addr, error = %e, "cannot listen (again at the next sync)");
        }
        self.listeners = keep;
    }
}

impl Actor for ServiceProxy {
    fn started(&mut self, _: &mut Ctx<Self>) {
        self.resync();
    }

    fn stopped(&mut self, _: &mut Ctx<Self>) {
        self.balance_in_kernel(&[]);
    }
}

impl Handler<Resync> for ServiceProxy {
    type Result = ();

    fn handle(&mut self, _: Resync, _: &mut Ctx<Self>) {
        self.resync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports_listen_on_the_cluster_ip_and_node_ports_and_send_to_ready_endpoints() {
        let svc = json!({"spec": {"clusterIP": "10.96.0.9", "type": "NodePort", "sessionAffinity": "ClientIP",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                      {"name": "dns", "port": 53, "protocol": "UDP"}]}});
        let mut slice = json!({"ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}, "nodeName": "n1"},
                          {"addresses": ["10.244.1.5"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                          {"addresses": ["10.244.1.6"], "conditions": {}, "nodeName": "n2"}]});
        let node: Ipv4Addr = "10.244.0.1".parse().unwrap();
        let f = forwards(&svc, &[&slice], "n1", node, true);
        assert_eq!(f.len(), 3);
        let cluster = Listen { protocol: Protocol::Tcp, addr: "10.96.0.9:80".parse().unwrap() };
        let node_port = Listen { protocol: Protocol::Tcp, addr: "10.244.0.1:30080".parse().unwrap() };
        assert_eq!((f[0].listen, f[1].listen), (cluster, node_port));
        let ready: Vec<SocketAddr> = vec!["10.244.0.5:8000".parse().unwrap(), "10.244.1.6:8000".parse().unwrap()];
        assert_eq!(f[0].endpoints, ready, "the terminating endpoint is out while others are ready");
        assert_eq!(f[1].endpoints, ready);
        assert_eq!(f[0].affinity, Some(Duration::from_secs(AFFINITY_DEFAULT)));
        assert_eq!(f[2].listen.protocol, Protocol::Udp);
        assert!(f[2].endpoints.is_empty(), "no slice carries the udp port");
        // Without a link for cluster IPs, only the node port.
        let f = forwards(&svc, &[&slice], "n1", node, false);
        assert_eq!(f.iter().map(|f| f.listen).collect::<Vec<_>>(), vec![node_port]);
        // Local traffic policies: only this node's endpoints, each for its own listener.
        let mut local = svc.clone();
        local["spec"]["externalTrafficPolicy"] = "Local".into();
        let f = forwards(&local, &[&slice], "n1", node, true);
        assert_eq!(f[0].endpoints, ready, "cluster IP traffic still goes anywhere");
        assert_eq!(f[1].endpoints, vec!["10.244.0.5:8000".parse::<SocketAddr>().unwrap()]);
        local["spec"]["internalTrafficPolicy"] = "Local".into();
        slice["endpoints"][0]["nodeName"] = "n3".into();
        let f = forwards(&local, &[&slice], "n1", node, true);
        assert!(f[0].endpoints.is_empty() && f[1].endpoints.is_empty(), "no local endpoint: none at all");
    }

    #[test]
    fn only_terminating_endpoints_still_serve_when_none_is_ready() {
        let svc = json!({"spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "protocol": "TCP"}]}});
        let slice = json!({"ports": [{"name": "", "port": 8000, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                          {"addresses": ["10.244.1.7"], "conditions": {"ready": false, "serving": false, "terminating": false}}]});
        let f = forwards(&svc, &[&slice], "n1", Ipv4Addr::LOCALHOST, true);
        assert_eq!(f[0].endpoints, vec!["10.244.1.5:8000".parse::<SocketAddr>().unwrap()]);
    }

    #[tokio::test]
    async fn a_refused_endpoint_is_passed_over() {
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = up.local_addr().unwrap();
        // A port nothing listens on: bound then closed.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let listen = Listen { protocol: Protocol::Tcp, addr: "127.0.0.1:0".parse().unwrap() };
        let forwarder = Forwarder::start(listen, vec![dead, live], None).unwrap();
        let at = forwarder.local_addr();
        let echo = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = up.accept().await.unwrap();
                let mut b = [0u8; 5];
                tokio::io::AsyncReadExt::read_exact(&mut s, &mut b).await.unwrap();
                tokio::io::AsyncWriteExt::write_all(&mut s, &b).await.unwrap();
            }
        });
        for _ in 0..2 {
            let mut c = TcpStream::connect(at).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut c, b"hello").await.unwrap();
            let mut b = [0u8; 5];
            tokio::io::AsyncReadExt::read_exact(&mut c, &mut b).await.unwrap();
            assert_eq!(&b, b"hello");
        }
        echo.await.unwrap();
    }
}
