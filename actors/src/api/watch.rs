//! Watches: `?watch=true` streams `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}`
//! lines, one per change, chunked, from this member's replicas.
//!
//! A watch starts after a resourceVersion: a list's (one revision per shard, `r0.r1.…`;
//! one shard: a plain number), any event's (the same form: the cursor just past it), or
//! none (`""`/`"0"`): then the current objects first, as synthetic ADDED events. Too old
//! a resourceVersion gives an ERROR event with a 410 `Expired` Status, and informers
//! list again. Objects that stop (start) matching the selectors are sent as DELETED
//! (ADDED), as Kubernetes does.

use std::collections::VecDeque;
use std::time::Duration;

use actix_web::web;
use serde_json::{json, Value};

use super::objects::{ListOptions, Objects};
use super::resources::Resource;
use super::skim;
use super::status::Failure;
use crate::store::pages::{cursor_text, parse_cursor};
use crate::store::state::{Event, EventKind};
use crate::store::{any_changed, shard_of, Watch, WatchSource};

struct Watching {
    res: &'static Resource,
    prefix: String,
    opts: ListOptions,
    sources: Vec<WatchSource>,
    /// Which shards this watch reads (one for a namespaced resource in one namespace).
    shards: Vec<usize>,
    cursor: Vec<u64>,
    pending: VecDeque<WatchItem>,
    bookmarks: bool,
    /// Objects as one-row Tables (`kubectl get -w`).
    as_table: bool,
    /// What the selectors read of an object (none without selectors: nothing is read).
    selected_paths: Option<skim::Paths>,
    until: tokio::time::Instant,
    done: bool,
}

/// One watch event. It is printed as a `{"type":…,"object":…}` line only for a caller
/// across a wire (HTTPS, QUIC); a caller on the same member (the controllers'
/// informers) takes the object as it is, saving a print and a parse per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchItem {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub kind: &'static str,
    object: Object,
}

/// An event's object: built, or the stored bytes with the resourceVersion spliced in
/// (most events: a remote watcher gets them copied out, never parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Object {
    Value(Value),
    Json(Vec<u8>),
}

impl WatchItem {
    pub fn new(kind: &'static str, object: Value) -> Self {
        Self { kind, object: Object::Value(object) }
    }

    /// An event whose object is JSON already (an object's stored bytes).
    pub fn json(kind: &'static str, object: Vec<u8>) -> Self {
        Self { kind, object: Object::Json(object) }
    }

    /// The event's object, parsed if it came as JSON.
    pub fn into_object(self) -> Result<Value, serde_json::Error> {
        match self.object {
            Object::Value(v) => Ok(v),
            Object::Json(b) => serde_json::from_slice(&b),
        }
    }

    /// The event's object read as `T` (from its bytes, when it came as JSON).
    pub fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        match self.object {
            Object::Value(v) => serde_json::from_value(v),
            Object::Json(b) => serde_json::from_slice(&b),
        }
    }

    /// The event as one line of a watch's body (newline included).
    pub fn line(self) -> web::Bytes {
        let mut json = self.to_json();
        json.push(b'\n');
        web::Bytes::from(json)
    }

    /// The event as JSON: `{"type":…,"object":…}`.
    pub fn to_json(self) -> Vec<u8> {
        let head = format!("{{\"type\":\"{}\",\"object\":", self.kind);
        let mut out = match self.object {
            Object::Json(object) => {
                let mut out = Vec::with_capacity(head.len() + object.len() + 2);
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(&object);
                out
            }
            Object::Value(object) => {
                let mut out = head.into_bytes();
                // Written in place, not through `json!` (which would copy the object).
                serde_json::to_writer(&mut out, &object).expect("a Value always prints");
                out
            }
        };
        out.push(b'}');
        out
    }
}

impl Watching {
    /// Whether the object stored as `json` is one this watch selects: read in part (the
    /// fields its selectors name), or not at all when it has none.
    fn selects(&self, json: &[u8]) -> bool {
        self.opts.selects_json(self.selected_paths.as_ref(), json)
    }

    /// What change `e` is to this watch, if any: ADDED, MODIFIED or DELETED as its
    /// selectors saw the object before and after. The object goes as its stored bytes
    /// with the resourceVersion spliced in; it is parsed only for a Table (or bytes the
    /// splice does not take).
    fn event(&self, e: &Event, rv: &str) -> Option<WatchItem> {
        let after = e.value.as_deref().filter(|b| self.selects(b));
        // Without selectors, neither state is read: an object there before is one the
        // watch saw.
        let before = e.prev.as_ref().map(|p| &p.data[..]).filter(|b| self.selects(b));
        let (kind, json) = match (&e.kind, before, after) {
            (EventKind::Put, None, Some(now)) => ("ADDED", now),
            (EventKind::Put, Some(_), Some(now)) => ("MODIFIED", now),
            (EventKind::Put, Some(was), None) => ("DELETED", was),
            (EventKind::Delete, Some(was), _) => ("DELETED", was),
            _ => return None,
        };
        if !self.as_table {
            if let Some(spliced) = skim::with_resource_version(json, rv) {
                return Some(WatchItem::json(kind, spliced));
            }
        }
        let mut object: Value = serde_json::from_slice(json).ok()?;
        object["metadata"]["resourceVersion"] = rv.into();
        let object = if self.as_table { super::table::table(self.res, &[object], rv) } else { object };
        Some(WatchItem::new(kind, object))
    }

