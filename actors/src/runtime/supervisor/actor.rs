//! The supervisor actor: carries out what `state.rs` decides.

use std::sync::Arc;
use std::time::Duration;

use actix::{AsyncContext, Running};
use keelson_config::SupervisorConfig;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::messages::{ChildExited, StartChild, StopChild};
use super::state::{Command, State};
use super::Error;
use crate::runtime::incarnation::{exit, ChildContext, OnExit, RunningChild};
use crate::runtime::registry::Entry;
use crate::runtime::spec::SUPERVISOR_SHUTDOWN;
use crate::runtime::{Actor, ActorPath, ChildSpec, Ctx, ExitReason, Handler, Ref, Registry, Restart, Strategy};

/// What a supervisor is made of; cloned into every incarnation of it.
#[derive(Clone)]
pub struct SupervisorSpec {
    pub strategy: Strategy,
    pub config: SupervisorConfig,
    /// Shared by every incarnation of the supervisor (restarts copy no specs).
    pub children: Arc<Vec<ChildSpec>>,
    /// Children read from a source of truth at every start, after `children` (say,
    /// one link keeper per peer the endpoint knows now, however many joined since).
    pub children_from: Option<Arc<dyn Fn() -> Vec<ChildSpec> + Send + Sync>>,
}

impl std::fmt::Debug for SupervisorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorSpec")
            .field("strategy", &self.strategy)
            .field("config", &self.config)
            .field("children", &self.children)
            .field("children_from", &self.children_from.is_some())
            .finish()
    }
}

impl SupervisorSpec {
    pub fn new(strategy: Strategy, config: SupervisorConfig) -> Self {
        Self { strategy, config, children: Arc::new(Vec::new()), children_from: None }
    }

    pub fn child(mut self, spec: ChildSpec) -> Self {
        Arc::make_mut(&mut self.children).push(spec);
        self
    }

    pub fn children_from(mut self, source: impl Fn() -> Vec<ChildSpec> + Send + Sync + 'static) -> Self {
        self.children_from = Some(Arc::new(source));
        self
    }
}

impl ChildSpec {
    /// A child that is itself a supervisor of `spec`'s children.
    pub fn supervisor(name: &str, restart: Restart, spec: SupervisorSpec) -> (ChildSpec, Ref<Supervisor>) {
        let reference = Ref::new();
        (Self::supervisor_with_ref(name, restart, &reference, spec), reference)
    }

    /// A supervisor child reached through a reference made earlier (its children may
    /// need it, to add siblings at run time).
    pub fn supervisor_with_ref(
        name: &str,
        restart: Restart,
        reference: &Ref<Supervisor>,
        spec: SupervisorSpec,
    ) -> ChildSpec {
        ChildSpec::with_ref(name, restart, reference, move |cx| Supervisor::new(cx, spec.clone()))
            .with_shutdown(SUPERVISOR_SHUTDOWN)
    }
}

pub struct Supervisor {
    path: ActorPath,
    registry: Registry,
    /// This supervisor's own entry (its detail line, its escalations).
    me: Arc<Entry>,
    spec: SupervisorSpec,
    /// Children added at run time (`StartChild`), after `spec.children`.
    dynamic: Vec<ChildSpec>,
    entries: Vec<Arc<Entry>>,
    running: Vec<Option<RunningChild>>,
    state: State,
    rng: fastrand::Rng,
}

impl Supervisor {
    pub fn new(cx: &ChildContext, spec: SupervisorSpec) -> Self {
        let cfg = spec.config;
        Self {
            path: cx.path.clone(),
            registry: cx.registry.clone(),
            me: cx.registry.entry(&cx.path, "Supervisor", "", cfg.intensity.period),
            state: State::new(spec.strategy, cfg.intensity, cfg.backoff),
            rng: fastrand::Rng::with_seed(cfg.seed ^ cx.incarnation),
            spec,
            dynamic: Vec::new(),
            entries: Vec::new(),
            running: Vec::new(),
        }
    }

