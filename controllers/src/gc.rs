//! The gc planner: nothing in the store grows without bound (SPEC §6).
//!
//! - terminal task runs: deleted after [`Knobs::alloc_retention`] and beyond the newest
//!   [`Knobs::task_runs_kept`] per task;
//! - terminal (replaced) service allocs: once the service's rollout is complete, all but
//!   the newest [`Knobs::replaced_allocs_kept`] per service are deleted;
//! - allocs of services that no longer exist: stopped, then deleted;
//! - finished deploys: all but the newest [`Knobs::deploys_kept`] per namespace.

use crate::action::Action;
use crate::knobs::Knobs;
use crate::view::{self, ObjectKey, View};
use jiff::Timestamp;
use mill_crds::{Alloc, DeployPhase, DesiredState, OwnerKind, Service};
use std::collections::{BTreeMap, HashMap};

/// The deletion of an ended alloc, sent independently of the plan's other writes: it is
/// decided from the View alone and no write relies on it. Another planner may patch the
/// same ended alloc in the plan (its stop, its unrouting); either order ends with it
/// deleted, as a patch after the deletion is a 404, which the loop takes as nothing to
/// do. So the write that ends a deploy, in the plan that deletes the allocs of the
/// revision it replaced, does not wait behind those deletions.
fn delete(alloc: &Alloc) -> Action {
    Action::DeleteAlloc {
        alloc: ObjectKey::of(&alloc.metadata),
    }
    .independent()
}

/// Deletions by retention and history limits.
pub fn plan(view: &View, now: Timestamp, knobs: &Knobs) -> Vec<Action> {
    let services: HashMap<ObjectKey, &Service> = view
        .services
        .iter()
        .map(|s| (ObjectKey::of(&s.metadata), &**s))
        .collect();
    let mut ended: BTreeMap<(OwnerKind, ObjectKey), Vec<&Alloc>> = BTreeMap::new();
    let mut actions = Vec::new();
    for alloc in &view.allocs {
        let owner = ObjectKey {
            namespace: ObjectKey::of(&alloc.metadata).namespace,
            name: alloc.spec.owner.name.clone(),
        };
        let orphan = alloc.spec.owner.kind == OwnerKind::Service && !services.contains_key(&owner);
        if !view::phase(alloc).is_terminal() {
            if orphan && alloc.spec.desired_state == DesiredState::Running {
                actions.push(Action::SetDesiredState {
                    alloc: ObjectKey::of(&alloc.metadata),
                    state: DesiredState::Stopped,
                });
            }
            continue;
        }
        if orphan {
            actions.push(delete(alloc));
            continue;
        }
        ended
            .entry((alloc.spec.owner.kind, owner))
            .or_default()
            .push(alloc);
    }
    for ((kind, owner), mut allocs) in ended {
        allocs.sort_by_key(|a| std::cmp::Reverse(ended_at(a)));
        let (keep, expires) = match kind {
            OwnerKind::Task => (knobs.task_runs_kept, true),
            OwnerKind::Service => {
                let rolling = services
                    .get(&owner)
                    .and_then(|s| s.status.as_ref())
                    .is_none_or(|s| s.revision != s.target_revision);
                if rolling {
                    continue;
                }
                (knobs.replaced_allocs_kept, false)
            }
        };
        for (i, alloc) in allocs.iter().enumerate() {
            let old = expires
                && ended_at(alloc).is_some_and(|t| view::elapsed(t, now) >= knobs.alloc_retention);
            if i >= keep || old {
                actions.push(delete(alloc));
            }
        }
    }
    let mut finished: BTreeMap<String, Vec<(Option<Timestamp>, ObjectKey)>> = BTreeMap::new();
    for deploy in &view.deploys {
        let status = deploy.status.clone().unwrap_or_default();
        if status.phase == DeployPhase::Running {
            continue;
        }
        let key = ObjectKey::of(&deploy.metadata);
        finished
            .entry(key.namespace.clone())
            .or_default()
            .push((view::created(&deploy.metadata), key));
    }
    for (_, mut deploys) in finished {
        deploys.sort_by(|a, b| b.cmp(a));
        for (_, deploy) in deploys.into_iter().skip(knobs.deploys_kept) {
            actions.push(Action::DeleteDeploy { deploy });
        }
    }
    actions
}

