//! `Node`: a cluster member.

use crate::quantity::ByteSize;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A cluster member: a Raft voter that also runs containers.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mill.dev",
    version = "v1",
    kind = "Node",
    status = "NodeStatus",
    shortname = "no",
    category = "all",
    category = "mill",
    doc = "A cluster member: a Raft voter that also runs containers.",
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".spec.address",
        description = "The advertised address"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.state",
        description = "ready, draining or down"
    ),
    printcolumn(
        name = "Role",
        type_ = "string",
        json_path = ".status.raftRole",
        description = "The Raft role"
    ),
    printcolumn(
        name = "CPU",
        type_ = "number",
        json_path = ".status.allocatable.cpu",
        description = "Unreserved CPU cores"
    ),
    printcolumn(
        name = "Memory",
        type_ = "string",
        json_path = ".status.allocatable.memory",
        description = "Unreserved memory"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// The Raft node id.
    pub raft_id: u64,
    /// The advertised IP other nodes and DNS answers use.
    pub address: String,
    /// The API endpoint (`IP:PORT`) other nodes reach it on.
    pub api_address: String,
    /// Whether new allocs are kept off it (set by a drain).
    #[serde(default)]
    pub unschedulable: bool,
    /// The host ports its allocs get (`--port-range`); the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
}

/// An inclusive range of host ports, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    /// The lowest port of the range.
    pub first: u16,
    /// The highest port of the range.
    pub last: u16,
}

/// The observed state of a node: its agent's heartbeat and the nodes controller's verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// `ready`, `draining` or `down`.
    #[serde(default)]
    pub state: NodeState,
    /// The node's total resources.
    #[serde(default)]
    pub capacity: NodeResources,
    /// Resources not reserved by allocs.
    #[serde(default)]
    pub allocatable: NodeResources,
    /// When the agent last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
    /// The node's Raft role as it last reported it.
    #[serde(default)]
    pub raft_role: RaftRole,
    /// How many active allocs it runs.
    #[serde(default)]
    pub alloc_count: i32,
    /// A draining node that no longer runs any active alloc: it can be removed.
    #[serde(default)]
    pub drained: bool,
}

/// CPU and memory of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    /// CPU cores.
    pub cpu: f64,
    /// Memory.
    pub memory: ByteSize,
}

/// Whether a node takes work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeating and schedulable.
    #[default]
    Ready,
    /// Being emptied; no new allocs.
    Draining,
    /// Silent past the heartbeat timeout.
    Down,
}

/// A node's role in the Raft cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RaftRole {
    /// The leader: runs the controllers.
    Leader,
    /// A voting follower.
    #[default]
    Follower,
    /// Standing for election.
    Candidate,
    /// A non-voting member catching up.
    Learner,
}
