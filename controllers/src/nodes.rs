//! The nodes planner: heartbeats decide whether a node is up.
//!
//! A node silent for [`Knobs::heartbeat_timeout`] is `down`; everything still placed on it
//! is `failed` with `node lost` and asked to stop (so the returning node stops what the
//! cluster replaced). Service replicas are then refilled by the rollout planner, task runs
//! are never retried. A down node heard from again is `ready` (or `draining`, if it was
//! being drained). Allocs placed on a node that no longer exists are lost the same way.

use crate::action::Action;
use crate::knobs::Knobs;
use crate::view::{self, ObjectKey, View};
use jiff::Timestamp;
use mill_crds::{AllocPhase, DesiredState, NodeState};
use std::collections::HashSet;

/// The reason an alloc on a lost node fails with.
pub const NODE_LOST: &str = "node lost";

/// Node verdicts from heartbeats, and the allocs lost with down nodes.
pub fn plan(view: &View, now: Timestamp, knobs: &Knobs) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut lost: HashSet<&str> = HashSet::new();
    let mut known: HashSet<&str> = HashSet::new();
    for node in &view.nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        known.insert(name);
        let status = node.status.clone().unwrap_or_default();
        let heard = status
            .last_heartbeat
            .as_ref()
            .map(|t| t.0)
            .or_else(|| view::created(&node.metadata))
            .unwrap_or(now);
        let silent = view::elapsed(heard, now) > knobs.heartbeat_timeout;
        if silent {
            lost.insert(name);
            if status.state != NodeState::Down {
                actions.push(Action::SetNodeState {
                    node: name.to_string(),
                    state: NodeState::Down,
                    drained: false,
                });
            }
        } else if status.state == NodeState::Down {
            actions.push(Action::SetNodeState {
                node: name.to_string(),
                state: if node.spec.unschedulable {
                    NodeState::Draining
                } else {
                    NodeState::Ready
                },
                drained: false,
            });
        }
    }
    for alloc in &view.allocs {
        let Some(node) = alloc.spec.node_name.as_deref() else {
            continue;
        };
        if view::phase(alloc).is_terminal() || (known.contains(node) && !lost.contains(node)) {
            continue;
        }
        let key = ObjectKey::of(&alloc.metadata);
        actions.push(Action::SetAllocPhase {
            alloc: key.clone(),
            phase: AllocPhase::Failed,
            reason: Some(NODE_LOST.to_string()),
        });
        if alloc.spec.desired_state == DesiredState::Running {
            actions.push(Action::SetDesiredState {
                alloc: key,
                state: DesiredState::Stopped,
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, t};
    use mill_crds::{Node, OwnerKind};
    use std::sync::Arc;

    fn world(node: Node, allocs: Vec<mill_crds::Alloc>) -> View {
        View {
            nodes: vec![Arc::new(node)],
            allocs: allocs.into_iter().map(Arc::new).collect(),
            ..View::default()
        }
    }

    #[test]
    fn a_node_silent_past_the_heartbeat_timeout_is_down_and_its_allocs_lost() {
        let mut task = fixtures::alloc("report-ab12", "report", 0, AllocPhase::Running);
        task.spec.owner.kind = OwnerKind::Task;
        let replica = fixtures::alloc("web-1-1", "web", 1, AllocPhase::Healthy);
        let done = fixtures::alloc("web-1-0", "web", 1, AllocPhase::Stopped);
        let view = world(
            fixtures::node("node-1", 4.0, "8G"),
            vec![task, replica, done],
        );
        let knobs = Knobs::default();
        assert!(
            plan(&view, t(15), &knobs).is_empty(),
            "15s is not past the timeout"
        );
        let actions = plan(&view, t(16), &knobs);
        assert_eq!(
            actions[0],
            Action::SetNodeState {
                node: "node-1".to_string(),
                state: NodeState::Down,
                drained: false
            }
        );
        for name in ["report-ab12", "web-1-1"] {
            assert!(actions.contains(&Action::SetAllocPhase {
                alloc: fixtures::key(name),
                phase: AllocPhase::Failed,
                reason: Some(NODE_LOST.to_string()),
            }));
            assert!(actions.contains(&Action::SetDesiredState {
                alloc: fixtures::key(name),
                state: DesiredState::Stopped,
            }));
        }
        assert_eq!(
            actions.len(),
            5,
            "the stopped alloc is left alone: {actions:?}"
        );
    }

    #[test]
    fn a_down_node_heard_from_again_is_ready() {
        let mut node = fixtures::node("node-1", 4.0, "8G");
        node.status.as_mut().unwrap().state = NodeState::Down;
        let actions = plan(&world(node.clone(), vec![]), t(1), &Knobs::default());
        assert_eq!(
            actions,
            vec![Action::SetNodeState {
                node: "node-1".to_string(),
                state: NodeState::Ready,
                drained: false
            }]
        );
        node.spec.unschedulable = true;
        let actions = plan(&world(node, vec![]), t(1), &Knobs::default());
        assert!(matches!(
            actions[..],
            [Action::SetNodeState {
                state: NodeState::Draining,
                ..
            }]
        ));
    }

    #[test]
    fn allocs_on_a_node_that_left_the_cluster_are_lost() {
        let mut alloc = fixtures::alloc("web-1-1", "web", 1, AllocPhase::Healthy);
        alloc.spec.node_name = Some("gone".to_string());
        let actions = plan(
            &world(fixtures::node("node-1", 4.0, "8G"), vec![alloc]),
            t(1),
            &Knobs::default(),
        );
        assert_eq!(actions.len(), 2);
    }
}
