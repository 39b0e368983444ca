//! `/<server>/controllers/garbage-collector`: deletes what lost its owners, as
//! Kubernetes' garbage collector does with `ownerReferences`.
//!
//! One informer per kind that can own or be owned keeps a graph: object uid → where it
//! is, owner uid → dependents. Three cases:
//! - **Background** (the default): the owner went; a dependent whose owners are all gone
//!   is deleted (with background propagation, so its own dependents follow), one whose
//!   owners are partly gone loses the dangling references. An owner is only judged gone
//!   after the API confirms it (a lagging informer is not proof).
//! - **Orphan**: an owner marked for deletion with the `orphan` finalizer has every
//!   dependent's reference to it removed, then the finalizer, and then it goes.
//! - **Foreground**: an owner marked with `foregroundDeletion` has its dependents
//!   deleted (in the foreground too); once none is left, the finalizer is removed and it goes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use std::sync::Arc;

use actix::AsyncContext;
use serde_json::{json, Value};

use super::queue::WorkQueue;
use super::run::{run, Reconcile};
use super::workload::{deleting, name, uid};
use crate::api::informer::{Cache, Change};
use crate::api::resources::{Resource, RESOURCES};
use crate::api::{ApiClient, ApiError, ApiRequest, Method};
use crate::controllers::{ControllerContext, SharedInformers};
use crate::runtime::{Actor, Ctx};

/// Kinds that own nothing and are owned by nothing worth collecting (or change too
/// often to watch for it).
const SKIPPED: &[&str] = &["events", "leases", "namespaces"];

pub struct GarbageCollector {
    client: ApiClient,
    informers: Arc<SharedInformers>,
}

impl GarbageCollector {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers }
    }
}

type Shared = std::sync::Arc<std::sync::RwLock<Cache>>;

/// Where an object is: its resource (index into `kinds`) and cache key.
type Node = (usize, String);

struct State {
    client: ApiClient,
    kinds: Vec<(&'static Resource, Shared)>,
    /// uid → where the object is.
    objects: HashMap<String, Node>,
    /// owner uid → dependents.
    dependents: HashMap<String, HashSet<Node>>,
    /// What each object's owner uids were when last seen.
    owners: HashMap<Node, Vec<String>>,
    queue: WorkQueue,
}

/// What the collector keeps of a changed object.
struct Seen {
    id: String,
    owners: Vec<String>,
    /// Marked for deletion and held for its dependents (orphan or foreground).
    held: bool,
}

impl Seen {
    fn of(obj: &Value) -> Self {
        Self {
            id: uid(obj).to_string(),
            owners: owner_uids(obj),
            held: deleting(obj) && (has_finalizer(obj, "orphan") || has_finalizer(obj, "foregroundDeletion")),
        }
    }
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_string))
        .collect()
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj["metadata"]["finalizers"].as_array().is_some_and(|l| l.iter().any(|x| x == f))
}

/// A work item: the node, as `kind-index|key`.
fn item(node: &Node) -> String {
    format!("{}|{}", node.0, node.1)
}

fn parse_item(s: &str) -> Option<Node> {
    let (i, k) = s.split_once('|')?;
    Some((i.parse().ok()?, k.to_string()))
}

impl State {
    fn get(&self, node: &Node) -> Option<Value> {
        self.kinds[node.0].1.read().unwrap().objects.get(&node.1).cloned()
    }

    fn path(&self, node: &Node) -> String {
        let res = self.kinds[node.0].0;
        match node.1.split_once('/') {
            Some((ns, n)) => format!("{}/{n}", res.path(Some(ns))),
            None => format!("{}/{}", res.path(None), node.1),
        }
    }

