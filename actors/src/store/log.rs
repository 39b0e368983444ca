//! The raft log and vote of one shard replica, on disk (`wal.rs`), fsync'd before raft
//! hears that an entry is durable.
//!
//! Group commit: `append` only queues its entries (they are readable at once, from
//! memory) and returns; one writer thread per replica takes everything queued, writes
//! it with one `write` and one fsync, and then tells raft, for each append, that its
//! entries are durable. Under load many appends share an fsync, and raft never waits
//! for the disk while it handles messages. Votes, truncations and purges go through the
//! same queue, in order, and their callers wait for the fsync.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use keelson_transport::frame::{from_payload, to_payload};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use super::types::{NodeId, TypeConfig};
use super::wal::{MetaKey, Record, Wal, WalReader};

/// One queued change, applied by the writer in queue order.
enum Op {
    Append {
        rows: Vec<(LogId<NodeId>, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// A metadata value (vote, committed, purged).
    Meta {
        key: MetaKey,
        bytes: Vec<u8>,
        done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    },
    /// Deletes entries from `since` on (truncate) or up to `upto` (purge).
    Delete {
        since: Option<u64>,
        upto: Option<u64>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

struct Shared {
    disk: WalReader,
    /// Entries queued but not yet written: readable before they are durable, as raft
    /// expects once `append` returns.
    pending: Mutex<BTreeMap<u64, Entry<TypeConfig>>>,
    queue: Mutex<mpsc::Sender<Op>>,
}

#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens the log in `dir` (replaying it) and starts its writer thread.
    pub fn open(dir: &Path, name: &str) -> std::io::Result<Self> {
        let (wal, disk) = Wal::open(dir)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared { disk, pending: Mutex::default(), queue: Mutex::new(tx) });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new().name(format!("raft-log-{name}")).spawn(move || writer(wal, weak, rx))?;
        Ok(Self { shared })
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: MetaKey) -> Result<Option<T>, StorageError<NodeId>> {
        self.shared.disk.meta(key).map(|v| from_payload(&v).map_err(read_err)).transpose()
    }

    fn enqueue(&self, op: Op) -> Result<(), StorageError<NodeId>> {
        self.shared.queue.lock().unwrap().send(op).map_err(|_| write_err(std::io::Error::other("log writer gone")))
    }

    /// Queues a metadata row and waits until it is durable.
    async fn set_meta<T: serde::Serialize>(&self, key: MetaKey, value: &T) -> Result<(), StorageError<NodeId>> {
        let bytes = to_payload(value).map_err(write_err)?;
        let (done, wait) = tokio::sync::oneshot::channel();
        self.enqueue(Op::Meta { key, bytes, done: Some(done) })?;
        finished(wait).await
    }

    async fn delete(&self, since: Option<u64>, upto: Option<u64>) -> Result<(), StorageError<NodeId>> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.enqueue(Op::Delete { since, upto, done })?;
        finished(wait).await
    }
}

async fn finished(wait: tokio::sync::oneshot::Receiver<Result<(), String>>) -> Result<(), StorageError<NodeId>> {
    match wait.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(write_err(std::io::Error::other(e))),
        Err(_) => Err(write_err(std::io::Error::other("log writer gone"))),
    }
}

/// The writer thread: everything queued at once goes into one write, one fsync.
fn writer(mut wal: Wal, shared: std::sync::Weak<Shared>, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let Some(shared) = shared.upgrade() else { return };
        let mut records = Vec::new();
        for op in &batch {
            add_records(op, &mut records);
        }
        // Only the committed index alone needs no fsync (it rides along with the next one).
        let sync = !batch.iter().all(|op| matches!(op, Op::Meta { done: None, .. }));
        let result = wal.write(&records, sync).map_err(|e| e.to_string());
        drop(records);
        // Written: the entries are read from disk now (unless a later append replaced
        // them in memory meanwhile).
        {
            let mut pending = shared.pending.lock().unwrap();
            for op in &batch {
                if let Op::Append { rows, .. } = op {
                    for (id, _) in rows {
                        if result.is_ok() && pending.get(&id.index).is_some_and(|e| e.log_id == *id) {
                            pending.remove(&id.index);
                        }
                    }
                }
            }
        }
        for op in batch {
            match op {
                Op::Append { done, .. } => {
                    done.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Op::Meta { done: Some(done), .. } | Op::Delete { done, .. } => {
                    let _caller_gone = done.send(result.clone());
                }
                Op::Meta { done: None, .. } => {}
            }
        }
    }
}

