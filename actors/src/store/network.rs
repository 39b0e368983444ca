//! Raft messages between a shard's replicas, over the member transport: each RPC is a
//! request to `/<member>/store/shard-<k>` on the target member.

use std::time::Duration;

use keelson_transport::Transport;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;

use super::types::{NodeId, ShardRpc, ShardRpcReply, TypeConfig};
use crate::runtime::ActorPath;
use crate::transport::{RemoteError as CallError, RemoteRef};

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
