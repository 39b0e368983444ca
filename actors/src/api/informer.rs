//! An informer, as client-go has: a local copy of one collection (a kind, maybe
//! namespaced, maybe selected), kept current by a list and then a watch through the
//! actor door, listing again when the watch's version is too old (410) — so the
//! scheduler and controllers read from memory and are told what changed.
//!
//! Objects are kept without `metadata.managedFields` ([`Trimmed`]): nothing that reads
//! a cache needs them, and an update built from a cached object keeps the stored ones.
//! A reader that needs a few fields of very many objects keeps a struct of them
//! instead ([`Cached`]; the hollow agent's pods).
//!
//! Each change is reported by key (`namespace/name`, or `name`), not as an event to
//! act on: the reader looks the object up in the cache when it gets to the key, so
//! it always works from the latest state (level-triggered), and a relist reports
//! exactly what differs from what was cached before.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use super::client::{ApiClient, ApiError};
use super::door::ApiRequest;
use super::pipeline::Method;
use super::skim::Trimmed;

/// Objects per page of a list (client-go's reflector asks for 500).
const LIST_PAGE: usize = 500;

/// One page of a list, its objects as the cache reads them.
#[derive(serde::Deserialize)]
#[serde(bound = "W: DeserializeOwned")]
struct Page<W> {
    #[serde(default)]
    items: Option<Vec<W>>,
    #[serde(default)]
    metadata: PageMeta,
}

#[derive(serde::Deserialize, Default)]
struct PageMeta {
    #[serde(default, rename = "continue")]
    next: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
}

/// What an informer keeps of each object: read off the wire as `Wire`, keyed and
/// versioned by its metadata.
pub trait Cached: std::fmt::Debug + Clone + PartialEq + Send + Sync + 'static {
    type Wire: DeserializeOwned + Send + 'static;
    fn from_wire(wire: Self::Wire) -> Self;
    /// `namespace/name`, or `name` if cluster-scoped.
    fn key(&self) -> String;
    fn resource_version(&self) -> Option<&str>;
}

/// Whole objects, without their managed fields.
impl Cached for Value {
    type Wire = Trimmed;
    fn from_wire(Trimmed(object): Trimmed) -> Self {
        object
    }
    fn key(&self) -> String {
        key_of(self)
    }
    fn resource_version(&self) -> Option<&str> {
        self["metadata"]["resourceVersion"].as_str()
    }
}

/// What changed, by key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T = Value> {
    /// Added or modified: read the cache for its state now.
    Upserted(String),
    /// Gone; its last known state.
    Deleted(String, T),
}

/// The cached objects, by key, and the resourceVersion they are current at. Kept in
/// key order, so one namespace's objects are a range ([`Cache::in_namespace`]): a
/// controller's pass over its namespace does not walk every namespace's pods.
#[derive(Debug)]
pub struct Cache<T = Value> {
    pub objects: BTreeMap<String, T>,
    pub resource_version: String,
    /// Lists made so far (the first, and one per expired watch).
    pub lists: u64,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self { objects: BTreeMap::new(), resource_version: String::new(), lists: 0 }
    }
}

impl<T> Cache<T> {
    /// The objects of namespace `ns`, by key (`ns/name`; names hold no `/`).
    pub fn in_namespace<'a>(&'a self, ns: &str) -> impl Iterator<Item = (&'a String, &'a T)> + 'a {
        let prefix = format!("{ns}/");
        self.objects.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix))
    }
}

/// The cache key of an object: `namespace/name`, or `name` if cluster-scoped.
pub fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    cache_key(m["namespace"].as_str(), m["name"].as_str().unwrap_or_default())
}

/// The cache key of the object `name` in `namespace` (none or empty: cluster-scoped).
pub fn cache_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

pub struct Informer<T = Value> {
    client: ApiClient,
    /// `/api/v1/pods`, `/apis/apps/v1/namespaces/web/deployments`, …
    collection: String,
    /// Selectors (`labelSelector`, `fieldSelector`).
    query: Vec<(String, String)>,
    cache: Arc<RwLock<Cache<T>>>,
}

impl Informer {
    /// An informer of whole objects (without managed fields).
    pub fn new(client: ApiClient, collection: &str, query: &[(&str, &str)]) -> Self {
        Self::of(client, collection, query)
    }
}

impl<T: Cached> Informer<T> {
    /// An informer keeping `T` of each object.
    pub fn of(client: ApiClient, collection: &str, query: &[(&str, &str)]) -> Self {
        Self {
            client,
            collection: collection.to_string(),
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cache: Arc::default(),
        }
    }

    /// The cache this informer keeps (shared: read it any time).
    pub fn cache(&self) -> Arc<RwLock<Cache<T>>> {
        self.cache.clone()
    }

