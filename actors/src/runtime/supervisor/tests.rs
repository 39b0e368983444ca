//! The supervisor's rules, checked on the pure state machine (no actix, no clock).

use std::time::Duration;

use keelson_config::{Backoff, Intensity};
use tokio::time::Instant;

use super::state::{Command, State};
use crate::runtime::{ExitReason, KillMode, Restart, Strategy};

use Command::*;

const CRASH: ExitReason = ExitReason::Killed { mode: KillMode::Panic };
const NORMAL: ExitReason = ExitReason::Normal;
const SHUTDOWN: ExitReason = ExitReason::Shutdown { forced: false };

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A supervisor with children `c0..cN` of the given restart types, all started.
struct Harness {
    state: State,
    now: Instant,
    incarnations: Vec<u64>,
    next: u64,
}

impl Harness {
    fn new(strategy: Strategy, restarts: &[Restart], intensity: Intensity, backoff: Backoff) -> Self {
        let mut h = Self {
            state: State::new(strategy, intensity, backoff),
            now: Instant::now(),
            incarnations: vec![0; restarts.len()],
            next: 0,
        };
        for r in restarts {
            let (idx, cmds) = h.state.add_child(*r);
            assert_eq!(cmds, vec![Start(idx)]);
            h.apply(cmds);
        }
        h
    }

    fn simple(strategy: Strategy, n: usize) -> Self {
        Self::new(strategy, &vec![Restart::Permanent; n], Intensity::new(100, ms(1000)), Backoff::none())
    }

    /// Plays the actor's part for Start commands; returns every command.
    fn apply(&mut self, cmds: Vec<Command>) -> Vec<Command> {
        for c in &cmds {
            if let Start(i) = c {
                self.next += 1;
                self.incarnations[*i] = self.next;
                self.state.started(*i, self.next, self.now);
            }
        }
        cmds
    }

    fn exit(&mut self, i: usize, reason: &ExitReason) -> Vec<Command> {
        let inc = self.incarnations[i];
        let cmds = self.state.on_child_exited(i, inc, reason, self.now);
        self.apply(cmds)
    }

    /// Confirms the stop of every child a command asked to stop, in order, and
    /// returns the order in which they were asked plus the final commands.
    fn confirm_stops(&mut self, mut cmds: Vec<Command>) -> (Vec<usize>, Vec<Command>) {
        let mut order = Vec::new();
        while let Some(Stop(i, inc)) = cmds.first().cloned() {
            assert_eq!(cmds.len(), 1, "one stop at a time: {cmds:?}");
            order.push(i);
            cmds = self.state.on_child_exited(i, inc, &SHUTDOWN, self.now);
            cmds = self.apply(cmds);
        }
        (order, cmds)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }
}

#[test]
fn one_for_one_restarts_only_the_failed_child() {
    let mut h = Harness::simple(Strategy::OneForOne, 3);
    assert_eq!(h.exit(1, &CRASH), vec![Start(1)]);
}

#[test]
fn one_for_all_stops_the_others_last_first_then_restarts_all_in_order() {
    let mut h = Harness::simple(Strategy::OneForAll, 4);
    let cmds = h.exit(1, &CRASH);
    let (order, end) = h.confirm_stops(cmds);
    assert_eq!(order, vec![3, 2, 0]);
    assert_eq!(end, vec![Start(0), Start(1), Start(2), Start(3)]);
}

#[test]
fn rest_for_one_restarts_the_failed_child_and_those_started_after_it() {
    let mut h = Harness::simple(Strategy::RestForOne, 4);
    let cmds = h.exit(1, &CRASH);
    let (order, end) = h.confirm_stops(cmds);
    assert_eq!(order, vec![3, 2]);
    assert_eq!(end, vec![Start(1), Start(2), Start(3)]);
}

#[test]
fn restart_types_decide_who_comes_back() {
    let types = [Restart::Permanent, Restart::Transient, Restart::Temporary];
    let mut h = Harness::new(Strategy::OneForOne, &types, Intensity::new(100, ms(1000)), Backoff::none());
    assert_eq!(h.exit(0, &NORMAL), vec![Start(0)], "permanent comes back even after a normal exit");
    assert_eq!(h.exit(1, &NORMAL), vec![], "transient stays down after a normal exit");
    let mut h = Harness::new(Strategy::OneForOne, &types, Intensity::new(100, ms(1000)), Backoff::none());
    assert_eq!(h.exit(1, &CRASH), vec![Start(1)], "transient comes back after a crash");
    assert_eq!(h.exit(2, &CRASH), vec![], "temporary never comes back");
}

#[test]
fn temporary_siblings_are_stopped_but_not_restarted_by_one_for_all() {
    let types = [Restart::Permanent, Restart::Temporary, Restart::Permanent];
    let mut h = Harness::new(Strategy::OneForAll, &types, Intensity::new(100, ms(1000)), Backoff::none());
    let cmds = h.exit(0, &CRASH);
    let (order, end) = h.confirm_stops(cmds);
    assert_eq!(order, vec![2, 1]);
    assert_eq!(end, vec![Start(0), Start(2)]);
}

