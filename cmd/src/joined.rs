//! A member that joined with a token: the join itself, and what it keeps from it
//! (`<member>/peers.json`: the members it was told about).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use keelson_transport::join::{join as join_cluster, JoinToken, MemberAddr};
use keelson_transport::tls::{Credentials, Identity};

use crate::datadir::DataDir;
use crate::pki;

/// Joins through `addr` and keeps the credentials and members in the data folder.
pub fn join(
    data: &DataDir,
    identity: &Identity,
    addr: SocketAddr,
    token: &str,
    quic: SocketAddr,
) -> Result<(Credentials, Vec<(Identity, SocketAddr)>)> {
    let token: JoinToken = token.parse().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = keelson_actors::transport::JOIN_DEADLINE;
    let (creds, members) = runtime
        .block_on(join_cluster(addr, &token, identity, quic, deadline))
        .with_context(|| format!("joining through {addr}"))?;
    pki::store(data, &creds)?;
    let path = data.member_dir(&identity.name)?.join("peers.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&members)?)?;
    tracing::info!(through = %addr, members = members.len(), "joined the cluster");
    Ok((creds, to_peers(members)))
}

/// The members a joined member was told about (none for a member that did not join).
pub fn peers(data: &DataDir, identity: &Identity) -> Result<Vec<(Identity, SocketAddr)>> {
    let path = data.member_dir(&identity.name)?.join("peers.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            Ok(to_peers(serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display()))?))
        }
        Err(_) => Ok(Vec::new()),
    }
}

fn to_peers(members: Vec<MemberAddr>) -> Vec<(Identity, SocketAddr)> {
    members.into_iter().map(|m| (Identity { name: m.name, role: m.role }, m.addr)).collect()
}
