//! `/<server>/controllers/replicaset`: keeps `spec.replicas` pods of each ReplicaSet.
//!
//! Level-triggered from two informers (ReplicaSets, pods): a ReplicaSet is reconciled
//! whenever it or one of its pods changes. It claims pods as Kubernetes does — adopts
//! orphans its selector matches, releases pods it owns that no longer match — then
//! creates the missing pods in slow-start batches (1, 2, 4, … stopping at the first
//! failure) or deletes the surplus (unscheduled, pending, unready and newest first),
//! and writes its status (replicas, ready, available, observedGeneration).
//!
//! Expectations, as in Kubernetes: after creating or deleting, a ReplicaSet is not
//! counted again until the informer has shown those changes (or 15 s pass), so pods in
//! flight are never counted twice and it never owns more than it asked for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::AsyncContext;
use futures_util::future::join_all;
use serde_json::{json, Value};

use super::labels::matches;
use super::queue::WorkQueue;
use super::run::{run, Reconcile};
use super::workload::{
    concerned, controller_ref, controller_uid, deleting, deletion_order, is_active, is_available, is_ready, name,
    namespace, owner_reference, pod_from_template, uid,
};
use crate::api::informer::{key_of, Cache, Change};
use crate::api::{ApiClient, ApiError};
use crate::controllers::{ControllerContext, SharedInformers};
use crate::runtime::{Actor, Ctx};

const EXPECTATIONS_EXPIRE: Duration = Duration::from_secs(15);
/// At most this many pods made or deleted in one pass.
const BURST: usize = 500;

pub struct ReplicaSetController {
    client: ApiClient,
    informers: Arc<SharedInformers>,
}

impl ReplicaSetController {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers }
    }
}

/// Changes made and not seen yet.
#[derive(Debug)]
struct Expectation {
    adds: i64,
    deletes: HashSet<String>,
    since: Instant,
}

impl Expectation {
    fn met(&self) -> bool {
        (self.adds <= 0 && self.deletes.is_empty()) || self.since.elapsed() > EXPECTATIONS_EXPIRE
    }
}

type Shared = std::sync::Arc<std::sync::RwLock<Cache>>;

struct State {
    client: ApiClient,
    sets: Shared,
    pods: Shared,
    expect: HashMap<String, Expectation>,
    /// Pods seen so far (to tell a new pod from a changed one).
    seen: HashSet<String>,
    /// Pods seen deleting (to count a deletion once).
    going: HashSet<String>,
    queue: WorkQueue,
}

impl State {
    /// The ReplicaSets a pod concerns: its controller, or (an orphan) those selecting it.
    fn owners_of(&self, pod: &Value) -> Vec<String> {
        concerned(pod, "ReplicaSet", &self.sets)
    }

    fn on_pod(&mut self, change: Change) {
        // What is needed of the pod, read in place (most pod events are not this
        // controller's: copying each pod cost more than the rest of this).
        let facts = |me: &Self, pod: &Value| {
            let owner_key =
                controller_ref(pod).map(|r| format!("{}/{}", namespace(pod), r["name"].as_str().unwrap_or_default()));
            (me.owners_of(pod), owner_key, deleting(pod))
        };
        let (key, (owners, owner_key, deleting), gone) = match change {
            Change::Upserted(key) => {
                let pods = self.pods.clone();
                let pods = pods.read().unwrap();
                let Some(pod) = pods.objects.get(&key) else { return };
                (key, facts(self, pod), false)
            }
            Change::Deleted(key, pod) => (key, facts(self, &pod), true),
        };
        if !gone && self.seen.insert(key.clone()) {
            if let Some(e) = owner_key.as_ref().and_then(|o| self.expect.get_mut(o)) {
                e.adds -= 1;
            }
        }
        if gone || deleting {
            if self.going.insert(key.clone()) {
                if let Some(e) = owner_key.as_ref().and_then(|o| self.expect.get_mut(o)) {
                    e.deletes.remove(&key);
                }
            }
            if gone {
                self.seen.remove(&key);
                self.going.remove(&key);
            }
        }
        for o in owners {
            self.queue.push(o);
        }
    }