#[test]
fn exceeding_the_intensity_stops_everyone_and_escalates() {
    let mut h =
        Harness::new(Strategy::OneForOne, &[Restart::Permanent; 3], Intensity::new(2, ms(1000)), Backoff::none());
    assert_eq!(h.exit(1, &CRASH), vec![Start(1)]);
    h.advance(ms(10));
    assert_eq!(h.exit(1, &CRASH), vec![Start(1)]);
    h.advance(ms(10));
    let cmds = h.exit(1, &CRASH);
    let (order, end) = h.confirm_stops(cmds);
    assert_eq!(order, vec![2, 0], "the survivors are stopped, last started first");
    assert_eq!(end, vec![Escalate(1, CRASH)]);
    assert!(h.state.is_exited());
}

#[test]
fn restarts_older_than_the_period_do_not_count() {
    let mut h = Harness::new(Strategy::OneForOne, &[Restart::Permanent], Intensity::new(2, ms(1000)), Backoff::none());
    for _ in 0..10 {
        assert_eq!(h.exit(0, &CRASH), vec![Start(0)]);
        h.advance(ms(600));
    }
    assert!(h.state.window_len() <= 2);
}

#[test]
fn back_off_doubles_while_a_child_keeps_crashing_and_resets_after_a_stable_run() {
    let backoff = Backoff { initial: ms(10), max: ms(50), jitter: 0.0 };
    let mut h = Harness::new(Strategy::OneForOne, &[Restart::Permanent], Intensity::new(100, ms(1000)), backoff);
    let mut delays = Vec::new();
    for _ in 0..6 {
        match &h.exit(0, &CRASH)[..] {
            [Start(0)] => delays.push(0),
            [RestartAfter(d, generation, targets)] => {
                assert_eq!(targets, &vec![0]);
                delays.push(d.as_millis() as u64);
                let cmds = h.state.on_restart_timer(*generation);
                assert_eq!(h.apply(cmds), vec![Start(0)]);
            }
            other => panic!("unexpected {other:?}"),
        }
        h.advance(ms(1));
    }
    assert_eq!(delays, vec![0, 10, 20, 40, 50, 50]);
    h.advance(ms(2000));
    assert_eq!(h.exit(0, &CRASH), vec![Start(0)], "a stable run resets the back-off");
}

#[test]
fn a_stale_timer_or_notice_changes_nothing() {
    let backoff = Backoff { initial: ms(10), max: ms(50), jitter: 0.0 };
    let mut h = Harness::new(Strategy::OneForOne, &[Restart::Permanent], Intensity::new(100, ms(1000)), backoff);
    h.exit(0, &CRASH);
    let old = h.incarnations[0];
    let cmds = h.exit(0, &CRASH);
    assert!(matches!(cmds[..], [RestartAfter(..)]));
    assert_eq!(h.state.on_child_exited(0, old, &CRASH, h.now), vec![], "old incarnation");
    assert_eq!(h.state.on_restart_timer(999), vec![], "unknown timer");
}

#[test]
fn ordered_shutdown_goes_last_first_and_aborts_a_child_that_ignores_it() {
    let mut h = Harness::simple(Strategy::OneForOne, 3);
    let cmds = h.state.on_shutdown();
    let Stop(2, inc2) = cmds[0] else { panic!("{cmds:?}") };
    // Child 2 ignores the stop: the timeout turns into an abort of that incarnation.
    assert_eq!(h.state.on_stop_timeout(2, inc2), vec![Abort(2, inc2)]);
    let cmds = h.state.on_child_exited(2, inc2, &ExitReason::Shutdown { forced: true }, h.now);
    let (order, end) = h.confirm_stops(cmds);
    assert_eq!(order, vec![1, 0]);
    assert_eq!(end, vec![Exit(SHUTDOWN)]);
    // A timeout for a child that did stop is a no-op.
    assert_eq!(h.state.on_stop_timeout(1, h.incarnations[1]), vec![]);
}

#[test]
fn a_crash_during_shutdown_is_not_restarted() {
    let mut h = Harness::simple(Strategy::OneForOne, 3);
    let cmds = h.state.on_shutdown();
    assert!(matches!(cmds[..], [Stop(2, _)]));
    assert_eq!(h.exit(0, &CRASH), vec![]);
}

#[test]
fn a_second_failure_while_restarting_joins_the_restart() {
    let mut h = Harness::simple(Strategy::RestForOne, 4);
    let cmds = h.exit(2, &CRASH);
    let Stop(3, inc3) = cmds[0] else { panic!("{cmds:?}") };
    // Child 0 crashes while child 3 is being stopped: it waits for that stop, then
    // stops child 1 too, and restarts everything from 0 in order.
    assert_eq!(h.exit(0, &CRASH), vec![]);
    let cmds = h.state.on_child_exited(3, inc3, &SHUTDOWN, h.now);
    let cmds = h.apply(cmds);
    let (order, end) = h.confirm_stops(cmds);
    assert_eq!(order, vec![1]);
    assert_eq!(end, vec![Start(0), Start(1), Start(2), Start(3)]);
}

#[test]
fn removed_children_are_forgotten_and_not_restarted() {
    let mut h = Harness::simple(Strategy::OneForOne, 2);
    let cmds = h.state.remove_child(1);
    let Stop(1, inc) = cmds[0] else { panic!("{cmds:?}") };
    assert_eq!(h.state.on_child_exited(1, inc, &SHUTDOWN, h.now), vec![Forget(1)]);
    assert!(h.state.is_removed(1));
    let (idx, cmds) = h.state.add_child(Restart::Permanent);
    assert_eq!((idx, cmds), (2, vec![Start(2)]));
}
