//! One QUIC endpoint per process, and the message patterns on top of it.
//!
//! quinn runs on a runtime of its own (one worker thread): actix arbiters are single
//! threads, and a stalled arbiter must not stall the network (DEPENDENCIES.md traps 4
//! and 10). Every operation is spawned onto that runtime and awaited through its join
//! handle, so callers may await from any executor.
//!
//! Patterns, each on its own QUIC stream (one lost packet stalls only its stream):
//! - request/response: a bidirectional stream, one request frame, one reply frame
//!   (`Response` or `Failure`), bounded by the caller's deadline;
//! - streamed replies: the same, with `StreamItem`s ended by `StreamEnd`;
//! - one-way: a unidirectional stream with one frame;
//! - open: a bidirectional stream whose first frame says where it goes, then raw
//!   bytes both ways with QUIC's flow control (exec, port-forward).
//!
//! A caller always gets a reply or a typed [`Error`]: unreachable (no connection could
//! be made in time), timeout (no reply before the deadline), refused (the peer is not
//! who it must be), remote (the peer answered with a failure), closed (the stream ended
//! without a reply).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::faults::{FaultSocket, FaultTable};
use crate::frame::{self, Address, Envelope, Kind};
use crate::tls::{certifies, Credentials, Identity, Role};
use crate::{Error, Result};

/// Largest UDP payload path MTU discovery may reach (quinn stops at 1,452 by default).
/// On loopback and jumbo-frame links a pod object (2–4 kB) or a raft batch then goes
/// in one to a few datagrams rather than two to forty, each of which costs a `sendmsg`
/// share, an encryption and an ACK; on a 1,500-byte link discovery settles lower as it
/// would anyway. Ten of these (quinn's most per batched send) stay within the 65,507
/// bytes one GSO send can carry.
pub const MAX_DATAGRAM: u16 = 6_500;

/// How the endpoint behaves; `Default` holds the documented defaults.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub listen: SocketAddr,
    pub max_frame: usize,
    /// Seed of the fault injector's drop pattern.
    pub fault_seed: u64,
    /// A QUIC connection with no traffic for this long is closed (peers send
    /// keep-alives every `keep_alive`, so only a dead or cut-off peer gets there).
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    /// Back-off between failed dials to the same peer: initial, doubling to max.
    pub redial_initial: Duration,
    pub redial_max: Duration,
    /// Messages waiting for the application before the endpoint stops reading.
    pub inbox: usize,
    /// Congestion control. BBR by default: it paces by measured bandwidth and RTT,
    /// where loss-based controllers (Cubic) collapse on a randomly lossy link.
    pub congestion: Congestion,
    /// Secret for stateless-reset tokens, kept across restarts of this member: a peer
    /// still holding a connection to our previous process then gets a reset it can
    /// verify at its first packet, instead of waiting out the idle timeout. `None`: a
    /// random key (resets are only recognised while this process lives).
    pub reset_secret: Option<[u8; 32]>,
    /// How long a peer may hold back an ACK (QUIC's ACK-frequency extension). A lost
    /// packet is detected a probe timeout after it was sent, and that timeout includes
    /// this delay; QUIC's default of 25 ms dominates recovery on a fast network.
    pub max_ack_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    Bbr,
    Cubic,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            max_frame: frame::DEFAULT_MAX_FRAME,
            fault_seed: 0,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            redial_initial: Duration::from_millis(50),
            redial_max: Duration::from_secs(2),
            inbox: 1024,
            congestion: Congestion::Bbr,
            max_ack_delay: Duration::from_millis(2),
            reset_secret: None,
        }
    }
}

/// Counters of one peer, as the tree and `/metrics` show them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerStats {
    pub peer: String,
    pub addr: String,
    pub connected: bool,
    pub requests: u64,
    pub one_way: u64,
    pub received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: u64,
    pub dials: u64,
    pub lost_packets: u64,
    pub sent_packets: u64,
    pub injected_drops: u64,
    pub injected_delays: u64,
    pub injected_duplicates: u64,
    pub rtt_us: u64,
    /// The path's datagram size as MTU discovery left it (0 while not connected).
    pub mtu: u16,
    /// STOP_SENDING frames sent and received on the live connection: a receive stream
    /// dropped before its end. Rare in request, reply and one-way traffic; each would
    /// cost a packet that carries nothing else, and its acknowledgement.
    #[serde(default)]
    pub stops_sent: u64,
    #[serde(default)]
    pub stops_received: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    one_way: AtomicU64,
    received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    errors: AtomicU64,
    dials: AtomicU64,
    /// Packet counters of connections already closed, so totals survive reconnects.
    lost_before: AtomicU64,
    sent_before: AtomicU64,
}

