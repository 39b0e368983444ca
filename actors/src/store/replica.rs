//! `/<member>/store/shard-<k>`: one replica of one shard, an actor holding a raft group.
//!
//! Raft runs on the transport's multi-threaded runtime (its fsyncs and timers must not
//! stall an actix arbiter); the actor holds the `Raft` handle, answers raft RPCs from
//! the other replicas (through the router), and runs client operations: writes through
//! the log, reads after a read-index check (`read_index`, then `wait_applied`), either here when
//! this replica leads or forwarded to the leader.
//!
//! A replica's files are opened by one incarnation at a time: each incarnation takes the
//! shard's lock before opening and releases it only after its raft has shut down, so a
//! replica that crashed is closed cleanly and then reopened by its restarted actor.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Message};
use keelson_transport::frame::{from_payload, to_payload};
use keelson_transport::{Reply, Transport};
use openraft::error::RaftError;
use openraft::BasicNode;
use tokio::sync::OwnedMutexGuard;

use super::batch::Batcher;
use super::leases::LeaseClock;
use super::log::LogStore;
use super::network::{replica_path, Network};
use super::sm::{Applied, StateMachine};
use super::state::{Command, WriteOp};
use super::types::{node_id, ClientOp, ClientReply, Item, Raft, ShardRpc, ShardRpcReply, ShardStatus};
use crate::runtime::{exit, Actor, ActorPath, AsyncReply, ChildContext, Ctx, ExitReason, Handler, Incarnation};
use crate::transport::{Delivered, InlineLane, RemoteRef, Router};

/// How long one forwarding attempt waits before the leader is looked up again.
const FORWARD_ATTEMPT: Duration = Duration::from_secs(1);

/// How long a new member may take to catch up before it is promoted (a snapshot
/// install included), and a membership change to be forwarded and answered.
const CATCH_UP: Duration = Duration::from_secs(120);

/// The pause before a leader retries a read-index it could not confirm.
const READ_RETRY: Duration = Duration::from_millis(20);
/// A keep-alive slower than this is logged with where its time went: leases this
/// store holds live for seconds (the controllers' 3 s), so this is already late.
const SLOW_KEEP_ALIVE: Duration = Duration::from_millis(500);

/// How often a leader looks for leases past their deadline.
const LEASE_TICK: Duration = Duration::from_millis(100);

/// How a replica is set up; shared by all its incarnations.
pub struct ReplicaConfig {
    pub shard: u32,
    /// `<member data>/store/shard-<k>`.
    pub dir: PathBuf,
    /// The voters of a new cluster (member names).
    pub members: Vec<String>,
    /// Whether this replica proposes the initial membership when its log is empty.
    pub init: bool,
    pub raft: openraft::Config,
    /// How long a client operation may take, forwarding included.
    pub deadline: Duration,
    pub event_window: keelson_config::EventWindow,
}

/// Subscribe to this replica's changes (for watches): its applied data and a
/// receiver that changes with its revision. `None` while the replica opens.
#[derive(Message)]
#[rtype(result = "Option<WatchSource>")]
pub struct Watch;

/// A key as this replica has applied it, without a read index: possibly behind the
/// leader. For reads a compare-and-swap checks afterwards (as Kubernetes' API server
/// starts a conditional update from its watch cache), which then costs no quorum round.
/// `None`: the key is not here, or the replica is still opening.
#[derive(Message)]
#[rtype(result = "Option<super::Item>")]
pub struct ReadLocal(pub String);

/// This incarnation's client operations as a handle that runs them on the transport's
/// runtime without the actor's mailbox; `None` while the replica opens.
#[derive(Message)]
#[rtype(result = "Option<DirectReplica>")]
pub struct Direct;

