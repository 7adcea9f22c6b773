//! `Alloc`: one placed instance of a service replica or a task run.

use crate::quantity::{ByteSize, Duration};
use crate::service::{HealthCheck, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What to run and where: written by the controllers, executed by the node's agent.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mill.dev",
    version = "v1",
    kind = "Alloc",
    namespaced,
    status = "AllocStatus",
    category = "all",
    category = "mill",
    doc = "One placed instance of a service replica or a task run.",
    printcolumn(
        name = "Service",
        type_ = "string",
        json_path = ".spec.owner.name",
        description = "The service or task it belongs to"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".spec.nodeName",
        description = "The node it runs on"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "The lifecycle phase"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.address",
        description = "node-ip:host-port"
    ),
    printcolumn(
        name = "Restarts",
        type_ = "integer",
        json_path = ".status.restarts",
        description = "In-place restarts"
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".spec.revision",
        priority = 1,
        description = "The owner's revision"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.nodeName",
    selectable = ".spec.service",
    selectable = ".status.phase"
)]
#[serde(rename_all = "camelCase")]
pub struct AllocSpec {
    /// The service or task this alloc is an instance of.
    pub owner: AllocOwner,
    /// The owning service's name, for field selectors (`spec.service`); absent for tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The owner's revision this alloc runs (services; 0 for tasks).
    #[serde(default)]
    pub revision: i64,
    /// The container to run, copied from the owner's revision.
    pub template: ContainerTemplate,
    /// The node it is placed on; unset until the scheduler places it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The port from the node's pool the container listens on (`$PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// What the agent should make true: running or stopped.
    #[serde(default)]
    pub desired_state: DesiredState,
    /// Taken out of routing: the proxy lets in-flight requests finish, sends no new ones.
    #[serde(default)]
    pub draining: bool,
    /// Tasks: a run still going after this long is killed and marked failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Set by a drain: replace this replica on another node (the replacement healthy and
    /// routed first), then stop it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evict: bool,
}

/// Who an alloc belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocOwner {
    /// A service replica or a task run.
    pub kind: OwnerKind,
    /// The service's or task's name.
    pub name: String,
}

/// The kind of thing an alloc is an instance of.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    /// A replica of a service.
    Service,
    /// A run of a task template (or of an inline image).
    Task,
}

/// The container an alloc runs: the part of a service or task that shapes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerTemplate {
    /// The OCI image reference.
    pub image: String,
    /// The command and its arguments; the image's entrypoint and cmd when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The service port, for services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// CPU cores: reservation and cgroup limit.
    pub cpu: f64,
    /// Memory: reservation and cgroup limit.
    pub memory: ByteSize,
    /// Environment, with `${..}` references unresolved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The health check, for services that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Volumes to mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
}

/// What the agent should make true of an alloc's container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DesiredState {
    /// Run it (and keep a service replica running).
    #[default]
    Running,
    /// Stop it: SIGTERM, then SIGKILL after the stop grace.
    Stopped,
}

/// The lifecycle phase of an alloc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AllocPhase {
    /// Placed (or waiting to be), not started.
    #[default]
    Pending,
    /// The node is pulling the image.
    Pulling,
    /// The container is being created and started.
    Starting,
    /// The container runs.
    Running,
    /// Running and passing its health check (or running, without one).
    Healthy,
    /// Being stopped.
    Stopping,
    /// Stopped on purpose, or a task that exited 0.
    Stopped,
    /// Failed; `reason` says why.
    Failed,
}

impl AllocPhase {
    /// Whether the alloc has ended and will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, AllocPhase::Stopped | AllocPhase::Failed)
    }
}

/// The observed state of an alloc, written by its node's agent and the controllers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocStatus {
    /// The lifecycle phase.
    #[serde(default)]
    pub phase: AllocPhase,
    /// Why it failed or stopped: `image pull failed: ...`, `exited with code 2`, `OOM killed`,
    /// `health check timeout after 30s`, `node lost`, `timeout after 30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `node-ip:host-port` where the container listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The exit code of the last container process to exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How often the container was restarted in place.
    #[serde(default)]
    pub restarts: i32,
    /// The containerd container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// When the container last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Conditions such as `Healthy` and `Routed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<AllocCondition>,
}

/// One condition of an alloc (`Healthy`, `Routed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocCondition {
    /// The condition's name.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// A human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
