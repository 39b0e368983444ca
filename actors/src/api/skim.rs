//! Reading a stored object's JSON without building all of it, for watches: the
//! resourceVersion put in place in the bytes, and only the fields a selector reads.
//!
//! A watch sends each event to each watcher. Parsing the stored object into a `Value`
//! for every watcher, setting its resourceVersion and printing it again cost the
//! controllers' leader about a sixth of its time at 2,000 pods a second; a watcher
//! across a wire needs none of that, only the bytes with one field added.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// `object` (a stored object: the API removes `metadata.resourceVersion` before every
/// write) with `metadata.resourceVersion` set to `rv`. None when the bytes are not an
/// object with a `metadata` object, or it holds a resourceVersion already (or a key
/// with escapes, which could spell one): then the caller parses.
pub fn with_resource_version(object: &[u8], rv: &str) -> Option<Vec<u8>> {
    debug_assert!(rv.bytes().all(|b| b.is_ascii_digit() || b == b'.'), "a cursor needs no escaping");
    let mut s = Scan { b: object, i: 0 };
    let mut open = None;
    // The walk stops at `metadata` (a stored object prints its keys in order: third,
    // after apiVersion and kind); what follows is the store's own bytes, not read again
    // for every watcher.
    let _stopped_there = s.members(|s, key| {
        if key == b"metadata" && s.peek() == Some(b'{') {
            open = Some(s.i);
            return None;
        }
        s.value()
    });
    let open = open?;
    let mut meta = Scan { b: object, i: open };
    let mut members = 0;
    meta.members(|s, key| {
        members += 1;
        (key != b"resourceVersion" && !key.contains(&b'\\')).then_some(())?;
        s.value()
    })?;
    let mut out = Vec::with_capacity(object.len() + rv.len() + 24);
    out.extend_from_slice(&object[..=open]);
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(rv.as_bytes());
    out.push(b'"');
    if members > 0 {
        out.push(b',');
    }
    out.extend_from_slice(&object[open + 1..]);
    Some(out)
}

/// A cursor over JSON bytes that finds where values start and end without decoding them.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string's raw bytes (escapes left as they are); the cursor after its quote.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            let at = self.i + memchr::memchr2(b'"', b'\\', self.b.get(self.i..)?)?;
            if self.b[at] == b'"' {
                self.i = at + 1;
                return Some(&self.b[start..at]);
            }
            self.i = at + 2;
        }
    }

    /// Past one value of any kind.
    fn value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace()) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// Walks an object's members: `each` gets the cursor at a member's value (after the
    /// colon and any space) and its key's raw bytes, and must move past the value.
    fn members(&mut self, mut each: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            self.ws();
            each(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
            self.ws();
        }
    }
}

/// The parts of objects a watch's selectors read, as a tree of keys: a sparse copy of
/// an object with only those parts answers the selectors as the whole object would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paths(BTreeMap<String, Keep>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Keep {
    Whole,
    Part(Paths),
}

impl Paths {
    /// Keeps the value at the dotted `path` (and all under it).
    pub fn keep(&mut self, path: &str) {
        let mut node = self;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            let entry = node.0.entry(part.to_string()).or_insert_with(|| Keep::Part(Paths::default()));
            match entry {
                Keep::Whole => return,
                Keep::Part(_) if last => {
                    *entry = Keep::Whole;
                    return;
                }
                Keep::Part(next) => node = next,
            }
        }
    }

    /// The parts of the object in `json` under these paths (None: not JSON). Everything
    /// else is skipped without being built.
    pub fn read(&self, json: &[u8]) -> Option<Value> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let v = self.deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(v)
    }
}