struct Peer {
    identity: Identity,
    addr: RwLock<SocketAddr>,
    conn: Mutex<Option<Connection>>,
    dial: tokio::sync::Mutex<()>,
    failures: AtomicU32,
    counters: Counters,
}

struct Inner {
    me: Identity,
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    runtime: tokio::runtime::Handle,
    faults: Arc<FaultTable>,
    peers: RwLock<HashMap<String, Arc<Peer>>>,
    cfg: TransportConfig,
    inbox: mpsc::Sender<Inbound>,
    /// Told of each peer added after start (joined, or learned from its connection).
    on_new_peer: RwLock<Option<NewPeerHook>>,
}

type NewPeerHook = Arc<dyn Fn(&Transport, Identity) + Send + Sync>;

/// A handle on the process's endpoint; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// Owns the transport's runtime; dropping it stops the endpoint.
pub struct TransportRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TransportRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime inside async code panics (DEPENDENCIES.md trap 9).
            rt.shutdown_background();
        }
    }
}

/// A message that arrived for this process.
pub struct Inbound {
    /// The sender, proven by its certificate; `None` only for a join request from a
    /// peer that has no certificate yet.
    pub from: Option<Identity>,
    pub envelope: Envelope,
    pub reply: Reply,
}

/// How to answer an inbound message.
pub enum Reply {
    /// One-way: nothing to answer.
    None,
    /// A request: answer once, or stream items, through this stream.
    Stream { send: SendStream, max_frame: usize, me: Address, to: Address, correlation: u64 },
    /// An opened raw stream: read and write bytes.
    Open { send: SendStream, recv: RecvStream },
}

impl Reply {
    async fn frame(&mut self, kind: Kind, payload: Vec<u8>) -> Result<()> {
        let Reply::Stream { send, max_frame, me, to, correlation } = self else {
            return Err(Error::Closed("this message takes no reply".into()));
        };
        let env = Envelope { to: to.clone(), from: me.clone(), correlation: *correlation, kind, payload };
        let bytes = frame::encode(&env, *max_frame)?;
        send.write_all(&bytes).await.map_err(|e| Error::Closed(e.to_string()))
    }

    fn finish(&mut self) {
        if let Reply::Stream { send, .. } = self {
            let _already_finished_or_reset = send.finish();
        }
    }

    /// Answers a request.
    pub async fn respond(mut self, payload: Vec<u8>) -> Result<()> {
        self.frame(Kind::Response, payload).await?;
        self.finish();
        Ok(())
    }

    /// Answers a request with a failure the caller sees as [`Error::Remote`].
    pub async fn fail(mut self, code: u16, message: &str) -> Result<()> {
        self.frame(Kind::Failure { code }, message.as_bytes().to_vec()).await?;
        self.finish();
        Ok(())
    }

    /// Sends the `seq`-th item of a streamed reply.
    pub async fn item(&mut self, seq: u64, payload: Vec<u8>) -> Result<()> {
        self.frame(Kind::StreamItem { seq }, payload).await
    }

    /// Ends a streamed reply.
    pub async fn end(mut self) -> Result<()> {
        self.frame(Kind::StreamEnd, Vec::new()).await?;
        self.finish();
        Ok(())
    }
}

/// Reads one frame from `recv`; `None` when the stream ended cleanly before it.
async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Option<(Envelope, usize)>> {
    let mut header = [0u8; frame::HEADER_LEN];
    match recv.read(&mut header[..1]).await.map_err(|e| Error::Closed(e.to_string()))? {
        None => return Ok(None),
        Some(0) => return Err(Error::Closed("empty read".into())),
        Some(_) => {}
    }
    recv.read_exact(&mut header[1..]).await.map_err(|e| Error::Closed(e.to_string()))?;
    let len = match frame::decode(&header, max) {
        Err(frame::Error::Incomplete { needed }) => needed,
        Err(e) => return Err(e.into()),
        Ok(_) => 0,
    };
    let mut buf = header.to_vec();
    buf.resize(frame::HEADER_LEN + len, 0);
    recv.read_exact(&mut buf[frame::HEADER_LEN..]).await.map_err(|e| Error::Closed(e.to_string()))?;
    let (env, used) = frame::decode(&buf, max)?;
    Ok(Some((env, used)))
}

