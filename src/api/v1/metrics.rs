//! `GET /v1/metrics` (also `/metrics`): the node's metrics in the Prometheus text format,
//! and the layer that times API writes for them.

use crate::api::ApiState;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

/// The handler.
pub(crate) async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    match state.metrics.encode(&state.store) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => super::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        ),
    }
}

/// Times every write to the Kubernetes-shaped API (`/api`, `/apis`): the request until
/// the store answered, as `mill_api_write_duration_seconds`.
pub(crate) async fn time_writes(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let write = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && request.uri().path().starts_with("/api");
    let started = Instant::now();
    let answer = next.run(request).await;
    if write {
        state
            .metrics
            .observe_api_write(method.as_str(), started.elapsed());
    }
    answer
}
