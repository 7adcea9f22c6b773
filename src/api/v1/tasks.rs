//! Task runs (SPEC §7): `POST /v1/tasks/spawn`, `GET /v1/tasks`, `GET /v1/tasks/{id}`,
//! `DELETE /v1/tasks/{id}`, all `?namespace=NS` (default `default`).
//!
//! A spawn writes one Alloc (owner kind `task`, no node) named `<task>-<4 random chars>`:
//! from the Task a deploy defined (`{task, env}`, `env` over the task's own), or inline
//! (`{image, command?, cpu?, memory?, timeout?, env?}`, named after the image's last path
//! segment, the Task kind's defaults for what is left out). It answers at once, without
//! waiting for the scheduler (SPEC: `mill spawn` returns at once): `node` and `address`
//! are `null` and `status` is `pending` until the run is placed; `GET /v1/tasks/{id}`
//! shows them. The tasks planner enforces the timeout and that a run never restarts.
//! Kill sets `spec.desiredState` to `Stopped`: the agent stops the container and the run
//! ends `stopped` (a run not yet placed is ended by the scheduler).

use super::{
    error, kept_changing, object, parse_body, rv_of, store_error, typed, NamespaceQuery, ALLOCS,
    ATTEMPTS, TASKS,
};
use crate::api::{objects, respond, ApiState};
use crate::store::{Key, Op, Part, Store, StoreError, Txn};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use mill_crds::{
    Alloc, AllocOwner, AllocPhase, AllocSpec, ByteSize, ContainerTemplate, DesiredState, Duration,
    OwnerKind, Task, TaskSpec,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The body of `POST /v1/tasks/spawn`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnRequest {
    task: Option<String>,
    image: Option<String>,
    command: Option<Vec<String>>,
    cpu: Option<f64>,
    memory: Option<ByteSize>,
    timeout: Option<Duration>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

fn bad(message: impl Into<String>) -> Box<Response> {
    Box::new(error(
        StatusCode::BAD_REQUEST,
        format!("{}; nothing was changed", message.into()),
    ))
}

/// A task's run as `/v1/tasks` shows it.
fn task_json(alloc: &Alloc) -> Value {
    let status = alloc.status.clone().unwrap_or_default();
    let mut entry = json!({
        "id": alloc.metadata.name,
        "name": alloc.spec.owner.name,
        "node": alloc.spec.node_name,
        // A task has no health check: the agent's `healthy` is simply `running` for it.
        "status": super::services::phase_word(match status.phase {
            AllocPhase::Healthy => AllocPhase::Running,
            phase => phase,
        }),
        "address": status.address,
        "cpu": alloc.spec.template.cpu,
        "memory": alloc.spec.template.memory.bytes(),
    });
    let optional = [
        ("exit_code", status.exit_code.map(|c| json!(c))),
        ("reason", status.reason.map(|r| json!(r))),
        (
            "started_at",
            status.started_at.map(|t| json!(super::time(&t))),
        ),
        (
            "finished_at",
            status.finished_at.map(|t| json!(super::time(&t))),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            entry[name] = value;
        }
    }
    entry
}

/// The task name an inline image stands for: its last path segment without tag or digest,
/// as a lowercase DNS label.
fn name_of_image(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let bare = last.split(['@', ':']).next().unwrap_or(last);
    let label: String = bare
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let label: String = label.trim_matches('-').chars().take(50).collect();
    let label = label.trim_end_matches('-').to_string();
    if label.is_empty() {
        "task".to_string()
    } else {
        label
    }
}

/// What a spawn runs: the task's name and its spec.
fn resolve(
    store: &Store,
    namespace: &str,
    request: SpawnRequest,
) -> Result<(String, TaskSpec), Box<Response>> {
    match (request.task, request.image) {
        (Some(_), Some(_)) => Err(bad(
            "give either task (a task a deploy defined) or image, not both",
        )),
        (None, None) => Err(bad(
            "give task (a task a deploy defined) or image (to run inline)",
        )),
        (Some(task), None) => {
            if request.command.is_some()
                || request.cpu.is_some()
                || request.memory.is_some()
                || request.timeout.is_some()
            {
                return Err(bad(format!(
                    "with task, only env may be given: command, cpu, memory and timeout come from task {task:?}"
                )));
            }
            let Some((_, _, found)) = object::<Task>(store, TASKS, Some(namespace), &task) else {
                let names: Vec<String> = typed::<Task>(store, TASKS, Some(namespace))
                    .into_iter()
                    .filter_map(|t| t.metadata.name)
                    .collect();
                let known = if names.is_empty() {
                    "it defines none".to_string()
                } else {
                    format!("it defines {}", names.join(", "))
                };
                return Err(Box::new(error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no task {task:?} in namespace {namespace} ({known}); deploy a config with a task block, or spawn --image"
                    ),
                )));
            };
            let mut spec = found.spec;
            spec.env.extend(request.env);
            Ok((task, spec))
        }
        (None, Some(image)) => {
            if image.trim().is_empty() {
                return Err(bad("image must name an OCI image"));
            }
            // The Task kind's defaults for what the request leaves out.
            let mut spec: TaskSpec = serde_json::from_value(json!({ "image": image }))
                .map_err(|e| bad(format!("invalid image: {e}")))?;
            spec.command = request.command;
            if let Some(cpu) = request.cpu {
                if !(cpu.is_finite() && cpu > 0.0) {
                    return Err(bad(format!(
                        "cpu must be a positive number of cores, not {cpu}"
                    )));
                }
                spec.cpu = cpu;
            }
            if let Some(memory) = request.memory {
                if memory.bytes() == 0 {
                    return Err(bad("memory must be more than 0"));
                }
                spec.memory = memory;
            }
            if let Some(timeout) = request.timeout {
                if timeout.get().is_zero() {
                    return Err(bad("timeout must be more than 0"));
                }
                spec.timeout = timeout;
            }
            spec.env = request.env;
            Ok((name_of_image(&image), spec))
        }
    }
}

