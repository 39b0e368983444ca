//! Strategies, restart types, back-off, escalation and ordered shutdown, end to end.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use keelson_actors::runtime::{
    ActorState, ChildSpec, EventKind, ExitReason, KillMode, Restart, StartChild, StopChild, Strategy, SupervisorSpec,
};
use keelson_config::{Backoff, Intensity, SupervisorConfig};

use crate::support::*;

fn incarnations(registry: &keelson_actors::runtime::Registry, paths: &[&str]) -> Vec<u64> {
    paths.iter().map(|p| registry.info(&path(p)).map_or(0, |i| i.incarnation)).collect()
}

async fn all_running(registry: &keelson_actors::runtime::Registry, paths: &[&str], want: &[u64]) {
    eventually(&format!("{paths:?} at incarnations {want:?}"), || {
        paths.iter().all(|p| registry.info(&path(p)).is_some_and(|i| i.state == ActorState::Running))
            && incarnations(registry, paths) == want
    })
    .await;
}

fn three(strategy: Strategy) -> (keelson_actors::runtime::Registry, keelson_actors::runtime::Root) {
    let children = ["a", "b", "c"].iter().map(|n| worker(n, Restart::Permanent).0).collect();
    root("m", strategy, config(10, 1000), children)
}

#[actix_rt::test]
async fn one_for_one_one_for_all_and_rest_for_one() {
    let paths = ["/m/a", "/m/b", "/m/c"];
    let (registry, _r) = three(Strategy::OneForOne);
    all_running(&registry, &paths, &[1, 1, 1]).await;
    registry.kill(&path("/m/b"), KillMode::Panic).unwrap();
    all_running(&registry, &paths, &[1, 2, 1]).await;

    let (registry, _r) = three(Strategy::OneForAll);
    all_running(&registry, &paths, &[1, 1, 1]).await;
    let mut events = registry.subscribe();
    registry.kill(&path("/m/b"), KillMode::Panic).unwrap();
    all_running(&registry, &paths, &[2, 2, 2]).await;
    let mut exits = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::Exited { reason } = e.event {
            exits.push((e.path.to_string(), reason.is_abnormal()));
        }
    }
    let want = [("/m/b", true), ("/m/c", false), ("/m/a", false)].map(|(p, a)| (p.to_string(), a));
    assert_eq!(exits, want, "siblings stop last-started first, with a shutdown reason");

    let (registry, _r) = three(Strategy::RestForOne);
    all_running(&registry, &paths, &[1, 1, 1]).await;
    registry.kill(&path("/m/b"), KillMode::Stop).unwrap();
    all_running(&registry, &paths, &[1, 2, 2]).await;
}

#[actix_rt::test]
async fn restart_types() {
    let (p, _) = worker("p", Restart::Permanent);
    let (t, _) = worker("t", Restart::Transient);
    let (tmp, _) = worker("tmp", Restart::Temporary);
    let (registry, _r) = root("m", Strategy::OneForOne, config(10, 1000), vec![p, t, tmp]);
    all_running(&registry, &["/m/p", "/m/t", "/m/tmp"], &[1, 1, 1]).await;
    registry.kill(&path("/m/p"), KillMode::Stop).unwrap();
    registry.kill(&path("/m/t"), KillMode::Stop).unwrap();
    registry.kill(&path("/m/tmp"), KillMode::Stop).unwrap();
    all_running(&registry, &["/m/p", "/m/t"], &[2, 2]).await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let tmp = info(&registry, "/m/tmp");
    assert_eq!((tmp.state, tmp.incarnation), (ActorState::Failed, 1), "a temporary child stays down");
}

#[actix_rt::test]
async fn a_transient_child_that_exits_normally_stays_down() {
    let (spec, sup) =
        ChildSpec::supervisor("dyn", Restart::Permanent, SupervisorSpec::new(Strategy::OneForOne, config(10, 1000)));
    let (registry, _r) = root("m", Strategy::OneForOne, config(10, 1000), vec![spec]);
    running_incarnation(&registry, "/m/dyn", 1).await;
    let (t, _) = worker("t", Restart::Transient);
    assert_eq!(sup.send(StartChild(t)).await.unwrap(), Ok(1));
    running_incarnation(&registry, "/m/dyn/t", 1).await;
    // A stop requested by the supervisor's own API is a normal end: no restart, and forgotten.
    sup.send(StopChild { name: "t".into() }).await.unwrap().unwrap();
    eventually("t forgotten", || registry.info(&path("/m/dyn/t")).is_none()).await;
    assert_eq!(
        sup.send(StopChild { name: "t".into() }).await.unwrap(),
        Err(keelson_actors::runtime::supervisor::Error::NoSuchChild("t".into()))
    );
}

