//! What a planner observed: objects from the reflector stores plus the routing state.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use mill_crds::{
    Alloc, AllocCondition, AllocPhase, Deploy, DesiredState, Node, NodeState, OwnerKind, Service,
    Volume,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The observed cluster, as the reflector stores hold it. A planner reads only the kinds
/// it needs; the loop may leave the others empty.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Every Service.
    pub services: Vec<Arc<Service>>,
    /// Every Alloc.
    pub allocs: Vec<Arc<Alloc>>,
    /// Every Node.
    pub nodes: Vec<Arc<Node>>,
    /// Every Volume.
    pub volumes: Vec<Arc<Volume>>,
    /// Every Deploy.
    pub deploys: Vec<Arc<Deploy>>,
    /// What the nodes' routing tables have applied: the routing barrier's input.
    pub routing: Routing,
}

/// The routing barrier's input, from the node RPC: how far each node's DNS, VIP and proxy
/// tables are, and what is still in flight to each backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// Per node name: the store revision (log index) its routing tables have applied.
    /// A live node missing here has applied nothing.
    pub applied: BTreeMap<String, u64>,
    /// Per alloc: requests in flight through mill's proxies and VIPs, summed over nodes.
    /// An alloc missing here has none.
    pub in_flight: BTreeMap<ObjectKey, u32>,
}

impl Routing {
    /// The revision every live (not down) node has applied: a write at or below it is in
    /// every routing table that matters. Down nodes are excluded, as DESIGN says.
    pub fn applied_everywhere(&self, nodes: &[Arc<Node>]) -> u64 {
        nodes
            .iter()
            .filter(|n| node_state(n) != NodeState::Down)
            .map(|n| self.applied.get(&name(&n.metadata)).copied().unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// A namespaced object's address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of an object with this metadata.
    pub fn of(meta: &ObjectMeta) -> ObjectKey {
        ObjectKey {
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            name: name(meta),
        }
    }
}

pub(crate) fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// The store revision of an object; unknown counts as "not yet applied anywhere".
pub(crate) fn resource_version(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(u64::MAX)
}

pub(crate) fn created(meta: &ObjectMeta) -> Option<Timestamp> {
    meta.creation_timestamp.as_ref().map(|t| t.0)
}

pub(crate) fn node_state(node: &Node) -> NodeState {
    node.status.as_ref().map(|s| s.state).unwrap_or_default()
}

pub(crate) fn phase(alloc: &Alloc) -> AllocPhase {
    alloc.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

pub(crate) fn condition<'a>(alloc: &'a Alloc, type_: &str) -> Option<&'a AllocCondition> {
    alloc
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

pub(crate) fn condition_is(alloc: &Alloc, type_: &str, status: &str) -> bool {
    condition(alloc, type_).is_some_and(|c| c.status == status)
}

/// Not ended and still wanted running.
pub(crate) fn is_active(alloc: &Alloc) -> bool {
    alloc.spec.desired_state == DesiredState::Running && !phase(alloc).is_terminal()
}

pub(crate) fn is_service_alloc(alloc: &Alloc) -> bool {
    alloc.spec.owner.kind == OwnerKind::Service
}

/// The conditions of `alloc` with `condition` put in place of any of its type; the
/// transition time is kept when the status does not change.
pub(crate) fn with_condition(
    alloc: &Alloc,
    type_: &str,
    status: &str,
    message: Option<String>,
    now: Timestamp,
) -> Vec<AllocCondition> {
    let mut conditions: Vec<AllocCondition> = alloc
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let since = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(AllocCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        last_transition_time: Some(since),
        message,
    });
    conditions
}

/// How long from `since` to `now`; zero when `since` is in the future.
pub(crate) fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let d = now.as_millisecond().saturating_sub(since.as_millisecond());
    Duration::from_millis(u64::try_from(d).unwrap_or(0))
}

/// `n` cores as a person writes it: `2`, `0.5`.
pub(crate) fn cores(n: f64) -> String {
    let text = format!("{n:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
