//! `GET /v1/services[?namespace=NS]`: every service with its live allocations (SPEC §3).
//!
//! `replicas.desired` is the spec's count, `replicas.healthy` the allocations healthy now
//! (and not being drained); `allocations` lists those not yet stopped or failed, oldest
//! first. `memory` is in bytes; `started_at` is absent until the container started.

use super::{typed, NamespaceQuery, ALLOCS, SERVICES};
use crate::api::{respond, ApiState};
use axum::extract::{Query, State};
use axum::response::Response;
use mill_crds::{Alloc, AllocPhase, OwnerKind, Service};
use serde_json::{json, Value};
use std::sync::Arc;

/// The `/v1` word for an alloc's phase.
pub(crate) fn phase_word(phase: AllocPhase) -> Value {
    serde_json::to_value(phase).unwrap_or(Value::Null)
}

/// One allocation of a service, as `/v1/services` lists it.
fn allocation_json(alloc: &Alloc) -> Value {
    let status = alloc.status.clone().unwrap_or_default();
    let mut entry = json!({
        "id": alloc.metadata.name,
        "node": alloc.spec.node_name,
        "status": phase_word(status.phase),
        "address": status.address,
        "cpu": alloc.spec.template.cpu,
        "memory": alloc.spec.template.memory.bytes(),
    });
    if let Some(started) = &status.started_at {
        entry["started_at"] = json!(super::time(started));
    }
    entry
}

/// `GET /v1/services`.
pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    let namespace = query.namespace();
    let mut allocs: Vec<Alloc> = typed(&state.store, ALLOCS, Some(namespace));
    allocs.retain(|a| {
        a.spec.owner.kind == OwnerKind::Service
            && !a.status.as_ref().is_some_and(|s| s.phase.is_terminal())
    });
    allocs.sort_by(|a, b| {
        let at = |a: &Alloc| a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (at(a), &a.metadata.name).cmp(&(at(b), &b.metadata.name))
    });
    let services: Vec<Value> = typed::<Service>(&state.store, SERVICES, Some(namespace))
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .map(|service| {
            let name = service.metadata.name.clone().unwrap_or_default();
            let mine: Vec<&Alloc> = allocs
                .iter()
                .filter(|a| a.spec.owner.name == name)
                .collect();
            let healthy = mine
                .iter()
                .filter(|a| {
                    !a.spec.draining
                        && a.status.as_ref().map(|s| s.phase) == Some(AllocPhase::Healthy)
                })
                .count();
            json!({
                "name": name,
                "image": service.spec.image,
                "replicas": {"desired": service.spec.replicas, "healthy": healthy},
                "allocations": mine.iter().map(|a| allocation_json(a)).collect::<Vec<_>>(),
            })
        })
        .collect();
    respond::ok(&Value::Array(services))
}
