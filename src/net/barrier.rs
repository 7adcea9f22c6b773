//! The node side of the routing barrier: `GET
//! /internal/routing/applied?revision=R&timeoutMs=T` (cluster token as bearer) answers
//! the moment this node's routing table, which DNS and the VIP listeners read, has applied
//! store revision `R`, or after `T` with what it has. The answer also carries the
//! connections/requests in flight per alloc through this node, so that a drain waits for
//! them. The controllers' `barrier` module is the client.

use super::table::Routing;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The longest one long-poll waits, whatever it asks for.
const LONGEST_WAIT: Duration = Duration::from_secs(60);

struct BarrierState {
    routing: Routing,
    token: String,
    poll: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppliedQuery {
    revision: u64,
    #[serde(default)]
    timeout_ms: u64,
}

/// The answer (the controllers' `barrier::Applied`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Applied {
    applied: u64,
    in_flight: Vec<InFlight>,
}

#[derive(Serialize)]
struct InFlight {
    namespace: String,
    name: String,
    count: u32,
}

/// The barrier route; `poll` (`MILL_ROUTING_POLL_MS`) is how often a waiting request
/// nudges the table to catch up with writes that sent it no event.
pub fn router(routing: Routing, token: String, poll: Duration) -> Router {
    Router::new()
        .route("/internal/routing/applied", get(applied))
        .with_state(Arc::new(BarrierState {
            routing,
            token,
            poll,
        }))
}

async fn applied(
    State(state): State<Arc<BarrierState>>,
    headers: HeaderMap,
    Query(query): Query<AppliedQuery>,
) -> Response {
    if !authorized(&headers, &state.token) {
        let error = "the routing barrier needs the cluster token as bearer token";
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": error })),
        )
            .into_response();
    }
    let wait = Duration::from_millis(query.timeout_ms).min(LONGEST_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = state.routing.changes();
    loop {
        let table = state.routing.load();
        if table.revision >= query.revision || tokio::time::Instant::now() >= deadline {
            let in_flight = table
                .loads
                .iter()
                .map(|(alloc, load)| (alloc, load.in_flight()))
                .filter(|(_, count)| *count > 0)
                .map(|(alloc, count)| InFlight {
                    namespace: alloc.namespace.clone(),
                    name: alloc.name.clone(),
                    count,
                })
                .collect();
            return Json(Applied {
                applied: table.revision,
                in_flight,
            })
            .into_response();
        }
        state.routing.nudge();
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(state.poll) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())))
}