    async fn sync(&mut self, key: &str) -> Result<(), ApiError> {
        let Some(rs) = self.sets.read().unwrap().objects.get(key).cloned() else {
            self.expect.remove(key);
            return Ok(());
        };
        let ns = namespace(&rs).to_string();
        let selector = &rs["spec"]["selector"];
        // Claim: the pods this ReplicaSet owns and still selects, adopting orphans it selects.
        let candidates: Vec<Value> = {
            let pods = self.pods.read().unwrap();
            pods.objects
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{ns}/")))
                .map(|(_, p)| p.clone())
                .filter(|p| controller_uid(p) == Some(uid(&rs)) || (controller_ref(p).is_none() && !deleting(p)))
                .collect()
        };
        let mut owned = Vec::new();
        for pod in candidates {
            let selected = matches(selector, &pod["metadata"]["labels"]);
            let mine = controller_uid(&pod) == Some(uid(&rs));
            match (mine, selected) {
                (true, true) => owned.push(pod),
                (true, false) => self.set_owner(&pod, None).await?,
                (false, true) if !deleting(&rs) => {
                    self.set_owner(&pod, Some(owner_reference(&rs, "apps/v1", "ReplicaSet"))).await?;
                    owned.push(pod);
                }
                _ => {}
            }
        }
        let active: Vec<&Value> = owned.iter().filter(|p| is_active(p)).collect();
        let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let met = self.expect.get(key).is_none_or(Expectation::met);
        let mut deleted: HashSet<String> = HashSet::new();
        if met && !deleting(&rs) {
            if active.len() < want {
                self.create(key, &rs, (want - active.len()).min(BURST)).await;
            } else if active.len() > want {
                let mut victims: Vec<&Value> = active.clone();
                victims.sort_by(|a, b| deletion_order(a, b));
                victims.truncate((active.len() - want).min(BURST));
                self.delete(key, &victims).await;
                deleted = victims.iter().map(|p| key_of(p)).collect();
            }
        } else if !met {
            // Counted again once the changes are seen (or the expectations expire).
            self.queue.push_after(key, EXPECTATIONS_EXPIRE);
        }
        // The status describes this spec: pods just deleted no longer count (a Deployment
        // reads availability from it to decide how many more old pods may go).
        owned.retain(|p| !deleted.contains(&key_of(p)));
        self.write_status(&rs, &owned).await
    }

    /// Adopts `pod` (`Some` reference) or releases it (`None`).
    async fn set_owner(&self, pod: &Value, owner: Option<Value>) -> Result<(), ApiError> {
        let mut refs: Vec<Value> = pod["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["controller"] != true)
            .cloned()
            .collect();
        refs.extend(owner);
        let patch = json!({"metadata": {"ownerReferences": refs, "uid": pod["metadata"]["uid"],
                                        "resourceVersion": pod["metadata"]["resourceVersion"]}});
        let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(pod), name(pod));
        match self.client.merge_patch(&path, &patch).await {
            Ok(_) => Ok(()),
            // Changed or gone meanwhile: the informer brings it back here.
            Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates `n` pods in slow-start batches (1, 2, 4, …), stopping at a failing batch.
    async fn create(&mut self, key: &str, rs: &Value, n: usize) {
        self.expect
            .insert(key.to_string(), Expectation { adds: n as i64, deletes: HashSet::new(), since: Instant::now() });
        let collection = format!("/api/v1/namespaces/{}/pods", namespace(rs));
        let pod = pod_from_template(
            &rs["spec"]["template"],
            namespace(rs),
            name(rs),
            owner_reference(rs, "apps/v1", "ReplicaSet"),
        );
        let (mut made, mut batch) = (0, 1);
        while made < n {
            let size = batch.min(n - made);
            let results = join_all((0..size).map(|_| self.client.create(&collection, &pod))).await;
            let failed = results.iter().filter(|r| r.is_err()).count();
            made += size;
            if failed > 0 {
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    tracing::info!(replicaset = %key, error = %e, failed, "cannot create pods");
                }
                // Those not made, and those failed, will not be seen.
                if let Some(x) = self.expect.get_mut(key) {
                    x.adds -= (failed + n - made) as i64;
                }
                self.queue.push_after(key, Duration::from_secs(1));
                return;
            }
            batch *= 2;
        }
    }

    async fn delete(&mut self, key: &str, victims: &[&Value]) {
        let keys: HashSet<String> = victims.iter().map(|p| key_of(p)).collect();
        self.expect.insert(key.to_string(), Expectation { adds: 0, deletes: keys, since: Instant::now() });
        let deletes = victims.iter().map(|p| {
            let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(p), name(p));
            let client = self.client.clone();
            async move { (key_of(p), client.delete(&path).await) }
        });
        for (pod, result) in join_all(deletes).await {
            if let Err(e) = result {
                if e.code() != Some(404) {
                    tracing::info!(replicaset = %key, pod = %pod, error = %e, "cannot delete a pod");
                }
                if let Some(x) = self.expect.get_mut(key) {
                    x.deletes.remove(&pod);
                }
            }
        }
    }

