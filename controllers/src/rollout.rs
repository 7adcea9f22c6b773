//! The rollout planner (SPEC §4): revisions, rolling updates, rollback, scaling, restart
//! and removal of services.
//!
//! Per service, every plan:
//! 1. picks the **target revision** from the spec ([`select_revision`]): a template (or a
//!    restart request) not seen before makes revision `max + 1`; the history keeps the
//!    newest [`Knobs::revision_history`] (and always the serving and target revisions);
//! 2. moves the **routing barrier** along: a healthy alloc becomes `Routed=True` once every
//!    live node has applied the store revision it reached; a draining one `Routed=False`
//!    once every live node has applied its draining, and is stopped when its in-flight
//!    requests are done (or after the drain grace);
//! 3. while rolling out, watches the **new allocs**: one that failed, restarted, or was not
//!    healthy within `health_timeout` fails the revision: not-yet-serving new allocs are
//!    stopped and, with `auto_rollback`, the target goes back to the serving revision
//!    (whose template is written back into the spec) and the moved replicas are replaced
//!    the same zero-downtime way;
//! 4. **replaces and scales**: an alloc of another revision (or one a drain evicts) is
//!    taken out of routing only while at least `replicas` other routed, healthy allocs
//!    remain — so new allocs come first (surge) and the healthy count never drops below
//!    `replicas`; at most `max_parallel` replacements are in flight; slots nobody serves
//!    (scale-up, lost replicas, a new service) are filled at once; extra replicas go
//!    unhealthy-first, then newest-first;
//! 5. writes the Service status (revision once the rollout is complete, target, history,
//!    healthy count, message) when it changed.
//!
//! A deleted Service (its `deletionTimestamp` set; [`crate::SERVICE_FINALIZER`] holds it)
//! has every alloc drained and stopped, then the finalizer removed.

use crate::action::{Action, NewAlloc};
use crate::knobs::Knobs;
use crate::view::{self, is_active, ObjectKey, View};
use crate::{
    DEPLOY_ANNOTATION, OWNER_LABEL, RESTART_ANNOTATION, ROUTED, SCHEDULED, SERVICE_FINALIZER,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use mill_crds::{
    Alloc, AllocOwner, AllocPhase, AllocSpec, ContainerTemplate, DesiredState, OwnerKind, Revision,
    Service, ServiceStatus,
};
use std::collections::{BTreeMap, HashMap};

/// The writes that move every service towards its spec.
pub fn plan(view: &View, now: Timestamp, knobs: &Knobs) -> Vec<Action> {
    let mut by_service: HashMap<ObjectKey, Vec<&Alloc>> = HashMap::new();
    for alloc in &view.allocs {
        if view::is_service_alloc(alloc) {
            let key = ObjectKey {
                namespace: ObjectKey::of(&alloc.metadata).namespace,
                name: alloc.spec.owner.name.clone(),
            };
            by_service.entry(key).or_default().push(alloc);
        }
    }
    let step = Step {
        now,
        knobs,
        applied: view.routing.applied_everywhere(&view.nodes),
        in_flight: &view.routing.in_flight,
    };
    let mut services: Vec<&Service> = view.services.iter().map(|s| &**s).collect();
    services.sort_by_key(|s| ObjectKey::of(&s.metadata));
    let mut actions = Vec::new();
    for service in services {
        let key = ObjectKey::of(&service.metadata);
        let mut allocs = by_service.remove(&key).unwrap_or_default();
        allocs.sort_by(|a, b| {
            (view::created(&a.metadata), &a.metadata.name)
                .cmp(&(view::created(&b.metadata), &b.metadata.name))
        });
        actions.extend(plan_service(service, &allocs, &step));
    }
    actions
}

/// What one plan knows besides the service and its allocs.
struct Step<'a> {
    now: Timestamp,
    knobs: &'a Knobs,
    /// The store revision every live node's routing tables have applied.
    applied: u64,
    in_flight: &'a BTreeMap<ObjectKey, u32>,
}

/// The revision a service's spec asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The revision to roll out (or stay at).
    pub target: Revision,
    /// The history with the target in it, trimmed.
    pub history: Vec<Revision>,
    /// The spec still holds a failed revision's template that a rollback is replacing: write
    /// the target's template back into the spec.
    pub revert: bool,
}

