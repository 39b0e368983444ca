//! The replicated state machine's data: an ordered map with revisions, a fencing
//! epoch, leases, and a window of recent events. Pure: commands in, outcomes out; raft
//! and the disk are elsewhere (`sm.rs`, `log.rs`), and so is the clock (a lease's
//! expiry is decided by the shard's leader, which then commits `LeaseRevoke`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use keelson_config::EventWindow;
use serde::{Deserialize, Serialize};

/// A write, as replicated through the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Fencing: a write carrying an epoch older than the shard's current one is
    /// rejected (a deposed controller leader cannot change anything).
    pub epoch: Option<u64>,
    pub op: WriteOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Writes `key`; with a lease (non-zero), the key goes when the lease does.
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: u64,
    },
    Delete {
        key: String,
    },
    /// Writes (or, with `value: None`, deletes) `key` only if its modification
    /// revision is `expected` (0: the key must not exist).
    Cas {
        key: String,
        expected: u64,
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    },
    /// If every compare holds, runs `success`, otherwise `failure`; all of its writes
    /// share one revision (as etcd's transactions do). Keys are all on this shard.
    Txn {
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    /// Raises the shard's fencing epoch (never lowers it).
    RaiseEpoch {
        epoch: u64,
    },
    /// Creates lease `id` (chosen by the caller, non-zero) living `ttl_ms` without a
    /// keep-alive.
    LeaseGrant {
        id: u64,
        ttl_ms: u64,
    },
    /// Ends lease `id` and deletes every key attached to it, at one revision.
    LeaseRevoke {
        id: u64,
    },
    /// Several clients' writes proposed as one log entry (group commit): each is applied
    /// in order as if it were an entry of its own, with its own fencing check and
    /// revision, and gets its own outcome.
    Batch(Vec<Command>),
}

impl Command {
    /// Roughly how many bytes the command carries (keys and values), to bound batches.
    pub fn weight(&self) -> usize {
        let txn = |ops: &[TxnOp]| -> usize {
            ops.iter()
                .map(|op| match op {
                    TxnOp::Put { key, value, .. } => key.len() + value.len(),
                    TxnOp::Delete { key } => key.len(),
                })
                .sum()
        };
        32 + match &self.op {
            WriteOp::Put { key, value, .. } => key.len() + value.len(),
            WriteOp::Delete { key } => key.len(),
            WriteOp::Cas { key, value, .. } => key.len() + value.as_ref().map_or(0, Vec::len),
            WriteOp::Txn { compares, success, failure } => {
                compares
                    .iter()
                    .map(|c| c.key.len() + if let Target::Value(v) = &c.target { v.len() } else { 8 })
                    .sum::<usize>()
                    + txn(success)
                    + txn(failure)
            }
            WriteOp::RaiseEpoch { .. } | WriteOp::LeaseGrant { .. } | WriteOp::LeaseRevoke { .. } => 0,
            WriteOp::Batch(cmds) => cmds.iter().map(Command::weight).sum(),
        }
    }
}

/// One write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: u64,
    },
    Delete {
        key: String,
    },
}

/// A condition on one key (an absent key has revisions and version 0, and no value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub target: Target,
    pub cmp: Cmp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    ModRevision(u64),
    CreateRevision(u64),
    Version(u64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied at `revision`; `existed` says whether the key was there before.
    Done { revision: u64, existed: bool },
    /// A compare-and-swap whose key is at revision `current` (0: absent).
    Conflict { current: u64 },
    /// The write's epoch is older than the shard's.
    Fenced { current: u64 },
    /// A transaction: whether its compares held (so `success` ran), and the revision
    /// after it.
    Txn { succeeded: bool, revision: u64 },
    /// A put named a lease this shard does not have (never granted, or expired).
    NoLease { id: u64 },
    /// A lease was granted (or, for a grant of an id already taken, refused).
    Lease { id: u64, granted: bool },
    /// A batch's outcomes, one per command in its order.
    Batch(Vec<Outcome>),
}

