//! `GET /v1/rollout/{service}` (where a service's rollout stands, and its retained
//! revisions) and `POST /v1/rollout/{service}/undo?toRevision=N` (SPEC §4 `mill rollout`).
//!
//! An undo writes revision N's template back into the Service's spec (default: the newest
//! retained revision older than the serving one that did not fail); the rollout planner
//! makes it a new revision and rolls it out like any other. Like a restart, an undo is
//! recorded as a Deploy of its own (one `rollout` change, the Service's
//! [`mill_controllers::DEPLOY_ANNOTATION`] naming it), so its progress is an event log the
//! CLI follows exactly as it follows `mill deploy`. Both answer `{service, namespace,
//! deploy}` at once; the rollout goes on in the cluster.

use super::{
    error, kept_changing, object, rv_of, store_error, typed, NamespaceQuery, ATTEMPTS, DEPLOYS,
    SERVICES,
};
use crate::api::{objects, respond, ApiState};
use crate::store::{Key, Op, Part, Store, StoreError, Txn};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use mill_crds::{ContainerTemplate, Revision, Service};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// A 404 naming the services that do exist.
pub(crate) fn no_such_service(store: &Store, namespace: &str, name: &str) -> Response {
    let names: Vec<String> = typed::<Service>(store, SERVICES, Some(namespace))
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    let known = if names.is_empty() {
        "it has none".to_string()
    } else {
        format!("it has {}", names.join(", "))
    };
    error(
        StatusCode::NOT_FOUND,
        format!("no service {name:?} in namespace {namespace} ({known}); see mill get services"),
    )
}

/// The Service `name` of `namespace` for a rollout write, after a read barrier; the error
/// answer if there is none (or it is being deleted).
pub(crate) async fn service_to_roll(
    store: &Store,
    namespace: &str,
    name: &str,
) -> Result<(Key, Value, Service), Box<Response>> {
    if let Err(err) = store.read_barrier().await {
        return Err(Box::new(store_error(&err)));
    }
    let Some(found) = object::<Service>(store, SERVICES, Some(namespace), name) else {
        return Err(Box::new(no_such_service(store, namespace, name)));
    };
    if found.2.metadata.deletion_timestamp.is_some() {
        return Err(Box::new(error(
            StatusCode::CONFLICT,
            format!("service {name} is being removed; nothing was changed"),
        )));
    }
    Ok(found)
}

/// Commits `service` (already changed by the caller) together with a one-service Deploy
/// named `deploy` that the Service's deploy annotation points at, and answers
/// `{service, namespace, deploy}`; `None` if the Service changed since it was read (read it
/// again: its status moves all the time).
pub(crate) async fn commit_rollout(
    store: &Store,
    key: Key,
    stored: &Value,
    mut service: Value,
    deploy: &str,
) -> Option<Response> {
    let namespace = key.namespace.clone().unwrap_or_default();
    let name = key.name.clone();
    service["metadata"]["annotations"][mill_controllers::DEPLOY_ANNOTATION] = json!(deploy);
    let now = objects::now_rfc3339();
    let txn = Txn {
        ops: vec![
            Op::Update {
                key,
                object: service,
                expected_rv: rv_of(stored),
                part: Part::Main,
            },
            Op::Create {
                key: Key {
                    resource: DEPLOYS.to_string(),
                    namespace: Some(namespace.clone()),
                    name: deploy.to_string(),
                },
                object: json!({
                    "apiVersion": "mill.dev/v1",
                    "kind": "Deploy",
                    "metadata": {
                        "name": deploy, "namespace": namespace,
                        "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now,
                    },
                    "spec": {"changes": [{"kind": "service", "name": name, "change": "rollout"}]},
                }),
            },
        ],
        now,
    };
    match store.propose(txn).await {
        Ok(_) => Some(respond::ok(
            &json!({"service": name, "namespace": namespace, "deploy": deploy}),
        )),
        Err(StoreError::Conflict { .. }) => None,
        Err(err) => Some(store_error(&err)),
    }
}

