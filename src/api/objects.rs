//! Object helpers: metadata access, the server-owned fields, timestamps and the typed
//! normal form of an object.

use super::status::Cause;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// An object in its normal form: defaults filled in and unknown fields pruned by its
/// Rust type, `metadata` as sent.
pub type Normalized = Value;

/// Metadata fields that are never stored empty: kube-rs' finalizer helper tests
/// `/metadata/finalizers` for null, so an empty list must not be there.
const OMIT_WHEN_EMPTY: [&str; 4] = ["finalizers", "labels", "annotations", "ownerReferences"];

/// The string at `metadata.<field>`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata.name`.
pub fn name_of(obj: &Value) -> Option<&str> {
    meta_str(obj, "name").filter(|n| !n.is_empty())
}

/// `metadata.resourceVersion` as a number; `Err` if it is set but not one of ours.
pub fn rv_of(obj: &Value) -> Result<Option<u64>, String> {
    match meta_str(obj, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid resourceVersion {rv:?}: not one this server issued")),
    }
}

/// The object's `metadata` map, created if missing or not a map.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().map(|m| {
        let entry = m
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        entry
    });
    match map.and_then(Value::as_object_mut) {
        Some(m) => m,
        // Unreachable: both levels were made maps just above.
        None => unreachable!("metadata is a map"),
    }
}

/// Drops what clients may not set and what must not be stored empty.
pub fn clean_metadata(obj: &mut Value) {
    let meta = metadata_mut(obj);
    meta.remove("managedFields");
    meta.remove("selfLink");
    for field in OMIT_WHEN_EMPTY {
        let empty = match meta.get(field) {
            Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            _ => false,
        };
        if empty {
            meta.remove(field);
        }
    }
}

/// Now, as Kubernetes writes timestamps: RFC 3339, whole seconds, `Z`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Checks `obj` against the Rust type `T` and returns its normal form: every top-level
/// field but `metadata` as `T` serialises it (defaults filled in, unknown fields pruned,
/// like a structural CRD schema), `metadata` exactly as given.
pub fn normalize_typed<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Normalized, Cause> {
    let typed: T = serde_path_to_error::deserialize(obj).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        // A missing field is reported at its parent; name the field itself.
        let field = match message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            Some(missing) if path == "." => missing.to_string(),
            Some(missing) => format!("{path}.{missing}"),
            None if path == "." => String::new(),
            None => path,
        };
        if message.starts_with("missing field") {
            Cause::required(field)
        } else {
            Cause::invalid(field, message)
        }
    })?;
    let typed = serde_json::to_value(typed)
        .map_err(|err| Cause::invalid("", format!("cannot serialise the object: {err}")))?;
    let mut out = Map::new();
    if let Value::Object(fields) = typed {
        for (key, value) in fields {
            if key != "metadata" && !value.is_null() {
                out.insert(key, value);
            }
        }
    }
    for key in ["apiVersion", "kind", "metadata"] {
        if let Some(value) = obj.get(key) {
            out.insert(key.to_string(), value.clone());
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_normal_form_fills_defaults_and_prunes_unknown_fields() {
        let obj = json!({
            "apiVersion": "mill.dev/v1", "kind": "Service",
            "metadata": {"name": "web", "labels": {"a": "b"}},
            "spec": {"image": "web:1", "port": 80, "bogus": true},
        });
        let out = normalize_typed::<mill_crds::Service>(&obj).unwrap();
        assert_eq!(out["spec"]["replicas"], 1);
        assert_eq!(out["spec"]["memory"], "256M");
        assert!(out["spec"].get("bogus").is_none());
        assert_eq!(out["metadata"], obj["metadata"]);
    }

    #[test]
    fn typed_errors_name_the_field() {
        let obj = json!({
            "apiVersion": "mill.dev/v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"image": "web:1", "port": "eighty"},
        });
        let cause = normalize_typed::<mill_crds::Service>(&obj).unwrap_err();
        assert_eq!(cause.field, "spec.port");
        let obj = json!({"apiVersion": "mill.dev/v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"port": 80}});
        let cause = normalize_typed::<mill_crds::Service>(&obj).unwrap_err();
        assert_eq!(cause.field, "spec.image");
        assert_eq!(cause.reason, "FieldValueRequired");
    }

    #[test]
    fn empty_metadata_lists_are_not_stored() {
        let mut obj = json!({"metadata": {"name": "a", "finalizers": [], "labels": {}, "managedFields": [1]}});
        clean_metadata(&mut obj);
        assert_eq!(obj, json!({"metadata": {"name": "a"}}));
    }

    #[test]
    fn timestamps_are_whole_seconds_in_utc() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20);
        assert!(now.ends_with('Z'));
    }
}