    fn child(&self, i: usize) -> &ChildSpec {
        let fixed = self.spec.children.len();
        if i < fixed {
            &self.spec.children[i]
        } else {
            &self.dynamic[i - fixed]
        }
    }

    /// Registers the child at index `entries.len()` (its spec already stored).
    fn add(&mut self, i: usize) -> Vec<Command> {
        let spec = self.child(i);
        let path = self.path.child(&spec.name);
        let (kind, restart) = (spec.starter.kind(), spec.restart);
        let window = self.spec.config.intensity.period;
        self.entries.push(self.registry.entry(&path, kind, restart.as_str(), window));
        self.running.push(None);
        self.state.add_child(restart).1
    }

    /// The index of the live child called `name`.
    fn find(&self, name: &str) -> Option<usize> {
        (0..self.entries.len()).find(|&i| self.child(i).name == name && !self.state.is_removed(i))
    }

    fn exec(&mut self, cmds: Vec<Command>, ctx: &mut Ctx<Self>) {
        for cmd in cmds {
            match cmd {
                Command::Start(i) => self.start_child(i, ctx),
                Command::Stop(i, inc) => {
                    if let Some(r) = self.running[i].as_ref().filter(|r| r.incarnation == inc) {
                        r.shutdown();
                    }
                    ctx.run_later(self.child(i).shutdown, move |sup, ctx| {
                        let cmds = sup.state.on_stop_timeout(i, inc);
                        sup.exec(cmds, ctx);
                    });
                }
                Command::Abort(i, inc) => {
                    if let Some(r) = self.running[i].as_ref().filter(|r| r.incarnation == inc) {
                        tracing::warn!(child = %self.entries[i].path(), "did not stop within {:?}; aborting", self.child(i).shutdown);
                        r.abort();
                    }
                }
                Command::RestartAfter(delay, generation, targets) => {
                    for &t in &targets {
                        self.entries[t].restarting(delay);
                    }
                    let delay = self.jitter(delay);
                    ctx.run_later(delay, move |sup, ctx| {
                        let cmds = sup.state.on_restart_timer(generation);
                        sup.exec(cmds, ctx);
                    });
                }
                Command::Forget(i) => {
                    self.running[i] = None;
                    self.registry.remove_subtree(self.entries[i].path());
                }
                Command::Exit(reason) => exit(ctx, reason),
                Command::Escalate(i, cause) => {
                    let reason =
                        ExitReason::Escalated { child: self.entries[i].path().clone(), cause: Box::new(cause) };
                    tracing::error!(%reason, "restart intensity exceeded; giving up");
                    self.me.escalated(&reason);
                    exit(ctx, reason);
                }
            }
        }
    }

    fn start_child(&mut self, i: usize, ctx: &mut Ctx<Self>) {
        let entry = self.entries[i].clone();
        let cx = ChildContext {
            path: entry.path().clone(),
            incarnation: entry.next_incarnation(),
            registry: self.registry.clone(),
        };
        let addr = ctx.address();
        let on_exit: OnExit =
            Box::new(move |incarnation, reason| addr.do_send(ChildExited { idx: i, incarnation, reason }));
        let running = self.child(i).starter.start(&cx, entry, on_exit);
        self.state.started(i, running.incarnation, Instant::now());
        self.running[i] = Some(running);
    }

    fn jitter(&mut self, delay: Duration) -> Duration {
        let j = self.spec.config.backoff.jitter;
        if delay.is_zero() || j == 0.0 {
            return delay;
        }
        delay.mul_f64(1.0 + j * (2.0 * self.rng.f64() - 1.0))
    }
}

impl Actor for Supervisor {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let i = self.spec.config.intensity;
        let info = format!("{} {}/{:?}", self.spec.strategy.as_str(), i.max_restarts, i.period);
        self.me.set_info(info);
        let mut cmds = Vec::new();
        for i in 0..self.spec.children.len() {
            cmds.extend(self.add(i));
        }
        let from_source = self.spec.children_from.as_ref().map(|f| f()).unwrap_or_default();
        for spec in from_source {
            if self.find(&spec.name).is_none() {
                self.dynamic.push(spec);
                cmds.extend(self.add(self.entries.len()));
            }
        }
        self.exec(cmds, ctx);
    }

    fn stopping(&mut self, ctx: &mut Ctx<Self>) -> Running {
        if !self.state.is_exited() {
            let cmds = self.state.on_shutdown();
            self.exec(cmds, ctx);
        }
        if self.state.is_exited() {
            Running::Stop
        } else {
            Running::Continue
        }
    }
}