/// Takes the end of `recv` if it is already here (a peer finishes its stream with its
/// one message, so the end usually comes in the same packet), without waiting for it.
/// A receive stream dropped before its end was read makes quinn ask the peer to stop
/// sending (STOP_SENDING): a frame more, which the peer must acknowledge, for every
/// request, reply and one-way message — a packet each way that carried nothing.
fn take_end(recv: &mut RecvStream) {
    let mut byte = [0u8; 1];
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _polled_once = std::future::Future::poll(std::pin::pin!(recv.read(&mut byte)), &mut cx);
}

/// The quinn runtime bound to our own tokio runtime, whoever polls quinn's futures.
#[derive(Debug)]
struct BoundRuntime(tokio::runtime::Handle);

impl quinn::Runtime for BoundRuntime {
    fn new_timer(&self, t: std::time::Instant) -> std::pin::Pin<Box<dyn quinn::AsyncTimer>> {
        let _ctx = self.0.enter();
        quinn::TokioRuntime.new_timer(t)
    }

    fn spawn(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let _ctx = self.0.enter();
        quinn::TokioRuntime.wrap_udp_socket(sock)
    }
}

impl Transport {
    /// Binds the endpoint on its own runtime; inbound messages arrive on the receiver.
    pub fn start(
        creds: &Credentials,
        cfg: TransportConfig,
    ) -> Result<(Self, mpsc::Receiver<Inbound>, TransportRuntime)> {
        let socket = std::net::UdpSocket::bind(cfg.listen).map_err(Error::Io)?;
        Self::start_with_socket(creds, cfg, socket)
    }

    /// Like [`Transport::start`], on a socket bound earlier (a joiner must tell the
    /// cluster where it listens before it holds the credentials to start).
    pub fn start_with_socket(
        creds: &Credentials,
        cfg: TransportConfig,
        socket: std::net::UdpSocket,
    ) -> Result<(Self, mpsc::Receiver<Inbound>, TransportRuntime)> {
        // One worker: with two, each wake-up of a quiet runtime also woke the other to
        // steal, and a 100-pod burst on `keelson up` (five members on two CPUs) spent a
        // fifth more of the machine's CPU (ARCHITECTURE.md, Transport). Heavy work on it
        // (snapshots) goes to the blocking pool.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keelson-quic")
            .enable_all()
            .build()
            .map_err(Error::Io)?;
        // Owned from here on, so an error below shuts it down without blocking.
        let owned = TransportRuntime { runtime: Some(runtime) };
        let handle = owned.runtime.as_ref().expect("just built").handle().clone();
        let (t, rx) = Self::start_on(handle, creds, cfg, socket)?;
        Ok((t, rx, owned))
    }