/// The target revision of `service`: its current target if the spec still matches it;
/// the current target with a pending revert while the spec still holds the failed
/// revision the same deploy made; otherwise a new revision.
pub fn select_revision(service: &Service, now: Timestamp, knobs: &Knobs) -> Selection {
    let status = service.status.clone().unwrap_or_default();
    let template = normalized(service.spec.template());
    let restart = annotation(&service.metadata, RESTART_ANNOTATION);
    let deploy = annotation(&service.metadata, DEPLOY_ANNOTATION);
    let mut history = status.history.clone();
    history.sort_by_key(|r| r.revision);
    let newest = history.last().cloned();
    let restart_seen = restart.is_none() || newest.as_ref().is_some_and(|n| n.restart == restart);
    let current = status
        .target_revision
        .and_then(|t| history.iter().find(|r| r.revision == t))
        .cloned();
    if let Some(current) = &current {
        if normalized(current.template.clone()) == template && restart_seen {
            return Selection {
                target: current.clone(),
                history,
                revert: false,
            };
        }
        if let Some(newest) = &newest {
            let rolled_back_from_newest = newest.failure.is_some()
                && newest.revision != current.revision
                && normalized(newest.template.clone()) == template
                && newest.cause == deploy
                && restart_seen;
            if rolled_back_from_newest {
                return Selection {
                    target: current.clone(),
                    history,
                    revert: true,
                };
            }
        }
    }
    let same_template = newest
        .as_ref()
        .is_some_and(|n| normalized(n.template.clone()) == template);
    let cause =
        if !restart_seen && same_template && newest.as_ref().map(|n| &n.cause) == Some(&deploy) {
            Some("restart".to_string())
        } else {
            deploy
        };
    let target = Revision {
        revision: newest.map_or(1, |n| n.revision + 1),
        template,
        created_at: Time(now),
        cause,
        restart,
        failure: None,
    };
    history.push(target.clone());
    let keep = [status.revision, Some(target.revision)];
    while history.len() > knobs.revision_history.max(1) {
        match history
            .iter()
            .position(|r| !keep.contains(&Some(r.revision)))
        {
            Some(oldest) => history.remove(oldest),
            None => break,
        };
    }
    Selection {
        target,
        history,
        revert: false,
    }
}

/// The template with its volumes in name order: block order in a file means nothing.
fn normalized(mut template: ContainerTemplate) -> ContainerTemplate {
    template.volumes.sort_by(|a, b| a.name.cmp(&b.name));
    template
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).cloned()
}

fn is_healthy(alloc: &Alloc) -> bool {
    is_active(alloc) && view::phase(alloc) == AllocPhase::Healthy && !alloc.spec.draining
}

/// Healthy, not draining, and in every live node's routing tables.
fn is_routed(alloc: &Alloc) -> bool {
    is_healthy(alloc) && view::condition_is(alloc, ROUTED, "True")
}

fn plan_service(service: &Service, allocs: &[&Alloc], step: &Step) -> Vec<Action> {
    let key = ObjectKey::of(&service.metadata);
    let mut actions = Vec::new();
    let finalized = service
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == SERVICE_FINALIZER));
    let mut barrier = Passed::default();
    for alloc in allocs {
        if alloc.spec.desired_state == DesiredState::Running && view::phase(alloc).is_terminal() {
            actions.push(stop(alloc));
        }
        route(alloc, step, &mut barrier, &mut actions);
    }
    if service.metadata.deletion_timestamp.is_some() {
        remove(allocs, &mut actions);
        if finalized && allocs.iter().all(|a| view::phase(a).is_terminal()) {
            actions.push(Action::RemoveServiceFinalizer { service: key });
        }
        return actions;
    }
    if !finalized {
        actions.push(Action::AddServiceFinalizer {
            service: key.clone(),
        });
    }

    let before = service.status.clone().unwrap_or_default();
    let selection = select_revision(service, step.now, step.knobs);
    let mut target = selection.target.clone();
    let mut status = ServiceStatus {
        target_revision: Some(target.revision),
        observed_generation: service.metadata.generation,
        history: selection.history,
        ..before.clone()
    };
    if !before.history.iter().any(|r| r.revision == target.revision) {
        status.message = None;
    }
    let mut after_status = Vec::new();
    if selection.revert {
        after_status.push(Action::SetServiceTemplate {
            service: key.clone(),
            template: Box::new(target.template.clone()),
        });
    }

    let rolling = before.revision != Some(target.revision);
    if rolling && target.failure.is_none() {
        if let Some((culprit, reason)) = failure(service, allocs, &target, step) {
            fail(allocs, &target, culprit, &reason, &mut actions);
            let failed = target.revision;
            for revision in &mut status.history {
                if revision.revision == failed {
                    revision.failure = Some(reason.clone());
                }
            }
            let previous = before
                .revision
                .and_then(|r| status.history.iter().find(|h| h.revision == r))
                .cloned();
            match previous {
                Some(previous) if service.spec.update.auto_rollback => {
                    status.target_revision = Some(previous.revision);
                    status.message = Some(format!(
                        "revision {failed} failed: {reason}; rolled back to revision {}",
                        previous.revision
                    ));
                    after_status = vec![Action::SetServiceTemplate {
                        service: key.clone(),
                        template: Box::new(previous.template.clone()),
                    }];
                }
                _ => status.message = Some(format!("revision {failed} failed: {reason}")),
            }
            status.healthy_replicas = healthy_at(allocs, before.revision, &actions);
            if status != before {
                actions.push(Action::WriteServiceStatus {
                    service: key,
                    status: Box::new(status),
                });
            }
            actions.extend(after_status);
            return actions;
        }
    }
    if let Some(failure) = status
        .history
        .iter()
        .find(|r| r.revision == target.revision)
        .and_then(|r| r.failure.clone())
    {
        target.failure = Some(failure);
    }

    replace_and_scale(service, allocs, &target, &barrier, &mut actions);

    let complete = allocs.iter().all(|a| {
        view::phase(a).is_terminal() || (a.spec.revision == target.revision && !a.spec.evict)
    }) && allocs
        .iter()
        .filter(|a| a.spec.revision == target.revision && is_routed(a))
        .count()
        >= replicas(service);
    if complete && target.failure.is_none() {
        status.revision = Some(target.revision);
    }
    status.healthy_replicas = healthy_at(allocs, status.revision, &actions);
    if status != before {
        let write = Action::WriteServiceStatus {
            service: key,
            status: Box::new(status),
        };
        // Derived from the View (and what this plan drains and stops), so it need not wait
        // for the plan's other writes, unless a template write must follow it (a rollback:
        // the spec may hold the previous template only once the failure is recorded) or the
        // plan adds the finalizer (the same object).
        actions.push(if after_status.is_empty() && finalized {
            write.independent()
        } else {
            write
        });
    }
    actions.extend(after_status);
    actions
}