    fn collect(&mut self) {
        for &shard in &self.shards.clone() {
            match self.sources[shard].events_after(self.cursor[shard], &self.prefix) {
                Ok((events, revision)) => {
                    for e in events {
                        self.cursor[shard] = e.revision;
                        let rv = cursor_text(&self.cursor);
                        if let Some(item) = self.event(&e, &rv) {
                            self.pending.push_back(item);
                        }
                    }
                    self.cursor[shard] = self.cursor[shard].max(revision);
                }
                Err(expired) => {
                    let f = Failure::new(
                        410,
                        "Expired",
                        format!("too old resource version: {} ({})", expired.asked, expired.oldest.saturating_sub(1)),
                    );
                    self.pending.push_back(WatchItem::new("ERROR", f.to_value()));
                    self.done = true;
                    return;
                }
            }
        }
    }

    fn bookmark(&self) -> WatchItem {
        WatchItem::new(
            "BOOKMARK",
            json!({"kind": self.res.kind, "apiVersion": self.res.api_version(),
                   "metadata": {"resourceVersion": cursor_text(&self.cursor)}}),
        )
    }
}

/// What a watch asks for, from its query.
pub struct WatchRequest<'a> {
    /// Start after this (none: the current objects first).
    pub resource_version: Option<&'a str>,
    pub opts: ListOptions,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Objects as one-row Tables (`kubectl get -w`).
    pub as_table: bool,
}

/// Starts a watch of `res` in `ns`; the body streams until the timeout or the client goes.
pub async fn watch(
    objects: &Objects,
    res: &'static Resource,
    ns: Option<&str>,
    req: WatchRequest<'_>,
) -> Result<impl futures_core::Stream<Item = WatchItem>, Failure> {
    let WatchRequest { resource_version: rv, opts, bookmarks, timeout, as_table } = req;
    let mut sources = Vec::new();
    for replica in &objects.replicas {
        match replica.send(Watch).await {
            Ok(Some(src)) => sources.push(src),
            _ => return Err(Failure::unavailable("a store replica is still opening; retry")),
        }
    }
    let n = sources.len();
    let prefix = res.prefix(ns);
    let shards: Vec<usize> = match (res.namespaced, ns) {
        (true, None) => (0..n).collect(),
        _ => vec![shard_of(&format!("{prefix}x"), n as u32) as usize],
    };
    let mut pending = VecDeque::new();
    let mut done = false;
    let cursor = match rv.filter(|r| !r.is_empty() && *r != "0") {
        Some(r) => match parse_cursor(r, n, (shards.len() == 1).then(|| shards[0])) {
            Some(c) => c,
            None => {
                let f =
                    Failure::new(410, "Expired", format!("too old resource version: {r} (a list gives a current one)"));
                pending.push_back(WatchItem::new("ERROR", f.to_value()));
                done = true;
                vec![0; n]
            }
        },
        None => {
            // The current objects first, then what changes after them.
            let list_rv = if as_table {
                let (items, list_rv) = objects.list(res, ns, &opts).await?;
                for item in items {
                    pending.push_back(WatchItem::new("ADDED", super::table::table(res, &[item], &list_rv)));
                }
                list_rv
            } else {
                let (items, list_rv) = objects.list_json(res, ns, &opts).await?;
                pending.extend(items.into_iter().map(|json| WatchItem::json("ADDED", json)));
                list_rv
            };
            parse_cursor(&list_rv, n, None).unwrap_or_else(|| vec![0; n])
        }
    };
    let selected_paths = opts.paths();
    let watching = Watching {
        res,
        prefix,
        opts,
        sources,
        shards,
        cursor,
        pending,
        bookmarks,
        as_table,
        selected_paths,
        until: tokio::time::Instant::now() + timeout,
        done,
    };
    Ok(futures_util::stream::unfold(watching, |mut w| async move {
        loop {
            if let Some(l) = w.pending.pop_front() {
                return Some((l, w));
            }
            if w.done || tokio::time::Instant::now() >= w.until {
                return None;
            }
            w.collect();
            if !w.pending.is_empty() || w.done {
                continue;
            }
            // Nothing new: wait for a shard to move, a bookmark's time, or the end.
            let tick = tokio::time::sleep_until(w.until.min(tokio::time::Instant::now() + Duration::from_secs(30)));
            let moved = tokio::select! {
                alive = any_changed(&mut w.sources, &w.shards) => Some(alive),
                _ = tick => None,
            };
            match moved {
                Some(true) => {}
                Some(false) => return None,
                None if w.bookmarks && tokio::time::Instant::now() < w.until => {
                    let b = w.bookmark();
                    return Some((b, w));
                }
                None => {}
            }
        }
    }))
}
