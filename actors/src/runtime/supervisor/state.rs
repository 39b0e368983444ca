//! The supervisor's decisions as a pure state machine: events in, commands out.
//! No actix, no clock, no randomness of its own: time and the jitter source come in
//! as arguments, so every rule here is tested synchronously (`tests.rs`).

use std::collections::VecDeque;
use std::time::Duration;

use keelson_config::{Backoff, Intensity};
use tokio::time::Instant;

use crate::runtime::{ExitReason, Restart, Strategy};

/// What the actor must do next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Launch child `idx` (a new incarnation).
    Start(usize),
    /// Ask incarnation `.1` of child `.0` to stop; abort it if it has not stopped
    /// after its shutdown timeout (then call [`State::on_stop_timeout`]).
    Stop(usize, u64),
    /// Abort the task of incarnation `.1` of child `.0` (it ignored its stop).
    Abort(usize, u64),
    /// Wait, then call [`State::on_restart_timer`] with this generation.
    /// (The children it will restart are listed for the tree.)
    RestartAfter(Duration, u64, Vec<usize>),
    /// Forget child `idx` (a removed dynamic child).
    Forget(usize),
    /// Stop the supervisor itself with this reason (ordered shutdown done).
    Exit(ExitReason),
    /// Stop the supervisor itself: child `.0` exceeded the intensity with cause `.1`.
    Escalate(usize, ExitReason),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Status {
    /// Launch requested, no incarnation yet.
    Starting,
    Running(u64),
    Stopping(u64),
    Stopped,
    Removed,
}

#[derive(Debug)]
struct Child {
    restart: Restart,
    status: Status,
    /// Restarts in a row without a stable run (drives the back-off).
    consecutive: u32,
    last_start: Option<Instant>,
    remove_when_stopped: bool,
}

#[derive(Debug, PartialEq)]
enum After {
    /// Restart these children (in start order) after `delay`.
    Restart {
        targets: Vec<usize>,
        delay: Duration,
    },
    Exit(ExitReason),
    Escalate(usize, ExitReason),
}

#[derive(Debug, PartialEq)]
enum Mode {
    Running,
    /// Stopping children one at a time, last started first, then doing `after`.
    Draining {
        queue: Vec<usize>,
        current: Option<usize>,
        after: After,
    },
    /// Waiting for the back-off timer of `generation` to restart `targets`.
    Waiting {
        generation: u64,
        targets: Vec<usize>,
        delay: Duration,
    },
    Exited,
}

pub(crate) struct State {
    strategy: Strategy,
    intensity: Intensity,
    backoff: Backoff,
    children: Vec<Child>,
    /// When each restart counted against the intensity happened.
    window: VecDeque<Instant>,
    mode: Mode,
    timer_generation: u64,
}

impl State {
    pub(crate) fn new(strategy: Strategy, intensity: Intensity, backoff: Backoff) -> Self {
        Self {
            strategy,
            intensity,
            backoff,
            children: Vec::new(),
            window: VecDeque::new(),
            mode: Mode::Running,
            timer_generation: 0,
        }
    }

    /// Adds a child (at start, or a dynamic one later); returns its index and the
    /// command to launch it, unless the supervisor is on its way out.
    pub(crate) fn add_child(&mut self, restart: Restart) -> (usize, Vec<Command>) {
        self.children.push(Child {
            restart,
            status: Status::Stopped,
            consecutive: 0,
            last_start: None,
            remove_when_stopped: false,
        });
        let idx = self.children.len() - 1;
        if self.mode == Mode::Running {
            self.children[idx].status = Status::Starting;
            (idx, vec![Command::Start(idx)])
        } else {
            (idx, vec![])
        }
    }

    pub(crate) fn is_removed(&self, idx: usize) -> bool {
        self.children[idx].status == Status::Removed
    }

    #[cfg(test)]
    pub(crate) fn window_len(&self) -> usize {
        self.window.len()
    }

    pub(crate) fn is_exited(&self) -> bool {
        self.mode == Mode::Exited
    }

    /// The actor launched child `idx` as `incarnation`.
    pub(crate) fn started(&mut self, idx: usize, incarnation: u64, now: Instant) {
        let c = &mut self.children[idx];
        c.status = Status::Running(incarnation);
        c.last_start = Some(now);
    }

