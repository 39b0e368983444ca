//! The loop every work-queue controller runs: take in what changed (each change from
//! the informer it came from), reconcile one key at a time, retry a failed key after a
//! second, stop once fenced (another member leads), and otherwise wait for a change or
//! the next held-back key. Nothing is reconciled before every informer has made its
//! first list (client-go's WaitForCacheSync): a new leader whose ReplicaSets were
//! listed before their pods would see none of the pods and make them all again.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::queue::WorkQueue;
use super::SharedCache;
use crate::api::informer::Change;
use crate::api::ApiError;

/// A controller's state, as the loop drives it.
pub(super) trait Reconcile {
    /// What its keys name, for logs (`replicaset`, `deployment`, …).
    const WHAT: &'static str;
    fn queue(&mut self) -> &mut WorkQueue;
    /// A change from the informer at `source` (the order they were subscribed in).
    fn on_change(&mut self, source: usize, change: Change);
    async fn reconcile(&mut self, key: &str) -> Result<(), ApiError>;
}

/// Runs `r` on `changes` (from the informers whose caches are `caches`) until they end
/// or a write is fenced.
pub(super) async fn run<R: Reconcile>(
    mut r: R,
    caches: Vec<SharedCache>,
    mut changes: UnboundedReceiver<(usize, Change)>,
) {
    // Changes wait in their channel meanwhile; none is lost.
    while !caches.iter().all(|c| c.read().unwrap().lists >= 1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        while let Ok((source, c)) = changes.try_recv() {
            r.on_change(source, c);
        }
        if let Some(key) = r.queue().pop() {
            if let Err(e) = r.reconcile(&key).await {
                if e.reason() == Some("Fenced") {
                    return;
                }
                tracing::debug!(what = R::WHAT, key = %key, error = %e, "reconcile failed; again in 1 s");
                r.queue().push_after(key, Duration::from_secs(1));
            }
            continue;
        }
        let due = r.queue().next_due().unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(10));
        tokio::select! {
            c = changes.recv() => match c {
                Some((source, c)) => r.on_change(source, c),
                None => return,
            },
            _ = tokio::time::sleep_until(due) => {}
        }
    }
}
