//! `Service`: a long-running service, the `service` block of a `.mill` file.

use crate::alloc::ContainerTemplate;
use crate::quantity::{ByteSize, Duration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The desired state of a service: the `service` block of a `.mill` file, field for field.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mill.dev",
    version = "v1",
    kind = "Service",
    namespaced,
    status = "ServiceStatus",
    shortname = "svc",
    category = "all",
    category = "mill",
    doc = "A long-running service: replicas of one container behind a stable address.",
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        description = "The OCI image"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired replicas"
    ),
    printcolumn(
        name = "Healthy",
        type_ = "integer",
        json_path = ".status.healthyReplicas",
        description = "Healthy replicas of the current revision"
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".status.revision",
        description = "The revision that serves"
    ),
    printcolumn(
        name = "Port",
        type_ = "integer",
        json_path = ".spec.port",
        priority = 1,
        description = "The service port"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The OCI image reference to run.
    pub image: String,
    /// The command and its arguments; the image's entrypoint and cmd when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The service port (1–65535): the port of its stable address and virtual IP.
    pub port: u16,
    /// How many replicas to run.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// CPU cores per replica: reservation and cgroup limit at once.
    #[serde(default = "default_cpu")]
    pub cpu: f64,
    /// Memory per replica: reservation and cgroup limit at once.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Environment variables; values may use `${secret(NAME)}` and `${service.NAME.address}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The HTTP health check; without one a replica is healthy once running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// External ingress routes to this service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Volumes mounted into every replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// The rollout policy.
    #[serde(default)]
    pub update: UpdatePolicy,
}

/// An HTTP GET health check; a 2xx or 3xx answer is healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// The path to GET; starts with `/`.
    pub path: String,
    /// The steady-state probe period.
    #[serde(default = "default_health_interval")]
    pub interval: Duration,
    /// How long one probe may take.
    #[serde(default = "default_health_timeout")]
    pub timeout: Duration,
    /// Consecutive failures before the replica is unhealthy.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1))]
    pub failure_threshold: u32,
}

/// An external ingress route: requests for `host` under `path` go to the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The HTTP Host this route answers.
    pub host: String,
    /// The path prefix; the longest matching prefix wins.
    #[serde(default = "default_route_path")]
    pub path: String,
    /// Whether WebSocket upgrades are allowed.
    #[serde(default)]
    pub websocket: bool,
}

/// A volume mounted into the service's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// The volume's name (a DNS label), unique in the namespace.
    pub name: String,
    /// The mount point inside the container.
    pub path: String,
    /// The volume's size; required unless ephemeral.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// Host scratch space, fresh on every placement and lost on reschedule.
    #[serde(default)]
    pub ephemeral: bool,
}

/// How a new revision is rolled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdatePolicy {
    /// How many replicas are replaced at once.
    #[serde(default = "default_max_parallel")]
    #[schemars(range(min = 1))]
    pub max_parallel: u32,
    /// How long a new replica has to become healthy before the rollout fails.
    #[serde(default = "default_update_health_timeout")]
    pub health_timeout: Duration,
    /// Whether a failed rollout moves replicas back to the previous revision.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            max_parallel: default_max_parallel(),
            health_timeout: default_update_health_timeout(),
            auto_rollback: true,
        }
    }
}

/// The observed state of a service, written by the rollout controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// The revision whose replicas serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The revision a rollout in progress moves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<i64>,
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Replicas of the current revision that are healthy.
    #[serde(default)]
    pub healthy_replicas: i32,
    /// The stable virtual IP of the service (in 127.77.0.0/16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_ip: Option<String>,
    /// Why the last rollout failed or was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The retained revisions, oldest first (10 by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Revision>,
    /// Standard conditions (`Available`, `Progressing`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One retained revision of a service's container template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// The revision number, increasing from 1.
    pub revision: i64,
    /// The container template of this revision.
    pub template: ContainerTemplate,
    /// When the revision was made.
    pub created_at: Time,
    /// What made it: the deploy's name, `rollback`, `restart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The restart request (the Service's `mill.dev/restart` annotation) current when the
    /// revision was made; a different request on the Service makes the next revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Why the rollout of this revision failed; a failed revision is never rolled out again
    /// by the same deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl ServiceSpec {
    /// The part of the spec that shapes the container: a change to it is a new revision.
    pub fn template(&self) -> ContainerTemplate {
        ContainerTemplate {
            image: self.image.clone(),
            command: self.command.clone(),
            port: Some(self.port),
            cpu: self.cpu,
            memory: self.memory,
            env: self.env.clone(),
            health: self.health.clone(),
            volumes: self.volumes.clone(),
        }
    }
}

fn default_replicas() -> i32 {
    1
}
pub(crate) fn default_cpu() -> f64 {
    0.25
}
pub(crate) fn default_memory() -> ByteSize {
    ByteSize(256_000_000)
}
fn default_health_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_route_path() -> String {
    "/".to_string()
}
fn default_max_parallel() -> u32 {
    1
}
fn default_update_health_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_service_gets_the_spec_defaults() {
        let spec: ServiceSpec =
            serde_json::from_value(serde_json::json!({"image": "web:1", "port": 8080})).unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.cpu, 0.25);
        assert_eq!(spec.memory.to_string(), "256M");
        assert_eq!(spec.update.max_parallel, 1);
        assert_eq!(spec.update.health_timeout.to_string(), "30s");
        assert!(spec.update.auto_rollback);
        let health: HealthCheck =
            serde_json::from_value(serde_json::json!({"path": "/h"})).unwrap();
        assert_eq!(health.interval.to_string(), "10s");
        assert_eq!(health.timeout.to_string(), "2s");
        assert_eq!(health.failure_threshold, 3);
        let route: Route = serde_json::from_value(serde_json::json!({"host": "a.b"})).unwrap();
        assert_eq!(route.path, "/");
        assert!(!route.websocket);
    }
}