/// A replica's client operations, run straight on the transport's runtime: for a caller
/// that must not wait behind its member's busy thread, where every actor's mailbox is
/// served (the controllers' lease keep-alive, which lapsed there under a burst of pods).
/// It serves one incarnation: once that one is gone its operations fail, and the caller
/// asks the replica for a new handle.
#[derive(Clone)]
pub struct DirectReplica(Handles);

impl DirectReplica {
    pub async fn execute(&self, op: ClientOp) -> ClientReply {
        self.0.clone().spawned(op).await
    }

    /// The runtime its operations run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.0.transport.runtime()
    }
}

/// What a watcher reads from: events come from `applied`'s window, wake-ups from `revision`.
#[derive(Clone)]
pub struct WatchSource {
    pub applied: Arc<RwLock<Applied>>,
    pub revision: tokio::sync::watch::Receiver<u64>,
}

impl WatchSource {
    /// Events after `revision` under `prefix`, and the shard's revision they reach.
    pub fn events_after(
        &self,
        revision: u64,
        prefix: &str,
    ) -> Result<(Vec<super::state::Event>, u64), super::state::Expired> {
        let a = self.applied.read().unwrap();
        let events = a.data.events_after(revision, prefix)?;
        Ok((events, a.data.revision))
    }
}

/// Waits until the revision of any of `sources` picked by `which` moves; false when one
/// of their replicas went away (its watchers end, and clients resume from their cursor).
pub async fn any_changed(sources: &mut [WatchSource], which: &[usize]) -> bool {
    let changes =
        sources.iter_mut().enumerate().filter(|(i, _)| which.contains(i)).map(|(_, s)| Box::pin(s.revision.changed()));
    futures_util::future::select_all(changes).await.0.is_ok()
}

/// Run a client operation on this shard; the reply says what happened.
#[derive(Message)]
#[rtype(result = "ClientReply")]
pub struct Execute(pub ClientOp);

/// A running raft and what it holds; dropping it shuts raft down, then lets the next
/// incarnation open the files.
struct Open {
    raft: Raft,
    installed: Arc<std::sync::atomic::AtomicU64>,
    applied: Arc<RwLock<Applied>>,
    revision: Arc<tokio::sync::watch::Sender<u64>>,
    clock: Arc<std::sync::Mutex<LeaseClock>>,
    committed_here: Arc<std::sync::atomic::AtomicBool>,
    batcher: Batcher,
    batching: tokio::task::JoinHandle<()>,
    expiring: tokio::task::JoinHandle<()>,
    guard: Option<OwnedMutexGuard<()>>,
    runtime: tokio::runtime::Handle,
    /// Raft RPCs straight from the transport while open (closed with it).
    lane: Option<InlineLane>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.expiring.abort();
        self.batching.abort();
        let (raft, guard) = (self.raft.clone(), self.guard.take());
        self.runtime.spawn(async move {
            let _already_down = raft.shutdown().await;
            drop(guard);
        });
    }
}

pub struct Replica {
    cfg: Arc<ReplicaConfig>,
    member: String,
    path: ActorPath,
    transport: Transport,
    lock: Arc<tokio::sync::Mutex<()>>,
    router: Arc<Router>,
    open: Option<Open>,
    /// When each voter whose round trip is near the heartbeat was last warned about.
    slow_links: HashMap<String, std::time::Instant>,
}

/// How often shard 0's replica compares the round trips to the other voters with the
/// heartbeat.
const LINK_CHECK: Duration = Duration::from_secs(5);

impl Replica {
    pub fn new(
        cx: &ChildContext,
        cfg: Arc<ReplicaConfig>,
        transport: Transport,
        lock: Arc<tokio::sync::Mutex<()>>,
        router: Arc<Router>,
    ) -> Self {
        let (member, path) = (cx.path.member().to_string(), cx.path.clone());
        Self { member, path, cfg, transport, lock, router, open: None, slow_links: HashMap::new() }
    }

