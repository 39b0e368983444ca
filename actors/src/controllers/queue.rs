//! A controller's work queue: keys to reconcile, each at most once in the queue,
//! some held back until a time (a retry, a deadline to check).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Default)]
pub struct WorkQueue {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    later: BTreeMap<Instant, Vec<String>>,
}

impl WorkQueue {
    pub fn push(&mut self, key: impl Into<String>) {
        let key = key.into();
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    /// Queues `key` once `after` has passed.
    pub fn push_after(&mut self, key: impl Into<String>, after: Duration) {
        self.later.entry(Instant::now() + after).or_default().push(key.into());
    }

    /// The next key to work on, moving keys whose time has come to the queue first.
    pub fn pop(&mut self) -> Option<String> {
        let now = Instant::now();
        while let Some(entry) = self.later.first_entry() {
            if *entry.key() > now {
                break;
            }
            for key in entry.remove() {
                self.push(key);
            }
        }
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    /// When the earliest held-back key is due (to sleep until then).
    pub fn next_due(&self) -> Option<Instant> {
        self.later.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_queued_once_and_held_back_until_due() {
        let mut q = WorkQueue::default();
        q.push("a");
        q.push("a");
        q.push_after("b", Duration::from_millis(30));
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.pop(), None);
        assert!(q.next_due().is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.next_due(), None);
    }
}
