//! The store's HTTP/JSON key-value API on each member's door (as etcd offers one for
//! operators). Any member answers: writes and reads go to the shard's leader, through
//! this member's replica. Every route needs the admin token.
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | GET | `/kv/status` | each shard's leader, term, revision, members |
//! | GET | `/kv/key/<key>` | the value and its revisions, or 404 |
//! | PUT | `/kv/key/<key>[?epoch=E]` | body is the value → `{"revision","existed"}` |
//! | DELETE | `/kv/key/<key>[?epoch=E]` | `{"revision","existed"}` |
//! | POST | `/kv/cas` | `{"key","expected","value"\|null,"epoch"?}` → written, or 409 with the current revision |
//! | GET | `/kv/range?prefix=P&limit=N&continue=K` | keys in order, `continue` when more remain |
//! | POST | `/kv/epoch` | `{"epoch":E}` raises the fencing epoch on every shard |
//! | GET | `/kv/watch?prefix=P[&cursor=C]` | a `BOOKMARK` line with the cursor, then one line per change after it (`PUT`/`DELETE`, each with the cursor just past it); `ERROR` with code 410 when the cursor is older than the kept window |
//!
//! A watch cursor is opaque to clients: one revision per shard (`r0.r1.…`), so a
//! watch across shards resumes exactly after the last change it delivered.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::http::{authorized, status, DoorState};
use crate::store::state::{prefix_end, Command, Outcome, WriteOp};
use crate::store::{shard_of, ClientOp, ClientReply, Execute, Item, Watch, WatchSource};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/kv/status", web::get().to(shard_status))
        .route("/kv/watch", web::get().to(watch))
        .route("/kv/range", web::get().to(range))
        .route("/kv/cas", web::post().to(cas))
        .route("/kv/epoch", web::post().to(epoch))
        .route("/kv/key/{key:.*}", web::get().to(get))
        .route("/kv/key/{key:.*}", web::put().to(put))
        .route("/kv/key/{key:.*}", web::delete().to(delete));
}

/// A stored item as JSON (values are text; binary values are shown lossily).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct KvItem {
    pub key: String,
    pub value: String,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

impl From<Item> for KvItem {
    fn from(i: Item) -> Self {
        Self {
            key: i.key,
            value: String::from_utf8_lossy(&i.value).into_owned(),
            create_revision: i.create_revision,
            mod_revision: i.mod_revision,
            version: i.version,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Written {
    pub revision: u64,
    pub existed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RangePage {
    pub revision: u64,
    pub items: Vec<KvItem>,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

async fn run(state: &DoorState, shard: u32, op: ClientOp) -> ClientReply {
    let Some(replica) = state.store.get(shard as usize) else {
        return ClientReply::Error("this member holds no store".into());
    };
    replica.send(Execute(op)).await.unwrap_or_else(|e| ClientReply::Error(format!("the store replica: {e}")))
}

fn gate(req: &HttpRequest, state: &DoorState) -> Option<HttpResponse> {
    if !authorized(req, &state.token) {
        return Some(status(StatusCode::UNAUTHORIZED, "Unauthorized", "the key-value API needs the admin token"));
    }
    if state.store.is_empty() {
        return Some(status(StatusCode::NOT_FOUND, "NotFound", "this member holds no store"));
    }
    None
}

fn failure(reply: ClientReply) -> HttpResponse {
    match reply {
        ClientReply::NoLeader => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "no leader right now (an election is on); retry",
        ),
        ClientReply::Error(e) => status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &e),
        other => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &format!("unexpected answer {other:?}")),
    }
}

fn written(outcome: Outcome) -> HttpResponse {
    match outcome {
        Outcome::Done { revision, existed } => HttpResponse::Ok().json(Written { revision, existed }),
        Outcome::Conflict { current } => {
            status(StatusCode::CONFLICT, "Conflict", &format!("the key is at revision {current}, not the one expected"))
        }
        Outcome::Fenced { current } => status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!("fenced: the shard's epoch is {current}, newer than the write's"),
        ),
    }
}

fn bad(msg: &str) -> HttpResponse {
    status(StatusCode::BAD_REQUEST, "BadRequest", msg)
}

fn checked_key(key: &str) -> Result<String, &'static str> {
    let key = format!("/{}", key.trim_start_matches('/'));
    if key.len() < 2 || key.len() > 4096 || key.contains('\0') {
        return Err("keys are 1 to 4,096 bytes, without NUL");
    }
    Ok(key)
}

