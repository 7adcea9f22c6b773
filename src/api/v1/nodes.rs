//! `GET /v1/nodes`, `POST /v1/nodes/{id}/drain`, `DELETE /v1/nodes/{id}` (SPEC §6).
//!
//! A node's `id` is its name (`node-2`). Draining sets `spec.unschedulable`; the drain
//! planner then evicts its service allocs one at a time (each replaced elsewhere, healthy
//! first) and stops its tasks. A drain is refused (409, nothing changes) when the node runs
//! service allocs and no other ready, schedulable node exists: they could never move, and
//! the drain would never end. Removal is refused (409) while allocs are active there
//! ([`mill_controllers::drain::check_removal`]) and for the cluster's only member; otherwise
//! the Node object is deleted first (while the cluster is whole) and then the node leaves
//! the Raft membership. Removing the leader works the same way: openraft commits the
//! membership without it and it steps down, and the others elect a new leader. If the
//! membership change fails after the Node object is gone, `DELETE /v1/nodes/{raft id}`
//! finishes it. Both writes re-read and check again when the Node changed under them (its
//! status moves with every heartbeat).

use super::{error, kept_changing, object, rv_of, store_error, typed, ALLOCS, ATTEMPTS, NODES};
use crate::api::{objects, respond, ApiState};
use crate::store::{Op, Part, Store, StoreError, Txn};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use mill_controllers::View;
use mill_crds::{Alloc, Node, NodeState, OwnerKind};
use serde_json::{json, Value};
use std::sync::Arc;

/// `ready`, `draining` or `down`, as `/v1` names a node's state.
pub(crate) fn status_word(node: &Node) -> &'static str {
    let state = node.status.as_ref().map(|s| s.state).unwrap_or_default();
    match state {
        NodeState::Down => "down",
        NodeState::Draining => "draining",
        NodeState::Ready if node.spec.unschedulable => "draining",
        NodeState::Ready => "ready",
    }
}

/// Whether an alloc still holds its node (not stopped or failed).
fn is_live(alloc: &Alloc) -> bool {
    !alloc
        .status
        .as_ref()
        .map(|s| s.phase)
        .unwrap_or_default()
        .is_terminal()
}

fn live_on<'a>(allocs: &'a [Alloc], node: &'a str) -> impl Iterator<Item = &'a Alloc> + 'a {
    allocs
        .iter()
        .filter(move |a| a.spec.node_name.as_deref() == Some(node) && is_live(a))
}

/// A node's capacity (from its heartbeat) minus what its live allocs reserve now (from the
/// store, so a deploy shows at once rather than with the node's next heartbeat): cores, bytes.
pub(crate) fn available(node: &Node, allocs: &[Alloc]) -> (f64, u64) {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let capacity = node.status.as_ref().map(|s| s.capacity).unwrap_or_default();
    let (cpu, memory) = live_on(allocs, name).fold((0.0, 0u64), |(cpu, memory), a| {
        (
            cpu + a.spec.template.cpu,
            memory + a.spec.template.memory.bytes(),
        )
    });
    (
        (capacity.cpu - cpu).max(0.0),
        capacity.memory.bytes().saturating_sub(memory),
    )
}

/// One entry of `GET /v1/nodes`.
pub(crate) fn node_json(node: &Node, allocs: &[Alloc]) -> Value {
    let name = node.metadata.name.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let (cpu_available, memory_available) = available(node, allocs);
    json!({
        "id": name,
        "address": node.spec.api_address,
        "status": status_word(node),
        "cpu_total": status.capacity.cpu,
        "cpu_available": cpu_available,
        "memory_total_bytes": status.capacity.memory.bytes(),
        "memory_available_bytes": memory_available,
        "alloc_count": live_on(allocs, &name).count(),
    })
}

/// `GET /v1/nodes`: every node, by name.
pub(crate) async fn list(State(state): State<Arc<ApiState>>) -> Response {
    let nodes: Vec<Node> = typed(&state.store, NODES, None);
    let allocs: Vec<Alloc> = typed(&state.store, ALLOCS, None);
    let body: Vec<Value> = nodes.iter().map(|n| node_json(n, &allocs)).collect();
    respond::ok(&Value::Array(body))
}

fn no_such_node(id: &str, store: &Store) -> Response {
    let names: Vec<String> = typed::<Node>(store, NODES, None)
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no node {id:?} in the cluster (nodes: {}); see mill nodes",
            names.join(", ")
        ),
    )
}

/// `POST /v1/nodes/{id}/drain`: make the node unschedulable; the controllers empty it.
/// Answers the node as `GET /v1/nodes` shows it.
pub(crate) async fn drain(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    for _ in 0..ATTEMPTS {
        if let Some(answer) = drain_once(&state.store, &id).await {
            return answer;
        }
    }
    kept_changing(&format!("node {id}"))
}

