//! The replicated state machine's data: an ordered map with revisions, a fencing
//! epoch and a window of recent events. Pure: commands in, outcomes out; raft and the
//! disk are elsewhere (`sm.rs`, `log.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

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
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Writes (or, with `value: None`, deletes) `key` only if its modification
    /// revision is `expected` (0: the key must not exist).
    Cas {
        key: String,
        expected: u64,
        value: Option<Vec<u8>>,
    },
    /// Raises the shard's fencing epoch (never lowers it).
    RaiseEpoch {
        epoch: u64,
    },
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
}

/// A stored value and its revisions (as etcd keeps them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    pub data: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, kept in the window for watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub key: String,
    pub kind: EventKind,
    pub value: Option<Vec<u8>>,
}

/// How many recent events a shard keeps for watchers.
pub const EVENT_WINDOW: usize = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    pub revision: u64,
    pub epoch: u64,
    pub kv: BTreeMap<String, Value>,
    pub events: VecDeque<Event>,
}

/// A watcher asked for events older than the window (Kubernetes' 410 Gone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("revision {asked} is older than the oldest kept ({oldest})")]
pub struct Expired {
    pub asked: u64,
    pub oldest: u64,
}

impl Data {
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        if let Some(e) = cmd.epoch {
            if e < self.epoch {
                return Outcome::Fenced { current: self.epoch };
            }
        }
        match &cmd.op {
            WriteOp::Put { key, value } => self.put(key, value.clone()),
            WriteOp::Delete { key } => self.delete(key),
            WriteOp::Cas { key, expected, value } => {
                let current = self.kv.get(key).map_or(0, |v| v.mod_revision);
                if current != *expected {
                    return Outcome::Conflict { current };
                }
                match value {
                    Some(v) => self.put(key, v.clone()),
                    None => self.delete(key),
                }
            }
            WriteOp::RaiseEpoch { epoch } => {
                self.epoch = self.epoch.max(*epoch);
                Outcome::Done { revision: self.revision, existed: true }
            }
        }
    }

    fn put(&mut self, key: &str, data: Vec<u8>) -> Outcome {
        self.revision += 1;
        let rev = self.revision;
        let existed = self.kv.contains_key(key);
        let entry = self.kv.entry(key.to_string()).or_insert(Value {
            data: Vec::new(),
            create_revision: rev,
            mod_revision: rev,
            version: 0,
        });
        entry.data = data.clone();
        entry.mod_revision = rev;
        entry.version += 1;
        self.record(Event { revision: rev, key: key.to_string(), kind: EventKind::Put, value: Some(data) });
        Outcome::Done { revision: rev, existed }
    }

    fn delete(&mut self, key: &str) -> Outcome {
        if self.kv.remove(key).is_none() {
            return Outcome::Done { revision: self.revision, existed: false };
        }
        self.revision += 1;
        let rev = self.revision;
        self.record(Event { revision: rev, key: key.to_string(), kind: EventKind::Delete, value: None });
        Outcome::Done { revision: rev, existed: true }
    }

    fn record(&mut self, e: Event) {
        if self.events.len() == EVENT_WINDOW {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Keys in `[start, end)` (to the end when `end` is empty), at most `limit`; also
    /// whether more remain (then continue from the last key returned, exclusive).
    pub fn range(&self, start: &str, end: &str, after: Option<&str>, limit: usize) -> (Vec<(String, Value)>, bool) {
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Included(start.to_string()),
        };
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end.to_string()) };
        let mut it = self.kv.range((lower, upper));
        let items: Vec<(String, Value)> = it.by_ref().take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
        (items, it.next().is_some())
    }

    /// Events after `revision`, or `Expired` if some of them have left the window.
    pub fn events_after(&self, revision: u64) -> Result<Vec<Event>, Expired> {
        let oldest = self.events.front().map_or(self.revision + 1, |e| e.revision);
        if revision + 1 < oldest && revision < self.revision {
            return Err(Expired { asked: revision, oldest });
        }
        Ok(self.events.iter().filter(|e| e.revision > revision).cloned().collect())
    }
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
        Command { epoch: None, op: WriteOp::Put { key: k.into(), value: v.as_bytes().to_vec() } }
    }

    #[test]
    fn revisions_versions_and_compare_and_swap() {
        let mut d = Data::default();
        assert_eq!(d.apply(&put("a", "1")), Outcome::Done { revision: 1, existed: false });
        assert_eq!(d.apply(&put("a", "2")), Outcome::Done { revision: 2, existed: true });
        let v = &d.kv["a"];
        assert_eq!((v.create_revision, v.mod_revision, v.version), (1, 2, 2));
        let cas = |expected, value: Option<&str>| Command {
            epoch: None,
            op: WriteOp::Cas { key: "a".into(), expected, value: value.map(|s| s.as_bytes().to_vec()) },
        };
        assert_eq!(d.apply(&cas(1, Some("x"))), Outcome::Conflict { current: 2 });
        assert_eq!(d.apply(&cas(2, Some("3"))), Outcome::Done { revision: 3, existed: true });
        assert_eq!(d.apply(&cas(3, None)), Outcome::Done { revision: 4, existed: true });
        assert_eq!(d.apply(&cas(0, Some("new"))), Outcome::Done { revision: 5, existed: false });
        assert_eq!(
            d.apply(&Command { epoch: None, op: WriteOp::Delete { key: "zz".into() } }),
            Outcome::Done { revision: 5, existed: false }
        );
    }

    #[test]
    fn fencing_rejects_older_epochs() {
        let mut d = Data::default();
        d.apply(&Command { epoch: None, op: WriteOp::RaiseEpoch { epoch: 3 } });
        let old = Command { epoch: Some(2), ..put("k", "v") };
        assert_eq!(d.apply(&old), Outcome::Fenced { current: 3 });
        assert!(d.kv.is_empty());
        let now = Command { epoch: Some(3), ..put("k", "v") };
        assert!(matches!(d.apply(&now), Outcome::Done { .. }));
        d.apply(&Command { epoch: None, op: WriteOp::RaiseEpoch { epoch: 1 } });
        assert_eq!(d.epoch, 3, "epochs never go down");
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
    fn the_event_window_expires_old_revisions() {
        let mut d = Data::default();
        for i in 0..(EVENT_WINDOW + 10) {
            d.apply(&put(&format!("k{}", i % 7), "v"));
        }
        assert_eq!(d.events_after(d.revision - 3).unwrap().len(), 3);
        assert!(d.events_after(5).is_err());
        assert_eq!(d.events_after(d.revision).unwrap().len(), 0);
    }
}