/// `POST /v1/tasks/spawn` → `{id, node, status, address}`.
pub(crate) async fn spawn(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Response {
    let namespace = query.namespace();
    let request: SpawnRequest = match parse_body(&body, "spawn request") {
        Ok(request) => request,
        Err(answer) => return *answer,
    };
    let store = &state.store;
    if let Err(err) = store.read_barrier().await {
        return store_error(&err);
    }
    match crate::api::namespace_exists(store, namespace).await {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no namespace {namespace}; deploy to it first, or pick another with -n"),
            );
        }
        Err(err) => return store_error(&err),
    }
    let (task, spec) = match resolve(store, namespace, request) {
        Ok(resolved) => resolved,
        Err(answer) => return *answer,
    };
    let alloc_spec = AllocSpec {
        owner: AllocOwner {
            kind: OwnerKind::Task,
            name: task.clone(),
        },
        service: None,
        revision: 0,
        template: ContainerTemplate {
            image: spec.image,
            command: spec.command,
            port: None,
            cpu: spec.cpu,
            memory: spec.memory,
            env: spec.env,
            health: None,
            volumes: Vec::new(),
        },
        node_name: None,
        host_port: None,
        desired_state: DesiredState::Running,
        draining: false,
        timeout: Some(spec.timeout),
        evict: false,
    };
    // A taken name (4 random characters can collide) is retried with fresh ones.
    let mut last = None;
    for _ in 0..5 {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let id = format!("{task}-{}", &suffix[..4]);
        let now = objects::now_rfc3339();
        let alloc = json!({
            "apiVersion": "mill.dev/v1",
            "kind": "Alloc",
            "metadata": {
                "name": id, "namespace": namespace, "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": now,
                "labels": {mill_controllers::OWNER_LABEL: task},
            },
            "spec": alloc_spec,
        });
        let txn = Txn {
            ops: vec![Op::Create {
                key: Key {
                    resource: ALLOCS.to_string(),
                    namespace: Some(namespace.to_string()),
                    name: id.clone(),
                },
                object: alloc,
            }],
            now,
        };
        match store.propose(txn).await {
            Ok(_) => {
                return super::super::respond::json(
                    StatusCode::CREATED,
                    &json!({"id": id, "node": null, "status": "pending", "address": null}),
                )
            }
            Err(StoreError::AlreadyExists(key)) => last = Some(StoreError::AlreadyExists(key)),
            Err(err) => return store_error(&err),
        }
    }
    store_error(&last.unwrap_or_else(|| StoreError::Internal("no name found".to_string())))
}