    /// Warns when the round trip to another voter nears the heartbeat: openraft 0.9
    /// gives each AppendEntries the heartbeat as its deadline, so writes stall near it
    /// and stop past it. Once a minute per voter while it lasts; shard 0 only.
    fn check_links(&mut self) {
        let Some(open) = &self.open else { return };
        let heartbeat = Duration::from_millis(self.cfg.raft.heartbeat_interval);
        let voters: std::collections::HashSet<String> = {
            let metrics = open.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().nodes().map(|(_, n)| n.addr.clone()).collect()
        };
        for peer in self.transport.stats() {
            let rtt = Duration::from_micros(peer.rtt_us);
            if !peer.connected || !voters.contains(&peer.peer) || rtt * 5 < heartbeat * 4 {
                continue;
            }
            let due = self.slow_links.get(&peer.peer).is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
            if due {
                tracing::warn!(peer = %peer.peer, ?rtt, ?heartbeat,
                    "the round trip to a store member nears the store heartbeat, which bounds each replication: \
                     writes stall, and stop past it; start the servers with --store-heartbeat above the round trip");
                self.slow_links.insert(peer.peer, std::time::Instant::now());
            }
        }
    }

    fn handles(&self) -> Option<Handles> {
        self.open.as_ref().map(|o| Handles {
            raft: o.raft.clone(),
            installed: o.installed.clone(),
            applied: o.applied.clone(),
            clock: o.clock.clone(),
            committed_here: o.committed_here.clone(),
            batcher: o.batcher.clone(),
            transport: self.transport.clone(),
            cfg: self.cfg.clone(),
            member: self.member.clone(),
            path: self.path.clone(),
        })
    }
}

