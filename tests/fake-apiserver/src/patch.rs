//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902).
//!
//! Strategic merge patches and server-side apply are both applied as merge patches: lists are
//! replaced, not merged by key, and no field ownership is tracked.

use serde_json::{Map, Value};

/// Applies an RFC 7386 merge patch to `target` in place.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Removes strategic-merge-patch directives (`$patch`, `$retainKeys`, `$setElementOrder/...`,
/// `$deleteFromPrimitiveList/...`) so that the rest can be applied as a merge patch.
pub(crate) fn strip_directives(patch: &mut Value) {
    match patch {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// Applies an RFC 6902 JSON patch to a copy of `doc`; the error says which operation failed.
pub(crate) fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut doc = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut doc, op).map_err(|e| format!("JSON patch operation {i} ({op}): {e}"))?;
    }
    Ok(doc)
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let field = |name: &str| -> Result<&str, String> {
        op.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing string field {name:?}"))
    };
    let value = || op.get("value").cloned().ok_or("missing field \"value\"");
    let path = field("path")?;
    match field("op")? {
        "add" => add(doc, path, value()?),
        "remove" => remove(doc, path).map(drop),
        "replace" => {
            let target = doc
                .pointer_mut(path)
                .ok_or_else(|| format!("path {path:?} does not exist"))?;
            *target = value()?;
            Ok(())
        }
        "move" => {
            let from = field("from")?;
            if path.starts_with(from) && path[from.len()..].starts_with('/') {
                return Err("cannot move a value into one of its children".into());
            }
            let moved = remove(doc, from)?;
            add(doc, path, moved)
        }
        "copy" => {
            let from = field("from")?;
            let copied = doc
                .pointer(from)
                .cloned()
                .ok_or_else(|| format!("path {from:?} does not exist"))?;
            add(doc, path, copied)
        }
        "test" => match doc.pointer(path) {
            Some(found) if *found == value()? => Ok(()),
            _ => Err(format!("test failed at {path:?}")),
        },
        other => Err(format!("unknown operation {other:?}")),
    }
}

/// Splits a JSON pointer into its parent pointer and its unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let slash = path
        .rfind('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    let token = path[slash + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..slash], token))
}

fn array_index(token: &str, len: usize) -> Result<usize, String> {
    match token.parse::<usize>() {
        Ok(i) if i <= len && (token == "0" || !token.starts_with('0')) => Ok(i),
        _ => Err(format!("array index {token:?} out of bounds")),
    }
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) if token == "-" => {
            items.push(value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let i = array_index(&token, items.len())?;
            items.insert(i, value);
            Ok(())
        }
        _ => Err(format!("parent of {path:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, token) = split_pointer(path)?;
    let removed = match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token),
        Some(Value::Array(items)) => match array_index(&token, items.len()) {
            Ok(i) if i < items.len() => Some(items.remove(i)),
            _ => None,
        },
        _ => None,
    };
    removed.ok_or_else(|| format!("path {path:?} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_follows_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }

    #[test]
    fn strategic_directives_are_dropped() {
        let mut patch =
            json!({"$patch": "merge", "spec": {"$setElementOrder/containers": [], "x": 1}});
        strip_directives(&mut patch);
        assert_eq!(patch, json!({"spec": {"x": 1}}));
    }

    #[test]
    fn json_patch_operations() {
        let doc = json!({"a": {"b": [1, 2]}, "c": "x", "k~/": 0});
        let ops = json!([
            {"op": "add", "path": "/a/b/1", "value": 9},
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "test", "path": "/k~0~1", "value": 0},
            {"op": "test", "path": "/e", "value": "y"}
        ]);
        assert_eq!(
            json_patch(&doc, &ops),
            Ok(json!({"a": {"b": [9, 2, 3]}, "c": "y", "e": "y", "k~/": 0}))
        );
    }

    #[test]
    fn json_patch_failures() {
        let doc = json!({"a": [1]});
        for ops in [
            json!([{"op": "test", "path": "/a/0", "value": 2}]),
            json!([{"op": "remove", "path": "/missing"}]),
            json!([{"op": "replace", "path": "/x", "value": 1}]),
            json!([{"op": "add", "path": "/a/5", "value": 1}]),
            json!([{"op": "add", "path": "/x/y", "value": 1}]),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!({"op": "add"}),
        ] {
            assert!(json_patch(&doc, &ops).is_err(), "{ops} should fail");
        }
    }
}
