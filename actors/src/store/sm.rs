//! The state machine of one shard replica: the data in memory, snapshots on disk.
//!
//! Applying does not touch the disk: the log is durable, the committed index is saved
//! (`LogStore::save_committed`), and on restart raft re-applies the committed entries
//! after the last snapshot. Snapshots are written atomically (temporary file, fsync,
//! rename) every `SNAPSHOT_EVERY` entries, after which raft purges the log before them.
//!
//! A snapshot is the whole store (about 200 MB at 100,000 pods), so it is streamed to
//! and from its file and handed to raft as the open file: never a buffer of its size.
//! Encoding it into a growing buffer first (copied at each doubling, every page new)
//! was a tenth of the API leader's time late in a 100,000-pod scheduling burst.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use keelson_config::EventWindow;
use keelson_transport::frame::{read_payload, write_payload};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::state::{Data, Outcome};
use super::types::{NodeId, TypeConfig};

/// The applied state; shared with the replica actor, which serves reads from it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub data: Data,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    applied: Applied,
}

#[derive(Clone)]
pub struct StateMachine {
    pub applied: Arc<RwLock<Applied>>,
    /// The data's revision after every apply or snapshot install: watchers wait on it.
    pub revision: Arc<tokio::sync::watch::Sender<u64>>,
    dir: PathBuf,
    /// The event window's bounds, set again on data restored from a snapshot.
    window: EventWindow,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachine {
    /// Opens the replica's state at `dir`, starting from its last snapshot if any.
    pub fn open(dir: PathBuf, window: EventWindow) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut applied = match saved(&dir)? {
            Some(f) => {
                read_payload::<StoredSnapshot, _>(&mut BufReader::new(f)).map_err(std::io::Error::other)?.applied
            }
            None => Applied::default(),
        };
        applied.data.set_window(window);
        let revision = Arc::new(tokio::sync::watch::Sender::new(applied.data.revision));
        Ok(Self { applied: Arc::new(RwLock::new(applied)), revision, dir, window })
    }

    /// Saves `snap` as the replica's snapshot: the file, open at its start, and its size.
    /// `how` names its temporary file: raft may install a leader's snapshot while it
    /// builds one of its own.
    fn persist(&self, snap: &StoredSnapshot, how: &str) -> std::io::Result<(File, usize)> {
        let tmp = self.dir.join(format!("{SNAPSHOT}.{how}.tmp"));
        let file = emptied(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let bytes = write_payload(snap, &mut w).map_err(std::io::Error::other)?;
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        self.keep(&file, &tmp)?;
        file.seek(SeekFrom::Start(0))?;
        Ok((file, bytes))
    }

    /// Makes `file`, written at `path`, the replica's snapshot, durably: the file synced,
    /// renamed over the old one, and the rename itself synced (raft purges the log the
    /// snapshot replaces).
    fn keep(&self, file: &File, path: &Path) -> std::io::Result<()> {
        file.sync_all()?;
        std::fs::rename(path, self.dir.join(SNAPSHOT))?;
        File::open(&self.dir)?.sync_all()
    }

    /// The saved snapshot's meta (read alone: it leads the file) and the file, open at
    /// its start; None if there is none.
    fn current(&self) -> std::io::Result<Option<(SnapshotMeta<NodeId, BasicNode>, File)>> {
        let Some(mut file) = saved(&self.dir)? else { return Ok(None) };
        let meta = read_payload(&mut BufReader::new(&file)).map_err(std::io::Error::other)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Some((meta, file)))
    }

