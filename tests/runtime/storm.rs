//! 1,000 kills at random in a tree of 200 actors under a steady message load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keelson_actors::runtime::{ActorPath, ActorState, ChildSpec, KillMode, Ref, Restart, Strategy, SupervisorSpec};

use crate::support::*;

const MIDS: usize = 10;
const WORKERS_PER_MID: usize = 19; // 1 root + 10 + 190 = 201 actors
const KILLS: usize = 1000;
const LOADERS: usize = 4;

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    replies: AtomicU64,
    errors: AtomicU64,
}

async fn load(refs: Arc<Vec<Ref<Worker>>>, tally: Arc<Tally>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        let r = &refs[rng.usize(..refs.len())];
        tally.sent.fetch_add(1, Ordering::Relaxed);
        match r.send(Ping).await {
            Ok(_) => tally.replies.fetch_add(1, Ordering::Relaxed),
            Err(_) => tally.errors.fetch_add(1, Ordering::Relaxed),
        };
        if rng.u8(..8) == 0 {
            actix_rt::task::yield_now().await;
        }
    }
}

#[actix_rt::test]
async fn a_storm_of_kills_is_absorbed_below_the_root() {
    let mut refs = Vec::new();
    let mut mids = Vec::new();
    for m in 0..MIDS {
        let mut spec = SupervisorSpec::new(Strategy::OneForOne, config(10_000, 1000));
        for w in 0..WORKERS_PER_MID {
            let (child, r) = worker(&format!("w{w}"), Restart::Permanent);
            spec = spec.child(child);
            refs.push(r);
        }
        mids.push(ChildSpec::supervisor(&format!("s{m}"), Restart::Permanent, spec).0);
    }
    let (registry, _root) = root("storm", Strategy::OneForOne, config(1000, 10_000), mids);
    eventually("the tree is up", || {
        let s = registry.snapshot();
        s.actors.len() == 1 + MIDS + MIDS * WORKERS_PER_MID && s.actors.iter().all(|a| a.state == ActorState::Running)
    })
    .await;
    let targets: Vec<ActorPath> =
        registry.paths_matching("/storm/*").into_iter().chain(registry.paths_matching("/storm/*/*")).collect();
    assert_eq!(targets.len(), MIDS + MIDS * WORKERS_PER_MID);

    let refs = Arc::new(refs);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> =
        (0..LOADERS).map(|i| actix_rt::spawn(load(refs.clone(), tally.clone(), stop.clone(), i as u64))).collect();

    let mut rng = fastrand::Rng::with_seed(42);
    let mut delivered: BTreeMap<ActorPath, u64> = BTreeMap::new();
    let mut refused = 0u64;
    while delivered.values().sum::<u64>() < KILLS as u64 {
        let target = &targets[rng.usize(..targets.len())];
        let mode = if rng.bool() { KillMode::Panic } else { KillMode::Stop };
        match registry.kill(target, mode) {
            Ok(_) => *delivered.entry(target.clone()).or_default() += 1,
            Err(_) => refused += 1, // not running right now (restarting under a killed parent)
        }
        if rng.u8(..4) == 0 {
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        } else {
            actix_rt::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.await.unwrap();
    }

    eventually("every permanent actor running again", || {
        registry.snapshot().actors.iter().all(|a| a.state == ActorState::Running)
    })
    .await;
    let snapshot = registry.snapshot();
    for a in &snapshot.actors {
        let want = delivered.get(&a.path).copied().unwrap_or(0);
        assert_eq!(a.kills, want, "{}: registry counts {} kills, {} were delivered", a.path, a.kills, want);
        assert!(a.restarts >= a.kills, "{} killed {} times but restarted {}", a.path, a.kills, a.restarts);
    }
    let root = snapshot.actors.iter().find(|a| a.path.as_str() == "/storm").unwrap();
    assert_eq!((root.incarnation, root.crashes), (1, 0), "the storm reached the root");
    let sent = tally.sent.load(Ordering::Relaxed);
    let (replies, errors) = (tally.replies.load(Ordering::Relaxed), tally.errors.load(Ordering::Relaxed));
    assert_eq!(sent, replies + errors, "a message got neither a reply nor an error");
    assert!(replies > 0 && errors > 0, "the load must overlap the storm: {replies} replies, {errors} errors");
    eprintln!(
        "storm: {KILLS} kills delivered ({refused} refused), {sent} messages: {replies} replies, {errors} errors"
    );
}
