//! `keelson tree`, `keelson events` and `keelson chaos kill`: the commands that find a
//! running cluster through its data folder and talk to its members' doors.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use keelson_actors::runtime::{glob_match, ActorPath, ActorState, KillMode};

use crate::client::DoorClient;
use crate::datadir::{DataDir, DoorFile};
use crate::render;

fn doors(data: &DataDir) -> Result<Vec<DoorFile>> {
    let doors = data.doors()?;
    if doors.is_empty() {
        bail!("no running member found in {} (start one with `keelson up`)", data.root().display());
    }
    Ok(doors)
}

fn client(data: &DataDir) -> Result<DoorClient> {
    let token = data.token().context("reading the admin token")?;
    Ok(DoorClient::new(token))
}

pub async fn tree(data: &DataDir, json: bool, watch: Option<Duration>) -> Result<()> {
    let client = client(data)?;
    loop {
        let mut out = String::new();
        let mut trees = Vec::new();
        for door in doors(data)? {
            match client.tree(&door).await {
                Ok(t) => {
                    out.push_str(&render::tree(&t));
                    out.push('\n');
                    trees.push(t);
                }
                Err(e) => out.push_str(&format!("{}: unreachable: {e}\n\n", door.member)),
            }
        }
        match watch {
            None if json => println!("{}", serde_json::to_string_pretty(&trees)?),
            None => print!("{out}"),
            Some(_) => print!("\x1b[2J\x1b[H{out}"),
        }
        let Some(every) = watch else { return Ok(()) };
        actix_rt::time::sleep(every).await;
    }
}

pub async fn events(data: &DataDir, member: Option<String>) -> Result<()> {
    let client = std::rc::Rc::new(client(data)?);
    let doors: Vec<DoorFile> =
        doors(data)?.into_iter().filter(|d| member.as_ref().is_none_or(|m| &d.member == m)).collect();
    if doors.is_empty() {
        bail!("no running member named {:?}", member.unwrap_or_default());
    }
    let mut tasks = Vec::new();
    for door in doors {
        let client = client.clone();
        tasks.push(actix_rt::spawn(async move {
            let r = client.follow(&door, |_, e| println!("{}", render::event(&e))).await;
            if let Err(e) = r {
                eprintln!("{}: {e}", door.member);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

pub async fn kill(data: &DataDir, path: &str, mode: KillMode) -> Result<()> {
    let path = ActorPath::parse(path).with_context(|| format!("{path:?} is not an actor path like /server-1/admin"))?;
    let door = data.door(path.member())?;
    let killed = client(data)?.kill(&door, path.as_str(), mode).await?;
    println!("killed {} (incarnation {})", killed.path, killed.incarnation);
    Ok(())
}

/// Kills `count` actors chosen at random among the running ones matching `pattern`,
/// one every `every`, and prints each path it killed. With the same seed and the same
/// tree, it picks the same paths.
pub async fn kill_random(
    data: &DataDir,
    count: u32,
    every: Duration,
    pattern: &str,
    mode: KillMode,
    seed: u64,
) -> Result<()> {
    let client = client(data)?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut killed = 0;
    let mut misses = 0;
    while killed < count {
        let mut candidates: Vec<(DoorFile, String)> = Vec::new();
        for door in doors(data)? {
            if let Ok(t) = client.tree(&door).await {
                for a in t.actors {
                    let depth = a.path.as_str().matches('/').count();
                    // Roots are left alone: killing one ends its whole process.
                    if depth > 1 && a.state == ActorState::Running && glob_match(pattern, a.path.as_str()) {
                        candidates.push((door.clone(), a.path.to_string()));
                    }
                }
            }
        }
        candidates.sort_by(|a, b| a.1.cmp(&b.1));
        if candidates.is_empty() {
            bail!("no running actor matches {pattern:?}");
        }
        let (door, path) = &candidates[rng.usize(..candidates.len())];
        match client.kill(door, path, mode).await {
            Ok(k) => {
                println!("{}", k.path);
                killed += 1;
                misses = 0;
            }
            Err(e) => {
                misses += 1;
                if misses > 20 {
                    return Err(e.context("kills keep failing"));
                }
            }
        }
        if killed < count {
            actix_rt::time::sleep(every).await;
        }
    }
    Ok(())
}
