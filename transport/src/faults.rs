//! Network faults injected in the socket layer, switched at run time.
//!
//! `tc netem` is not available on these machines, so a lossy network is made here:
//! quinn's UDP socket is wrapped by [`FaultSocket`], which consults a [`FaultTable`]
//! for every datagram. Per peer address and direction, a link can drop a share of
//! datagrams, delay them (fixed plus jitter), duplicate or reorder them, or be cut
//! entirely (a partition, one way or both). Outbound datagrams get every fault;
//! inbound ones can be cut or dropped (delaying what has already arrived would need
//! a buffer, and the sender's side delays just as well). The drop pattern comes from a
//! seeded generator, so a run can be replayed. QUIC sees real loss: it retransmits,
//! its congestion control reacts, and its timers fire, exactly as on a bad network.
//!
//! While no outbound fault is set anywhere, the socket lets quinn batch datagrams into
//! one send (GSO, as its own socket does): one system call and one trip through the
//! kernel's network stack for up to 10 datagrams, where a burst of writes spent a
//! tenth of a server's CPU in per-datagram `sendmsg`. quinn asks before each batch; a
//! batch already made for a link that has since gained a fault is split, so faults
//! still apply per datagram. Received batches are split by the kernel
//! ([`crate::socket::receive_apart`]).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use serde::{Deserialize, Serialize};

/// The faults of one direction of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkFaults {
    /// Share of datagrams dropped, 0.0–1.0.
    #[serde(default)]
    pub loss: f64,
    /// Fixed delay added to every datagram.
    #[serde(default, with = "keelson_config::millis")]
    pub delay: Duration,
    /// The delay varies by up to this much either way, uniformly (`50ms ± 20ms`).
    #[serde(default, with = "keelson_config::millis")]
    pub jitter: Duration,
    /// Share of datagrams sent twice.
    #[serde(default)]
    pub duplicate: f64,
    /// Share of datagrams held back by an extra delay, so later ones overtake them.
    #[serde(default)]
    pub reorder: f64,
    /// The link is cut: every datagram is dropped (a partition).
    #[serde(default)]
    pub cut: bool,
}

impl LinkFaults {
    pub fn is_clean(&self) -> bool {
        *self == Self::default()
    }

    pub fn cut() -> Self {
        Self { cut: true, ..Self::default() }
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, share) in [("loss", self.loss), ("duplicate", self.duplicate), ("reorder", self.reorder)] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} must be between 0 and 1 (a share), not {share}"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Datagrams this process sends to the peer.
    Out,
    /// Datagrams this process receives from the peer.
    In,
}

/// What the table did to datagrams, per peer address.
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub dropped: AtomicU64,
    pub delayed: AtomicU64,
    pub duplicated: AtomicU64,
}

/// The faults in force, shared by the socket and whoever switches them.
pub struct FaultTable {
    rules: RwLock<HashMap<(SocketAddr, Direction), LinkFaults>>,
    /// Whether any rule is outbound / inbound (kept with `rules`: read on every batch
    /// quinn makes and every read, where taking the lock would cost each datagram).
    outbound: AtomicBool,
    inbound: AtomicBool,
    rng: Mutex<fastrand::Rng>,
    counters: RwLock<HashMap<SocketAddr, Arc<FaultCounters>>>,
}

impl fmt::Debug for FaultTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultTable").field("rules", &*self.rules.read().unwrap()).finish()
    }
}

impl FaultTable {
    pub fn new(seed: u64) -> Self {
        Self {
            rules: RwLock::default(),
            outbound: AtomicBool::new(false),
            inbound: AtomicBool::new(false),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            counters: RwLock::default(),
        }
    }

    /// Sets (or, with clean faults, clears) the faults of one direction of one link.
    pub fn set(&self, peer: SocketAddr, direction: Direction, faults: LinkFaults) {
        let mut rules = self.rules.write().unwrap();
        if faults.is_clean() {
            rules.remove(&(peer, direction));
        } else {
            rules.insert((peer, direction), faults);
        }
        self.note_directions(&rules);
    }

    /// Clears every fault.
    pub fn heal(&self) {
        let mut rules = self.rules.write().unwrap();
        rules.clear();
        self.note_directions(&rules);
    }

    /// Keeps the two flags with `rules` (called with their write lock held).
    fn note_directions(&self, rules: &HashMap<(SocketAddr, Direction), LinkFaults>) {
        let any = |direction| rules.keys().any(|(_, d)| *d == direction);
        self.outbound.store(any(Direction::Out), Ordering::Release);
        self.inbound.store(any(Direction::In), Ordering::Release);
    }

