//! PATCH bodies: JSON merge patch, JSON patch (RFC 6902), strategic merge patch (for the
//! core kinds, as a merge patch that understands the `$` directives kubectl sends) and
//! server-side apply (a merge upsert).

use super::resources::ResourceKind;
use super::status::ApiError;
use serde_json::Value;

/// The patch type, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/strategic-merge-patch+json`: core kinds only.
    StrategicMerge,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply,
}

impl PatchType {
    /// The patch type of `content_type` for `kind`; 415 for types the kind does not accept.
    pub fn from_content_type(
        content_type: &str,
        kind: &ResourceKind,
    ) -> Result<PatchType, ApiError> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let patch_type = match essence.as_str() {
            "application/merge-patch+json" => PatchType::Merge,
            "application/json-patch+json" => PatchType::Json,
            "application/strategic-merge-patch+json" if kind.is_core() => PatchType::StrategicMerge,
            "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
            _ => {
                return Err(ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                    if kind.is_core() { ", application/strategic-merge-patch+json" } else { "" }
                )))
            }
        };
        Ok(patch_type)
    }
}

/// Parses a patch body as JSON, or as YAML for apply.
pub fn parse_body(patch_type: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    match patch_type {
        PatchType::Apply => super::request::parse_yaml(body),
        _ => super::request::parse_json(body),
    }
}

/// Removes strategic-merge directives (`$patch`, `$retainKeys`, `$setElementOrder/..`,
/// `$deleteFromPrimitiveList/..`) so what is left is a plain merge patch.
fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|key, _| !key.starts_with('$'));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// Applies `patch` (already parsed) of `patch_type` to `target`.
pub fn apply(patch_type: PatchType, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = target.clone();
    match patch_type {
        PatchType::Merge | PatchType::Apply => json_patch::merge(&mut doc, patch),
        PatchType::StrategicMerge => {
            let mut patch = patch.clone();
            strip_directives(&mut patch);
            json_patch::merge(&mut doc, &patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(&mut doc, &ops).map_err(|e| ApiError {
                code: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                reason: "Invalid",
                message: format!("the JSON patch could not be applied: {e}"),
                details: None,
            })?;
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::Registry;
    use serde_json::json;

    fn base() -> Value {
        json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"replicas": 1, "env": {"A": "1"}}})
    }

    #[test]
    fn merge_patch_sets_and_removes_fields() {
        let out = apply(
            PatchType::Merge,
            &base(),
            &json!({"spec": {"replicas": 3, "env": {"A": null, "B": "2"}}, "metadata": {"labels": {"y": null}}}),
        )
        .unwrap();
        assert_eq!(out["spec"], json!({"replicas": 3, "env": {"B": "2"}}));
        assert_eq!(out["metadata"]["labels"], json!({"x": "1"}));
    }

    #[test]
    fn json_patch_applies_ops_and_fails_a_false_test() {
        let out = apply(
            PatchType::Json,
            &base(),
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 5},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]),
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        assert_eq!(out["metadata"]["finalizers"], json!(["f"]));
        let err = apply(
            PatchType::Json,
            &out,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        let err = apply(PatchType::Json, &out, &json!({"not": "a list"})).unwrap_err();
        assert_eq!(err.code, 400);
    }

    #[test]
    fn strategic_merge_ignores_directives() {
        let out = apply(
            PatchType::StrategicMerge,
            &base(),
            &json!({"metadata": {"$setElementOrder/finalizers": ["a"], "labels": {"z": "3", "$patch": "merge"}}}),
        )
        .unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"x": "1", "y": "2", "z": "3"})
        );
        assert!(out["metadata"].get("$setElementOrder/finalizers").is_none());
    }

    #[test]
    fn strategic_merge_is_refused_for_mill_kinds_only() {
        let registry = Registry::new();
        let svc = registry.find("mill.dev", "services").unwrap();
        let secret = registry.find("", "secrets").unwrap();
        let smp = "application/strategic-merge-patch+json";
        assert_eq!(
            PatchType::from_content_type(smp, svc).unwrap_err().code,
            415
        );
        assert_eq!(
            PatchType::from_content_type(smp, secret).unwrap(),
            PatchType::StrategicMerge
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8", svc)
                .unwrap(),
            PatchType::Merge
        );
        assert_eq!(
            PatchType::from_content_type("text/plain", svc)
                .unwrap_err()
                .code,
            415
        );
    }
}