/// Adds the log records of one queued change to `out`.
fn add_records<'a>(op: &'a Op, out: &mut Vec<Record<'a>>) {
    match op {
        Op::Append { rows, .. } => out.extend(rows.iter().map(|(id, bytes)| Record::Entry { index: id.index, bytes })),
        Op::Meta { key, bytes, .. } => out.push(Record::Meta { key: *key, bytes }),
        Op::Delete { since: Some(since), .. } => out.push(Record::Truncate { since: *since }),
        Op::Delete { upto: Some(upto), .. } => out.push(Record::Purge { upto: *upto }),
        Op::Delete { .. } => {}
    }
}

/// What one read may still take: entries while their bytes stay within the budget, and
/// always the first.
struct Budget {
    left: usize,
    taken: usize,
    /// Whether an entry was refused: the read ends there.
    full: bool,
}

impl Budget {
    fn take(&mut self, size: usize) -> bool {
        if self.taken > 0 && size > self.left {
            self.full = true;
            return false;
        }
        self.left = self.left.saturating_sub(size);
        self.taken += 1;
        true
    }
}

/// What a queued entry counts against a read's budget.
fn weight(entry: &Entry<TypeConfig>) -> usize {
    match &entry.payload {
        EntryPayload::Normal(command) => command.weight(),
        _ => 0,
    }
}

/// About the most bytes of entries one AppendEntries carries (one entry goes whatever its
/// size). openraft gives an AppendEntries the heartbeat interval (100 ms) to be answered.
/// Under a scheduling burst, messages of 64 batches reached 1–3 MB, beyond a QUIC
/// stream's initial receive window (1.25 MB): on a busy machine they missed that
/// deadline, were dropped and sent again whole, and missed it again, so the followers
/// heard no heartbeat and elected another leader, which then failed the same way
/// (BENCHMARKS.md, scheduling, session 17). A quarter of a megabyte goes in one flight.
const MAX_APPEND_BYTES: usize = 256 << 10;

