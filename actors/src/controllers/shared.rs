//! Informers shared by the controllers of one leader, as client-go's shared informer
//! factory: one list and watch per collection, however many controllers read it. Each
//! subscriber gets the shared cache and its own stream of changed keys (a late
//! subscriber first gets every key already cached). Without this, each pod change
//! reached the leader's API once per controller — the scheduling benchmark found the
//! duplicate watches costing more than the scheduling itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::api::informer::{Cache, Change, Informer};
use crate::api::ApiClient;

type Subscribers = Arc<Mutex<Vec<mpsc::UnboundedSender<Change>>>>;
/// Caches of several collections, and their changes tagged with the collection's index.
pub type Merged = (Vec<Arc<RwLock<Cache>>>, mpsc::UnboundedReceiver<(usize, Change)>);
/// A collection and its selectors.
type Watched = (String, Vec<(String, String)>);

struct Entry {
    cache: Arc<RwLock<Cache>>,
    subscribers: Subscribers,
}

pub struct SharedInformers {
    client: ApiClient,
    entries: Mutex<HashMap<Watched, Entry>>,
}

impl SharedInformers {
    pub fn new(client: ApiClient) -> Arc<Self> {
        Arc::new(Self { client, entries: Mutex::default() })
    }

    /// The cache of `collection` (with `query`'s selectors) and a stream of its changes,
    /// starting the informer on first use. It stops once no subscriber is left.
    pub fn subscribe(
        &self,
        collection: &str,
        query: &[(&str, &str)],
    ) -> (Arc<RwLock<Cache>>, mpsc::UnboundedReceiver<Change>) {
        let key: Watched =
            (collection.to_string(), query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let (tx, rx) = mpsc::unbounded_channel();
        let mut entries = self.entries.lock().unwrap();
        if let Some(e) = entries.get(&key) {
            let mut subs = e.subscribers.lock().unwrap();
            subs.retain(|s| !s.is_closed());
            if !subs.is_empty() {
                // Under the subscribers' lock: no change slips between the replay and the stream.
                for k in e.cache.read().unwrap().objects.keys() {
                    let _ = tx.send(Change::Upserted(k.clone()));
                }
                subs.push(tx);
                return (e.cache.clone(), rx);
            }
        }
        let informer = Informer::new(self.client.clone(), collection, query);
        let cache = informer.cache();
        let subscribers: Subscribers = Arc::new(Mutex::new(vec![tx]));
        let (feed, mut changes) = mpsc::channel(4096);
        actix_rt::spawn(informer.run(feed));
        let subs = subscribers.clone();
        actix_rt::spawn(async move {
            while let Some(change) = changes.recv().await {
                let mut subs = subs.lock().unwrap();
                subs.retain(|s| s.send(change.clone()).is_ok());
                if subs.is_empty() {
                    return; // dropping `changes` stops the informer
                }
            }
        });
        entries.insert(key, Entry { cache: cache.clone(), subscribers });
        (cache, rx)
    }

    /// Several collections at once: their caches, in order, and one stream of their
    /// changes, each tagged with its collection's index.
    pub fn subscribe_all(&self, collections: &[(&str, &[(&str, &str)])]) -> Merged {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut caches = Vec::new();
        for (index, (collection, query)) in collections.iter().enumerate() {
            let (cache, mut one) = self.subscribe(collection, query);
            caches.push(cache);
            let tx = tx.clone();
            actix_rt::spawn(async move {
                loop {
                    tokio::select! {
                        c = one.recv() => match c {
                            Some(c) => {
                                if tx.send((index, c)).is_err() {
                                    return;
                                }
                            }
                            None => return,
                        },
                        _ = tx.closed() => return, // the subscriber is gone
                    }
                }
            });
        }
        (caches, rx)
    }
}
