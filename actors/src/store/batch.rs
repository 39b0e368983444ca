//! Group commit: a leader's writes that arrive while earlier ones are still being
//! replicated are proposed together, as one log entry (`WriteOp::Batch`), instead of one
//! entry each. Under load this divides the log appends, fsyncs and per-entry raft work
//! by the batch size; a write arriving when nothing is in flight goes out alone at once,
//! so an idle shard's latency does not change.
//!
//! At most `IN_FLIGHT` batches are proposed at a time; while they are, new writes queue,
//! and the next batch takes what has queued (up to `MAX_OPS` writes and about
//! `MAX_BYTES`). One at a time is classic group commit: a write that finds a batch in
//! flight waits for it, but so do its neighbours, and they go together. Writes in
//! different batches were all in flight together, so their order is the log's; writes
//! in one batch are applied in arrival order, each as if it were an entry of its own
//! (its fencing check, its revision, its outcome).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::state::{Command, Outcome, WriteOp};
use super::types::{ClientReply, Raft};

/// How many batches may be proposed and not yet committed at once. One: with four, most
/// batches held a single write (a 100-pod burst made about as many entries, and so
/// AppendEntries and fsyncs on each member, as it made writes); with one, the burst took a
/// tenth less CPU and the store bench's puts at 16 and 64 clients were as fast or faster
/// at less CPU each (BENCHMARKS.md, session 28). openraft appends and replicates a
/// leader's entries one after the other anyway, so more in flight bought no overlap.
const IN_FLIGHT: usize = 1;
/// The most writes in one batch.
const MAX_OPS: usize = 256;
/// About the most bytes (keys and values) in one batch: with openraft sending up to
/// `MAX_PAYLOAD_ENTRIES` entries per AppendEntries, this keeps that message far below
/// the transport's 16 MiB frame.
pub const MAX_BYTES: usize = 64 << 10;
/// Entries per AppendEntries (openraft's default is 300, sized for entries of one write).
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;

type Pending = (Command, oneshot::Sender<ClientReply>);

/// The queue into a leader replica's group commit.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts the batching task on `runtime`; it ends when every `Batcher` is dropped
    /// (or the handle is aborted).
    pub fn start(
        raft: Raft,
        committed_here: Arc<AtomicBool>,
        runtime: &tokio::runtime::Handle,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::unbounded_channel();
        (Self { queue }, runtime.spawn(run(raft, committed_here, rx)))
    }

    /// Proposes `cmd` with whatever else is waiting, and answers once it is committed.
    pub async fn write(&self, cmd: Command) -> ClientReply {
        let (tx, rx) = oneshot::channel();
        if self.queue.send((cmd, tx)).is_err() {
            return ClientReply::Error("the replica is closing".into());
        }
        rx.await.unwrap_or_else(|_| ClientReply::Unknown("the replica closed before the write was answered".into()))
    }
}

async fn run(raft: Raft, committed_here: Arc<AtomicBool>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot is what lets the queue fill: the batch is taken after.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut weight = first.0.weight();
        let mut batch = vec![first];
        while batch.len() < MAX_OPS && weight < MAX_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    weight += next.0.weight();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        tokio::spawn(commit(raft.clone(), committed_here.clone(), batch, slot));
    }
}

/// Proposes one batch (a lone write as itself) and answers each of its writers.
async fn commit(raft: Raft, committed_here: Arc<AtomicBool>, batch: Vec<Pending>, _slot: OwnedSemaphorePermit) {
    let (mut cmds, writers): (Vec<Command>, Vec<oneshot::Sender<ClientReply>>) = batch.into_iter().unzip();
    let alone = cmds.len() == 1;
    let cmd = match cmds.pop() {
        Some(only) if alone => only,
        Some(last) => {
            cmds.push(last);
            Command { epoch: None, op: WriteOp::Batch(cmds) }
        }
        None => return,
    };
    let replies = replies(raft.client_write(cmd).await.map(|r| r.data), alone, writers.len(), &committed_here);
    for (writer, reply) in writers.into_iter().zip(replies) {
        let _gone = writer.send(reply);
    }
}

/// Each writer's reply to a proposal of `n` writes (`alone`: one, proposed as itself).
fn replies(
    result: Result<Outcome, RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>>,
    alone: bool,
    n: usize,
    committed_here: &AtomicBool,
) -> Vec<ClientReply> {
    match result {
        Ok(outcome) => {
            committed_here.store(true, Ordering::Release);
            match outcome {
                Outcome::Batch(outcomes) if !alone => outcomes.into_iter().map(ClientReply::Written).collect(),
                outcome => vec![ClientReply::Written(outcome)],
            }
        }
        // Raft had the proposal: whatever went wrong, it may still be committed.
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            vec![ClientReply::Unknown("lost the lead while writing: the write may or may not take effect".into()); n]
        }
        Err(e) => vec![ClientReply::Unknown(format!("{e}: the write may or may not take effect")); n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::Data;

    fn put(k: &str, epoch: Option<u64>) -> Command {
        Command { epoch, op: WriteOp::Put { key: k.into(), value: b"v".to_vec(), lease: 0 } }
    }

    #[test]
    fn a_batch_applies_each_write_as_its_own_entry() {
        let mut d = Data::default();
        d.apply(&Command { epoch: None, op: WriteOp::RaiseEpoch { epoch: 5 } });
        let batch = Command {
            epoch: None,
            op: WriteOp::Batch(vec![put("a", None), put("b", Some(4)), put("a", Some(5)), put("c", None)]),
        };
        let out = d.apply(&batch);
        assert_eq!(
            out,
            Outcome::Batch(vec![
                Outcome::Done { revision: 1, existed: false },
                Outcome::Fenced { current: 5 },
                Outcome::Done { revision: 2, existed: true },
                Outcome::Done { revision: 3, existed: false },
            ])
        );
        assert!(!d.kv.contains_key("b"), "the fenced write changed nothing");
        assert_eq!(d.kv.get("a").map(|v| v.version), Some(2));
    }

    #[test]
    fn each_writer_gets_its_own_outcome_or_the_shared_failure() {
        let flag = AtomicBool::new(false);
        let two = Outcome::Batch(vec![Outcome::Conflict { current: 3 }, Outcome::Done { revision: 9, existed: true }]);
        let replies = replies(Ok(two.clone()), false, 2, &flag);
        assert_eq!(
            replies,
            vec![
                ClientReply::Written(Outcome::Conflict { current: 3 }),
                ClientReply::Written(Outcome::Done { revision: 9, existed: true })
            ]
        );
        assert!(flag.load(Ordering::Acquire), "a commit as leader is remembered");
        // A lone write is proposed as itself: even a batch outcome is its own.
        assert_eq!(super::replies(Ok(two.clone()), true, 1, &flag), vec![ClientReply::Written(two)]);
        let lost = RaftError::APIError(ClientWriteError::ForwardToLeader(openraft::error::ForwardToLeader::empty()));
        let failed = super::replies(Err(lost), false, 3, &AtomicBool::new(false));
        assert_eq!(failed.len(), 3);
        assert!(failed.iter().all(|r| matches!(r, ClientReply::Unknown(e) if e.contains("lost the lead"))));
    }

    #[test]
    fn weights_count_keys_and_values() {
        let big = Command { epoch: None, op: WriteOp::Put { key: "k".into(), value: vec![0; 1000], lease: 0 } };
        assert_eq!(big.weight(), 32 + 1 + 1000);
        let batch = Command { epoch: None, op: WriteOp::Batch(vec![big.clone(), big]) };
        assert_eq!(batch.weight(), 32 + 2 * 1033);
    }
}