fn replicas(service: &Service) -> usize {
    usize::try_from(service.spec.replicas).unwrap_or(0)
}

/// Healthy allocs of `revision`, not counting those `planned` drains or stops: the status
/// goes out with the plan's writes, so it counts what they do.
fn healthy_at(allocs: &[&Alloc], revision: Option<i64>, planned: &[Action]) -> i32 {
    let leaving = |alloc: &Alloc| {
        let key = ObjectKey::of(&alloc.metadata);
        planned.iter().any(|a| match a.write() {
            Action::SetDraining {
                alloc,
                draining: true,
            } => *alloc == key,
            Action::SetDesiredState {
                alloc,
                state: DesiredState::Stopped,
            } => *alloc == key,
            _ => false,
        })
    };
    let count = allocs
        .iter()
        .filter(|a| Some(a.spec.revision) == revision && is_healthy(a) && !leaving(a))
        .count();
    i32::try_from(count).unwrap_or(i32::MAX)
}

fn stop(alloc: &Alloc) -> Action {
    Action::SetDesiredState {
        alloc: ObjectKey::of(&alloc.metadata),
        state: DesiredState::Stopped,
    }
}

fn drain(alloc: &Alloc) -> Action {
    Action::SetDraining {
        alloc: ObjectKey::of(&alloc.metadata),
        draining: true,
    }
}

/// What the routing barrier let this plan do, so the replacement step can go on in the
/// same plan instead of waiting for its own writes to come back: allocs marked routed
/// now (every live node routes them already) and drained ones stopped now.
#[derive(Default)]
struct Passed<'a> {
    routed: Vec<&'a Alloc>,
    stopped: Vec<&'a Alloc>,
}

impl Passed<'_> {
    fn routed(&self, alloc: &Alloc) -> bool {
        self.routed.iter().any(|a| std::ptr::eq(*a, alloc))
    }

    fn stopped(&self, alloc: &Alloc) -> bool {
        self.stopped.iter().any(|a| std::ptr::eq(*a, alloc))
    }
}

/// The routing barrier for one alloc: mark it routed or unrouted once every live node has
/// applied its state, and stop a drained one when its requests are done. The in-flight
/// counts come with the barrier's answers, read after the node applied the revision
/// asked for: once every live node has applied an alloc's draining, no new request can
/// reach it, so no request in flight in those answers means it is drained, and it is
/// stopped in the same plan that marks it unrouted.
fn route<'a>(alloc: &'a Alloc, step: &Step, passed: &mut Passed<'a>, actions: &mut Vec<Action>) {
    if !is_active(alloc) {
        return;
    }
    let key = ObjectKey::of(&alloc.metadata);
    let applied = step.applied >= view::resource_version(&alloc.metadata);
    let idle = step.in_flight.get(&key).copied().unwrap_or(0) == 0;
    if alloc.spec.draining {
        match view::condition(alloc, ROUTED) {
            Some(c) if c.status == "False" => {
                let since = c.last_transition_time.as_ref().map_or(step.now, |t| t.0);
                if idle || view::elapsed(since, step.now) >= step.knobs.drain_grace {
                    actions.push(stop(alloc));
                    passed.stopped.push(alloc);
                }
            }
            _ if applied => {
                actions.push(Action::SetAllocConditions {
                    alloc: key,
                    conditions: view::with_condition(
                        alloc,
                        ROUTED,
                        "False",
                        Some("taken out of routing on every live node".to_string()),
                        step.now,
                    ),
                });
                if idle {
                    actions.push(stop(alloc));
                    passed.stopped.push(alloc);
                }
            }
            _ => {}
        }
    } else if view::phase(alloc) == AllocPhase::Healthy
        && !view::condition_is(alloc, ROUTED, "True")
        && applied
    {
        actions.push(Action::SetAllocConditions {
            alloc: key,
            conditions: view::with_condition(
                alloc,
                ROUTED,
                "True",
                Some("routed on every live node".to_string()),
                step.now,
            ),
        });
        passed.routed.push(alloc);
    }
}

/// A deleted service: everything out of routing, then stopped.
fn remove(allocs: &[&Alloc], actions: &mut Vec<Action>) {
    for alloc in allocs {
        if !is_active(alloc) || alloc.spec.draining {
            continue;
        }
        if view::phase(alloc) == AllocPhase::Healthy {
            actions.push(drain(alloc));
        } else {
            actions.push(stop(alloc));
        }
    }
}

