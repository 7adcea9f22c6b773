//! `Volume`: a named volume and where it is attached.

use crate::quantity::ByteSize;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A named persistent volume of a namespace.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mill.dev",
    version = "v1",
    kind = "Volume",
    namespaced,
    status = "VolumeStatus",
    shortname = "vol",
    category = "all",
    category = "mill",
    doc = "A named volume and where it is attached.",
    printcolumn(
        name = "Size",
        type_ = "string",
        json_path = ".spec.size",
        description = "The volume's size"
    ),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.state",
        description = "attached, detached or moving"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.node",
        description = "The node that holds it"
    ),
    printcolumn(
        name = "Service",
        type_ = "string",
        json_path = ".spec.service",
        description = "The service using it"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// The volume's size.
    pub size: ByteSize,
    /// The provider that stores it (`local`: under the holding node's data dir).
    #[serde(default = "default_provider")]
    pub provider: String,
    /// The service that mounts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Where a volume is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// `attached`, `detached` or `moving`.
    #[serde(default)]
    pub state: VolumeState,
    /// The node that holds the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The provider's own id for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_id: Option<String>,
}

/// Whether a volume is in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// Not mounted by any alloc.
    #[default]
    Detached,
    /// Mounted by an alloc on `node`.
    Attached,
    /// Being copied to another node.
    Moving,
}

fn default_provider() -> String {
    "local".to_string()
}
