//! `POST /v1/deploy`: the whole desired state of a namespace, from a `.mill` file.
//!
//! The body is validated in full against facts read from the store (the namespace's
//! secrets and services, the nodes' capacities); an invalid file is a 400 listing every
//! problem and changes nothing. A valid one becomes ONE transaction: every new or changed
//! Service and Task is written (changed services carry [`mill_controllers::DEPLOY_ANNOTATION`]
//! naming the deploy, so its revision can be found), every one absent from the file is
//! deleted (the Service finalizer makes the controllers drain it first), and a Deploy
//! object records the changes. The answer is then a Server-Sent Events stream rendered
//! from that Deploy's status as the controllers fill it in; the deploy goes on if the
//! client leaves. `?dryRun=true` answers the diff as JSON and changes nothing.

use crate::api::{objects, ApiState};
use crate::config::{self, ClusterSnapshot, Config, ServiceChange, TaskChange};
use crate::store::{Key, Op, Part, Store, StoreError, Txn};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mill_crds::{Deploy, DeployChange, DeployPhase, Node, Service, ServiceSpec, Task, TaskSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;

const SERVICES: &str = "mill.dev/services";
const TASKS: &str = "mill.dev/tasks";
const DEPLOYS: &str = "mill.dev/deploys";
const NODES: &str = "mill.dev/nodes";
const SECRETS: &str = "/secrets";
/// Response header of the SSE answer: the Deploy's name, to find it later.
pub(crate) const DEPLOY_HEADER: &str = "x-mill-deploy";

/// The query of `POST /v1/deploy`.
#[derive(Debug, Deserialize)]
pub(crate) struct DeployQuery {
    /// The namespace deployed to (default `default`).
    namespace: Option<String>,
    /// Answer the diff, change nothing.
    #[serde(default, rename = "dryRun")]
    dry_run: bool,
    /// The file's name, for diagnostics (default `mill.conf`).
    file: Option<String>,
}

/// The handler of `POST /v1/deploy`.
pub(crate) async fn deploy(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<DeployQuery>,
    body: String,
) -> Response {
    let namespace = query.namespace.unwrap_or_else(|| "default".to_string());
    let file = query.file.unwrap_or_else(|| "mill.conf".to_string());
    let store = &state.store;
    // The txn expects every object it replaces to be as read; the controllers write the
    // Services' status all the time during a rollout, so a conflict means "read again and
    // re-plan", not "the user must retry" — unless it keeps happening.
    let mut attempt = 0;
    loop {
        attempt += 1;
        if let Err(err) = store.read_barrier().await {
            return store_error(&err);
        }
        let config = match config::parse(&file, &body, &snapshot(store, &namespace)) {
            Ok(config) => config,
            Err(invalid) => {
                let details: Vec<Value> = invalid
                    .diagnostics
                    .iter()
                    .map(|d| json!({"line": d.line, "col": d.col, "message": d.message}))
                    .collect();
                let count = details.len();
                let error = format!(
                    "{file} is not valid ({count} problem{}); nothing was changed",
                    if count == 1 { "" } else { "s" }
                );
                return super::super::respond::json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": error, "details": details}),
                );
            }
        };
        let stored = Stored::read(store, &namespace);
        let diff = config::diff(&config, &stored.service_specs(), &stored.task_specs());
        let changes = deploy_changes(&diff);
        if query.dry_run {
            return super::super::respond::ok(
                &json!({ "namespace": namespace, "changes": changes }),
            );
        }
        let name = deploy_name();
        let txn = transaction(&namespace, &name, &config, &diff, &changes, &stored, store);
        let applied = match store.propose(txn).await {
            Ok(applied) => applied,
            Err(StoreError::Conflict { .. }) if attempt < CONFLICT_ATTEMPTS => continue,
            Err(err) => return store_error(&err),
        };
        let key = Key {
            resource: DEPLOYS.to_string(),
            namespace: Some(namespace),
            name,
        };
        return stream(store.clone(), key, applied.rv);
    }
}

/// How often a deploy is re-planned when its txn meets a concurrent write.
const CONFLICT_ATTEMPTS: u32 = 10;