/// The first new alloc that fails the rollout of `target`, and why.
fn failure<'a>(
    service: &Service,
    allocs: &[&'a Alloc],
    target: &Revision,
    step: &Step,
) -> Option<(&'a Alloc, String)> {
    let health_timeout = service.spec.update.health_timeout;
    allocs
        .iter()
        .filter(|a| {
            a.spec.revision == target.revision
                && !a.spec.evict
                && a.spec.desired_state == DesiredState::Running
        })
        .find_map(|alloc| {
            let status = alloc.status.clone().unwrap_or_default();
            let reason = if status.phase == AllocPhase::Failed {
                Some(status.reason.unwrap_or_else(|| "failed".to_string()))
            } else if status.restarts > 0 {
                let times = if status.restarts == 1 {
                    "time"
                } else {
                    "times"
                };
                Some(match status.reason {
                    Some(reason) => format!("{reason} (restarted {} {times})", status.restarts),
                    None => format!("crash loop (restarted {} {times})", status.restarts),
                })
            } else if status.phase != AllocPhase::Healthy
                && view::created(&alloc.metadata)
                    .is_some_and(|t| view::elapsed(t, step.now) >= health_timeout.get())
            {
                Some(match view::condition(alloc, SCHEDULED) {
                    Some(c) if c.status == "False" && alloc.spec.node_name.is_none() => {
                        format!(
                            "not placed within {health_timeout}: {}",
                            c.message.clone().unwrap_or_default()
                        )
                    }
                    _ => format!("health check timeout after {health_timeout}"),
                })
            } else {
                None
            };
            reason.map(|r| (*alloc, format!("{}: {r}", view::name(&alloc.metadata))))
        })
}

/// Stop every new alloc of `target` that does not serve; mark the culprit failed.
fn fail(
    allocs: &[&Alloc],
    target: &Revision,
    culprit: &Alloc,
    reason: &str,
    actions: &mut Vec<Action>,
) {
    for alloc in allocs {
        // A new alloc that serves (one that crash-loops between healthy spells) is a moved
        // replica: the rollback replaces it without a gap, like the others.
        if alloc.spec.revision != target.revision || !is_active(alloc) || is_healthy(alloc) {
            continue;
        }
        actions.push(stop(alloc));
        if std::ptr::eq(*alloc, culprit) {
            actions.push(Action::SetAllocPhase {
                alloc: ObjectKey::of(&alloc.metadata),
                phase: AllocPhase::Failed,
                reason: Some(
                    reason
                        .split_once(": ")
                        .map_or(reason, |(_, why)| why)
                        .to_string(),
                ),
            });
        }
    }
}

/// Surge-first replacement of old and evicted allocs, scaling, and refilling lost slots.
/// Allocs the barrier step of this plan marked routed count as routed, and drained ones
/// it stopped no longer count as in flight: their writes come first in the plan.
fn replace_and_scale(
    service: &Service,
    allocs: &[&Alloc],
    target: &Revision,
    passed: &Passed,
    actions: &mut Vec<Action>,
) {
    let replicas = replicas(service);
    let max_parallel = usize::try_from(service.spec.update.max_parallel.max(1)).unwrap_or(1);
    let is_new = |a: &Alloc| a.spec.revision == target.revision && !a.spec.evict;
    let is_routed = |a: &Alloc| is_routed(a) || passed.routed(a);
    let live: Vec<&Alloc> = allocs
        .iter()
        .copied()
        .filter(|a| is_active(a) && !a.spec.draining)
        .collect();
    let new: Vec<&Alloc> = live.iter().copied().filter(|a| is_new(a)).collect();
    let mut old: Vec<&Alloc> = live.iter().copied().filter(|a| !is_new(a)).collect();
    let draining = allocs
        .iter()
        .filter(|a| is_active(a) && a.spec.draining && !passed.stopped(a))
        .count();
    let new_unready = new.iter().filter(|a| !is_routed(a)).count();
    let mut routed = live.iter().filter(|a| is_routed(a)).count();
    let mut busy = new_unready + draining;

    // Old allocs that do not serve are stopped at once; no request can reach them.
    old.retain(|a| {
        let serving = view::phase(a) == AllocPhase::Healthy;
        if !serving {
            actions.push(stop(a));
        }
        serving
    });

    // Too many new replicas (scale-down): unhealthy first, then newest.
    let mut kept_new = new.len();
    if new.len() > replicas {
        let mut extras = new.clone();
        extras.sort_by(|a, b| {
            let rank = |x: &Alloc| {
                let newest = (view::created(&x.metadata), seq_of(x));
                (is_healthy(x), std::cmp::Reverse(newest))
            };
            rank(a).cmp(&rank(b))
        });
        for extra in extras.into_iter().take(new.len() - replicas) {
            if !is_healthy(extra) {
                actions.push(stop(extra));
            } else if !is_routed(extra) {
                actions.push(drain(extra));
            } else if routed > replicas {
                routed -= 1;
                actions.push(drain(extra));
            } else {
                continue;
            }
            kept_new -= 1;
        }
    }

    // Old allocs leave routing only while `replicas` routed allocs remain without them:
    // evicted ones first, then the oldest revision.
    old.sort_by_key(|a| (!a.spec.evict, a.spec.revision, view::created(&a.metadata)));
    let mut covering = old.len();
    for alloc in &old {
        let counted = is_routed(alloc);
        if counted && routed <= replicas {
            continue;
        }
        if counted {
            routed -= 1;
        }
        busy += 1;
        covering -= 1;
        actions.push(drain(alloc));
    }

    if target.failure.is_some() {
        return;
    }
    let missing = replicas.saturating_sub(kept_new);
    let uncovered = missing.saturating_sub(covering);
    let replacing = (missing - uncovered).min(max_parallel.saturating_sub(busy));
    let first = next_seq(service, allocs);
    let count = u64::try_from(uncovered + replacing).unwrap_or(0);
    // A create is independent of the plan's other writes: its reason is in the View (a slot
    // nobody serves, or an old alloc every live node has drained and that has nothing in
    // flight, whose stop this plan writes but need not land first), nothing of the plan
    // writes the new alloc, and its name is deterministic (a repeat is `AlreadyExists`).
    for seq in first..first + count {
        actions.push(Action::CreateAlloc(Box::new(new_alloc(service, target, seq))).independent());
    }
}

