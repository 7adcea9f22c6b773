//! The writes planners ask for, as plain data. Each variant is one API write; its doc says
//! which. The loop applies a plan's actions in order.

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