    /// Makes the leader's snapshot this replica's own; what it holds. A leader sends its
    /// saved file, whose meta is the one raft passes: received into `INCOMING`, that
    /// file is kept as it came (synced and renamed), instead of the state being encoded
    /// and written again (a 100,000-pod store is about 200 MB). A file with another
    /// meta, or not the one received here (raft's API also takes any open snapshot), is
    /// saved anew under raft's meta.
    fn install(&self, mut received: File, meta: SnapshotMeta<NodeId, BasicNode>) -> std::io::Result<Applied> {
        received.seek(SeekFrom::Start(0))?;
        let stored =
            read_payload::<StoredSnapshot, _>(&mut BufReader::new(&received)).map_err(std::io::Error::other)?;
        if stored.meta == meta && is_incoming(&received, &self.dir) {
            self.keep(&received, &self.dir.join(INCOMING))?;
            tracing::info!(snapshot = %meta.snapshot_id, keys = stored.applied.data.kv.len(), "snapshot installed as received");
            return Ok(stored.applied);
        }
        let stored = StoredSnapshot { meta, applied: stored.applied };
        self.persist(&stored, "installed")?;
        let _already_gone = std::fs::remove_file(self.dir.join(INCOMING));
        Ok(stored.applied)
    }
}

/// The replica's snapshot file, in its folder.
const SNAPSHOT: &str = "snapshot.bin";
/// Where a snapshot sent by the leader is received before it is installed.
const INCOMING: &str = "snapshot.bin.incoming";