/// A stored value and its revisions (as etcd keeps them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// Shared, never changed: the window's events, a snapshot's copy and a read hold
    /// the same bytes, not copies of them.
    pub data: Bytes,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The lease the key is attached to (0: none).
    pub lease: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, kept in the window for watchers and for reads at a past revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub key: String,
    pub kind: EventKind,
    pub value: Option<Bytes>,
    /// The key before this change (Kubernetes' delete events carry the last object;
    /// a read at an older revision undoes changes with it).
    pub prev: Option<Value>,
}

/// A lease: its time to live, and the keys that go with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ttl_ms: u64,
    pub keys: BTreeSet<String>,
}

/// The window's bounds, and when each revision in it was recorded by this replica's
/// clock. Beyond the minimum, young events stay: under a burst of writes (6,000 a second
/// while 5,000 nodes take 2,000 pods a second) ten thousand events were 1.7 s of
/// history, and the controllers' informers, a little behind on a busy thread, lost their
/// watch and listed 20,000 pods again, which put them further behind. Not state: not in
/// snapshots, not compared (a replica restored from a snapshot counts its window as old,
/// and its owner sets the bounds again with [`Data::set_window`]).
#[derive(Debug, Clone, Default)]
pub struct WindowClock {
    marks: VecDeque<(u64, std::time::Instant)>,
    bounds: EventWindow,
}

impl PartialEq for WindowClock {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for WindowClock {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    pub revision: u64,
    pub epoch: u64,
    pub kv: BTreeMap<String, Value>,
    pub leases: BTreeMap<u64, Lease>,
    pub events: VecDeque<Event>,
    #[serde(skip)]
    pub clock: WindowClock,
}

/// A watcher or a read asked for a revision older than the window (Kubernetes' 410 Gone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("revision {asked} is older than the oldest kept ({oldest})")]
pub struct Expired {
    pub asked: u64,
    pub oldest: u64,
}

impl Compare {
    fn holds(&self, v: Option<&Value>) -> bool {
        use std::cmp::Ordering;
        let ord = match &self.target {
            Target::ModRevision(r) => v.map_or(0, |v| v.mod_revision).cmp(r),
            Target::CreateRevision(r) => v.map_or(0, |v| v.create_revision).cmp(r),
            Target::Version(n) => v.map_or(0, |v| v.version).cmp(n),
            Target::Value(x) => match v {
                Some(v) => v.data[..].cmp(x.as_slice()),
                // etcd: a value compare on an absent key fails whatever the operator.
                None => return false,
            },
        };
        match self.cmp {
            Cmp::Equal => ord == Ordering::Equal,
            Cmp::NotEqual => ord != Ordering::Equal,
            Cmp::Less => ord == Ordering::Less,
            Cmp::Greater => ord == Ordering::Greater,
        }
    }
}

impl Data {
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        if let Some(e) = cmd.epoch {
            if e < self.epoch {
                return Outcome::Fenced { current: self.epoch };
            }
        }
        match &cmd.op {
            WriteOp::Put { key, value, lease } => self.put(key, Bytes::copy_from_slice(value), *lease),
            WriteOp::Delete { key } => {
                if !self.kv.contains_key(key) {
                    return Outcome::Done { revision: self.revision, existed: false };
                }
                self.revision += 1;
                self.delete_at(key, self.revision);
                Outcome::Done { revision: self.revision, existed: true }
            }
            WriteOp::Cas { key, expected, value } => {
                let current = self.kv.get(key).map_or(0, |v| v.mod_revision);
                if current != *expected {
                    return Outcome::Conflict { current };
                }
                match value {
                    Some(v) => self.put(key, Bytes::copy_from_slice(v), 0),
                    None => self.apply(&Command { epoch: None, op: WriteOp::Delete { key: key.clone() } }),
                }
            }
            WriteOp::Txn { compares, success, failure } => {
                let succeeded = compares.iter().all(|c| c.holds(self.kv.get(&c.key)));
                let ops = if succeeded { success } else { failure };
                if let Some(id) = ops.iter().find_map(|op| match op {
                    TxnOp::Put { lease, .. } if *lease != 0 && !self.leases.contains_key(lease) => Some(*lease),
                    _ => None,
                }) {
                    return Outcome::NoLease { id };
                }
                let changes = ops.iter().any(|op| match op {
                    TxnOp::Put { .. } => true,
                    TxnOp::Delete { key } => self.kv.contains_key(key),
                });
                if changes {
                    self.revision += 1;
                    for op in ops {
                        match op {
                            TxnOp::Put { key, value, lease } => {
                                self.put_at(key, Bytes::copy_from_slice(value), *lease, self.revision)
                            }
                            TxnOp::Delete { key } => self.delete_at(key, self.revision),
                        }
                    }
                }
                Outcome::Txn { succeeded, revision: self.revision }
            }
            WriteOp::RaiseEpoch { epoch } => {
                self.epoch = self.epoch.max(*epoch);
                Outcome::Done { revision: self.revision, existed: true }
            }
            WriteOp::LeaseGrant { id, ttl_ms } => {
                if *id == 0 || self.leases.contains_key(id) {
                    return Outcome::Lease { id: *id, granted: false };
                }
                self.leases.insert(*id, Lease { ttl_ms: *ttl_ms, keys: BTreeSet::new() });
                Outcome::Lease { id: *id, granted: true }
            }
            WriteOp::LeaseRevoke { id } => {
                let Some(lease) = self.leases.remove(id) else {
                    return Outcome::Done { revision: self.revision, existed: false };
                };
                if !lease.keys.is_empty() {
                    self.revision += 1;
                    for key in &lease.keys {
                        self.delete_at(key, self.revision);
                    }
                }
                Outcome::Done { revision: self.revision, existed: true }
            }
            WriteOp::Batch(cmds) => Outcome::Batch(cmds.iter().map(|c| self.apply(c)).collect()),
        }
    }

