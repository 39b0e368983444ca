//! `/<server>/leader`: which server member runs the scheduler and controllers.
//!
//! Every server member campaigns for one store key, `/keelson/leader/controllers`,
//! attached to a lease of its own (the store's leader expires leases on its clock, never
//! a follower's); the member leading the store goes first, the others after the key has
//! been free for a TTL. The member whose transaction creates the key leads; the key's
//! revision is its **fencing epoch**, raised on every shard before it acts, and carried
//! by each of its writes (`ApiClient::with_epoch`), so once another member has taken
//! over, nothing the old leader still sends is written (409 `Fenced`). The leader keeps
//! its lease alive; when a keep-alive finds the lease gone, or none succeeds for a whole
//! TTL (cut off), it stops the controllers and exits — its supervisor restarts it as a
//! candidate. While it leads, the controllers run under `/<server>/controllers`, each
//! calling this member's API with the leader's epoch.

use std::time::{Duration, Instant};

use actix::{ActorFutureExt, AsyncContext};
use keelson_config::ControlPlaneConfig;
use serde_json::json;

use super::namespace::NamespaceController;
use super::scheduler::Scheduler;
use super::{
    ControllerContext, DaemonSetController, DeploymentController, EndpointsController, GarbageCollector, JobController,
    NodeIpamController, NodeLifecycleController, ReplicaSetController, SharedInformers,
};
use crate::api::{ApiClient, ApiServer};
use crate::runtime::{
    exit, Actor, ChildContext, ChildSpec, Ctx, ExitReason, Incarnation, Ref, Restart, StartChild, StopChild, Supervisor,
};
use crate::store::state::{Cmp, Command, Compare, Outcome, Target, TxnOp, WriteOp};
use crate::store::{execute, execute_on, shard_of, ClientOp, ClientReply, Direct, DirectReplica, Replica};

/// The key the members campaign for.
pub const LEADER_KEY: &str = "/keelson/leader/controllers";

/// How long a leader's lease lives without a keep-alive, and how often it renews.
#[derive(Debug, Clone, Copy)]
pub struct Election {
    pub ttl: Duration,
    pub renew: Duration,
}

impl Default for Election {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(3), renew: Duration::from_millis(750) }
    }
}

/// A term of leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub lease: u64,
    pub epoch: u64,
}

pub struct Elector {
    member: String,
    replicas: Vec<Ref<Replica>>,
    election: Election,
    /// What the controllers are configured with (pod ranges, default tolerations).
    control: ControlPlaneConfig,
    /// Where the controllers run while this member leads (`/<server>/controllers`).
    controllers: Ref<Supervisor>,
    /// This member's API, which the controllers call (a local actor message).
    api: Ref<ApiServer>,
}

impl Elector {
    pub fn new(
        cx: &ChildContext,
        replicas: Vec<Ref<Replica>>,
        election: Election,
        control: ControlPlaneConfig,
        controllers: Ref<Supervisor>,
        api: Ref<ApiServer>,
    ) -> Self {
        Self { member: cx.path.member().to_string(), replicas, election, control, controllers, api }
    }
}

/// The controllers a leader runs, each writing with the leader's epoch.
fn controller_specs(client: &ApiClient, control: ControlPlaneConfig) -> Vec<ChildSpec> {
    let cx = ControllerContext { client: client.clone(), informers: SharedInformers::new(client.clone()), control };
    let client = &cx;
    fn spec<A: Actor>(name: &str, cx: &ControllerContext, make: fn(ControllerContext) -> A) -> ChildSpec {
        let cx = cx.clone();
        ChildSpec::new(name, Restart::Permanent, move |_| make(cx.clone())).0
    }
    vec![
        spec(CONTROLLERS[0], client, NamespaceController::new),
        spec(CONTROLLERS[1], client, Scheduler::new),
        spec(CONTROLLERS[2], client, ReplicaSetController::new),
        spec(CONTROLLERS[3], client, DeploymentController::new),
        spec(CONTROLLERS[4], client, GarbageCollector::new),
        spec(CONTROLLERS[5], client, NodeLifecycleController::new),
        spec(CONTROLLERS[6], client, DaemonSetController::new),
        spec(CONTROLLERS[7], client, JobController::new),
        spec(CONTROLLERS[8], client, NodeIpamController::new),
        spec(CONTROLLERS[9], client, EndpointsController::new),
        spec(CONTROLLERS[10], client, crate::cloud::CloudController::new),
    ]
}

