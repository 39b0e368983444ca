//! Recording Events, as Kubernetes components do: what happened to an object (a pod
//! scheduled, a container started, a replica set scaled), so `kubectl describe` and
//! `kubectl get events` show it. Through the actor door like every other write.
//!
//! Repeats of the same event (same object, type, reason and message) are counted on
//! the event already written (`count`, `lastTimestamp`), as client-go's recorder does,
//! instead of writing a new one each time: a crash-looping container must not flood
//! the store.

use std::collections::HashMap;
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
}

/// What makes an event a repeat: the object (uid, or namespace/name), type, reason, message.
type Repeat = (String, EventType, String, String);

const MAX_SEEN: usize = 4_096;

impl EventRecorder {
    pub fn new(client: ApiClient, component: &str, host: &str) -> Self {
        // An event's answer is never read.
        Self { client: client.quiet(), component: component.into(), host: host.into(), seen: Arc::default() }
    }

    /// Records that `reason` happened to `object` (a Kubernetes object as JSON); a repeat
    /// of an event already recorded counts on it.
    pub async fn record(&self, object: &Value, kind: EventType, reason: &str, message: &str) -> Result<(), ApiError> {
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