impl LogStore {
    /// The entries in `range`, in order, stopping before the one that would take their
    /// bytes past `budget` (the first always comes).
    fn entries<RB: RangeBounds<u64> + Clone>(
        &self,
        range: RB,
        budget: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        // Take the in-memory entries first: one written meanwhile is then found on disk.
        // No more of them are copied than the budget could take were the disk to give
        // none (a follower far behind reads from the disk, and stops there).
        let queued: Vec<Entry<TypeConfig>> = {
            let pending = self.shared.pending.lock().unwrap();
            let mut most = Budget { left: budget, taken: 0, full: false };
            pending.range(range.clone()).take_while(|(_, e)| most.take(weight(e))).map(|(_, e)| e.clone()).collect()
        };
        let upper = match (range.end_bound(), queued.first()) {
            // Entries from the first queued index on are the queued ones.
            (_, Some(first)) => Bound::Excluded(first.log_id.index),
            (b, None) => b.cloned(),
        };
        let mut budget = Budget { left: budget, taken: 0, full: false };
        let stored = self
            .shared
            .disk
            .entries((range.start_bound().cloned(), upper), |size| budget.take(size))
            .map_err(read_err)?;
        let mut out = Vec::with_capacity(stored.len());
        for (_, v) in &stored {
            out.push(from_payload(v).map_err(read_err)?);
        }
        if budget.full {
            return Ok(out);
        }
        for entry in queued {
            if !budget.take(weight(&entry)) {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.entries(range, usize::MAX)
    }

    /// What replication sends: a bounded message (`MAX_APPEND_BYTES`).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.entries(start..end, MAX_APPEND_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.meta(MetaKey::Purged)?;
        if let Some((_, e)) = self.shared.pending.lock().unwrap().last_key_value() {
            return Ok(LogState { last_purged_log_id: last_purged, last_log_id: Some(e.log_id) });
        }
        let last = match self.shared.disk.last_index() {
            Some(i) => self.entries(i..=i, usize::MAX)?.first().map(|e| e.log_id).or(last_purged),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.set_meta(MetaKey::Vote, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta(MetaKey::Vote)
    }

    /// Queued, not waited for: the committed index only spares re-applying on restart
    /// (a lost one is learned from the leader again); it rides along with the next fsync.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let bytes = to_payload(&committed).map_err(write_err)?;
        self.enqueue(Op::Meta { key: MetaKey::Committed, bytes, done: None })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.meta::<Option<LogId<NodeId>>>(MetaKey::Committed)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        {
            let mut pending = self.shared.pending.lock().unwrap();
            for e in entries {
                rows.push((e.log_id, to_payload(&e).map_err(write_err)?));
                pending.insert(e.log_id.index, e);
            }
        }
        self.enqueue(Op::Append { rows, done: callback })
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.shared.pending.lock().unwrap().retain(|i, _| *i < log_id.index);
        self.delete(Some(log_id.index), None).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.shared.pending.lock().unwrap().retain(|i, _| *i > log_id.index);
        let bytes = to_payload(&log_id).map_err(write_err)?;
        self.enqueue(Op::Meta { key: MetaKey::Purged, bytes, done: None })?;
        self.delete(None, Some(log_id.index)).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::store::sm::StateMachine;

    /// A scratch folder for one store, removed when the suite is done with it.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, Scratch> for Builder {
        async fn build(&self) -> Result<(Scratch, LogStore, StateMachine), StorageError<NodeId>> {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("keelson-log-suite-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(write_err)?;
            let log = LogStore::open(&dir.join("log"), "suite").map_err(write_err)?;
            let sm = StateMachine::open(dir.join("sm"), Default::default()).map_err(write_err)?;
            Ok((Scratch(dir), log, sm))
        }
    }

    #[test]
    fn replication_reads_a_bounded_message_and_never_an_empty_one() {
        use crate::store::state::{Command, WriteOp};
        let scratch = Scratch(std::env::temp_dir().join(format!("keelson-log-bounded-{}", std::process::id())));
        std::fs::create_dir_all(&scratch.0).unwrap();
        let entry = |i: u64| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), i),
            payload: EntryPayload::Normal(Command {
                epoch: None,
                op: WriteOp::Put { key: format!("k{i}"), value: vec![7; 100_000], lease: 0 },
            }),
        };
        // 1–4 durable, 5–8 still queued for the writer.
        let dir = scratch.0.join("log");
        {
            let rows: Vec<Vec<u8>> = (1..=4).map(|i| to_payload(&entry(i)).unwrap()).collect();
            let records: Vec<Record> =
                (1..=4).zip(&rows).map(|(index, bytes)| Record::Entry { index, bytes }).collect();
            Wal::open(&dir).unwrap().0.write(&records, true).unwrap();
        }
        let log = LogStore::open(&dir, "bounded").unwrap();
        log.shared.pending.lock().unwrap().extend((5..=8).map(|i| (i, entry(i))));
        let read = |start: u64, budget: usize| -> Vec<u64> {
            log.entries(start..9, budget).unwrap().iter().map(|e| e.log_id.index).collect()
        };
        assert_eq!(read(1, usize::MAX), (1..=8).collect::<Vec<_>>());
        assert_eq!(read(1, 250_000), [1, 2], "from disk");
        assert_eq!(read(5, 250_000), [5, 6], "from the queue");
        assert_eq!(read(4, 250_000), [4, 5], "across both");
        assert_eq!(read(3, 1), [3], "one entry larger than the budget still goes");
        assert_eq!(read(6, 1), [6], "from the queue too");
        assert!(to_payload(&entry(1)).unwrap().len() * 2 < MAX_APPEND_BYTES, "the budget holds two such entries");
    }

    /// openraft's own conformance suite for log and state-machine storage: reads see
    /// queued appends, truncation and purge leave no holes, votes and membership survive.
    #[test]
    fn the_storage_passes_openraft_s_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