    async fn write_status(&mut self, rs: &Value, owned: &[Value]) -> Result<(), ApiError> {
        let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let active: Vec<&Value> = owned.iter().filter(|p| is_active(p)).collect();
        let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
        let labelled = active
            .iter()
            .filter(|p| {
                template_labels
                    .as_object()
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| p["metadata"]["labels"][k.as_str()] == *v)
            })
            .count();
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let available = active.iter().filter(|p| is_available(p, min_ready)).count();
        if available < ready {
            // Ready pods become available once minReadySeconds pass: look again then.
            self.queue.push_after(key_of(rs), Duration::from_secs(min_ready.max(1) as u64));
        }
        let status = json!({
            "replicas": active.len(), "fullyLabeledReplicas": labelled, "readyReplicas": ready,
            "availableReplicas": available, "observedGeneration": rs["metadata"]["generation"],
        });
        let current = &rs["status"];
        let same = ["replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas", "observedGeneration"]
            .iter()
            .all(|f| current[*f].as_i64().unwrap_or(0) == status[*f].as_i64().unwrap_or(0));
        if same {
            return Ok(());
        }
        let path = format!("/apis/apps/v1/namespaces/{}/replicasets/{}/status", namespace(rs), name(rs));
        match self.client.merge_patch(&path, &json!({"status": status})).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Reconcile for State {
    const WHAT: &'static str = "replicaset";

    fn queue(&mut self) -> &mut WorkQueue {
        &mut self.queue
    }

    fn on_change(&mut self, source: usize, change: Change) {
        match (source, change) {
            (0, Change::Upserted(k)) => self.queue.push(k),
            (0, Change::Deleted(k, _)) => {
                self.expect.remove(&k);
            }
            (_, c) => self.on_pod(c),
        }
    }

    async fn reconcile(&mut self, key: &str) -> Result<(), ApiError> {
        self.sync(key).await
    }
}

impl Actor for ReplicaSetController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (caches, changes) =
            self.informers.subscribe_all(&[("/apis/apps/v1/replicasets", &[]), ("/api/v1/pods", &[])]);
        let state = State {
            client: self.client.clone(),
            sets: caches[0].clone(),
            pods: caches[1].clone(),
            expect: HashMap::new(),
            seen: HashSet::new(),
            going: HashSet::new(),
            queue: WorkQueue::default(),
        };
        ctx.spawn(actix::fut::wrap_future(run(state, caches, changes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_hold_until_seen_or_expired() {
        let mut e = Expectation { adds: 2, deletes: HashSet::new(), since: Instant::now() };
        assert!(!e.met());
        e.adds -= 2;
        assert!(e.met());
        e.deletes.insert("web/p".into());
        assert!(!e.met());
        e.since = Instant::now() - EXPECTATIONS_EXPIRE - Duration::from_secs(1);
        assert!(e.met(), "expired expectations no longer hold a ReplicaSet back");
    }
}
