//! Recording Events, as Kubernetes components do: what happened to an object (a pod
//! scheduled, a container started, a replica set scaled), so `kubectl describe` and
//! `kubectl get events` show it. Through the actor door like every other write.
//!
//! Repeats of the same event (same object, type, reason and message) are counted on
//! the event already written (`count`, `lastTimestamp`), as client-go's recorder does,
//! instead of writing a new one each time: a crash-looping container must not flood
//! the store.
//!
//! A recorder writes one event at a time, in the order recorded, as client-go's
//! broadcaster does from its one sink goroutine: a burst of pod starts on a node makes
//! a queue of `Started` events behind the pods' own status writes instead of as many
//! concurrent creates competing with them. Past `MAX_QUEUED` waiting, an event is
//! dropped (client-go drops past 1,000 queued): events are best effort.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::client::{ApiClient, ApiError};
use super::objects::rfc3339_now;

/// `Normal` or `Warning`, as Kubernetes types events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Records events for one component (`kubelet`, `default-scheduler`, …) on one host.
#[derive(Clone)]
pub struct EventRecorder {
    client: ApiClient,
    component: String,
    host: String,
    /// Events written, by what makes a repeat: (uid or namespace/name, type, reason,
    /// message) → the event's name and count. Bounded: cleared past `MAX_SEEN`.
    seen: Arc<Mutex<HashMap<Repeat, (String, u64)>>>,
    /// One event written at a time.
    turns: Turns,
}

/// Turns taken one at a time, first come first served, with at most `cap` waiting or
/// holding one (past it, no turn is given).
#[derive(Clone)]
struct Turns {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Callers waiting for a turn or holding it.
    queued: Arc<AtomicUsize>,
    cap: usize,
}

/// A turn: the next caller's comes when it is dropped.
struct Turn {
    _held: tokio::sync::OwnedMutexGuard<()>,
    _queued: Queued,
}

/// Counts a caller out of the queue however it leaves (a dropped future too).
struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Turns {
    fn new(cap: usize) -> Self {
        Self { lock: Arc::default(), queued: Arc::default(), cap }
    }

    /// Waits for this caller's turn; `None` when `cap` callers are already queued.
    async fn take(&self) -> Option<Turn> {
        let queued = Queued(self.queued.clone());
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.cap {
            return None;
        }
        let held = self.lock.clone().lock_owned().await;
        Some(Turn { _held: held, _queued: queued })
    }
}

/// What makes an event a repeat: the object (uid, or namespace/name), type, reason, message.
type Repeat = (String, EventType, String, String);

const MAX_SEEN: usize = 4_096;

/// Events a recorder holds waiting to be written before it drops new ones.
const MAX_QUEUED: usize = 1_000;

impl EventRecorder {
    pub fn new(client: ApiClient, component: &str, host: &str) -> Self {
        // An event's answer is never read.
        Self {
            client: client.quiet(),
            component: component.into(),
            host: host.into(),
            seen: Arc::default(),
            turns: Turns::new(MAX_QUEUED),
        }
    }

    /// Records that `reason` happened to `object` (a Kubernetes object as JSON); a repeat
    /// of an event already recorded counts on it. Returns once it is written, after the
    /// events recorded before it; `Ok` without writing when `MAX_QUEUED` are waiting.
    pub async fn record(&self, object: &Value, kind: EventType, reason: &str, message: &str) -> Result<(), ApiError> {
        let Some(_turn) = self.turns.take().await else {
            tracing::debug!(component = %self.component, reason, "event dropped: {MAX_QUEUED} already wait to be written");
            return Ok(());
        };
        self.write(object, kind, reason, message).await
    }

    /// What of `object` an event about it reads (its kind, names, uid and version): a
    /// caller that records in the background keeps this, not a copy of the whole object.
    pub fn reference(object: &Value) -> Value {
        let m = &object["metadata"];
        json!({
            "apiVersion": object["apiVersion"], "kind": object["kind"],
            "metadata": {"namespace": m["namespace"], "name": m["name"], "uid": m["uid"],
                         "resourceVersion": m["resourceVersion"]},
        })
    }

    async fn write(&self, object: &Value, kind: EventType, reason: &str, message: &str) -> Result<(), ApiError> {
        let m = &object["metadata"];
        let namespace = m["namespace"].as_str().unwrap_or("default").to_string();
        let name = m["name"].as_str().unwrap_or_default().to_string();
        let who = m["uid"].as_str().map_or_else(|| format!("{namespace}/{name}"), str::to_string);
        let key = (who, kind, reason.to_string(), message.to_string());
        let now = rfc3339_now();
        let collection = format!("/api/v1/namespaces/{namespace}/events");
        let repeat = self.seen.lock().unwrap().get(&key).cloned();
        if let Some((event, count)) = repeat {
            let patch = json!({"count": count + 1, "lastTimestamp": now});
            match self.client.merge_patch(&format!("{collection}/{event}"), &patch).await {
                Ok(_) => {
                    self.seen.lock().unwrap().insert(key, (event, count + 1));
                    return Ok(());
                }
                // Gone (deleted, or expired): write it anew.
                Err(e) if e.code() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let event_name = format!("{name}.{nanos:x}");
        let involved = json!({
            "apiVersion": object["apiVersion"], "kind": object["kind"], "name": name,
            "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"],
        });
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name, "namespace": namespace},
            "involvedObject": involved,
            "reason": reason, "message": message, "type": kind.as_str(),
            "source": {"component": self.component, "host": self.host},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": self.component, "reportingInstance": self.host,
        });
        self.client.create(&collection, &event).await?;
        let mut seen = self.seen.lock().unwrap();
        if seen.len() >= MAX_SEEN {
            seen.clear();
        }
        seen.insert(key, (event_name, 1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_keeps_what_an_event_reads_and_nothing_else() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "resourceVersion": "7", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}});
        let r = EventRecorder::reference(&pod);
        assert_eq!(
            r,
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "resourceVersion": "7"}})
        );
    }

    #[actix_rt::test]
    async fn turns_go_one_at_a_time_in_order_and_none_past_the_cap() {
        let turns = Turns::new(3);
        let first = turns.take().await.expect("a turn when nobody waits");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for n in 0..2 {
            let (turns, order) = (turns.clone(), order.clone());
            waiting.push(actix_rt::spawn(async move {
                let _turn = turns.take().await.expect("under the cap");
                order.lock().unwrap().push(n);
                actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
                order.lock().unwrap().push(n + 10);
            }));
            // Each queues before the next is spawned.
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(turns.take().await.is_none(), "one holding and two waiting: the cap of 3");
        assert!(order.lock().unwrap().is_empty(), "nobody runs while the first turn is held");
        drop(first);
        for w in waiting {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 10, 1, 11], "one at a time, in the order they came");
        assert_eq!(turns.queued.load(Ordering::Relaxed), 0, "every caller counted out");
        assert!(turns.take().await.is_some(), "turns again once the queue is empty");
    }
}
