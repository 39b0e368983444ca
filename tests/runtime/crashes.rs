//! Crash containment and references across restarts.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use keelson_actors::runtime::{ChildSpec, ExitReason, KillMode, Restart, SendError, Strategy};
use keelson_config::{Backoff, Intensity, SupervisorConfig};

use crate::support::*;

/// Sends `n` pings to the sibling while `crash` runs; returns how many got replies.
async fn sibling_keeps_serving(sibling: keelson_actors::runtime::Ref<Worker>, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if sibling.send(Ping).await == Ok(1) {
            ok += 1;
        }
    }
    ok
}

#[actix_rt::test]
async fn a_panic_in_a_sync_handler_restarts_only_that_actor() {
    let (victim_spec, victim) = worker("victim", Restart::Permanent);
    let (sibling_spec, sibling) = worker("sibling", Restart::Permanent);
    let (registry, _root) = root("m", Strategy::OneForOne, config(10, 1000), vec![victim_spec, sibling_spec]);
    running_incarnation(&registry, "/m/victim", 1).await;

    let load = actix_rt::spawn(sibling_keeps_serving(sibling.clone(), 2000));
    assert_eq!(victim.send(Crash).await, Err(SendError::Stopped { path: "/m/victim".into() }));
    assert_eq!(load.await.unwrap(), 2000, "the sibling lost messages");

    running_incarnation(&registry, "/m/victim", 2).await;
    assert_eq!(victim.send(Ping).await, Ok(2), "the old reference reaches the new incarnation");
    let i = info(&registry, "/m/victim");
    assert_eq!(i.restarts, 1);
    let last = i.last_exit.unwrap();
    assert_eq!((last.incarnation, last.reason), (1, ExitReason::Panic { message: "boom in a sync handler".into() }));
    assert_eq!(info(&registry, "/m/sibling").incarnation, 1);
}

#[actix_rt::test]
async fn a_panic_in_an_async_handler_restarts_only_that_actor() {
    let (victim_spec, victim) = worker("victim", Restart::Permanent);
    let (sibling_spec, sibling) = worker("sibling", Restart::Permanent);
    let (registry, _root) = root("m", Strategy::OneForOne, config(10, 1000), vec![victim_spec, sibling_spec]);
    running_incarnation(&registry, "/m/victim", 1).await;

    let load = actix_rt::spawn(sibling_keeps_serving(sibling.clone(), 2000));
    assert!(victim.send(CrashLater(Duration::from_millis(20))).await.is_err());
    assert_eq!(load.await.unwrap(), 2000);
    running_incarnation(&registry, "/m/victim", 2).await;
    assert_eq!(victim.send(Ping).await, Ok(2));
    let reason = info(&registry, "/m/victim").last_exit.unwrap().reason;
    assert_eq!(reason, ExitReason::Panic { message: "boom in an async handler".into() });
}

#[actix_rt::test]
async fn a_panic_in_started_is_a_crash_like_any_other() {
    let starts = Arc::new(AtomicU32::new(0));
    let s = starts.clone();
    let (spec, flaky) = ChildSpec::new("flaky", Restart::Permanent, move |_| Flaky { starts: s.clone(), fail: 2 });
    let (registry, _root) = root("m", Strategy::OneForOne, config(10, 1000), vec![spec]);
    running_incarnation(&registry, "/m/flaky", 3).await;
    assert_eq!(flaky.send(Ping).await, Ok(3));
    let i = info(&registry, "/m/flaky");
    assert_eq!(i.crashes, 2);
    assert_eq!(i.last_exit.unwrap().reason, ExitReason::Panic { message: "boom in started (2)".into() });
}

#[actix_rt::test]
async fn a_panic_in_stopping_is_contained() {
    let (spec, _) = ChildSpec::new("fragile", Restart::Permanent, |_| PanicsOnStop);
    let (w, _) = worker("w", Restart::Permanent);
    let (registry, mut root) = root("m", Strategy::OneForOne, config(10, 1000), vec![w, spec]);
    running_incarnation(&registry, "/m/fragile", 1).await;
    // A kill that asked for a stop is recorded as the kill, whatever the actor did next.
    registry.kill(&path("/m/fragile"), KillMode::Stop).unwrap();
    running_incarnation(&registry, "/m/fragile", 2).await;
    assert_eq!(info(&registry, "/m/fragile").last_exit.unwrap().reason, ExitReason::Killed { mode: KillMode::Stop });
    // An ordered shutdown: the panic in `stopping` is its exit reason, and the rest
    // of the tree still shuts down in order.
    let mut events = registry.subscribe();
    root.shutdown();
    assert_eq!(root.exited().await, ExitReason::Shutdown { forced: false });
    let mut exits = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let keelson_actors::runtime::EventKind::Exited { reason } = e.event {
            exits.push((e.path.to_string(), reason));
        }
    }
    let shutdown = ExitReason::Shutdown { forced: false };
    let want = vec![
        ("/m/fragile".to_string(), ExitReason::Panic { message: "boom in stopping".into() }),
        ("/m/w".to_string(), shutdown.clone()),
        ("/m".to_string(), shutdown),
    ];
    assert_eq!(exits, want);
}

#[actix_rt::test]
async fn a_reference_errs_at_once_while_no_incarnation_runs() {
    let cfg = SupervisorConfig {
        intensity: Intensity::new(10, Duration::from_secs(10)),
        backoff: Backoff { initial: Duration::from_millis(400), max: Duration::from_secs(1), jitter: 0.0 },
        seed: 1,
    };
    let (spec, victim) = worker("victim", Restart::Permanent);
    let (registry, _root) = root("m", Strategy::OneForOne, cfg, vec![spec]);
    running_incarnation(&registry, "/m/victim", 1).await;
    let _ = victim.send(Crash).await;
    running_incarnation(&registry, "/m/victim", 2).await; // first restart is immediate
    let _ = victim.send(Crash).await; // the second waits 400 ms
    eventually("victim waiting to restart", || {
        info(&registry, "/m/victim").state != keelson_actors::runtime::ActorState::Running
    })
    .await;
    assert_eq!(victim.send(Ping).await, Err(SendError::NotRunning { path: "/m/victim".into() }));
    running_incarnation(&registry, "/m/victim", 3).await;
    assert_eq!(victim.send(Ping).await, Ok(3));
}

#[actix_rt::test]
async fn chaos_kills_by_path_in_both_modes() {
    let (spec, w) = worker("w", Restart::Permanent);
    let (registry, _root) = root("m", Strategy::OneForOne, config(10, 1000), vec![spec]);
    running_incarnation(&registry, "/m/w", 1).await;
    assert_eq!(registry.kill(&path("/m/w"), KillMode::Panic), Ok(1));
    running_incarnation(&registry, "/m/w", 2).await;
    assert_eq!(registry.kill(&path("/m/w"), KillMode::Stop), Ok(2));
    running_incarnation(&registry, "/m/w", 3).await;
    assert_eq!(w.send(Ping).await, Ok(3));
    let i = info(&registry, "/m/w");
    assert_eq!((i.kills, i.crashes, i.restarts), (2, 2, 2));
    assert!(matches!(
        registry.kill(&path("/m/nope"), KillMode::Stop),
        Err(keelson_actors::runtime::KillError::NoSuchActor(_))
    ));
}
