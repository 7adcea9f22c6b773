//! `/v1/secrets`: one-value secrets, the way `.mill` files reference them
//! (`${secret(NAME)}` reads the Secret's `value` key). They are core `v1` Secrets like
//! any other, sealed with the cluster key before they are proposed; the list answers
//! names only, never values.

use crate::api::validation::name_problem;
use crate::api::{objects, ApiState};
use crate::store::{Key, Op, Part, StoreError, Txn};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

const SECRETS: &str = "/secrets";
/// The data key a one-value secret keeps its value under.
const VALUE_KEY: &str = "value";

/// `?namespace=NS` (default `default`).
#[derive(Debug, Deserialize)]
pub(crate) struct NamespaceQuery {
    namespace: Option<String>,
}

impl NamespaceQuery {
    pub(crate) fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// The body of `PUT /v1/secrets/{name}`.
#[derive(Debug, Deserialize)]
pub(crate) struct SecretValue {
    value: String,
}

fn key(namespace: &str, name: &str) -> Key {
    Key {
        resource: SECRETS.to_string(),
        namespace: Some(namespace.to_string()),
        name: name.to_string(),
    }
}

fn not_found(namespace: &str, name: &str) -> Response {
    super::error(
        StatusCode::NOT_FOUND,
        format!("secret \"{name}\" not found in namespace \"{namespace}\"; mill secret list shows the secrets"),
    )
}

/// `GET /v1/secrets`: `[{name}]`.
pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    let (secrets, _) = state.store.list(SECRETS, Some(query.namespace()));
    let names: Vec<Value> = secrets
        .iter()
        .filter_map(|s| objects::name_of(s))
        .map(|name| json!({ "name": name }))
        .collect();
    crate::api::respond::ok(&Value::Array(names))
}

/// `GET /v1/secrets/{name}`: `{name, value}`.
pub(crate) async fn get(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    let namespace = query.namespace();
    let Some(stored) = state.store.get(&key(namespace, &name)) else {
        return not_found(namespace, &name);
    };
    let opened = match state.secrets.unseal(&stored) {
        Ok(opened) => opened,
        Err(e) => return super::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let data = opened["data"].as_object().cloned().unwrap_or_default();
    let encoded = data
        .get(VALUE_KEY)
        .or_else(|| (data.len() == 1).then(|| data.values().next()).flatten())
        .and_then(Value::as_str);
    let Some(encoded) = encoded else {
        return super::error(
            StatusCode::CONFLICT,
            format!("secret \"{name}\" has no \"{VALUE_KEY}\" key; read it with kubectl get secret {name} -o yaml"),
        );
    };
    let value = STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match value {
        Some(value) => crate::api::respond::ok(&json!({"name": name, "value": value})),
        None => super::error(
            StatusCode::CONFLICT,
            format!("secret \"{name}\" is not UTF-8 text; read it with kubectl get secret {name} -o yaml"),
        ),
    }
}

/// `PUT /v1/secrets/{name}` with `{value}`: creates or replaces the secret.
pub(crate) async fn put(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
    Json(body): Json<SecretValue>,
) -> Response {
    let namespace = query.namespace();
    let Some(kind) = state.registry.find("", "secrets") else {
        return super::error(StatusCode::INTERNAL_SERVER_ERROR, "no Secret kind");
    };
    if let Some(cause) = name_problem(kind, &name) {
        return super::error(
            StatusCode::BAD_REQUEST,
            format!("invalid secret name: {}", cause.message),
        );
    }
    match crate::api::namespace_exists(&state.store, namespace).await {
        Ok(true) => {}
        Ok(false) => {
            return super::error(
                StatusCode::NOT_FOUND,
                format!(
                    "namespace \"{namespace}\" not found; deploy to it first or pick another with -n"
                ),
            );
        }
        Err(err) => return super::store_error(&err),
    }
    let key = key(namespace, &name);
    let existing = state.store.get(&key);
    let mut object = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace},
        "data": {VALUE_KEY: STANDARD.encode(body.value.as_bytes())},
    });
    match &existing {
        Some(existing) => object["metadata"] = existing["metadata"].clone(),
        None => {
            let meta = objects::metadata_mut(&mut object);
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(objects::now_rfc3339()));
        }
    }
    if let Err(e) = state.secrets.seal(&mut object, existing.as_deref()) {
        return super::error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let op = match &existing {
        Some(existing) => Op::Update {
            key,
            object,
            expected_rv: objects::rv_of(existing).ok().flatten(),
            part: Part::Main,
        },
        None => Op::Create { key, object },
    };
    let txn = Txn {
        ops: vec![op],
        now: objects::now_rfc3339(),
    };
    match state.store.propose(txn).await {
        Ok(_) => crate::api::respond::ok(&json!({ "name": name })),
        Err(err) => store_failure(&err, &format!("secret \"{name}\"")),
    }
}

/// `DELETE /v1/secrets/{name}`.
pub(crate) async fn delete(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    let namespace = query.namespace();
    let txn = Txn {
        ops: vec![Op::Delete {
            key: key(namespace, &name),
            expected_rv: None,
            expected_uid: None,
        }],
        now: objects::now_rfc3339(),
    };
    match state.store.propose(txn).await {
        Ok(_) => crate::api::respond::ok(&json!({ "name": name })),
        Err(StoreError::NotFound(_)) => not_found(namespace, &name),
        Err(err) => store_failure(&err, &format!("secret \"{name}\"")),
    }
}

/// A store failure of a `/v1` write on `what`, worded for the operator.
pub(super) fn store_failure(err: &crate::store::StoreError, what: &str) -> Response {
    match err {
        StoreError::NotFound(_) => super::error(StatusCode::NOT_FOUND, format!("{what} not found")),
        StoreError::AlreadyExists(_) | StoreError::Conflict { .. } => super::error(
            StatusCode::CONFLICT,
            format!("{what} changed while this request was handled; retry"),
        ),
        StoreError::Unavailable(why) => super::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the cluster has no leader right now ({why}); retry in a moment"),
        ),
        StoreError::Internal(why) => super::error(StatusCode::INTERNAL_SERVER_ERROR, why.clone()),
    }
}