/// What validation needs to know, read from this node's (barrier-fresh) replica.
fn snapshot(store: &Store, namespace: &str) -> ClusterSnapshot {
    let names = |resource: &str| {
        store
            .list(resource, Some(namespace))
            .0
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let nodes = store
        .list(NODES, None)
        .0
        .iter()
        .filter_map(|o| serde_json::from_value::<Node>((**o).clone()).ok())
        .filter_map(|n| n.status.map(|s| s.capacity))
        .filter(|c| c.cpu > 0.0)
        .collect();
    ClusterSnapshot {
        secrets: names(SECRETS),
        services: names(SERVICES),
        nodes,
    }
}

/// The namespace's stored services and tasks, as objects and as typed specs.
struct Stored {
    services: Vec<(String, Arc<Value>, ServiceSpec)>,
    tasks: Vec<(String, Arc<Value>, TaskSpec)>,
}

impl Stored {
    fn read(store: &Store, namespace: &str) -> Stored {
        let services = store
            .list(SERVICES, Some(namespace))
            .0
            .into_iter()
            .filter_map(|o| {
                let service: Service = serde_json::from_value((*o).clone()).ok()?;
                // A service being deleted is already gone as far as the config is concerned.
                if service.metadata.deletion_timestamp.is_some() {
                    return None;
                }
                Some((service.metadata.name?, o, service.spec))
            })
            .collect();
        let tasks = store
            .list(TASKS, Some(namespace))
            .0
            .into_iter()
            .filter_map(|o| {
                let task: Task = serde_json::from_value((*o).clone()).ok()?;
                Some((task.metadata.name?, o, task.spec))
            })
            .collect();
        Stored { services, tasks }
    }

    fn service_specs(&self) -> Vec<(String, ServiceSpec)> {
        self.services
            .iter()
            .map(|(n, _, s)| (n.clone(), s.clone()))
            .collect()
    }

    fn task_specs(&self) -> Vec<(String, TaskSpec)> {
        self.tasks
            .iter()
            .map(|(n, _, s)| (n.clone(), s.clone()))
            .collect()
    }
}

/// `spec.changes` of the Deploy, in the words the deploy planner reads.
fn deploy_changes(diff: &config::Diff) -> Vec<DeployChange> {
    let services = diff.services.iter().map(|(name, change)| DeployChange {
        kind: "service".to_string(),
        name: name.clone(),
        change: match change {
            ServiceChange::New => "new",
            ServiceChange::Unchanged => "unchanged",
            ServiceChange::Rollout => "rollout",
            ServiceChange::InPlace(c) if c.routes && !c.replicas && !c.update_policy => "routes",
            // Scaling, and a policy-only change, end when the current revision runs at
            // the stored replica count.
            ServiceChange::InPlace(_) => "scale",
            ServiceChange::Removed => "removed",
        }
        .to_string(),
        revision: None,
    });
    let tasks = diff.tasks.iter().map(|(name, change)| DeployChange {
        kind: "task".to_string(),
        name: name.clone(),
        change: match change {
            TaskChange::New => "new",
            TaskChange::Unchanged => "unchanged",
            TaskChange::Changed => "changed",
            TaskChange::Removed => "removed",
        }
        .to_string(),
        revision: None,
    });
    services.chain(tasks).collect()
}

/// A new deploy's name: sortable by time, unique.
fn deploy_name() -> String {
    let ms = jiff::Timestamp::now().as_millisecond();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!("deploy-{ms}-{}", &unique[..6])
}

/// The one transaction of a deploy.
fn transaction(
    namespace: &str,
    deploy: &str,
    config: &Config,
    diff: &config::Diff,
    changes: &[DeployChange],
    stored: &Stored,
    store: &Store,
) -> Txn {
    let now = objects::now_rfc3339();
    let mut ops = Vec::new();
    let namespace_key = Key {
        resource: "/namespaces".to_string(),
        namespace: None,
        name: namespace.to_string(),
    };
    if store.get(&namespace_key).is_none() {
        ops.push(Op::Create {
            key: namespace_key,
            object: json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace, "uid": uid(), "creationTimestamp": now},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }),
        });
    }
    let key = |resource: &str, name: &str| Key {
        resource: resource.to_string(),
        namespace: Some(namespace.to_string()),
        name: name.to_string(),
    };
    let annotations = json!({ mill_controllers::DEPLOY_ANNOTATION: deploy });
    for (name, change) in &diff.services {
        let spec = config
            .services
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s);
        let current = stored.services.iter().find(|(n, _, _)| n == name);
        match (change, spec, current) {
            (ServiceChange::New, Some(spec), _) => ops.push(Op::Create {
                key: key(SERVICES, name),
                object: json!({
                    "apiVersion": "mill.dev/v1",
                    "kind": "Service",
                    "metadata": {
                        "name": name, "namespace": namespace, "uid": uid(),
                        "creationTimestamp": now, "annotations": annotations,
                    },
                    "spec": spec,
                }),
            }),
            (ServiceChange::Rollout | ServiceChange::InPlace(_), Some(spec), Some(current)) => {
                let mut object = (*current.1).clone();
                object["spec"] = json!(spec);
                object["metadata"]["annotations"][mill_controllers::DEPLOY_ANNOTATION] =
                    json!(deploy);
                ops.push(update(key(SERVICES, name), object, &current.1));
            }
            (ServiceChange::Removed, _, Some(current)) => {
                ops.push(delete(key(SERVICES, name), &current.1));
            }
            _ => {}
        }
    }
    for (name, change) in &diff.tasks {
        let spec = config.tasks.iter().find(|(n, _)| n == name).map(|(_, s)| s);
        let current = stored.tasks.iter().find(|(n, _, _)| n == name);
        match (change, spec, current) {
            (TaskChange::New, Some(spec), _) => ops.push(Op::Create {
                key: key(TASKS, name),
                object: json!({
                    "apiVersion": "mill.dev/v1",
                    "kind": "Task",
                    "metadata": {
                        "name": name, "namespace": namespace, "uid": uid(),
                        "creationTimestamp": now,
                    },
                    "spec": spec,
                }),
            }),
            (TaskChange::Changed, Some(spec), Some(current)) => {
                let mut object = (*current.1).clone();
                object["spec"] = json!(spec);
                ops.push(update(key(TASKS, name), object, &current.1));
            }
            (TaskChange::Removed, _, Some(current)) => {
                ops.push(delete(key(TASKS, name), &current.1));
            }
            _ => {}
        }
    }
    ops.push(Op::Create {
        key: key(DEPLOYS, deploy),
        object: json!({
            "apiVersion": "mill.dev/v1",
            "kind": "Deploy",
            "metadata": {
                "name": deploy, "namespace": namespace, "uid": uid(),
                "creationTimestamp": now,
            },
            "spec": {"changes": changes},
        }),
    });
    Txn { ops, now }
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn rv_of(object: &Value) -> Option<u64> {
    object["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

/// Replace `current` with `object`, unless it changed since it was read.
fn update(key: Key, object: Value, current: &Value) -> Op {
    Op::Update {
        key,
        object,
        expected_rv: rv_of(current),
        part: Part::Main,
    }
}

fn delete(key: Key, current: &Value) -> Op {
    Op::Delete {
        key,
        expected_rv: rv_of(current),
        expected_uid: current["metadata"]["uid"].as_str().map(str::to_string),
    }
}

fn store_error(err: &StoreError) -> Response {
    match err {
        StoreError::Conflict { .. } | StoreError::AlreadyExists(_) => super::error(
            StatusCode::CONFLICT,
            "the namespace changed while this deploy was prepared; deploy again",
        ),
        StoreError::Unavailable(why) => super::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the cluster has no leader right now ({why}); retry in a moment"),
        ),
        other => super::error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// The SSE answer: the Deploy's events as they appear, then one `done`.
fn stream(store: Store, key: Key, from: u64) -> Response {
    let name = key.name.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        // Ends when the deploy does, or when the client goes (a send fails).
        let _ = follow(&store, &key, from, &tx).await;
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    if let Ok(name) = HeaderValue::from_str(&name) {
        response.headers_mut().insert(DEPLOY_HEADER, name);
    }
    response
}

/// Sends every event of the Deploy at `key` not sent yet, until it ends.
async fn follow(
    store: &Store,
    key: &Key,
    mut from: u64,
    tx: &tokio::sync::mpsc::Sender<Event>,
) -> Result<(), tokio::sync::mpsc::error::SendError<Event>> {
    let mut sent = 0;
    loop {
        let Some(object) = store.get(key) else {
            // Deleted before it finished (only by hand: gc keeps running deploys).
            return tx.send(done(0.0, false)).await;
        };
        if let Ok(deploy) = serde_json::from_value::<Deploy>((*object).clone()) {
            let status = deploy.status.unwrap_or_default();
            for event in status.events.iter().skip(sent) {
                tx.send(render(event)).await?;
            }
            sent = sent.max(status.events.len());
            if status.phase != DeployPhase::Running {
                let success = status.phase == DeployPhase::Succeeded;
                return tx.send(done(status.elapsed.unwrap_or(0.0), success)).await;
            }
        }
        // Wait for the next change of this Deploy.
        let mut watch = match store.watch(DEPLOYS, key.namespace.as_deref(), from) {
            Ok(watch) => watch,
            Err(_) => {
                from = store.applied_rv();
                continue;
            }
        };
        loop {
            tokio::select! {
                event = watch.next() => match event {
                    Some(event) => {
                        from = event.rv;
                        if event.key == *key {
                            break;
                        }
                    }
                    // Fell behind or the store closes: read again and rewatch.
                    None => break,
                },
                () = tx.closed() => return Ok(()),
            }
        }
    }
}

fn render(event: &mill_crds::DeployEvent) -> Event {
    if event.phase == "failed" {
        let data = json!({"service": event.service, "reason": event.reason});
        return Event::default().event("failed").data(data.to_string());
    }
    let mut data = serde_json::Map::new();
    data.insert("phase".into(), json!(event.phase));
    let optional = [
        ("service", event.service.as_ref().map(|s| json!(s))),
        ("node", event.node.as_ref().map(|s| json!(s))),
        ("alloc", event.alloc.as_ref().map(|s| json!(s))),
        ("elapsed", event.elapsed.map(|e| json!(e))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            data.insert(name.into(), value);
        }
    }
    Event::default()
        .event("progress")
        .data(Value::Object(data).to_string())
}

fn done(elapsed: f64, success: bool) -> Event {
    Event::default()
        .event("done")
        .data(json!({"elapsed": elapsed, "success": success}).to_string())
}
