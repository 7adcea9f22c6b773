//! What validation needs to know about the cluster a config is deployed to.

use mill_crds::NodeResources;
use std::collections::BTreeSet;

/// The cluster-dependent facts validation checks a config against. Answers are `None`
/// where they cannot be known (offline), and those checks are then skipped.
pub trait ClusterFacts {
    /// Whether the namespace has a secret of this name; `None` if unknown.
    fn secret_exists(&self, name: &str) -> Option<bool>;
    /// Whether the namespace already has a service of this name (outside the file).
    fn service_exists(&self, name: &str) -> bool;
    /// The total capacity of every node; `None` if unknown.
    fn node_capacities(&self) -> Option<Vec<NodeResources>>;
}

/// No cluster at hand (`mill validate`): secrets and node capacity are not checked, and
/// `${service.X.address}` must name a service of the file itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offline;

impl ClusterFacts for Offline {
    fn secret_exists(&self, _name: &str) -> Option<bool> {
        None
    }

    fn service_exists(&self, _name: &str) -> bool {
        false
    }

    fn node_capacities(&self) -> Option<Vec<NodeResources>> {
        None
    }
}

/// Facts gathered up front from the store (by the deploy endpoint) or written by a test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSnapshot {
    /// Names of the namespace's secrets.
    pub secrets: BTreeSet<String>,
    /// Names of the namespace's stored services.
    pub services: BTreeSet<String>,
    /// The capacity of every node of the cluster.
    pub nodes: Vec<NodeResources>,
}

impl ClusterFacts for ClusterSnapshot {
    fn secret_exists(&self, name: &str) -> Option<bool> {
        Some(self.secrets.contains(name))
    }

    fn service_exists(&self, name: &str) -> bool {
        self.services.contains(name)
    }

    fn node_capacities(&self) -> Option<Vec<NodeResources>> {
        Some(self.nodes.clone())
    }
}
