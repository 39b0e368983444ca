//! Server-side apply (`application/apply-patch+yaml`, `kubectl apply --server-side`):
//! a manager sends the fields it wants set; the server records which manager owns which
//! fields (`metadata.managedFields`, `FieldsV1`), refuses to take a field another manager
//! set to another value (409, naming the manager and the field) unless forced, and
//! removes the fields a manager applied before and no longer applies, when nobody else
//! owns them.
//!
//! Lists follow the same table as the strategic merge (`patch_meta.rs`): a list merged
//! by key is a map of elements (`k:{"name":"main"}`), a merged list of primitives is a
//! set (`v:"a"`), any other list is one field. (Kubernetes keys a few lists by more than
//! their patch merge key, e.g. container ports by port and protocol; here by the key.)

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::patch_meta::{field_meta, FieldMeta, ListMerge};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// `f:<name>`: a field of an object.
    Field(String),
    /// `k:{…}`: the element of a keyed list with this key (JSON text, keys sorted).
    Key(String),
    /// `v:<json>`: the member of a set of primitives.
    Value(String),
    /// `.`: the element itself (its key fields are the element's identity).
    Itself,
}

pub type Path = Vec<Step>;

/// The fields a manager owns.
pub type FieldSet = BTreeSet<Path>;

/// Fields the server owns or that name the object: never part of a manager's set.
const IDENTITY: &[&str] = &["apiVersion", "kind"];
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Calls `each` with every field of `obj` (of schema type `ty`) a manager can own, below
/// which it owns what is set: the top-level fields but `apiVersion` and `kind`, and the
/// metadata's (`in_metadata`) but those the server owns.
fn ownable<'a>(obj: &'a Value, ty: &str, mut each: impl FnMut(bool, &'a str, &'a Value, Option<FieldMeta>)) {
    let Value::Object(m) = obj else { return };
    for (k, v) in m {
        if IDENTITY.contains(&k.as_str()) {
            continue;
        }
        if k == "metadata" {
            let Value::Object(meta) = v else { continue };
            for (k, v) in meta.iter().filter(|(k, _)| !SERVER_METADATA.contains(&k.as_str())) {
                each(true, k, v, field_meta("ObjectMeta", k));
            }
            continue;
        }
        each(false, k, v, field_meta(ty, k));
    }
}

/// The fields `obj` sets, for an object of schema type `ty`.
pub fn fields_of(obj: &Value, ty: &str) -> FieldSet {
    let mut out = FieldSet::new();
    ownable(obj, ty, |in_metadata, k, v, meta| {
        let mut path = Vec::with_capacity(2);
        if in_metadata {
            path.push(Step::Field("metadata".into()));
        }
        path.push(Step::Field(k.to_string()));
        walk_field(v, meta, path, &mut out);
    });
    out
}

fn walk_field(v: &Value, meta: Option<super::patch_meta::FieldMeta>, path: Path, out: &mut FieldSet) {
    let ty = meta.and_then(|m| m.ty);
    match (v, meta.map_or(ListMerge::Replace, |m| m.list)) {
        (Value::Array(items), ListMerge::ByKey(key)) => {
            for item in items {
                let mut p = path.clone();
                p.push(Step::Key(key_text(item, key)));
                let mut me = p.clone();
                me.push(Step::Itself);
                out.insert(me);
                walk(item, ty, p, out);
            }
        }
        (Value::Array(items), ListMerge::Primitives) => {
            for item in items {
                let mut p = path.clone();
                p.push(Step::Value(item.to_string()));
                out.insert(p);
            }
        }
        (Value::Object(m), _) if !m.is_empty() => walk(v, ty, path, out),
        _ => {
            out.insert(path);
        }
    }
}

fn walk(v: &Value, ty: Option<&str>, path: Path, out: &mut FieldSet) {
    let Value::Object(m) = v else {
        out.insert(path);
        return;
    };
    for (k, child) in m {
        let mut p = path.clone();
        p.push(Step::Field(k.clone()));
        walk_field(child, ty.and_then(|t| field_meta(t, k)), p, out);
    }
}

