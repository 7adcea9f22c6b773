//! The deploy planner: the event log of a Deploy (SPEC §3), derived from what its services
//! and allocs show, so the SSE stream and `mill deploy` can render it from the Deploy alone.
//!
//! Events are appended in the order they are first observed and never twice (an event is
//! identified by its phase, service and alloc), so re-planning the same View changes
//! nothing. A service's revision for a deploy is the one whose `cause` is the deploy's name
//! (the [`crate::DEPLOY_ANNOTATION`] the deploy wrote on the Service). Each service ends
//! with one result: success once every replica of its revision is healthy and routed and
//! nothing else runs; failure when its revision failed (after the rollback, if any), a
//! newer deploy superseded it, or [`Knobs::deploy_timeout`] passed. The deploy ends when
//! every service has a result, `succeeded` only if all succeeded.

use crate::action::Action;
use crate::knobs::Knobs;
use crate::view::{self, is_active, ObjectKey, View};
use crate::{HEALTHY, ROUTED};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mill_crds::{
    Alloc, AllocPhase, Deploy, DeployChange, DeployEvent, DeployPhase, DeployResult, DeployStatus,
    Revision, Service,
};

/// The status writes that bring every running deploy's event log up to date.
pub fn plan(view: &View, now: Timestamp, knobs: &Knobs) -> Vec<Action> {
    let mut actions = Vec::new();
    for deploy in &view.deploys {
        let before = deploy.status.clone().unwrap_or_default();
        if before.phase != DeployPhase::Running || deploy.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let status = follow(deploy, view, now, knobs);
        if status != before {
            actions.push(Action::WriteDeployStatus {
                deploy: ObjectKey::of(&deploy.metadata),
                status: Box::new(status),
            });
        }
    }
    actions
}

/// The event log being extended.
struct Log {
    status: DeployStatus,
    start: Timestamp,
    now: Timestamp,
}

impl Log {
    fn push(&mut self, phase: &str, service: Option<&str>, event: impl FnOnce(&mut DeployEvent)) {
        let mut new = DeployEvent {
            time: Time(self.now),
            phase: phase.to_string(),
            service: service.map(str::to_string),
            node: None,
            alloc: None,
            elapsed: None,
            reason: None,
        };
        event(&mut new);
        let seen = self
            .status
            .events
            .iter()
            .any(|e| e.phase == new.phase && e.service == new.service && e.alloc == new.alloc);
        if !seen {
            self.status.events.push(new);
        }
    }

    fn seconds_since_start(&self, at: Timestamp) -> f64 {
        let ms = view::elapsed(self.start, at).as_millis();
        (ms as f64 / 100.0).round() / 10.0
    }
}

fn follow(deploy: &Deploy, view: &View, now: Timestamp, knobs: &Knobs) -> DeployStatus {
    let name = view::name(&deploy.metadata);
    let namespace = ObjectKey::of(&deploy.metadata).namespace;
    let before = deploy.status.clone().unwrap_or_default();
    let start = before
        .started_at
        .as_ref()
        .map(|t| t.0)
        .or_else(|| view::created(&deploy.metadata))
        .unwrap_or(now);
    let mut log = Log {
        status: DeployStatus {
            started_at: Some(Time(start)),
            ..before
        },
        start,
        now,
    };
    log.push("started", None, |_| {});
    let newer = newer_deploy(deploy, view);
    let changes: Vec<&DeployChange> = deploy
        .spec
        .changes
        .iter()
        .filter(|c| c.kind == "service")
        .collect();
    log.status.service_count = i32::try_from(changes.len()).unwrap_or(i32::MAX);
    for change in &changes {
        if log.status.results.iter().any(|r| r.service == change.name) {
            continue;
        }
        let service = view.services.iter().find(|s| {
            s.metadata.name.as_deref() == Some(&change.name)
                && ObjectKey::of(&s.metadata).namespace == namespace
        });
        let allocs: Vec<&Alloc> = view
            .allocs
            .iter()
            .map(|a| &**a)
            .filter(|a| {
                view::is_service_alloc(a)
                    && a.spec.owner.name == change.name
                    && ObjectKey::of(&a.metadata).namespace == namespace
            })
            .collect();
        let mut result = match service {
            Some(service) => service_result(&name, change, service, &allocs, &mut log),
            None => missing_service(change, &allocs, newer.as_deref(), &mut log),
        };
        if result.is_none() && view::elapsed(start, now) >= knobs.deploy_timeout {
            let timeout = mill_crds::Duration(knobs.deploy_timeout);
            result = Some(Err(format!("deploy timed out after {timeout}")));
        }
        if let Some(result) = result {
            if let Err(reason) = &result {
                log.push("failed", Some(&change.name), |e| {
                    e.reason = Some(reason.clone())
                });
            }
            log.status.results.push(DeployResult {
                service: change.name.clone(),
                success: result.is_ok(),
                reason: result.err(),
            });
        }
    }
    if log.status.results.len() >= changes.len() {
        let success = log.status.results.iter().all(|r| r.success);
        log.status.phase = if success {
            DeployPhase::Succeeded
        } else {
            DeployPhase::Failed
        };
        log.status.finished_at = Some(Time(now));
        log.status.elapsed = Some(log.seconds_since_start(now));
    }
    log.status
}

