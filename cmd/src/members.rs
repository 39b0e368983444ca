//! `keelson member list|add|remove`: every member of the cluster, where it listens,
//! its process (`remote` for one running from another data folder), and its role in
//! each store shard; adding and removing store members shard by shard.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::client::DoorClient;
use crate::datadir::DataDir;

pub async fn list(data: &DataDir) -> Result<String> {
    // Server members: those keeping a store here (not the launcher, not node agents).
    let doors: Vec<_> = data
        .doors()?
        .into_iter()
        .filter(|d| d.member != "up" && data.root().join(&d.member).join("store").is_dir())
        .collect();
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
    // Members from other data folders (joined with a token): their address as this
    // member's transport knows it.
    let (_, peers) = client.call(first, "GET", "/transport", None).await?;
    let peer_addr = |name: &str| {
        peers.as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p["peer"].as_str().is_some_and(|n| n == name || n.starts_with(&format!("{name}."))))
                .and_then(|p| p["addr"].as_str().map(str::to_string))
        })
    };
    let mut out = format!("{:<12}{:<22}{:<9}", "NAME", "QUIC", "PID");
    for s in &shards {
        out.push_str(&format!("{:<10}", format!("SHARD {}", s["shard"])));
    }
    out.push('\n');
    for name in names {
        let local = std::fs::read_to_string(data.root().join(&name).join("quic-addr")).ok();
        let quic = local.as_ref().map(|s| s.trim().to_string()).or_else(|| peer_addr(&name));
        let pid = match doors.iter().find(|d| d.member == name) {
            Some(d) => d.pid.to_string(),
            None if local.is_none() && quic.is_some() => "remote".to_string(),
            None => "down".to_string(),
        };
        out.push_str(&format!("{:<12}{:<22}{:<9}", name, quic.unwrap_or_else(|| "-".into()), pid));
        for s in &shards {
            let voter = s["members"].as_array().is_some_and(|m| m.iter().any(|x| x.as_str() == Some(name.as_str())));
            let voting = s["voters"].as_array().is_some_and(|m| m.iter().any(|x| x.as_str() == Some(name.as_str())));
            let role = match (s["leader"].as_str() == Some(name.as_str()), voter, voting) {
                (true, _, _) => "leader",
                (false, true, true) => "follower",
                (false, true, false) => "learner",
                (false, false, _) => "-",
            };
            out.push_str(&format!("{role:<10}"));
        }
        out.push('\n');
    }
    Ok(out)
}

/// `keelson member add|remove NAME`: one shard at a time, saying where it stands.
pub async fn change(data: &DataDir, through: Option<String>, name: &str, change: &str) -> Result<()> {
    let door = data.server_door(through.as_deref())?;
    let client = DoorClient::new(data.token()?);
    let (code, status) = client.call(&door, "GET", "/kv/status", None).await?;
    if code != 200 {
        bail!("{code}: {}", status["message"]);
    }
    let shards = status.as_array().map_or(0, Vec::len);
    for shard in 0..shards {
        let verb = if change == "add" { "adding" } else { "removing" };
        eprintln!("shard {shard}: {verb} {name}…");
        let path = format!("/members/{name}/{change}?shard={shard}");
        let (code, v) = client.call_with(&door, "POST", &path, None, Duration::from_secs(180)).await?;
        if code != 200 {
            bail!("shard {shard}: {code}: {}", v["message"].as_str().unwrap_or_default());
        }
        let names = |k: &str| {
            v[k].as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        };
        println!(
            "shard {shard}: voters {}{}",
            names("voters"),
            match names("learners") {
                l if l.is_empty() => String::new(),
                l => format!(", learners {l}"),
            }
        );
    }
    Ok(())
}