    /// Serves `std_socket` on an existing multi-threaded runtime.
    pub fn start_on(
        runtime: tokio::runtime::Handle,
        creds: &Credentials,
        cfg: TransportConfig,
        std_socket: std::net::UdpSocket,
    ) -> Result<(Self, mpsc::Receiver<Inbound>)> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                cfg.idle_timeout.try_into().map_err(|_| Error::Config("idle_timeout too long".into()))?,
            ))
            .keep_alive_interval(Some(cfg.keep_alive))
            .max_concurrent_bidi_streams(4096u32.into())
            .max_concurrent_uni_streams(4096u32.into());
        match cfg.congestion {
            Congestion::Bbr => {
                transport.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
            Congestion::Cubic => {
                transport.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
        };
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_DATAGRAM);
        transport.mtu_discovery_config(Some(mtu));
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.max_ack_delay(Some(cfg.max_ack_delay));
        transport.ack_frequency_config(Some(acks));
        let transport = Arc::new(transport);
        let server_tls = quinn::crypto::rustls::QuicServerConfig::try_from(creds.server_config()?)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport.clone());
        let client_tls = quinn::crypto::rustls::QuicClientConfig::try_from(creds.client_config()?)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(transport);

        let bound = Arc::new(BoundRuntime(runtime.clone()));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std_socket);
        crate::socket::widen_receive_buffer(&std_socket, crate::socket::RECEIVE_BUFFER);
        let inner_socket = quinn::Runtime::wrap_udp_socket(&*bound, std_socket).map_err(Error::Io)?;
        crate::socket::receive_apart(&fd);
        let faults = Arc::new(FaultTable::new(cfg.fault_seed));
        let socket = Arc::new(FaultSocket::new(inner_socket, faults.clone(), runtime.clone()));
        let mut endpoint_cfg = match cfg.reset_secret {
            Some(secret) => {
                let mut c =
                    quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)));
                // Connection ids must validate in the next process too, or it drops the
                // old connection's packets instead of answering them with a reset.
                let cid_key = u64::from_le_bytes(secret[..8].try_into().expect("eight bytes"));
                c.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
                c
            }
            None => quinn::EndpointConfig::default(),
        };
        endpoint_cfg.max_udp_payload_size(MAX_DATAGRAM).map_err(|e| Error::Config(e.to_string()))?;
        let endpoint =
            Endpoint::new_with_abstract_socket(endpoint_cfg, Some(server), socket, bound).map_err(Error::Io)?;
        let (inbox, rx) = mpsc::channel(cfg.inbox);
        let inner = Arc::new(Inner {
            me: creds.identity.clone(),
            endpoint,
            client,
            runtime: runtime.clone(),
            faults,
            peers: RwLock::default(),
            cfg,
            inbox,
            on_new_peer: RwLock::new(None),
        });
        runtime.spawn(accept_loop(inner.clone()));
        Ok((Self { inner }, rx))
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.me
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.endpoint.local_addr().expect("a bound endpoint has an address")
    }

    pub fn faults(&self) -> &Arc<FaultTable> {
        &self.inner.faults
    }

    /// Adds (or moves) a peer this process may talk to.
    pub fn add_peer(&self, identity: Identity, addr: SocketAddr) {
        let mut peers = self.inner.peers.write().unwrap();
        match peers.get(&identity.name) {
            Some(p) if p.identity == identity => {
                let moved = std::mem::replace(&mut *p.addr.write().unwrap(), addr) != addr;
                if moved {
                    // The cached connection goes to the old address: dial anew.
                    if let Some(old) = p.conn.lock().unwrap().take() {
                        old.close(0u32.into(), b"peer moved");
                    }
                }
            }
            _ => {
                let peer = Peer {
                    identity: identity.clone(),
                    addr: RwLock::new(addr),
                    conn: Mutex::new(None),
                    dial: tokio::sync::Mutex::new(()),
                    failures: AtomicU32::new(0),
                    counters: Counters::default(),
                };
                peers.insert(identity.name.clone(), Arc::new(peer));
                drop(peers);
                let hook = self.inner.on_new_peer.read().unwrap().clone();
                if let Some(hook) = hook {
                    hook(self, identity);
                }
            }
        }
    }

    /// Calls `hook` for every peer added from now on (to start a link keeper for it).
    /// The hook is given the endpoint rather than capturing it, so no cycle keeps the
    /// endpoint alive.
    pub fn on_new_peer(&self, hook: impl Fn(&Transport, Identity) + Send + Sync + 'static) {
        *self.inner.on_new_peer.write().unwrap() = Some(Arc::new(hook));
    }

    /// Every known peer and its address.
    pub fn peer_list(&self) -> Vec<(Identity, SocketAddr)> {
        let peers = self.inner.peers.read().unwrap();
        let mut out: Vec<(Identity, SocketAddr)> =
            peers.values().map(|p| (p.identity.clone(), *p.addr.read().unwrap())).collect();
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }

    /// The address a peer was added with.
    pub fn peer_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inner.peers.read().unwrap().get(name).map(|p| *p.addr.read().unwrap())
    }

    fn peer(&self, name: &str) -> Result<Arc<Peer>> {
        self.inner.peers.read().unwrap().get(name).cloned().ok_or_else(|| Error::UnknownPeer(name.to_string()))
    }

    fn next_correlation() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn envelope(&self, peer: &str, to_path: &str, from_path: &str, kind: Kind, payload: Vec<u8>) -> Envelope {
        Envelope {
            to: Address { member: peer.to_string(), path: to_path.to_string() },
            from: Address { member: self.inner.me.name.clone(), path: from_path.to_string() },
            correlation: Self::next_correlation(),
            kind,
            payload,
        }
    }

    /// Sends a request to actor `to_path` on `peer` and waits for its reply, at most `deadline`.
    pub async fn request(
        &self,
        peer: &str,
        to_path: &str,
        from_path: &str,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<Vec<u8>> {
        let p = self.peer(peer)?;
        let deadline_ms = deadline.as_millis().min(u32::MAX as u128) as u32;
        let env = self.envelope(peer, to_path, from_path, Kind::Request { deadline_ms }, payload);
        let (inner, until) = (self.inner.clone(), Instant::now() + deadline);
        let peer = p.clone();
        on_runtime(&self.inner, p, deadline, until, async move { exchange(&inner, &peer, env, until).await }).await
    }

    /// Sends a one-way message; `Ok` means it was handed to QUIC on a live connection.
    pub async fn tell(
        &self,
        peer: &str,
        to_path: &str,
        from_path: &str,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<()> {
        let p = self.peer(peer)?;
        let env = self.envelope(peer, to_path, from_path, Kind::OneWay, payload);
        let (inner, until, peer) = (self.inner.clone(), Instant::now() + deadline, p.clone());
        let send = async move {
            let conn = connection(&inner, &peer, until).await?;
            let mut s = conn.open_uni().await.map_err(|e| Error::Closed(e.to_string()))?;
            let bytes = frame::encode(&env, inner.cfg.max_frame)?;
            s.write_all(&bytes).await.map_err(|e| Error::Closed(e.to_string()))?;
            let _already_finished = s.finish();
            peer.counters.one_way.fetch_add(1, Ordering::Relaxed);
            peer.counters.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(())
        };
        on_runtime(&self.inner, p, deadline, until, send).await
    }

    /// Sends a request whose reply is a stream of items; the receiver yields each item
    /// and ends after `StreamEnd` (or yields one error). `deadline` bounds the wait for
    /// the connection and the first item only.
    pub async fn request_stream(
        &self,
        peer: &str,
        to_path: &str,
        from_path: &str,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<mpsc::Receiver<Result<Vec<u8>>>> {
        let p = self.peer(peer)?;
        let env = self.envelope(peer, to_path, from_path, Kind::Request { deadline_ms: 0 }, payload);
        let (inner, until, peer) = (self.inner.clone(), Instant::now() + deadline, p.clone());
        let start = async move {
            let (_send, recv) = open_with(&inner, &peer, &env, until, Opening::Request).await?;
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(recv_items(inner.clone(), peer.clone(), recv, tx));
            Ok(rx)
        };
        on_runtime(&self.inner, p, deadline, until, start).await
    }

    /// Opens a raw bidirectional stream to actor `to_path` on `peer`.
    pub async fn open(
        &self,
        peer: &str,
        to_path: &str,
        from_path: &str,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<(SendStream, RecvStream)> {
        let p = self.peer(peer)?;
        let env = self.envelope(peer, to_path, from_path, Kind::Open, payload);
        let (inner, until, peer) = (self.inner.clone(), Instant::now() + deadline, p.clone());
        on_runtime(
            &self.inner,
            p,
            deadline,
            until,
            async move { open_with(&inner, &peer, &env, until, Opening::Raw).await },
        )
        .await
    }

    /// Makes sure a connection to `peer` is up (dialing with back-off until `deadline`)
    /// and returns it, so a link keeper can watch it close.
    pub async fn connect(&self, peer: &str, deadline: Duration) -> Result<Link> {
        let p = self.peer(peer)?;
        let inner = self.inner.clone();
        let until = Instant::now() + deadline;
        let task = async move { connection(&inner, &p, until).await.map(Link) };
        self.inner.runtime.spawn(task).await.map_err(|e| Error::Closed(e.to_string()))?
    }

    /// Names of the peers this endpoint knows.
    pub fn peers(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.peers.read().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    /// The runtime the endpoint runs on (for work that must not run on an actor's thread).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// Counters of every peer.
    pub fn stats(&self) -> Vec<PeerStats> {
        let peers: Vec<Arc<Peer>> = self.inner.peers.read().unwrap().values().cloned().collect();
        let mut out: Vec<PeerStats> = peers
            .iter()
            .map(|p| {
                let addr = *p.addr.read().unwrap();
                let c = &p.counters;
                let conn = p.conn.lock().unwrap().clone().filter(|c| c.close_reason().is_none());
                let (lost, sent, rtt, mtu, stops) = conn.as_ref().map_or((0, 0, 0, 0, (0, 0)), |c| {
                    let s = c.stats();
                    let stops = (s.frame_tx.stop_sending, s.frame_rx.stop_sending);
                    (s.path.lost_packets, s.path.sent_packets, s.path.rtt.as_micros() as u64, s.path.current_mtu, stops)
                });
                let injected = self.inner.faults.counters(addr);
                PeerStats {
                    peer: p.identity.name.clone(),
                    addr: addr.to_string(),
                    connected: conn.is_some(),
                    requests: c.requests.load(Ordering::Relaxed),
                    one_way: c.one_way.load(Ordering::Relaxed),
                    received: c.received.load(Ordering::Relaxed),
                    bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                    bytes_received: c.bytes_received.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    dials: c.dials.load(Ordering::Relaxed),
                    lost_packets: c.lost_before.load(Ordering::Relaxed) + lost,
                    sent_packets: c.sent_before.load(Ordering::Relaxed) + sent,
                    injected_drops: injected.dropped.load(Ordering::Relaxed),
                    injected_delays: injected.delayed.load(Ordering::Relaxed),
                    injected_duplicates: injected.duplicated.load(Ordering::Relaxed),
                    rtt_us: rtt,
                    mtu,
                    stops_sent: stops.0,
                    stops_received: stops.1,
                }
            })
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.inner.endpoint.close(0u32.into(), b"shutdown");
    }
}

/// A live connection to one peer.
#[derive(Clone)]
pub struct Link(Connection);

impl Link {
    /// Resolves when the connection is closed, with the reason.
    pub async fn closed(&self) -> String {
        self.0.closed().await.to_string()
    }

    pub fn rtt(&self) -> Duration {
        self.0.rtt()
    }

    pub fn remote(&self) -> SocketAddr {
        self.0.remote_address()
    }
}

/// The live connection to `p`, dialing (once for all concurrent callers) if needed,
/// with back-off between failed dials, until `until`.
async fn connection(inner: &Arc<Inner>, p: &Arc<Peer>, until: Instant) -> Result<Connection> {
    loop {
        if let Some(c) = live(p) {
            return Ok(c);
        }
        let _dialing = p.dial.lock().await;
        if let Some(c) = live(p) {
            return Ok(c);
        }
        let failures = p.failures.load(Ordering::Relaxed);
        if failures > 0 {
            let exp = inner.cfg.redial_initial.saturating_mul(1 << failures.min(16)).min(inner.cfg.redial_max);
            let wait = exp.mul_f64(0.5 + fastrand::f64() / 2.0);
            if Instant::now() + wait >= until {
                return Err(Error::Unreachable {
                    peer: p.identity.name.clone(),
                    reason: "no connection before the deadline".into(),
                });
            }
            tokio::time::sleep(wait).await;
        }
        let addr = *p.addr.read().unwrap();
        p.counters.dials.fetch_add(1, Ordering::Relaxed);
        let connecting = inner
            .endpoint
            .connect_with(inner.client.clone(), addr, &p.identity.dns_name())
            .map_err(|e| Error::Unreachable { peer: p.identity.name.clone(), reason: e.to_string() })?;
        match tokio::time::timeout_at(until, connecting).await {
            Ok(Ok(conn)) => {
                p.failures.store(0, Ordering::Relaxed);
                let old = p.conn.lock().unwrap().replace(conn.clone());
                if let Some(old) = old {
                    let s = old.stats();
                    p.counters.lost_before.fetch_add(s.path.lost_packets, Ordering::Relaxed);
                    p.counters.sent_before.fetch_add(s.path.sent_packets, Ordering::Relaxed);
                }
                return Ok(conn);
            }
            Ok(Err(e)) => {
                p.failures.fetch_add(1, Ordering::Relaxed);
                let reason = e.to_string();
                // A TLS refusal is not a network fault: retrying would not help.
                if reason.contains("certificate") || reason.contains("crypto") || reason.contains("TLS") {
                    return Err(Error::Refused { peer: p.identity.name.clone(), reason });
                }
                tracing::debug!(peer = %p.identity.name, %reason, "dial failed");
            }
            Err(_) => {
                p.failures.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Unreachable { peer: p.identity.name.clone(), reason: "dial timed out".into() });
            }
        }
    }
}

fn live(p: &Peer) -> Option<Connection> {
    p.conn.lock().unwrap().as_ref().filter(|c| c.close_reason().is_none()).cloned()
}

/// How a message starts on its own stream.
#[derive(Clone, Copy, PartialEq)]
enum Opening {
    /// A request: the frame, then the send side finished; the reply comes back.
    Request,
    /// A raw stream: the frame, then the caller's bytes both ways.
    Raw,
}

/// Opens a bidirectional stream to `p` and writes `env` on it, counting it.
async fn open_with(
    inner: &Arc<Inner>,
    p: &Arc<Peer>,
    env: &Envelope,
    until: Instant,
    how: Opening,
) -> Result<(SendStream, RecvStream)> {
    let conn = connection(inner, p, until).await?;
    let (mut send, recv) = conn.open_bi().await.map_err(|e| Error::Closed(e.to_string()))?;
    let bytes = frame::encode(env, inner.cfg.max_frame)?;
    send.write_all(&bytes).await.map_err(|e| Error::Closed(e.to_string()))?;
    if how == Opening::Request {
        let _already_finished = send.finish();
        p.counters.requests.fetch_add(1, Ordering::Relaxed);
    }
    p.counters.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok((send, recv))
}

/// Runs `work` on the endpoint's runtime, bounded by `until`: a timeout is a typed error.
async fn on_runtime<T: Send + 'static>(
    inner: &Arc<Inner>,
    p: Arc<Peer>,
    deadline: Duration,
    until: Instant,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let task = async move {
        let r = tokio::time::timeout_at(until, work).await;
        let r = r.unwrap_or_else(|_| Err(Error::Timeout { peer: p.identity.name.clone(), after: deadline }));
        if r.is_err() {
            p.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    };
    inner.runtime.spawn(task).await.map_err(|e| Error::Closed(e.to_string()))?
}

/// One request/response over a fresh bidirectional stream.
async fn exchange(inner: &Arc<Inner>, p: &Arc<Peer>, env: Envelope, until: Instant) -> Result<Vec<u8>> {
    let (_send, mut recv) = open_with(inner, p, &env, until, Opening::Request).await?;
    let Some((reply, used)) = read_frame(&mut recv, inner.cfg.max_frame).await? else {
        return Err(Error::Closed(format!("{} ended the stream without a reply", p.identity.name)));
    };
    p.counters.bytes_received.fetch_add(used as u64, Ordering::Relaxed);
    take_end(&mut recv);
    match reply.kind {
        Kind::Response if reply.correlation == env.correlation => Ok(reply.payload),
        Kind::Failure { code } => {
            Err(Error::Remote { code, message: String::from_utf8_lossy(&reply.payload).into_owned() })
        }
        other => Err(Error::Closed(format!("unexpected reply {other:?}"))),
    }
}

async fn recv_items(inner: Arc<Inner>, p: Arc<Peer>, mut recv: RecvStream, tx: mpsc::Sender<Result<Vec<u8>>>) {
    loop {
        let item = match read_frame(&mut recv, inner.cfg.max_frame).await {
            Ok(Some((env, used))) => {
                p.counters.bytes_received.fetch_add(used as u64, Ordering::Relaxed);
                match env.kind {
                    Kind::StreamItem { .. } | Kind::Response => Ok(env.payload),
                    Kind::StreamEnd => {
                        take_end(&mut recv);
                        return;
                    }
                    Kind::Failure { code } => {
                        Err(Error::Remote { code, message: String::from_utf8_lossy(&env.payload).into_owned() })
                    }
                    other => Err(Error::Closed(format!("unexpected frame {other:?} in a stream"))),
                }
            }
            Ok(None) => Err(Error::Closed("the stream ended without StreamEnd".into())),
            Err(e) => Err(e),
        };
        let last = item.is_err();
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(inner, conn).await,
                Err(e) => tracing::warn!(%remote, error = %e, "refused an incoming connection"),
            }
        });
    }
}