/// Their names (children of `/<server>/controllers`), in `controller_specs`' order.
const CONTROLLERS: &[&str] = &[
    "namespace",
    "scheduler",
    "replicaset",
    "deployment",
    "garbage-collector",
    "node-lifecycle",
    "daemonset",
    "job",
    "node-ipam",
    "endpoints",
    "cloud",
];

async fn stop_controllers(controllers: &Ref<Supervisor>) {
    for name in CONTROLLERS {
        let _not_running = controllers.send(StopChild { name: (*name).to_string() }).await;
    }
}

/// The store as the elector uses it.
#[derive(Clone)]
struct Store {
    replicas: Vec<Ref<Replica>>,
}

impl Store {
    async fn run(&self, key: &str, op: ClientOp) -> Result<ClientReply, String> {
        execute(&self.replicas, key, op).await.map_err(|e| e.to_string())
    }

    async fn write(&self, key: &str, op: WriteOp) -> Result<Outcome, String> {
        match self.run(key, ClientOp::Write(Command { epoch: None, op })).await? {
            ClientReply::Written(o) => Ok(o),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// One try: the term won, or `None` while another member leads or goes first.
    ///
    /// The member whose replica leads the store goes first: its controllers' writes then
    /// need no forwarding. With the two apart, a scheduling benchmark spent about half
    /// again as much CPU per pod. Another member waits until the key has been free for a
    /// whole TTL (`free_since`), so one is always chosen.
    async fn campaign(
        &self,
        member: &str,
        ttl: Duration,
        free_since: &mut Option<Instant>,
    ) -> Result<Option<Term>, String> {
        if let ClientReply::Item { item: Some(_), .. } =
            self.run(LEADER_KEY, ClientOp::Get { key: LEADER_KEY.into() }).await?
        {
            *free_since = None;
            return Ok(None);
        }
        let free_for = free_since.get_or_insert_with(Instant::now).elapsed();
        if free_for < ttl && !self.leads_store(member).await {
            return Ok(None);
        }
        let lease = fastrand::u64(1..);
        let ttl_ms = ttl.as_millis() as u64;
        match self.write(LEADER_KEY, WriteOp::LeaseGrant { id: lease, ttl_ms }).await? {
            Outcome::Lease { granted: true, .. } => {}
            other => return Err(format!("lease not granted: {other:?}")),
        }
        let value = json!({"member": member, "lease": lease}).to_string().into_bytes();
        let txn = WriteOp::Txn {
            compares: vec![Compare { key: LEADER_KEY.into(), target: Target::Version(0), cmp: Cmp::Equal }],
            success: vec![TxnOp::Put { key: LEADER_KEY.into(), value, lease }],
            failure: vec![],
        };
        match self.write(LEADER_KEY, txn).await? {
            Outcome::Txn { succeeded: true, revision } => {
                // Every shard refuses the previous leaders' writes from now on.
                for replica in &self.replicas {
                    let raise = Command { epoch: None, op: WriteOp::RaiseEpoch { epoch: revision } };
                    execute_on(replica, ClientOp::Write(raise)).await.map_err(|e| e.to_string())?;
                }
                Ok(Some(Term { lease, epoch: revision }))
            }
            Outcome::Txn { succeeded: false, .. } => {
                let _ = self.write(LEADER_KEY, WriteOp::LeaseRevoke { id: lease }).await;
                Ok(None)
            }
            other => Err(format!("unexpected outcome {other:?}")),
        }
    }

    /// Whether this member's replica of the leader key's shard leads that shard.
    async fn leads_store(&self, member: &str) -> bool {
        matches!(self.run(LEADER_KEY, ClientOp::Status).await,
                 Ok(ClientReply::Status(s)) if s.leader.as_deref() == Some(member))
    }

    /// The leader key's shard replica on this member, as a handle off this member's thread.
    async fn direct(&self) -> Option<DirectReplica> {
        let shard = shard_of(LEADER_KEY, self.replicas.len() as u32) as usize;
        self.replicas.get(shard)?.send(Direct).await.ok().flatten()
    }
}

/// Whether the term's lease is still alive (renewed for a full TTL).
async fn keep_alive(direct: &DirectReplica, term: Term) -> Result<bool, String> {
    match direct.execute(ClientOp::KeepAlive { lease: term.lease }).await {
        ClientReply::KeptAlive { ttl_ms, .. } => Ok(ttl_ms.is_some()),
        ClientReply::NoLeader => Err("the store has no leader right now".into()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Keeps `term`'s lease alive until a keep-alive finds it gone or none succeeds for a
/// whole TTL; why it stopped. Runs on the store's runtime.
async fn keep_leading(store: Store, mut direct: DirectReplica, term: Term, election: Election) -> String {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(election.renew).await;
        let asked = Instant::now();
        let kept = keep_alive(&direct, term).await;
        // Under a write burst the lease has lapsed while this member still led
        // (session 19, 100,000 pods): say how late each slow keep-alive came.
        let took = asked.elapsed();
        if took > election.ttl / 3 {
            let since = renewed.elapsed();
            tracing::warn!(?took, ?since, ttl = ?election.ttl, "slow controller lease keep-alive");
        }
        match kept {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                let since = renewed.elapsed();
                return format!("lost the controller lease (epoch {}, last renewed {since:?} ago)", term.epoch);
            }
            Err(e) => {
                if renewed.elapsed() >= election.ttl {
                    return format!("could not renew the controller lease for {:?}: {e}", election.ttl);
                }
                // The replica may have restarted: its new incarnation's handle, if open.
                if let Some(again) = store.direct().await {
                    direct = again;
                }
            }
        }
    }
}

/// Aborts a task when dropped: the keep-alives stop with the elector that started them.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for Elector {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let store = Store { replicas: self.replicas.clone() };
        let (member, election, control) = (self.member.clone(), self.election, self.control);
        let (controllers, api) = (self.controllers.clone(), self.api.clone());
        let task = async move {
            // Whatever an earlier incarnation started is not ours to keep.
            stop_controllers(&controllers).await;
            let mut free_since = None;
            let term = loop {
                match store.campaign(&member, election.ttl, &mut free_since).await {
                    Ok(Some(term)) => break term,
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "campaign failed; trying again"),
                }
                actix_rt::time::sleep(election.renew).await;
            };
            tracing::info!(epoch = term.epoch, "leading the controllers");
            let client = ApiClient::local(api).with_epoch(term.epoch);
            for spec in controller_specs(&client, control) {
                if let Err(e) = controllers.send(StartChild(spec)).await {
                    tracing::warn!(error = %e, "cannot start a controller");
                }
            }
            // The keep-alives run on the store's runtime, not this member's thread: under a
            // burst of pods that thread, which serves every actor's mailbox here, held one
            // up past the TTL while the store itself answered in time (session 20).
            let why = match store.direct().await {
                Some(direct) => {
                    let keep = keep_leading(store.clone(), direct.clone(), term, election);
                    let task = direct.runtime().spawn(tracing::Instrument::in_current_span(keep));
                    let _abort_if_killed = AbortOnDrop(task.abort_handle());
                    task.await.unwrap_or_else(|e| format!("the controller lease's keep-alive stopped: {e}"))
                }
                None => "the store replica is not open; cannot keep the controller lease".into(),
            };
            stop_controllers(&controllers).await;
            why
        };
        ctx.spawn(actix::fut::wrap_future(task).map(|why, _: &mut Incarnation<Self>, ctx: &mut Ctx<Self>| {
            exit(ctx, ExitReason::failed(why));
        }));
    }
}
