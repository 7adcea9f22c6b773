//! `Task`: a task template, the `task` block of a `.mill` file. Each run is an Alloc.

use crate::quantity::{ByteSize, Duration};
use crate::service::{default_cpu, default_memory};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A task template: what `mill spawn TASK` runs to completion.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mill.dev",
    version = "v1",
    kind = "Task",
    namespaced,
    status = "TaskStatus",
    category = "all",
    category = "mill",
    doc = "A task template: a container run to completion on demand.",
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        description = "The OCI image"
    ),
    printcolumn(
        name = "CPU",
        type_ = "number",
        json_path = ".spec.cpu",
        description = "CPU cores per run"
    ),
    printcolumn(
        name = "Memory",
        type_ = "string",
        json_path = ".spec.memory",
        description = "Memory per run"
    ),
    printcolumn(
        name = "Timeout",
        type_ = "string",
        json_path = ".spec.timeout",
        description = "Runs are killed after it"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// The OCI image reference to run.
    pub image: String,
    /// The command and its arguments; the image's entrypoint and cmd when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// CPU cores per run: reservation and cgroup limit at once.
    #[serde(default = "default_cpu")]
    pub cpu: f64,
    /// Memory per run: reservation and cgroup limit at once.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Environment variables; values may use `${secret(NAME)}` and `${service.NAME.address}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A run still going after this long is killed and marked failed.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

/// What is known about a task template's runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many runs were spawned in all.
    #[serde(default)]
    pub runs: i64,
    /// When the newest run was spawned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_spawned_at: Option<Time>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(3600)
}