/// The newest Deploy of the namespace made after `deploy`, if any.
fn newer_deploy(deploy: &Deploy, view: &View) -> Option<String> {
    let namespace = ObjectKey::of(&deploy.metadata).namespace;
    let order = |d: &Deploy| (view::created(&d.metadata), view::name(&d.metadata));
    let this = order(deploy);
    view.deploys
        .iter()
        .filter(|d| ObjectKey::of(&d.metadata).namespace == namespace)
        .map(|d| order(d))
        .filter(|o| *o > this)
        .max()
        .map(|(_, name)| name)
}

/// A service of the deploy the View does not hold: removed (by this deploy or a newer one),
/// or not seen yet — the Deploy and its Services are written in one transaction, but each
/// kind has its own watch, so the Deploy may arrive first. Without a newer deploy that
/// could have removed it, it is waited for (the deploy timeout bounds the wait).
fn missing_service(
    change: &DeployChange,
    allocs: &[&Alloc],
    newer: Option<&str>,
    log: &mut Log,
) -> Option<Result<(), String>> {
    let name = change.name.as_str();
    match change.change.as_str() {
        "unchanged" => log.push("unchanged", Some(name), |_| {}),
        "routes" => log.push("routed", Some(name), |_| {}),
        "removed" => {
            stopped_events(allocs, None, log, name);
            log.push("removed", Some(name), |_| {});
        }
        _ => return newer.map(|by| Err(format!("the service was removed by {by}"))),
    }
    Some(Ok(()))
}

