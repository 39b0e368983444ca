//! `keelson kv …`: the store's key-value API from the command line.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cli::{KvCommand, LeaseCommand};
use crate::client::DoorClient;
use crate::datadir::{DataDir, DoorFile};

/// Runs one kv command; exit code 1 when the key is not found.
pub async fn run(data: &DataDir, member: Option<String>, command: KvCommand) -> Result<i32> {
    let door = data.server_door(member.as_deref())?;
    let client = DoorClient::new(data.token()?);
    let path = |key: &str| format!("/kv/key/{}", key.trim_start_matches('/'));
    match command {
        KvCommand::Get { key, json } => match client.call(&door, "GET", &path(&key), None).await? {
            (200, v) if json => println!("{}", serde_json::to_string_pretty(&v)?),
            (200, v) => println!("{}", v["value"].as_str().unwrap_or_default()),
            (404, _) => {
                eprintln!("{key}: not found");
                return Ok(1);
            }
            (code, v) => bail!("{code}: {}", v["message"]),
        },
        KvCommand::Put { key, value, lease } => {
            let target = match lease {
                Some(l) => format!("{}?lease={l}", path(&key)),
                None => path(&key),
            };
            match client.call(&door, "PUT", &target, Some(value.into_bytes())).await? {
                (200, v) => println!("revision {}", v["revision"]),
                (code, v) => bail!("{code}: {}", v["message"]),
            }
        }
        KvCommand::Txn { file } => {
            let body = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            match client.call(&door, "POST", "/kv/txn", Some(body.into_bytes())).await? {
                (200, v) => {
                    let branch = if v["succeeded"] == Value::Bool(true) { "success" } else { "failure" };
                    println!("{branch} (revision {})", v["revision"]);
                }
                (code, v) => bail!("{code}: {}", v["message"]),
            }
        }
        KvCommand::Lease(cmd) => return lease(&door, &client, cmd).await,
        KvCommand::Del { key } => match client.call(&door, "DELETE", &path(&key), None).await? {
            (200, v) if v["existed"] == Value::Bool(true) => println!("deleted at revision {}", v["revision"]),
            (200, _) => println!("{key}: was not there"),
            (code, v) => bail!("{code}: {}", v["message"]),
        },
        KvCommand::List { prefix, limit } => {
            let mut after: Option<String> = None;
            loop {
                let mut q = format!("/kv/range?prefix={}&limit={limit}", urlencode(&prefix));
                if let Some(a) = &after {
                    q.push_str(&format!("&continue={}", urlencode(a)));
                }
                let (code, v) = client.call(&door, "GET", &q, None).await?;
                if code != 200 {
                    bail!("{code}: {}", v["message"]);
                }
                for item in v["items"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{}\t{}",
                        item["key"].as_str().unwrap_or_default(),
                        item["value"].as_str().unwrap_or_default()
                    );
                }
                match v["continue"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
        }
        KvCommand::Watch { prefix, cursor } => return watch(data, &door, &client, &prefix, cursor).await,
        KvCommand::Status => match client.call(&door, "GET", "/kv/status", None).await? {
            (200, v) => {
                println!("{:<6}{:<12}{:<12}{:<8}{:<10}MEMBERS", "SHARD", "ASKED", "LEADER", "TERM", "REVISION");
                for s in v.as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<6}{:<12}{:<12}{:<8}{:<10}{}",
                        s["shard"].to_string(),
                        s["member"].as_str().unwrap_or_default(),
                        s["leader"].as_str().unwrap_or("-"),
                        s["term"].to_string(),
                        s["revision"].to_string(),
                        s["members"]
                            .as_array()
                            .map(|m| m.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
                            .unwrap_or_default()
                    );
                }
            }
            (code, v) => bail!("{code}: {}", v["message"]),
        },
    }
    Ok(0)
}

async fn lease(door: &DoorFile, client: &DoorClient, cmd: LeaseCommand) -> Result<i32> {
    match cmd {
        LeaseCommand::Grant { ttl } => {
            let body = serde_json::json!({ "ttl_ms": ttl }).to_string().into_bytes();
            match client.call(door, "POST", "/kv/lease", Some(body)).await? {
                (200, v) => println!("{}", v["id"]),
                (code, v) => bail!("{code}: {}", v["message"]),
            }
        }
        LeaseCommand::Keepalive { id, once } => loop {
            match client.call(door, "POST", &format!("/kv/lease/{id}/keepalive"), None).await? {
                (200, v) => {
                    let ttl_ms = v["ttl_ms"].as_u64().unwrap_or(3_000);
                    println!("lease {id} kept alive for {} ms", ttl_ms);
                    if once {
                        break;
                    }
                    actix_rt::time::sleep(std::time::Duration::from_millis(ttl_ms / 3)).await;
                }
                (404, _) => {
                    eprintln!("lease {id}: not found (expired or revoked)");
                    return Ok(1);
                }
                (code, v) => bail!("{code}: {}", v["message"]),
            }
        },
        LeaseCommand::Revoke { id } => match client.call(door, "DELETE", &format!("/kv/lease/{id}"), None).await? {
            (200, _) => println!("lease {id} revoked"),
            (404, _) => {
                eprintln!("lease {id}: not found");
                return Ok(1);
            }
            (code, v) => bail!("{code}: {}", v["message"]),
        },
    }
    Ok(0)
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints each change as `PUT key value (revision)`; when the stream ends (a replica
/// or the member restarted) it reconnects from the last cursor. Exits 1 on `Expired`.
async fn watch(
    data: &DataDir,
    first: &DoorFile,
    client: &DoorClient,
    prefix: &str,
    mut cursor: Option<String>,
) -> Result<i32> {
    let mut door = first.clone();
    loop {
        let mut q = format!("/kv/watch?prefix={}", urlencode(prefix));
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let mut expired = false;
        let outcome = client
            .stream_lines(&door, &q, |v: Value| {
                if let Some(c) = v["cursor"].as_str() {
                    cursor = Some(c.to_string());
                }
                match v["type"].as_str() {
                    Some("PUT") => println!(
                        "PUT {} {} ({})",
                        v["key"].as_str().unwrap_or_default(),
                        v["value"].as_str().unwrap_or_default(),
                        v["revision"]
                    ),
                    Some("DELETE") => println!("DELETE {} ({})", v["key"].as_str().unwrap_or_default(), v["revision"]),
                    Some("ERROR") => {
                        eprintln!("{}", v["message"].as_str().unwrap_or_default());
                        expired = true;
                    }
                    _ => {}
                }
            })
            .await;
        if expired {
            return Ok(1);
        }
        if let Err(e) = outcome {
            tracing::debug!("watch: {e}");
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
        if let Ok(d) = data.door(&door.member) {
            door = d;
        }
    }
}
