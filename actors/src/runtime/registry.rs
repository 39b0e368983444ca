//! The tree as data: one entry per actor path, owned by the member's root and passed
//! down by handle (no statics, so several members can share one test process).
//!
//! Entries outlive incarnations: the path keeps its counters, restart history and
//! last exit across restarts. Hot counters (messages sent, handled, handler time) are
//! atomics per incarnation, touched without a lock; the entry's mutex is taken only
//! on lifecycle changes, kills and snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::signal::{Control, Signal};
use super::{glob_match, ActorPath, ExitReason, KillMode};

/// Lifecycle events kept for slow subscribers before they are told they lagged.
const EVENT_BUFFER: usize = 4096;

/// Per-incarnation counters: `sent` by references, `handled` by the incarnation.
#[derive(Default, Debug)]
pub struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) handler_nanos: AtomicU64,
}

/// What one incarnation shares with its references, its supervisor and the
/// registry, in one allocation: its kill switch and its counters.
#[derive(Default)]
pub(crate) struct Vitals {
    pub(crate) signal: Signal,
    pub(crate) counters: Counters,
}

impl Counters {
    pub(crate) fn record(&self, took: Duration) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.handler_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
    fn backlog(&self) -> u64 {
        let handled = self.handled.load(Ordering::Relaxed);
        self.sent.load(Ordering::Relaxed).saturating_sub(handled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorState {
    Starting,
    Running,
    Restarting,
    Stopped,
    Failed,
}

/// What a chaos or operator kill can run into.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KillError {
    #[error("no actor at {0}")]
    NoSuchActor(ActorPath),
    #[error("{0} is not running")]
    NotRunning(ActorPath),
    #[error("{0} is already being killed")]
    AlreadyDying(ActorPath),
}

/// The parts of a running incarnation that the registry can act on.
pub(crate) struct Live {
    pub(crate) vitals: Arc<Vitals>,
    pub(crate) started_at: Instant,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastExit {
    pub incarnation: u64,
    pub reason: ExitReason,
    pub at_ms: u64,
}

struct EntryState {
    state: ActorState,
    incarnation: u64,
    live: Option<Live>,
    handled_before: u64,
    handler_nanos_before: u64,
    kills: u64,
    crashes: u64,
    /// What most idle actors never need, allocated on first use (memory per actor).
    cold: Option<Box<Cold>>,
}

#[derive(Default)]
struct Cold {
    recent_starts: VecDeque<Instant>,
    last_exit: Option<LastExit>,
    info: Option<String>,
}

impl EntryState {
    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }
}

/// One actor path's record.
pub struct Entry {
    path: ActorPath,
    kind: &'static str,
    restart: &'static str,
    /// The parent's intensity period: the window `restarts_in_window` counts over.
    window: Duration,
    state: Mutex<EntryState>,
    events: Arc<Events>,
}

/// Lifecycle events: a broadcast for live followers, and the most recent ones kept so
/// a follower that reconnects (say, after the door itself restarted) misses nothing.
struct Events {
    tx: broadcast::Sender<Event>,
    recent: Mutex<(u64, VecDeque<Event>)>,
}

impl Events {
    fn new() -> Self {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        Self { tx, recent: Mutex::new((0, VecDeque::with_capacity(EVENT_BUFFER))) }
    }

    fn emit(&self, path: &ActorPath, incarnation: u64, kind: EventKind) {
        // Numbered, kept and broadcast under one lock, so replay and live never overlap.
        let mut recent = self.recent.lock().unwrap();
        recent.0 += 1;
        let event = Event { seq: recent.0, at_ms: now_ms(), path: path.clone(), incarnation, event: kind };
        if recent.1.len() == EVENT_BUFFER {
            recent.1.pop_front();
        }
        recent.1.push_back(event.clone());
        let _no_subscriber_is_fine = self.tx.send(event);
    }

    fn since(&self, seq: u64) -> (Vec<Event>, broadcast::Receiver<Event>, u64) {
        let recent = self.recent.lock().unwrap();
        let rx = self.tx.subscribe();
        (recent.1.iter().filter(|e| e.seq > seq).cloned().collect(), rx, recent.0)
    }
}

impl Entry {
    pub fn path(&self) -> &ActorPath {
        &self.path
    }

    /// Called by a supervisor right before it launches a new incarnation.
    pub(crate) fn next_incarnation(&self) -> u64 {
        let mut st = self.state.lock().unwrap();
        st.incarnation += 1;
        st.state = ActorState::Starting;
        st.incarnation
    }

    /// The incarnation is alive: its control handles become reachable.
    pub(crate) fn running(&self, incarnation: u64, live: Live) {
        let mut st = self.state.lock().unwrap();
        if st.incarnation != incarnation {
            return;
        }
        let now = live.started_at;
        st.state = ActorState::Running;
        st.live = Some(live);
        if incarnation > 1 {
            let cold = st.cold();
            cold.recent_starts.push_back(now);
            prune(&mut cold.recent_starts, now, self.window);
        }
        drop(st);
        self.events.emit(&self.path, incarnation, EventKind::Started);
    }

    /// Records the end of `incarnation` and decides its reason: an accepted kill wins
    /// (so kills are counted exactly, whatever the actor did while dying), then a
    /// panic, then what the actor said, then a requested shutdown.
    pub(crate) fn exited(
        &self,
        incarnation: u64,
        vitals: &Vitals,
        panic: Option<String>,
        said: Option<ExitReason>,
    ) -> ExitReason {
        let mut st = self.state.lock().unwrap();
        let bits = vitals.signal.bits();
        let counters = &vitals.counters;
        let reason = if bits.killed_by_panic() {
            ExitReason::Killed { mode: KillMode::Panic }
        } else if bits.killed_by_stop() {
            ExitReason::Killed { mode: KillMode::Stop }
        } else if let Some(message) = panic {
            ExitReason::Panic { message }
        } else if let Some(said) = said {
            said
        } else if bits.shutdown() || bits.aborted() {
            ExitReason::Shutdown { forced: bits.aborted() }
        } else {
            ExitReason::Normal
        };
        st.handled_before += counters.handled.load(Ordering::Relaxed);
        st.handler_nanos_before += counters.handler_nanos.load(Ordering::Relaxed);
        if matches!(reason, ExitReason::Killed { .. }) {
            st.kills += 1;
        }
        if reason.is_abnormal() {
            st.crashes += 1;
        }
        if st.incarnation == incarnation {
            st.live = None;
            st.state = if reason.is_abnormal() { ActorState::Failed } else { ActorState::Stopped };
            st.cold().last_exit = Some(LastExit { incarnation, reason: reason.clone(), at_ms: now_ms() });
        }
        drop(st);
        self.events.emit(&self.path, incarnation, EventKind::Exited { reason: reason.clone() });
        reason
    }

    pub(crate) fn restarting(&self, delay: Duration) {
        let mut st = self.state.lock().unwrap();
        if st.live.is_none() {
            st.state = ActorState::Restarting;
        }
        let incarnation = st.incarnation;
        drop(st);
        self.events.emit(&self.path, incarnation, EventKind::Restarting { delay_ms: delay.as_millis() as u64 });
    }

    pub(crate) fn escalated(&self, reason: &ExitReason) {
        let incarnation = self.state.lock().unwrap().incarnation;
        self.events.emit(&self.path, incarnation, EventKind::Escalated { reason: reason.clone() });
    }

    /// A line of detail for the tree (a supervisor's strategy and intensity, say).
    pub(crate) fn set_info(&self, info: String) {
        self.state.lock().unwrap().cold().info = Some(info);
    }

    fn kill(&self, mode: KillMode) -> Result<u64, KillError> {
        let st = self.state.lock().unwrap();
        let live = st.live.as_ref().ok_or_else(|| KillError::NotRunning(self.path.clone()))?;
        let control = match mode {
            KillMode::Panic => Control::KillPanic,
            KillMode::Stop => Control::KillStop,
        };
        if live.vitals.signal.raise(control) {
            Ok(st.incarnation)
        } else {
            Err(KillError::AlreadyDying(self.path.clone()))
        }
    }

    fn info(&self, now: Instant) -> ActorInfo {
        let st = self.state.lock().unwrap();
        let (handled_now, nanos_now, backlog) = st
            .live
            .as_ref()
            .map(|l| {
                let c = &l.vitals.counters;
                (c.handled.load(Ordering::Relaxed), c.handler_nanos.load(Ordering::Relaxed), c.backlog())
            })
            .unwrap_or_default();
        let cold = st.cold.as_deref();
        let since = now.checked_sub(self.window);
        ActorInfo {
            path: self.path.clone(),
            kind: self.kind.to_string(),
            restart: self.restart.to_string(),
            state: st.state,
            incarnation: st.incarnation,
            restarts: st.incarnation.saturating_sub(1),
            restarts_in_window: cold
                .map_or(0, |c| c.recent_starts.iter().filter(|t| since.is_none_or(|s| **t >= s)).count() as u64),
            kills: st.kills,
            crashes: st.crashes,
            last_exit: cold.and_then(|c| c.last_exit.clone()),
            uptime_ms: st.live.as_ref().map(|l| now.duration_since(l.started_at).as_millis() as u64),
            handled: st.handled_before + handled_now,
            backlog,
            handler_us: (st.handler_nanos_before + nanos_now) / 1_000,
            info: cold.and_then(|c| c.info.clone()),
        }
    }
}

fn prune(starts: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while starts.front().is_some_and(|t| now.duration_since(*t) > window) {
        starts.pop_front();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One actor as `keelson tree` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActorInfo {
    pub path: ActorPath,
    pub kind: String,
    /// permanent, transient, temporary, or root.
    pub restart: String,
    pub state: ActorState,
    pub incarnation: u64,
    pub restarts: u64,
    pub restarts_in_window: u64,
    /// Exits caused by a kill through the chaos door.
    pub kills: u64,
    /// Abnormal exits of any cause (kills included).
    pub crashes: u64,
    pub last_exit: Option<LastExit>,
    pub uptime_ms: Option<u64>,
    pub handled: u64,
    /// Messages sent through references and not yet handled by the current incarnation.
    pub backlog: u64,
    /// Time spent inside handlers, summed over incarnations.
    pub handler_us: u64,
    pub info: Option<String>,
}

/// A whole member's tree at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeSnapshot {
    pub member: String,
    pub pid: u32,
    pub at_ms: u64,
    /// Sorted by path, so parents come before their children.
    pub actors: Vec<ActorInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Exited { reason: ExitReason },
    Restarting { delay_ms: u64 },
    Escalated { reason: ExitReason },
    Removed,
}

/// A lifecycle event, as `keelson events` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub path: ActorPath,
    pub incarnation: u64,
    #[serde(flatten)]
    pub event: EventKind,
}

/// The registry of one member (one process, or one simulated member in a test).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    member: String,
    entries: RwLock<BTreeMap<ActorPath, Arc<Entry>>>,
    events: Arc<Events>,
}

impl Registry {
    pub fn new(member: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                member: member.to_string(),
                entries: RwLock::new(BTreeMap::new()),
                events: Arc::new(Events::new()),
            }),
        }
    }

    pub fn member(&self) -> &str {
        &self.inner.member
    }

    /// The entry for `path`, created on first use.
    pub(crate) fn entry(
        &self,
        path: &ActorPath,
        kind: &'static str,
        restart: &'static str,
        window: Duration,
    ) -> Arc<Entry> {
        if let Some(e) = self.inner.entries.read().unwrap().get(path) {
            return e.clone();
        }
        let mut entries = self.inner.entries.write().unwrap();
        entries
            .entry(path.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    path: path.clone(),
                    kind,
                    restart,
                    window,
                    state: Mutex::new(EntryState {
                        state: ActorState::Starting,
                        incarnation: 0,
                        live: None,
                        handled_before: 0,
                        handler_nanos_before: 0,
                        kills: 0,
                        crashes: 0,
                        cold: None,
                    }),
                    events: self.inner.events.clone(),
                })
            })
            .clone()
    }

    /// Forgets a path and everything below it (a dynamic child that was removed).
    pub(crate) fn remove_subtree(&self, path: &ActorPath) {
        let mut entries = self.inner.entries.write().unwrap();
        let gone: Vec<ActorPath> = entries.keys().filter(|p| p.is_within(path)).cloned().collect();
        for p in gone {
            entries.remove(&p);
            self.inner.events.emit(&p, 0, EventKind::Removed);
        }
    }

    /// Sets the detail line an actor shows in the tree (a link's state, say).
    pub fn set_info(&self, path: &ActorPath, info: String) {
        let entry = self.inner.entries.read().unwrap().get(path).cloned();
        if let Some(e) = entry {
            e.set_info(info);
        }
    }

    /// Kills the running incarnation at `path`; returns which incarnation was hit.
    pub fn kill(&self, path: &ActorPath, mode: KillMode) -> Result<u64, KillError> {
        let entry = self.inner.entries.read().unwrap().get(path).cloned();
        entry.ok_or_else(|| KillError::NoSuchActor(path.clone()))?.kill(mode)
    }

    /// Paths matching a glob (`*` within a segment, `**` across), sorted.
    pub fn paths_matching(&self, pattern: &str) -> Vec<ActorPath> {
        let entries = self.inner.entries.read().unwrap();
        entries.keys().filter(|p| glob_match(pattern, p.as_str())).cloned().collect()
    }

    pub fn snapshot(&self) -> TreeSnapshot {
        let now = Instant::now();
        let entries: Vec<Arc<Entry>> = self.inner.entries.read().unwrap().values().cloned().collect();
        TreeSnapshot {
            member: self.inner.member.clone(),
            pid: std::process::id(),
            at_ms: now_ms(),
            actors: entries.iter().map(|e| e.info(now)).collect(),
        }
    }

    pub fn info(&self, path: &ActorPath) -> Option<ActorInfo> {
        let entry = self.inner.entries.read().unwrap().get(path).cloned();
        entry.map(|e| e.info(Instant::now()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.tx.subscribe()
    }

    /// The kept events numbered after `seq`, a receiver for every later one, and the
    /// number of the last event so far.
    pub fn events_since(&self, seq: u64) -> (Vec<Event>, broadcast::Receiver<Event>, u64) {
        self.inner.events.since(seq)
    }
}