/// The peer's certificate chain, as the handshake verified it.
fn peer_cert(conn: &Connection) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.into_iter().next()
}

/// Who the peer on `conn` is, given the member name it claims.
fn verify_claim(conn: &Connection, claimed: &str) -> Option<Identity> {
    let cert = peer_cert(conn)?;
    [Role::Server, Role::Agent, Role::Launcher]
        .into_iter()
        .filter_map(|role| Identity::new(claimed, role).ok())
        .find(|id| certifies(&cert, id))
}

async fn serve_connection(inner: Arc<Inner>, conn: Connection) {
    let remote = conn.remote_address();
    let who: Arc<Mutex<Option<Identity>>> = Arc::default();
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => { tokio::spawn(serve_stream(inner.clone(), conn.clone(), who.clone(), Some(send), recv)); }
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => { tokio::spawn(serve_stream(inner.clone(), conn.clone(), who.clone(), None, recv)); }
                Err(_) => break,
            },
        }
    }
    tracing::debug!(%remote, reason = ?conn.close_reason(), "connection closed");
}

/// A verified peer that dialed us and that we did not know: its connection comes from
/// its endpoint's own socket, so its address is where it listens. Remember it.
fn learn_peer(inner: &Arc<Inner>, id: &Identity, addr: SocketAddr) {
    if inner.peers.read().unwrap().contains_key(&id.name) {
        return;
    }
    tracing::info!(peer = %id.name, %addr, "learned a new peer from its connection");
    Transport { inner: inner.clone() }.add_peer(id.clone(), addr);
}

