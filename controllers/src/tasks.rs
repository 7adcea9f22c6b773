//! The tasks planner: task runs end once and are never restarted.
//!
//! A run still going `timeout` after it started (or was created, if it never started) is
//! failed with `timeout after 30m` and stopped. A run that ended is asked to stay stopped,
//! so no agent ever starts it again.

use crate::action::Action;
use crate::view::{self, is_active, ObjectKey, View};
use jiff::Timestamp;
use mill_crds::{AllocPhase, DesiredState, OwnerKind};

/// Timeouts and the end of task runs.
pub fn plan(view: &View, now: Timestamp) -> Vec<Action> {
    let mut actions = Vec::new();
    for alloc in &view.allocs {
        if alloc.spec.owner.kind != OwnerKind::Task {
            continue;
        }
        let key = ObjectKey::of(&alloc.metadata);
        if alloc.spec.desired_state == DesiredState::Running && view::phase(alloc).is_terminal() {
            actions.push(Action::SetDesiredState {
                alloc: key,
                state: DesiredState::Stopped,
            });
            continue;
        }
        let (Some(timeout), true) = (alloc.spec.timeout, is_active(alloc)) else {
            continue;
        };
        let since = alloc
            .status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .map(|t| t.0)
            .or_else(|| view::created(&alloc.metadata));
        if since.is_some_and(|t| view::elapsed(t, now) >= timeout.get()) {
            actions.push(Action::SetAllocPhase {
                alloc: key.clone(),
                phase: AllocPhase::Failed,
                reason: Some(format!("timeout after {timeout}")),
            });
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
    use std::sync::Arc;

    fn run(phase: AllocPhase, desired: DesiredState) -> mill_crds::Alloc {
        let mut alloc = fixtures::alloc("report-ab12", "report", 0, phase);
        alloc.spec.owner.kind = OwnerKind::Task;
        alloc.spec.timeout = Some("30m".parse().unwrap());
        alloc.spec.desired_state = desired;
        alloc.status.as_mut().unwrap().started_at = Some(Time(t(60)));
        alloc
    }

    fn actions(alloc: mill_crds::Alloc, now: Timestamp) -> Vec<Action> {
        plan(
            &View {
                allocs: vec![Arc::new(alloc)],
                ..View::default()
            },
            now,
        )
    }

    #[test]
    fn a_task_past_its_timeout_fails_with_timeout_after_30m() {
        let running = run(AllocPhase::Running, DesiredState::Running);
        assert!(actions(running.clone(), t(60 + 1799)).is_empty());
        assert_eq!(
            actions(running, t(60 + 1800)),
            vec![
                Action::SetAllocPhase {
                    alloc: fixtures::key("report-ab12"),
                    phase: AllocPhase::Failed,
                    reason: Some("timeout after 30m".to_string())
                },
                Action::SetDesiredState {
                    alloc: fixtures::key("report-ab12"),
                    state: DesiredState::Stopped
                }
            ]
        );
    }

    #[test]
    fn an_ended_task_is_never_restarted() {
        for phase in [AllocPhase::Stopped, AllocPhase::Failed] {
            assert_eq!(
                actions(run(phase, DesiredState::Running), t(100)),
                vec![Action::SetDesiredState {
                    alloc: fixtures::key("report-ab12"),
                    state: DesiredState::Stopped
                }]
            );
            assert!(actions(run(phase, DesiredState::Stopped), t(99_999)).is_empty());
        }
    }
}
