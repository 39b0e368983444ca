//! One life of an actor, and the traits keelson actors implement.
//!
//! A keelson actor implements [`Actor`] and [`Handler`] (keelson's, shaped like
//! actix's). The runtime wraps it in an [`Incarnation`], which is the actix actor:
//! every handler call goes through the wrapper, which enters the actor's span, counts
//! the message and times the handler. So the tree's counters are kept by the runtime,
//! not by each actor's discipline.
//!
//! An incarnation ends in one of three ways, all reported by its [`ExitGuard`] (the
//! last field, so it runs after the actor's own fields are dropped):
//! - it stops (by itself, or asked through its [`Signal`]): the task finishes;
//! - it panics anywhere in its task (handler, async handler, `started`, `stopping`):
//!   tokio drops the task while unwinding, and the guard sees `panicking()`;
//! - it is aborted after ignoring a stop for its shutdown timeout.

use std::sync::Arc;
use std::time::Instant;

use actix::dev::MessageResponse;
use actix::{ActorContext, ActorFutureExt, AsyncContext, Running, StreamHandler};
use futures_util::future::{AbortHandle, Abortable};
use tracing::Span;

use super::registry::{Entry, Live, Vitals};
use super::signal::{Control, SignalStream};
use super::{ActorPath, ExitReason, Registry};

/// The actix context of a keelson actor.
pub type Ctx<A> = actix::Context<Incarnation<A>>;

/// The reply type of an asynchronous handler.
pub type AsyncReply<A, R> = actix::ResponseActFuture<Incarnation<A>, R>;

/// A keelson actor. Build it cheaply and infallibly in its factory; do fallible or
/// slow set-up in `started` (a panic there is a crash like any other).
pub trait Actor: Sized + Unpin + 'static {
    fn started(&mut self, _ctx: &mut Ctx<Self>) {}

    /// Return `Running::Continue` to keep running (e.g. to finish a graceful stop);
    /// the supervisor aborts the task after the child's shutdown timeout.
    fn stopping(&mut self, _ctx: &mut Ctx<Self>) -> Running {
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Ctx<Self>) {}
}

/// Handles message `M`; the counterpart of `actix::Handler` for keelson actors.
pub trait Handler<M: actix::Message>: Actor {
    type Result: MessageResponse<Incarnation<Self>, M>;

    fn handle(&mut self, msg: M, ctx: &mut Ctx<Self>) -> Self::Result;
}

/// What a factory learns about the incarnation it builds.
#[derive(Clone)]
pub struct ChildContext {
    pub path: ActorPath,
    pub incarnation: u64,
    pub registry: Registry,
}

/// A notice sent to the parent when an incarnation has ended.
pub(crate) type OnExit = Box<dyn FnOnce(u64, ExitReason) + Send>;

/// The running actor: the actix actor around a keelson actor.
pub struct Incarnation<A: Actor> {
    actor: A,
    span: Span,
    guard: ExitGuard,
}

impl<A: Actor> Incarnation<A> {
    pub fn actor(&self) -> &A {
        &self.actor
    }

    pub fn actor_mut(&mut self) -> &mut A {
        &mut self.actor
    }
}

impl<A: Actor> Incarnation<A> {
    /// actix's context polls a dropped actor once more to run `stopping`/`stopped`.
    /// When the task is unwinding from a panic, or was aborted, the actor's own code
    /// must not run again: a second panic while unwinding would abort the process.
    /// The same holds when the runtime itself is being torn down (no timers left).
    fn dying(&self) -> bool {
        std::thread::panicking()
            || self.guard.vitals.signal.bits().aborted()
            || tokio::runtime::Handle::try_current().is_err()
    }
}

impl<A: Actor> std::ops::Deref for Incarnation<A> {
    type Target = A;
    fn deref(&self) -> &A {
        &self.actor
    }
}

impl<A: Actor> std::ops::DerefMut for Incarnation<A> {
    fn deref_mut(&mut self) -> &mut A {
        &mut self.actor
    }
}

impl<A: Actor> actix::Actor for Incarnation<A> {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        ctx.add_stream(SignalStream::new(self.guard.vitals.clone()));
        self.actor.started(ctx);
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if self.dying() {
            return Running::Stop;
        }
        let _span = self.span.clone().entered();
        self.actor.stopping(ctx)
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        if self.dying() {
            return;
        }
        let _span = self.span.clone().entered();
        self.actor.stopped(ctx);
    }
}

