//! The state machine of one shard replica: the data in memory, snapshots on disk.
//!
//! Applying does not touch the disk: the log is durable, the committed index is saved
//! (`LogStore::save_committed`), and on restart raft re-applies the committed entries
//! after the last snapshot. Snapshots are written atomically (temporary file, fsync,
//! rename) every `SNAPSHOT_EVERY` entries, after which raft purges the log before them.

use std::io::{Cursor, Write};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use keelson_config::EventWindow;
use keelson_transport::frame::{from_payload, to_payload};
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
        let mut applied = match std::fs::read(dir.join("snapshot.bin")) {
            Ok(bytes) => from_payload::<StoredSnapshot>(&bytes).map_err(std::io::Error::other)?.applied,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Applied::default(),
            Err(e) => return Err(e),
        };
        applied.data.set_window(window);
        let revision = Arc::new(tokio::sync::watch::Sender::new(applied.data.revision));
        Ok(Self { applied: Arc::new(RwLock::new(applied)), revision, dir, window })
    }

    fn persist(&self, snap: &StoredSnapshot) -> Result<Vec<u8>, StorageError<NodeId>> {
        let bytes = to_payload(snap).map_err(sm_err)?;
        let tmp = self.dir.join("snapshot.bin.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(sm_err)?;
        f.write_all(&bytes).map_err(sm_err)?;
        f.sync_all().map_err(sm_err)?;
        std::fs::rename(&tmp, self.dir.join("snapshot.bin")).map_err(sm_err)?;
        Ok(bytes)
    }
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
        let bytes = tokio::task::spawn_blocking(move || me.persist(&stored)).await.map_err(sm_err)??;
        // Each snapshot encodes the whole store, so its cost grows with the data: told
        // (as etcd tells "saved snapshot") so its share of a member's time can be read.
        tracing::info!(snapshot = %meta.snapshot_id, keys, bytes = bytes.len(), took = ?began.elapsed(), "snapshot saved");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let stored: StoredSnapshot = from_payload(snapshot.get_ref()).map_err(sm_err)?;
        let stored = StoredSnapshot { meta: meta.clone(), applied: stored.applied };
        let me = self.clone();
        let mut applied = stored.applied.clone();
        applied.data.set_window(self.window);
        tokio::task::spawn_blocking(move || me.persist(&stored)).await.map_err(sm_err)??;
        let revision = applied.data.revision;
        *self.applied.write().unwrap() = applied;
        self.revision.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        match std::fs::read(self.dir.join("snapshot.bin")) {
            Ok(bytes) => {
                let stored: StoredSnapshot = from_payload(&bytes).map_err(sm_err)?;
                Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(bytes)) }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sm_err(e)),
        }
    }
}
