//! Stable references: a [`Ref`] reaches whichever incarnation of an actor is current.
//!
//! A restart builds a new actix actor with a new `Addr`; holders of the old one would
//! get `Closed` forever. A `Ref` shares a slot that the runtime repoints at every
//! launch and clears at every exit, so a message sent after a restart reaches the new
//! incarnation and one sent while none runs fails at once with a typed error.

use std::sync::{Arc, RwLock};

use actix::dev::ToEnvelope;

use super::incarnation::{Incarnation, Publish};
use super::registry::Vitals;
use super::{Actor, ActorPath, Handler};

/// Why a message did not get a reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SendError {
    /// No incarnation was running when the message was sent (between a crash and
    /// its restart, or after a final stop).
    #[error("{path} is not running")]
    NotRunning { path: String },
    /// The incarnation ended before it replied (the message was dropped in its
    /// mailbox, or the handler crashed).
    #[error("{path} stopped before replying")]
    Stopped { path: String },
}

struct Current<A: Actor> {
    incarnation: u64,
    addr: actix::Addr<Incarnation<A>>,
    vitals: Arc<Vitals>,
}

pub(crate) struct Slot<A: Actor> {
    path: RwLock<Option<ActorPath>>,
    current: RwLock<Option<Current<A>>>,
}

/// A reference to whatever incarnation of `A` is running at a path.
pub struct Ref<A: Actor> {
    slot: Arc<Slot<A>>,
}

impl<A: Actor> Clone for Ref<A> {
    fn clone(&self) -> Self {
        Self { slot: self.slot.clone() }
    }
}

impl<A: Actor> Default for Ref<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Actor> Ref<A> {
    /// A reference that reaches nothing until the runtime launches an incarnation into it.
    pub fn new() -> Self {
        Self { slot: Arc::new(Slot { path: RwLock::new(None), current: RwLock::new(None) }) }
    }

    pub(crate) fn set_path(&self, path: &ActorPath) {
        *self.slot.path.write().unwrap() = Some(path.clone());
    }

    fn path_string(&self) -> String {
        self.slot.path.read().unwrap().as_ref().map(|p| p.to_string()).unwrap_or_else(|| "<never started>".into())
    }

    /// The incarnation currently reachable, if any.
    pub fn incarnation(&self) -> Option<u64> {
        self.slot.current.read().unwrap().as_ref().map(|c| c.incarnation)
    }

    fn current(&self) -> Result<(actix::Addr<Incarnation<A>>, Arc<Vitals>), SendError> {
        let cur = self.slot.current.read().unwrap();
        match cur.as_ref() {
            Some(c) if c.addr.connected() => Ok((c.addr.clone(), c.vitals.clone())),
            _ => Err(SendError::NotRunning { path: self.path_string() }),
        }
    }

    /// Sends `msg` and waits for the reply, or a [`SendError`]; never hangs on a dead actor.
    pub async fn send<M>(&self, msg: M) -> Result<M::Result, SendError>
    where
        A: Handler<M>,
        M: actix::Message + Send + 'static,
        M::Result: Send,
        actix::Context<Incarnation<A>>: ToEnvelope<Incarnation<A>, M>,
    {
        let (addr, vitals) = self.current()?;
        vitals.counters.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        addr.send(msg).await.map_err(|_| SendError::Stopped { path: self.path_string() })
    }

    /// Queues `msg` without waiting for a reply. Errors only if no incarnation runs;
    /// a message queued to an incarnation that then dies is lost, so use `send` where
    /// the outcome matters.
    pub fn tell<M>(&self, msg: M) -> Result<(), SendError>
    where
        A: Handler<M>,
        M: actix::Message + Send + 'static,
        M::Result: Send,
        actix::Context<Incarnation<A>>: ToEnvelope<Incarnation<A>, M>,
    {
        let (addr, vitals) = self.current()?;
        vitals.counters.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        addr.do_send(msg);
        Ok(())
    }
}

impl<A: Actor> Publish<A> for Ref<A> {
    fn publish(&self, incarnation: u64, addr: actix::Addr<Incarnation<A>>, vitals: Arc<Vitals>) {
        *self.slot.current.write().unwrap() = Some(Current { incarnation, addr, vitals });
    }

    fn clear(&self) -> Box<dyn FnOnce(u64)> {
        let slot = self.slot.clone();
        Box::new(move |incarnation| {
            let mut cur = slot.current.write().unwrap();
            if cur.as_ref().is_some_and(|c| c.incarnation == incarnation) {
                *cur = None;
            }
        })
    }
}
