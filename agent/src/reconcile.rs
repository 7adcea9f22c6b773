//! The agent's decisions, pure: given the allocs placed on this node and what the agent
//! supervises (or found in containerd at start), what to start, stop, adopt or remove.

use crate::ports::PortsInUse;
use mill_crds::{AllocPhase, DesiredState, OwnerKind};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// An alloc placed on this node, as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// The alloc's uid.
    pub uid: String,
    /// Service replica or task run.
    pub kind: OwnerKind,
    /// What should be true.
    pub desired: DesiredState,
    /// Its phase as last written.
    pub phase: AllocPhase,
    /// Its host port, once the scheduler assigned one.
    pub host_port: Option<u16>,
}

/// An alloc the agent supervises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervised {
    /// Its host port; 0 for none, or once its container exited.
    pub host_port: u16,
    /// Whether a stop was already requested.
    pub stopping: bool,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pull, create and start its container.
    Start(String),
    /// Stop its container and remove it.
    Stop(String),
    /// Nothing runs and nothing should: record it as stopped.
    MarkStopped(String),
    /// A task whose container vanished: it cannot be run again.
    MarkLost(String),
    /// Its port is held by another live alloc: wait (nothing is started).
    WaitForPort {
        /// The waiting alloc.
        uid: String,
        /// The port.
        port: u16,
        /// Who holds it.
        holder: String,
    },
}

/// What to do with a container found in containerd when the agent starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Supervise it as it runs, without restarting it.
    Adopt,
    /// Stop and remove it: its alloc is gone, stopped, ended, or not this node's.
    Remove,
}

/// Whether an alloc should run now.
fn wants_running(p: &Placed) -> bool {
    p.desired == DesiredState::Running && !p.phase.is_terminal()
}

/// The plan for one round. `placed` are the allocs on this node by uid; `supervised`
/// what runs; `ended` the allocs whose supervisor already finished (and wrote a terminal
/// phase the watch may not have delivered yet): they are never started or marked again.
/// Starts are ordered by uid so the plan is deterministic.
pub fn plan(
    placed: &BTreeMap<String, Placed>,
    supervised: &BTreeMap<String, Supervised>,
    ended: &BTreeSet<String>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut ports = PortsInUse::default();
    // Port 0: none, or freed when its container exited (its removal may still run).
    for (uid, s) in supervised.iter().filter(|(_, s)| s.host_port != 0) {
        ports.claim(s.host_port, uid);
    }
    for (uid, s) in supervised {
        let keep = placed.get(uid).is_some_and(wants_running);
        if !keep && !s.stopping {
            actions.push(Action::Stop(uid.clone()));
        }
    }
    for (uid, p) in placed {
        if supervised.contains_key(uid) || ended.contains(uid) {
            continue;
        }
        if !wants_running(p) {
            if p.desired == DesiredState::Stopped && !p.phase.is_terminal() {
                actions.push(Action::MarkStopped(uid.clone()));
            }
            continue;
        }
        let ran = matches!(
            p.phase,
            AllocPhase::Running | AllocPhase::Healthy | AllocPhase::Stopping
        );
        if p.kind == OwnerKind::Task && ran {
            actions.push(Action::MarkLost(uid.clone()));
            continue;
        }
        let Some(port) = p.host_port else {
            // The scheduler has not given it a port yet; it will.
            continue;
        };
        if ports.claim(port, uid) {
            actions.push(Action::Start(uid.clone()));
        } else {
            actions.push(Action::WaitForPort {
                uid: uid.clone(),
                port,
                holder: ports.holder(port).unwrap_or_default().to_string(),
            });
        }
    }
    actions
}

