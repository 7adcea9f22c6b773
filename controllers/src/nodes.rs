//! The nodes planner: heartbeats decide whether a node is up.
//!
//! A node silent for [`Knobs::heartbeat_timeout`] is `down`; everything still placed on it
//! is `failed` with `node lost` and asked to stop (so the returning node stops what the
//! cluster replaced). Service replicas are then refilled by the rollout planner, task runs
//! are never retried. A down node heard from again is `ready` (or `draining`, if it was
//! being drained). Allocs placed on a node that no longer exists are lost the same way.
//!
//! Silence is measured from the later of the heartbeat's own timestamp and the moment
//! *these* controllers saw it change ([`Heard`]), as Kubernetes' node controller does. So a
//! new leader, or one whose store could not commit for a while (no quorum, an overloaded
//! machine), gives every node a full timeout from when it could hear them again instead
//! of declaring them all down at once from heartbeats that merely could not be written.
//! A node already `down` gets no such grace: only a new heartbeat brings it back.

use crate::action::Action;
use crate::knobs::Knobs;
use crate::view::{self, ObjectKey, View};
use jiff::Timestamp;
use mill_crds::{AllocPhase, DesiredState, NodeState};
use std::collections::{HashMap, HashSet};

/// The reason an alloc on a lost node fails with.
pub const NODE_LOST: &str = "node lost";

/// When these controllers last saw each node's heartbeat change, on their own clock.
#[derive(Debug, Default)]
pub struct Heard {
    nodes: HashMap<String, (Option<Timestamp>, Option<Timestamp>)>,
}

impl Heard {
    /// Records the view's heartbeats: a changed one, or a node seen for the first time
    /// that is not already down, counts as heard `now`.
    pub fn observe(&mut self, view: &View, now: Timestamp) {
        let mut present = HashSet::new();
        for node in &view.nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let status = node.status.as_ref();
            let beat = status.and_then(|s| s.last_heartbeat.as_ref()).map(|t| t.0);
            let down = status.is_some_and(|s| s.state == NodeState::Down);
            let entry = self
                .nodes
                .entry(name.clone())
                .or_insert((beat, (!down).then_some(now)));
            if entry.0 != beat {
                *entry = (beat, Some(now));
            }
            present.insert(name);
        }
        self.nodes.retain(|name, _| present.contains(name));
    }

    /// When this node was last heard on the controllers' clock, if it was.
    fn at(&self, node: &str) -> Option<Timestamp> {
        self.nodes.get(node).and_then(|(_, at)| *at)
    }
}

/// Node verdicts from heartbeats, and the allocs lost with down nodes.
pub fn plan(view: &View, heard: &Heard, now: Timestamp, knobs: &Knobs) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut lost: HashSet<&str> = HashSet::new();
    let mut known: HashSet<&str> = HashSet::new();
    for node in &view.nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        known.insert(name);
        let status = node.status.clone().unwrap_or_default();
        let beat = status
            .last_heartbeat
            .as_ref()
            .map(|t| t.0)
            .or_else(|| view::created(&node.metadata))
            .unwrap_or(now);
        let last = heard.at(name).map_or(beat, |at| at.max(beat));
        let silent = view::elapsed(last, now) > knobs.heartbeat_timeout;
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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
            plan(&view, &Heard::default(), t(15), &knobs).is_empty(),
            "15s is not past the timeout"
        );
        let actions = plan(&view, &Heard::default(), t(16), &knobs);
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
        let actions = plan(
            &world(node.clone(), vec![]),
            &Heard::default(),
            t(1),
            &Knobs::default(),
        );
        assert_eq!(
            actions,
            vec![Action::SetNodeState {
                node: "node-1".to_string(),
                state: NodeState::Ready,
                drained: false
            }]
        );
        node.spec.unschedulable = true;
        let actions = plan(
            &world(node, vec![]),
            &Heard::default(),
            t(1),
            &Knobs::default(),
        );
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
            &Heard::default(),
            t(1),
            &Knobs::default(),
        );
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn new_controllers_give_live_nodes_a_full_timeout_before_judging_old_heartbeats() {
        // A leader elected after the store could not commit for a while sees every
        // heartbeat 60 s old: nobody is down before a timeout of its own has passed.
        let view = world(
            fixtures::node("node-1", 4.0, "8G"),
            vec![fixtures::alloc("web-1-1", "web", 1, AllocPhase::Healthy)],
        );
        let knobs = Knobs::default();
        let mut heard = Heard::default();
        heard.observe(&view, t(60));
        assert!(plan(&view, &heard, t(60), &knobs).is_empty());
        assert!(plan(&view, &heard, t(75), &knobs).is_empty());
        let actions = plan(&view, &heard, t(76), &knobs);
        assert!(matches!(
            actions[0],
            Action::SetNodeState {
                state: NodeState::Down,
                ..
            }
        ));
    }

    #[test]
    fn a_heartbeat_that_commits_late_still_counts_as_heard() {
        let mut node = fixtures::node("node-1", 4.0, "8G");
        let knobs = Knobs::default();
        let mut heard = Heard::default();
        heard.observe(&world(node.clone(), vec![]), t(0));
        // The node's heartbeat stamped at 5 s only commits at 30 s.
        node.status.as_mut().unwrap().last_heartbeat = Some(Time(t(5)));
        let view = world(node, vec![]);
        heard.observe(&view, t(30));
        assert!(plan(&view, &heard, t(40), &knobs).is_empty());
    }

    #[test]
    fn a_node_already_down_gets_no_grace_until_it_beats_again() {
        let mut node = fixtures::node("node-1", 4.0, "8G");
        node.status.as_mut().unwrap().state = NodeState::Down;
        let knobs = Knobs::default();
        let mut heard = Heard::default();
        let view = world(node.clone(), vec![]);
        heard.observe(&view, t(60));
        assert!(
            plan(&view, &heard, t(60), &knobs).is_empty(),
            "it stays down"
        );
        node.status.as_mut().unwrap().last_heartbeat = Some(Time(t(1)));
        let view = world(node, vec![]);
        heard.observe(&view, t(61));
        assert!(matches!(
            plan(&view, &heard, t(61), &knobs)[..],
            [Action::SetNodeState {
                state: NodeState::Ready,
                ..
            }]
        ));
    }
}
