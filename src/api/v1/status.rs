//! `GET /v1/status`: the cluster in numbers (SPEC §3).
//!
//! `service_count` counts the Services of every namespace (not those being deleted);
//! `task_count` the task runs not yet ended; cpu and memory are summed over the nodes
//! (`available` only over ready ones, what the scheduler can still place on: capacity
//! minus what live allocs reserve, read from the store, not a heartbeat late); `leader` is
//! the leader's node name (`null` during an election). Beyond SPEC's fields, `node` names
//! the node that answered (how `mill leave` finds the node `--address` points at).

use super::{typed, ALLOCS, NODES, SERVICES};
use crate::api::{respond, ApiState};
use axum::extract::State;
use axum::response::Response;
use mill_crds::{Alloc, Node, OwnerKind, Service};
use serde_json::json;
use std::sync::Arc;

/// `GET /v1/status`.
pub(crate) async fn status(State(state): State<Arc<ApiState>>) -> Response {
    let store = &state.store;
    let nodes: Vec<Node> = typed(store, NODES, None);
    let services = typed::<Service>(store, SERVICES, None)
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .count();
    let allocs = typed::<Alloc>(store, ALLOCS, None);
    let tasks = allocs
        .iter()
        .filter(|a| a.spec.owner.kind == OwnerKind::Task)
        .filter(|a| !a.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
        .count();
    let statuses: Vec<_> = nodes
        .iter()
        .map(|n| (n, n.status.clone().unwrap_or_default()))
        .collect();
    let available: Vec<(f64, u64)> = nodes
        .iter()
        .filter(|n| super::nodes::status_word(n) == "ready")
        .map(|n| super::nodes::available(n, &allocs))
        .collect();
    let name_of = |id: u64| {
        nodes
            .iter()
            .find(|n| n.spec.raft_id == id)
            .and_then(|n| n.metadata.name.clone())
    };
    let leader = store.raft_info().leader_id.and_then(name_of);
    respond::ok(&json!({
        "node_count": nodes.len(),
        "service_count": services,
        "task_count": tasks,
        "cpu_total": statuses.iter().map(|(_, s)| s.capacity.cpu).sum::<f64>(),
        "cpu_available": available.iter().map(|a| a.0).sum::<f64>(),
        "memory_total_bytes": statuses.iter().map(|(_, s)| s.capacity.memory.bytes()).sum::<u64>(),
        "memory_available_bytes": available.iter().map(|a| a.1).sum::<u64>(),
        "leader": leader,
        "node": name_of(store.node_id()),
    }))
}
