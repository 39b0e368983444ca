//! Objects in the store: create, get, list, update and delete, with the fields the
//! server owns (uid, creationTimestamp, resourceVersion, generation) and optimistic
//! concurrency on the store's revisions. Objects are stored as JSON.

use serde_json::{json, Value};

use super::resources::{find, Resource};
use super::selector::{FieldSelector, LabelSelector};
use super::skim::Paths;
use super::status::Failure;
use super::validate;
use crate::runtime::Ref;
use crate::store::pages::{cursor_text, parse_cursor, read_page, PageError};
use crate::store::state::{Command, Outcome, WriteOp};
use crate::store::{execute, shard_of, ClientOp, ClientReply, Item, ReadLocal, Replica};

/// The store as the API uses it: this member's replica of every shard.
#[derive(Clone)]
pub struct Objects {
    pub replicas: Vec<Ref<Replica>>,
    /// The fencing epoch this caller's writes carry (a controller leader's); a write
    /// with an epoch older than its shard's is refused (409 `Fenced`).
    pub epoch: Option<u64>,
    /// The default `tolerationSeconds` pods get for not-ready/unreachable nodes.
    pub toleration_seconds: i64,
    /// Where Services' cluster IPs and node ports come from.
    pub services: super::services::ServiceRanges,
}

/// What a delete asks for (`DeleteOptions`' preconditions).
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// `gracePeriodSeconds`: for pods, how long the kubelet has to stop them.
    pub grace_period: Option<i64>,
    /// `propagationPolicy`: `Orphan` and `Foreground` hold the object with a finalizer
    /// (`orphan`, `foregroundDeletion`) until the garbage collector has released or
    /// deleted its dependents; `Background` (or none) deletes it now and the collector
    /// deletes the dependents afterwards.
    pub propagation: Option<String>,
}

/// Kubernetes' DefaultTolerationSeconds admission: a pod that does not tolerate its node
/// turning not-ready or unreachable (NoExecute) tolerates it for `seconds`, after which
/// the node lifecycle controller evicts it.
fn default_tolerations(pod: &mut Value, seconds: i64) {
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let tolerated = pod["spec"]["tolerations"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                (t["key"] == key || (t["key"].is_null() && t["operator"] == "Exists"))
                    && (t["effect"].is_null() || t["effect"] == "" || t["effect"] == "NoExecute")
            })
        });
        if !tolerated {
            let t = json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds});
            match pod["spec"]["tolerations"].as_array_mut() {
                Some(ts) => ts.push(t),
                None => pod["spec"]["tolerations"] = json!([t]),
            }
        }
    }
}

/// The finalizer a propagation policy puts on the object being deleted.
fn propagation_finalizer(policy: Option<&str>) -> Option<&'static str> {
    match policy {
        Some("Orphan") => Some("orphan"),
        Some("Foreground") => Some("foregroundDeletion"),
        _ => None,
    }
}

/// How long a pod being deleted is given to stop, as Kubernetes decides it: the
/// request's grace period, else the pod's `terminationGracePeriodSeconds` (30); none
/// for a pod no node runs (unscheduled, or already finished), which goes at once.
fn pod_grace(pod: &Value, asked: Option<i64>) -> i64 {
    let spec = &pod["spec"];
    let unscheduled = spec["nodeName"].as_str().is_none_or(str::is_empty);
    let finished = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    if unscheduled || finished {
        return 0;
    }
    asked.unwrap_or_else(|| spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)).max(0)
}

/// One page of a list, or a whole list (then `next` is none); each object as a `T`.
#[derive(Debug)]
pub struct Page<T = Value> {
    pub items: Vec<T>,
    /// The list's resourceVersion (one revision per shard).
    pub resource_version: String,
    /// The continue token of the next page, if there is one.
    pub next: Option<String>,
}

/// Which part of an object a write changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object (its status kept as it is, where status is a subresource).
    Main,
    /// `/status`: only the status.
    Status,
    /// The object and its status together: the server's own writes (a binding sets the
    /// node and the PodScheduled condition in one write, as Kubernetes' does).
    Whole,
}

/// How a write is made: which part, whether for real, and by which field manager.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub part: Part,
    /// Everything but the write (`dryRun=All`).
    pub dry_run: bool,
    /// Who makes the change: it then owns the fields it changes (`managedFields`).
    pub manager: Option<&'a str>,
}

impl Write<'_> {
    pub fn main() -> Self {
        Write { part: Part::Main, dry_run: false, manager: None }
    }
}