impl<'de> DeserializeSeed<'de> for &Paths {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &Paths {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(found) = map.next_key_seed(Lookup(self))? {
            match found {
                Some((key, Keep::Whole)) => {
                    out.insert(key.to_string(), map.next_value::<Value>()?);
                }
                Some((key, Keep::Part(paths))) => {
                    out.insert(key.to_string(), map.next_value_seed(paths)?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    // Anything else where an object was looked into reads as nothing, as `v[key]` does.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// An object as the cluster's own readers keep it (informers): everything but
/// `metadata.managedFields`, which no controller, scheduler or kubelet reads — as
/// client-go's informers drop it for kube-scheduler and the controller manager. Skipped
/// while parsing rather than removed after: it is about 40% of a pod's bytes and most
/// of its small maps, so building it was much of the parse.
#[derive(Debug, Clone, PartialEq)]
pub struct Trimmed(pub Value);

/// `metadata.managedFields`, as the path [`Without`] skips.
const MANAGED_FIELDS: &[&str] = &["metadata", "managedFields"];

impl<'de> serde::Deserialize<'de> for Trimmed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Without(MANAGED_FIELDS).deserialize(d).map(Trimmed)
    }
}

/// A value with the member at this path of keys (through objects) left out.
struct Without(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Without {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Without {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.0 {
                [first] if *first == key => {
                    map.next_value::<IgnoredAny>()?;
                }
                [first, rest @ ..] if *first == key => {
                    out.insert(key, map.next_value_seed(Without(rest))?);
                }
                _ => {
                    out.insert(key, map.next_value::<Value>()?);
                }
            }
        }
        Ok(Value::Object(out))
    }

    // Anything but an object is kept whole.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(n.into())
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(n.into())
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// An object's key looked up among the kept paths without allocating it.
struct Lookup<'a>(&'a Paths);

impl<'de, 'a> DeserializeSeed<'de> for Lookup<'a> {
    type Value = Option<(&'a str, &'a Keep)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'a> Visitor<'_> for Lookup<'a> {
    type Value = Option<(&'a str, &'a Keep)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0 .0.get_key_value(key).map(|(k, v)| (k.as_str(), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spliced(object: &Value, rv: &str) -> Option<Value> {
        with_resource_version(object.to_string().as_bytes(), rv).map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn the_resource_version_goes_into_metadata_and_nothing_else_moves() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b\"}{"}, "annotations": {"x": "[{\\\"}"}},
            "spec": {"containers": [{"name": "c", "args": ["}", "{", "\\"]}], "n": -1.5e3, "t": true, "z": null}});
        let mut want = pod.clone();
        want["metadata"]["resourceVersion"] = "42.7".into();
        assert_eq!(spliced(&pod, "42.7"), Some(want));
        // Spaces where serde_json would print none.
        let spaced = br#" { "kind" : "Pod" , "metadata" : { "name" : "p" } , "x" : [ 1 , 2 ] } "#;
        let out: Value = serde_json::from_slice(&with_resource_version(spaced, "3").unwrap()).unwrap();
        assert_eq!(out, json!({"kind": "Pod", "metadata": {"name": "p", "resourceVersion": "3"}, "x": [1, 2]}));
        // Empty metadata.
        assert_eq!(spliced(&json!({"metadata": {}}), "1"), Some(json!({"metadata": {"resourceVersion": "1"}})));
    }

    #[test]
    fn what_cannot_be_spliced_safely_is_left_to_a_parse() {
        // Already carries one (a duplicate key would read as the old one).
        assert_eq!(spliced(&json!({"metadata": {"resourceVersion": "9", "name": "p"}}), "1"), None);
        // A key with escapes might spell it.
        assert_eq!(with_resource_version(br#"{"metadata":{"resource\u0056ersion":"9"}}"#, "1"), None);
        // No metadata object, not an object, cut short.
        assert_eq!(spliced(&json!({"kind": "Pod"}), "1"), None);
        assert_eq!(spliced(&json!({"metadata": "p"}), "1"), None);
        assert_eq!(spliced(&json!([1]), "1"), None);
        assert_eq!(with_resource_version(br#"{"metadata":{"name":"p""#, "1"), None);
        assert_eq!(with_resource_version(br#"{"metadata":{"name":"p}"#, "1"), None);
        assert_eq!(with_resource_version(b"", "1"), None);
    }

    #[test]
    fn trimmed_objects_are_whole_but_for_their_managed_fields() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"managedFields": "a label, kept"},
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"managedFields": [1], "containers": [{"name": "c", "args": ["-1", 2.5, true, null]}]}});
        let Trimmed(read) = serde_json::from_slice(pod.to_string().as_bytes()).unwrap();
        let mut want = pod.clone();
        want["metadata"].as_object_mut().unwrap().remove("managedFields");
        assert_eq!(read, want);
        // From a value as from bytes; anything but an object is itself.
        assert_eq!(serde_json::from_value::<Trimmed>(pod).unwrap().0, want);
        assert_eq!(serde_json::from_str::<Trimmed>("[1,\"x\"]").unwrap().0, json!([1, "x"]));
        assert_eq!(serde_json::from_str::<Trimmed>(r#"{"metadata":7}"#).unwrap().0, json!({"metadata": 7}));
    }

    #[test]
    fn a_sparse_read_answers_selectors_as_the_whole_object_does() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "web"}, "annotations": {"big": "x"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}, "status": {"phase": "Running"}});
        let mut paths = Paths::default();
        paths.keep("metadata.labels");
        paths.keep("spec.nodeName");
        paths.keep("status.phase.deeper"); // through a string: nothing
        let sparse = paths.read(pod.to_string().as_bytes()).unwrap();
        assert_eq!(
            sparse,
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"nodeName": "n1"}, "status": {"phase": null}})
        );
        for (selector, want) in [("spec.nodeName=n1", true), ("spec.nodeName!=", true), ("metadata.name=p", false)] {
            let fields = super::super::selector::FieldSelector::parse(selector).unwrap();
            assert_eq!(fields.matches(&sparse), want, "{selector}");
        }
        // A shorter path keeps all under it, whichever comes first.
        let mut whole = Paths::default();
        whole.keep("metadata.labels.app");
        whole.keep("metadata");
        whole.keep("metadata.name");
        assert_eq!(whole.read(pod.to_string().as_bytes()).unwrap()["metadata"], pod["metadata"]);
        assert_eq!(whole.read(b"{\"metadata\":"), None);
        assert_eq!(Paths::default().read(b"[1,{}]"), Some(Value::Null));
    }
}