/// What to do with each container found at start (by alloc uid from its labels).
pub fn adopt(found: &[String], placed: &BTreeMap<String, Placed>) -> HashMap<String, Found> {
    let mut out = HashMap::new();
    let mut ports = PortsInUse::default();
    for uid in found {
        let decision = match placed.get(uid) {
            Some(p) if wants_running(p) => match p.host_port {
                Some(port) if ports.claim(port, uid) => Found::Adopt,
                _ => Found::Remove,
            },
            _ => Found::Remove,
        };
        out.insert(uid.clone(), decision);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use AllocPhase::*;

    fn placed(uid: &str, desired: DesiredState, phase: AllocPhase, port: Option<u16>) -> Placed {
        Placed {
            uid: uid.into(),
            kind: OwnerKind::Service,
            desired,
            phase,
            host_port: port,
        }
    }

    fn sup(port: u16, stopping: bool) -> Supervised {
        Supervised {
            host_port: port,
            stopping,
        }
    }

    const RUN: DesiredState = DesiredState::Running;
    const STOP: DesiredState = DesiredState::Stopped;

    #[test]
    fn plan_converges_placed_allocs_and_supervised_containers() {
        type Case = (
            &'static str,
            Vec<Placed>,
            Vec<(&'static str, Supervised)>,
            Vec<Action>,
        );
        let cases: Vec<Case> = vec![
            (
                "a new alloc with a port starts",
                vec![placed("a", RUN, Pending, Some(20001))],
                vec![],
                vec![Action::Start("a".into())],
            ),
            (
                "an alloc without a port waits for the scheduler",
                vec![placed("a", RUN, Pending, None)],
                vec![],
                vec![],
            ),
            (
                "a running alloc is left alone",
                vec![placed("a", RUN, Running, Some(20001))],
                vec![("a", sup(20001, false))],
                vec![],
            ),
            (
                "desired stopped stops it once",
                vec![placed("a", STOP, Running, Some(20001))],
                vec![("a", sup(20001, false))],
                vec![Action::Stop("a".into())],
            ),
            (
                "a stop in progress is not repeated",
                vec![placed("a", STOP, Stopping, Some(20001))],
                vec![("a", sup(20001, true))],
                vec![],
            ),
            (
                "a deleted alloc's container stops",
                vec![],
                vec![("a", sup(20001, false))],
                vec![Action::Stop("a".into())],
            ),
            (
                "an alloc marked failed elsewhere (node lost) stops",
                vec![placed("a", RUN, Failed, Some(20001))],
                vec![("a", sup(20001, false))],
                vec![Action::Stop("a".into())],
            ),
            (
                "desired stopped with nothing running is marked stopped",
                vec![placed("a", STOP, Pending, Some(20001))],
                vec![],
                vec![Action::MarkStopped("a".into())],
            ),
            (
                "terminal allocs stay as they are",
                vec![
                    placed("a", STOP, Stopped, Some(20001)),
                    placed("b", RUN, Failed, Some(20002)),
                ],
                vec![],
                vec![],
            ),
            (
                "a port held by a live alloc is never given to a second one",
                vec![
                    placed("a", RUN, Running, Some(20001)),
                    placed("b", RUN, Pending, Some(20001)),
                ],
                vec![("a", sup(20001, false))],
                vec![Action::WaitForPort {
                    uid: "b".into(),
                    port: 20001,
                    holder: "a".into(),
                }],
            ),
            (
                "two new allocs on one port: only the first starts",
                vec![
                    placed("a", RUN, Pending, Some(20001)),
                    placed("b", RUN, Pending, Some(20001)),
                ],
                vec![],
                vec![
                    Action::Start("a".into()),
                    Action::WaitForPort {
                        uid: "b".into(),
                        port: 20001,
                        holder: "a".into(),
                    },
                ],
            ),
            (
                "a port still held by a stopping alloc waits",
                vec![
                    placed("a", STOP, Stopping, Some(20001)),
                    placed("b", RUN, Pending, Some(20001)),
                ],
                vec![("a", sup(20001, true))],
                vec![Action::WaitForPort {
                    uid: "b".into(),
                    port: 20001,
                    holder: "a".into(),
                }],
            ),
            (
                "a service whose container vanished starts again",
                vec![placed("a", RUN, Running, Some(20001))],
                vec![],
                vec![Action::Start("a".into())],
            ),
            (
                "a task whose container vanished is lost, never rerun",
                vec![Placed {
                    kind: OwnerKind::Task,
                    ..placed("t", RUN, Running, Some(20001))
                }],
                vec![],
                vec![Action::MarkLost("t".into())],
            ),
        ];
        for (name, placed_list, supervised_list, want) in cases {
            let placed: BTreeMap<String, Placed> = placed_list
                .into_iter()
                .map(|p| (p.uid.clone(), p))
                .collect();
            let supervised: BTreeMap<String, Supervised> = supervised_list
                .into_iter()
                .map(|(u, s)| (u.to_string(), s))
                .collect();
            assert_eq!(plan(&placed, &supervised, &BTreeSet::new()), want, "{name}");
        }
    }

    #[test]
    fn an_ended_alloc_is_not_started_again_while_the_watch_lags() {
        let placed: BTreeMap<String, Placed> = [
            placed("svc", RUN, Pulling, Some(20001)),
            Placed {
                kind: OwnerKind::Task,
                ..placed("job", RUN, Healthy, Some(20002))
            },
        ]
        .into_iter()
        .map(|p| (p.uid.clone(), p))
        .collect();
        let ended: BTreeSet<String> = ["svc".to_string(), "job".to_string()].into();
        assert_eq!(plan(&placed, &BTreeMap::new(), &ended), vec![]);
    }

    #[test]
    fn a_port_is_free_once_its_container_exited_while_its_removal_waits() {
        let placed: BTreeMap<String, Placed> = [
            placed("old", STOP, Stopped, Some(20001)),
            placed("new", RUN, Pending, Some(20001)),
        ]
        .into_iter()
        .map(|p| (p.uid.clone(), p))
        .collect();
        // Still running (or stopping): it holds the port.
        let live: BTreeMap<String, Supervised> = [("old".to_string(), sup(20001, true))].into();
        assert_eq!(
            plan(&placed, &live, &BTreeSet::new()),
            vec![Action::WaitForPort {
                uid: "new".into(),
                port: 20001,
                holder: "old".into(),
            }]
        );
        // Exited, not removed yet (port 0): the new alloc starts; the old one is left alone.
        let exited: BTreeMap<String, Supervised> = [("old".to_string(), sup(0, true))].into();
        assert_eq!(
            plan(&placed, &exited, &BTreeSet::new()),
            vec![Action::Start("new".into())]
        );
    }

    #[test]
    fn adoption_keeps_live_allocs_and_removes_the_rest() {
        let placed: BTreeMap<String, Placed> = [
            placed("live", RUN, Running, Some(20001)),
            placed("stopped", STOP, Running, Some(20002)),
            placed("ended", RUN, Failed, Some(20003)),
            placed("dup", RUN, Running, Some(20001)),
        ]
        .into_iter()
        .map(|p| (p.uid.clone(), p))
        .collect();
        let found: Vec<String> = ["live", "stopped", "ended", "gone", "dup"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let decisions = adopt(&found, &placed);
        assert_eq!(decisions["live"], Found::Adopt);
        assert_eq!(decisions["stopped"], Found::Remove);
        assert_eq!(decisions["ended"], Found::Remove);
        assert_eq!(decisions["gone"], Found::Remove);
        assert_eq!(decisions["dup"], Found::Remove);
    }
}