    fn on_change(&mut self, kind: usize, change: Change) {
        // Read in place: copying each changed object whole (every pod, at each of its
        // writes) cost more than the rest of the collector.
        let (key, Seen { id, owners, held }, gone) = match change {
            Change::Upserted(k) => {
                let Some(seen) = self.kinds[kind].1.read().unwrap().objects.get(&k).map(Seen::of) else { return };
                (k, seen, false)
            }
            Change::Deleted(k, o) => (k, Seen::of(&o), true),
        };
        let node = (kind, key);
        for old in self.owners.remove(&node).unwrap_or_default() {
            if let Some(d) = self.dependents.get_mut(&old) {
                d.remove(&node);
                if d.is_empty() {
                    self.dependents.remove(&old);
                }
            }
            // An owner held for its dependents (orphan, foreground) may be done now.
            if let Some(n) = self.objects.get(&old) {
                self.queue.push(item(n));
            }
        }
        if gone {
            self.objects.remove(&id);
            // Its dependents may be orphans now; an owner held for them may go now.
            for d in self.dependents.get(&id).cloned().unwrap_or_default() {
                self.queue.push(item(&d));
            }
            for o in &owners {
                if let Some(n) = self.objects.get(o) {
                    self.queue.push(item(n));
                }
            }
            return;
        }
        self.objects.insert(id.clone(), node.clone());
        for o in &owners {
            self.dependents.entry(o.clone()).or_default().insert(node.clone());
            if let Some(n) = self.objects.get(o) {
                // An owner held (foreground/orphan) waits on its dependents.
                self.queue.push(item(n));
            }
        }
        if owners.iter().any(|o| !self.objects.contains_key(o)) {
            // An owner not seen (yet): looked at again shortly, then asked about.
            self.queue.push_after(item(&node), Duration::from_millis(500));
        }
        self.owners.insert(node.clone(), owners);
        if held {
            self.queue.push(item(&node));
        }
    }