/// `{"name":"main"}`: the key of a keyed list's element, as FieldsV1 writes it.
fn key_text(item: &Value, key: &str) -> String {
    let mut m = Map::new();
    m.insert(key.to_string(), item.get(key).cloned().unwrap_or(Value::Null));
    Value::Object(m).to_string()
}

/// Where the element a `k:` or `v:` step names is in `list`.
fn position(list: &[Value], step: &Step) -> Option<usize> {
    match step {
        Step::Key(k) => {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            list.iter().position(|e| want.iter().all(|(wk, wv)| e.get(wk) == Some(wv)))
        }
        Step::Value(v) => {
            let want: Value = serde_json::from_str(v).ok()?;
            list.iter().position(|e| *e == want)
        }
        Step::Field(_) | Step::Itself => None,
    }
}

/// The value at `path` in `obj`, if there is one.
fn value_at<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        cur = match step {
            Step::Field(f) => cur.get(f)?,
            Step::Key(_) | Step::Value(_) => {
                let list = cur.as_array()?;
                &list[position(list, step)?]
            }
            Step::Itself => cur,
        };
    }
    Some(cur)
}

/// Removes the field at `path` from `obj` (an element, a set member, or a field).
fn remove_at(obj: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut cur = obj;
    for step in parent {
        let next = match step {
            Step::Field(f) => cur.get_mut(f),
            Step::Key(_) => cur.as_array_mut().and_then(|list| {
                let i = position(list, step)?;
                list.get_mut(i)
            }),
            Step::Value(_) | Step::Itself => None,
        };
        let Some(next) = next else { return };
        cur = next;
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(_) | Step::Value(_) => {
            if let Some(list) = cur.as_array_mut() {
                while let Some(i) = position(list, last) {
                    list.remove(i);
                }
            }
        }
        Step::Itself => {}
    }
}

/// The managed fields of an object `manager` creates: one entry owning every field it
/// sets — `track_update(&Value::Null, obj, …)`, with the `FieldsV1` tree built as the
/// object is walked rather than from a set of paths (every leaf's path cloned, sorted
/// and taken apart again; 4% of the API leader's time under a scheduling burst).
pub fn track_create(obj: &Value, ty: &str, manager: &str, now: &str) -> Value {
    let (mut tree, mut metadata) = (Map::new(), Map::new());
    ownable(obj, ty, |in_metadata, k, v, meta| {
        tree_field(v, meta, if in_metadata { &mut metadata } else { &mut tree }, format!("f:{k}"));
    });
    if !metadata.is_empty() {
        tree.insert("f:metadata".into(), Value::Object(metadata));
    }
    if tree.is_empty() {
        return json!([]);
    }
    json!([{
        "manager": manager, "operation": "Update", "apiVersion": obj["apiVersion"].as_str().unwrap_or_default(),
        "time": now, "fieldsType": "FieldsV1", "fieldsV1": tree,
    }])
}

/// `walk_field`, adding to a `FieldsV1` tree under `name` in `parent`.
fn tree_field(v: &Value, meta: Option<FieldMeta>, parent: &mut Map<String, Value>, name: String) {
    let ty = meta.and_then(|m| m.ty);
    match (v, meta.map_or(ListMerge::Replace, |m| m.list)) {
        (Value::Array(items), ListMerge::ByKey(key)) if !items.is_empty() => {
            let node = tree_node(parent, name);
            for item in items {
                let element = tree_node(node, format!("k:{}", key_text(item, key)));
                element.entry(".").or_insert_with(|| json!({}));
                if let Value::Object(m) = item {
                    for (k, child) in m {
                        tree_field(child, ty.and_then(|t| field_meta(t, k)), element, format!("f:{k}"));
                    }
                }
            }
        }
        (Value::Array(items), ListMerge::Primitives) if !items.is_empty() => {
            let node = tree_node(parent, name);
            for item in items {
                tree_node(node, format!("v:{item}"));
            }
        }
        (Value::Array(_), ListMerge::ByKey(_) | ListMerge::Primitives) => {}
        (Value::Object(m), _) if !m.is_empty() => {
            let mut node = Map::new();
            for (k, child) in m {
                tree_field(child, ty.and_then(|t| field_meta(t, k)), &mut node, format!("f:{k}"));
            }
            if !node.is_empty() {
                tree_node(parent, name).extend(node);
            }
        }
        _ => {
            tree_node(parent, name);
        }
    }
}

