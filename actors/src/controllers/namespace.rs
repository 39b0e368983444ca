//! `/<server>/controllers/namespace`: a deleted namespace (Terminating) is emptied —
//! every namespaced object in it deleted — and then finalized (`/finalize` with no
//! finalizers left), which removes it, as Kubernetes' namespace controller does.
//!
//! Level-triggered: an informer on namespaces reports keys; each Terminating one is
//! worked on until it is gone, again every second while objects remain (their own
//! finalizers or graceful deletions may hold them).

use std::collections::BTreeSet;
use std::time::Duration;

use std::sync::Arc;

use actix::AsyncContext;
use serde_json::json;

use crate::api::informer::Change;
use crate::api::resources::RESOURCES;
use crate::api::{ApiClient, ApiError};
use crate::controllers::{ControllerContext, SharedInformers};
use crate::runtime::{Actor, Ctx};

pub struct NamespaceController {
    client: ApiClient,
    informers: Arc<SharedInformers>,
}

impl NamespaceController {
    pub fn new(cx: ControllerContext) -> Self {
        Self { client: cx.client, informers: cx.informers }
    }
}

/// Deletes what is in `ns`; true once nothing is left and the namespace is finalized.
async fn empty(client: &ApiClient, ns: &str) -> Result<bool, ApiError> {
    let mut left = 0;
    for res in RESOURCES.iter().filter(|r| r.namespaced) {
        let collection = res.path(Some(ns));
        let list = client.get(&collection).await?;
        for item in list["items"].as_array().into_iter().flatten() {
            left += 1;
            if item["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            match client.delete(&format!("{collection}/{name}")).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if left > 0 {
        return Ok(false);
    }
    let finalize = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                          "spec": {"finalizers": []}});
    match client.update(&format!("/api/v1/namespaces/{ns}/finalize"), &finalize).await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(404) => Ok(true),
        Err(e) => Err(e),
    }
}

impl Actor for NamespaceController {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (cache, mut changes) = self.informers.subscribe("/api/v1/namespaces", &[]);
        let client = self.client.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            let mut terminating: BTreeSet<String> = BTreeSet::new();
            loop {
                // Keys that changed, or a second passed with work still pending.
                match tokio::time::timeout(Duration::from_secs(1), changes.recv()).await {
                    Ok(Some(Change::Upserted(ns))) => {
                        let phase = cache.read().unwrap().objects.get(&ns).map(|n| n["status"]["phase"].clone());
                        if phase.is_some_and(|p| p == "Terminating") {
                            terminating.insert(ns);
                        }
                    }
                    Ok(Some(Change::Deleted(ns, _))) => {
                        terminating.remove(&ns);
                    }
                    Ok(None) => return,
                    Err(_elapsed) => {}
                }
                for ns in terminating.clone() {
                    match empty(&client, &ns).await {
                        Ok(true) => {
                            terminating.remove(&ns);
                        }
                        Ok(false) => {}
                        // Another member leads now: this one's writes are refused from here on.
                        Err(e) if e.reason() == Some("Fenced") => return,
                        Err(e) => tracing::debug!(namespace = %ns, error = %e, "emptying a namespace"),
                    }
                }
            }
        }));
    }
}