/// A Deploy name for a rollout that is not a `mill deploy`: `<what>-<ms>-<random>`.
pub(crate) fn deploy_name(what: &str) -> String {
    let ms = jiff::Timestamp::now().as_millisecond();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!("{what}-{ms}-{}", &unique[..6])
}

/// One retained revision, as `GET /v1/rollout/{service}` lists it.
fn revision_json(revision: &Revision, serving: Option<i64>, target: Option<i64>) -> Value {
    json!({
        "revision": revision.revision,
        "image": revision.template.image,
        "created_at": super::time(&revision.created_at),
        "cause": revision.cause,
        "restart": revision.restart.is_some(),
        "failure": revision.failure,
        "serving": serving == Some(revision.revision),
        "target": target == Some(revision.revision),
    })
}

/// `GET /v1/rollout/{service}`: `{service, revision, target_revision, replicas:{desired,
/// healthy}, message, history:[...]}`, oldest revision first.
pub(crate) async fn show(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    let store = &state.store;
    let namespace = query.namespace();
    let Some((_, _, service)) = object::<Service>(store, SERVICES, Some(namespace), &name) else {
        return no_such_service(store, namespace, &name);
    };
    let status = service.status.clone().unwrap_or_default();
    let mut history = status.history.clone();
    history.sort_by_key(|r| r.revision);
    respond::ok(&json!({
        "service": name,
        "namespace": namespace,
        "revision": status.revision,
        "target_revision": status.target_revision,
        "replicas": {"desired": service.spec.replicas, "healthy": status.healthy_replicas},
        "message": status.message,
        "history": history
            .iter()
            .map(|r| revision_json(r, status.revision, status.target_revision))
            .collect::<Vec<_>>(),
    }))
}

/// The query of `POST /v1/rollout/{service}/undo`.
#[derive(Debug, Deserialize)]
pub(crate) struct UndoQuery {
    namespace: Option<String>,
    #[serde(rename = "toRevision")]
    to_revision: Option<String>,
}

/// Why an undo has no revision to go back to.
#[derive(Debug, PartialEq, thiserror::Error)]
enum UndoRefused {
    /// `toRevision` names a revision not retained.
    #[error("has no revision {wanted} (retained: {retained}); see mill rollout history")]
    NoSuchRevision { wanted: i64, retained: String },
    /// No retained revision older than the serving one succeeded.
    #[error("has no earlier revision to go back to (retained: {retained}); nothing was changed")]
    NothingEarlier { retained: String },
}

/// The revision an undo rolls out: `wanted`, or the newest retained revision older than
/// the serving one that did not fail.
fn undo_source(
    history: &[Revision],
    serving: Option<i64>,
    wanted: Option<i64>,
) -> Result<Revision, UndoRefused> {
    let mut history = history.to_vec();
    history.sort_by_key(|r| r.revision);
    let retained = history
        .iter()
        .map(|r| r.revision.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let found = match wanted {
        Some(n) => history.iter().find(|r| r.revision == n),
        None => {
            let serving = serving.unwrap_or(i64::MAX);
            history
                .iter()
                .rev()
                .find(|r| r.revision < serving && r.failure.is_none())
        }
    };
    match (found, wanted) {
        (Some(revision), _) => Ok(revision.clone()),
        (None, Some(wanted)) => Err(UndoRefused::NoSuchRevision { wanted, retained }),
        (None, None) => Err(UndoRefused::NothingEarlier { retained }),
    }
}

fn normalized(mut template: ContainerTemplate) -> ContainerTemplate {
    template.volumes.sort_by(|a, b| a.name.cmp(&b.name));
    template
}

/// `POST /v1/rollout/{service}/undo[?toRevision=N]`.
pub(crate) async fn undo(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<UndoQuery>,
) -> Response {
    let namespace = query.namespace.as_deref().unwrap_or("default");
    let wanted = match query.to_revision.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => return error(
            StatusCode::BAD_REQUEST,
            "toRevision must be a revision number (see mill rollout history); nothing was changed",
        ),
    };
    let store = &state.store;
    for _ in 0..ATTEMPTS {
        if let Some(answer) = undo_once(store, namespace, &name, wanted).await {
            return answer;
        }
    }
    kept_changing(&format!("service {name}"))
}