    /// Keeps the cache current for as long as `changes` has a receiver, reporting every
    /// change on it; API errors are retried with back-off (200 ms doubling to 5 s).
    pub async fn run(self, changes: mpsc::Sender<Change<T>>) {
        let mut backoff = Duration::from_millis(200);
        let mut resume: Option<String> = None;
        loop {
            if changes.is_closed() {
                return;
            }
            let rv = match resume.take() {
                Some(rv) => rv,
                None => match self.relist(&changes).await {
                    Ok(rv) => rv,
                    Err(e) => {
                        // Early failures are a member still starting; a list that keeps
                        // failing leaves its reader blind, so it is told.
                        if backoff >= Duration::from_secs(5) {
                            tracing::warn!(collection = %self.collection, error = %e, "list failed again; retrying");
                        } else {
                            tracing::debug!(collection = %self.collection, error = %e, "list failed; retrying");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            match self.watch(&rv, &changes).await {
                // The watch ended (its timeout, or the server went): go on from where it was.
                Ok(last) => {
                    backoff = Duration::from_millis(200);
                    resume = Some(last);
                }
                Err((e, _)) if e.code() == Some(410) => {
                    // Fell more than the store's event window behind: costly at scale, so a
                    // warning (as client-go's reflector gives for a too old resourceVersion).
                    tracing::warn!(collection = %self.collection, "watch expired; listing again");
                }
                Err((e, last)) => {
                    tracing::debug!(collection = %self.collection, error = %e, "watch failed; resuming");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    resume = Some(last);
                }
            }
        }
    }

    /// Every object, a page at a time, as client-go's reflector lists: one answer for
    /// 100,000 pods is about 100 MB, past what one transport frame may carry, and holds
    /// the server that prints it for seconds. Every page reads the first one's snapshot;
    /// one that left the store's window (410) fails the list, which starts again.
    async fn list(&self) -> Result<(BTreeMap<String, T>, String), ApiError> {
        let mut objects = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let mut request = ApiRequest::new(Method::Get, self.collection.clone());
            request.query.clone_from(&self.query);
            request.query.push(("limit".into(), LIST_PAGE.to_string()));
            if let Some(token) = token.take() {
                request.query.push(("continue".into(), token));
            }
            let page: Page<T::Wire> = self.client.call_as(request).await?;
            objects.extend(page.items.into_iter().flatten().map(T::from_wire).map(|o| (o.key(), o)));
            match page.metadata.next.filter(|c| !c.is_empty()) {
                Some(next) => token = Some(next),
                None => return Ok((objects, page.metadata.resource_version)),
            }
        }
    }

    /// Lists, replaces the cache, reports what differs from before; the list's version.
    async fn relist(&self, changes: &mpsc::Sender<Change<T>>) -> Result<String, ApiError> {
        let (fresh, rv) = self.list().await?;
        let mut reports = Vec::new();
        {
            let mut cache = self.cache.write().unwrap();
            for (k, old) in &cache.objects {
                if !fresh.contains_key(k) {
                    reports.push(Change::Deleted(k.clone(), old.clone()));
                }
            }
            for (k, new) in &fresh {
                if cache.objects.get(k) != Some(new) {
                    reports.push(Change::Upserted(k.clone()));
                }
            }
            cache.objects = fresh;
            cache.resource_version.clone_from(&rv);
            cache.lists += 1;
        }
        for r in reports {
            let _reader_gone = changes.send(r).await;
        }
        Ok(rv)
    }

    /// Follows the watch from `rv`; the last version seen when it ends, or the error
    /// with the last version seen (to resume from, unless it is a 410).
    async fn watch(&self, rv: &str, changes: &mpsc::Sender<Change<T>>) -> Result<String, (ApiError, String)> {
        let mut query: Vec<(&str, &str)> = self.query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        query.push(("allowWatchBookmarks", "true"));
        let mut last = rv.to_string();
        let mut events =
            self.client.watch::<T::Wire>(&self.collection, Some(rv), &query).await.map_err(|e| (e, last.clone()))?;
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| (e, last.clone()))?;
            let object = T::from_wire(event.object);
            if let Some(v) = object.resource_version() {
                last = v.to_string();
            }
            let key = object.key();
            let report = {
                let mut cache = self.cache.write().unwrap();
                cache.resource_version.clone_from(&last);
                match event.kind.as_str() {
                    "ADDED" | "MODIFIED" => {
                        cache.objects.insert(key.clone(), object);
                        Some(Change::Upserted(key))
                    }
                    "DELETED" => {
                        cache.objects.remove(&key);
                        Some(Change::Deleted(key, object))
                    }
                    _ => None, // BOOKMARK: only the version moves
                }
            };
            if let Some(r) = report {
                if changes.send(r).await.is_err() {
                    return Ok(last);
                }
            }
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_namespace_is_a_range_of_the_cache() {
        let mut cache = Cache::default();
        for key in ["a/x", "ab/y", "a/z", "b/w", "node-a", "a"] {
            cache.objects.insert(key.to_string(), json!(key));
        }
        let keys = |ns: &str| cache.in_namespace(ns).map(|(k, _)| k.as_str()).collect::<Vec<_>>();
        assert_eq!(keys("a"), ["a/x", "a/z"]);
        assert_eq!(keys("ab"), ["ab/y"]);
        assert!(keys("c").is_empty());
    }

    #[test]
    fn keys_name_namespaced_and_cluster_objects() {
        assert_eq!(key_of(&json!({"metadata": {"namespace": "web", "name": "p"}})), "web/p");
        assert_eq!(key_of(&json!({"metadata": {"name": "node-a"}})), "node-a");
    }
}