fn task_runs(store: &Store, namespace: &str) -> Vec<Alloc> {
    let mut runs: Vec<Alloc> = typed(store, ALLOCS, Some(namespace));
    runs.retain(|a| a.spec.owner.kind == OwnerKind::Task);
    runs.sort_by(|a, b| {
        let at = |a: &Alloc| a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (at(a), &a.metadata.name).cmp(&(at(b), &b.metadata.name))
    });
    runs
}

/// `GET /v1/tasks`: every run of the namespace, oldest first.
pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    let runs = task_runs(&state.store, query.namespace());
    respond::ok(&Value::Array(runs.iter().map(task_json).collect()))
}

fn no_such_run(id: &str, namespace: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no task run {id:?} in namespace {namespace}; see mill ps"),
    )
}

fn find_run(store: &Store, namespace: &str, id: &str) -> Option<(Key, Value, Alloc)> {
    object::<Alloc>(store, ALLOCS, Some(namespace), id)
        .filter(|(_, _, a)| a.spec.owner.kind == OwnerKind::Task)
}

/// `GET /v1/tasks/{id}`.
pub(crate) async fn get(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    match find_run(&state.store, query.namespace(), &id) {
        Some((_, _, alloc)) => respond::ok(&task_json(&alloc)),
        None => no_such_run(&id, query.namespace()),
    }
}

/// `DELETE /v1/tasks/{id}`: stop the run; it ends `stopped`. A run that already ended is
/// left as it is.
pub(crate) async fn kill(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    for _ in 0..ATTEMPTS {
        if let Some(answer) = kill_once(&state.store, query.namespace(), &id).await {
            return answer;
        }
    }
    kept_changing(&format!("task run {id}"))
}

/// One kill attempt: the answer, or `None` when the run changed since it was read.
async fn kill_once(store: &Store, namespace: &str, id: &str) -> Option<Response> {
    if let Err(err) = store.read_barrier().await {
        return Some(store_error(&err));
    }
    let Some((key, stored, alloc)) = find_run(store, namespace, id) else {
        return Some(no_such_run(id, namespace));
    };
    let ended = alloc.status.as_ref().is_some_and(|s| s.phase.is_terminal());
    if ended || alloc.spec.desired_state == DesiredState::Stopped {
        return Some(respond::ok(&task_json(&alloc)));
    }
    let mut updated = stored.clone();
    updated["spec"]["desiredState"] = json!(DesiredState::Stopped);
    let txn = Txn {
        ops: vec![Op::Update {
            key,
            object: updated,
            expected_rv: rv_of(&stored),
            part: Part::Main,
        }],
        now: objects::now_rfc3339(),
    };
    match store.propose(txn).await {
        Ok(applied) => {
            let alloc = applied
                .objects
                .first()
                .cloned()
                .flatten()
                .and_then(|o| serde_json::from_value::<Alloc>(o).ok())
                .unwrap_or(alloc);
            Some(respond::ok(&task_json(&alloc)))
        }
        Err(StoreError::Conflict { .. }) => None,
        Err(err) => Some(store_error(&err)),
    }
}

#[cfg(test)]
mod tests {
    use super::name_of_image;

    #[test]
    fn an_inline_image_is_named_after_its_last_path_segment() {
        assert_eq!(
            name_of_image("127.0.0.1:5000/tools/busybox:1.36"),
            "busybox"
        );
        assert_eq!(name_of_image("alpine"), "alpine");
        assert_eq!(name_of_image("ghcr.io/a/My_Tool@sha256:abc"), "my-tool");
        assert_eq!(name_of_image("___"), "task");
    }
}