/// One undo attempt: the answer, or `None` when the Service changed since it was read.
async fn undo_once(
    store: &Store,
    namespace: &str,
    name: &str,
    wanted: Option<i64>,
) -> Option<Response> {
    let (key, stored, service) = match service_to_roll(store, namespace, name).await {
        Ok(found) => found,
        Err(answer) => return Some(*answer),
    };
    let status = service.status.clone().unwrap_or_default();
    let revision = match undo_source(&status.history, status.revision, wanted) {
        Ok(revision) => revision,
        Err(refused) => {
            let code = match refused {
                UndoRefused::NoSuchRevision { .. } => StatusCode::NOT_FOUND,
                UndoRefused::NothingEarlier { .. } => StatusCode::CONFLICT,
            };
            return Some(error(code, format!("service {name} {refused}")));
        }
    };

    if normalized(revision.template.clone()) == normalized(service.spec.template()) {
        return Some(error(
            StatusCode::CONFLICT,
            format!(
                "service {name} already runs the template of revision {}; nothing was changed",
                revision.revision
            ),
        ));
    }
    let mut spec = service.spec.clone();
    let template = revision.template;
    spec.image = template.image;
    spec.command = template.command;
    spec.port = template.port.unwrap_or(spec.port);
    spec.cpu = template.cpu;
    spec.memory = template.memory;
    spec.env = template.env;
    spec.health = template.health;
    spec.volumes = template.volumes;
    let mut updated = stored.clone();
    updated["spec"] = json!(spec);
    let deploy = deploy_name("undo");
    commit_rollout(store, key, &stored, updated, &deploy).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn revision(n: i64, failure: Option<&str>) -> Revision {
        Revision {
            revision: n,
            template: ContainerTemplate {
                image: format!("img:{n}"),
                command: None,
                port: Some(8080),
                cpu: 0.1,
                memory: mill_crds::ByteSize(1 << 20),
                env: Default::default(),
                health: None,
                volumes: Vec::new(),
            },
            created_at: Time(jiff::Timestamp::UNIX_EPOCH),
            cause: None,
            restart: None,
            failure: failure.map(str::to_string),
        }
    }

    #[test]
    fn undo_goes_to_the_newest_older_revision_that_did_not_fail_or_the_one_asked_for() {
        let history = vec![
            revision(3, Some("exited with code 1")),
            revision(1, None),
            revision(4, None),
            revision(2, None),
        ];
        // (serving, toRevision, the revision chosen or the refusal's start)
        type Case = (Option<i64>, Option<i64>, Result<i64, &'static str>);
        let table: [Case; 6] = [
            (Some(4), None, Ok(2)),
            (Some(3), None, Ok(2)),
            (Some(2), None, Ok(1)),
            (Some(1), None, Err("has no earlier revision")),
            (Some(4), Some(3), Ok(3)),
            (
                Some(4),
                Some(9),
                Err("has no revision 9 (retained: 1, 2, 3, 4)"),
            ),
        ];
        for (serving, wanted, expected) in table {
            let got = undo_source(&history, serving, wanted)
                .map(|r| r.revision)
                .map_err(|e| e.to_string());
            match (got, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{serving:?} {wanted:?}"),
                (Err(got), Err(expected)) => {
                    assert!(got.starts_with(expected), "{got} vs {expected}")
                }
                (got, expected) => panic!("{serving:?} {wanted:?}: {got:?} vs {expected:?}"),
            }
        }
    }
}
