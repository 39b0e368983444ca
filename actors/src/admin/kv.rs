//! The store's HTTP/JSON key-value API on each member's door (as etcd offers one for
//! operators). Any member answers: writes and reads go to the shard's leader, through
//! this member's replica. Every route needs the admin token.
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | GET | `/kv/status` | each shard's leader, term, revision, members |
//! | GET | `/kv/key/<key>` | the value and its revisions, or 404 |
//! | PUT | `/kv/key/<key>[?epoch=E][&lease=L]` | body is the value → `{"revision","existed"}`; 404 when the lease is gone |
//! | DELETE | `/kv/key/<key>[?epoch=E]` | `{"revision","existed"}` |
//! | POST | `/kv/cas` | `{"key","expected","value"\|null,"epoch"?}` → written, or 409 with the current revision |
//! | GET | `/kv/range?prefix=P&limit=N&continue=T` | keys in order, and `continue` when more remain: every page of one list reads the snapshot the first page read (410 once it left the window) |
//! | POST | `/kv/txn` | `{"compares":[{"key","target","cmp","value"}],"success":[…],"failure":[…]}` → `{"succeeded","revision"}`; keys all on one shard |
//! | POST | `/kv/lease` | `{"ttl_ms"}` → `{"id","ttl_ms"}`: a lease on every shard |
//! | POST | `/kv/lease/<id>/keepalive` | renews it → `{"id","ttl_ms"}`, 404 when it expired |
//! | DELETE | `/kv/lease/<id>` | revokes it, deleting its keys |
//! | POST | `/kv/epoch` | `{"epoch":E}` raises the fencing epoch on every shard |
//! | GET | `/kv/watch?prefix=P[&cursor=C]` | a `BOOKMARK` line with the cursor, then one line per change after it (`PUT`/`DELETE`, each with the cursor just past it); `ERROR` with code 410 when the cursor is older than the kept window |
//!
//! A failed write answers 503 when nothing was done (retry it) and 504 `Timeout` when
//! its outcome is unknown (the leader it went to stopped or lost the lead before
//! answering): it may still take effect, so read before retrying.
//!
//! A watch cursor is opaque to clients: one revision per shard (`r0.r1.…`), so a
//! watch across shards resumes exactly after the last change it delivered.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::http::{authorized, status, DoorState};
use crate::store::pages::{cursor_text, parse_cursor, read_page, PageError};
use crate::store::state::{prefix_end, Cmp, Command, Compare, Outcome, Target, TxnOp, WriteOp};
use crate::store::{any_changed, shard_of, ClientOp, ClientReply, Execute, Item, Watch, WatchSource};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/kv/status", web::get().to(shard_status))
        .route("/kv/watch", web::get().to(watch))
        .route("/kv/range", web::get().to(range))
        .route("/kv/cas", web::post().to(cas))
        .route("/kv/epoch", web::post().to(epoch))
        .route("/kv/txn", web::post().to(txn))
        .route("/kv/lease", web::post().to(lease_grant))
        .route("/kv/lease/{id}/keepalive", web::post().to(lease_keep_alive))
        .route("/kv/lease/{id}", web::delete().to(lease_revoke))
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
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<Item> for KvItem {
    fn from(i: Item) -> Self {
        Self {
            key: i.key,
            value: String::from_utf8_lossy(&i.value).into_owned(),
            create_revision: i.create_revision,
            mod_revision: i.mod_revision,
            version: i.version,
            lease: i.lease,
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
    /// One revision per shard: where a watch that follows this list starts.
    #[serde(default)]
    pub cursor: String,
    pub items: Vec<KvItem>,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

pub(super) async fn run(state: &DoorState, shard: u32, op: ClientOp) -> ClientReply {
    let Some(replica) = state.store.get(shard as usize) else {
        return ClientReply::Error("this member holds no store".into());
    };
    replica.send(Execute(op)).await.unwrap_or_else(|e| ClientReply::Error(format!("the store replica: {e}")))
}

pub(super) fn gate(req: &HttpRequest, state: &DoorState) -> Option<HttpResponse> {
    if !authorized(req, &state.token) {
        return Some(status(StatusCode::UNAUTHORIZED, "Unauthorized", "the key-value API needs the admin token"));
    }
    if state.store.is_empty() {
        return Some(status(StatusCode::NOT_FOUND, "NotFound", "this member holds no store"));
    }
    None
}

pub(super) fn failure(reply: ClientReply) -> HttpResponse {
    match reply {
        ClientReply::NoLeader => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "no leader right now (an election is on); retry",
        ),
        ClientReply::Error(e) => status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &e),
        ClientReply::Unknown(e) => status(StatusCode::GATEWAY_TIMEOUT, "Timeout", &e),
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
        Outcome::Txn { succeeded, revision } => {
            HttpResponse::Ok().json(serde_json::json!({"succeeded": succeeded, "revision": revision}))
        }
        Outcome::NoLease { id } => {
            status(StatusCode::NOT_FOUND, "NotFound", &format!("lease {id} not found (never granted, or expired)"))
        }
        Outcome::Lease { id, granted } => HttpResponse::Ok().json(serde_json::json!({"id": id, "granted": granted})),
        Outcome::Batch(_) => {
            status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "a batch's outcome reached a client")
        }
    }
}

