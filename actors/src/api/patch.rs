//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902), as `kubectl label`,
//! `annotate`, `patch --type=merge|json` and `rollout undo` send them. (Strategic
//! merge, which knows list merge keys, comes with `kubectl apply`; until then a
//! strategic patch is applied as a merge patch.)

use serde_json::Value;

/// `target` with `patch` merged in: objects merge key by key, null deletes, anything
/// else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            let mut out = t.clone();
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(t.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (_, Value::Object(p)) => merge_patch(&Value::Object(Default::default()), &Value::Object(p.clone())),
        (_, p) => p.clone(),
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The parent of the location `path` names, and the last token.
fn parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let tokens: Vec<String> = path.split('/').skip(1).map(unescape).collect();
    let (last, walk) = tokens.split_last().ok_or_else(|| format!("path {path:?} names the whole document"))?;
    let mut cur = doc;
    for t in walk {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("path {path:?}: no {t:?}"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("path {path:?}: {t:?} is not an index"))?;
                a.get_mut(i).ok_or_else(|| format!("path {path:?}: index {i} out of range"))?
            }
            _ => return Err(format!("path {path:?}: {t:?} is inside a value")),
        };
    }
    Ok((cur, last.clone()))
}

fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    doc.pointer(path)
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (p, last) = parent(doc, path)?;
    match p {
        Value::Object(m) => m.remove(&last).ok_or_else(|| format!("path {path:?} does not exist")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("{last:?} is not an index"))?;
            (i < a.len()).then(|| a.remove(i)).ok_or_else(|| format!("index {i} out of range"))
        }
        _ => Err(format!("path {path:?} is inside a value")),
    }
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (p, last) = parent(doc, path)?;
    match p {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("{last:?} is not an index"))?;
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("path {path:?} is inside a value")),
    }
}

/// `target` after the operations of `patch` (an array), all or nothing.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch.as_array().ok_or("a JSON patch is an array of operations")?;
    let mut doc = target.clone();
    for op in ops {
        let path = op["path"].as_str().ok_or("every operation needs a path")?;
        let value = || op.get("value").cloned().ok_or(format!("{} at {path:?} needs a value", op["op"]));
        match op["op"].as_str() {
            Some("add") => add(&mut doc, path, value()?)?,
            Some("remove") => {
                remove(&mut doc, path)?;
            }
            Some("replace") => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            Some("move") | Some("copy") => {
                let from = op["from"].as_str().ok_or("move and copy need a from")?;
                let v = if op["op"] == "move" {
                    remove(&mut doc, from)?
                } else {
                    get(&doc, from).cloned().ok_or(format!("from {from:?} does not exist"))?
                };
                add(&mut doc, path, v)?;
            }
            Some("test") => {
                if get(&doc, path) != Some(&value()?) {
                    return Err(format!("test at {path:?} failed"));
                }
            }
            other => return Err(format!("unknown patch operation {other:?}")),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let p = json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}});
        assert_eq!(merge_patch(&t, &p), json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}}));
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let t = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"list": [1, 2, 3]}});
        let p = json!([
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "replace", "path": "/spec/list/0", "value": 9},
            {"op": "remove", "path": "/spec/list/1"},
            {"op": "add", "path": "/spec/list/-", "value": 4},
            {"op": "test", "path": "/metadata/labels/a", "value": "1"},
            {"op": "copy", "from": "/metadata/labels/a", "path": "/spec/copied"},
        ]);
        let out = json_patch(&t, &p).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"a": "1", "b/c": "2"}}, "spec": {"list": [9, 3, 4], "copied": "1"}})
        );
        assert!(json_patch(&t, &json!([{"op": "test", "path": "/metadata/labels/a", "value": "2"}])).is_err());
        assert!(json_patch(&t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&t, &json!({"op": "add"})).is_err());
    }
}
