//! The supervisor's public API, and the notice its children send it.

use actix::Message;

use crate::runtime::{ChildSpec, ExitReason};

/// Starts a child under a running supervisor (a pod worker, say). Replies once the
/// first incarnation is launched, with its incarnation number.
#[derive(Message)]
#[rtype(result = "Result<u64, super::Error>")]
pub struct StartChild(pub ChildSpec);

/// Stops a child through its ordered stop and forgets it (with its subtree in the
/// registry). Replies when the stop has been requested, not when it completed.
#[derive(Message)]
#[rtype(result = "Result<(), super::Error>")]
pub struct StopChild {
    pub name: String,
}

/// Sent by a child's exit guard when one of its incarnations has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ChildExited {
    pub(crate) idx: usize,
    pub(crate) incarnation: u64,
    pub(crate) reason: ExitReason,
}