    /// Puts `key` at the next revision, with `lease` (which must exist, or 0).
    fn put(&mut self, key: &str, data: Bytes, lease: u64) -> Outcome {
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Outcome::NoLease { id: lease };
        }
        let existed = self.kv.contains_key(key);
        self.revision += 1;
        self.put_at(key, data, lease, self.revision);
        Outcome::Done { revision: self.revision, existed }
    }

    /// Writes `key` at `rev` (already counted), moving it between leases as asked.
    fn put_at(&mut self, key: &str, data: Bytes, lease: u64, rev: u64) {
        let prev = self.kv.get(key).cloned();
        if let Some(old) = prev.as_ref().map(|p| p.lease).filter(|l| *l != 0 && *l != lease) {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_string());
        }
        let entry = self.kv.entry(key.to_string()).or_insert(Value {
            data: Bytes::new(),
            create_revision: rev,
            mod_revision: rev,
            version: 0,
            lease,
        });
        entry.data = data.clone();
        entry.mod_revision = rev;
        entry.version += 1;
        entry.lease = lease;
        self.record(Event { revision: rev, key: key.to_string(), kind: EventKind::Put, value: Some(data), prev });
    }

    /// Deletes `key` (if there) at `rev` (already counted).
    fn delete_at(&mut self, key: &str, rev: u64) {
        let Some(prev) = self.kv.remove(key) else { return };
        if let Some(l) = self.leases.get_mut(&prev.lease) {
            l.keys.remove(key);
        }
        self.record(Event {
            revision: rev,
            key: key.to_string(),
            kind: EventKind::Delete,
            value: None,
            prev: Some(prev),
        });
    }

    /// How much history to keep (configuration, not state: see [`WindowClock`]).
    pub fn set_window(&mut self, bounds: EventWindow) {
        self.clock.bounds = bounds;
    }

    /// A copy for a snapshot, with only the window's minimum of newest events
    /// (whole revisions): what lets a restarted or caught-up replica serve watchers a
    /// little behind, without copying and writing a burst's whole window each time.
    pub fn snapshot_copy(&self) -> Data {
        let mut skip = self.events.len().saturating_sub(self.clock.bounds.min);
        while skip > 0 && skip < self.events.len() && self.events[skip].revision == self.events[skip - 1].revision {
            skip += 1;
        }
        Data {
            revision: self.revision,
            epoch: self.epoch,
            kv: self.kv.clone(),
            leases: self.leases.clone(),
            events: self.events.iter().skip(skip).cloned().collect(),
            clock: WindowClock::default(),
        }
    }

    /// Keeps `e` in the window; the oldest revision leaves whole (a transaction's
    /// changes share one), so the window never holds part of a revision.
    fn record(&mut self, e: Event) {
        let now = std::time::Instant::now();
        let (marks, bounds) = (&mut self.clock.marks, self.clock.bounds);
        if marks.back().is_none_or(|(r, _)| *r != e.revision) {
            marks.push_back((e.revision, now));
        }
        self.events.push_back(e);
        while self.events.len() > bounds.min {
            let Some(oldest) = self.events.front().map(|e| e.revision) else { break };
            let recorded = marks.front().filter(|(r, _)| *r == oldest).map(|(_, at)| *at);
            let young = recorded.is_some_and(|at| now.duration_since(at) < bounds.age);
            if young && self.events.len() <= bounds.max {
                break;
            }
            while self.events.front().is_some_and(|f| f.revision == oldest) {
                self.events.pop_front();
            }
            while marks.front().is_some_and(|(r, _)| *r <= oldest) {
                marks.pop_front();
            }
        }
    }

    /// Keys in `[start, end)` (to the end when `end` is empty), at most `limit`; also
    /// whether more remain (then continue from the last key returned, exclusive).
    pub fn range(&self, start: &str, end: &str, after: Option<&str>, limit: usize) -> (Vec<(String, Value)>, bool) {
        let mut it = self.kv.range(bounds(start, end, after));
        let items: Vec<(String, Value)> = it.by_ref().take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
        (items, it.next().is_some())
    }

    /// As `range`, but as the keys were at revision `at` (which must still be in the
    /// event window): the changes after it are undone with the values they replaced.
    /// This is how one list's pages all read one consistent snapshot.
    ///
    /// Only the keys this page can reach are undone: up to the `limit`-th key in range
    /// now, reaching further while keys made since `at` leave the page short. Undoing
    /// every change in the window for every page made a paged list of 100,000 pods
    /// under load slower than the window is long, so it never finished.
    #[allow(clippy::type_complexity)]
    pub fn range_at(
        &self,
        start: &str,
        end: &str,
        after: Option<&str>,
        limit: usize,
        at: u64,
    ) -> Result<(Vec<(String, Value)>, bool), Expired> {
        if at >= self.revision {
            return Ok(self.range(start, end, after, limit));
        }
        self.check_window(at)?;
        let b = bounds(start, end, after);
        let mut reach = limit.max(1);
        loop {
            // The last key this pass decides (none: every key in range).
            let upto = self.kv.range(b.clone()).nth(reach - 1).map(|(k, _)| k.as_str());
            let decided = |k: &str| upto.is_none_or(|u| k <= u);
            // Walk the changes after `at` newest first: the last word on a key is then
            // what it held at `at`.
            let mut undo: BTreeMap<&str, Option<&Value>> = BTreeMap::new();
            for e in self.events.iter().rev().take_while(|e| e.revision > at) {
                if decided(&e.key) && std::ops::RangeBounds::contains(&b, &e.key) {
                    undo.insert(&e.key, e.prev.as_ref());
                }
            }
            let mut merged =
                self.kv.range(b.clone()).map(|(k, v)| (k.as_str(), Some(v))).take_while(|(k, _)| decided(k)).peekable();
            let mut undone = undo.into_iter().peekable();
            let mut items = Vec::new();
            loop {
                let next = match (merged.peek(), undone.peek()) {
                    (None, None) => break,
                    (Some(_), None) => merged.next(),
                    (None, Some(_)) => undone.next(),
                    (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                        std::cmp::Ordering::Less => merged.next(),
                        std::cmp::Ordering::Greater => undone.next(),
                        std::cmp::Ordering::Equal => {
                            merged.next();
                            undone.next()
                        }
                    },
                };
                if let Some((k, Some(v))) = next {
                    if items.len() == limit {
                        return Ok((items, true));
                    }
                    items.push((k.to_string(), v.clone()));
                }
            }
            match upto {
                // Everything in range was decided.
                None => return Ok((items, false)),
                // Keys beyond were not: there may be more (at worst an empty last page).
                Some(_) if items.len() == limit => return Ok((items, true)),
                // Keys made since `at` left the page short: decide further.
                Some(_) => reach = reach.saturating_mul(2),
            }
        }
    }

    fn check_window(&self, revision: u64) -> Result<(), Expired> {
        let oldest = self.events.front().map_or(self.revision + 1, |e| e.revision);
        if revision + 1 < oldest && revision < self.revision {
            return Err(Expired { asked: revision, oldest });
        }
        Ok(())
    }

    /// Events after `revision` of keys under `prefix`, or `Expired` if some of them have
    /// left the window. Filtered before they are copied: every watcher of every kind asks
    /// after each commit, and most of the window is other kinds' events.
    pub fn events_after(&self, revision: u64, prefix: &str) -> Result<Vec<Event>, Expired> {
        self.check_window(revision)?;
        let first = self.events.partition_point(|e| e.revision <= revision);
        Ok(self.events.range(first..).filter(|e| e.key.starts_with(prefix)).cloned().collect())
    }
}