fn tree_node(parent: &mut Map<String, Value>, name: String) -> &mut Map<String, Value> {
    parent.entry(name).or_insert_with(|| json!({})).as_object_mut().expect("FieldsV1 nodes are objects")
}

/// A field set as `FieldsV1` (`{"f:spec":{"f:replicas":{}}}`).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for step in path {
            let name = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Value(v) => format!("v:{v}"),
                Step::Itself => ".".to_string(),
            };
            node = node.entry(name).or_insert_with(|| json!({})).as_object_mut().expect("FieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

/// `FieldsV1` back into a field set.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(v: &Value, path: Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path);
            return;
        }
        for (name, child) in m {
            let step = match name.split_once(':') {
                _ if name == "." => Step::Itself,
                Some(("f", f)) => Step::Field(f.to_string()),
                Some(("k", k)) => Step::Key(k.to_string()),
                Some(("v", v)) => Step::Value(v.to_string()),
                _ => continue,
            };
            let mut p = path.clone();
            p.push(step);
            go(child, p, out);
        }
    }
    let mut out = FieldSet::new();
    go(v, Vec::new(), &mut out);
    out
}

/// A path as Kubernetes prints it in conflicts: `.spec.replicas`,
/// `.spec.template.spec.containers[name="main"].image`.
pub fn path_text(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => {
                let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", inner.join(",")));
            }
            Step::Value(v) => s.push_str(&format!("[={v}]")),
            Step::Itself => {}
        }
    }
    s
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
    pub subresource: Option<String>,
}

impl Managed {
    pub fn read(obj: &Value) -> Vec<Managed> {
        obj["metadata"]["managedFields"]
            .as_array()
            .map(|e| e.iter().map(Self::from_value).collect())
            .unwrap_or_default()
    }

    /// One entry as `managedFields` holds it.
    fn from_value(e: &Value) -> Managed {
        Managed {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            fields: from_fields_v1(&e["fieldsV1"]),
            subresource: e["subresource"].as_str().map(str::to_string),
        }
    }

    /// The entries that own something, as `managedFields` holds them.
    pub fn write(entries: &[Managed]) -> Value {
        Value::Array(entries.iter().filter(|e| !e.fields.is_empty()).map(Self::to_value).collect())
    }

    fn to_value(&self) -> Value {
        let mut v = json!({
            "manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
            "time": self.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&self.fields),
        });
        if let Some(s) = &self.subresource {
            v["subresource"] = s.clone().into();
        }
        v
    }
}

/// A field another manager owns with another value than the one applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: String,
}

/// Why an apply was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    Conflicts(Vec<Conflict>),
    /// The applied configuration cannot be merged (a list element without its key, …).
    Invalid(String),
}

impl Refused {
    /// Kubernetes' message: `Apply failed with 1 conflict: conflict with "m" using apps/v1: .spec.replicas`.
    pub fn message(&self) -> String {
        let c = match self {
            Refused::Invalid(e) => return e.clone(),
            Refused::Conflicts(c) => c,
        };
        if let [one] = c.as_slice() {
            return format!(
                "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
                one.manager, one.api_version, one.path
            );
        }
        let mut text = format!("Apply failed with {} conflicts:", c.len());
        let mut managers: Vec<(&str, &str)> = Vec::new();
        for x in c {
            if !managers.iter().any(|(m, _)| *m == x.manager) {
                managers.push((x.manager.as_str(), x.api_version.as_str()));
            }
        }
        for (m, v) in managers {
            text.push_str(&format!(" conflicts with \"{m}\" using {v}:"));
            for x in c.iter().filter(|x| x.manager == m) {
                text.push_str(&format!("\n- {}", x.path));
            }
        }
        text
    }
}

