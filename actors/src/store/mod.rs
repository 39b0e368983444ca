//! The replicated configuration store: S shards, each an openraft group with a
//! replica on every server member.
//!
//! ```text
//! /<member>/store              supervisor, one_for_one
//!   /shard-0 … /shard-<S-1>    one Replica per shard (raft + log + snapshots)
//! ```
//!
//! - `state.rs`: the data (ordered map, revisions, fencing epoch, event window), pure;
//! - `leases.rs`: when leases expire (the leader's clock);
//! - `log.rs`: the raft log and vote, fsync'd before raft hears "durable";
//! - `wal.rs`: the append-only segment files under the log;
//! - `sm.rs`: the state machine in memory, snapshots on disk;
//! - `pages.rs`: cursors and consistent pages across shards;
//! - `network.rs`: raft RPCs over the member transport;
//! - `replica.rs`: the actor, and client operations (writes through the log,
//!   linearizable reads through read-index, forwarding to the leader).
//!
//! Keys map to shards by a stable hash of their (resource, namespace) prefix, so one
//! namespace's objects of one kind share a shard (and its transactions).

// openraft's `StorageError` (224 bytes) is the error type its storage traits dictate;
// the helpers around them return it as it is rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

mod batch;
mod leases;
mod log;
mod network;
pub mod pages;
mod replica;
mod sm;
pub mod state;
mod types;
mod wal;

use std::sync::Arc;
use std::time::Duration;

pub use network::replica_path;
pub use replica::{any_changed, Direct, DirectReplica, Execute, ReadLocal, Replica, ReplicaConfig, Watch, WatchSource};
pub use types::{node_id, ClientOp, ClientReply, Item, ShardStatus};

pub use keelson_config::StoreConfig;
use keelson_config::SupervisorConfig;
use keelson_transport::Transport;

use crate::runtime::{ActorPath, ChildSpec, Ref, Restart, Strategy, SupervisorSpec};
use crate::transport::Router;

/// How long a follower may take to receive and install a snapshot segment.
const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One shard's raft configuration, from the member's store configuration.
fn raft_config(cfg: &StoreConfig, shard: u32) -> openraft::Config {
    openraft::Config {
        cluster_name: format!("keelson-shard-{shard}"),
        election_timeout_min: cfg.election_timeout.0.as_millis() as u64,
        election_timeout_max: cfg.election_timeout.1.as_millis() as u64,
        heartbeat_interval: cfg.heartbeat.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
        // As etcd keeps 5,000 entries after a snapshot for followers to catch up from: a
        // follower a second or two behind under load must not need a whole snapshot
        // (tens of MB at 15,000 objects) when a few thousand entries would do.
        max_in_snapshot_log_to_keep: cfg.snapshot_every,
        // Sending and installing a snapshot's last segment (openraft's default is 200 ms)
        // means decoding, writing and fsyncing the whole state: tens of MB at 15,000
        // objects, or a slow disk under load. A deadline shorter than that never lets a
        // lagging follower catch up, as every attempt is dropped and started again.
        install_snapshot_timeout: SNAPSHOT_INSTALL_TIMEOUT.as_millis() as u64,
        // Entries are batches of writes (group commit, `batch.rs`): fewer per message.
        max_payload_entries: batch::MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    }
}

/// Which shard a key lives on: a stable hash (FNV-1a) of its (resource, namespace)
/// prefix — the first four segments of `/registry/<group>/<resource>/<namespace>/…`,
/// or the key's first two segments otherwise.
pub fn shard_of(key: &str, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let depth = if key.starts_with("/registry/") { 5 } else { 3 };
    let prefix: String = key.split('/').take(depth).collect::<Vec<_>>().join("/");
    (node_id(&prefix) % shards as u64) as u32
}

/// The `/store` subtree of `member`; returns it and a reference to each shard's replica.
pub fn store_tree(
    member: &ActorPath,
    cfg: &StoreConfig,
    transport: Transport,
    router: &Arc<Router>,
) -> (ChildSpec, Vec<Ref<Replica>>) {
    let mut spec = SupervisorSpec::new(Strategy::OneForOne, SupervisorConfig::default());
    let mut refs = Vec::new();
    for shard in 0..cfg.shards {
        let rcfg = Arc::new(ReplicaConfig {
            shard,
            dir: cfg.dir.join(format!("shard-{shard}")),
            members: cfg.members.clone(),
            // Each shard is proposed by a different member, so leaders start spread out.
            init: !cfg.members.is_empty() && cfg.members[shard as usize % cfg.members.len()] == member.member(),
            raft: raft_config(cfg, shard),
            deadline: cfg.deadline,
            event_window: cfg.event_window,
        });
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let (t, routes) = (transport.clone(), router.clone());
        let (child, r) = ChildSpec::new(&format!("shard-{shard}"), Restart::Permanent, move |cx| {
            Replica::new(cx, rcfg.clone(), t.clone(), lock.clone(), routes.clone())
        });
        router.route(&replica_path(member.member(), shard), r.clone());
        spec = spec.child(child.with_shutdown(Duration::from_secs(10)));
        refs.push(r);
    }
    (ChildSpec::supervisor("store", Restart::Permanent, spec).0, refs)
}

/// Why the store gave no answer, split by what a client may do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Nothing was done (no leader right now, the replica not running): retry.
    #[error("{0}")]
    Unavailable(String),
    /// A write that may or may not take effect: read before retrying.
    #[error("{0}")]
    Unknown(String),
}

/// Runs `op` on the shard of `key` through this member's replicas: the answer, or why
/// there is none.
pub async fn execute(replicas: &[Ref<Replica>], key: &str, op: ClientOp) -> Result<ClientReply, StoreError> {
    let shard = shard_of(key, replicas.len() as u32) as usize;
    let replica =
        replicas.get(shard).ok_or_else(|| StoreError::Unavailable("no store replica on this member".into()))?;
    execute_on(replica, op).await
}

/// Runs `op` through one shard's replica (see [`execute`]).
pub async fn execute_on(replica: &Ref<Replica>, op: ClientOp) -> Result<ClientReply, StoreError> {
    let write = op.is_write();
    match replica.send(Execute(op)).await {
        Ok(ClientReply::NoLeader) => Err(StoreError::Unavailable("the store has no leader right now; retry".into())),
        Ok(ClientReply::Error(e)) => Err(StoreError::Unavailable(format!("the store: {e}"))),
        Ok(ClientReply::Unknown(e)) => Err(StoreError::Unknown(format!("the store: {e}"))),
        Ok(reply) => Ok(reply),
        // The replica's mailbox closed: it stopped before or while running the write.
        Err(e) if write => Err(StoreError::Unknown(format!("the store replica: {e}"))),
        Err(e) => Err(StoreError::Unavailable(format!("the store replica: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_namespace_and_resource_share_a_shard() {
        let a = shard_of("/registry/apps/deployments/default/web", 4);
        assert_eq!(a, shard_of("/registry/apps/deployments/default/api", 4));
        let spread: std::collections::BTreeSet<u32> =
            (0..64).map(|i| shard_of(&format!("/registry/core/pods/ns-{i}/x"), 4)).collect();
        assert_eq!(spread.len(), 4, "keys spread over every shard");
        assert_eq!(shard_of("/anything", 1), 0);
    }
}
