//! `/<server>/controllers/job`: runs Jobs' pods to completion.
//!
//! A Job keeps `min(parallelism, completions - succeeded)` pods running until
//! `completions` pods have succeeded (the Complete condition), or fails — its active
//! pods deleted — when more pods than `backoffLimit` have failed (BackoffLimitExceeded)
//! or it ran longer than `activeDeadlineSeconds` (DeadlineExceeded). Its pods are the
//! ones it controls (ownerReferences), labelled `job-name` and `controller-uid` as
//! Kubernetes labels them. A failed pod is replaced at once (Kubernetes waits an
//! exponential back-off first).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::AsyncContext;
use futures_util::future::join_all;
use serde_json::{json, Value};

use super::queue::WorkQueue;
use super::run::{run, Reconcile};
use super::workload::{
    controller_ref, controller_uid, deleting, is_active, is_ready, name, namespace, owner_reference, pod_from_template,
    uid,
};
use crate::api::informer::{Cache, Change};
use crate::api::{parse_time, rfc3339_now, unix_now, ApiClient, ApiError};
use crate::controllers::{ControllerContext, SharedInformers};
use crate::runtime::{Actor, Ctx};

const EXPECTATIONS_EXPIRE: Duration = Duration::from_secs(15);

pub struct JobController {
    client: ApiClient,
    informers: Arc<SharedInformers>,
}

impl JobController {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers }
    }
}

type Shared = std::sync::Arc<std::sync::RwLock<Cache>>;

/// What a Job should do next, from its spec and its pods' counts.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Run this many more pods (negative: delete that many).
    Scale(i64),
    Complete,
    Fail {
        reason: &'static str,
        message: &'static str,
    },
}

/// The decision for a Job with `active`, `succeeded` and `failed` pods, `elapsed`
/// seconds after it started.
pub fn next(spec: &Value, active: i64, succeeded: i64, failed: i64, elapsed: f64) -> Next {
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let completions = spec["completions"].as_i64();
    let backoff = spec["backoffLimit"].as_i64().unwrap_or(6);
    if failed > backoff {
        return Next::Fail { reason: "BackoffLimitExceeded", message: "Job has reached the specified backoff limit" };
    }
    if spec["activeDeadlineSeconds"].as_f64().is_some_and(|d| elapsed >= d) {
        return Next::Fail { reason: "DeadlineExceeded", message: "Job was active longer than specified deadline" };
    }
    match completions {
        Some(c) if succeeded >= c => Next::Complete,
        // Without completions: done once one pod succeeded and none is running.
        None if succeeded > 0 && active == 0 => Next::Complete,
        None if succeeded > 0 => Next::Scale(0),
        Some(c) => Next::Scale(parallelism.min(c - succeeded) - active),
        None => Next::Scale(parallelism - active),
    }
}

struct State {
    client: ApiClient,
    jobs: Shared,
    pods: Shared,
    /// Pods asked for and not seen yet, per Job.
    expect: HashMap<String, (i64, Instant)>,
    seen: HashSet<String>,
    queue: WorkQueue,
}

impl State {
    fn on_pod(&mut self, change: Change) {
        // The owning Job's key, read in place (most pods are no Job's).
        let job_of = |pod: &Value| {
            let r = controller_ref(pod).filter(|r| r["kind"] == "Job")?;
            Some(format!("{}/{}", namespace(pod), r["name"].as_str().unwrap_or_default()))
        };
        let (key, job, gone) = match change {
            Change::Upserted(k) => {
                let job = self.pods.read().unwrap().objects.get(&k).and_then(job_of);
                (k, job, false)
            }
            Change::Deleted(k, p) => (k, job_of(&p), true),
        };
        let Some(job) = job else { return };
        if gone {
            self.seen.remove(&key);
        } else if self.seen.insert(key) {
            if let Some(e) = self.expect.get_mut(&job) {
                e.0 -= 1;
            }
        }
        self.queue.push(job);
    }

