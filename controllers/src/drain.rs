//! The drain planner: empties an unschedulable node (SPEC §6 `mill drain`).
//!
//! An unschedulable node is `draining`. Its service allocs are evicted one at a time
//! (`spec.evict`): the rollout planner starts a replacement elsewhere and stops the
//! evicted one only once the replacement is healthy and routed. Its task runs are
//! stopped. A draining node with no active alloc left is `drained` and may be removed;
//! [`check_removal`] refuses before that.

use crate::action::Action;
use crate::view::{self, is_active, ObjectKey, View};
use mill_crds::{Alloc, DesiredState, Node, NodeState, OwnerKind};

/// Why a node cannot be removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveRefused {
    /// Allocs still run there: drain it first.
    #[error("node still has active allocations ({0}); drain it first with `mill drain`")]
    ActiveAllocations(usize),
}

/// The writes that move every unschedulable node towards empty.
pub fn plan(view: &View) -> Vec<Action> {
    let mut actions = Vec::new();
    for node in &view.nodes {
        let status = node.status.clone().unwrap_or_default();
        if status.state == NodeState::Down {
            continue;
        }
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if !node.spec.unschedulable {
            if status.state == NodeState::Draining || status.drained {
                actions.push(Action::SetNodeState {
                    node: name.to_string(),
                    state: NodeState::Ready,
                    drained: false,
                });
            }
            continue;
        }
        let mut on_node: Vec<&Alloc> = view
            .allocs
            .iter()
            .map(|a| &**a)
            .filter(|a| a.spec.node_name.as_deref() == Some(name) && !view::phase(a).is_terminal())
            .collect();
        on_node.sort_by_key(|a| ObjectKey::of(&a.metadata));
        let drained = on_node.is_empty();
        if status.state != NodeState::Draining || status.drained != drained {
            actions.push(Action::SetNodeState {
                node: name.to_string(),
                state: NodeState::Draining,
                drained,
            });
        }
        for task in on_node
            .iter()
            .filter(|a| a.spec.owner.kind == OwnerKind::Task && is_active(a))
        {
            actions.push(Action::SetDesiredState {
                alloc: ObjectKey::of(&task.metadata),
                state: DesiredState::Stopped,
            });
        }
        let replicas: Vec<&&Alloc> = on_node
            .iter()
            .filter(|a| a.spec.owner.kind == OwnerKind::Service && is_active(a))
            .collect();
        if !replicas.iter().any(|a| a.spec.evict) {
            if let Some(next) = replicas.iter().find(|a| !a.spec.draining) {
                actions.push(Action::Evict {
                    alloc: ObjectKey::of(&next.metadata),
                });
            }
        }
    }
    actions
}

/// Whether `node` may be removed from the cluster: only once nothing runs on it.
pub fn check_removal(view: &View, node: &Node) -> Result<(), RemoveRefused> {
    let name = node.metadata.name.as_deref();
    let active = view
        .allocs
        .iter()
        .filter(|a| a.spec.node_name.as_deref() == name && !view::phase(a).is_terminal())
        .count();
    if active == 0 {
        Ok(())
    } else {
        Err(RemoveRefused::ActiveAllocations(active))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use mill_crds::AllocPhase;
    use std::sync::Arc;

    fn draining_node() -> Node {
        let mut node = fixtures::node("node-1", 4.0, "8G");
        node.spec.unschedulable = true;
        node
    }

    fn view(node: Node, allocs: Vec<Alloc>) -> View {
        View {
            nodes: vec![Arc::new(node)],
            allocs: allocs.into_iter().map(Arc::new).collect(),
            ..View::default()
        }
    }

    #[test]
    fn drain_evicts_one_replica_at_a_time_and_stops_tasks() {
        let a = fixtures::alloc("web-1-1", "web", 1, AllocPhase::Healthy);
        let b = fixtures::alloc("api-1-1", "api", 1, AllocPhase::Healthy);
        let mut task = fixtures::alloc("report-x", "report", 0, AllocPhase::Running);
        task.spec.owner.kind = OwnerKind::Task;
        let actions = plan(&view(draining_node(), vec![a.clone(), b.clone(), task]));
        assert!(actions.contains(&Action::Evict {
            alloc: fixtures::key("api-1-1")
        }));
        assert!(!actions.contains(&Action::Evict {
            alloc: fixtures::key("web-1-1")
        }));
        assert!(actions.contains(&Action::SetDesiredState {
            alloc: fixtures::key("report-x"),
            state: DesiredState::Stopped
        }));
        let mut evicted = b;
        evicted.spec.evict = true;
        let actions = plan(&view(draining_node(), vec![a, evicted]));
        assert!(
            !actions.iter().any(|x| matches!(x, Action::Evict { .. })),
            "waits for the evicted replica to be replaced"
        );
    }

    #[test]
    fn an_empty_draining_node_is_drained_and_may_be_removed() {
        let stopped = fixtures::alloc("web-1-1", "web", 1, AllocPhase::Stopped);
        let v = view(draining_node(), vec![stopped]);
        assert_eq!(
            plan(&v),
            vec![Action::SetNodeState {
                node: "node-1".to_string(),
                state: NodeState::Draining,
                drained: true
            }]
        );
        assert_eq!(check_removal(&v, &v.nodes[0]), Ok(()));
    }

    #[test]
    fn removing_a_node_with_active_allocs_is_refused() {
        let v = view(
            fixtures::node("node-1", 4.0, "8G"),
            vec![fixtures::alloc("web-1-1", "web", 1, AllocPhase::Healthy)],
        );
        let refused = check_removal(&v, &v.nodes[0]).unwrap_err();
        assert!(refused
            .to_string()
            .starts_with("node still has active allocations"));
    }

    #[test]
    fn an_uncordoned_node_is_ready_again() {
        let mut node = fixtures::node("node-1", 4.0, "8G");
        node.status.as_mut().unwrap().state = NodeState::Draining;
        assert_eq!(
            plan(&view(node, vec![])),
            vec![Action::SetNodeState {
                node: "node-1".to_string(),
                state: NodeState::Ready,
                drained: false
            }]
        );
    }
}
