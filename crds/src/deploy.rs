//! `Deploy`: one `mill deploy`, what it changed and how each service fared.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One `mill deploy` of a namespace's config.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mill.dev",
    version = "v1",
    kind = "Deploy",
    namespaced,
    status = "DeployStatus",
    category = "all",
    category = "mill",
    doc = "One mill deploy: what it changed, per-service progress and the result.",
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "running, succeeded or failed"
    ),
    printcolumn(
        name = "Services",
        type_ = "integer",
        json_path = ".status.serviceCount",
        description = "Services it touched"
    ),
    printcolumn(
        name = "Elapsed",
        type_ = "number",
        json_path = ".status.elapsed",
        description = "Seconds from start to end"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DeploySpec {
    /// What the deploy changes, one entry per service or task of the namespace.
    #[serde(default)]
    pub changes: Vec<DeployChange>,
    /// A hash of the config text it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// How a deploy changes one service or task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployChange {
    /// `service` or `task`.
    pub kind: String,
    /// The service's or task's name.
    pub name: String,
    /// `new`, `unchanged`, `rollout`, `scale`, `routes` or `removed`.
    pub change: String,
    /// The revision a rollout moves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// The progress of a deploy: the event log that `mill deploy` renders.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployStatus {
    /// `running`, `succeeded` or `failed`.
    #[serde(default)]
    pub phase: DeployPhase,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Seconds from start to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed: Option<f64>,
    /// How many services it touched.
    #[serde(default)]
    pub service_count: i32,
    /// The per-service event log, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<DeployEvent>,
    /// How each service of the deploy ended, once it has; the deploy ends when every
    /// service it touched has a result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<DeployResult>,
}

/// How one service of a deploy ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployResult {
    /// The service.
    pub service: String,
    /// Whether it reached the deploy's revision (or was removed or left unchanged).
    pub success: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a deploy is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeployPhase {
    /// Rollouts are in progress.
    #[default]
    Running,
    /// Every service is healthy at its new revision.
    Succeeded,
    /// Some service failed (and was rolled back where allowed).
    Failed,
}

/// One progress event of a deploy (`scheduled`, `healthy`, `failed`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployEvent {
    /// When it happened.
    pub time: Time,
    /// The phase: `started`, `pulling`, `scheduled`, `starting`, `healthy`, `routed`,
    /// `stopped`, `rolling_back`, `rolled_back`, `removed`, `unchanged`, `failed`.
    pub phase: String,
    /// The service it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The node, for `scheduled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The alloc, for `scheduled` and `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc: Option<String>,
    /// Seconds since the deploy started, for `healthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed: Option<f64>,
    /// Why, for `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
