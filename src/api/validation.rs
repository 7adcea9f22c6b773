//! Checks on incoming objects that need no store: names, unknown fields against the
//! kind's schema (`fieldValidation`), and size.

use super::resources::ResourceKind;
use super::status::Cause;
use serde_json::Value;

/// The largest object mill stores, as etcd's default request limit (1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// The fields of `metadata` (ObjectMeta) a client may send.
const OBJECT_META_FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// The fields of an ownerReference.
const OWNER_REFERENCE_FIELDS: [&str; 6] = [
    "apiVersion",
    "kind",
    "name",
    "uid",
    "controller",
    "blockOwnerDeletion",
];

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SECRET_NAME_MSG: &str = "a secret name must consist of alphanumeric characters, '-', '_' or '.' (regex used for validation is '[A-Za-z0-9._-]+')";

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Why `name` is not a valid name for `kind`, if it is not. Namespaces are DNS labels;
/// secrets follow SPEC §1 (`[A-Za-z0-9._-]+`, so `DB_URL` works); everything else is a
/// DNS-1123 subdomain.
pub fn name_problem(kind: &ResourceKind, name: &str) -> Option<Cause> {
    let (ok, why) = if kind.is_namespace() {
        (is_dns_label(name), DNS1123_LABEL_MSG)
    } else if kind.is_secret() {
        (
            !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                && name != "."
                && name != "..",
            SECRET_NAME_MSG,
        )
    } else {
        (is_dns_subdomain(name), DNS1123_SUBDOMAIN_MSG)
    };
    (!ok).then(|| Cause::invalid("metadata.name", format!("Invalid value: \"{name}\": {why}")))
}

/// Whether `namespace` can name a namespace.
pub fn valid_namespace(namespace: &str) -> bool {
    is_dns_label(namespace)
}

/// Every field of `obj` its kind's schema does not declare, as dotted paths
/// (`spec.foo`, `spec.routes[0].bar`).
pub fn unknown_fields(obj: &Value, kind: &ResourceKind) -> Vec<String> {
    let mut out = Vec::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => metadata_unknown(value, &mut out),
            _ => match kind.schema.get("properties").and_then(|p| p.get(key)) {
                Some(schema) => walk(value, schema, key, &mut out),
                None => out.push(key.clone()),
            },
        }
    }
    out
}

fn metadata_unknown(meta: &Value, out: &mut Vec<String>) {
    let Some(map) = meta.as_object() else { return };
    for (key, value) in map {
        if !OBJECT_META_FIELDS.contains(&key.as_str()) {
            out.push(format!("metadata.{key}"));
        } else if key == "ownerReferences" {
            for (i, owner) in value.as_array().into_iter().flatten().enumerate() {
                for field in owner.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !OWNER_REFERENCE_FIELDS.contains(&field.as_str()) {
                        out.push(format!("metadata.ownerReferences[{i}].{field}"));
                    }
                }
            }
        }
    }
}

fn walk(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, item) in map {
                let child = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(s), _) => walk(item, s, &child, out),
                    (None, Some(Value::Bool(true))) => {}
                    (None, Some(s @ Value::Object(_))) => walk(item, s, &child, out),
                    // Schemas built from enums or unions (anyOf/oneOf) are not walked.
                    (None, _) if properties.is_none() => {}
                    (None, _) => out.push(child),
                }
            }
        }
        Value::Array(items) => {
            if let Some(items_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item, items_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::Registry;
    use serde_json::json;

    #[test]
    fn names_follow_the_rules_of_each_kind() {
        let registry = Registry::new();
        let svc = registry.find("mill.dev", "services").unwrap();
        let secret = registry.find("", "secrets").unwrap();
        let ns = registry.find("", "namespaces").unwrap();
        assert!(name_problem(svc, "web-1.prod").is_none());
        for bad in ["Web", "-web", "web_1", "", "a..b"] {
            assert!(name_problem(svc, bad).is_some(), "{bad}");
        }
        assert!(name_problem(secret, "DB_URL").is_none());
        assert!(name_problem(secret, "office.database-url").is_none());
        assert!(name_problem(secret, "a/b").is_some());
        assert!(name_problem(ns, "prod").is_none());
        assert!(name_problem(ns, "a.b").is_some());
        let cause = name_problem(svc, "Bad").unwrap();
        assert_eq!(cause.field, "metadata.name");
        assert!(cause.message.contains("RFC 1123"));
    }

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        let registry = Registry::new();
        let svc = registry.find("mill.dev", "services").unwrap();
        let obj = json!({
            "apiVersion": "mill.dev/v1", "kind": "Service",
            "metadata": {"name": "web", "labels": {"a": "b"}, "colour": "red"},
            "spec": {"image": "x", "port": 1, "imagee": "typo", "env": {"ANY": "ok"},
                     "routes": [{"host": "a", "hots": "b"}], "health": {"path": "/"}},
            "extra": 1,
        });
        let mut found = unknown_fields(&obj, svc);
        found.sort();
        assert_eq!(
            found,
            [
                "extra",
                "metadata.colour",
                "spec.imagee",
                "spec.routes[0].hots"
            ]
        );
        let secret = registry.find("", "secrets").unwrap();
        let ok = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}, "stringData": {"x": "y"}});
        assert!(unknown_fields(&ok, secret).is_empty());
    }
}
