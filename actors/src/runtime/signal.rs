//! The kill switch of one incarnation: a tiny lock-free flag set plus a waker,
//! polled as a stream inside the actor's own context.
//!
//! It is not a message in the actor's mailbox, so a stop or a chaos kill does not
//! wait behind a backlog, and it is not a channel, so an idle actor pays a few dozen
//! bytes for it, not a channel block. Forced stops do not go through here: they
//! abort the actor's task (see `incarnation.rs`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::task::AtomicWaker;

use super::registry::Vitals;

/// One request to the running incarnation, in increasing precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Its supervisor wants it to stop (ordered shutdown or a sibling's restart).
    Shutdown,
    /// Killed on purpose: stop through `stopping`, recorded as an abnormal exit.
    KillStop,
    /// Killed on purpose: panic inside its task.
    KillPanic,
}

const SHUTDOWN: u8 = 1;
const KILL_STOP: u8 = 2;
const KILL_PANIC: u8 = 4;
const ABORTED: u8 = 8;
const KILLS: u8 = KILL_STOP | KILL_PANIC;

#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicU8,
    seen: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
    /// Raises `c`; returns false for a kill when a kill is already pending (so every
    /// accepted kill ends exactly one incarnation, which the storm test counts on).
    pub(crate) fn raise(&self, c: Control) -> bool {
        let bit = match c {
            Control::Shutdown => SHUTDOWN,
            Control::KillStop => KILL_STOP,
            Control::KillPanic => KILL_PANIC,
        };
        let before = self.raised.fetch_or(bit, Ordering::AcqRel);
        self.waker.wake();
        bit == SHUTDOWN || before & KILLS == 0
    }

    /// Marks that the task was aborted after its shutdown timeout.
    pub(crate) fn mark_aborted(&self) {
        self.raised.fetch_or(ABORTED, Ordering::AcqRel);
    }

    pub(crate) fn bits(&self) -> Bits {
        Bits(self.raised.load(Ordering::Acquire))
    }
}

/// A snapshot of what was raised, read once when the incarnation ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bits(u8);

impl Bits {
    pub(crate) fn killed_by_panic(self) -> bool {
        self.0 & KILL_PANIC != 0
    }
    pub(crate) fn killed_by_stop(self) -> bool {
        self.0 & KILL_STOP != 0
    }
    pub(crate) fn shutdown(self) -> bool {
        self.0 & SHUTDOWN != 0
    }
    pub(crate) fn aborted(self) -> bool {
        self.0 & ABORTED != 0
    }
}

/// Yields each newly raised control once, highest precedence first; never ends.
pub(crate) struct SignalStream(std::sync::Arc<Vitals>);

impl SignalStream {
    pub(crate) fn new(vitals: std::sync::Arc<Vitals>) -> Self {
        Self(vitals)
    }

    fn signal(&self) -> &Signal {
        &self.0.signal
    }

    fn take_new(&self) -> Option<Control> {
        let raised = self.signal().raised.load(Ordering::Acquire) & !ABORTED;
        let seen = self.signal().seen.fetch_or(raised, Ordering::AcqRel);
        let new = raised & !seen;
        if new & KILL_PANIC != 0 {
            Some(Control::KillPanic)
        } else if new & KILL_STOP != 0 {
            Some(Control::KillStop)
        } else if new & SHUTDOWN != 0 {
            Some(Control::Shutdown)
        } else {
            None
        }
    }
}

impl Stream for SignalStream {
    type Item = Control;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Control>> {
        if let Some(c) = self.take_new() {
            return Poll::Ready(Some(c));
        }
        self.signal().waker.register(cx.waker());
        match self.take_new() {
            Some(c) => Poll::Ready(Some(c)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_second_kill_is_refused_and_precedence_holds() {
        let v = Arc::new(Vitals::default());
        let s = &v.signal;
        assert!(s.raise(Control::Shutdown));
        assert!(s.raise(Control::KillStop));
        assert!(!s.raise(Control::KillPanic));
        let stream = SignalStream::new(v.clone());
        assert_eq!(stream.take_new(), Some(Control::KillPanic));
        assert_eq!(stream.take_new(), None);
        let b = s.bits();
        assert!(b.killed_by_panic() && b.killed_by_stop() && b.shutdown() && !b.aborted());
    }
}