/// The snapshot saved in `dir`, open to read; None if there is none.
fn saved(dir: &Path) -> std::io::Result<Option<File>> {
    match File::open(dir.join(SNAPSHOT)) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `file` is the snapshot being received in `dir` (not another open file).
fn is_incoming(file: &File, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(dir.join(INCOMING))) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// `path` created, or emptied if it was there, open to write and read back.
fn emptied(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let applied = {
            let a = self.applied.read().unwrap();
            Applied { last_applied: a.last_applied, membership: a.membership.clone(), data: a.data.snapshot_copy() }
        };
        let snapshot_id = match &applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, applied.data.revision),
            None => format!("empty-{}", applied.data.revision),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        let keys = applied.data.kv.len();
        let stored = StoredSnapshot { meta: meta.clone(), applied };
        let me = self.clone();
        let began = std::time::Instant::now();
        let (file, bytes) =
            tokio::task::spawn_blocking(move || me.persist(&stored, "built")).await.map_err(sm_err)?.map_err(sm_err)?;
        // Each snapshot encodes the whole store, so its cost grows with the data: told
        // (as etcd tells "saved snapshot") so its share of a member's time can be read.
        tracing::info!(snapshot = %meta.snapshot_id, keys, bytes, took = ?began.elapsed(), "snapshot saved");
        Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let a = self.applied.read().unwrap();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut a = self.applied.write().unwrap();
        let mut out = Vec::new();
        for e in entries {
            a.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => Outcome::Done { revision: a.data.revision, existed: false },
                EntryPayload::Normal(cmd) => a.data.apply(&cmd),
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(e.log_id), m);
                    Outcome::Done { revision: a.data.revision, existed: false }
                }
            });
        }
        let revision = a.data.revision;
        drop(a);
        self.revision.send_replace(revision);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let file = emptied(&self.dir.join(INCOMING)).map_err(sm_err)?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        use tokio::io::AsyncWriteExt;
        let mut received = *snapshot;
        received.flush().await.map_err(sm_err)?; // what raft wrote last may still be on its way
        let received = received.into_std().await;
        let (me, meta) = (self.clone(), meta.clone());
        let applied = tokio::task::spawn_blocking(move || me.install(received, meta)).await.map_err(sm_err)?;
        let mut applied = applied.map_err(sm_err)?;
        applied.data.set_window(self.window);
        let revision = applied.data.revision;
        *self.applied.write().unwrap() = applied;
        self.revision.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let me = self.clone();
        let current = tokio::task::spawn_blocking(move || me.current()).await.map_err(sm_err)?.map_err(sm_err)?;
        Ok(current.map(|(meta, file)| Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::{Command, WriteOp};

    /// A store bigger than the 64 MiB a payload off the wire may be (a snapshot's read
    /// once counted every byte against that bound, so a member of a store that size
    /// could not open again) is saved, read back whole, and its meta read alone.
    #[tokio::test]
    async fn a_snapshot_past_the_wire_bound_is_saved_and_opened_again() {
        let dir = std::env::temp_dir().join(format!("keelson-sm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sm = StateMachine::open(dir.clone(), EventWindow::default()).unwrap();
        {
            let mut a = sm.applied.write().unwrap();
            for i in 0..40u8 {
                let op = WriteOp::Put { key: format!("/k/{i:02}"), value: vec![i; 1 << 20], lease: 0 };
                a.data.apply(&Command { epoch: None, op });
            }
            a.last_applied = Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 40));
        }
        let built = sm.build_snapshot().await.unwrap();
        let size = built.snapshot.metadata().await.unwrap().len();
        assert!(size > 64 << 20, "40 values and their events: {size} bytes");
        let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(current.meta, built.meta);
        let again = StateMachine::open(dir.clone(), EventWindow::default()).unwrap();
        let a = again.applied.read().unwrap();
        assert_eq!(a.last_applied.map(|l| l.index), Some(40));
        assert_eq!(a.data.kv.len(), 40);
        assert!(a.data.kv.values().enumerate().all(|(i, v)| v.data[..] == vec![i as u8; 1 << 20][..]));
        drop(a);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A follower keeps the leader's snapshot file as it came when its meta is raft's
    /// (no second encoding), and saves it anew under raft's meta otherwise; either way
    /// it opens again to the leader's state.
    #[tokio::test]
    async fn a_leaders_snapshot_is_installed_as_received() {
        use std::os::unix::fs::MetadataExt;
        use tokio::io::AsyncWriteExt;
        let root = std::env::temp_dir().join(format!("keelson-sm-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut leader = StateMachine::open(root.join("leader"), EventWindow::default()).unwrap();
        {
            let mut a = leader.applied.write().unwrap();
            for i in 0..100u32 {
                let op = WriteOp::Put { key: format!("/k/{i:03}"), value: i.to_le_bytes().to_vec(), lease: 0 };
                a.data.apply(&Command { epoch: None, op });
            }
            a.last_applied = Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 100));
        }
        let built = leader.build_snapshot().await.unwrap();
        let bytes = std::fs::read(root.join("leader").join(SNAPSHOT)).unwrap();
        for (name, meta, as_received) in [
            ("same", built.meta.clone(), true),
            ("other", SnapshotMeta { snapshot_id: "renamed".into(), ..built.meta.clone() }, false),
        ] {
            let dir = root.join(name);
            let mut follower = StateMachine::open(dir.clone(), EventWindow::default()).unwrap();
            let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
            incoming.write_all(&bytes).await.unwrap();
            let inode = std::fs::metadata(dir.join(INCOMING)).unwrap().ino();
            follower.install_snapshot(&meta, incoming).await.unwrap();
            assert!(!dir.join(INCOMING).exists(), "{name}: the received file is not left behind");
            let kept = std::fs::metadata(dir.join(SNAPSHOT)).unwrap().ino() == inode;
            assert_eq!(kept, as_received, "{name}: the received file kept as it came");
            assert_eq!(follower.get_current_snapshot().await.unwrap().unwrap().meta, meta, "{name}");
            assert_eq!(follower.applied.read().unwrap().data.kv.len(), 100, "{name}");
            let again = StateMachine::open(dir, EventWindow::default()).unwrap();
            let a = again.applied.read().unwrap();
            assert_eq!(a.last_applied.map(|l| l.index), Some(100), "{name}");
            assert_eq!(a.data.kv["/k/042"].data[..], 42u32.to_le_bytes()[..], "{name}");
        }
        // raft's API also installs any open snapshot (its own suite does): one that is
        // not the file received here is saved anew, and the leader's is left as it was.
        let dir = root.join("elsewhere");
        let mut follower = StateMachine::open(dir.clone(), EventWindow::default()).unwrap();
        let _unused = follower.begin_receiving_snapshot().await.unwrap();
        let leaders = File::open(root.join("leader").join(SNAPSHOT)).unwrap();
        follower.install_snapshot(&built.meta, Box::new(tokio::fs::File::from_std(leaders))).await.unwrap();
        assert_eq!(std::fs::read(root.join("leader").join(SNAPSHOT)).unwrap(), bytes);
        let again = StateMachine::open(dir, EventWindow::default()).unwrap();
        assert_eq!(again.applied.read().unwrap().data.kv.len(), 100);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
