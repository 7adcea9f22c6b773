//! Declarations → `ServiceSpec` and `TaskSpec`.
//!
//! Only the fields the file sets are written; the specs' serde defaults fill in the rest,
//! so every default lives in one place (`mill_crds`), the same for a `.mill` file as for a
//! manifest applied through the API.

use super::parse::{ContainerDecl, Document, HealthDecl, ServiceDecl, TaskDecl};
use super::Config;
use mill_crds::{ByteSize, ServiceSpec, TaskSpec};
use serde_json::{json, Map, Value};

/// The specs of a valid document, in file order; `None` if a required field is missing
/// (validation has reported it then).
pub(crate) fn specs(document: &Document) -> Option<Config> {
    let services = document
        .services
        .iter()
        .map(|s| Some((s.name.value.clone(), service(s)?)))
        .collect::<Option<Vec<_>>>()?;
    let tasks = document
        .tasks
        .iter()
        .map(|t| Some((t.name.value.clone(), task(t)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Config { services, tasks })
}

/// The cpu and memory of a service or task that sets neither.
pub(crate) fn default_resources() -> (f64, ByteSize) {
    match serde_json::from_value::<TaskSpec>(json!({ "image": "" })) {
        Ok(spec) => (spec.cpu, spec.memory),
        // Unreachable: `image` is TaskSpec's only required field.
        Err(_) => (0.0, ByteSize(0)),
    }
}

fn service(decl: &ServiceDecl) -> Option<ServiceSpec> {
    let mut spec = container(&decl.container)?;
    spec.insert("port".into(), json!(decl.port?));
    set(&mut spec, "replicas", decl.replicas);
    if let Some(health) = &decl.health {
        spec.insert("health".into(), Value::Object(health_check(health)?));
    }
    let routes: Vec<Value> = decl
        .routes
        .iter()
        .map(|route| {
            let mut r = Map::new();
            r.insert("host".into(), json!(route.host.value));
            set(&mut r, "path", route.path.as_ref().map(|p| &p.value));
            set(&mut r, "websocket", route.websocket);
            Value::Object(r)
        })
        .collect();
    spec.insert("routes".into(), Value::Array(routes));
    let volumes = decl
        .volumes
        .iter()
        .map(|volume| {
            let mut v = Map::new();
            v.insert("name".into(), json!(volume.name.value));
            v.insert("path".into(), json!(volume.path.as_ref()?.value));
            set(&mut v, "size", volume.size);
            set(&mut v, "ephemeral", volume.ephemeral);
            Some(Value::Object(v))
        })
        .collect::<Option<Vec<_>>>()?;
    spec.insert("volumes".into(), Value::Array(volumes));
    if let Some(update) = &decl.update {
        let mut u = Map::new();
        set(&mut u, "maxParallel", update.max_parallel);
        set(&mut u, "healthTimeout", update.health_timeout);
        set(&mut u, "autoRollback", update.auto_rollback);
        spec.insert("update".into(), Value::Object(u));
    }
    serde_json::from_value(Value::Object(spec)).ok()
}

fn task(decl: &TaskDecl) -> Option<TaskSpec> {
    let mut spec = container(&decl.container)?;
    set(&mut spec, "timeout", decl.timeout);
    serde_json::from_value(Value::Object(spec)).ok()
}

fn container(decl: &ContainerDecl) -> Option<Map<String, Value>> {
    let mut spec = Map::new();
    spec.insert("image".into(), json!(decl.image.as_ref()?.value));
    if let Some(command) = &decl.command {
        let args: Vec<&str> = command.iter().map(|a| a.value.as_str()).collect();
        spec.insert("command".into(), json!(args));
    }
    set(&mut spec, "cpu", decl.cpu.as_ref().map(|c| c.value));
    set(&mut spec, "memory", decl.memory.as_ref().map(|m| m.value));
    let env: Map<String, Value> = decl
        .env
        .iter()
        .map(|(name, value)| (name.value.clone(), json!(value.value)))
        .collect();
    spec.insert("env".into(), Value::Object(env));
    Some(spec)
}

fn health_check(decl: &HealthDecl) -> Option<Map<String, Value>> {
    let mut h = Map::new();
    h.insert("path".into(), json!(decl.path.as_ref()?.value));
    set(&mut h, "interval", decl.interval);
    set(&mut h, "timeout", decl.timeout);
    set(&mut h, "failureThreshold", decl.failure_threshold);
    Some(h)
}

/// Sets `key` when the file gave a value, leaving the spec's default otherwise.
fn set<T: serde::Serialize>(map: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(value) = value.and_then(|v| serde_json::to_value(v).ok()) {
        map.insert(key.to_string(), value);
    }
}
