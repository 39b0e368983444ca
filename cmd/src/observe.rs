//! `keelson tree`, `keelson events` and `keelson chaos kill`: the commands that find a
//! running cluster through its data folder and talk to its members' doors.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use keelson_actors::runtime::{glob_match, ActorPath, ActorState, KillMode};

use keelson_actors::admin::{NetDirection, NetRequest, PingRequest};
use keelson_transport::faults::LinkFaults;

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

/// Follows every member's events, reconnecting when a door goes away (its actor or
/// its whole process restarted) and resuming after the last event seen.
pub async fn events(data: &DataDir, member: Option<String>) -> Result<()> {
    let client = std::rc::Rc::new(client(data)?);
    let doors: Vec<DoorFile> =
        doors(data)?.into_iter().filter(|d| member.as_ref().is_none_or(|m| &d.member == m)).collect();
    if doors.is_empty() {
        bail!("no running member named {:?}", member.unwrap_or_default());
    }
    let root = data.root().to_path_buf();
    let mut tasks = Vec::new();
    for first in doors {
        let (client, root) = (client.clone(), root.clone());
        tasks.push(actix_rt::spawn(async move {
            let data = DataDir::existing(&root).expect("the data folder was there a moment ago");
            let (name, mut pid, mut since) = (first.member.clone(), first.pid, None);
            loop {
                match data.door(&name) {
                    Ok(door) if door.alive() => {
                        if door.pid != pid {
                            println!("({name} is a new process, pid {}: its events start again at 1)", door.pid);
                            pid = door.pid;
                            since = Some(0);
                        }
                        match client.follow(&door, since, |e| println!("{}", render::event(&e))).await {
                            Ok(last) => since = last.or(since),
                            Err(e) => tracing::debug!("{name}: {e}"),
                        }
                    }
                    _ => {}
                }
                actix_rt::time::sleep(Duration::from_millis(200)).await;
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

/// `keelson ping TO --from MEMBER`: pings over QUIC, printed like ping(8). Exit 1 if
/// no ping got an answer.
pub async fn ping(data: &DataDir, args: crate::cli::PingArgs) -> Result<i32> {
    let door = data.door(&args.from)?;
    let req = PingRequest {
        to: args.to.clone(),
        count: args.count,
        stream: args.stream,
        notes: args.notes,
        deadline_ms: args.deadline.as_millis() as u64,
    };
    let outcomes = client(data)?.ping(&door, &req).await?;
    let mut answered = 0;
    for o in &outcomes {
        match (&o.reply, &o.error) {
            (Some(r), _) => {
                answered += 1;
                let ms = o.rtt_us.unwrap_or(0) as f64 / 1000.0;
                let seq = if args.stream > 0 { format!(" item {}", r.seq) } else { String::new() };
                println!("reply from {} (incarnation {}, {} notes){seq}: {ms:.2} ms", r.path, r.incarnation, r.notes);
            }
            (None, Some(e)) => println!("error: {e}"),
            (None, None) => println!("error: no answer"),
        }
    }
    Ok(if answered == 0 { 1 } else { 0 })
}

/// `keelson chaos net`: sets or heals link faults on the members concerned.
pub async fn net(data: &DataDir, args: crate::cli::NetArgs) -> Result<()> {
    let client = client(data)?;
    if args.heal {
        for door in doors(data)? {
            if door.member != "up" {
                client.net(&door, &NetRequest { heal: true, ..NetRequest::default() }).await?;
                println!("healed {}", door.member);
            }
        }
        return Ok(());
    }
    let faults = LinkFaults {
        loss: args.loss,
        delay: args.delay,
        jitter: args.jitter,
        duplicate: args.duplicate,
        reorder: args.reorder,
        cut: false,
    };
    if let Some(victim) = &args.partition {
        let door = data.door(victim)?;
        let direction = if args.one_way { NetDirection::In } else { NetDirection::Both };
        for peer in &args.from {
            let req = NetRequest {
                heal: false,
                peer: Some(peer.clone()),
                direction: Some(direction),
                faults: LinkFaults::cut(),
            };
            client.net(&door, &req).await?;
            let arrow = if args.one_way { "<-" } else { "<->" };
            println!("cut {victim} {arrow} {peer}");
        }
        return Ok(());
    }
    if faults.is_clean() {
        bail!("say what to inject (--loss, --delay, --jitter, --duplicate, --reorder)");
    }
    for a in &args.between {
        let door = data.door(a)?;
        for b in args.between.iter().filter(|b| *b != a) {
            let req = NetRequest { heal: false, peer: Some(b.clone()), direction: Some(NetDirection::Out), faults };
            client.net(&door, &req).await?;
            println!("{a} -> {b}: {faults:?}");
        }
    }
    Ok(())
}