/// A supervisor that dies abnormally takes its children with it (as an Erlang link
/// would): its replacement starts fresh ones.
impl Drop for Supervisor {
    fn drop(&mut self) {
        for r in self.running.iter().flatten() {
            r.abort();
        }
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Ctx<Self>) {
        if self.running[msg.idx].as_ref().is_some_and(|r| r.incarnation == msg.incarnation) {
            self.running[msg.idx] = None;
        }
        if let ExitReason::Killed { .. } = msg.reason {
            tracing::info!(child = %self.entries[msg.idx].path(), incarnation = msg.incarnation, reason = %msg.reason, "child exited");
        } else if msg.reason.is_abnormal() {
            tracing::warn!(child = %self.entries[msg.idx].path(), incarnation = msg.incarnation, reason = %msg.reason, "child exited");
        }
        let cmds = self.state.on_child_exited(msg.idx, msg.incarnation, &msg.reason, Instant::now());
        self.exec(cmds, ctx);
    }
}

impl Handler<StartChild> for Supervisor {
    type Result = Result<u64, Error>;

    fn handle(&mut self, StartChild(spec): StartChild, ctx: &mut Ctx<Self>) -> Self::Result {
        if self.state.is_exited() {
            return Err(Error::ShuttingDown);
        }
        if self.find(&spec.name).is_some() {
            return Err(Error::DuplicateChild(spec.name));
        }
        self.dynamic.push(spec);
        let cmds = self.add(self.entries.len());
        if cmds.is_empty() {
            return Err(Error::ShuttingDown);
        }
        self.exec(cmds, ctx);
        Ok(self.running.last().and_then(|r| r.as_ref()).map(|r| r.incarnation).unwrap_or(0))
    }
}

impl Handler<StopChild> for Supervisor {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: StopChild, ctx: &mut Ctx<Self>) -> Self::Result {
        let idx = self.find(&msg.name).ok_or(Error::NoSuchChild(msg.name))?;
        let cmds = self.state.remove_child(idx);
        self.exec(cmds, ctx);
        Ok(())
    }
}

/// The top of a member's tree. Its exit is the process's: see [`Root::exited`].
pub struct Root {
    pub path: ActorPath,
    pub reference: Ref<Supervisor>,
    child: RunningChild,
    exit: oneshot::Receiver<ExitReason>,
}

/// Starts the root supervisor of `registry`'s member on the current arbiter.
pub fn start_root(registry: &Registry, spec: SupervisorSpec) -> Root {
    let path = ActorPath::root(registry.member());
    let entry = registry.entry(&path, "Supervisor", "root", spec.config.intensity.period);
    let (root_spec, reference) =
        ChildSpec::new(registry.member(), Restart::Temporary, move |cx| Supervisor::new(cx, spec.clone()));
    let cx = ChildContext { path: path.clone(), incarnation: entry.next_incarnation(), registry: registry.clone() };
    let (tx, exit) = oneshot::channel();
    let on_exit: OnExit = Box::new(move |_, reason| {
        let _receiver_gone_means_nobody_waits = tx.send(reason);
    });
    let child = root_spec.starter.start(&cx, entry, on_exit);
    Root { path, reference, child, exit }
}

impl Root {
    /// Begins the ordered shutdown of the whole tree.
    pub fn shutdown(&self) {
        self.child.shutdown();
    }

    /// Resolves when the root has exited: `Shutdown` after [`Root::shutdown`], an
    /// abnormal reason when the tree gave up (the process should exit non-zero).
    pub async fn exited(&mut self) -> ExitReason {
        (&mut self.exit).await.unwrap_or_else(|_| ExitReason::failed("root exit notice lost"))
    }
}