/// How one service of the deploy ended, if it has: `Ok` for success, `Err(reason)`.
fn service_result(
    deploy: &str,
    change: &DeployChange,
    service: &Service,
    allocs: &[&Alloc],
    log: &mut Log,
) -> Option<Result<(), String>> {
    let name = change.name.as_str();
    match change.change.as_str() {
        "unchanged" => {
            log.push("unchanged", Some(name), |_| {});
            return Some(Ok(()));
        }
        "routes" => {
            log.push("routed", Some(name), |_| {});
            return Some(Ok(()));
        }
        "removed" => {
            stopped_events(allocs, None, log, name);
            let gone = service.metadata.deletion_timestamp.is_some()
                && allocs.iter().all(|a| view::phase(a).is_terminal());
            if gone {
                log.push("removed", Some(name), |_| {});
                return Some(Ok(()));
            }
            return None;
        }
        _ => {}
    }
    let status = service.status.clone().unwrap_or_default();
    let revision: Option<&Revision> = if change.change == "scale" {
        status
            .target_revision
            .and_then(|t| status.history.iter().find(|r| r.revision == t))
    } else {
        status
            .history
            .iter()
            .rev()
            .find(|r| r.cause.as_deref() == Some(deploy))
            .or_else(|| {
                change
                    .revision
                    .and_then(|n| status.history.iter().find(|r| r.revision == n))
            })
    };
    let revision = revision?;
    let number = revision.revision;
    new_alloc_events(allocs, revision, log, name);
    stopped_events(allocs, Some(number), log, name);
    if let Some(reason) = &revision.failure {
        log.push("failed", Some(name), |e| e.reason = Some(reason.clone()));
        let rollback = status.target_revision.filter(|&t| t != number);
        let Some(previous) = rollback else {
            return Some(Err(reason.clone()));
        };
        log.push("rolling_back", Some(name), |_| {});
        let rolled_back = status.revision == Some(previous)
            && !allocs
                .iter()
                .any(|a| a.spec.revision != previous && !view::phase(a).is_terminal());
        if rolled_back {
            log.push("rolled_back", Some(name), |_| {});
            return Some(Err(reason.clone()));
        }
        return None;
    }
    if let Some(newer) = status
        .history
        .iter()
        .find(|r| r.revision > number && r.cause.as_deref() != Some(deploy))
    {
        let by = newer.cause.as_deref().unwrap_or("a newer change");
        return Some(Err(format!("superseded by {by}")));
    }
    let replicas = usize::try_from(service.spec.replicas).unwrap_or(0);
    let at_revision = |a: &&&Alloc| a.spec.revision == number && is_active(a) && !a.spec.draining;
    let routed = allocs
        .iter()
        .filter(at_revision)
        .filter(|a| view::phase(a) == AllocPhase::Healthy && view::condition_is(a, ROUTED, "True"))
        .count();
    let running = allocs.iter().filter(at_revision).count();
    let others = allocs
        .iter()
        .any(|a| a.spec.revision != number && !view::phase(a).is_terminal());
    let converged =
        status.revision == Some(number) && routed >= replicas && running <= replicas && !others;
    converged.then_some(Ok(()))
}

/// `scheduled`, `pulling`, `starting`, `healthy`, `routed` for the allocs of `revision`
/// made during the deploy.
fn new_alloc_events(allocs: &[&Alloc], revision: &Revision, log: &mut Log, service: &str) {
    let mut new: Vec<&&Alloc> = allocs
        .iter()
        .filter(|a| {
            a.spec.revision == revision.revision
                && view::created(&a.metadata).is_none_or(|t| t >= log.start)
        })
        .collect();
    new.sort_by_key(|a| (view::created(&a.metadata), a.metadata.name.clone()));
    for alloc in new {
        let id = view::name(&alloc.metadata);
        let Some(node) = alloc.spec.node_name.clone() else {
            continue;
        };
        log.push("scheduled", Some(service), |e| {
            e.node = Some(node);
            e.alloc = Some(id.clone());
        });
        let phase = view::phase(alloc);
        let failed = phase == AllocPhase::Failed || revision.failure.is_some();
        if phase == AllocPhase::Pulling {
            log.push("pulling", Some(service), |e| e.alloc = Some(id.clone()));
        }
        if matches!(
            phase,
            AllocPhase::Starting | AllocPhase::Running | AllocPhase::Healthy
        ) {
            log.push("starting", Some(service), |e| e.alloc = Some(id.clone()));
        }
        if phase == AllocPhase::Healthy && !failed {
            let at = view::condition(alloc, HEALTHY)
                .and_then(|c| c.last_transition_time.as_ref())
                .map_or(log.now, |t| t.0);
            let elapsed = log.seconds_since_start(at);
            log.push("healthy", Some(service), |e| {
                e.alloc = Some(id.clone());
                e.elapsed = Some(elapsed);
            });
        }
        if view::condition_is(alloc, ROUTED, "True") && !alloc.spec.draining && !failed {
            log.push("routed", Some(service), |e| e.alloc = Some(id.clone()));
        }
    }
}