fn bounds(start: &str, end: &str, after: Option<&str>) -> (Bound<String>, Bound<String>) {
    let lower = match after {
        Some(a) => Bound::Excluded(a.to_string()),
        None => Bound::Included(start.to_string()),
    };
    let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end.to_string()) };
    (lower, upper)
}

/// The smallest key greater than every key starting with `prefix` (for prefix ranges).
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).unwrap_or_default();
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Command {
        Command { epoch: None, op: WriteOp::Put { key: k.into(), value: v.as_bytes().to_vec(), lease: 0 } }
    }

    fn op(op: WriteOp) -> Command {
        Command { epoch: None, op }
    }

    fn keys(items: &[(String, Value)]) -> Vec<(&str, &[u8])> {
        items.iter().map(|(k, v)| (k.as_str(), &v.data[..])).collect()
    }

    #[test]
    fn revisions_versions_and_compare_and_swap() {
        let mut d = Data::default();
        assert_eq!(d.apply(&put("a", "1")), Outcome::Done { revision: 1, existed: false });
        assert_eq!(d.apply(&put("a", "2")), Outcome::Done { revision: 2, existed: true });
        let v = &d.kv["a"];
        assert_eq!((v.create_revision, v.mod_revision, v.version), (1, 2, 2));
        let cas = |expected, value: Option<&str>| {
            op(WriteOp::Cas { key: "a".into(), expected, value: value.map(|s| s.as_bytes().to_vec()) })
        };
        assert_eq!(d.apply(&cas(1, Some("x"))), Outcome::Conflict { current: 2 });
        assert_eq!(d.apply(&cas(2, Some("3"))), Outcome::Done { revision: 3, existed: true });
        assert_eq!(d.apply(&cas(3, None)), Outcome::Done { revision: 4, existed: true });
        assert_eq!(d.apply(&cas(0, Some("new"))), Outcome::Done { revision: 5, existed: false });
        assert_eq!(d.apply(&op(WriteOp::Delete { key: "zz".into() })), Outcome::Done { revision: 5, existed: false });
    }

    #[test]
    fn fencing_rejects_older_epochs() {
        let mut d = Data::default();
        d.apply(&op(WriteOp::RaiseEpoch { epoch: 3 }));
        let old = Command { epoch: Some(2), ..put("k", "v") };
        assert_eq!(d.apply(&old), Outcome::Fenced { current: 3 });
        assert!(d.kv.is_empty());
        let now = Command { epoch: Some(3), ..put("k", "v") };
        assert!(matches!(d.apply(&now), Outcome::Done { .. }));
        d.apply(&op(WriteOp::RaiseEpoch { epoch: 1 }));
        assert_eq!(d.epoch, 3, "epochs never go down");
    }

    #[test]
    fn transactions_run_one_branch_at_one_revision() {
        let mut d = Data::default();
        d.apply(&put("a", "1"));
        let txn = |compares, value: &str| {
            op(WriteOp::Txn {
                compares,
                success: vec![
                    TxnOp::Put { key: "a".into(), value: value.as_bytes().to_vec(), lease: 0 },
                    TxnOp::Put { key: "b".into(), value: value.as_bytes().to_vec(), lease: 0 },
                ],
                failure: vec![TxnOp::Delete { key: "a".into() }],
            })
        };
        let on_a = |target, cmp| vec![Compare { key: "a".into(), target, cmp }];
        assert_eq!(
            d.apply(&txn(on_a(Target::ModRevision(1), Cmp::Equal), "2")),
            Outcome::Txn { succeeded: true, revision: 2 }
        );
        assert_eq!((d.kv["a"].mod_revision, d.kv["b"].mod_revision), (2, 2), "one revision for the whole txn");
        assert_eq!(d.events_after(1, "").unwrap().len(), 2);
        // Every comparison kind, on a present and an absent key.
        assert!(on_a(Target::Version(2), Cmp::Equal)[0].holds(d.kv.get("a")));
        assert!(on_a(Target::CreateRevision(2), Cmp::Less)[0].holds(d.kv.get("a")));
        assert!(on_a(Target::Value(b"1".to_vec()), Cmp::Greater)[0].holds(d.kv.get("a")));
        assert!(!on_a(Target::Value(b"2".to_vec()), Cmp::NotEqual)[0].holds(d.kv.get("a")));
        assert!(!on_a(Target::Value(b"2".to_vec()), Cmp::Equal)[0].holds(None), "no value to compare");
        assert!(on_a(Target::ModRevision(0), Cmp::Equal)[0].holds(None), "absent: revision 0");
        // A failed compare runs the other branch.
        assert_eq!(
            d.apply(&txn(on_a(Target::Value(b"9".to_vec()), Cmp::Equal), "x")),
            Outcome::Txn { succeeded: false, revision: 3 }
        );
        assert!(!d.kv.contains_key("a") && d.kv["b"].data == b"2"[..]);
        // A branch that changes nothing does not use a revision.
        assert_eq!(
            d.apply(&txn(on_a(Target::Version(5), Cmp::Equal), "x")),
            Outcome::Txn { succeeded: false, revision: 3 }
        );
    }

    #[test]
    fn a_value_is_shared_by_the_map_its_events_and_snapshot_copies() {
        let mut d = Data::default();
        let cas = |expected, value: &[u8]| op(WriteOp::Cas { key: "a".into(), expected, value: Some(value.to_vec()) });
        d.apply(&cas(0, b"one"));
        d.apply(&cas(1, b"two"));
        let stored = d.kv["a"].data.as_ptr();
        let (first, last) = (&d.events[0], d.events.back().unwrap());
        assert_eq!(last.value.as_ref().unwrap().as_ptr(), stored, "the event holds the stored bytes");
        assert_eq!(
            last.prev.as_ref().unwrap().data.as_ptr(),
            first.value.as_ref().unwrap().as_ptr(),
            "and so does prev"
        );
        assert_eq!(d.snapshot_copy().kv["a"].data.as_ptr(), stored, "a snapshot's copy copies no value");
        assert_eq!(&d.kv["a"].data[..], b"two");
    }

    #[test]
    fn leases_hold_keys_until_revoked() {
        let mut d = Data::default();
        assert_eq!(d.apply(&op(WriteOp::LeaseGrant { id: 7, ttl_ms: 5_000 })), Outcome::Lease { id: 7, granted: true });
        assert_eq!(d.apply(&op(WriteOp::LeaseGrant { id: 7, ttl_ms: 1 })), Outcome::Lease { id: 7, granted: false });
        let leased = |k: &str, lease| op(WriteOp::Put { key: k.into(), value: b"v".to_vec(), lease });
        assert_eq!(d.apply(&leased("x", 8)), Outcome::NoLease { id: 8 });
        d.apply(&leased("x", 7));
        d.apply(&leased("y", 7));
        d.apply(&leased("z", 7));
        d.apply(&leased("z", 0)); // moved off the lease
        assert_eq!(d.leases[&7].keys.len(), 2);
        let before = d.revision;
        assert_eq!(d.apply(&op(WriteOp::LeaseRevoke { id: 7 })), Outcome::Done { revision: before + 1, existed: true });
        assert_eq!(d.kv.keys().collect::<Vec<_>>(), ["z"]);
        let gone = d.events_after(before, "").unwrap();
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|e| e.kind == EventKind::Delete && e.prev.as_ref().unwrap().lease == 7));
        assert_eq!(
            d.apply(&op(WriteOp::LeaseRevoke { id: 7 })),
            Outcome::Done { revision: before + 1, existed: false }
        );
        assert_eq!(d.apply(&leased("x", 7)), Outcome::NoLease { id: 7 });
    }

    #[test]
    fn ranges_continue_and_prefixes() {
        let mut d = Data::default();
        for k in ["/r/a/1", "/r/a/2", "/r/a/3", "/r/b/1"] {
            d.apply(&put(k, "v"));
        }
        let (page, more) = d.range("/r/a/", &prefix_end("/r/a/"), None, 2);
        assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["/r/a/1", "/r/a/2"]);
        assert!(more);
        let (page, more) = d.range("/r/a/", &prefix_end("/r/a/"), Some("/r/a/2"), 2);
        assert_eq!(page.len(), 1);
        assert!(!more);
        assert_eq!(d.range("", "", None, 100).0.len(), 4);
    }

    #[test]
    fn a_range_at_a_past_revision_sees_that_snapshot() {
        let mut d = Data::default();
        for k in ["a", "b", "c", "d"] {
            d.apply(&put(k, "1"));
        }
        let at = d.revision;
        d.apply(&put("b", "2"));
        d.apply(&op(WriteOp::Delete { key: "c".into() }));
        d.apply(&put("bb", "new"));
        d.apply(&put("b", "3"));
        let (page, more) = d.range_at("", "", None, 2, at).unwrap();
        assert_eq!(keys(&page), [("a", &b"1"[..]), ("b", b"1")]);
        assert!(more);
        let (page, more) = d.range_at("", "", Some("b"), 10, at).unwrap();
        assert_eq!(keys(&page), [("c", &b"1"[..]), ("d", b"1")], "bb did not exist yet, c still did");
        assert!(!more);
        assert_eq!(d.range_at("", "", None, 10, d.revision).unwrap(), d.range("", "", None, 10));
        let (mid, _) = d.range_at("b", "c", None, 10, at + 3).unwrap();
        assert_eq!(keys(&mid), [("b", &b"2"[..]), ("bb", b"new")]);
    }

    #[test]
    fn a_past_page_reaches_past_keys_made_since() {
        let mut d = Data::default();
        for k in ["m1", "m2", "m3"] {
            d.apply(&put(k, "old"));
        }
        let at = d.revision;
        for k in ["a1", "a2", "a3", "a4", "a5"] {
            d.apply(&put(k, "new"));
        }
        d.apply(&op(WriteOp::Delete { key: "m1".into() }));
        let (page, more) = d.range_at("", "", None, 2, at).unwrap();
        assert_eq!(keys(&page), [("m1", &b"old"[..]), ("m2", b"old")], "the keys made since are not in it");
        assert!(more);
        let (page, more) = d.range_at("", "", Some("m2"), 2, at).unwrap();
        assert_eq!(keys(&page), [("m3", &b"old"[..])]);
        assert!(!more);
    }

    /// Small bounds, so the window's edges are reached in a few hundred writes.
    const WINDOW: EventWindow = EventWindow { min: 100, max: 500, age: std::time::Duration::from_secs(75) };

    /// One revision with two changes: x and y put together.
    fn x_and_y() -> Command {
        op(WriteOp::Txn {
            compares: vec![],
            success: vec![
                TxnOp::Put { key: "x".into(), value: vec![], lease: 0 },
                TxnOp::Put { key: "y".into(), value: vec![], lease: 0 },
            ],
            failure: vec![],
        })
    }

    fn windowed(bounds: EventWindow) -> Data {
        let mut d = Data::default();
        d.set_window(bounds);
        d
    }

    #[test]
    fn the_event_window_expires_old_revisions() {
        let mut d = windowed(WINDOW);
        for i in 0..(WINDOW.max + 10) {
            d.apply(&put(&format!("k{}", i % 7), "v"));
        }
        assert_eq!(d.events.len(), WINDOW.max, "young events stay up to the maximum");
        assert_eq!(d.events_after(d.revision - 3, "").unwrap().len(), 3);
        let one_key = d.events_after(d.revision - 7, "k1").unwrap();
        assert_eq!(one_key.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["k1"], "only the prefix's");
        assert!(d.events_after(5, "").is_err());
        assert!(d.range_at("", "", None, 10, 5).is_err());
        assert_eq!(d.events_after(d.revision, "").unwrap().len(), 0);
    }

    #[test]
    fn a_revision_leaves_the_window_whole() {
        let mut d = windowed(WINDOW);
        d.apply(&x_and_y());
        for i in 0..(WINDOW.max - 1) {
            d.apply(&put(&format!("k{i}"), "v"));
        }
        assert_eq!(d.events.len(), WINDOW.max - 1, "both of revision 1's changes left together");
        assert!(d.events.iter().all(|e| e.revision > 1));
        assert_eq!(d.clock.marks.front().map(|(r, _)| *r), Some(2), "the clock follows the window");
    }

    #[test]
    fn old_events_leave_the_window_down_to_its_minimum() {
        let mut d = windowed(WINDOW);
        for i in 0..(WINDOW.min + 100) {
            d.apply(&put(&format!("k{i}"), "v"));
        }
        assert_eq!(d.events.len(), WINDOW.min + 100, "young events stay beyond the minimum");
        let long_ago = std::time::Instant::now() - WINDOW.age - std::time::Duration::from_secs(1);
        d.clock.marks.iter_mut().for_each(|(_, at)| *at = long_ago);
        d.apply(&put("last", "v"));
        assert_eq!(d.events.len(), WINDOW.min);
        assert_eq!(d.events.back().map(|e| e.key.as_str()), Some("last"));
        assert_eq!(d.clock.marks.len(), WINDOW.min, "one mark per revision kept");
    }

    #[test]
    fn with_no_age_the_window_is_its_minimum() {
        let mut d = windowed(EventWindow { age: std::time::Duration::ZERO, ..WINDOW });
        for i in 0..(WINDOW.min * 3) {
            d.apply(&put(&format!("k{i}"), "v"));
        }
        assert_eq!(d.events.len(), WINDOW.min);
        assert!(d.events_after(d.revision - WINDOW.min as u64 - 1, "").is_err());
        let mut defaults = Data::default();
        for i in 0..(WINDOW.min * 3) {
            defaults.apply(&put(&format!("k{i}"), "v"));
        }
        assert_eq!(defaults.events.len(), WINDOW.min * 3, "the default keeps 10,000 at least");
    }

    #[test]
    fn a_snapshot_keeps_the_newest_whole_revisions_of_the_window() {
        let mut d = windowed(WINDOW);
        for i in 0..(WINDOW.min - 1) {
            d.apply(&put(&format!("k{i}"), "v"));
        }
        d.apply(&x_and_y());
        for i in 0..(WINDOW.min - 1) {
            d.apply(&put(&format!("k{i}"), "w"));
        }
        // The newest `min` events would begin with y, the second half of a transaction.
        let copy = d.snapshot_copy();
        assert_eq!(copy.events.len(), WINDOW.min - 1);
        assert_eq!((copy.kv, copy.revision), (d.kv.clone(), d.revision));
        assert!(copy.events.iter().all(|e| e.key != "x" && e.key != "y"));
        let small = Data { events: d.events.iter().rev().take(3).rev().cloned().collect(), ..d.clone() };
        assert_eq!(small.snapshot_copy().events, small.events, "a short window is kept whole");
    }
}