/// Reads the first frame of an inbound stream and hands the message to the application.
async fn serve_stream(
    inner: Arc<Inner>,
    conn: Connection,
    who: Arc<Mutex<Option<Identity>>>,
    send: Option<SendStream>,
    mut recv: RecvStream,
) {
    let (env, used) = match read_frame(&mut recv, inner.cfg.max_frame).await {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(remote = %conn.remote_address(), error = %e, "bad frame; closing the stream");
            let _ = recv.stop(1u32.into());
            return;
        }
    };
    let from = if peer_cert(&conn).is_none() {
        // No certificate: the only thing such a peer may do is ask to join.
        if env.to.path != crate::join::JOIN_PATH || !matches!(env.kind, Kind::Request { .. }) {
            tracing::warn!(remote = %conn.remote_address(), path = %env.to.path, "refused: no certificate");
            conn.close(3u32.into(), b"a certificate is required");
            return;
        }
        None
    } else {
        let known = who.lock().unwrap().clone();
        let id = match known {
            Some(id) if id.name == env.from.member => id,
            Some(id) => {
                tracing::warn!(peer = %id.name, claimed = %env.from.member, "peer claimed another name; closing");
                conn.close(2u32.into(), b"identity mismatch");
                return;
            }
            None => match verify_claim(&conn, &env.from.member) {
                Some(id) => {
                    *who.lock().unwrap() = Some(id.clone());
                    learn_peer(&inner, &id, conn.remote_address());
                    id
                }
                None => {
                    tracing::warn!(remote = %conn.remote_address(), claimed = %env.from.member, "certificate does not name the claimed peer; closing");
                    conn.close(2u32.into(), b"identity mismatch");
                    return;
                }
            },
        };
        if let Some(p) = inner.peers.read().unwrap().get(&id.name) {
            p.counters.received.fetch_add(1, Ordering::Relaxed);
            p.counters.bytes_received.fetch_add(used as u64, Ordering::Relaxed);
        }
        Some(id)
    };
    if !matches!(env.kind, Kind::Open) {
        take_end(&mut recv);
    }
    let reply = match (env.kind.clone(), send) {
        (Kind::OneWay, _) => Reply::None,
        (Kind::Request { .. }, Some(send)) => Reply::Stream {
            send,
            max_frame: inner.cfg.max_frame,
            me: env.to.clone(),
            to: env.from.clone(),
            correlation: env.correlation,
        },
        (Kind::Open, Some(send)) => Reply::Open { send, recv },
        (kind, _) => {
            tracing::warn!(?kind, "unexpected first frame on a stream");
            return;
        }
    };
    let _app_gone_means_shutting_down = inner.inbox.send(Inbound { from, envelope: env, reply }).await;
}