/// A list's filters.
#[derive(Debug, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl ListOptions {
    /// Whether `obj` passes both selectors.
    pub fn selects(&self, obj: &Value) -> bool {
        self.labels.matches(&obj["metadata"]["labels"]) && self.fields.matches(obj)
    }

    /// The parts of an object the selectors read; none when there are no selectors.
    pub fn paths(&self) -> Option<Paths> {
        (!self.labels.is_empty() || !self.fields.is_empty()).then(|| {
            let mut paths = Paths::default();
            if !self.labels.is_empty() {
                paths.keep("metadata.labels");
            }
            for path in self.fields.paths() {
                paths.keep(path);
            }
            paths
        })
    }

    /// Whether the object stored as `json` passes: read in part (the `paths` the
    /// selectors name), or not at all when there are none.
    pub fn selects_json(&self, paths: Option<&Paths>, json: &[u8]) -> bool {
        match paths {
            None => true,
            Some(paths) => paths.read(json).is_some_and(|o| self.selects(&o)),
        }
    }
}

/// How a list reads each stored object: parsed, with its resourceVersion set, if the
/// selectors take it.
pub fn parsed(opts: &ListOptions) -> impl Fn(Item) -> Option<Value> + '_ {
    move |i| with_version(&i.value, i.mod_revision).filter(|v| opts.selects(v))
}

/// How a list reads each stored object as JSON: its bytes with the resourceVersion
/// spliced in, the selectors reading only the fields they name. Parsing and printing
/// 100,000 pods again held the API leader's thread for seconds, long enough for the
/// lister's watch to fall out of the event window.
pub fn as_json(opts: &ListOptions) -> impl Fn(Item) -> Option<Vec<u8>> + '_ {
    let paths = opts.paths();
    move |i| {
        if !opts.selects_json(paths.as_ref(), &i.value) {
            return None;
        }
        super::skim::with_resource_version(&i.value, &i.mod_revision.to_string())
            .or_else(|| with_version(&i.value, i.mod_revision).and_then(|v| serde_json::to_vec(&v).ok()))
    }
}

/// Now, as Kubernetes writes times.
pub fn rfc3339_now() -> String {
    rfc3339(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Now with microseconds, as Kubernetes writes a `MicroTime` (a Lease's `renewTime`).
pub fn micro_time_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = rfc3339(now.as_secs());
    format!("{}.{:06}Z", secs.trim_end_matches('Z'), now.subsec_micros())
}

/// The condition of type `kind` in `obj.status.conditions`, if it has one.
pub fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

/// Whether `obj` has the condition `kind` with status `True`.
pub fn condition_is_true(obj: &Value, kind: &str) -> bool {
    condition(obj, kind).is_some_and(|c| c["status"] == "True")
}

/// Seconds since the epoch of a time Kubernetes wrote (`Time` or `MicroTime`, UTC).
pub fn parse_time(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = s[19..s.len() - 1].strip_prefix('.').map_or(Some(0.0), |f| format!("0.{f}").parse::<f64>().ok())?;
    // Days since 1970-01-01 from a civil date (the inverse of `rfc3339`'s).
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac)
}

/// Seconds since the epoch, now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds since the epoch as Kubernetes writes times (`2026-11-29T14:41:07Z`).
pub fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn uid() -> String {
    let b: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:x}{:02x}-{:x}{:x}{:02x}-{}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6] & 0x0f,
        b[7],
        8 | (b[8] & 0x3),
        b[8] >> 4,
        b[9],
        b[10..16].iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn with_version(bytes: &[u8], revision: u64) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    v["metadata"]["resourceVersion"] = revision.to_string().into();
    Some(v)
}

/// What an update comes to, decided against the object as read.
enum Prepared {
    /// Write `obj` (`finished`: its last finalizer went, so the key goes instead).
    Write { obj: Value, finished: bool },
    /// It changes nothing: nothing is written.
    Unchanged,
    /// A dry run: the object as it would be.
    Dry(Value),
}