    /// Whether the owner a reference names is really gone (the API says so, or holds
    /// another object under that name).
    async fn owner_gone(&self, reference: &Value, namespace: Option<&str>) -> Result<bool, ApiError> {
        let uid = reference["uid"].as_str().unwrap_or_default();
        if self.objects.contains_key(uid) {
            return Ok(false);
        }
        let api_version = reference["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let Some(res) =
            RESOURCES.iter().find(|r| r.group == group && r.version == version && r.kind == reference["kind"])
        else {
            return Ok(false); // a kind this API does not serve: not ours to judge
        };
        let path = format!(
            "{}/{}",
            res.path(if res.namespaced { namespace } else { None }),
            reference["name"].as_str().unwrap_or_default()
        );
        match self.client.get(&path).await {
            Ok(o) => Ok(o["metadata"]["uid"] != uid),
            Err(e) if e.code() == Some(404) => Ok(true),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, node: &Node, policy: &str) -> Result<(), ApiError> {
        let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy});
        let request =
            ApiRequest::new(Method::Delete, self.path(node)).body("application/json", body.to_string().into_bytes());
        match self.client.call(request).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn sync(&mut self, work: &str) -> Result<(), ApiError> {
        let Some(node) = parse_item(work) else { return Ok(()) };
        let Some(obj) = self.get(&node) else { return Ok(()) };
        let id = uid(&obj).to_string();
        let ns = node.1.split_once('/').map(|(ns, _)| ns.to_string());

        // An owner being deleted with orphan or foreground propagation.
        if deleting(&obj) {
            let dependents: Vec<Node> = self.dependents.get(&id).cloned().unwrap_or_default().into_iter().collect();
            if has_finalizer(&obj, "orphan") {
                for d in &dependents {
                    let Some(dep) = self.get(d) else { continue };
                    let refs: Vec<Value> = dep["metadata"]["ownerReferences"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["uid"] != id.as_str())
                        .cloned()
                        .collect();
                    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": dep["metadata"]["resourceVersion"]}});
                    match self.client.merge_patch(&self.path(d), &patch).await {
                        Ok(_) => {}
                        Err(e) if matches!(e.code(), Some(404 | 409)) => {
                            self.queue.push_after(work, Duration::from_millis(200))
                        }
                        Err(e) => return Err(e),
                    }
                }
                if dependents.is_empty() {
                    return self.remove_finalizer(&node, &obj, "orphan").await;
                }
                return Ok(()); // the dependents' changes bring it back here
            }
            if has_finalizer(&obj, "foregroundDeletion") {
                let mut left = 0;
                for d in &dependents {
                    let Some(dep) = self.get(d) else { continue };
                    left += 1;
                    if !deleting(&dep) {
                        self.delete(d, "Foreground").await?;
                    }
                }
                if left == 0 {
                    return self.remove_finalizer(&node, &obj, "foregroundDeletion").await;
                }
                return Ok(());
            }
        }

        // A dependent: are its owners gone?
        let refs: Vec<Value> = obj["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        if refs.is_empty() {
            return Ok(());
        }
        let mut gone = Vec::new();
        for r in &refs {
            if self.owner_gone(r, ns.as_deref()).await? {
                gone.push(r["uid"].clone());
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        if gone.len() == refs.len() {
            tracing::info!(object = %node.1, kind = %self.kinds[node.0].0.kind, "owners gone; deleting");
            if !deleting(&obj) {
                self.delete(&node, "Background").await?;
            }
        } else {
            let kept: Vec<&Value> = refs.iter().filter(|r| !gone.contains(&r["uid"])).collect();
            let patch =
                json!({"metadata": {"ownerReferences": kept, "resourceVersion": obj["metadata"]["resourceVersion"]}});
            match self.client.merge_patch(&self.path(&node), &patch).await {
                Ok(_) => {}
                Err(e) if matches!(e.code(), Some(404 | 409)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn remove_finalizer(&self, node: &Node, obj: &Value, finalizer: &str) -> Result<(), ApiError> {
        let rest: Vec<&Value> =
            obj["metadata"]["finalizers"].as_array().into_iter().flatten().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": obj["metadata"]["resourceVersion"]}});
        tracing::info!(object = %name(obj), finalizer, "dependents done; releasing the owner");
        match self.client.merge_patch(&self.path(node), &patch).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Reconcile for State {
    const WHAT: &'static str = "garbage-collector";

    fn queue(&mut self) -> &mut WorkQueue {
        &mut self.queue
    }

    fn on_change(&mut self, source: usize, change: Change) {
        State::on_change(self, source, change);
    }

    async fn reconcile(&mut self, key: &str) -> Result<(), ApiError> {
        self.sync(key).await
    }
}

impl Actor for GarbageCollector {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let watched: Vec<&'static Resource> = RESOURCES.iter().filter(|r| !SKIPPED.contains(&r.plural)).collect();
        let paths: Vec<String> = watched.iter().map(|r| r.path(None)).collect();
        let collections: Vec<(&str, &[(&str, &str)])> = paths.iter().map(|p| (p.as_str(), &[][..])).collect();
        let (caches, changes) = self.informers.subscribe_all(&collections);
        let caches_for_sync = caches.clone();
        let state = State {
            client: self.client.clone(),
            kinds: watched.into_iter().zip(caches).collect(),
            objects: HashMap::new(),
            dependents: HashMap::new(),
            owners: HashMap::new(),
            queue: WorkQueue::default(),
        };
        ctx.spawn(actix::fut::wrap_future(run(state, caches_for_sync, changes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_items_name_a_kind_and_a_key() {
        let node = (3, "web/d-abc".to_string());
        assert_eq!(parse_item(&item(&node)), Some(node));
        assert_eq!(parse_item("nonsense"), None);
        assert_eq!(owner_uids(&json!({"metadata": {"ownerReferences": [{"uid": "a"}, {"uid": "b"}]}})), ["a", "b"]);
        assert!(has_finalizer(&json!({"metadata": {"finalizers": ["orphan"]}}), "orphan"));
    }
}
