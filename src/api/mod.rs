//! The Kubernetes-shaped API server: mill's resources in the exact wire format of the
//! Kubernetes API, so the real `kubectl` and kube-rs clients work unchanged.
//!
//! Entry points: [`router`] (what the daemon serves), [`kube_client`] (an in-process
//! `kube::Client` over the same router, for controllers and the agent) and
//! [`ensure_default_namespace`].
//!
//! Map of the module, one concern per file:
//! - `request` — what a request names (path → kind/namespace/name), its query and Accept;
//! - `crud` — get, list, create, update, patch, delete, deletecollection, `/status`;
//! - `watch` — watch streams (initial events, bookmarks, selectors, 410 Expired);
//! - `discovery`, `openapi` — the documents clients read first;
//! - `resources` — the kind registry (from `mill_crds::all_crds()` plus core kinds);
//! - `objects`, `validation`, `patch`, `selectors`, `table` — pure helpers;
//! - `secrets` — sealing Secret data before it reaches the store;
//! - `status` — errors as `metav1.Status`; `auth` — the bearer token;
//! - `v1` — mill's own `/v1` API (SPEC §3): deploy (and its SSE stream), status, nodes
//!   (drain, remove), services, restart, rollout, tasks.

mod auth;
mod crud;
mod discovery;
mod objects;
mod openapi;
mod patch;
mod protobuf;
mod request;
mod resources;
mod respond;
mod secrets;
mod selectors;
mod status;
mod table;
pub mod tls;
mod v1;
mod validation;
mod watch;

/// Seals and unseals Secrets (the ingress reads its certificates' Secrets from the store).
pub use secrets::SecretBox;

use crate::store::{Key, Op, Store, StoreError, Txn};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::Router;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// What the API server needs from the node.
pub struct ApiConfig {
    /// The cluster token every request must carry as `Authorization: Bearer`.
    pub token: String,
    /// The cluster's key that seals Secret data at rest.
    pub secret_key: [u8; 32],
    /// This node's `host:port` for `serverAddressByClientCIDRs`.
    pub server_address: String,
}

/// Timings of the API server (the daemon's knobs; tests shrink them).
#[derive(Debug, Clone)]
pub struct ApiTuning {
    /// How often a watch that allows bookmarks gets one (Kubernetes: about a minute).
    pub bookmark_interval: Duration,
    /// How long a starting node keeps trying to create the `default` namespace.
    pub default_namespace_retry: Duration,
}

impl Default for ApiTuning {
    fn default() -> Self {
        ApiTuning {
            bookmark_interval: Duration::from_secs(60),
            default_namespace_retry: Duration::from_millis(200),
        }
    }
}

/// Shared state of every handler.
pub(crate) struct ApiState {
    store: Store,
    token: String,
    secrets: secrets::SecretBox,
    registry: resources::Registry,
    openapi: openapi::OpenApi,
    server_address: String,
    tuning: ApiTuning,
    metrics: crate::metrics::Metrics,
}

/// The API router with default timings: the Kubernetes API under `/api`, `/apis`,
/// `/version`, `/openapi/v3`; the health probes `/healthz`, `/livez`, `/readyz`
/// (unauthenticated); and the store's node-to-node routes.
pub fn router(store: Store, config: ApiConfig) -> Router {
    router_with(store, config, ApiTuning::default())
}

/// [`router`] with explicit timings.
pub fn router_with(store: Store, config: ApiConfig, tuning: ApiTuning) -> Router {
    router_metered(store, config, tuning, crate::metrics::Metrics::default())
}