async fn open(
    cfg: Arc<ReplicaConfig>,
    member: String,
    transport: Transport,
    lock: Arc<tokio::sync::Mutex<()>>,
    from: ActorPath,
) -> Result<Open, String> {
    let guard = lock.lock_owned().await;
    let dir = cfg.dir.clone();
    let name = format!("shard-{}", cfg.shard);
    let log = tokio::task::spawn_blocking(move || {
        // Before the log was a write-ahead log it was a redb database; nothing reads that.
        if dir.join("raft.redb").exists() && !dir.join("log").exists() {
            return Err(std::io::Error::other(format!(
                "{} holds a raft log of an older keelson (raft.redb), which this one cannot read: \
                 start the cluster from a new data folder",
                dir.display()
            )));
        }
        LogStore::open(&dir.join("log"), &name)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot open the raft log: {e}"))?;
    let sm =
        StateMachine::open(cfg.dir.clone(), cfg.event_window).map_err(|e| format!("cannot open the snapshot: {e}"))?;
    let (applied, revision) = (sm.applied.clone(), sm.revision.clone());
    let raft_cfg = Arc::new(cfg.raft.clone().validate().map_err(|e| e.to_string())?);
    let network = Network { transport: transport.clone(), shard: cfg.shard, from };
    let raft = Raft::new(node_id(&member), raft_cfg, network, log, sm).await.map_err(|e| e.to_string())?;
    if cfg.init {
        let voters: BTreeMap<u64, BasicNode> =
            cfg.members.iter().map(|m| (node_id(m), BasicNode { addr: m.clone() })).collect();
        // On a replica that already has a log this is refused (NotAllowed): fine.
        if let Err(e) = raft.initialize(voters).await {
            tracing::debug!(error = %e, "not initializing the shard");
        }
    }
    let installed = Arc::default();
    let clock = Arc::new(std::sync::Mutex::new(LeaseClock::default()));
    let expiring = transport.runtime().spawn(expire_leases(raft.clone(), applied.clone(), clock.clone(), member));
    let runtime = transport.runtime().clone();
    let committed_here: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let (batcher, batching) = Batcher::start(raft.clone(), committed_here.clone(), &runtime);
    Ok(Open {
        raft,
        installed,
        applied,
        revision,
        clock,
        committed_here,
        batcher,
        batching,
        expiring,
        guard: Some(guard),
        runtime,
        lane: None,
    })
}

/// While this replica leads, commits the revocation of every lease past its deadline.
async fn expire_leases(
    raft: Raft,
    applied: Arc<RwLock<Applied>>,
    clock: Arc<std::sync::Mutex<LeaseClock>>,
    me: String,
) {
    let me = node_id(&me);
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (leader, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != Some(me) {
            clock.lock().unwrap().step_down();
            continue;
        }
        let due = {
            let a = applied.read().unwrap();
            clock.lock().unwrap().due(term, std::time::Instant::now(), &a.data.leases)
        };
        for id in due {
            tracing::debug!(lease = id, "lease expired");
            if let Err(e) = raft.client_write(Command { epoch: None, op: WriteOp::LeaseRevoke { id } }).await {
                tracing::debug!(lease = id, error = %e, "revoking an expired lease");
                break;
            }
        }
    }
}

impl Actor for Replica {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (cfg, member, t, lock, from) =
            (self.cfg.clone(), self.member.clone(), self.transport.clone(), self.lock.clone(), self.path.clone());
        if self.cfg.shard == 0 {
            ctx.run_interval(LINK_CHECK, |me, _| me.check_links());
        }
        let opening = self.transport.runtime().spawn(open(cfg, member, t, lock, from));
        ctx.wait(actix::fut::wrap_future(opening).map(|res, me: &mut Incarnation<Self>, ctx| match res {
            Ok(Ok(open)) => {
                tracing::info!(shard = me.cfg.shard, "replica open");
                me.open = Some(open);
                let (handles, runtime) = (me.handles(), me.transport.runtime().clone());
                let lane = me.router.inline(&me.path, move |inbound| serve_inbound(handles.clone(), inbound, &runtime));
                if let Some(open) = me.open.as_mut() {
                    open.lane = Some(lane);
                }
            }
            Ok(Err(e)) => exit(ctx, ExitReason::failed(e)),
            Err(e) => exit(ctx, ExitReason::failed(format!("opening panicked: {e}"))),
        }));
    }
}

/// What a client operation needs, detached from the actor so it can run on the
/// transport's runtime.
#[derive(Clone)]
struct Handles {
    raft: Raft,
    installed: Arc<std::sync::atomic::AtomicU64>,
    applied: Arc<RwLock<Applied>>,
    clock: Arc<std::sync::Mutex<LeaseClock>>,
    /// Whether this process has committed an entry as leader: see `confirm_commit`.
    committed_here: Arc<std::sync::atomic::AtomicBool>,
    /// This replica's group commit, for the writes it proposes as leader.
    batcher: Batcher,
    transport: Transport,
    cfg: Arc<ReplicaConfig>,
    member: String,
    path: ActorPath,
}

impl Handles {
    /// Runs `op` on the transport's runtime, off the caller's thread. A write whose
    /// task died (the runtime shutting down) may have been proposed: `Unknown`.
    async fn spawned(self, op: ClientOp) -> ClientReply {
        let write = op.is_write();
        let runtime = self.transport.runtime().clone();
        match runtime.spawn(async move { self.execute(op).await }).await {
            Ok(reply) => reply,
            Err(e) if write => ClientReply::Unknown(format!("{e}: the write may or may not take effect")),
            Err(e) => ClientReply::Error(e.to_string()),
        }
    }

    async fn execute(&self, op: ClientOp) -> ClientReply {
        match op {
            ClientOp::Status => ClientReply::Status(self.status()),
            ClientOp::Write(cmd) => {
                // Forward only what this replica never proposed: a write it proposed as
                // leader and then lost the lead over may still commit under the next
                // leader, and forwarding it too could apply it twice. Such a write is
                // `Unknown` to the caller, who reads before retrying.
                let leader = self.status().leader;
                if leader.as_deref() != Some(self.member.as_str()) {
                    return self.forward(leader, ClientOp::Write(cmd)).await;
                }
                self.batcher.write(cmd).await
            }
            change @ (ClientOp::AddMember { .. } | ClientOp::RemoveMember { .. }) => {
                let leader = self.status().leader;
                if leader.as_deref() != Some(self.member.as_str()) {
                    return self.forward(leader, change).await;
                }
                self.change_members(change).await
            }
            read => {
                // A leader that cannot hear from a quorum right now (a busy or lossy
                // moment) tries again until the deadline before giving up.
                let asked = tokio::time::Instant::now();
                let until = asked + self.cfg.deadline;
                loop {
                    match self.read_index().await {
                        Ok(index) => {
                            return match read {
                                ClientOp::KeepAlive { lease } => self.keep_alive(lease, index, asked).await,
                                read => match self.wait_applied(index).await {
                                    Ok(()) => self.read(&read),
                                    Err(e) => ClientReply::Error(e),
                                },
                            }
                        }
                        Err(e) => match e.forward_to_leader::<BasicNode>() {
                            Some(f) => return self.forward(f.leader_node.clone().map(|n| n.addr), read).await,
                            None if tokio::time::Instant::now() + READ_RETRY < until => {
                                tracing::debug!(error = %e, "read-index not confirmed; retrying");
                                tokio::time::sleep(READ_RETRY).await;
                            }
                            None => return ClientReply::Error(e.to_string()),
                        },
                    }
                }
            }
        }
    }

    fn read(&self, op: &ClientOp) -> ClientReply {
        let a = self.applied.read().unwrap();
        let revision = a.data.revision;
        let item = |(k, v): (String, super::state::Value)| Item {
            key: k,
            value: v.data,
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            version: v.version,
            lease: v.lease,
        };
        match op {
            ClientOp::Get { key } => {
                let term = self.raft.metrics().borrow().current_term;
                ClientReply::Item {
                    revision,
                    item: a.data.kv.get(key).map(|v| item((key.clone(), v.clone()))),
                    served_by: self.member.clone(),
                    term,
                }
            }
            ClientOp::Range { start, end, after, limit, at } => {
                let limit = (*limit).clamp(1, 10_000);
                let page = match at {
                    Some(at) => a.data.range_at(start, end, after.as_deref(), limit, *at),
                    None => Ok(a.data.range(start, end, after.as_deref(), limit)),
                };
                match page {
                    Ok((items, more)) => ClientReply::Items {
                        revision: at.unwrap_or(revision).min(revision),
                        items: items.into_iter().map(item).collect(),
                        more,
                    },
                    Err(e) => ClientReply::Expired { asked: e.asked, oldest: e.oldest },
                }
            }
            _ => ClientReply::Error("not a read".into()),
        }
    }

    /// Read-index: confirms this replica leads (a quorum answered its heartbeat) and
    /// returns the index a linearizable read must see applied (`wait_applied`).
    ///
    /// openraft's read index is the larger of the commit index and the leader's first
    /// entry of its term. A leader restarted within its own term (openraft restores it
    /// at once) still has its old first entry, and its commit index comes back from a
    /// save that is not fsync'd, so it may not know of entries it acknowledged just
    /// before it died. Until it has committed an entry in this process, it commits a
    /// no-op first: that commits (and so applies) everything before it.
    async fn read_index(&self) -> Result<u64, RaftError<u64, openraft::error::CheckIsLeaderError<u64, BasicNode>>> {
        let (index, _) = self.raft.get_read_log_id().await?;
        if self.committed_here.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(index.map_or(0, |l| l.index));
        }
        let noop = Command { epoch: None, op: WriteOp::RaiseEpoch { epoch: 0 } };
        match self.raft.client_write(noop).await {
            Ok(_) => {
                self.committed_here.store(true, std::sync::atomic::Ordering::Release);
                let (index, _) = self.raft.get_read_log_id().await?;
                Ok(index.map_or(0, |l| l.index))
            }
            Err(e) => {
                let leader = e.forward_to_leader::<BasicNode>().cloned();
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                    leader.unwrap_or_else(openraft::error::ForwardToLeader::empty),
                )))
            }
        }
    }

    /// Waits until this replica has applied the log up to `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), String> {
        if self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index) >= index {
            return Ok(());
        }
        self.raft.wait(None).applied_index_at_least(Some(index), "read").await.map(drop).map_err(|e| e.to_string())
    }

    /// Runs a membership change on this replica, the shard's leader.
    async fn change_members(&self, op: ClientOp) -> ClientReply {
        use openraft::ChangeMembers;
        let voters =
            || -> Vec<u64> { self.raft.metrics().borrow().membership_config.membership().voter_ids().collect() };
        let change = match op {
            ClientOp::AddMember { name } => {
                let id = node_id(&name);
                if !voters().contains(&id) {
                    if let Err(e) = self.raft.add_learner(id, BasicNode { addr: name.clone() }, false).await {
                        return ClientReply::Error(format!("adding {name} as a learner: {e}"));
                    }
                    if let Err(e) = self.catch_up(id, &name).await {
                        return ClientReply::Error(e);
                    }
                }
                ChangeMembers::AddVoterIds([id].into())
            }
            ClientOp::RemoveMember { name } => {
                let id = node_id(&name);
                let now = voters();
                if !now.contains(&id) {
                    return ClientReply::Error(format!("{name} is not a voter of shard {}", self.cfg.shard));
                }
                if now.len() == 1 {
                    return ClientReply::Error(format!("{name} is the shard's last voter"));
                }
                ChangeMembers::RemoveVoters([id].into())
            }
            _ => return ClientReply::Error("not a membership change".into()),
        };
        match self.raft.change_membership(change, false).await {
            Ok(_) => {
                let s = self.status();
                let learners = s.members.iter().filter(|m| !s.voters.contains(m)).cloned().collect();
                ClientReply::Members { voters: s.voters, learners }
            }
            Err(e) => ClientReply::Error(format!("changing the membership: {e}")),
        }
    }

    /// Waits until learner `id` holds the leader's log as it was when the wait began.
    async fn catch_up(&self, id: u64, name: &str) -> Result<(), String> {
        let mut metrics = self.raft.metrics();
        let target = metrics.borrow().last_log_index.unwrap_or(0);
        let until = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let matched = {
                let m = metrics.borrow();
                if m.current_leader != Some(node_id(&self.member)) {
                    return Err(format!("lost the lead while {name} was catching up; retry"));
                }
                m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map_or(0, |l| l.index)
            };
            if matched >= target {
                return Ok(());
            }
            match tokio::time::timeout_at(until, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the shard is shutting down".into()),
                Err(_) => {
                    return Err(format!(
                        "{name} did not catch up within {CATCH_UP:?} (it holds {matched} of {target} entries): is it \
                         running, started with --join, and reachable?"
                    ))
                }
            }
        }
    }

    /// Renews `lease` on this replica, which has just confirmed that it leads as of
    /// log `index`.
    ///
    /// A keep-alive does not wait for the apply to reach `index` when the lease is
    /// already in the applied data: under a burst of writes the apply runs behind, and
    /// waiting for it made the controllers' lease lapse while its holder kept asking
    /// (session 19, 100,000 pods). Renewing a lease whose revoke is committed but not yet
    /// applied changes nothing: the revoke deletes its keys all the same, the holder's
    /// next keep-alive finds it gone, and what it wrote meanwhile is fenced. Only a lease
    /// not (yet) applied here waits, to tell "unknown" from "not applied yet".
    async fn keep_alive(&self, lease: u64, index: u64, asked: tokio::time::Instant) -> ClientReply {
        let confirmed = asked.elapsed();
        let ttl = || self.applied.read().unwrap().data.leases.get(&lease).map(|l| l.ttl_ms);
        let ttl_ms = match ttl() {
            Some(ttl) => Some(ttl),
            None => match self.wait_applied(index).await {
                Ok(()) => ttl(),
                Err(e) => return ClientReply::Error(e),
            },
        };
        if asked.elapsed() > SLOW_KEEP_ALIVE {
            tracing::warn!(?confirmed, took = ?asked.elapsed(), "slow lease keep-alive (leadership confirmed after `confirmed`)");
        }
        if let Some(ttl) = ttl_ms {
            let term = self.raft.metrics().borrow().current_term;
            self.clock.lock().unwrap().keep_alive(term, lease, ttl, std::time::Instant::now());
        }
        ClientReply::KeptAlive { lease, ttl_ms }
    }

    fn status(&self) -> ShardStatus {
        let m = self.raft.metrics().borrow().clone();
        let name_of = |id: u64| m.membership_config.membership().get_node(&id).map(|n| n.addr.clone());
        let a = self.applied.read().unwrap();
        ShardStatus {
            shard: self.cfg.shard,
            member: self.member.clone(),
            leader: m.current_leader.and_then(name_of),
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            revision: a.data.revision,
            members: m.membership_config.membership().nodes().map(|(_, n)| n.addr.clone()).collect(),
            voters: m.membership_config.membership().voter_ids().filter_map(name_of).collect(),
            snapshots_installed: self.installed.load(std::sync::atomic::Ordering::Relaxed),
            snapshot: m.snapshot.map_or(0, |l| l.index),
            purged: m.purged.map_or(0, |l| l.index),
        }
    }

    /// Forwards `op` to the leader. An attempt that gets no answer (the leader died, or
    /// is cut off) is retried, against whoever leads by then, until the deadline: a write
    /// forwarded twice is still applied at most once only if the first attempt never
    /// reached the leader, so a failed attempt that may have reached it is reported as
    /// an error rather than retried.
    async fn forward(&self, leader: Option<String>, op: ClientOp) -> ClientReply {
        let long = matches!(op, ClientOp::AddMember { .. } | ClientOp::RemoveMember { .. });
        let until =
            tokio::time::Instant::now() + if long { CATCH_UP + Duration::from_secs(10) } else { self.cfg.deadline };
        let mut leader = leader;
        loop {
            let Some(target) = leader.clone().filter(|l| *l != self.member) else {
                // No leader known (an election is on): wait for one rather than fail.
                match self.await_leader(until).await {
                    Some(l) if l != self.member => {
                        leader = Some(l);
                        continue;
                    }
                    // This replica was elected: run the operation here.
                    Some(_) => return Box::pin(self.execute(op)).await,
                    None => return ClientReply::NoLeader,
                }
            };
            let remote =
                RemoteRef::new(self.transport.clone(), replica_path(&target, self.cfg.shard), self.path.clone());
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let attempt = if long { left } else { left.min(FORWARD_ATTEMPT) };
            match remote.request::<_, ShardRpcReply>(&ShardRpc::Client(op.clone()), attempt).await {
                Ok(ShardRpcReply::Client(reply)) => return reply,
                Ok(_) => return ClientReply::Error(format!("{target} answered something else")),
                Err(e) => {
                    let undelivered = matches!(
                        e,
                        crate::transport::RemoteError::Transport(keelson_transport::Error::Unreachable { .. })
                    );
                    let retryable = undelivered || !op.is_write();
                    if !retryable || tokio::time::Instant::now() + Duration::from_millis(50) >= until {
                        let why = format!("forwarding to the leader {target}: {e}");
                        return if retryable { ClientReply::Error(why) } else { ClientReply::Unknown(why) };
                    }
                    // Wait for the leader to change (or the same one to come back).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    leader = self.status().leader;
                }
            }
        }
    }

    /// Waits until some replica is known to lead the shard, up to `until`.
    async fn await_leader(&self, until: tokio::time::Instant) -> Option<String> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(l) = self.status().leader {
                return Some(l);
            }
            if !matches!(tokio::time::timeout_at(until, metrics.changed()).await, Ok(Ok(()))) {
                return None;
            }
        }
    }

    /// Answers a raft RPC or a forwarded client operation from another member.
    async fn serve(self, rpc: ShardRpc) -> ShardRpcReply {
        match rpc {
            ShardRpc::Append(r) => ShardRpcReply::Append(self.raft.append_entries(r).await),
            ShardRpc::Vote(r) => ShardRpcReply::Vote(self.raft.vote(r).await),
            ShardRpc::Snapshot(r) => {
                let last_chunk = r.done;
                let result = self.raft.install_snapshot(r).await;
                if last_chunk && result.is_ok() {
                    self.installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                ShardRpcReply::Snapshot(result)
            }
            ShardRpc::Client(op) => ShardRpcReply::Client(self.execute(op).await),
        }
    }
}

