//! The writes planners ask for, as plain data. Each variant is one API write; its doc says
//! which. The loop applies a plan's actions in order, except those the plan marks
//! [`Action::Independent`], which it sends at once, concurrently with the ordered ones
//! (the leader's store proposer commits concurrent writes in one Raft entry, so a group of
//! them costs about one write).
//!
//! # When a write may be independent
//! A planner wraps a write in [`Action::Independent`] only when all of these hold:
//! - its reason is in the View alone: it does not rely on an earlier write of the plan
//!   having landed (a precondition, or a guarantee such as "the new alloc is routed before
//!   the old one is drained", which stays in order);
//! - no later write of the plan relies on it having landed (a rollback's template write
//!   follows the status write that records the failed revision, so that status write stays
//!   in order);
//! - no other write of the plan touches the same object (two writes of one object carry
//!   the same observed resourceVersion, or their order on that object matters).
//!
//! It may fail on its own (a 409 of an independent write does not end the batch; the next
//! plan, made from a View with the other writes in it, decides again).

use crate::view::ObjectKey;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use mill_crds::{
    Alloc, AllocCondition, AllocPhase, AllocSpec, ContainerTemplate, DeployStatus, DesiredState,
    NodeState, ServiceStatus,
};

/// One write to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create this Alloc (POST [`NewAlloc::to_alloc`]). Its name is deterministic:
    /// `AlreadyExists` means an earlier plan made it, and is success.
    CreateAlloc(Box<NewAlloc>),
    /// Place an alloc: merge-patch `spec.nodeName` and `spec.hostPort`.
    PlaceAlloc {
        /// The alloc.
        alloc: ObjectKey,
        /// The node it goes to.
        node: String,
        /// The port from that node's pool.
        host_port: u16,
    },
    /// Merge-patch `spec.desiredState`.
    SetDesiredState {
        /// The alloc.
        alloc: ObjectKey,
        /// Running or Stopped.
        state: DesiredState,
    },
    /// Merge-patch `spec.draining`: take the alloc out of (or put it back into) routing.
    SetDraining {
        /// The alloc.
        alloc: ObjectKey,
        /// Whether it is out of routing.
        draining: bool,
    },
    /// Merge-patch `spec.evict`: a drain asks for the replica to be moved off its node.
    Evict {
        /// The alloc.
        alloc: ObjectKey,
    },
    /// Merge-patch `status.phase` and `status.reason` (through `/status`). The agent keeps
    /// a terminal phase a controller wrote; it only stops the container.
    SetAllocPhase {
        /// The alloc.
        alloc: ObjectKey,
        /// The new phase.
        phase: AllocPhase,
        /// Why, for failed and stopped.
        reason: Option<String>,
    },
    /// Replace `status.conditions` (through `/status`, with the observed resourceVersion).
    SetAllocConditions {
        /// The alloc.
        alloc: ObjectKey,
        /// The whole new list.
        conditions: Vec<AllocCondition>,
    },
    /// Delete the alloc.
    DeleteAlloc {
        /// The alloc.
        alloc: ObjectKey,
    },
    /// Replace the Service's status (through `/status`, with the observed resourceVersion).
    WriteServiceStatus {
        /// The service.
        service: ObjectKey,
        /// The whole new status.
        status: Box<ServiceStatus>,
    },
    /// Merge-patch the container-shaping fields of the Service's spec (image, command,
    /// port, cpu, memory, env, health, volumes) to a retained revision's: a rollback.
    SetServiceTemplate {
        /// The service.
        service: ObjectKey,
        /// The template to write back.
        template: Box<ContainerTemplate>,
    },
    /// Add [`crate::SERVICE_FINALIZER`] to the Service's `metadata.finalizers`.
    AddServiceFinalizer {
        /// The service.
        service: ObjectKey,
    },
    /// Remove [`crate::SERVICE_FINALIZER`]: the deleted Service's allocs are all stopped.
    RemoveServiceFinalizer {
        /// The service.
        service: ObjectKey,
    },
    /// Merge-patch `status.state` and `status.drained` of a Node.
    SetNodeState {
        /// The node's name.
        node: String,
        /// Ready, draining or down.
        state: NodeState,
        /// Whether a draining node is empty.
        drained: bool,
    },
    /// Replace the Deploy's status (through `/status`, with the observed resourceVersion).
    WriteDeployStatus {
        /// The deploy.
        deploy: ObjectKey,
        /// The whole new status.
        status: Box<DeployStatus>,
    },
    /// Delete the Deploy.
    DeleteDeploy {
        /// The deploy.
        deploy: ObjectKey,
    },
    /// The wrapped write is independent of the plan's other writes (see the module doc):
    /// the loop sends it at once instead of in its place in the order.
    Independent(Box<Action>),
}

impl Action {
    /// This write, marked independent of the rest of its plan (see the module doc).
    pub fn independent(self) -> Action {
        match self {
            Action::Independent(_) => self,
            other => Action::Independent(Box::new(other)),
        }
    }

    /// The write itself, whether or not the plan marked it independent.
    pub fn write(&self) -> &Action {
        match self {
            Action::Independent(inner) => inner.write(),
            other => other,
        }
    }

    /// Whether the plan marked this write independent of its other writes.
    pub fn is_independent(&self) -> bool {
        matches!(self, Action::Independent(_))
    }
}

/// An alloc to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlloc {
    /// Its namespace and (deterministic) name.
    pub key: ObjectKey,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The Service that owns it, for cascading deletion.
    pub owner: Option<OwnerReference>,
    /// Its spec.
    pub spec: AllocSpec,
}

impl NewAlloc {
    /// The object to POST.
    pub fn to_alloc(&self) -> Alloc {
        Alloc {
            metadata: ObjectMeta {
                name: Some(self.key.name.clone()),
                namespace: Some(self.key.namespace.clone()),
                labels: Some(self.labels.clone()),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: self.spec.clone(),
            status: None,
        }
    }
}
