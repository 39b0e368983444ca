//! Child specifications: how a supervisor (re)creates each child from scratch.
//!
//! A spec holds a factory, not an instance: every restart builds fresh state, so a
//! crash cannot leak a half-updated struct into the next incarnation.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::incarnation::{launch, ChildContext, OnExit, RunningChild};
use super::{Actor, Ref};

/// When a child that exited is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only after an abnormal exit (panic, kill, failure).
    Transient,
    /// Never; a one-off worker.
    Temporary,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Transient => "transient",
            Self::Temporary => "temporary",
        }
    }
}

/// Which children restart when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child (they share state and must start together).
    OneForAll,
    /// The failed child and every child started after it (they depend on it).
    RestForOne,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneForOne => "one_for_one",
            Self::OneForAll => "one_for_all",
            Self::RestForOne => "rest_for_one",
        }
    }
}

/// Launches one incarnation of a child; type-erased so a supervisor can hold
/// children of many actor types.
pub(crate) trait Starter: Send + Sync {
    fn kind(&self) -> &'static str;
    fn start(&self, cx: &ChildContext, entry: Arc<super::registry::Entry>, on_exit: OnExit) -> RunningChild;
}

struct ActorStarter<A: Actor, F> {
    factory: F,
    reference: Ref<A>,
}

impl<A, F> Starter for ActorStarter<A, F>
where
    A: Actor,
    F: Fn(&ChildContext) -> A + Send + Sync + 'static,
{
    fn kind(&self) -> &'static str {
        short_type_name::<A>()
    }

    fn start(&self, cx: &ChildContext, entry: Arc<super::registry::Entry>, on_exit: OnExit) -> RunningChild {
        self.reference.set_path(&cx.path);
        let actor = (self.factory)(cx);
        launch(cx, entry, actor, &self.reference, on_exit)
    }
}

/// `keelson_actors::scheduler::Scheduler` → `Scheduler`.
pub(crate) fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// How to run one child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    pub restart: Restart,
    /// How long an ordered stop waits for the child before aborting it.
    pub shutdown: Duration,
    pub(crate) starter: Arc<dyn Starter>,
}

/// Default per-child shutdown timeout for workers; supervisors get longer, as their
/// own children stop first.
pub const WORKER_SHUTDOWN: Duration = Duration::from_secs(5);
pub const SUPERVISOR_SHUTDOWN: Duration = Duration::from_secs(30);

impl ChildSpec {
    /// A child built by `factory` on every (re)start, and the stable reference to it.
    pub fn new<A, F>(name: &str, restart: Restart, factory: F) -> (Self, Ref<A>)
    where
        A: Actor,
        F: Fn(&ChildContext) -> A + Send + Sync + 'static,
    {
        let reference = Ref::new();
        (Self::with_ref(name, restart, &reference, factory), reference)
    }

    /// Like [`ChildSpec::new`], for a reference made earlier (one that the child's
    /// own siblings must hold before the spec exists).
    pub fn with_ref<A, F>(name: &str, restart: Restart, reference: &Ref<A>, factory: F) -> Self
    where
        A: Actor,
        F: Fn(&ChildContext) -> A + Send + Sync + 'static,
    {
        let starter = ActorStarter { factory, reference: reference.clone() };
        Self { name: name.to_string(), restart, shutdown: WORKER_SHUTDOWN, starter: Arc::new(starter) }
    }

    pub fn with_shutdown(mut self, timeout: Duration) -> Self {
        self.shutdown = timeout;
        self
    }
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("kind", &self.starter.kind())
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}