    fn has_outbound(&self) -> bool {
        self.outbound.load(Ordering::Acquire)
    }

    fn has_inbound(&self) -> bool {
        self.inbound.load(Ordering::Acquire)
    }

    pub fn get(&self, peer: SocketAddr, direction: Direction) -> Option<LinkFaults> {
        self.rules.read().unwrap().get(&(peer, direction)).copied()
    }

    pub fn rules(&self) -> Vec<(SocketAddr, Direction, LinkFaults)> {
        self.rules.read().unwrap().iter().map(|((a, d), f)| (*a, *d, *f)).collect()
    }

    pub fn counters(&self, peer: SocketAddr) -> Arc<FaultCounters> {
        if let Some(c) = self.counters.read().unwrap().get(&peer) {
            return c.clone();
        }
        self.counters.write().unwrap().entry(peer).or_default().clone()
    }

    fn chance(&self, share: f64) -> bool {
        share > 0.0 && self.rng.lock().unwrap().f64() < share
    }

    /// `delay ± jitter`, uniformly, never below zero.
    fn delay(&self, delay: Duration, jitter: Duration) -> Duration {
        if jitter.is_zero() {
            return delay;
        }
        let offset = jitter.as_secs_f64() * (2.0 * self.rng.lock().unwrap().f64() - 1.0);
        Duration::from_secs_f64((delay.as_secs_f64() + offset).max(0.0))
    }
}

/// quinn's UDP socket with the fault table in front of it.
pub struct FaultSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    table: Arc<FaultTable>,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for FaultSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultSocket").field("inner", &self.inner).finish()
    }
}