/// The gate, then the key's own checks: the key as stored, or the answer that refuses it.
fn admit(req: &HttpRequest, state: &DoorState, key: &str) -> Result<String, Box<HttpResponse>> {
    if let Some(refusal) = gate(req, state) {
        return Err(Box::new(refusal));
    }
    checked_key(key).map_err(|why| Box::new(bad(why)))
}

#[derive(Deserialize)]
struct EpochQuery {
    epoch: Option<u64>,
}

async fn get(req: HttpRequest, state: web::Data<DoorState>, key: web::Path<String>) -> HttpResponse {
    let key = match admit(&req, &state, &key) {
        Ok(k) => k,
        Err(refusal) => return *refusal,
    };
    match run(&state, shard_of(&key, state.store.len() as u32), ClientOp::Get { key: key.clone() }).await {
        ClientReply::Item { item: Some(item), revision } => {
            let mut v = serde_json::to_value(KvItem::from(item)).unwrap_or_default();
            v["revision"] = revision.into();
            HttpResponse::Ok().json(v)
        }
        ClientReply::Item { item: None, .. } => {
            status(StatusCode::NOT_FOUND, "NotFound", &format!("key {key:?} not found"))
        }
        other => failure(other),
    }
}

async fn write(state: &DoorState, key: &str, op: WriteOp, epoch: Option<u64>) -> HttpResponse {
    match run(state, shard_of(key, state.store.len() as u32), ClientOp::Write(Command { epoch, op })).await {
        ClientReply::Written(outcome) => written(outcome),
        other => failure(other),
    }
}

async fn put(
    req: HttpRequest,
    state: web::Data<DoorState>,
    key: web::Path<String>,
    q: web::Query<EpochQuery>,
    body: web::Bytes,
) -> HttpResponse {
    let key = match admit(&req, &state, &key) {
        Ok(k) => k,
        Err(refusal) => return *refusal,
    };
    if body.len() > 1 << 20 {
        return bad("values are at most 1 MiB");
    }
    write(&state, &key, WriteOp::Put { key: key.clone(), value: body.to_vec() }, q.epoch).await
}

async fn delete(
    req: HttpRequest,
    state: web::Data<DoorState>,
    key: web::Path<String>,
    q: web::Query<EpochQuery>,
) -> HttpResponse {
    let key = match admit(&req, &state, &key) {
        Ok(k) => k,
        Err(refusal) => return *refusal,
    };
    write(&state, &key, WriteOp::Delete { key: key.clone() }, q.epoch).await
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CasRequest {
    pub key: String,
    /// The key's modification revision the write expects (0: the key must not exist).
    pub expected: u64,
    /// The new value, or null to delete.
    pub value: Option<String>,
    #[serde(default)]
    pub epoch: Option<u64>,
}

async fn cas(req: HttpRequest, state: web::Data<DoorState>, body: web::Json<CasRequest>) -> HttpResponse {
    let key = match admit(&req, &state, &body.key) {
        Ok(k) => k,
        Err(refusal) => return *refusal,
    };
    let op =
        WriteOp::Cas { key: key.clone(), expected: body.expected, value: body.value.clone().map(String::into_bytes) };
    write(&state, &key, op, body.epoch).await
}

#[derive(Deserialize)]
struct EpochBody {
    epoch: u64,
}

async fn epoch(req: HttpRequest, state: web::Data<DoorState>, body: web::Json<EpochBody>) -> HttpResponse {
    if let Some(r) = gate(&req, &state) {
        return r;
    }
    for shard in 0..state.store.len() as u32 {
        let cmd = Command { epoch: None, op: WriteOp::RaiseEpoch { epoch: body.epoch } };
        match run(&state, shard, ClientOp::Write(cmd)).await {
            ClientReply::Written(_) => {}
            other => return failure(other),
        }
    }
    HttpResponse::Ok().json(serde_json::json!({"epoch": body.epoch, "shards": state.store.len()}))
}

#[derive(Deserialize)]
struct RangeQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    after: Option<String>,
}

async fn range(req: HttpRequest, state: web::Data<DoorState>, q: web::Query<RangeQuery>) -> HttpResponse {
    if let Some(r) = gate(&req, &state) {
        return r;
    }
    let limit = q.limit.unwrap_or(500);
    if limit == 0 || limit > 10_000 {
        return bad("limit must be 1 to 10,000");
    }
    let end = if q.prefix.is_empty() { String::new() } else { prefix_end(&q.prefix) };
    // Every shard's next page after the same key, merged in key order: the first
    // `limit` of them are the next `limit` keys overall.
    let mut items = Vec::new();
    let (mut revision, mut more) = (0, false);
    for shard in 0..state.store.len() as u32 {
        let op = ClientOp::Range { start: q.prefix.clone(), end: end.clone(), after: q.after.clone(), limit };
        match run(&state, shard, op).await {
            ClientReply::Items { revision: r, items: page, more: m } => {
                revision = revision.max(r);
                more |= m;
                items.extend(page);
            }
            other => return failure(other),
        }
    }
    items.sort_by(|a, b| a.key.cmp(&b.key));
    more |= items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(|i| i.key.clone()) } else { None };
    HttpResponse::Ok().json(RangePage { revision, items: items.into_iter().map(KvItem::from).collect(), next })
}