#[actix_rt::test]
async fn back_off_grows_between_restarts_of_a_crashing_child() {
    let cfg = SupervisorConfig {
        intensity: Intensity::new(20, Duration::from_secs(30)),
        backoff: Backoff { initial: Duration::from_millis(40), max: Duration::from_secs(5), jitter: 0.0 },
        seed: 3,
    };
    let starts = Arc::new(AtomicU32::new(0));
    let s = starts.clone();
    let (spec, _) = ChildSpec::new("flaky", Restart::Permanent, move |_| Flaky { starts: s.clone(), fail: 4 });
    // Added after the root is up, so the event stream sees its very first start.
    let (registry, r) = root("n", Strategy::OneForOne, cfg, vec![]);
    let mut events = registry.subscribe();
    r.reference.send(StartChild(spec)).await.unwrap().unwrap();
    running_incarnation(&registry, "/n/flaky", 5).await;
    let mut starts_at = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.path.as_str() == "/n/flaky" && e.event == EventKind::Started {
            starts_at.push(e.at_ms);
        }
    }
    assert_eq!(starts_at.len(), 5);
    let gaps: Vec<u64> = starts_at.windows(2).map(|w| w[1] - w[0]).collect();
    // Delays 0, 40, 80, 160 ms: each gap at least its delay (lower bounds only).
    for (gap, min) in gaps.iter().zip([0, 40, 80, 160]) {
        assert!(*gap >= min, "gaps {gaps:?} should grow 0/40/80/160 ms");
    }
}

#[actix_rt::test]
async fn exceeding_intensity_escalates_and_the_parent_restarts_the_whole_subtree() {
    let starts = Arc::new(AtomicU32::new(0));
    let s = starts.clone();
    // Flaky fails its first 4 starts; `mid` allows 3 restarts, so it gives up once.
    let (flaky, _) = ChildSpec::new("flaky", Restart::Permanent, move |_| Flaky { starts: s.clone(), fail: 4 });
    let (steady, _) = worker("steady", Restart::Permanent);
    let mid = SupervisorSpec::new(Strategy::OneForOne, config(3, 5000)).child(steady).child(flaky);
    let (mid, _) = ChildSpec::supervisor("mid", Restart::Permanent, mid);
    let (registry, _r) = root("m", Strategy::OneForOne, config(5, 5000), vec![mid]);
    let mut events = registry.subscribe();
    all_running(&registry, &["/m/mid", "/m/mid/steady", "/m/mid/flaky"], &[2, 2, 5]).await;
    let mut escalated = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::Escalated { reason } = e.event {
            escalated.push((e.path.to_string(), reason));
        }
    }
    assert_eq!(escalated.len(), 1, "{escalated:?}");
    let (who, reason) = &escalated[0];
    assert_eq!(who, "/m/mid");
    assert!(matches!(reason, ExitReason::Escalated { child, .. } if child.as_str() == "/m/mid/flaky"));
    assert_eq!(info(&registry, "/m").state, ActorState::Running, "the root absorbed it");
}

#[actix_rt::test]
async fn escalation_past_the_root_ends_the_tree_with_the_reason() {
    let (spec, w) = worker("w", Restart::Permanent);
    let (registry, mut r) = root("m", Strategy::OneForOne, config(2, 10_000), vec![spec]);
    for n in 1..=2 {
        running_incarnation(&registry, "/m/w", n).await;
        let _ = w.send(Crash).await;
    }
    running_incarnation(&registry, "/m/w", 3).await;
    let _ = w.send(Crash).await;
    let reason = r.exited().await;
    assert!(matches!(&reason, ExitReason::Escalated { child, .. } if child.as_str() == "/m/w"), "{reason}");
}

#[actix_rt::test]
async fn ordered_shutdown_forces_a_child_that_ignores_its_stop() {
    let (a, _) = worker("a", Restart::Permanent);
    let (stubborn, _) = ChildSpec::new("stubborn", Restart::Permanent, |_| Stubborn);
    let stubborn = stubborn.with_shutdown(Duration::from_millis(200));
    let (c, _) = worker("c", Restart::Permanent);
    let (registry, mut r) = root("m", Strategy::OneForOne, config(10, 1000), vec![a, stubborn, c]);
    all_running(&registry, &["/m/a", "/m/stubborn", "/m/c"], &[1, 1, 1]).await;
    let mut events = registry.subscribe();
    r.shutdown();
    assert_eq!(r.exited().await, ExitReason::Shutdown { forced: false });
    let mut exits = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::Exited { reason } = e.event {
            exits.push((e.path.to_string(), reason));
        }
    }
    let forced = ExitReason::Shutdown { forced: true };
    let clean = ExitReason::Shutdown { forced: false };
    let want = vec![
        ("/m/c".to_string(), clean.clone()),
        ("/m/stubborn".to_string(), forced),
        ("/m/a".to_string(), clean.clone()),
        ("/m".to_string(), clean),
    ];
    assert_eq!(exits, want);
}