/// `obj` made ready to replace `current` (at `revision`) as `how` says: the fields the
/// server owns kept, `generation` counted, managedFields tracked; a 409 if `obj` names
/// another resourceVersion.
#[allow(clippy::too_many_arguments)]
fn prepare(
    res: &Resource,
    name: &str,
    key: &str,
    shards: u32,
    mut obj: Value,
    current: &Value,
    revision: u64,
    how: Write<'_>,
) -> Result<Prepared, Failure> {
    if res.subresources.contains(&"status") {
        match how.part {
            Part::Main => match current.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                }
            },
            Part::Status => {
                // Everything but the status as it is now: what differs is put back from
                // `current` (a status patch changes nothing else, so nothing is copied).
                let rv = obj["metadata"]["resourceVersion"].clone();
                match (obj.as_object_mut(), current.as_object()) {
                    (Some(o), Some(c)) => {
                        o.retain(|k, _| k == "status" || c.contains_key(k));
                        for (k, v) in c.iter().filter(|(k, _)| *k != "status") {
                            if o.get(k) != Some(v) {
                                o.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    _ => {
                        let status = obj.get("status").cloned();
                        obj = current.clone();
                        match (status, obj.as_object_mut()) {
                            (Some(s), _) => obj["status"] = s,
                            (None, Some(o)) => drop(o.remove("status")),
                            (None, None) => {}
                        }
                    }
                }
                obj["metadata"]["resourceVersion"] = rv;
            }
            Part::Whole => {}
        }
    }
    if let Some(rv) = obj["metadata"]["resourceVersion"].as_str() {
        // An object's own version, or a watch event's (one revision per shard).
        let shard = shard_of(key, shards) as usize;
        let mine = parse_cursor(rv, shards as usize, Some(shard)).map(|c| c[shard]);
        if mine != Some(revision) {
            return Err(Failure::conflict(res, name));
        }
    }
    for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
        match current["metadata"].get(field) {
            Some(v) => obj["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if res.kind == "Service" {
        super::services::carry_over(current, &mut obj)?;
    }
    if obj.get("spec").is_some() && obj["spec"] != current["spec"] {
        obj["metadata"]["generation"] = (current["metadata"]["generation"].as_u64().unwrap_or(0) + 1).into();
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    // Marked for deletion, its last finalizer removed and no grace period running
    // (a pod's kubelet ends that with a delete): it goes now.
    let cm = &current["metadata"];
    let finished = cm["deletionTimestamp"].is_string()
        && cm["finalizers"].as_array().is_some_and(|f| !f.is_empty())
        && obj["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty())
        && cm["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0;
    // Managed fields: kept when the client leaves them out; the manager owns what it changed.
    if obj["metadata"].get("managedFields").is_none() {
        if let Some(m) = current["metadata"].get("managedFields") {
            obj["metadata"]["managedFields"] = m.clone();
        }
    }
    if let Some(manager) = how.manager {
        obj["metadata"]["managedFields"] = super::apply::track_update(current, &obj, res.kind, manager, &rfc3339_now());
    }
    if !finished && unchanged(&obj, current) {
        return Ok(Prepared::Unchanged); // a no-op writes nothing
    }
    if how.dry_run {
        obj["metadata"]["resourceVersion"] = revision.to_string().into();
        return Ok(Prepared::Dry(obj));
    }
    Ok(Prepared::Write { obj, finished })
}

/// Whether `obj` (without a resourceVersion) is `current` (with one).
fn unchanged(obj: &Value, current: &Value) -> bool {
    match (obj.as_object(), current.as_object()) {
        (Some(o), Some(c)) => {
            o.len() == c.len()
                && c.iter().all(|(k, v)| match (k.as_str(), o.get(k)) {
                    ("metadata", Some(Value::Object(om))) => match v.as_object() {
                        Some(cm) => {
                            let counted = cm.len() - usize::from(cm.contains_key("resourceVersion"));
                            om.len() == counted
                                && cm.iter().all(|(mk, mv)| mk == "resourceVersion" || om.get(mk) == Some(mv))
                        }
                        None => false,
                    },
                    (_, Some(ov)) => ov == v,
                    (_, None) => false,
                })
        }
        _ => obj == current,
    }
}

impl Objects {
    fn shards(&self) -> u32 {
        self.replicas.len() as u32
    }

    async fn run(&self, key_or_prefix: &str, op: ClientOp) -> Result<ClientReply, Failure> {
        execute(&self.replicas, key_or_prefix, op).await.map_err(Failure::from)
    }

    /// A key's raw value (for records that are not Kubernetes objects).
    pub async fn read_raw(&self, key: &str) -> Result<Option<bytes::Bytes>, Failure> {
        match self.run(key, ClientOp::Get { key: key.to_string() }).await? {
            ClientReply::Item { item, .. } => Ok(item.map(|i| i.value)),
            other => Err(Failure::unavailable(format!("unexpected store answer {other:?}"))),
        }
    }

    /// The stored object and its modification revision.
    pub(super) async fn read(&self, key: &str) -> Result<Option<(Value, u64)>, Failure> {
        match self.run(key, ClientOp::Get { key: key.to_string() }).await? {
            ClientReply::Item { item: Some(i), .. } => {
                Ok(with_version(&i.value, i.mod_revision).map(|v| (v, i.mod_revision)))
            }
            ClientReply::Item { item: None, .. } => Ok(None),
            other => Err(Failure::unavailable(format!("unexpected store answer {other:?}"))),
        }
    }

    /// The stored object as this member's replica has applied it (maybe behind the
    /// leader); `None` when the replica does not have it (only a linearizable read tells).
    async fn read_local(&self, key: &str) -> Option<(Value, u64)> {
        let item = self.local_item(key).await?;
        with_version(&item.value, item.mod_revision).map(|v| (v, item.mod_revision))
    }

    async fn local_item(&self, key: &str) -> Option<Item> {
        let replica = self.replicas.get(shard_of(key, self.shards()) as usize)?;
        replica.send(ReadLocal(key.to_string())).await.ok()?
    }

    /// The parts `paths` names of an object, for the server's own checks (authorization):
    /// this member's copy when it has one, which may be a moment old, as the
    /// informer-fed checks of Kubernetes' API server are; a linearizable read when it has
    /// none. The rest of the object is skipped unbuilt (a kubelet's every status write
    /// asks which node its pod is on).
    pub async fn get_cached_part(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        paths: &Paths,
    ) -> Result<Value, Failure> {
        let key = res.key(ns, name);
        let bytes = match self.local_item(&key).await {
            Some(item) => item.value,
            None => self.read_raw(&key).await?.ok_or_else(|| Failure::not_found(res, name))?,
        };
        paths.read(&bytes).ok_or_else(|| Failure::unavailable(format!("{key} is not JSON in the store")))
    }

    pub(super) async fn cas(&self, key: &str, expected: u64, value: Option<&Value>) -> Result<Outcome, Failure> {
        self.cas_bytes(key, expected, value.map(|v| serde_json::to_vec(v).unwrap_or_default())).await
    }

    /// As `cas`, with the object already serialized.
    async fn cas_bytes(&self, key: &str, expected: u64, value: Option<Vec<u8>>) -> Result<Outcome, Failure> {
        let op = WriteOp::Cas { key: key.to_string(), expected, value };
        match self.run(key, ClientOp::Write(Command { epoch: self.epoch, op })).await? {
            ClientReply::Written(Outcome::Fenced { current }) => Err(Failure::new(
                409,
                "Fenced",
                format!(
                    "the write carries leader epoch {}, older than the store's {current}: its leader was replaced",
                    self.epoch.unwrap_or_default()
                ),
            )),
            ClientReply::Written(o) => Ok(o),
            other => Err(Failure::unavailable(format!("unexpected store answer {other:?}"))),
        }
    }

    pub async fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Value, Failure> {
        match self.read(&res.key(ns, name)).await? {
            Some((v, _)) => Ok(v),
            None => Err(Failure::not_found(res, name)),
        }
    }

    /// Every object of `res` in `ns` (all namespaces when `None`) that the filters
    /// select, and the list's resourceVersion: page after page of one snapshot.
    pub async fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<(Vec<Value>, String), Failure> {
        let all = self.pages(res, ns, None, None, &parsed(opts)).await?;
        Ok((all.items, all.resource_version))
    }

    /// As [`Objects::list`], each object as JSON (see [`as_json`]).
    pub async fn list_json(
        &self,
        res: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<(Vec<Vec<u8>>, String), Failure> {
        let all = self.pages(res, ns, None, None, &as_json(opts)).await?;
        Ok((all.items, all.resource_version))
    }

    /// With a `limit`, one page of a list: at most `limit` objects (before `keep`
    /// filters them), after the continue `token` of the page before; every page of one
    /// list reads the snapshot the first read (410 once that left the store's window).
    /// Without, the whole list (`token` unused), read 1,000 at a time from one snapshot.
    /// `keep` reads each stored object ([`parsed`], [`as_json`]).
    pub async fn pages<T>(
        &self,
        res: &Resource,
        ns: Option<&str>,
        limit: Option<usize>,
        token: Option<&str>,
        keep: &impl Fn(Item) -> Option<T>,
    ) -> Result<Page<T>, Failure> {
        if let Some(limit) = limit {
            return self.page(res, ns, limit, token, keep).await;
        }
        let mut all = self.page(res, ns, 1_000, None, keep).await?;
        while let Some(token) = all.next.take() {
            let mut page = self.page(res, ns, 1_000, Some(&token), keep).await?;
            all.items.append(&mut page.items);
            all.next = page.next;
        }
        Ok(all)
    }

    /// One page, each stored object read by `keep`.
    async fn page<T>(
        &self,
        res: &Resource,
        ns: Option<&str>,
        limit: usize,
        token: Option<&str>,
        keep: &impl Fn(Item) -> Option<T>,
    ) -> Result<Page<T>, Failure> {
        let n = self.shards() as usize;
        let prefix = res.prefix(ns);
        let end = crate::store::state::prefix_end(&prefix);
        // One namespace's objects of one kind are on one shard; all namespaces: every shard.
        let shards: Vec<usize> = match (res.namespaced, ns) {
            (true, None) => (0..n).collect(),
            _ => vec![shard_of(&format!("{prefix}x"), n as u32) as usize],
        };
        let limit = limit.clamp(1, 10_000);
        let page = read_page(&self.replicas, &shards, &prefix, &end, limit, token).await.map_err(|e| match e {
            PageError::BadToken => Failure::bad_request("invalid continue token"),
            PageError::Expired { .. } => Failure::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a \
                 new list without the continue parameter.",
            ),
            PageError::Store(ClientReply::NoLeader) => Failure::unavailable("the store has no leader right now; retry"),
            PageError::Store(other) => Failure::unavailable(format!("the store: {other:?}")),
        })?;
        let items = page.items.into_iter().filter_map(keep).collect();
        Ok(Page { items, resource_version: cursor_text(&page.cursor), next: page.next })
    }

    /// Creates `obj` (already checked) in `ns`: server fields set, refused if the name is taken.
    pub async fn create(&self, res: &Resource, ns: Option<&str>, obj: Value) -> Result<Value, Failure> {
        let (mut obj, _, revision) = self.create_inner(res, ns, obj).await?;
        obj["metadata"]["resourceVersion"] = revision.to_string().into();
        Ok(obj)
    }

    /// As `create`, answering with the created object as JSON: the bytes written to the
    /// store with the resourceVersion spliced in, rather than the object printed again.
    pub async fn create_json(&self, res: &Resource, ns: Option<&str>, obj: Value) -> Result<Vec<u8>, Failure> {
        let (mut obj, written, revision) = self.create_inner(res, ns, obj).await?;
        let rv = revision.to_string();
        Ok(match super::skim::with_resource_version(&written, &rv) {
            Some(bytes) => bytes,
            None => {
                obj["metadata"]["resourceVersion"] = rv.into();
                serde_json::to_vec(&obj).unwrap_or_default()
            }
        })
    }

    /// Creates `obj`; gives it back as written (without its resourceVersion), with the
    /// bytes written and the revision it was written at.
    async fn create_inner(
        &self,
        res: &Resource,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<(Value, Vec<u8>, u64), Failure> {
        if res.namespaced {
            let namespaces = find("", "v1", "namespaces").expect("namespaces are served");
            let ns = ns.unwrap_or("default");
            // This member's copy first (Kubernetes' NamespaceLifecycle reads its
            // informer), of which only the phase is read (every create asks; parsing the
            // whole namespace was 0.8% of the API leader's time under a pod burst); a
            // namespace missing or ending there is confirmed by a linearizable read.
            let key = namespaces.key(None, ns);
            let mut phase = Paths::default();
            phase.keep("status.phase");
            let active = match self.local_item(&key).await {
                Some(item) => phase.read(&item.value).is_some_and(|n| n["status"]["phase"] == "Active"),
                None => false,
            };
            if !active {
                match self.read(&key).await? {
                    None => return Err(Failure::not_found(namespaces, ns)),
                    Some((n, _)) if n["status"]["phase"] == "Terminating" => {
                        return Err(Failure::new(
                            403,
                            "Forbidden",
                            format!(
                                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it \
                                 is being terminated",
                                res.qualified(),
                                obj["metadata"]["name"].as_str().unwrap_or_default()
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if res.kind == "Namespace" {
            // As Kubernetes' namespace strategy: emptied by the namespace controller before it goes.
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
        }
        let meta = &mut obj["metadata"];
        meta["uid"] = uid().into();
        meta["creationTimestamp"] = rfc3339_now().into();
        if let Some(m) = meta.as_object_mut() {
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
        }
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = 1.into();
        }
        match res.kind {
            "Namespace" => obj["status"] = json!({"phase": "Active"}),
            // A new pod waits to be scheduled, whatever status its creator sent.
            "Pod" => {
                obj["status"] = json!({"phase": "Pending"});
                default_tolerations(&mut obj, self.toleration_seconds);
            }
            _ => {}
        }
        let taken = match res.kind {
            "Service" => {
                super::services::drop_unwanted(&mut obj);
                self.allocate(ns.unwrap_or("default"), &mut obj, None).await?
            }
            _ => Vec::new(),
        };
        let bytes = serde_json::to_vec(&obj).unwrap_or_default();
        let written = self.cas_bytes(&res.key(ns, &name), 0, Some(bytes.clone())).await;
        // Freed only when the write surely did not land (an error may follow a write
        // that did: then the keys stay, and a leak is taken over later).
        if !taken.is_empty() && matches!(written, Ok(Outcome::Conflict { .. })) {
            self.release_keys(&format!("{}/{name}", ns.unwrap_or("default")), &taken).await;
        }
        match written? {
            Outcome::Done { revision, .. } => Ok((obj, bytes, revision)),
            Outcome::Conflict { .. } => Err(Failure::already_exists(res, &name)),
            other => Err(Failure::unavailable(format!("unexpected store outcome {other:?}"))),
        }
    }

    /// Replaces `name` with `obj`: at the resourceVersion it carries (409 when the object
    /// moved on), keeping the server's fields; `generation` counts spec changes.
    pub async fn update(&self, res: &Resource, ns: Option<&str>, name: &str, obj: Value) -> Result<Value, Failure> {
        self.update_part(res, ns, name, obj, Part::Main).await
    }

    /// As `update`, for one part of an object with a status subresource: writes to the
    /// object leave its status alone, writes to `/status` change only the status.
    pub async fn update_part(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        part: Part,
    ) -> Result<Value, Failure> {
        self.update_with(res, ns, name, obj, Write { part, ..Write::main() }).await
    }

    /// An update as `how` says; a dry run gives the object as it would be. An update
    /// that changes nothing writes nothing, as in Kubernetes.
    pub async fn update_with(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        how: Write<'_>,
    ) -> Result<Value, Failure> {
        self.modify(res, ns, name, how, |_| Ok(obj.clone())).await
    }

    /// Kubernetes' GuaranteedUpdate: `change` makes the new object from the current one,
    /// which is written if the object has not moved meanwhile, and read again and retried
    /// if it has. The first attempt starts from this member's replica, without a quorum
    /// round (the compare-and-swap makes a write from a stale read fail, never land);
    /// whatever a replica behind the leader could have got wrong (a conflict, a no-op, a
    /// refusal, the object missing) is decided again from a linearizable read.
    pub async fn modify<F>(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        how: Write<'_>,
        mut change: F,
    ) -> Result<Value, Failure>
    where
        F: FnMut(&Value) -> Result<Value, Failure>,
    {
        let key = res.key(ns, name);
        let mut fresh = false;
        for _ in 0..6 {
            let read = if fresh { self.read(&key).await? } else { self.read_local(&key).await };
            let Some((current, revision)) = read else {
                if fresh {
                    return Err(Failure::not_found(res, name));
                }
                fresh = true;
                continue;
            };
            let step =
                change(&current).and_then(|obj| prepare(res, name, &key, self.shards(), obj, &current, revision, how));
            match step {
                Ok(Prepared::Write { mut obj, finished }) => {
                    // A Service's update takes the addresses it names or lacks (a new
                    // type or port) before it is written, and frees what it dropped after.
                    let service = res.kind == "Service";
                    let taken = match service && !finished {
                        true => self.allocate(ns.unwrap_or("default"), &mut obj, Some(&current)).await?,
                        false => Vec::new(),
                    };
                    let written = self.cas(&key, revision, (!finished).then_some(&obj)).await;
                    if !taken.is_empty() && matches!(written, Ok(Outcome::Conflict { .. })) {
                        self.release_keys(&format!("{}/{name}", ns.unwrap_or("default")), &taken).await;
                    }
                    match written? {
                        Outcome::Done { revision, .. } => {
                            if service {
                                let after = (!finished).then_some(&obj);
                                self.release_dropped(ns.unwrap_or("default"), &current, after).await;
                            }
                            obj["metadata"]["resourceVersion"] = revision.to_string().into();
                            return Ok(obj);
                        }
                        Outcome::Conflict { .. } => {}
                        other => return Err(Failure::unavailable(format!("unexpected store outcome {other:?}"))),
                    }
                }
                Ok(Prepared::Unchanged) if fresh => return Ok(current),
                Ok(Prepared::Dry(obj)) if fresh => return Ok(obj),
                Err(f) if fresh => return Err(f),
                _ => {}
            }
            fresh = true;
        }
        Err(Failure::conflict(res, name))
    }

    /// Deletes `name`; returns the object as it was. An object with finalizers is only
    /// marked (`deletionTimestamp`) and goes when an update empties its finalizers.
    pub async fn delete(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Value, Failure> {
        self.delete_with(res, ns, name, &DeleteOptions::default()).await
    }

    pub async fn delete_with(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, Failure> {
        let key = res.key(ns, name);
        for _ in 0..5 {
            let Some((mut current, revision)) = self.read(&key).await? else {
                return Err(Failure::not_found(res, name));
            };
            let meta = &current["metadata"];
            if let Some(uid) = opts.uid.as_deref().filter(|u| meta["uid"].as_str() != Some(u)) {
                return Err(Failure::new(
                    409,
                    "Conflict",
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta["uid"].as_str().unwrap_or_default()
                    ),
                ));
            }
            if let Some(rv) = opts.resource_version.as_deref().filter(|rv| rv.parse::<u64>().ok() != Some(revision)) {
                return Err(Failure::new(
                    409,
                    "Conflict",
                    format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}"),
                ));
            }
            let marked = meta["deletionTimestamp"].is_string();
            if let Some(f) = propagation_finalizer(opts.propagation.as_deref()).filter(|_| !marked) {
                let list = current["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                if !list.iter().any(|x| x == f) {
                    let mut list = list;
                    list.push(f.into());
                    current["metadata"]["finalizers"] = list.into();
                }
            }
            let meta = &current["metadata"];
            let finalizers = meta["finalizers"].as_array().is_some_and(|f| !f.is_empty());
            let mut grace = if res.kind == "Pod" { pod_grace(&current, opts.grace_period) } else { 0 };
            if grace > 0 && !self.node_exists(current["spec"]["nodeName"].as_str().unwrap_or_default()).await? {
                grace = 0; // no kubelet will ever stop it (Kubernetes' pod GC would force it)
            }
            // A pod being deleted gracefully: marked until its kubelet has stopped it (and
            // deletes it with grace 0). A later delete may only shorten the grace period.
            // A namespace with spec finalizers goes Terminating; the namespace controller
            // empties it and finalizes it (`/finalize`), and the delete after that removes it.
            let namespace =
                res.kind == "Namespace" && current["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
            let keep = finalizers || grace > 0 || namespace;
            let given = meta["deletionGracePeriodSeconds"].as_i64();
            if keep && marked && given.is_none_or(|g| g <= grace) {
                return Ok(current);
            }
            let outcome = if keep {
                let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                current["metadata"]["deletionTimestamp"] = rfc3339(at + grace as u64).into();
                current["metadata"]["deletionGracePeriodSeconds"] = grace.into();
                if namespace {
                    current["status"]["phase"] = "Terminating".into();
                }
                if let Some(m) = current["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                self.cas(&key, revision, Some(&current)).await?
            } else {
                self.cas(&key, revision, None).await?
            };
            match outcome {
                Outcome::Done { revision, .. } => {
                    if keep {
                        current["metadata"]["resourceVersion"] = revision.to_string().into();
                    } else if res.kind == "Service" {
                        self.release_dropped(ns.unwrap_or("default"), &current, None).await;
                    }
                    return Ok(current);
                }
                Outcome::Conflict { .. } => continue,
                other => return Err(Failure::unavailable(format!("unexpected store outcome {other:?}"))),
            }
        }
        Err(Failure::conflict(res, name))
    }

    async fn node_exists(&self, node: &str) -> Result<bool, Failure> {
        let nodes = find("", "v1", "nodes").expect("nodes are served");
        match self.get(nodes, None, node).await {
            Ok(_) => Ok(true),
            Err(f) if f.code == 404 => Ok(false),
            Err(f) => Err(f),
        }
    }

    /// Creates the namespaces every cluster has, if missing.
    pub async fn ensure_namespaces(&self) -> Result<(), Failure> {
        let namespaces = find("", "v1", "namespaces").expect("namespaces are served");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}});
            match self.create(namespaces, None, obj).await {
                Ok(_) => {}
                Err(f) if f.reason == "AlreadyExists" => {}
                Err(f) => return Err(f),
            }
        }
        Ok(())
    }
}

/// Checks an object sent for create or update: kind and apiVersion, metadata, shape,
/// and unknown fields under strict validation. Returns it with the name filled in
/// (from `generateName` when asked).
pub fn admit(res: &Resource, ns: Option<&str>, mut obj: Value, strict: bool) -> Result<Value, Failure> {
    if !obj.is_object() {
        return Err(Failure::bad_request("the body is not a JSON object"));
    }
    let api_version = res.api_version();
    match (obj["kind"].as_str(), obj["apiVersion"].as_str()) {
        (Some(k), _) if k != res.kind => {
            return Err(Failure::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )))
        }
        (_, Some(v)) if v != api_version => {
            return Err(Failure::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
        _ => {}
    }
    obj["kind"] = res.kind.into();
    obj["apiVersion"] = api_version.into();
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        if let Some(base) = obj["metadata"]["generateName"].as_str() {
            let suffix: String = (0..5).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
            obj["metadata"]["name"] = format!("{base}{suffix}").into();
        }
    }
    if res.namespaced {
        let ns = ns.unwrap_or("default");
        match obj["metadata"]["namespace"].as_str() {
            Some(given) if given != ns => {
                return Err(Failure::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => obj["metadata"]["namespace"] = ns.into(),
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut problems = validate::metadata_problems(res, &obj["metadata"]);
    problems.extend(validate::spec_problems(res, &obj));
    if !problems.is_empty() {
        return Err(Failure::invalid(res, &name, &problems));
    }
    let undecodable = |e: String| {
        Failure::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            res.kind, res.version, res.kind
        ))
    };
    if !strict {
        validate::check(res, &obj).map_err(undecodable)?;
    } else {
        let known = validate::decode(res, &obj).map_err(undecodable)?;
        if let Some(field) = validate::unknown_field(&obj, &known) {
            return Err(Failure::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: unknown field \"{field}\"",
                res.kind, res.version, res.kind
            )));
        }
    }
    super::defaults::apply(res.kind, &mut obj);
    Ok(obj)
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn times_read_back_as_written() {
        for secs in [0, 951_782_400, 1_795_960_867, 4_102_444_800] {
            assert_eq!(parse_time(&rfc3339(secs)), Some(secs as f64));
        }
        assert_eq!(parse_time("2026-11-29T14:41:07.250000Z"), Some(1_795_963_267.25));
        assert!(parse_time(&micro_time_now()).is_some_and(|t| (t - unix_now()).abs() < 5.0));
        assert_eq!(parse_time("yesterday"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_read_only_the_fields_they_name_from_stored_json() {
        let opts = ListOptions {
            labels: LabelSelector::parse("app=web").unwrap(),
            fields: FieldSelector::parse("spec.nodeName!=").unwrap(),
        };
        let paths = opts.paths();
        let pod = |labels: Value, node: &str| {
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": labels},
                             "spec": {"nodeName": node, "containers": [{"name": "c"}]}});
            serde_json::to_vec(&pod).unwrap()
        };
        assert!(opts.selects_json(paths.as_ref(), &pod(json!({"app": "web"}), "n1")));
        assert!(!opts.selects_json(paths.as_ref(), &pod(json!({"app": "web"}), "")));
        assert!(!opts.selects_json(paths.as_ref(), &pod(json!({"app": "db"}), "n1")));
        // No selectors: nothing is read, not even to see whether it is JSON.
        let all = ListOptions::default();
        assert!(all.paths().is_none());
        assert!(all.selects_json(None, b"not read"));
    }

    #[test]
    fn timestamps_and_uids_look_like_kubernetes_ones() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
        let u = uid();
        assert_eq!(u.len(), 36, "{u}");
        assert_eq!(u.as_bytes()[14], b'4');
    }

    #[test]
    fn admission_fills_and_refuses() {
        let cm = find("", "v1", "configmaps").unwrap();
        let ok =
            admit(cm, Some("web"), json!({"metadata": {"generateName": "cfg-"}, "data": {"a": "b"}}), true).unwrap();
        assert!(ok["metadata"]["name"].as_str().unwrap().starts_with("cfg-"));
        assert_eq!(ok["metadata"]["namespace"], "web");
        assert_eq!(ok["kind"], "ConfigMap");
        let f = admit(cm, Some("web"), json!({"metadata": {"name": "x"}, "dataa": {}}), true);
        assert!(f.is_ok(), "an empty unknown map is dropped by the round trip, as Kubernetes ignores it");
        let f = admit(cm, Some("web"), json!({"metadata": {"name": "x"}, "dataa": {"a": "b"}}), true).unwrap_err();
        assert_eq!(
            (f.code, f.message.as_str()),
            (400, "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"dataa\"")
        );
        let f = admit(cm, Some("web"), json!({"metadata": {"name": "x", "namespace": "other"}}), true).unwrap_err();
        assert_eq!(f.code, 400);
        let f = admit(cm, Some("web"), json!({"metadata": {}}), true).unwrap_err();
        assert_eq!((f.code, f.reason), (422, "Invalid"));
        assert!(f.message.contains("metadata.name: Required value"), "{}", f.message);
        let f = admit(cm, Some("web"), json!({"kind": "Secret", "metadata": {"name": "x"}}), true).unwrap_err();
        assert_eq!(f.code, 400);
    }
}