impl FaultSocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, table: Arc<FaultTable>, runtime: tokio::runtime::Handle) -> Self {
        Self { inner, table, runtime }
    }

    /// Sends a copy of `t` after `after` (its own timer task; UDP may drop it anyway).
    fn send_later(&self, t: &Transmit, after: Duration) {
        let inner = self.inner.clone();
        let (destination, ecn, src_ip) = (t.destination, t.ecn, t.src_ip);
        let contents = t.contents.to_vec();
        self.runtime.spawn(async move {
            tokio::time::sleep(after).await;
            let t = Transmit { destination, ecn, contents: &contents, segment_size: None, src_ip };
            let _dropped_if_the_socket_is_busy = inner.try_send(&t);
        });
    }

    /// Sends one datagram through the link's faults `f`.
    fn send_faulted(&self, t: &Transmit, f: &LinkFaults) -> io::Result<()> {
        let counters = self.table.counters(t.destination);
        if f.cut || self.table.chance(f.loss) {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let copies = if self.table.chance(f.duplicate) { 2 } else { 1 };
        if copies == 2 {
            counters.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        for _ in 0..copies {
            let mut delay = self.table.delay(f.delay, f.jitter);
            if self.table.chance(f.reorder) {
                delay += Duration::from_millis(5) + f.delay + f.jitter;
            }
            if delay.is_zero() {
                self.inner.try_send(t)?;
            } else {
                counters.delayed.fetch_add(1, Ordering::Relaxed);
                self.send_later(t, delay);
            }
        }
        Ok(())
    }
}

impl AsyncUdpSocket for FaultSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        let Some(f) = self.table.get(t.destination, Direction::Out) else { return self.inner.try_send(t) };
        match t.segment_size {
            // A batch made before the fault was set: each datagram on its own.
            Some(size) if size < t.contents.len() => {
                for contents in t.contents.chunks(size) {
                    self.send_faulted(&Transmit { contents, segment_size: None, ..*t }, &f)?;
                }
                Ok(())
            }
            _ => self.send_faulted(t, &f),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if !self.table.has_inbound() {
            return self.inner.poll_recv(cx, bufs, meta);
        }
        // One datagram at a time, so a dropped one is simply not reported.
        loop {
            match self.inner.poll_recv(cx, &mut bufs[..1], &mut meta[..1]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    let from = meta[0].addr;
                    let drop = self.table.get(from, Direction::In).is_some_and(|f| f.cut || self.table.chance(f.loss));
                    if !drop {
                        return Poll::Ready(Ok(n));
                    }
                    self.table.counters(from).dropped.fetch_add(1, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Batches only while no link has an outbound fault: then one datagram per transmit,
    /// so loss applies per datagram (DEPENDENCIES.md trap 5; this lifts it while the
    /// network is clean).
    fn max_transmit_segments(&self) -> usize {
        if self.table.has_outbound() {
            1
        } else {
            self.inner.max_transmit_segments()
        }
    }

    /// One datagram per read: the kernel's coalescing of received datagrams (GRO) is
    /// switched off on the socket ([`crate::socket::receive_apart`]), so a batch a peer
    /// sent arrives as its datagrams, each of which an inbound fault can drop. quinn sizes
    /// its receive buffers by this once: at 64 (GRO's most) they would take 13 MB a process.
    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_set_clear_and_validate() {
        let t = FaultTable::new(1);
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        t.set(a, Direction::Out, LinkFaults { loss: 0.2, ..Default::default() });
        t.set(a, Direction::In, LinkFaults::cut());
        assert_eq!(t.get(a, Direction::Out).unwrap().loss, 0.2);
        assert!(t.has_inbound());
        t.set(a, Direction::In, LinkFaults::default());
        assert!(!t.has_inbound());
        t.heal();
        assert!(t.rules().is_empty());
        assert!(LinkFaults { loss: 1.5, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn the_drop_pattern_follows_the_seed() {
        let pattern = |seed| {
            let t = FaultTable::new(seed);
            (0..64).map(|_| t.chance(0.3)).collect::<Vec<_>>()
        };
        assert_eq!(pattern(7), pattern(7));
        assert_ne!(pattern(7), pattern(8));
        let hits = pattern(7).iter().filter(|x| **x).count();
        assert!((5..=35).contains(&hits));
    }

    /// quinn batches through the socket only while no link has an outbound fault, and a
    /// batch that meets a fault set after it was made goes out a datagram at a time.
    #[test]
    fn batches_pass_while_clean_and_are_split_on_a_faulted_link() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = rt.enter();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, sender).unwrap();
        let batches = inner.max_transmit_segments();
        let table = Arc::new(FaultTable::new(1));
        let socket = Arc::new(FaultSocket::new(inner, table.clone(), rt.handle().clone()));
        // tokio's socket sends only once it has seen itself writable.
        let mut poller = socket.clone().create_io_poller();
        rt.block_on(std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))).unwrap();
        assert_eq!(socket.max_transmit_segments(), batches, "clean: the socket's own batching");
        table.set(to, Direction::In, LinkFaults::cut());
        assert_eq!(socket.max_transmit_segments(), batches, "inbound faults do not stop batching");
        table.set(to, Direction::Out, LinkFaults { duplicate: 1.0, ..Default::default() });
        assert_eq!(socket.max_transmit_segments(), 1);

        // Two datagrams of 4 bytes in one batch, every datagram sent twice: split first,
        // each is duplicated on its own (a whole batch sent twice would come as a b a b).
        let contents = b"aaaabbbb";
        let t = Transmit { destination: to, ecn: None, contents, segment_size: Some(4), src_ip: None };
        socket.try_send(&t).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        receiver.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        while let Ok(n) = receiver.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got, ["aaaa", "aaaa", "bbbb", "bbbb"]);
        table.heal();
        assert_eq!(socket.max_transmit_segments(), batches, "healed: batching again");
    }

    /// A batch sent to a socket quinn made comes back as its datagrams once
    /// `receive_apart` has switched the kernel's coalescing off.
    #[test]
    fn batches_arrive_as_datagrams_apart() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = rt.enter();
        let receiving = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (to, fd) = (receiving.local_addr().unwrap(), std::os::fd::AsRawFd::as_raw_fd(&receiving));
        let receiver = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, receiving).unwrap();
        crate::socket::receive_apart(&fd);
        let sender =
            quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
        let mut poller = sender.clone().create_io_poller();
        rt.block_on(std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))).unwrap();
        let batch = Transmit { destination: to, ecn: None, contents: b"aaaabbbb", segment_size: Some(4), src_ip: None };
        sender.try_send(&batch).unwrap();
        let mut got = Vec::new();
        rt.block_on(async {
            while got.len() < 2 {
                let mut buf = [0u8; 1500];
                let mut meta = [RecvMeta::default()];
                let read =
                    std::future::poll_fn(|cx| receiver.poll_recv(cx, &mut [IoSliceMut::new(&mut buf)], &mut meta));
                let n = tokio::time::timeout(Duration::from_secs(2), read).await.expect("a datagram").unwrap();
                assert_eq!(n, 1);
                got.push(String::from_utf8_lossy(&buf[..meta[0].len]).into_owned());
            }
        });
        assert_eq!(got, ["aaaa", "bbbb"], "one datagram a read");
    }
}
