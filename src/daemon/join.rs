//! Joining a cluster: the `/v1/join` routes a member serves and the client side `mill join`
//! runs against them.
//!
//! Two steps, because the new node must already serve Raft RPC under its id before the
//! leader starts replicating to it:
//! 1. `POST /v1/join` — the cluster allocates the next node id and name (by creating the
//!    Node object, so concurrent joins cannot collide) and hands back the secret key.
//! 2. The new node opens its store under that id and starts serving.
//! 3. `POST /v1/join/complete` — the leader adds it as a learner, waits for it to catch
//!    up and makes it a voter.

use crate::store::{Key, Op, Store, StoreError, Txn};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `POST /v1/join` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The new node's advertised IP.
    pub address: String,
    /// Its API address as others reach it (`IP:PORT`).
    pub api_address: String,
    /// A name the operator chose (`--node-name`), else `node-N`.
    pub node_name: Option<String>,
    /// Its `--port-range`, published on its Node object for the scheduler.
    #[serde(default)]
    pub port_range: Option<mill_crds::PortRange>,
}

/// `POST /v1/join` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinGrant {
    pub node_id: u64,
    pub node_name: String,
    /// The cluster's secret-sealing key (base64).
    pub secret_key: String,
    /// The cluster CA certificate and key (PEM), to issue the node's API certificate.
    pub ca_cert: String,
    pub ca_key: String,
}

/// `POST /v1/join/complete` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinComplete {
    pub node_id: u64,
    pub api_address: String,
}

struct JoinState {
    store: Store,
    token: String,
    secret_key: String,
    ca_cert: String,
    ca_key: String,
}

/// The join routes, guarded by the cluster token.
pub fn router(store: Store, identity: &super::Identity) -> Router {
    Router::new()
        .route("/v1/join", post(reserve))
        .route("/v1/join/complete", post(complete))
        .route("/internal/node/info", get(info))
        .with_state(Arc::new(JoinState {
            store,
            token: identity.token.clone(),
            secret_key: identity.secret_key.clone(),
            ca_cert: identity.ca_cert.clone(),
            ca_key: identity.ca_key.clone(),
        }))
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let expected = format!("Bearer {token}");
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|got| constant_time_eq(got.as_bytes(), expected.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn store_error(err: StoreError) -> Response {
    match err {
        StoreError::Unavailable(m) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the cluster has no leader right now ({m}); retry in a moment"),
        ),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn reserve(
    State(state): State<Arc<JoinState>>,
    headers: HeaderMap,
    Json(req): Json<JoinRequest>,
) -> Response {
    if !authorized(&headers, &state.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "wrong or missing cluster token: pass the token `mill init` printed with --token"
                .into(),
        );
    }
    // Optimistic: pick the next free id; a concurrent join that took it makes our
    // create fail with AlreadyExists and we pick again.
    for _ in 0..16 {
        if let Err(e) = state.store.read_barrier().await {
            return store_error(e);
        }
        let (nodes, _) = state.store.list(super::NODES, None);
        let next_id = nodes
            .iter()
            .filter_map(|n| n.pointer("/spec/raftId").and_then(|v| v.as_u64()))
            .max()
            .unwrap_or(0)
            + 1;
        let name = req
            .node_name
            .clone()
            .unwrap_or_else(|| format!("node-{next_id}"));
        let object = super::node_object(
            &name,
            next_id,
            &req.address,
            &req.api_address,
            req.port_range,
        );
        let txn = Txn {
            ops: vec![Op::Create {
                key: Key {
                    resource: super::NODES.to_string(),
                    namespace: None,
                    name: name.clone(),
                },
                object,
            }],
            now: super::now(),
        };
        match state.store.propose(txn).await {
            Ok(_) => {
                return Json(JoinGrant {
                    node_id: next_id,
                    node_name: name,
                    secret_key: state.secret_key.clone(),
                    ca_cert: state.ca_cert.clone(),
                    ca_key: state.ca_key.clone(),
                })
                .into_response()
            }
            Err(StoreError::AlreadyExists(_)) if req.node_name.is_none() => continue,
            Err(StoreError::AlreadyExists(_)) => {
                return error(
                    StatusCode::CONFLICT,
                    format!("a node named {name:?} is already a member; pick another --node-name"),
                )
            }
            Err(e) => return store_error(e),
        }
    }
    error(
        StatusCode::CONFLICT,
        "too many nodes joining at once; retry".into(),
    )
}

/// This node's Raft view (role, term, leader, indexes, voters), for operators and tests.
async fn info(State(state): State<Arc<JoinState>>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &state.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "wrong or missing cluster token".into(),
        );
    }
    Json(state.store.raft_info()).into_response()
}

async fn complete(
    State(state): State<Arc<JoinState>>,
    headers: HeaderMap,
    Json(req): Json<JoinComplete>,
) -> Response {
    if !authorized(&headers, &state.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "wrong or missing cluster token".into(),
        );
    }
    match state.store.add_voter(req.node_id, req.api_address).await {
        Ok(()) => Json(serde_json::json!({ "joined": true })).into_response(),
        Err(e) => store_error(e),
    }
}

/// The client side of step 1 and 3: `POST` to a member with the token.
pub async fn call<B: Serialize, R: for<'de> Deserialize<'de>>(
    member: &str,
    path: &str,
    token: &str,
    body: &B,
) -> anyhow::Result<R> {
    let url = if member.starts_with("http://") || member.starts_with("https://") {
        format!("{member}{path}")
    } else {
        format!("http://{member}{path}")
    };
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach {member} ({e}); is `mill init` running there and the address right?"
            )
        })?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        anyhow::bail!("{member} refused the join ({status}): {message}");
    }
    Ok(response.json().await?)
}