    /// Stops and forgets a dynamic child.
    pub(crate) fn remove_child(&mut self, idx: usize) -> Vec<Command> {
        let c = &mut self.children[idx];
        c.remove_when_stopped = true;
        match c.status {
            Status::Running(inc) => {
                c.status = Status::Stopping(inc);
                vec![Command::Stop(idx, inc)]
            }
            Status::Stopping(_) => vec![],
            Status::Starting | Status::Stopped | Status::Removed => {
                c.status = Status::Removed;
                vec![Command::Forget(idx)]
            }
        }
    }

    /// Ordered shutdown: every running child, last started first, then exit.
    pub(crate) fn on_shutdown(&mut self) -> Vec<Command> {
        match self.mode {
            Mode::Exited => vec![],
            Mode::Draining { after: After::Exit(_) | After::Escalate(..), .. } => vec![],
            _ => {
                let queue = self.running_in_start_order();
                self.drain(queue, After::Exit(ExitReason::Shutdown { forced: false }))
            }
        }
    }

    /// A child's incarnation ended.
    pub(crate) fn on_child_exited(
        &mut self,
        idx: usize,
        incarnation: u64,
        reason: &ExitReason,
        now: Instant,
    ) -> Vec<Command> {
        let c = &mut self.children[idx];
        match c.status {
            Status::Running(i) | Status::Stopping(i) if i == incarnation => {}
            _ => return vec![],
        }
        c.status = Status::Stopped;
        if c.remove_when_stopped {
            c.status = Status::Removed;
            let mut cmds = vec![Command::Forget(idx)];
            cmds.extend(self.advance_if_current(idx));
            return cmds;
        }
        match &mut self.mode {
            Mode::Exited => vec![],
            Mode::Draining { current, .. } if *current == Some(idx) => self.advance(),
            Mode::Draining { after: After::Exit(_) | After::Escalate(..), .. } => vec![],
            Mode::Draining { after: After::Restart { .. }, .. } | Mode::Waiting { .. } | Mode::Running => {
                self.on_failure(idx, reason, now)
            }
        }
    }

    /// The stop timeout of incarnation `incarnation` of child `idx` passed.
    pub(crate) fn on_stop_timeout(&mut self, idx: usize, incarnation: u64) -> Vec<Command> {
        match self.children[idx].status {
            Status::Stopping(i) if i == incarnation => vec![Command::Abort(idx, incarnation)],
            _ => vec![],
        }
    }

    /// The back-off timer of `generation` fired: start the children it was for.
    pub(crate) fn on_restart_timer(&mut self, generation: u64) -> Vec<Command> {
        match std::mem::replace(&mut self.mode, Mode::Running) {
            Mode::Waiting { generation: g, targets, .. } if g == generation => self.start_all(&targets),
            other => {
                self.mode = other;
                vec![]
            }
        }
    }

