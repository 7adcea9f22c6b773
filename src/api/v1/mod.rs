//! mill's own HTTP API (SPEC §3), next to the Kubernetes-shaped one and behind the same
//! token. One file per endpoint group:
//! - `deploy` — `POST /v1/deploy`: validate a `.mill`, commit it in one transaction, stream
//!   the Deploy's progress as Server-Sent Events.

pub(crate) mod deploy;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

/// A `/v1` error: `{"error": message}` with `code`.
pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    super::respond::json(code, &json!({ "error": message.into() }))
}