/// [`router_with`], counting in the node's `metrics` (the daemon shares them with the
/// controllers).
pub fn router_metered(
    store: Store,
    config: ApiConfig,
    tuning: ApiTuning,
    metrics: crate::metrics::Metrics,
) -> Router {
    let registry = resources::Registry::new();
    let state = Arc::new(ApiState {
        openapi: openapi::OpenApi::new(&registry),
        registry,
        secrets: secrets::SecretBox::new(&config.secret_key),
        token: config.token,
        server_address: config.server_address,
        store: store.clone(),
        tuning,
        metrics,
    });
    spawn_default_namespace(&state);
    let api = Router::new()
        .route("/api", any(crud::serve))
        .route("/api/{*rest}", any(crud::serve))
        .route("/apis", any(crud::serve))
        .route("/apis/{*rest}", any(crud::serve))
        .route("/version", get(version))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/{*rest}", get(openapi_document))
        .route("/v1/deploy", post(v1::deploy::deploy))
        .route("/v1/status", get(v1::status::status))
        .route("/v1/nodes", get(v1::nodes::list))
        .route("/v1/nodes/{id}", delete(v1::nodes::remove))
        .route("/v1/nodes/{id}/drain", post(v1::nodes::drain))
        .route("/v1/restart/{service}", post(v1::restart::restart))
        .route("/v1/services", get(v1::services::list))
        .route("/v1/rollout/{service}", get(v1::rollout::show))
        .route("/v1/rollout/{service}/undo", post(v1::rollout::undo))
        .route("/v1/tasks", get(v1::tasks::list))
        .route("/v1/tasks/spawn", post(v1::tasks::spawn))
        .route(
            "/v1/tasks/{id}",
            get(v1::tasks::get).delete(v1::tasks::kill),
        )
        .route("/v1/logs/{name}", get(v1::logs::logs))
        .route("/v1/secrets", get(v1::secrets::list))
        .route(
            "/v1/secrets/{name}",
            get(v1::secrets::get)
                .put(v1::secrets::put)
                .delete(v1::secrets::delete),
        )
        .route("/v1/volumes", get(v1::volumes::list))
        .route("/v1/volumes/{name}", delete(v1::volumes::delete))
        .route("/v1/metrics", get(v1::metrics::metrics))
        .route("/metrics", get(v1::metrics::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            v1::metrics::time_writes,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready));
    let token = state.token.clone();
    api.merge(health)
        .with_state(state)
        .merge(store.router())
        .fallback(move |headers: HeaderMap| {
            let token = token.clone();
            async move {
                if auth::authorized(&headers, &token) {
                    status::ApiError::no_such_path().into_response()
                } else {
                    status::ApiError::unauthorized().into_response()
                }
            }
        })
}

async fn version() -> Response {
    respond::ok(&discovery::version())
}

async fn openapi_index(State(state): State<Arc<ApiState>>) -> Response {
    respond::ok(&state.openapi.index)
}

async fn openapi_document(
    State(state): State<Arc<ApiState>>,
    axum::extract::Path(rest): axum::extract::Path<String>,
) -> Response {
    match state.openapi.documents.get(rest.trim_matches('/')) {
        Some(doc) => respond::ok(doc),
        None => status::ApiError::no_such_path().into_response(),
    }
}

async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    if state.store.raft_info().leader_id.is_some() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no raft leader").into_response()
    }
}

/// Creates `default` in the background until it exists: the router is built before the
/// store has a leader, and `default` must always exist.
fn spawn_default_namespace(state: &Arc<ApiState>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let store = state.store.clone();
    let retry = state.tuning.default_namespace_retry;
    runtime.spawn(async move {
        while let Err(err) = ensure_default_namespace(&store).await {
            tracing::debug!("default namespace not created yet: {err}");
            tokio::time::sleep(retry).await;
        }
    });
}

/// Whether namespace `name` exists on this node's view of the store. `default` always
/// does: asked for before the background creation committed (a request right after
/// `mill init`), it is created here.
pub async fn namespace_exists(store: &Store, name: &str) -> Result<bool, StoreError> {
    if name == "default" {
        ensure_default_namespace(store).await?;
        return Ok(true);
    }
    let key = Key {
        resource: "/namespaces".to_string(),
        namespace: None,
        name: name.to_string(),
    };
    Ok(store.get(&key).is_some())
}

/// Creates the `default` namespace if it does not exist (idempotent; any node may call it).
pub async fn ensure_default_namespace(store: &Store) -> Result<(), StoreError> {
    let key = Key {
        resource: "/namespaces".to_string(),
        namespace: None,
        name: "default".to_string(),
    };
    if store.get(&key).is_some() {
        return Ok(());
    }
    let object = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "default",
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": objects::now_rfc3339(),
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    });
    let txn = Txn {
        ops: vec![Op::Create { key, object }],
        now: objects::now_rfc3339(),
    };
    match store.propose(txn).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// A `kube::Client` that talks to `router` in-process (no TCP), with the cluster token:
/// the same semantics remote clients get.
pub fn kube_client(router: Router, token: &str) -> kube::Client {
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).ok();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let router = router.clone();
        let (mut parts, body) = request.into_parts();
        if let Some(bearer) = &bearer {
            parts.headers.insert(header::AUTHORIZATION, bearer.clone());
        }
        let request = http::Request::from_parts(parts, Body::new(body));
        async move { router.oneshot(request).await }
    });
    kube::Client::new(service, "default")
}