/// When an alloc ended, or failing that when it was made.
fn ended_at(alloc: &Alloc) -> Option<Timestamp> {
    alloc
        .status
        .as_ref()
        .and_then(|s| s.finished_at.as_ref())
        .map(|t| t.0)
        .or_else(|| view::created(&alloc.metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, t};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use mill_crds::{AllocPhase, DeployStatus, ServiceStatus};
    use std::sync::Arc;

    fn ended_task(i: i64) -> Alloc {
        let mut alloc = fixtures::alloc(&format!("report-{i}"), "report", 0, AllocPhase::Stopped);
        alloc.spec.owner.kind = OwnerKind::Task;
        alloc.status.as_mut().unwrap().finished_at = Some(Time(t(i)));
        alloc
    }

    fn deleted(actions: &[Action]) -> Vec<String> {
        let mut names: Vec<String> = actions
            .iter()
            .filter_map(|a| match a.write() {
                Action::DeleteAlloc { alloc } => Some(alloc.name.clone()),
                Action::DeleteDeploy { deploy } => Some(deploy.name.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn terminal_task_runs_go_after_the_retention_and_beyond_the_newest_hundred() {
        let knobs = Knobs {
            task_runs_kept: 3,
            alloc_retention: std::time::Duration::from_secs(100),
            ..Knobs::default()
        };
        let mut running = fixtures::alloc("report-99", "report", 0, AllocPhase::Running);
        running.spec.owner.kind = OwnerKind::Task;
        let mut allocs: Vec<Arc<Alloc>> = (1..=5).map(|i| Arc::new(ended_task(i * 10))).collect();
        allocs.push(Arc::new(running));
        let view = View {
            allocs,
            ..View::default()
        };
        assert_eq!(
            deleted(&plan(&view, t(60), &knobs)),
            vec!["report-10", "report-20"]
        );
        assert_eq!(
            deleted(&plan(&view, t(135), &knobs)),
            vec!["report-10", "report-20", "report-30"]
        );
        assert_eq!(Knobs::default().task_runs_kept, 100);
    }

    #[test]
    fn replaced_service_allocs_keep_the_newest_five_once_the_rollout_is_done() {
        let mut service = fixtures::service("web", "web:2", 1);
        service.status = Some(ServiceStatus {
            revision: Some(1),
            target_revision: Some(2),
            ..ServiceStatus::default()
        });
        let allocs: Vec<Arc<Alloc>> = (1..=7)
            .map(|i| {
                let mut a = fixtures::alloc(&format!("web-1-{i}"), "web", 1, AllocPhase::Stopped);
                a.status.as_mut().unwrap().finished_at = Some(Time(t(i)));
                Arc::new(a)
            })
            .collect();
        let mut view = View {
            services: vec![Arc::new(service.clone())],
            allocs,
            ..View::default()
        };
        assert!(
            deleted(&plan(&view, t(100), &Knobs::default())).is_empty(),
            "rolling"
        );
        service.status.as_mut().unwrap().revision = Some(2);
        view.services = vec![Arc::new(service)];
        assert_eq!(
            deleted(&plan(&view, t(100), &Knobs::default())),
            vec!["web-1-1", "web-1-2"]
        );
    }

    #[test]
    fn allocs_of_a_service_that_is_gone_are_stopped_then_deleted() {
        let view = View {
            allocs: vec![
                Arc::new(fixtures::alloc("old-1-1", "old", 1, AllocPhase::Healthy)),
                Arc::new(fixtures::alloc("old-1-2", "old", 1, AllocPhase::Stopped)),
            ],
            ..View::default()
        };
        let actions = plan(&view, t(0), &Knobs::default());
        assert_eq!(deleted(&actions), vec!["old-1-2"]);
        assert!(actions.contains(&Action::SetDesiredState {
            alloc: fixtures::key("old-1-1"),
            state: DesiredState::Stopped
        }));
    }

    #[test]
    fn finished_deploys_beyond_the_limit_are_deleted_oldest_first() {
        let knobs = Knobs {
            deploys_kept: 2,
            ..Knobs::default()
        };
        let deploys = (1..=4)
            .map(|i| {
                let spec = mill_crds::DeploySpec {
                    changes: Vec::new(),
                    config_hash: None,
                };
                let mut d = mill_crds::Deploy::new(&format!("d{i}"), spec);
                d.metadata.namespace = Some("default".to_string());
                d.metadata.creation_timestamp = Some(Time(t(i)));
                d.status = Some(DeployStatus {
                    phase: if i == 1 {
                        DeployPhase::Running
                    } else {
                        DeployPhase::Succeeded
                    },
                    ..DeployStatus::default()
                });
                Arc::new(d)
            })
            .collect();
        let view = View {
            deploys,
            ..View::default()
        };
        assert_eq!(deleted(&plan(&view, t(10), &knobs)), vec!["d2"]);
    }
}