/// The object after `manager` applies `applied` to `live` (`Value::Null` if there is
/// none yet), with its managed fields; or why not (conflicts, unless `force`).
pub fn apply(live: &Value, applied: &Value, ty: &str, manager: &str, now: &str, force: bool) -> Result<Value, Refused> {
    let wanted = fields_of(applied, ty);
    let mut entries = Managed::read(live);
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| e.manager != manager) {
        for path in e.fields.intersection(&wanted) {
            let ours = value_at(applied, path);
            if value_at(live, path) != ours && !matches!(path.last(), Some(Step::Itself)) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    path: path_text(path),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(Refused::Conflicts(conflicts));
    }
    if force {
        for e in entries.iter_mut().filter(|e| e.manager != manager) {
            let taken: Vec<Path> = e
                .fields
                .iter()
                .filter(|p| wanted.contains(*p) && value_at(applied, p) != value_at(live, p))
                .cloned()
                .collect();
            for p in taken {
                e.fields.remove(&p);
            }
        }
    }
    // Fields this manager applied before and no longer does, that nobody else owns, go.
    let before: FieldSet = entries
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply")
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let others: FieldSet = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut out = if live.is_object() { live.clone() } else { json!({}) };
    let mut dropped: Vec<&Path> = before.iter().filter(|p| !wanted.contains(*p) && !others.contains(*p)).collect();
    // Whole elements first (found by their key, which their own fields' removal would
    // take away), then fields; what is inside a removed element is gone with it.
    dropped.sort_by_key(|p| (!matches!(p.last(), Some(Step::Itself)), p.len()));
    for p in dropped {
        let p = match p.last() {
            // An element goes when its identity goes.
            Some(Step::Itself) => &p[..p.len() - 1],
            _ => &p[..],
        };
        remove_at(&mut out, p);
        // Maps and lists left empty go too, as Go's `omitempty` drops them.
        for depth in (1..p.len()).rev() {
            let parent = &p[..depth];
            let empty = value_at(&out, parent)
                .is_some_and(|v| v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty));
            if !empty {
                break;
            }
            remove_at(&mut out, parent);
        }
    }
    let mut patch = applied.clone();
    if let Some(m) = patch["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    out = super::strategic::strategic_merge(&out, &patch, ty).map_err(Refused::Invalid)?;
    // The same fields applied again keep their time: an apply that changes nothing
    // changes nothing, not even the timestamp (so nothing is written).
    let mine = entries.iter().position(|e| e.manager == manager && e.operation == "Apply");
    let time = match mine.map(|i| &entries[i]) {
        Some(e) if e.fields == wanted => e.time.clone(),
        _ => now.to_string(),
    };
    let entry = Managed {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: applied["apiVersion"].as_str().unwrap_or_default().to_string(),
        time,
        fields: wanted,
        subresource: None,
    };
    match mine {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    out["metadata"]["managedFields"] = Managed::write(&entries);
    Ok(out)
}

/// The managed fields after `manager` updated `old` into `new` (an update, patch or
/// create): it owns every field it changed, and nobody else does any more.
pub fn track_update(old: &Value, new: &Value, ty: &str, manager: &str, now: &str) -> Value {
    let Touched { changed, roots, after, .. } = Touched::between(old, new, ty);
    let mut entries = Vec::new();
    let mut extended = false;
    for raw in old["metadata"]["managedFields"].as_array().into_iter().flatten() {
        let own = raw["manager"] == manager && raw["operation"].as_str().unwrap_or("Update") == "Update";
        let takes = own && !extended && !changed.is_empty();
        // An entry with nothing where the object changed is kept as written (read and
        // written again, a large one cost more than the change).
        let fields = &raw["fieldsV1"];
        if !takes && fields.as_object().is_some_and(|m| !m.is_empty()) && !roots.iter().any(|r| reaches(fields, r)) {
            entries.push(raw.clone());
            continue;
        }
        let mut e = Managed::from_value(raw);
        // Fields gone from the object are nobody's.
        e.fields.retain(|p| after.contains(p) || !roots.iter().any(|r| p.starts_with(r)));
        if e.manager != manager {
            e.fields.retain(|p| !changed.contains(p) || matches!(p.last(), Some(Step::Itself)));
        }
        if takes {
            e.fields.extend(changed.iter().cloned());
            e.time = now.to_string();
            extended = true;
        }
        if !e.fields.is_empty() {
            entries.push(e.to_value());
        }
    }
    if !extended && !changed.is_empty() {
        let e = Managed {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: new["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: now.to_string(),
            fields: changed,
            subresource: None,
        };
        entries.push(e.to_value());
    }
    Value::Array(entries)
}

/// Whether `FieldsV1` holds anything at or under `path` (of fields only).
fn reaches(fields: &Value, path: &[Step]) -> bool {
    let mut node = fields;
    for step in path {
        let Step::Field(f) = step else { return true }; // not a path `Touched` makes; read it whole
        match node.as_object().and_then(|m| m.get(&format!("f:{f}"))) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

/// Where an update's new object differs from the old: the outermost paths that differ
/// (`roots`), the new object's fields under them (`after`), and which of those it
/// changed. Parts equal in both are passed over without listing their fields: most
/// updates change a few fields of a large object (a pod's status, its node), and
/// listing every field of both (the whole spec, each container) cost a tenth of the
/// API server's time under a scheduling burst.
struct Touched<'a> {
    old: &'a Value,
    new: &'a Value,
    changed: FieldSet,
    roots: Vec<Path>,
    after: FieldSet,
}

impl<'a> Touched<'a> {
    fn between(old: &'a Value, new: &'a Value, ty: &str) -> Self {
        let mut t = Self { old, new, changed: FieldSet::new(), roots: Vec::new(), after: FieldSet::new() };
        let empty = Map::new();
        let Some(n) = new.as_object() else {
            t.roots.push(Vec::new()); // nothing is set: every field is gone
            return t;
        };
        let o = old.as_object().unwrap_or(&empty);
        for k in o.keys().chain(n.keys().filter(|k| !o.contains_key(*k))) {
            if IDENTITY.contains(&k.as_str()) {
                continue;
            }
            let path = vec![Step::Field(k.clone())];
            if k == "metadata" {
                // Only what `fields_of` reads: an object, without what the server owns.
                let meta = |v: &'a Value| v.get("metadata").and_then(Value::as_object);
                if meta(old).is_some() || meta(new).is_some() {
                    t.members(meta(old), meta(new), Some("ObjectMeta"), SERVER_METADATA, &path);
                }
                continue;
            }
            t.field(o.get(k), n.get(k), field_meta(ty, k), path);
        }
        t
    }

    /// An object's members, as `walk` lists them (none if it is not there).
    fn members(
        &mut self,
        old: Option<&Map<String, Value>>,
        new: Option<&Map<String, Value>>,
        ty: Option<&str>,
        skip: &[&str],
        path: &Path,
    ) {
        let empty = Map::new();
        let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
        for k in o.keys().chain(n.keys().filter(|k| !o.contains_key(*k))) {
            if skip.contains(&k.as_str()) || o.get(k) == n.get(k) {
                continue;
            }
            let mut p = path.clone();
            p.push(Step::Field(k.clone()));
            self.field(o.get(k), n.get(k), ty.and_then(|t| field_meta(t, k)), p);
        }
    }

    /// A field that may differ, as `walk_field` lists it.
    fn field(&mut self, old: Option<&Value>, new: Option<&Value>, meta: Option<FieldMeta>, path: Path) {
        if old == new {
            return;
        }
        if let (Some(Value::Object(o)), Some(Value::Object(n))) = (old, new) {
            if !o.is_empty() && !n.is_empty() {
                return self.members(Some(o), Some(n), meta.and_then(|m| m.ty), &[], &path);
            }
        }
        let (mut before, mut after) = (FieldSet::new(), FieldSet::new());
        if let Some(o) = old {
            walk_field(o, meta, path.clone(), &mut before);
        }
        if let Some(n) = new {
            walk_field(n, meta, path.clone(), &mut after);
        }
        for p in &after {
            if !before.contains(p) || value_at(self.old, p) != value_at(self.new, p) {
                self.changed.insert(p.clone());
            }
        }
        self.after.extend(after);
        self.roots.push(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tracking as it was first written, from both objects' whole field sets: the walk
    /// over what differs must come to the same entries.
    fn track_update_by_whole_sets(old: &Value, new: &Value, ty: &str, manager: &str, now: &str) -> Value {
        let before = fields_of(old, ty);
        let after = fields_of(new, ty);
        let changed: FieldSet =
            after.iter().filter(|p| !before.contains(*p) || value_at(old, p) != value_at(new, p)).cloned().collect();
        let mut entries = Managed::read(old);
        for e in entries.iter_mut() {
            e.fields.retain(|p| after.contains(p));
            if e.manager != manager {
                e.fields.retain(|p| !changed.contains(p) || matches!(p.last(), Some(Step::Itself)));
            }
        }
        if !changed.is_empty() {
            match entries.iter_mut().find(|e| e.manager == manager && e.operation == "Update") {
                Some(e) => {
                    e.fields.extend(changed);
                    e.time = now.to_string();
                }
                None => entries.push(Managed {
                    manager: manager.to_string(),
                    operation: "Update".into(),
                    api_version: new["apiVersion"].as_str().unwrap_or_default().to_string(),
                    time: now.to_string(),
                    fields: changed,
                    subresource: None,
                }),
            }
        }
        Managed::write(&entries)
    }

    #[test]
    fn updates_are_tracked_as_the_whole_field_sets_track_them() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "uid": "u", "labels": {"app": "web", "tier": "f"},
                         "annotations": {"a": "1"}, "finalizers": ["x", "y"],
                         "ownerReferences": [{"uid": "o1", "kind": "ReplicaSet", "name": "rs", "apiVersion": "apps/v1"}]},
            "spec": {"containers": [
                        {"name": "main", "image": "i:1", "env": [{"name": "A", "value": "1"}],
                         "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                        {"name": "side", "image": "s:1", "args": ["a", "b"]}],
                     "tolerations": [{"key": "k", "operator": "Exists"}], "nodeSelector": {"disk": "ssd"},
                     "securityContext": {}},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}});
        type Change = fn(&mut Value);
        let changes: Vec<(&str, Change)> = vec![
            ("bind", |p| p["spec"]["nodeName"] = "n1".into()),
            ("run", |p| {
                p["status"]["phase"] = "Running".into();
                p["status"]["conditions"] =
                    json!([{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]);
                p["status"]["podIP"] = "10.0.0.1".into();
            }),
            ("image", |p| p["spec"]["containers"][0]["image"] = "i:2".into()),
            ("add a container", |p| {
                p["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "c3", "image": "x"}))
            }),
            ("drop a container", |p| {
                if let Some(c) = p["spec"]["containers"].as_array_mut().filter(|c| c.len() > 1) {
                    c.remove(1);
                }
            }),
            ("env", |p| p["spec"]["containers"][0]["env"][0]["value"] = "2".into()),
            ("no labels", |p| {
                if let Some(m) = p["metadata"].as_object_mut() {
                    m.remove("labels");
                }
            }),
            ("a label", |p| p["metadata"]["labels"]["new"] = "v".into()),
            ("a finalizer more", |p| p["metadata"]["finalizers"] = json!(["x", "y", "z"])),
            ("a finalizer less", |p| p["metadata"]["finalizers"] = json!(["y"])),
            ("empty annotations", |p| p["metadata"]["annotations"] = json!({})),
            ("filled security context", |p| p["spec"]["securityContext"] = json!({"runAsUser": 1})),
            ("a list made a scalar", |p| p["spec"]["tolerations"] = json!("none")),
            ("no status", |p| {
                p.as_object_mut().unwrap().remove("status");
            }),
            ("server fields only", |p| {
                p["metadata"]["uid"] = "other".into();
                p["metadata"]["resourceVersion"] = "9".into();
            }),
            ("no metadata", |p| {
                p.as_object_mut().unwrap().remove("metadata");
            }),
            ("nothing", |_| {}),
        ];
        let now = "2026-12-01T00:00:00Z";
        let mut created = pod.clone();
        let tracked = track_update(&Value::Null, &pod, "Pod", "client", now);
        assert_eq!(tracked, track_update_by_whole_sets(&Value::Null, &pod, "Pod", "client", now));
        assert_eq!(track_create(&pod, "Pod", "client", now), tracked, "a create's own walk");
        created["metadata"]["managedFields"] = tracked;
        // Every change after the create, and every pair of changes by two managers.
        for (first, a) in &changes {
            let mut one = created.clone();
            a(&mut one);
            let by_sets = track_update_by_whole_sets(&created, &one, "Pod", "scheduler", now);
            assert_eq!(track_update(&created, &one, "Pod", "scheduler", now), by_sets, "{first}");
            if one.get("metadata").is_some() {
                one["metadata"]["managedFields"] = by_sets;
            }
            for (second, b) in &changes {
                let mut two = one.clone();
                b(&mut two);
                for manager in ["kubelet", "scheduler", "client"] {
                    assert_eq!(
                        track_update(&one, &two, "Pod", manager, now),
                        track_update_by_whole_sets(&one, &two, "Pod", manager, now),
                        "{first}, then {second} by {manager}"
                    );
                }
            }
        }
        assert_eq!(
            track_update(&pod, &json!("x"), "Pod", "m", now),
            track_update_by_whole_sets(&pod, &json!("x"), "Pod", "m", now)
        );
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "main", "image": image}]}}}})
    }

    #[test]
    fn field_sets_read_and_write_as_fields_v1() {
        let set = fields_of(&deployment(2, "nginx"), "Deployment");
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"main\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        assert_eq!(from_fields_v1(&v1), set);
        let finalizers = fields_of(&json!({"metadata": {"finalizers": ["a"]}}), "ConfigMap");
        assert_eq!(to_fields_v1(&finalizers), json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}}}}));
    }

    #[test]
    fn a_create_is_tracked_as_an_update_from_nothing() {
        let now = "2026-12-02T00:00:00Z";
        let objects = [
            (deployment(3, "nginx"), "Deployment"),
            (
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "uid": "u", "labels": {}},
                       "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080},
                                {"port": 443, "name": "tls"}], "clusterIPs": ["10.0.0.1"], "type": "ClusterIP"}}),
                "Service",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "p", "finalizers": ["a", "a"], "ownerReferences": []},
                       "spec": {"containers": [{"name": "c", "env": []}, {"name": "c", "args": ["x"]}],
                                "volumes": [], "affinity": {"nodeAffinity": {}}, "dnsConfig": {"options": []}},
                       "status": {}}),
                "Pod",
            ),
            (json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "only-server-fields"}}), "ConfigMap"),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": "not an object", "data": {"k": "v"}}),
                "ConfigMap",
            ),
        ];
        for (obj, ty) in &objects {
            assert_eq!(track_create(obj, ty, "m", now), track_update(&Value::Null, obj, ty, "m", now), "{obj}");
        }
        assert_eq!(track_create(&objects[3].0, "ConfigMap", "m", now), json!([]));
    }

    #[test]
    fn apply_owns_conflicts_forces_and_removes_what_it_stops_applying() {
        let now = "2026-11-29T00:00:00Z";
        let created = apply(&Value::Null, &deployment(2, "nginx:1"), "Deployment", "alice", now, false).unwrap();
        assert_eq!(created["metadata"]["managedFields"][0]["manager"], "alice");
        assert_eq!(created["metadata"]["managedFields"][0]["operation"], "Apply");
        // Bob sets the same value: shared, no conflict.
        let mut bob = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let shared = apply(&created, &bob, "Deployment", "bob", now, false).unwrap();
        assert_eq!(shared["metadata"]["managedFields"].as_array().unwrap().len(), 2);
        // Bob changes alice's field: a conflict naming alice and the field.
        bob["spec"]["replicas"] = 5.into();
        let refused = apply(&shared, &bob, "Deployment", "bob", now, false).unwrap_err();
        let conflict =
            Conflict { manager: "alice".into(), api_version: "apps/v1".into(), path: ".spec.replicas".into() };
        assert_eq!(refused, Refused::Conflicts(vec![conflict]));
        assert_eq!(
            refused.message(),
            "Apply failed with 1 conflict: conflict with \"alice\" using apps/v1: .spec.replicas"
        );
        // Forced: bob's value, and alice no longer owns it.
        let forced = apply(&shared, &bob, "Deployment", "bob", now, true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        let alice = Managed::read(&forced).into_iter().find(|e| e.manager == "alice").unwrap();
        assert!(!alice.fields.iter().any(|p| path_text(p) == ".spec.replicas"));
        // Alice stops applying her label: it goes (nobody else owns it); the container stays hers.
        let mut less = deployment(2, "nginx:1");
        less["metadata"].as_object_mut().unwrap().remove("labels");
        less["spec"].as_object_mut().unwrap().remove("replicas");
        let after = apply(&forced, &less, "Deployment", "alice", now, false).unwrap();
        assert!(after["metadata"]["labels"].is_null(), "{after}");
        assert_eq!(after["spec"]["replicas"], 5, "bob's field stays");
        assert_eq!(after["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1");
        // A container she stops applying goes, element and all.
        let mut two = deployment(2, "nginx:1");
        two["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "b"}));
        let with_side = apply(&after, &two, "Deployment", "alice", now, true).unwrap();
        assert_eq!(with_side["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 2);
        let without = apply(&with_side, &deployment(2, "nginx:1"), "Deployment", "alice", now, true).unwrap();
        assert_eq!(without["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1, "{without}");
    }

    #[test]
    fn several_conflicts_read_as_kubernetes_writes_them() {
        let c = |path: &str| Conflict { manager: "kubectl".into(), api_version: "apps/v1".into(), path: path.into() };
        let refused =
            Refused::Conflicts(vec![c(".spec.replicas"), c(".spec.template.spec.containers[name=\"main\"].image")]);
        assert_eq!(
            refused.message(),
            "Apply failed with 2 conflicts: conflicts with \"kubectl\" using apps/v1:\n- .spec.replicas\n- .spec.template.spec.containers[name=\"main\"].image"
        );
    }

    #[test]
    fn updates_take_the_fields_they_change() {
        let now = "2026-11-29T00:00:00Z";
        let applied = apply(&Value::Null, &deployment(2, "nginx:1"), "Deployment", "alice", now, false).unwrap();
        let mut scaled = applied.clone();
        scaled["spec"]["replicas"] = 3.into();
        scaled["metadata"]["managedFields"] = track_update(&applied, &scaled, "Deployment", "kubectl-scale", now);
        let entries = Managed::read(&scaled);
        let scale = entries.iter().find(|e| e.manager == "kubectl-scale").unwrap();
        assert_eq!(scale.operation, "Update");
        assert_eq!(scale.fields.iter().map(|p| path_text(p)).collect::<Vec<_>>(), [".spec.replicas"]);
        let alice = entries.iter().find(|e| e.manager == "alice").unwrap();
        assert!(!alice.fields.iter().any(|p| path_text(p) == ".spec.replicas"));
        // Alice applying her old value now conflicts with the scaler.
        let refused = apply(&scaled, &deployment(2, "nginx:1"), "Deployment", "alice", now, false).unwrap_err();
        assert!(refused.message().contains("conflict with \"kubectl-scale\""), "{refused:?}");
    }
}