impl<A, M> actix::Handler<M> for Incarnation<A>
where
    A: Handler<M>,
    M: actix::Message,
{
    type Result = A::Result;

    fn handle(&mut self, msg: M, ctx: &mut Self::Context) -> A::Result {
        let _span = self.span.enter();
        let began = Instant::now();
        let result = self.actor.handle(msg, ctx);
        self.guard.vitals.counters.record(began.elapsed());
        result
    }
}

impl<A: Actor> StreamHandler<Control> for Incarnation<A> {
    fn handle(&mut self, control: Control, ctx: &mut Self::Context) {
        match control {
            Control::Shutdown | Control::KillStop => ctx.stop(),
            Control::KillPanic => std::panic::panic_any(super::panic::CHAOS_PANIC),
        }
    }

    /// The signal stream never ends; nothing to do (actix would stop the actor).
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

/// Ends the current incarnation with `reason` (e.g. a supervisor escalating, or an
/// actor whose child process died). Takes effect after the current handler returns.
pub fn exit<A: Actor>(ctx: &mut Ctx<A>, reason: ExitReason) {
    ctx.spawn(actix::fut::ready(()).map(move |(), inc: &mut Incarnation<A>, ctx: &mut Ctx<A>| {
        inc.guard.said = Some(reason);
        ctx.stop();
    }));
}

/// Reports the end of an incarnation to the registry, the reference slot and the parent.
pub(crate) struct ExitGuard {
    entry: Arc<Entry>,
    incarnation: u64,
    vitals: Arc<Vitals>,
    said: Option<ExitReason>,
    clear_slot: Option<Box<dyn FnOnce(u64)>>,
    on_exit: Option<OnExit>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let panic = std::thread::panicking().then(super::panic::take_last_panic);
        let reason = self.entry.exited(self.incarnation, &self.vitals, panic, self.said.take());
        if let Some(clear) = self.clear_slot.take() {
            clear(self.incarnation);
        }
        if let Some(on_exit) = self.on_exit.take() {
            on_exit(self.incarnation, reason);
        }
    }
}

/// Handles on a launched incarnation, kept by its supervisor.
pub(crate) struct RunningChild {
    pub(crate) incarnation: u64,
    pub(crate) vitals: Arc<Vitals>,
    pub(crate) abort: AbortHandle,
}

impl RunningChild {
    pub(crate) fn shutdown(&self) {
        self.vitals.signal.raise(Control::Shutdown);
    }

    pub(crate) fn abort(&self) {
        self.vitals.signal.mark_aborted();
        self.abort.abort();
    }
}

/// Where a new incarnation's address goes so references reach it.
pub(crate) trait Publish<A: Actor> {
    fn publish(&self, incarnation: u64, addr: actix::Addr<Incarnation<A>>, vitals: Arc<Vitals>);
    fn clear(&self) -> Box<dyn FnOnce(u64)>;
}

/// Starts `actor` as incarnation `incarnation` of `entry` on the current arbiter.
pub(crate) fn launch<A: Actor>(
    cx: &ChildContext,
    entry: Arc<Entry>,
    actor: A,
    slot: &dyn Publish<A>,
    on_exit: OnExit,
) -> RunningChild {
    let vitals = Arc::new(Vitals::default());
    let (abort, registration) = AbortHandle::new_pair();
    let ctx: Ctx<A> = actix::Context::new();
    slot.publish(cx.incarnation, ctx.address(), vitals.clone());
    entry.running(cx.incarnation, Live { vitals: vitals.clone(), started_at: tokio::time::Instant::now() });
    let span = tracing::info_span!(parent: None, "actor", path = %cx.path, incarnation = cx.incarnation);
    let guard = ExitGuard {
        entry,
        incarnation: cx.incarnation,
        vitals: vitals.clone(),
        said: None,
        clear_slot: Some(slot.clear()),
        on_exit: Some(on_exit),
    };
    let fut = ctx.into_future(Incarnation { actor, span, guard });
    // Spawned as a plain combinator, not inside an `async` block: the block would keep
    // room for both the captured context and the future it awaits (2x the task size).
    actix::spawn(futures_util::FutureExt::map(Abortable::new(fut, registration), |_aborted_or_done| ()));
    RunningChild { incarnation: cx.incarnation, vitals, abort }
}