impl Handler<Execute> for Replica {
    type Result = AsyncReply<Self, ClientReply>;

    fn handle(&mut self, Execute(op): Execute, _: &mut Ctx<Self>) -> Self::Result {
        let Some(h) = self.handles() else {
            return Box::pin(actix::fut::ready(ClientReply::Error("the replica is still opening".into())));
        };
        Box::pin(actix::fut::wrap_future(h.spawned(op)))
    }
}

impl Handler<Direct> for Replica {
    type Result = Option<DirectReplica>;

    fn handle(&mut self, _: Direct, _: &mut Ctx<Self>) -> Self::Result {
        self.handles().map(DirectReplica)
    }
}

impl Handler<Watch> for Replica {
    type Result = Option<WatchSource>;

    fn handle(&mut self, _: Watch, _: &mut Ctx<Self>) -> Self::Result {
        self.open.as_ref().map(|o| WatchSource { applied: o.applied.clone(), revision: o.revision.subscribe() })
    }
}

impl Handler<ReadLocal> for Replica {
    type Result = Option<super::Item>;

    fn handle(&mut self, ReadLocal(key): ReadLocal, _: &mut Ctx<Self>) -> Self::Result {
        let a = self.open.as_ref()?.applied.read().unwrap();
        a.data.kv.get(&key).map(|v| super::Item {
            key,
            value: v.data.clone(),
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            version: v.version,
            lease: v.lease,
        })
    }
}