    async fn sync(&mut self, key: &str) -> Result<(), ApiError> {
        let Some(job) = self.jobs.read().unwrap().objects.get(key).cloned() else {
            self.expect.remove(key);
            return Ok(());
        };
        let finished = ["Complete", "Failed"].iter().any(|kind| crate::api::condition_is_true(&job, kind));
        let pods: Vec<Value> = {
            let pods = self.pods.read().unwrap();
            pods.in_namespace(namespace(&job))
                .map(|(_, p)| p)
                .filter(|p| controller_uid(p) == Some(uid(&job)))
                .cloned()
                .collect()
        };
        let active: Vec<&Value> = pods.iter().filter(|p| is_active(p)).collect();
        let phase = |ph: &str| pods.iter().filter(|p| p["status"]["phase"] == ph).count() as i64;
        let (succeeded, failed) = (phase("Succeeded"), phase("Failed"));
        let start = job["status"]["startTime"].as_str().map(str::to_string).unwrap_or_else(rfc3339_now);
        let elapsed = unix_now() - parse_time(&start).unwrap_or_else(unix_now);
        let mut status = json!({"startTime": start, "active": active.len(), "succeeded": succeeded, "failed": failed,
                                "ready": active.iter().filter(|p| is_ready(p)).count()});
        if finished || deleting(&job) {
            return Ok(());
        }
        let met = self.expect.get(key).is_none_or(|(n, at)| *n <= 0 || at.elapsed() > EXPECTATIONS_EXPIRE);
        let now = rfc3339_now();
        let condition = |t: &str, reason: &str, message: &str| {
            json!({"type": t, "status": "True", "reason": reason, "message": message,
                   "lastProbeTime": now, "lastTransitionTime": now})
        };
        match next(&job["spec"], active.len() as i64, succeeded, failed, elapsed) {
            Next::Complete => {
                status["conditions"] =
                    json!([condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")]);
                status["completionTime"] = now.clone().into();
            }
            Next::Fail { reason, message } => {
                self.delete_pods(&active).await;
                status["conditions"] = json!([condition("Failed", reason, message)]);
                status["active"] = 0.into();
            }
            Next::Scale(n) if n > 0 && met => {
                self.expect.insert(key.to_string(), (n, Instant::now()));
                let mut template = job["spec"]["template"].clone();
                template["metadata"]["labels"]["job-name"] = name(&job).into();
                template["metadata"]["labels"]["batch.kubernetes.io/job-name"] = name(&job).into();
                template["metadata"]["labels"]["controller-uid"] = uid(&job).into();
                template["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = uid(&job).into();
                let pod =
                    pod_from_template(&template, namespace(&job), name(&job), owner_reference(&job, "batch/v1", "Job"));
                let collection = format!("/api/v1/namespaces/{}/pods", namespace(&job));
                let made = join_all((0..n).map(|_| self.client.create(&collection, &pod))).await;
                let failed_creates = made.iter().filter(|r| r.is_err()).count() as i64;
                if failed_creates > 0 {
                    if let Some(e) = self.expect.get_mut(key) {
                        e.0 -= failed_creates;
                    }
                    self.queue.push_after(key, Duration::from_secs(1));
                }
            }
            Next::Scale(n) if n < 0 && met => {
                let mut extra = active.clone();
                extra.sort_by(|a, b| super::workload::deletion_order(a, b));
                self.delete_pods(&extra[..(-n) as usize]).await;
            }
            Next::Scale(_) => {
                if let Some(d) = job["spec"]["activeDeadlineSeconds"].as_f64() {
                    self.queue.push_after(key, Duration::from_secs_f64((d - elapsed).max(0.0) + 0.1));
                }
            }
        }
        let current = &job["status"];
        let changed = ["startTime", "active", "succeeded", "failed", "ready", "conditions"]
            .iter()
            .any(|f| current[*f] != status[*f] && !(current[*f].is_null() && status[*f] == 0));
        if !changed {
            return Ok(());
        }
        let path = format!("/apis/batch/v1/namespaces/{}/jobs/{}/status", namespace(&job), name(&job));
        match self.client.merge_patch(&path, &json!({"status": status})).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_pods(&self, pods: &[&Value]) {
        let deletes = pods.iter().map(|p| {
            let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(p), name(p));
            let client = self.client.clone();
            async move { client.delete(&path).await }
        });
        for r in join_all(deletes).await {
            match r {
                Err(e) if e.code() != Some(404) => tracing::debug!(error = %e, "cannot delete a job's pod"),
                _ => {}
            }
        }
    }
}

impl Reconcile for State {
    const WHAT: &'static str = "job";

    fn queue(&mut self) -> &mut WorkQueue {
        &mut self.queue
    }

    fn on_change(&mut self, source: usize, change: Change) {
        match (source, change) {
            (0, Change::Upserted(k) | Change::Deleted(k, _)) => self.queue.push(k),
            (_, c) => self.on_pod(c),
        }
    }

    async fn reconcile(&mut self, key: &str) -> Result<(), ApiError> {
        self.sync(key).await
    }
}

impl Actor for JobController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (caches, changes) = self.informers.subscribe_all(&[("/apis/batch/v1/jobs", &[]), ("/api/v1/pods", &[])]);
        let state = State {
            client: self.client.clone(),
            jobs: caches[0].clone(),
            pods: caches[1].clone(),
            expect: HashMap::new(),
            seen: HashSet::new(),
            queue: WorkQueue::default(),
        };
        ctx.spawn(actix::fut::wrap_future(run(state, caches, changes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_parallel_to_their_completions_and_fail_past_their_limits() {
        let spec = json!({"completions": 5, "parallelism": 2, "backoffLimit": 1});
        assert_eq!(next(&spec, 0, 0, 0, 0.0), Next::Scale(2));
        assert_eq!(next(&spec, 2, 2, 0, 0.0), Next::Scale(0));
        assert_eq!(next(&spec, 1, 4, 0, 0.0), Next::Scale(-0));
        assert_eq!(next(&spec, 0, 4, 1, 0.0), Next::Scale(1));
        assert_eq!(next(&spec, 0, 5, 1, 0.0), Next::Complete);
        assert!(matches!(next(&spec, 1, 0, 2, 0.0), Next::Fail { reason: "BackoffLimitExceeded", .. }));
        let deadline = json!({"activeDeadlineSeconds": 3});
        assert!(matches!(next(&deadline, 1, 0, 0, 3.5), Next::Fail { reason: "DeadlineExceeded", .. }));
        assert_eq!(next(&json!({}), 0, 0, 0, 0.0), Next::Scale(1));
        assert_eq!(next(&json!({}), 0, 1, 0, 0.0), Next::Complete);
    }
}