async fn shard_status(req: HttpRequest, state: web::Data<DoorState>) -> HttpResponse {
    if let Some(r) = gate(&req, &state) {
        return r;
    }
    let mut shards = Vec::new();
    for shard in 0..state.store.len() as u32 {
        match run(&state, shard, ClientOp::Status).await {
            ClientReply::Status(s) => shards.push(s),
            other => return failure(other),
        }
    }
    HttpResponse::Ok().json(shards)
}

#[derive(Deserialize)]
struct WatchQuery {
    #[serde(default)]
    prefix: String,
    cursor: Option<String>,
}

fn cursor_text(c: &[u64]) -> String {
    c.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

fn line(v: serde_json::Value) -> web::Bytes {
    web::Bytes::from(v.to_string() + "\n")
}

struct Watching {
    sources: Vec<WatchSource>,
    cursor: Vec<u64>,
    prefix: String,
    pending: std::collections::VecDeque<web::Bytes>,
    done: bool,
}

impl Watching {
    /// Queues every change after the cursor; false when the cursor is too old.
    fn collect(&mut self) {
        for (shard, src) in self.sources.iter().enumerate() {
            match src.events_after(self.cursor[shard], &self.prefix) {
                Ok((events, revision)) => {
                    for e in events {
                        self.cursor[shard] = e.revision;
                        let kind = match e.kind {
                            crate::store::state::EventKind::Put => "PUT",
                            crate::store::state::EventKind::Delete => "DELETE",
                        };
                        self.pending.push_back(line(serde_json::json!({
                            "type": kind,
                            "key": e.key,
                            "value": e.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                            "shard": shard,
                            "revision": e.revision,
                            "cursor": cursor_text(&self.cursor),
                        })));
                    }
                    self.cursor[shard] = self.cursor[shard].max(revision);
                }
                Err(expired) => {
                    self.pending.push_back(line(serde_json::json!({
                        "type": "ERROR", "code": 410, "reason": "Expired",
                        "message": format!("shard {shard}: {expired}; list again and watch from the list's cursor"),
                    })));
                    self.done = true;
                    return;
                }
            }
        }
    }
}

async fn watch(req: HttpRequest, state: web::Data<DoorState>, q: web::Query<WatchQuery>) -> HttpResponse {
    if let Some(r) = gate(&req, &state) {
        return r;
    }
    let mut sources = Vec::new();
    for replica in &state.store {
        match replica.send(Watch).await {
            Ok(Some(src)) => sources.push(src),
            _ => {
                return status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "a replica is still opening; retry",
                )
            }
        }
    }
    let now: Vec<u64> = sources.iter().map(|s| *s.revision.borrow()).collect();
    let cursor = match &q.cursor {
        None => now,
        Some(c) => match c.split('.').map(str::parse::<u64>).collect::<Result<Vec<_>, _>>() {
            Ok(v) if v.len() == sources.len() => v,
            _ => return bad(&format!("cursor {c:?} is not one revision per shard ({} shards)", sources.len())),
        },
    };
    let first = line(serde_json::json!({"type": "BOOKMARK", "cursor": cursor_text(&cursor)}));
    let watching = Watching { sources, cursor, prefix: q.prefix.clone(), pending: [first].into(), done: false };
    let stream = futures_util::stream::unfold(watching, |mut w| async move {
        loop {
            if let Some(l) = w.pending.pop_front() {
                return Some((Ok::<_, actix_web::Error>(l), w));
            }
            if w.done {
                return None;
            }
            w.collect();
            if !w.pending.is_empty() || w.done {
                continue;
            }
            // Nothing new: wait until any shard's revision moves (a replica that
            // restarts ends the stream; the client resumes from its last cursor).
            let mut receivers: Vec<_> = w.sources.iter().map(|s| s.revision.clone()).collect();
            let changes = receivers.iter_mut().map(|r| Box::pin(r.changed()));
            let (outcome, _, _) = futures_util::future::select_all(changes).await;
            if outcome.is_err() {
                return None;
            }
            for (src, r) in w.sources.iter_mut().zip(receivers) {
                src.revision = r;
            }
        }
    });
    HttpResponse::Ok().content_type("application/x-ndjson").streaming(stream)
}