    fn on_failure(&mut self, idx: usize, reason: &ExitReason, now: Instant) -> Vec<Command> {
        let c = &self.children[idx];
        let restart = match c.restart {
            Restart::Permanent => true,
            Restart::Transient => reason.is_abnormal(),
            Restart::Temporary => false,
        };
        if !restart {
            return vec![];
        }
        self.window.push_back(now);
        while self.window.front().is_some_and(|t| now.duration_since(*t) > self.intensity.period) {
            self.window.pop_front();
        }
        if self.window.len() > self.intensity.max_restarts as usize {
            return self.escalate(idx, reason);
        }
        let mut delay = self.backoff_for(idx, now);
        let group: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![idx],
            Strategy::OneForAll => (0..self.children.len()).collect(),
            Strategy::RestForOne => (idx..self.children.len()).collect(),
        };
        let group: Vec<usize> = group.into_iter().filter(|&j| self.children[j].status != Status::Removed).collect();
        // Temporary siblings are stopped with the group but never restarted.
        let mut targets: Vec<usize> =
            group.iter().copied().filter(|&j| j == idx || self.children[j].restart != Restart::Temporary).collect();
        let mut to_stop: Vec<usize> =
            group.into_iter().filter(|&j| j != idx && matches!(self.children[j].status, Status::Running(_))).collect();
        // A failure while a restart is under way (draining or waiting) joins it.
        let (mut queue, current) = match std::mem::replace(&mut self.mode, Mode::Running) {
            Mode::Draining { queue, current, after: After::Restart { targets: t, delay: d } } => {
                targets.extend(t);
                delay = delay.max(d);
                (queue, current)
            }
            Mode::Waiting { targets: t, delay: d, .. } => {
                targets.extend(t);
                delay = delay.max(d);
                (Vec::new(), None)
            }
            _ => (Vec::new(), None),
        };
        targets.sort_unstable();
        targets.dedup();
        to_stop.retain(|j| !queue.contains(j) && current != Some(*j));
        queue.splice(0..0, to_stop);
        self.mode = Mode::Draining { queue, current, after: After::Restart { targets, delay } };
        match self.mode {
            Mode::Draining { current: Some(_), .. } => vec![],
            _ => self.advance(),
        }
    }

    fn escalate(&mut self, idx: usize, reason: &ExitReason) -> Vec<Command> {
        let queue = self.running_in_start_order();
        self.mode = Mode::Running;
        self.drain(queue, After::Escalate(idx, reason.clone()))
    }

    /// Delay before restarting `idx`: none after a stable run, then doubling.
    fn backoff_for(&mut self, idx: usize, now: Instant) -> Duration {
        let stable = self.intensity.period;
        let c = &mut self.children[idx];
        let ran_long = c.last_start.is_none_or(|t| now.duration_since(t) >= stable);
        if ran_long {
            c.consecutive = 0;
        }
        let n = c.consecutive;
        c.consecutive = c.consecutive.saturating_add(1);
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(n - 1);
        self.backoff.initial.saturating_mul(factor).min(self.backoff.max)
    }

    fn running_in_start_order(&self) -> Vec<usize> {
        (0..self.children.len())
            .filter(|&j| matches!(self.children[j].status, Status::Running(_) | Status::Stopping(_)))
            .collect()
    }

    fn drain(&mut self, queue: Vec<usize>, after: After) -> Vec<Command> {
        self.mode = Mode::Draining { queue, current: None, after };
        self.advance()
    }

    fn advance_if_current(&mut self, idx: usize) -> Vec<Command> {
        match self.mode {
            Mode::Draining { current: Some(c), .. } if c == idx => self.advance(),
            _ => vec![],
        }
    }

    /// Stops the next child in the drain queue (last in the queue first), or, when
    /// none is left, does what the drain was for.
    fn advance(&mut self) -> Vec<Command> {
        loop {
            let Mode::Draining { queue, current, .. } = &mut self.mode else {
                return vec![];
            };
            let Some(next) = queue.pop() else { break };
            match self.children[next].status {
                Status::Running(inc) => {
                    *current = Some(next);
                    self.children[next].status = Status::Stopping(inc);
                    return vec![Command::Stop(next, inc)];
                }
                Status::Stopping(_) => {
                    *current = Some(next);
                    return vec![];
                }
                _ => continue,
            }
        }
        let Mode::Draining { after, .. } = std::mem::replace(&mut self.mode, Mode::Running) else { unreachable!() };
        match after {
            After::Exit(reason) => {
                self.mode = Mode::Exited;
                vec![Command::Exit(reason)]
            }
            After::Escalate(idx, cause) => {
                self.mode = Mode::Exited;
                vec![Command::Escalate(idx, cause)]
            }
            After::Restart { targets, delay } if delay.is_zero() => self.start_all(&targets),
            After::Restart { targets, delay } => {
                self.timer_generation += 1;
                let generation = self.timer_generation;
                let cmd = Command::RestartAfter(delay, generation, targets.clone());
                self.mode = Mode::Waiting { generation, targets, delay };
                vec![cmd]
            }
        }
    }

    fn start_all(&mut self, targets: &[usize]) -> Vec<Command> {
        let mut cmds = Vec::new();
        for &j in targets {
            let c = &mut self.children[j];
            if c.status == Status::Stopped && !c.remove_when_stopped {
                c.status = Status::Starting;
                cmds.push(Command::Start(j));
            }
        }
        cmds
    }
}