/// One more than the highest sequence number in the names of the service's allocs
/// (`<service>-<revision>-<seq>`), so a name is never reused while its alloc is retained.
fn next_seq(service: &Service, allocs: &[&Alloc]) -> u64 {
    let prefix = format!("{}-", view::name(&service.metadata));
    allocs
        .iter()
        .filter(|a| {
            a.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter_map(|a| seq_of(a))
        .max()
        .map_or(1, |n| n + 1)
}

/// The sequence number at the end of an alloc's name.
fn seq_of(alloc: &Alloc) -> Option<u64> {
    alloc
        .metadata
        .name
        .as_deref()?
        .rsplit_once('-')?
        .1
        .parse()
        .ok()
}

fn new_alloc(service: &Service, target: &Revision, seq: u64) -> NewAlloc {
    let service_name = view::name(&service.metadata);
    let owner = service.metadata.uid.as_ref().map(|uid| OwnerReference {
        api_version: format!("{}/{}", mill_crds::GROUP, mill_crds::VERSION),
        kind: "Service".to_string(),
        name: service_name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    });
    NewAlloc {
        key: ObjectKey {
            namespace: ObjectKey::of(&service.metadata).namespace,
            name: format!("{service_name}-{}-{seq}", target.revision),
        },
        labels: BTreeMap::from([(OWNER_LABEL.to_string(), service_name.clone())]),
        owner,
        spec: AllocSpec {
            owner: AllocOwner {
                kind: OwnerKind::Service,
                name: service_name.clone(),
            },
            service: Some(service_name),
            revision: target.revision,
            template: target.template.clone(),
            node_name: None,
            host_port: None,
            desired_state: DesiredState::Running,
            draining: false,
            timeout: None,
            evict: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, t};
    use crate::simulation::{deploy_image, settled, Behaviour, World};
    use crate::Routing;
    use std::sync::Arc;

    fn status(world: &World) -> ServiceStatus {
        world.service("web").status.clone().unwrap()
    }

    #[test]
    fn rollout_keeps_three_healthy_while_replacing_three_replicas() {
        let mut world = settled(3, 1);
        deploy_image(&mut world, "web:2", "d2");
        let mut lowest = usize::MAX;
        world.run_until_quiet(200, |w| lowest = lowest.min(w.serving("web")));
        assert_eq!(lowest, 3);
        assert_eq!(world.active_revisions("web"), vec![2, 2, 2]);
        assert_eq!(status(&world).revision, Some(2));
        assert_eq!(status(&world).healthy_replicas, 3);
        let stopped_old = world
            .allocs
            .iter()
            .filter(|a| a.spec.revision == 1 && view::phase(a) == AllocPhase::Stopped)
            .count();
        assert_eq!(stopped_old, 3);
    }

    fn routed_true(action: &Action) -> bool {
        matches!(action, Action::SetAllocConditions { conditions, .. }
            if conditions.iter().any(|c| c.type_ == ROUTED && c.status == "True"))
    }

    fn routed_false(action: &Action) -> bool {
        matches!(action, Action::SetAllocConditions { conditions, .. }
            if conditions.iter().any(|c| c.type_ == ROUTED && c.status == "False"))
    }

    #[test]
    fn only_writes_that_rely_on_nothing_else_in_their_plan_go_at_once() {
        let mut world = settled(2, 1);
        deploy_image(&mut world, "web:2", "d2");
        let mut plans = Vec::new();
        for _ in 0..30 {
            plans.push(world.step());
        }
        assert_eq!(world.active_revisions("web"), vec![2, 2]);
        let drains: Vec<&Vec<Action>> = plans
            .iter()
            .filter(|p| {
                p.iter()
                    .any(|a| fixtures::drained(std::slice::from_ref(a)).len() == 1)
            })
            .collect();
        assert_eq!(drains.len(), 2, "{plans:#?}");
        let mut healthy = Vec::new();
        for plan in drains {
            // The new alloc is routed before the old one leaves: both in order.
            let routed = plan.iter().position(routed_true).expect("routed first");
            let drained = plan
                .iter()
                .position(|a| matches!(a, Action::SetDraining { draining: true, .. }))
                .unwrap();
            assert!(routed < drained, "{plan:#?}");
            // The service status counts the drained one out and goes alongside.
            let status = plan
                .iter()
                .find_map(|a| match a {
                    Action::Independent(w) => match &**w {
                        Action::WriteServiceStatus { status, .. } => Some(status),
                        _ => None,
                    },
                    _ => None,
                })
                .expect("an independent status write");
            healthy.push(status.healthy_replicas);
        }
        // Revision 1's healthy replicas, as they are once the drains land.
        assert_eq!(healthy, vec![1, 0]);
        // Unrouted and stopped, in that order, while the next replica is created at once,
        // already placed.
        let replace = plans
            .iter()
            .find(|p| p.iter().any(routed_false) && p.iter().any(|a| a.is_independent()))
            .expect("a plan that stops an old alloc and creates the next");
        let unrouted = replace.iter().position(routed_false).unwrap();
        let stopped = replace
            .iter()
            .position(|a| !fixtures::stopped(std::slice::from_ref(a)).is_empty())
            .unwrap();
        assert!(unrouted < stopped, "{replace:#?}");
        let Some(Action::CreateAlloc(new)) = replace
            .iter()
            .filter(|a| a.is_independent())
            .map(Action::write)
            .find(|a| matches!(a, Action::CreateAlloc(_)))
        else {
            panic!("{replace:#?}")
        };
        assert!(new.spec.node_name.is_some() && new.spec.host_port.is_some());
        assert!(
            world
                .log
                .iter()
                .all(|a| !matches!(a, Action::PlaceAlloc { .. })),
            "no separate placement write"
        );
    }

    #[test]
    fn rollout_of_a_single_replica_never_leaves_it_without_a_healthy_replica() {
        let mut world = settled(1, 1);
        deploy_image(&mut world, "web:2", "d2");
        let mut lowest = usize::MAX;
        world.run_until_quiet(100, |w| lowest = lowest.min(w.serving("web")));
        assert_eq!(lowest, 1);
        assert_eq!(world.active_revisions("web"), vec![2]);
    }

    #[test]
    fn rollout_replaces_at_most_max_parallel_replicas_at_once() {
        for max_parallel in [1usize, 2, 3] {
            let mut world = settled(4, max_parallel as u32);
            deploy_image(&mut world, "web:2", "d2");
            let mut most = 0;
            world.run_until_quiet(200, |w| {
                let in_flight = w
                    .allocs
                    .iter()
                    .filter(|a| {
                        a.spec.revision == 2 && view::is_active(a) && !is_routed(a)
                            || a.spec.revision == 1 && view::is_active(a) && a.spec.draining
                    })
                    .count();
                most = most.max(in_flight);
            });
            assert_eq!(most, max_parallel, "max_parallel {max_parallel}");
            assert_eq!(world.active_revisions("web"), vec![2; 4]);
        }
    }

    #[test]
    fn rollback_reverts_moved_replicas_when_replica_two_fails() {
        let mut world = settled(3, 1);
        world.behaviours.insert((2, 2), Behaviour::FailsAfter(2));
        deploy_image(&mut world, "web:2", "d2");
        let mut lowest = usize::MAX;
        world.run_until_quiet(200, |w| lowest = lowest.min(w.serving("web")));
        assert_eq!(lowest, 3);
        assert_eq!(world.active_revisions("web"), vec![1, 1, 1]);
        let status = status(&world);
        assert_eq!(
            (status.revision, status.target_revision),
            (Some(1), Some(1))
        );
        assert_eq!(world.service("web").spec.image, "web:1");
        let message = status.message.unwrap();
        assert!(
            message.starts_with("revision 2 failed: web-2-5: exited with code 2"),
            "{message}"
        );
        assert!(message.ends_with("rolled back to revision 1"), "{message}");
        let failed = status.history.iter().find(|r| r.revision == 2).unwrap();
        assert!(failed.failure.is_some());
    }

    #[test]
    fn failed_rollout_without_auto_rollback_keeps_old_replicas_serving() {
        let mut world = settled(3, 1);
        world.edit("web", |s| s.spec.update.auto_rollback = false);
        world.behaviours.insert((2, 2), Behaviour::FailsAfter(2));
        deploy_image(&mut world, "web:2", "d2");
        let mut lowest = usize::MAX;
        world.run_until_quiet(200, |w| lowest = lowest.min(w.serving("web")));
        assert_eq!(lowest, 3);
        assert_eq!(world.active_revisions("web"), vec![1, 1, 2]);
        let status = status(&world);
        assert_eq!(
            (status.revision, status.target_revision),
            (Some(1), Some(2))
        );
        assert_eq!(world.service("web").spec.image, "web:2");
        assert!(status.message.unwrap().starts_with("revision 2 failed"));
    }

    #[test]
    fn new_alloc_not_healthy_within_health_timeout_fails_the_rollout() {
        let mut world = settled(2, 1);
        world.edit("web", |s| {
            s.spec.update.health_timeout = mill_crds::Duration::from_secs(10)
        });
        world.behaviours.insert((2, 1), Behaviour::NeverHealthy);
        deploy_image(&mut world, "web:2", "d2");
        world.run_until_quiet(200, |_| {});
        let message = status(&world)
            .message
            .unwrap_or_else(|| panic!("{:#?}", world.log));
        assert!(
            message.contains("health check timeout after 10s"),
            "{message}"
        );
        assert_eq!(world.active_revisions("web"), vec![1, 1]);
        let killed = world.allocs.iter().find(|a| a.spec.revision == 2).unwrap();
        assert_eq!(view::phase(killed), AllocPhase::Failed);
    }

    #[test]
    fn crash_looping_new_alloc_fails_the_rollout_and_is_replaced_without_a_gap() {
        let mut world = settled(1, 1);
        world.behaviours.insert((2, 1), Behaviour::CrashLoops);
        deploy_image(&mut world, "web:2", "d2");
        let mut lowest = usize::MAX;
        world.run_until_quiet(200, |w| lowest = lowest.min(w.serving("web")));
        assert_eq!(lowest, 1);
        assert_eq!(world.active_revisions("web"), vec![1]);
        assert!(status(&world).message.unwrap().contains("restarted 1 time"));
    }

    #[test]
    fn a_newer_deploy_supersedes_a_rollout_in_progress() {
        let mut world = settled(3, 1);
        world.default_behaviour = Behaviour::HealthyAfter(3);
        deploy_image(&mut world, "web:2", "d2");
        for _ in 0..6 {
            world.step();
        }
        assert!(world.active_revisions("web").contains(&2));
        deploy_image(&mut world, "web:3", "d3");
        let mut lowest = usize::MAX;
        world.run_until_quiet(300, |w| lowest = lowest.min(w.serving("web")));
        assert_eq!(lowest, 3);
        assert_eq!(world.active_revisions("web"), vec![3, 3, 3]);
        assert_eq!(status(&world).revision, Some(3));
    }

    #[test]
    fn scaling_adds_and_removes_replicas_without_touching_the_others() {
        let mut world = settled(3, 1);
        let before: Vec<String> = world
            .allocs
            .iter()
            .map(|a| view::name(&a.metadata))
            .collect();
        world.edit("web", |s| s.spec.replicas = 5);
        world.run_until_quiet(100, |_| {});
        assert_eq!(world.active_revisions("web"), vec![1; 5]);
        assert!(before.iter().all(|n| world
            .allocs
            .iter()
            .any(|a| view::name(&a.metadata) == *n && view::is_active(a))));
        assert_eq!(status(&world).history.len(), 1);
        world.edit("web", |s| s.spec.replicas = 2);
        let mut lowest = usize::MAX;
        world.run_until_quiet(100, |w| lowest = lowest.min(w.serving("web")));
        assert_eq!(lowest, 2);
        let mut left: Vec<String> = world
            .allocs
            .iter()
            .filter(|a| view::is_active(a))
            .map(|a| view::name(&a.metadata))
            .collect();
        left.sort();
        assert_eq!(left, vec!["web-1-1", "web-1-2"], "the newest go first");
    }

    #[test]
    fn scale_down_removes_unhealthy_replicas_first() {
        let s = fixtures::service("web", "web:1", 1);
        let mut s = s;
        let revision = select_revision(&s, t(0), &Knobs::default());
        s.status = Some(ServiceStatus {
            revision: Some(1),
            target_revision: Some(1),
            history: revision.history,
            ..ServiceStatus::default()
        });
        let healthy = fixtures::routed(
            fixtures::alloc("web-1-2", "web", 1, AllocPhase::Healthy),
            "True",
            t(0),
        );
        let starting = fixtures::alloc("web-1-1", "web", 1, AllocPhase::Starting);
        let view = View {
            services: vec![Arc::new(s)],
            allocs: vec![Arc::new(healthy), Arc::new(starting)],
            ..View::default()
        };
        let actions = plan(&view, t(1), &Knobs::default());
        assert_eq!(fixtures::stopped(&actions), vec!["web-1-1"]);
        assert!(fixtures::drained(&actions).is_empty());
    }

    #[test]
    fn removed_service_drains_and_stops_every_alloc_then_goes() {
        let mut world = settled(2, 1);
        world.edit("web", |s| {
            s.metadata.deletion_timestamp = Some(Time(t(100)));
        });
        world.run_until_quiet(100, |_| {});
        assert!(world.services.is_empty());
        assert!(world
            .allocs
            .iter()
            .all(|a| view::phase(a) == AllocPhase::Stopped));
        assert!(world
            .log
            .iter()
            .any(|a| matches!(a, Action::SetDraining { draining: true, .. })));
    }

    #[test]
    fn restart_replaces_every_replica_with_the_same_template() {
        let mut world = settled(2, 1);
        world.edit("web", |s| {
            s.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(
                    RESTART_ANNOTATION.to_string(),
                    "2024-01-01T00:00:00Z".to_string(),
                );
        });
        let mut lowest = usize::MAX;
        world.run_until_quiet(100, |w| lowest = lowest.min(w.serving("web")));
        assert_eq!(lowest, 2);
        assert_eq!(world.active_revisions("web"), vec![2, 2]);
        let history = status(&world).history;
        assert_eq!(history[0].template, history[1].template);
        assert_eq!(history[1].cause.as_deref(), Some("restart"));
        world.run_until_quiet(100, |_| {});
        assert_eq!(
            status(&world).history.len(),
            2,
            "a seen restart token restarts nothing"
        );
    }

    #[test]
    fn old_alloc_is_not_drained_until_every_live_node_routes_the_new_one() {
        let mut world = settled(1, 1);
        world.routing_lag = 1000;
        deploy_image(&mut world, "web:2", "d2");
        for _ in 0..20 {
            world.step();
        }
        assert!(world
            .log
            .iter()
            .all(|a| !matches!(a, Action::SetDraining { .. })));
        assert_eq!(world.active_revisions("web"), vec![1, 2]);
        world.routing_lag = 0;
        world.run_until_quiet(50, |_| {});
        assert_eq!(world.active_revisions("web"), vec![2]);
    }

    #[test]
    fn down_nodes_do_not_hold_the_routing_barrier() {
        let mut up = fixtures::node("node-1", 4.0, "8G");
        up.metadata.name = Some("node-1".to_string());
        let mut down = fixtures::node("node-2", 4.0, "8G");
        down.status.as_mut().unwrap().state = mill_crds::NodeState::Down;
        let routing = Routing {
            applied: BTreeMap::from([("node-1".to_string(), 50)]),
            ..Routing::default()
        };
        assert_eq!(
            routing.applied_everywhere(&[Arc::new(up), Arc::new(down)]),
            50
        );
    }

    #[test]
    fn drained_alloc_waits_for_in_flight_requests_up_to_the_drain_grace() {
        let mut s = fixtures::service("web", "web:1", 0);
        s.status = Some(ServiceStatus {
            history: select_revision(&s, t(0), &Knobs::default()).history,
            target_revision: Some(1),
            revision: Some(1),
            ..ServiceStatus::default()
        });
        let mut old = fixtures::routed(
            fixtures::alloc("web-1-1", "web", 1, AllocPhase::Healthy),
            "False",
            t(10),
        );
        old.spec.draining = true;
        let mut view = View {
            services: vec![Arc::new(s)],
            allocs: vec![Arc::new(old)],
            ..View::default()
        };
        view.routing.in_flight.insert(fixtures::key("web-1-1"), 3);
        let knobs = Knobs::default();
        assert!(fixtures::stopped(&plan(&view, t(12), &knobs)).is_empty());
        assert_eq!(
            fixtures::stopped(&plan(&view, t(15), &knobs)),
            vec!["web-1-1"]
        );
        view.routing.in_flight.clear();
        assert_eq!(
            fixtures::stopped(&plan(&view, t(11), &knobs)),
            vec!["web-1-1"]
        );
    }

    #[test]
    fn history_keeps_the_newest_ten_revisions() {
        let mut world = settled(1, 1);
        for i in 2..=14 {
            deploy_image(&mut world, &format!("web:{i}"), &format!("d{i}"));
            world.run_until_quiet(100, |_| {});
        }
        let history = status(&world).history;
        let numbers: Vec<i64> = history.iter().map(|r| r.revision).collect();
        assert_eq!(numbers, (5..=14).collect::<Vec<_>>());
        assert_eq!(history[9].cause.as_deref(), Some("d14"));
    }

    #[test]
    fn new_service_whose_image_fails_reports_why_and_stays_failed() {
        let mut world = World::new(2);
        world.default_behaviour = Behaviour::FailsAfter(1);
        world.add_service(fixtures::service("web", "web:bad", 2));
        world.run_until_quiet(100, |_| {});
        let status = status(&world);
        assert_eq!(status.revision, None);
        assert!(status.message.unwrap().starts_with("revision 1 failed"));
        assert!(world.active_revisions("web").is_empty());
    }

    #[test]
    fn failed_replica_in_steady_state_is_replaced() {
        let mut world = settled(2, 1);
        let lost = world.allocs[0].metadata.name.clone();
        world.allocs[0].status.as_mut().unwrap().phase = AllocPhase::Failed;
        world.run_until_quiet(100, |_| {});
        assert_eq!(world.serving("web"), 2);
        assert_eq!(world.active_revisions("web"), vec![1, 1]);
        assert!(world
            .allocs
            .iter()
            .any(|a| a.metadata.name == lost && a.spec.desired_state == DesiredState::Stopped));
    }

    #[test]
    fn evicted_replica_is_stopped_only_after_its_replacement_serves() {
        let mut world = settled(1, 1);
        world.allocs[0].spec.evict = true;
        let mut lowest = usize::MAX;
        world.run_until_quiet(100, |w| lowest = lowest.min(w.serving("web")));
        assert_eq!(lowest, 1);
        assert_eq!(world.active_revisions("web"), vec![1]);
        assert!(world
            .allocs
            .iter()
            .any(|a| a.spec.evict && view::phase(a) == AllocPhase::Stopped));
    }

    #[test]
    fn a_spec_equal_to_the_target_makes_no_new_revision() {
        let mut s = fixtures::deployed_by(fixtures::service("web", "web:1", 1), "d1");
        let first = select_revision(&s, t(0), &Knobs::default());
        assert_eq!(first.target.revision, 1);
        s.status = Some(ServiceStatus {
            target_revision: Some(1),
            history: first.history.clone(),
            ..ServiceStatus::default()
        });
        let again = select_revision(&s, t(5), &Knobs::default());
        assert_eq!(again.history, first.history);
        s.spec.replicas = 4;
        assert_eq!(
            select_revision(&s, t(5), &Knobs::default()).target.revision,
            1
        );
        s.spec.image = "web:2".to_string();
        assert_eq!(
            select_revision(&s, t(5), &Knobs::default()).target.revision,
            2
        );
    }

    #[test]
    fn every_service_gets_the_finalizer_that_holds_it_for_draining() {
        let mut s = fixtures::service("web", "web:1", 0);
        s.metadata.finalizers = None;
        let view = View {
            services: vec![Arc::new(s)],
            ..View::default()
        };
        let actions = plan(&view, t(0), &Knobs::default());
        assert!(actions.contains(&Action::AddServiceFinalizer {
            service: fixtures::key("web")
        }));
    }
}
