//! `/v1/volumes`: the namespace's Volume objects as `[{name, state, node, cloud_id}]`,
//! and their deletion, refused while a service still mounts the volume.

use super::secrets::NamespaceQuery;
use crate::api::{objects, ApiState};
use crate::store::{Key, Op, StoreError, Txn};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use mill_crds::{Service, Volume};
use serde_json::{json, Value};
use std::sync::Arc;

const VOLUMES: &str = "mill.dev/volumes";
const SERVICES: &str = "mill.dev/services";

/// `GET /v1/volumes`.
pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    let (volumes, _) = state.store.list(VOLUMES, Some(query.namespace()));
    let rows: Vec<Value> = volumes
        .iter()
        .filter_map(|v| serde_json::from_value::<Volume>(Value::clone(v)).ok())
        .map(|v| {
            let status = v.status.unwrap_or_default();
            json!({
                "name": v.metadata.name,
                "state": status.state,
                "node": status.node,
                "cloud_id": status.cloud_id,
            })
        })
        .collect();
    crate::api::respond::ok(&Value::Array(rows))
}

/// `DELETE /v1/volumes/{name}`: 409 while a service of the namespace mounts it.
pub(crate) async fn delete(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    let namespace = query.namespace();
    let key = Key {
        resource: VOLUMES.to_string(),
        namespace: Some(namespace.to_string()),
        name: name.clone(),
    };
    if let Err(err) = state.store.read_barrier().await {
        return super::secrets::store_failure(&err, &format!("volume \"{name}\""));
    }
    let Some(stored) = state.store.get(&key) else {
        return not_found(namespace, &name);
    };
    let (services, _) = state.store.list(SERVICES, Some(namespace));
    let users: Vec<String> = services
        .iter()
        .filter_map(|s| serde_json::from_value::<Service>(Value::clone(s)).ok())
        .filter(|s| {
            s.spec
                .volumes
                .iter()
                .any(|m| m.name == name && !m.ephemeral)
        })
        .filter_map(|s| s.metadata.name)
        .collect();
    if !users.is_empty() {
        return super::error(
            StatusCode::CONFLICT,
            format!(
                "volume \"{name}\" is used by service {}; remove it from the config and deploy first",
                users.join(", ")
            ),
        );
    }
    let txn = Txn {
        ops: vec![Op::Delete {
            key,
            // The check above holds for this version of the volume only.
            expected_rv: objects::rv_of(&stored).ok().flatten(),
            expected_uid: None,
        }],
        now: objects::now_rfc3339(),
    };
    match state.store.propose(txn).await {
        Ok(_) => crate::api::respond::ok(&json!({ "name": name })),
        Err(StoreError::NotFound(_)) => not_found(namespace, &name),
        Err(err) => super::secrets::store_failure(&err, &format!("volume \"{name}\"")),
    }
}

fn not_found(namespace: &str, name: &str) -> Response {
    super::error(
        StatusCode::NOT_FOUND,
        format!("volume \"{name}\" not found in namespace \"{namespace}\"; mill volume list shows the volumes"),
    )
}
