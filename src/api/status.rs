//! API errors as Kubernetes `metav1.Status` responses.
//!
//! Every failure the API answers is an [`ApiError`]: a status code, a machine-readable
//! `reason` (the `StatusReason` clients switch on) and the human message kubectl prints.

use super::resources::ResourceKind;
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// One reason an object is invalid: a field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The dotted field path (`spec.port`, `metadata.name`).
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`...
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Cause {
    /// An invalid value at `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: message.into(),
        }
    }

    /// A missing value at `field`.
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueRequired",
            message: "Required value".to_string(),
        }
    }
}

/// What the error is about, for `Status.details`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// The object's name.
    pub name: Option<String>,
    /// The API group (`""` for core).
    pub group: Option<String>,
    /// The resource (plural), as Kubernetes puts it in `details.kind`.
    pub kind: Option<String>,
    /// Field-level causes, for `Invalid`.
    pub causes: Vec<Cause>,
}

/// A failed API request, rendered as a `metav1.Status` with the matching HTTP code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ApiError {
    /// The HTTP status code (also `Status.code`).
    pub code: StatusCode,
    /// The `StatusReason` (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// The human-readable message.
    pub message: String,
    /// What the error is about (boxed: errors travel in every `Result` of the API).
    pub details: Option<Box<Details>>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, kind: &ResourceKind, name: &str) -> ApiError {
        self.details = Some(Box::new(Details {
            name: Some(name.to_string()),
            group: Some(kind.group.clone()),
            kind: Some(kind.plural.clone()),
            causes: Vec::new(),
        }));
        self
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 401: no or a wrong bearer token.
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// 403: the request is understood but not allowed.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 404 for a path that names no resource.
    pub fn no_such_path() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 404 for a missing object: `services.mill.dev "foo" not found`.
    pub fn not_found(kind: &ResourceKind, name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", kind.group_resource()),
        )
        .about(kind, name)
    }

    /// 409 for a create whose name is taken.
    pub fn already_exists(kind: &ResourceKind, name: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.group_resource()),
        )
        .about(kind, name)
    }

    /// 409 for a write based on a stale resourceVersion.
    pub fn conflict(kind: &ResourceKind, name: &str) -> ApiError {
        ApiError::conflict_because(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 with a specific explanation (failed preconditions).
    pub fn conflict_because(kind: &ResourceKind, name: &str, why: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                kind.group_resource()
            ),
        )
        .about(kind, name)
    }

    /// 422: the object fails validation; `causes` say where.
    pub fn invalid(kind: &ResourceKind, name: &str, causes: Vec<Cause>) -> ApiError {
        let rendered: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let list = match rendered.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} \"{name}\" is invalid: {list}", kind.qualified_kind()),
        )
        .about(kind, name);
        if let Some(details) = err.details.as_mut() {
            // Invalid names the kind itself (kubectl prints "The Service "x" is invalid").
            details.kind = Some(kind.kind.clone());
            details.causes = causes;
        }
        err
    }

    /// 405: the resource does not support the verb.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    /// 415: a body or patch type the resource does not accept.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            message,
        )
    }

    /// 413: the object is larger than the store accepts.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            message,
        )
    }

    /// 410: a resourceVersion older than the retained history.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GONE, "Expired", message)
    }

    /// 503: the store cannot serve right now (no Raft leader).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    /// 504: waiting for a resourceVersion the store has not reached.
    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message)
    }

    /// 500: a bug or a storage failure.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// Maps a store failure on `kind`/`name` to the Kubernetes error clients expect.
    pub fn from_store(err: StoreError, kind: &ResourceKind, name: &str) -> ApiError {
        match err {
            StoreError::NotFound(key) => ApiError::not_found(kind, &key.name),
            StoreError::AlreadyExists(key) => ApiError::already_exists(kind, &key.name),
            StoreError::Conflict { key, .. } => ApiError::conflict(kind, &key.name),
            StoreError::Unavailable(why) => ApiError::unavailable(format!(
                "the cluster store has no leader right now ({why}); retry shortly"
            )),
            StoreError::Internal(why) => {
                let _ = name;
                ApiError::internal(format!("the cluster store failed: {why}"))
            }
        }
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            let mut d = serde_json::Map::new();
            if let Some(name) = &details.name {
                d.insert("name".into(), json!(name));
            }
            if let Some(group) = &details.group {
                d.insert("group".into(), json!(group));
            }
            if let Some(kind) = &details.kind {
                d.insert("kind".into(), json!(kind));
            }
            if !details.causes.is_empty() {
                let causes: Vec<Value> = details
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                d.insert("causes".into(), Value::Array(causes));
            }
            status["details"] = Value::Object(d);
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        super::respond::json(self.code, &self.to_status())
    }
}

/// The `Status` of a successful delete (`kubectl` accepts it or the object).
pub fn success(kind: &ResourceKind, name: &str, uid: Option<&str>) -> Value {
    let mut details = json!({"name": name, "group": kind.group, "kind": kind.plural});
    if let Some(uid) = uid {
        details["uid"] = json!(uid);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::Registry;

    #[test]
    fn not_found_reads_like_kubernetes() {
        let registry = Registry::new();
        let kind = registry.find("mill.dev", "services").unwrap();
        let status = ApiError::not_found(kind, "foo").to_status();
        assert_eq!(status["message"], "services.mill.dev \"foo\" not found");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(status["details"]["kind"], "services");
        assert_eq!(status["details"]["group"], "mill.dev");
    }

    #[test]
    fn conflict_carries_the_message_kubectl_prints() {
        let registry = Registry::new();
        let kind = registry.find("", "secrets").unwrap();
        let status = ApiError::conflict(kind, "s").to_status();
        assert_eq!(
            status["message"],
            "Operation cannot be fulfilled on secrets \"s\": the object has been modified; please apply your changes to the latest version and try again"
        );
        assert_eq!(status["code"], 409);
    }

    #[test]
    fn invalid_lists_every_cause_with_its_field() {
        let registry = Registry::new();
        let kind = registry.find("mill.dev", "services").unwrap();
        let err = ApiError::invalid(
            kind,
            "web",
            vec![
                Cause::invalid("spec.port", "bad"),
                Cause::required("spec.image"),
            ],
        );
        let status = err.to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(
            status["message"],
            "Service.mill.dev \"web\" is invalid: [spec.port: bad, spec.image: Required value]"
        );
        assert_eq!(status["details"]["causes"][1]["field"], "spec.image");
    }
}
