//! Raft messages between a shard's replicas, over the member transport: each RPC is a
//! request to `/<member>/store/shard-<k>` on the target member.

use std::time::Duration;

use keelson_transport::Transport;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Entry, EntryPayload};

use super::types::{NodeId, ShardRpc, ShardRpcReply, TypeConfig};
use crate::runtime::ActorPath;
use crate::transport::{RemoteError as CallError, RemoteRef};

/// About the most an AppendEntries may carry (keys and values): more is sent in several,
/// as openraft does when told the payload is too large, so a follower catching up on
/// large objects never meets the transport's 16 MiB frame limit.
const APPEND_BUDGET: usize = 8 << 20;

/// How many of `entries`, from the first, fit in `budget` bytes (at least one).
fn entries_within(entries: &[Entry<TypeConfig>], budget: usize) -> usize {
    let mut total = 0;
    for (i, e) in entries.iter().enumerate() {
        total += match &e.payload {
            EntryPayload::Normal(cmd) => cmd.weight(),
            EntryPayload::Blank | EntryPayload::Membership(_) => 256,
        };
        if total > budget {
            return i.max(1);
        }
    }
    entries.len()
}

/// Path of replica `shard` on `member`.
pub fn replica_path(member: &str, shard: u32) -> ActorPath {
    ActorPath::root(member).child("store").child(&format!("shard-{shard}"))
}

#[derive(Clone)]
pub struct Network {
    pub transport: Transport,
    pub shard: u32,
    pub from: ActorPath,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Client {
        let path = replica_path(&node.addr, self.shard);
        Client { target, remote: RemoteRef::new(self.transport.clone(), path, self.from.clone()) }
    }
}

pub struct Client {
    target: NodeId,
    remote: RemoteRef,
}

type Rpc<E> = RPCError<NodeId, BasicNode, E>;

impl Client {
    async fn call<E: std::error::Error>(&self, rpc: ShardRpc, ttl: Duration) -> Result<ShardRpcReply, Rpc<E>> {
        self.remote.request::<_, ShardRpcReply>(&rpc, ttl).await.map_err(|e| match &e {
            CallError::Transport(keelson_transport::Error::Unreachable { .. })
            | CallError::Transport(keelson_transport::Error::Refused { .. })
            | CallError::Transport(keelson_transport::Error::UnknownPeer(_)) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        })
    }

    fn unexpected<E: std::error::Error>(&self) -> Rpc<E> {
        RPCError::Network(NetworkError::new(&std::io::Error::other("unexpected reply kind")))
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Rpc<RaftError<NodeId>>> {
        let fit = entries_within(&rpc.entries, APPEND_BUDGET);
        if fit < rpc.entries.len() {
            return Err(PayloadTooLarge::new_entries_hint(fit as u64).into());
        }
        match self.call(ShardRpc::Append(rpc), option.hard_ttl()).await? {
            ShardRpcReply::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, Rpc<RaftError<NodeId, InstallSnapshotError>>> {
        match self.call(ShardRpc::Snapshot(rpc), option.hard_ttl()).await? {
            ShardRpcReply::Snapshot(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, Rpc<RaftError<NodeId>>> {
        match self.call(ShardRpc::Vote(rpc), option.hard_ttl()).await? {
            ShardRpcReply::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::{Command, WriteOp};
    use openraft::{CommittedLeaderId, LogId};

    fn entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
        let cmd = Command { epoch: None, op: WriteOp::Put { key: "k".into(), value: vec![0; bytes], lease: 0 } };
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(cmd) }
    }

    #[test]
    fn appends_past_the_budget_are_cut_to_what_fits_but_never_to_nothing() {
        let small: Vec<_> = (0..10).map(|i| entry(i, 1000)).collect();
        assert_eq!(entries_within(&small, 1 << 20), 10);
        let big: Vec<_> = (0..10).map(|i| entry(i, 3 << 20)).collect();
        assert_eq!(entries_within(&big, APPEND_BUDGET), 2, "two 3 MiB entries fit in 8 MiB, not three");
        assert_eq!(entries_within(&big[..1], 1 << 20), 1, "one entry past the budget still goes alone");
        assert_eq!(entries_within(&[], APPEND_BUDGET), 0);
    }
}
