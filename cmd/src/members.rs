//! `keelson member list`: every member of the local cluster, where it listens, its
//! process, and its role in each store shard.

use anyhow::{Context, Result};

use crate::client::DoorClient;
use crate::datadir::DataDir;

pub async fn list(data: &DataDir) -> Result<String> {
    let doors: Vec<_> = data.doors()?.into_iter().filter(|d| d.member != "up").collect();
    let first = doors.first().context("no running server member found (start one with `keelson up`)")?;
    let client = DoorClient::new(data.token()?);
    let (code, status) = client.call(first, "GET", "/kv/status", None).await?;
    let shards = if code == 200 { status.as_array().cloned().unwrap_or_default() } else { Vec::new() };
    // Voters come from the store's membership; running members from the data folder.
    let mut names: Vec<String> = shards
        .first()
        .and_then(|s| s["members"].as_array())
        .map(|m| m.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    for d in &doors {
        if !names.contains(&d.member) {
            names.push(d.member.clone());
        }
    }
    names.sort();
    let mut out = format!("{:<12}{:<22}{:<9}", "NAME", "QUIC", "PID");
    for s in &shards {
        out.push_str(&format!("{:<10}", format!("SHARD {}", s["shard"])));
    }
    out.push('\n');
    for name in names {
        let quic = std::fs::read_to_string(data.root().join(&name).join("quic-addr")).map(|s| s.trim().to_string());
        let pid = doors.iter().find(|d| d.member == name).map_or("down".to_string(), |d| d.pid.to_string());
        out.push_str(&format!("{:<12}{:<22}{:<9}", name, quic.unwrap_or_else(|_| "-".into()), pid));
        for s in &shards {
            let voter = s["members"].as_array().is_some_and(|m| m.iter().any(|x| x.as_str() == Some(name.as_str())));
            let role = match (s["leader"].as_str() == Some(name.as_str()), voter) {
                (true, _) => "leader",
                (false, true) => "follower",
                (false, false) => "-",
            };
            out.push_str(&format!("{role:<10}"));
        }
        out.push('\n');
    }
    Ok(out)
}