/// One drain attempt: the answer, or `None` when the Node changed since it was read.
async fn drain_once(store: &Store, id: &str) -> Option<Response> {
    if let Err(err) = store.read_barrier().await {
        return Some(store_error(&err));
    }
    let Some((key, stored, node)) = object::<Node>(store, NODES, None, id) else {
        return Some(no_such_node(id, store));
    };
    let allocs: Vec<Alloc> = typed(store, ALLOCS, None);
    if node.spec.unschedulable {
        return Some(respond::ok(&node_json(&node, &allocs)));
    }
    let services = live_on(&allocs, id)
        .filter(|a| a.spec.owner.kind == OwnerKind::Service)
        .count();
    let elsewhere = typed::<Node>(store, NODES, None).into_iter().any(|n| {
        n.metadata.name.as_deref() != Some(id)
            && !n.spec.unschedulable
            && n.status.as_ref().map(|s| s.state).unwrap_or_default() == NodeState::Ready
    });
    if services > 0 && !elsewhere {
        return Some(error(
            StatusCode::CONFLICT,
            format!(
                "cannot drain {id}: it runs {services} service allocation(s) and no other ready node can take them; join another node first (mill join), or remove those services from the config; nothing was changed"
            ),
        ));
    }
    let mut updated = stored.clone();
    updated["spec"]["unschedulable"] = json!(true);
    let txn = Txn {
        ops: vec![Op::Update {
            key,
            object: updated,
            expected_rv: rv_of(&stored),
            part: Part::Main,
        }],
        now: objects::now_rfc3339(),
    };
    let applied = match store.propose(txn).await {
        Ok(applied) => applied,
        Err(StoreError::Conflict { .. }) => return None,
        Err(err) => return Some(store_error(&err)),
    };
    let node = applied
        .objects
        .first()
        .cloned()
        .flatten()
        .and_then(|o| serde_json::from_value::<Node>(o).ok())
        .unwrap_or(node);
    Some(respond::ok(&node_json(&node, &allocs)))
}

/// What one removal attempt came to.
enum Removal {
    /// The Node object is deleted: take Raft member `0` out of the membership.
    Deleted(u64),
    /// The answer, as it is.
    Answer(Response),
    /// The Node changed since it was read: read again.
    Changed,
}

/// `DELETE /v1/nodes/{id}`: remove a drained (or empty) node from the cluster.
pub(crate) async fn remove(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    let store = &state.store;
    for _ in 0..ATTEMPTS {
        match remove_once(store, &id).await {
            Removal::Deleted(raft_id) => return leave_membership(store, raft_id, &id).await,
            Removal::Answer(answer) => return answer,
            Removal::Changed => {}
        }
    }
    kept_changing(&format!("node {id}"))
}

async fn remove_once(store: &Store, id: &str) -> Removal {
    if let Err(err) = store.read_barrier().await {
        return Removal::Answer(store_error(&err));
    }
    let voters = store.raft_info().voters;
    let Some((key, stored, node)) = object::<Node>(store, NODES, None, id) else {
        // A removal whose membership change failed after the Node object went.
        if let Some(raft_id) = id
            .parse::<u64>()
            .ok()
            .filter(|r| voters.iter().any(|v| v.0 == *r))
        {
            return Removal::Deleted(raft_id);
        }
        return Removal::Answer(no_such_node(id, store));
    };
    let view = View {
        allocs: typed::<Alloc>(store, ALLOCS, None)
            .into_iter()
            .map(Arc::new)
            .collect(),
        ..View::default()
    };
    if let Err(refused) = mill_controllers::drain::check_removal(&view, &node) {
        return Removal::Answer(error(StatusCode::CONFLICT, format!("{id}: {refused}")));
    }
    let raft_id = node.spec.raft_id;
    if voters.iter().all(|v| v.0 == raft_id) {
        return Removal::Answer(error(
            StatusCode::CONFLICT,
            format!("cannot remove {id}: it is the cluster's only member, and the cluster would end with it; nothing was changed"),
        ));
    }
    let txn = Txn {
        ops: vec![Op::Delete {
            key,
            expected_rv: rv_of(&stored),
            expected_uid: stored["metadata"]["uid"].as_str().map(str::to_string),
        }],
        now: objects::now_rfc3339(),
    };
    match store.propose(txn).await {
        Ok(_) => Removal::Deleted(raft_id),
        Err(StoreError::Conflict { .. }) => Removal::Changed,
        Err(err) => Removal::Answer(store_error(&err)),
    }
}

/// Takes Raft node `raft_id` (named `name`) out of the membership.
async fn leave_membership(store: &Store, raft_id: u64, name: &str) -> Response {
    match store.remove_member(raft_id).await {
        Ok(()) => respond::ok(&json!({"id": name, "removed": true})),
        Err(err) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{name} was removed from the node list but is still a Raft member ({err}); finish with: mill remove {raft_id}"
            ),
        ),
    }
}
