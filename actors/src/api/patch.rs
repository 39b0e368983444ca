//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902), as `kubectl label`,
//! `annotate`, `patch --type=merge|json` and `rollout undo` send them: the `json-patch`
//! crate's, behind the two calls the verbs use. (Strategic merge patch: `strategic.rs`.)

use serde_json::Value;

/// `target` with `patch` merged in: objects merge key by key, null deletes, anything
/// else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// `target` after the operations of `patch` (an array), all or nothing.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("not a JSON patch (an array of operations): {e}"))?;
    let mut doc = target.clone();
    json_patch::patch(&mut doc, &ops).map_err(|e| e.to_string())?;
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
