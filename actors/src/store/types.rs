//! The raft type configuration of a shard, and the messages replicas exchange.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::state::{Command, Outcome};

openraft::declare_raft_types!(
    /// One shard's raft group: commands are `Command`s, outcomes `Outcome`s, nodes are
    /// members named in `BasicNode::addr`.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

/// A member's raft node id: a stable hash of its name (FNV-1a), so every member
/// derives every other's id from the name alone.
pub fn node_id(member: &str) -> NodeId {
    crate::hash::fnv1a(member.as_bytes())
}

/// A client operation, as forwarded to the leader or run locally.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ClientOp {
    Get {
        key: String,
    },
    /// Keys in `[start, end)` after `after`; at revision `at` when given (the
    /// later pages of one list read the snapshot its first page did).
    Range {
        start: String,
        end: String,
        after: Option<String>,
        limit: usize,
        at: Option<u64>,
    },
    Write(Command),
    /// Renews a lease for its full TTL (answered by the leader, which keeps the clocks).
    KeepAlive {
        lease: u64,
    },
    /// Adds a member to the shard: first as a learner, promoted to voter once it has
    /// caught up with the leader's log.
    AddMember {
        name: String,
    },
    /// Removes a member from the shard's voters (and from its nodes).
    RemoveMember {
        name: String,
    },
    Status,
}

impl ClientOp {
    /// A write to the keyspace: once handed to raft it may commit even when its
    /// answer is lost, so a failure after that point is `Unknown`, not `Unavailable`.
    pub fn is_write(&self) -> bool {
        matches!(self, ClientOp::Write(_))
    }
}

/// A stored item as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub key: String,
    /// The stored bytes themselves, shared (a read copies nothing).
    pub value: bytes::Bytes,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The lease the key goes with (0: none).
    pub lease: u64,
}

/// The shard as a status query sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardStatus {
    pub shard: u32,
    pub member: String,
    pub leader: Option<String>,
    pub term: u64,
    pub last_applied: u64,
    pub revision: u64,
    pub members: Vec<String>,
    /// Which of `members` vote (the others are learners, catching up).
    #[serde(default)]
    pub voters: Vec<String>,
    /// Snapshots this replica has installed from a leader (it had fallen behind the
    /// leader's compacted log).
    pub snapshots_installed: u64,
    /// The log index of this replica's latest snapshot (0: none yet).
    #[serde(default)]
    pub snapshot: u64,
    /// The log is compacted up to this index (0: nothing purged).
    #[serde(default)]
    pub purged: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ClientReply {
    Item {
        revision: u64,
        item: Option<Item>,
        /// The replica that answered (as etcd's response header names it), and its term.
        served_by: String,
        term: u64,
    },
    Items {
        revision: u64,
        items: Vec<Item>,
        more: bool,
    },
    Written(Outcome),
    /// A kept-alive lease's TTL, or `None` when the shard has no such lease.
    KeptAlive {
        lease: u64,
        ttl_ms: Option<u64>,
    },
    /// The shard's membership after a change.
    Members {
        voters: Vec<String>,
        learners: Vec<String>,
    },
    /// A read at a revision older than the kept window.
    Expired {
        asked: u64,
        oldest: u64,
    },
    Status(ShardStatus),
    /// This member is not the leader and does not know who is (an election is on).
    NoLeader,
    /// Nothing was done (the replica is opening or closing, the leader unreachable):
    /// safe to retry.
    Error(String),
    /// A write handed to raft (or sent to the leader) got no answer: its leader lost
    /// the lead, stopped or went silent. It may or may not take effect, so a client
    /// reads before retrying (as etcd's "request timed out" and kube-apiserver's 504
    /// Timeout say): a blind retry could apply it twice.
    Unknown(String),
}

/// What replicas (and forwarding members) send a shard replica over the transport.
#[derive(Debug, Serialize, Deserialize)]
pub enum ShardRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    Client(ClientOp),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ShardRpcReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Client(ClientReply),
}
