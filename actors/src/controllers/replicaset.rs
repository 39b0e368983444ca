//! `/<server>/controllers/replicaset`: keeps `spec.replicas` pods of each ReplicaSet.
//!
//! Level-triggered from two informers (ReplicaSets, pods): a ReplicaSet is reconciled
//! whenever it or one of its pods changes. It claims pods as Kubernetes does — adopts
//! orphans its selector matches, releases pods it owns that no longer match — then
//! creates the missing pods in slow-start batches (16, 32, 64, …, or from 1 after a
//! failure; stopping at the first failure) or deletes the surplus (unscheduled,
//! pending, unready and newest first), and writes its status (replicas, ready,
//! available, observedGeneration).
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
/// The first slow-start batch. Kubernetes starts at 1, so that a create that always
/// fails (a quota, a webhook) is tried once per pass, not hundreds of times; here such a
/// create is refused before any write, while each doubling round is a commit on the way
/// to a Deployment's last pod (100 pods took 7 rounds). A ReplicaSet whose last create
/// failed starts from 1 again, as Kubernetes does.
const FIRST_BATCH: usize = 16;

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
    /// ReplicaSets whose last create failed: their next slow start begins at 1.
    failing: HashSet<String>,
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
            self.failing.remove(key);
            return Ok(());
        };
        let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let met = self.expect.get(key).is_none_or(Expectation::met);
        let claim = claim(&self.pods.read().unwrap(), &rs, want, met);
        for pod in &claim.release {
            self.set_owner(pod, None).await?;
        }
        for pod in &claim.adopt {
            self.set_owner(pod, Some(owner_reference(&rs, "apps/v1", "ReplicaSet"))).await?;
        }
        if met && !deleting(&rs) {
            if claim.active < want {
                self.create(key, &rs, (want - claim.active).min(BURST)).await;
            } else if !claim.victims.is_empty() {
                self.delete(key, &claim.victims).await;
            }
        } else if !met {
            // Counted again once the changes are seen (or the expectations expire).
            self.queue.push_after(key, EXPECTATIONS_EXPIRE);
        }
        if let Some(after) = claim.recheck {
            // Ready pods become available once minReadySeconds pass: look again then.
            self.queue.push_after(key.to_string(), after);
        }
        self.write_status(&rs, claim.status).await
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

    /// Creates `n` pods in slow-start batches (`FIRST_BATCH`, or 1 after a failure, then
    /// doubling), stopping at a failing batch.
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
        let (mut made, mut batch) = (0, if self.failing.contains(key) { 1 } else { FIRST_BATCH });
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
                self.failing.insert(key.to_string());
                self.queue.push_after(key, Duration::from_secs(1));
                return;
            }
            batch *= 2;
        }
        self.failing.remove(key);
    }

    async fn delete(&mut self, key: &str, victims: &[Victim]) {
        let keys: HashSet<String> = victims.iter().map(|v| v.key.clone()).collect();
        self.expect.insert(key.to_string(), Expectation { adds: 0, deletes: keys, since: Instant::now() });
        let deletes = victims.iter().map(|v| {
            let client = self.client.clone();
            async move { (v.key.clone(), client.delete(&v.path).await) }
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

    /// Writes `status` unless the ReplicaSet already has it.
    async fn write_status(&mut self, rs: &Value, status: Value) -> Result<(), ApiError> {
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

/// Reads the ReplicaSet's pods (under the cache's lock), copying only those whose
/// ownership changes: a pass over a ReplicaSet of 100 copied all 100 pods (and
/// dropped them), which made the claim the controllers' leader's largest cost while
/// a Deployment's pods started.
fn claim(pods: &Cache, rs: &Value, want: usize, met: bool) -> Claim {
    let (ns, rs_uid, selector) = (namespace(rs), uid(rs), &rs["spec"]["selector"]);
    let mut claim = Claim::default();
    let mut owned: Vec<&Value> = Vec::new();
    for (_, pod) in pods.in_namespace(ns) {
        let mine = controller_uid(pod) == Some(rs_uid);
        if !mine && (controller_ref(pod).is_some() || deleting(pod)) {
            continue;
        }
        match (mine, matches(selector, &pod["metadata"]["labels"])) {
            (true, true) => owned.push(pod),
            (true, false) => claim.release.push(pod.clone()),
            (false, true) if !deleting(rs) => {
                claim.adopt.push(pod.clone());
                owned.push(pod);
            }
            _ => {}
        }
    }
    let mut active: Vec<&Value> = owned.iter().copied().filter(|p| is_active(p)).collect();
    claim.active = active.len();
    if met && !deleting(rs) && active.len() > want {
        active.sort_by(|a, b| deletion_order(a, b));
        active.truncate((active.len() - want).min(BURST));
        claim.victims = active.iter().map(|p| Victim::of(p)).collect();
        // The status describes this spec: pods about to be deleted no longer count (a
        // Deployment reads availability from it to decide how many more old pods may go).
        let going: HashSet<&str> = claim.victims.iter().map(|v| v.key.as_str()).collect();
        owned.retain(|p| !going.contains(key_of(p).as_str()));
    }
    (claim.status, claim.recheck) = status_of(rs, &owned);
    claim
}

/// What a ReplicaSet's pods are to it in one pass.
#[derive(Default)]
struct Claim {
    /// Orphans it selects, to adopt; pods it owns but no longer selects, to release.
    adopt: Vec<Value>,
    release: Vec<Value>,
    /// Its pods neither ended nor being deleted.
    active: usize,
    /// Its surplus pods, in the order they go.
    victims: Vec<Victim>,
    /// Its status (replicas, ready, available …) once the victims are gone.
    status: Value,
    /// Look again after this (ready pods not yet available for minReadySeconds).
    recheck: Option<Duration>,
}

/// A pod to delete: its cache key and API path.
struct Victim {
    key: String,
    path: String,
}

impl Victim {
    fn of(pod: &Value) -> Self {
        Self { key: key_of(pod), path: format!("/api/v1/namespaces/{}/pods/{}", namespace(pod), name(pod)) }
    }
}

/// A ReplicaSet's status from the pods it owns, and when to look again (ready pods
/// become available once minReadySeconds pass).
fn status_of(rs: &Value, owned: &[&Value]) -> (Value, Option<Duration>) {
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let active: Vec<&Value> = owned.iter().copied().filter(|p| is_active(p)).collect();
    let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
    let labelled = active
        .iter()
        .filter(|p| {
            template_labels.as_object().into_iter().flatten().all(|(k, v)| p["metadata"]["labels"][k.as_str()] == *v)
        })
        .count();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let available = active.iter().filter(|p| is_available(p, min_ready)).count();
    let recheck = (available < ready).then(|| Duration::from_secs(min_ready.max(1) as u64));
    let status = json!({
        "replicas": active.len(), "fullyLabeledReplicas": labelled, "readyReplicas": ready,
        "availableReplicas": available, "observedGeneration": rs["metadata"]["generation"],
    });
    (status, recheck)
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
                self.failing.remove(&k);
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
            // Pods made, deleted and adopted, and the status: no answer is read.
            client: self.client.clone().quiet(),
            sets: caches[0].clone(),
            pods: caches[1].clone(),
            expect: HashMap::new(),
            seen: HashSet::new(),
            going: HashSet::new(),
            failing: HashSet::new(),
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

    fn pod(ns: &str, name: &str, owner: Option<&str>, app: &str, phase: &str, node: &str) -> Value {
        let refs: Vec<Value> = owner
            .map(|uid| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": uid, "controller": true}))
            .into_iter()
            .collect();
        json!({"metadata": {"namespace": ns, "name": name, "uid": format!("u-{name}"), "ownerReferences": refs,
                            "labels": {"app": app}, "creationTimestamp": "2026-12-02T10:00:00Z"},
               "spec": {"nodeName": node}, "status": {"phase": phase}})
    }

    #[test]
    fn a_claim_sorts_pods_into_kept_adopted_released_and_surplus() {
        let rs = json!({"metadata": {"namespace": "web", "name": "rs", "uid": "rs-1", "generation": 2},
                        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "a"}},
                                 "template": {"metadata": {"labels": {"app": "a"}}}}});
        let mut cache = Cache::default();
        for p in [
            pod("web", "kept-running", Some("rs-1"), "a", "Running", "n1"),
            pod("web", "kept-pending", Some("rs-1"), "a", "Pending", "n1"),
            pod("web", "unscheduled", Some("rs-1"), "a", "Pending", ""),
            pod("web", "done", Some("rs-1"), "a", "Succeeded", "n1"),
            pod("web", "relabelled", Some("rs-1"), "b", "Running", "n1"),
            pod("web", "orphan", None, "a", "Running", "n2"),
            pod("web", "someone-elses", Some("rs-2"), "a", "Running", "n1"),
            pod("other", "elsewhere", None, "a", "Running", "n1"),
        ] {
            cache.objects.insert(key_of(&p), p);
        }
        let names = |pods: &[Value]| pods.iter().map(|p| name(p).to_string()).collect::<Vec<_>>();

        // Four active (three kept, one adopted) for two wanted: the unscheduled pod goes
        // first, then the pending one; the status counts what stays.
        let c = claim(&cache, &rs, 2, true);
        assert_eq!(names(&c.adopt), ["orphan"]);
        assert_eq!(names(&c.release), ["relabelled"]);
        assert_eq!(c.active, 4);
        let victims: Vec<&str> = c.victims.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(victims, ["web/unscheduled", "web/kept-pending"]);
        assert_eq!(c.victims[0].path, "/api/v1/namespaces/web/pods/unscheduled");
        assert_eq!(c.status["replicas"], 2, "{}", c.status);
        assert_eq!(c.status["observedGeneration"], 2);

        // Expectations not met: nothing is chosen to go, and everything active counts.
        let c = claim(&cache, &rs, 2, false);
        assert!(c.victims.is_empty());
        assert_eq!(c.status["replicas"], 4, "{}", c.status);
        // Too few: nothing goes.
        assert!(claim(&cache, &rs, 6, true).victims.is_empty());
    }
}