impl Handler<Delivered> for Replica {
    type Result = ();

    fn handle(&mut self, Delivered(inbound): Delivered, _: &mut Ctx<Self>) {
        serve_inbound(self.handles(), inbound, self.transport.runtime());
    }
}

/// Answers a raft RPC or forwarded client operation (on `runtime`): from the mailbox, or
/// from the inline lane an open replica keeps so that its raft traffic never waits
/// behind the rest of the actor's thread.
fn serve_inbound(handles: Option<Handles>, inbound: keelson_transport::Inbound, runtime: &tokio::runtime::Handle) {
    let reply = inbound.reply;
    if !matches!(reply, Reply::Stream { .. }) {
        return;
    }
    let rpc = from_payload::<ShardRpc>(&inbound.envelope.payload);
    runtime.spawn(async move {
        match (rpc, handles) {
            (Ok(rpc), Some(h)) => {
                let answer = h.serve(rpc).await;
                match to_payload(&answer) {
                    Ok(bytes) => {
                        let _caller_gone = reply.respond(bytes).await;
                    }
                    Err(e) => {
                        let _caller_gone = reply.fail(500, &e.to_string()).await;
                    }
                }
            }
            (Err(e), _) => {
                let _caller_gone = reply.fail(400, &format!("not a shard request: {e}")).await;
            }
            (_, None) => {
                let _caller_gone = reply.fail(503, "the replica is still opening").await;
            }
        }
    });
}