/// `stopped` for each alloc not of `revision` that stopped during the deploy.
fn stopped_events(allocs: &[&Alloc], revision: Option<i64>, log: &mut Log, service: &str) {
    for alloc in allocs {
        if Some(alloc.spec.revision) == revision || view::phase(alloc) != AllocPhase::Stopped {
            continue;
        }
        let finished = alloc
            .status
            .as_ref()
            .and_then(|s| s.finished_at.as_ref())
            .map(|t| t.0)
            .or_else(|| {
                view::condition(alloc, ROUTED)
                    .filter(|c| c.status == "False")
                    .and_then(|c| c.last_transition_time.as_ref())
                    .map(|t| t.0)
            });
        if finished.is_some_and(|t| t >= log.start) {
            let id = view::name(&alloc.metadata);
            log.push("stopped", Some(service), |e| e.alloc = Some(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulation::{deploy_image, settled, Behaviour, World};
    use mill_crds::DeploySpec;
    use std::sync::Arc;

    fn new_deploy(name: &str, world: &World, changes: &[(&str, &str)]) -> Deploy {
        let mut deploy = Deploy::new(
            name,
            DeploySpec {
                changes: changes
                    .iter()
                    .map(|(service, change)| DeployChange {
                        kind: "service".to_string(),
                        name: service.to_string(),
                        change: change.to_string(),
                        revision: None,
                    })
                    .collect(),
                config_hash: None,
            },
        );
        deploy.metadata.namespace = Some("default".to_string());
        deploy.metadata.creation_timestamp = Some(Time(world.now));
        deploy
    }

    /// Steps the world, following the deploy after each step, until it ends.
    fn follow_to_end(world: &mut World, mut deploy: Deploy) -> DeployStatus {
        for _ in 0..300 {
            world.step();
            let mut view = world.view();
            view.deploys = vec![Arc::new(deploy.clone())];
            let actions = plan(&view, world.now, &world.knobs);
            for action in actions {
                if let Action::WriteDeployStatus { status, .. } = action {
                    deploy.status = Some(*status);
                }
            }
            let mut again = world.view();
            again.deploys = vec![Arc::new(deploy.clone())];
            assert!(
                plan(&again, world.now, &world.knobs).is_empty(),
                "following the same view twice appends nothing"
            );
            let status = deploy.status.clone().unwrap_or_default();
            if status.phase != DeployPhase::Running {
                return status;
            }
        }
        panic!("the deploy did not end");
    }

    fn phases(status: &DeployStatus) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &status.events {
            if out.last() != Some(&e.phase) {
                out.push(e.phase.clone());
            }
        }
        out
    }

    #[test]
    fn a_rolling_deploy_logs_each_replica_and_ends_with_success() {
        let mut world = settled(2, 1);
        deploy_image(&mut world, "web:2", "d2");
        let deploy = new_deploy("d2", &world, &[("web", "rollout"), ("api", "unchanged")]);
        let status = follow_to_end(&mut world, deploy);
        assert_eq!(status.phase, DeployPhase::Succeeded);
        assert_eq!(status.events[0].phase, "started");
        let of = |phase: &str| status.events.iter().filter(|e| e.phase == phase).count();
        assert_eq!(of("started"), 1);
        assert_eq!(of("scheduled"), 2);
        assert_eq!(of("healthy"), 2);
        assert_eq!(of("routed"), 2);
        assert_eq!(of("stopped"), 2);
        assert_eq!(of("unchanged"), 1);
        assert_eq!(of("failed"), 0);
        let scheduled = status
            .events
            .iter()
            .find(|e| e.phase == "scheduled")
            .unwrap();
        assert!(scheduled.node.is_some() && scheduled.alloc.is_some());
        assert!(status
            .events
            .iter()
            .find(|e| e.phase == "healthy")
            .unwrap()
            .elapsed
            .is_some());
        assert!(status.elapsed.is_some());
        assert!(status.results.iter().all(|r| r.success));
    }

    #[test]
    fn a_failed_rollout_logs_failed_rolling_back_rolled_back_and_ends_failed() {
        let mut world = settled(2, 1);
        world.behaviours.insert((2, 1), Behaviour::FailsAfter(2));
        deploy_image(&mut world, "web:2", "d2");
        let deploy = new_deploy("d2", &world, &[("web", "rollout")]);
        let status = follow_to_end(&mut world, deploy);
        assert_eq!(status.phase, DeployPhase::Failed);
        let p = phases(&status);
        let at = |phase: &str| p.iter().position(|x| x == phase).unwrap();
        assert!(
            at("failed") < at("rolling_back") && at("rolling_back") < at("rolled_back"),
            "{p:?}"
        );
        assert!(!p.contains(&"healthy".to_string()), "{p:?}");
        let failed = status.events.iter().find(|e| e.phase == "failed").unwrap();
        assert!(failed
            .reason
            .as_deref()
            .unwrap()
            .contains("exited with code 2"));
        assert_eq!(status.results.len(), 1);
        assert!(!status.results[0].success);
    }

    #[test]
    fn a_superseded_deploy_ends_failed_and_names_the_newer_one() {
        let mut world = settled(1, 1);
        world.default_behaviour = Behaviour::HealthyAfter(4);
        deploy_image(&mut world, "web:2", "d2");
        let mut deploy = new_deploy("d2", &world, &[("web", "rollout")]);
        for _ in 0..2 {
            world.step();
        }
        deploy_image(&mut world, "web:3", "d3");
        world.step();
        let mut view = world.view();
        view.deploys = vec![Arc::new(deploy.clone())];
        for action in plan(&view, world.now, &world.knobs) {
            if let Action::WriteDeployStatus { status, .. } = action {
                deploy.status = Some(*status);
            }
        }
        let status = deploy.status.unwrap();
        assert_eq!(status.phase, DeployPhase::Failed);
        assert_eq!(
            status.results[0].reason.as_deref(),
            Some("superseded by d3")
        );
    }

    #[test]
    fn a_removed_service_logs_removed_once_it_is_gone() {
        let mut world = settled(1, 1);
        world.edit("web", |s| {
            s.metadata.deletion_timestamp = Some(Time(world_now()));
        });
        let deploy = new_deploy("d2", &world, &[("web", "removed")]);
        let status = follow_to_end(&mut world, deploy);
        assert_eq!(status.phase, DeployPhase::Succeeded);
        let p = phases(&status);
        assert_eq!(p, vec!["started", "stopped", "removed"]);
    }

    #[test]
    fn a_deploy_seen_before_its_new_service_waits_for_the_service() {
        let mut world = settled(1, 1);
        let deploy = new_deploy("d2", &world, &[("api", "new")]);
        world.step();
        let mut view = world.view();
        view.deploys = vec![Arc::new(deploy.clone())];
        let status = match plan(&view, world.now, &world.knobs).pop() {
            Some(Action::WriteDeployStatus { status, .. }) => *status,
            other => panic!("expected the started event, got {other:?}"),
        };
        assert_eq!(status.phase, DeployPhase::Running, "{status:?}");
        assert!(status.results.is_empty(), "{status:?}");
        assert_eq!(phases(&status), vec!["started"]);
    }

    #[test]
    fn a_service_a_newer_deploy_removed_ends_the_older_deploy_failed() {
        let mut world = settled(1, 1);
        let older = new_deploy("d2", &world, &[("api", "new")]);
        world.now += jiff::SignedDuration::from_secs(1);
        let newer = new_deploy("d3", &world, &[("api", "removed")]);
        let mut view = world.view();
        view.deploys = vec![Arc::new(older), Arc::new(newer)];
        let statuses: Vec<DeployStatus> = plan(&view, world.now, &world.knobs)
            .into_iter()
            .filter_map(|a| match a {
                Action::WriteDeployStatus { status, .. } => Some(*status),
                _ => None,
            })
            .collect();
        assert_eq!(statuses[0].phase, DeployPhase::Failed);
        assert_eq!(
            statuses[0].results[0].reason.as_deref(),
            Some("the service was removed by d3")
        );
        assert_eq!(statuses[1].phase, DeployPhase::Succeeded);
    }

    fn world_now() -> Timestamp {
        crate::fixtures::t(0)
    }

    #[test]
    fn a_deploy_past_the_deploy_timeout_fails() {
        let mut world = settled(1, 1);
        world.knobs.deploy_timeout = std::time::Duration::from_secs(5);
        world.default_behaviour = Behaviour::HealthyAfter(20);
        deploy_image(&mut world, "web:2", "d2");
        let deploy = new_deploy("d2", &world, &[("web", "rollout")]);
        let status = follow_to_end(&mut world, deploy);
        assert_eq!(
            status.results[0].reason.as_deref(),
            Some("deploy timed out after 5s")
        );
    }
}
