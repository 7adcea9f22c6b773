//! mill's resources: the Kubernetes-shaped custom resources of the `mill.dev/v1` API group.
//!
//! Every piece of cluster state is one of these kinds, stored in mill's replicated store
//! and served over its Kubernetes-compatible API. The controllers and the agent know only
//! these types and a `kube::Client`. The CRD manifests under `crds/yaml/` are generated
//! from them ([`all_crds`]) and a test fails when they drift.

// `#[kube(printcolumn(name = .., type_ = ..), printcolumn(..))]` repeats keys inside
// separate columns; clippy's duplicated-attributes lint reads them as one attribute.
#![allow(clippy::duplicated_attributes)]

mod alloc;
mod deploy;
mod node;
pub mod quantity;
mod service;
mod task;
pub mod template;
mod volume;

pub use alloc::{
    Alloc, AllocCondition, AllocOwner, AllocPhase, AllocSpec, AllocStatus, ContainerTemplate,
    DesiredState, OwnerKind,
};
pub use deploy::{
    Deploy, DeployChange, DeployEvent, DeployPhase, DeployResult, DeploySpec, DeployStatus,
};
pub use node::{Node, NodeResources, NodeSpec, NodeState, NodeStatus, PortRange, RaftRole};
pub use quantity::{ByteSize, Duration};
pub use service::{
    HealthCheck, Revision, Route, Service, ServiceSpec, ServiceStatus, UpdatePolicy, VolumeMount,
};
pub use task::{Task, TaskSpec, TaskStatus};
pub use volume::{Volume, VolumeSpec, VolumeState, VolumeStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every mill kind.
pub const GROUP: &str = "mill.dev";
/// The API version of every mill kind.
pub const VERSION: &str = "v1";

/// The CRDs of every mill kind, in a stable order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        Service::crd(),
        Task::crd(),
        Alloc::crd(),
        Node::crd(),
        Volume::crd(),
        Deploy::crd(),
    ]
}

/// The CRD of every mill kind as YAML, keyed by the file name it is checked in under
/// (`crds/yaml/<plural>.yaml`).
pub fn crd_files() -> Vec<(String, String)> {
    all_crds()
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.spec.names.plural);
            // Serialising a CRD built from our own types cannot fail: it is plain data.
            let yaml = serde_yaml::to_string(&crd).expect("CRD serialises to YAML");
            (file, yaml)
        })
        .collect()
}
