//! mill's own HTTP API (SPEC §3), next to the Kubernetes-shaped one and behind the same
//! token. One file per endpoint group:
//! - `deploy` — `POST /v1/deploy`: validate a `.mill`, commit it in one transaction, stream
//!   the Deploy's progress as Server-Sent Events.
//! - `status` — `GET /v1/status`: the cluster in numbers.
//! - `nodes` — `GET /v1/nodes`, `POST /v1/nodes/{id}/drain`, `DELETE /v1/nodes/{id}`.
//! - `services` — `GET /v1/services`: services with their allocations.
//! - `restart` — `POST /v1/restart/{service}`: a new revision with the same template.
//! - `rollout` — `GET /v1/rollout/{service}` (status and history), `POST
//!   /v1/rollout/{service}/undo`: the template of a retained revision, rolled out again.
//! - `tasks` — `POST /v1/tasks/spawn`, `GET /v1/tasks[/{id}]`, `DELETE /v1/tasks/{id}`.
//! - `logs` — `GET /v1/logs/{name}`: the log lines of a service's replicas, an alloc or a
//!   task run, fetched from (and followed on) the node that holds each alloc.
//! - `secrets` — `GET/PUT/DELETE /v1/secrets[/{name}]`: one-value Secrets (sealed like any).
//! - `volumes` — `GET /v1/volumes`, `DELETE /v1/volumes/{name}` (refused while used).
//! - `metrics` — `GET /v1/metrics` and `/metrics`: Prometheus text; the write-latency layer.
//!
//! Every endpoint only writes resources (the controllers do the work) and answers from
//! this node's replica; a write reads after a read barrier, so it acts on fresh state.

pub(crate) mod deploy;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod nodes;
pub(crate) mod restart;
pub(crate) mod rollout;
pub(crate) mod secrets;
pub(crate) mod services;
pub(crate) mod status;
pub(crate) mod tasks;
pub(crate) mod volumes;

use crate::store::{Key, Rv, Store, StoreError};
use axum::http::StatusCode;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) const SERVICES: &str = "mill.dev/services";
pub(crate) const ALLOCS: &str = "mill.dev/allocs";
pub(crate) const NODES: &str = "mill.dev/nodes";
pub(crate) const TASKS: &str = "mill.dev/tasks";
pub(crate) const DEPLOYS: &str = "mill.dev/deploys";

/// A `/v1` error: `{"error": message}` with `code`.
pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    super::respond::json(code, &json!({ "error": message.into() }))
}

/// How often a `/v1` write re-reads an object that changed under it before giving up: the
/// controllers and agents write status all the time, so a precondition on the version read
/// can fail by chance; each attempt reads and checks afresh.
pub(crate) const ATTEMPTS: usize = 10;

/// The 409 after [`ATTEMPTS`] conflicts on `what`.
pub(crate) fn kept_changing(what: &str) -> Response {
    error(
        StatusCode::CONFLICT,
        format!("{what} kept changing while this request was handled; send it again"),
    )
}

/// `?namespace=NS` of the namespaced `/v1` endpoints (default `default`).
#[derive(Debug, Deserialize)]
pub(crate) struct NamespaceQuery {
    namespace: Option<String>,
}

impl NamespaceQuery {
    /// The namespace asked for.
    pub(crate) fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// Every object of `resource` (in `namespace`, or all) that parses as `T`.
pub(crate) fn typed<T: DeserializeOwned>(
    store: &Store,
    resource: &str,
    namespace: Option<&str>,
) -> Vec<T> {
    store
        .list(resource, namespace)
        .0
        .iter()
        .filter_map(|o| serde_json::from_value((**o).clone()).ok())
        .collect()
}

/// The object at `resource`/`namespace`/`name`, as stored and as `T`.
pub(crate) fn object<T: DeserializeOwned>(
    store: &Store,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
) -> Option<(Key, Value, T)> {
    let key = Key {
        resource: resource.to_string(),
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
    };
    let value = (*store.get(&key)?).clone();
    let typed = serde_json::from_value(value.clone()).ok()?;
    Some((key, value, typed))
}

/// The stored resourceVersion of `object`, for preconditions.
pub(crate) fn rv_of(object: &Value) -> Option<Rv> {
    object["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

/// A store failure of a `/v1` write, worded for the operator.
pub(crate) fn store_error(err: &StoreError) -> Response {
    match err {
        StoreError::Conflict { .. } | StoreError::AlreadyExists(_) => error(
            StatusCode::CONFLICT,
            "the object changed while this request was handled; send it again",
        ),
        StoreError::NotFound(key) => error(
            StatusCode::NOT_FOUND,
            format!("{} was deleted meanwhile", key.name),
        ),
        StoreError::Unavailable(why) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the cluster has no leader right now ({why}); retry in a moment"),
        ),
        StoreError::Internal(why) => error(StatusCode::INTERNAL_SERVER_ERROR, why.clone()),
    }
}

/// A JSON body as `T`, or a 400 naming the field that is wrong.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Box<Response>> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| Box::new(refuse_body(&e, what)))
}

fn refuse_body(e: &serde_path_to_error::Error<serde_json::Error>, what: &str) -> Response {
    let path = e.path().to_string();
    let at = if path == "." {
        String::new()
    } else {
        format!(" at `{path}`")
    };
    error(
        StatusCode::BAD_REQUEST,
        format!("invalid {what}{at}: {}; nothing was changed", e.inner()),
    )
}

/// RFC 3339 of a Kubernetes time.
pub(crate) fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    t.0.to_string()
}