pub(super) fn bad(msg: &str) -> HttpResponse {
    status(StatusCode::BAD_REQUEST, "BadRequest", msg)
}

fn checked_key(key: &str) -> Result<String, String> {
    let key = format!("/{}", key.trim_start_matches('/'));
    if key.len() < 2 || key.len() > 4096 || key.contains('\0') {
        return Err("keys are 1 to 4,096 bytes, without NUL".into());
    }
    Ok(key)
}

/// The gate, then the key's own checks: the key as stored, or the answer that refuses it.
fn admit(req: &HttpRequest, state: &DoorState, key: &str) -> Result<String, Box<HttpResponse>> {
    if let Some(refusal) = gate(req, state) {
        return Err(Box::new(refusal));
    }
    checked_key(key).map_err(|why| Box::new(bad(&why)))
}

#[derive(Deserialize)]
struct EpochQuery {
    epoch: Option<u64>,
    #[serde(default)]
    lease: u64,
}

async fn get(req: HttpRequest, state: web::Data<DoorState>, key: web::Path<String>) -> HttpResponse {
    let key = match admit(&req, &state, &key) {
        Ok(k) => k,
        Err(refusal) => return *refusal,
    };
    match run(&state, shard_of(&key, state.store.len() as u32), ClientOp::Get { key: key.clone() }).await {
        ClientReply::Item { item: Some(item), revision, served_by, term } => {
            let mut v = serde_json::to_value(KvItem::from(item)).unwrap_or_default();
            v["revision"] = revision.into();
            v["served_by"] = served_by.into();
            v["raft_term"] = term.into();
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
    write(&state, &key, WriteOp::Put { key: key.clone(), value: body.to_vec(), lease: q.lease }, q.epoch).await
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
    token: Option<String>,
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
    let shards: Vec<usize> = (0..state.store.len()).collect();
    let page = match read_page(&state.store, &shards, &q.prefix, &end, limit, q.token.as_deref()).await {
        Ok(p) => p,
        Err(PageError::BadToken) => return bad("the continue token is not one this store gave out"),
        Err(PageError::Expired { shard, asked, oldest }) => {
            return status(
                StatusCode::GONE,
                "Expired",
                &format!(
                    "the continue token is too old: shard {shard} keeps revisions from {oldest}, the list was at \
                     {asked}; list again from the start"
                ),
            )
        }
        Err(PageError::Store(reply)) => return failure(reply),
    };
    let (items, cursor, next) = (page.items, page.cursor, page.next);
    HttpResponse::Ok().json(RangePage {
        revision: cursor.iter().copied().max().unwrap_or(0),
        cursor: cursor_text(&cursor),
        items: items.into_iter().map(KvItem::from).collect(),
        next,
    })
}

/// A transaction as JSON: compares on one shard's keys, then the writes of one branch.
#[derive(Debug, Serialize, Deserialize)]
pub struct TxnRequest {
    #[serde(default)]
    pub compares: Vec<TxnCompare>,
    #[serde(default)]
    pub success: Vec<TxnWrite>,
    #[serde(default)]
    pub failure: Vec<TxnWrite>,
    #[serde(default)]
    pub epoch: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnCompare {
    pub key: String,
    /// `mod_revision`, `create_revision`, `version` or `value`.
    pub target: String,
    /// `=`, `!=`, `<` or `>`.
    pub cmp: String,
    /// A number for revisions and versions, a string for values.
    pub value: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum TxnWrite {
    Put {
        key: String,
        value: String,
        #[serde(default)]
        lease: u64,
    },
    Delete {
        key: String,
    },
}

fn compare_of(c: &TxnCompare) -> Result<Compare, String> {
    let cmp = match c.cmp.as_str() {
        "=" | "==" => Cmp::Equal,
        "!=" => Cmp::NotEqual,
        "<" => Cmp::Less,
        ">" => Cmp::Greater,
        other => return Err(format!("compare {other:?}: use =, !=, < or >")),
    };
    let number = || c.value.as_u64().ok_or_else(|| format!("the {} compare needs a number", c.target));
    let target = match c.target.as_str() {
        "mod_revision" => Target::ModRevision(number()?),
        "create_revision" => Target::CreateRevision(number()?),
        "version" => Target::Version(number()?),
        "value" => Target::Value(
            c.value.as_str().ok_or_else(|| "the value compare needs a string".to_string())?.as_bytes().to_vec(),
        ),
        other => return Err(format!("target {other:?}: use mod_revision, create_revision, version or value")),
    };
    Ok(Compare { key: checked_key(&c.key)?, target, cmp })
}

fn txn_op_of(w: &TxnWrite) -> Result<TxnOp, String> {
    Ok(match w {
        TxnWrite::Put { key, value, lease } => {
            TxnOp::Put { key: checked_key(key)?, value: value.clone().into_bytes(), lease: *lease }
        }
        TxnWrite::Delete { key } => TxnOp::Delete { key: checked_key(key)? },
    })
}

fn txn_of(body: &TxnRequest) -> Result<WriteOp, String> {
    if body.compares.len() + body.success.len() + body.failure.len() > 128 {
        return Err("a transaction holds at most 128 compares and writes".into());
    }
    Ok(WriteOp::Txn {
        compares: body.compares.iter().map(compare_of).collect::<Result<_, _>>()?,
        success: body.success.iter().map(txn_op_of).collect::<Result<_, _>>()?,
        failure: body.failure.iter().map(txn_op_of).collect::<Result<_, _>>()?,
    })
}

async fn txn(req: HttpRequest, state: web::Data<DoorState>, body: web::Json<TxnRequest>) -> HttpResponse {
    if let Some(r) = gate(&req, &state) {
        return r;
    }
    let op = match txn_of(&body) {
        Ok(op) => op,
        Err(e) => return bad(&e),
    };
    let WriteOp::Txn { compares, success, failure: otherwise } = &op else { unreachable!("txn_of makes a Txn") };
    let keys = compares.iter().map(|c| c.key.as_str()).chain(success.iter().chain(otherwise).map(|w| match w {
        TxnOp::Put { key, .. } | TxnOp::Delete { key } => key.as_str(),
    }));
    let shards_of: std::collections::BTreeMap<u32, &str> =
        keys.map(|k| (shard_of(k, state.store.len() as u32), k)).collect();
    let shard = match shards_of.len() {
        0 => return bad("an empty transaction"),
        1 => *shards_of.keys().next().unwrap_or(&0),
        _ => {
            let spread: Vec<String> = shards_of.iter().map(|(s, k)| format!("{k} on shard {s}")).collect();
            return bad(&format!("a transaction's keys must all be on one shard: {}", spread.join(", ")));
        }
    };
    match run(&state, shard, ClientOp::Write(Command { epoch: body.epoch, op })).await {
        ClientReply::Written(outcome) => written(outcome),
        other => failure(other),
    }
}

#[derive(Deserialize)]
struct LeaseBody {
    ttl_ms: u64,
}

/// The shortest lease: a leader change may take this long, and a lease must outlive one.
const MIN_LEASE_MS: u64 = 2_000;

async fn lease_grant(req: HttpRequest, state: web::Data<DoorState>, body: web::Json<LeaseBody>) -> HttpResponse {
    if let Some(r) = gate(&req, &state) {
        return r;
    }
    if body.ttl_ms < MIN_LEASE_MS || body.ttl_ms > 86_400_000 {
        return bad(&format!("ttl_ms must be {MIN_LEASE_MS} to 86,400,000"));
    }
    // One id on every shard, so a key on any shard may go with the lease.
    let id = fastrand::u64(1..(1 << 53));
    for shard in 0..state.store.len() as u32 {
        let cmd = Command { epoch: None, op: WriteOp::LeaseGrant { id, ttl_ms: body.ttl_ms } };
        match run(&state, shard, ClientOp::Write(cmd)).await {
            ClientReply::Written(Outcome::Lease { granted: true, .. }) => {}
            ClientReply::Written(other) => return written(other),
            other => return failure(other),
        }
    }
    HttpResponse::Ok().json(serde_json::json!({"id": id, "ttl_ms": body.ttl_ms}))
}

async fn lease_keep_alive(req: HttpRequest, state: web::Data<DoorState>, id: web::Path<u64>) -> HttpResponse {
    if let Some(r) = gate(&req, &state) {
        return r;
    }
    // A lease lives on every shard, and each shard's leader expires it on its own
    // clock: once any shard has let it go (and deleted its keys there), the lease is
    // over, and what is left of it on the other shards is revoked too.
    let (mut kept, mut gone) = (None, false);
    for shard in 0..state.store.len() as u32 {
        match run(&state, shard, ClientOp::KeepAlive { lease: *id }).await {
            ClientReply::KeptAlive { ttl_ms: Some(t), .. } => kept = Some(t),
            ClientReply::KeptAlive { ttl_ms: None, .. } => gone = true,
            other => return failure(other),
        }
    }
    match (kept, gone) {
        (Some(ttl_ms), false) => HttpResponse::Ok().json(serde_json::json!({"id": *id, "ttl_ms": ttl_ms})),
        (Some(_), true) => {
            for shard in 0..state.store.len() as u32 {
                let cmd = Command { epoch: None, op: WriteOp::LeaseRevoke { id: *id } };
                if let other @ (ClientReply::NoLeader | ClientReply::Error(_)) =
                    run(&state, shard, ClientOp::Write(cmd)).await
                {
                    return failure(other);
                }
            }
            status(StatusCode::NOT_FOUND, "NotFound", &format!("lease {id} expired"))
        }
        (None, _) => {
            status(StatusCode::NOT_FOUND, "NotFound", &format!("lease {id} not found (never granted, or expired)"))
        }
    }
}

async fn lease_revoke(req: HttpRequest, state: web::Data<DoorState>, id: web::Path<u64>) -> HttpResponse {
    if let Some(r) = gate(&req, &state) {
        return r;
    }
    let mut existed = false;
    for shard in 0..state.store.len() as u32 {
        let cmd = Command { epoch: None, op: WriteOp::LeaseRevoke { id: *id } };
        match run(&state, shard, ClientOp::Write(cmd)).await {
            ClientReply::Written(Outcome::Done { existed: e, .. }) => existed |= e,
            ClientReply::Written(other) => return written(other),
            other => return failure(other),
        }
    }
    if !existed {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("lease {id} not found"));
    }
    HttpResponse::Ok().json(serde_json::json!({"id": *id, "revoked": true}))
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
        Some(c) => match parse_cursor(c, sources.len(), None) {
            Some(v) => v,
            None => return bad(&format!("cursor {c:?} is not one revision per shard ({} shards)", sources.len())),
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
            let all: Vec<usize> = (0..w.sources.len()).collect();
            if !any_changed(&mut w.sources, &all).await {
                return None;
            }
        }
    });
    HttpResponse::Ok().content_type("application/x-ndjson").streaming(stream)
}
