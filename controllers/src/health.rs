//! The health planner: when to probe which alloc, and what the results mean.
//!
//! A service alloc with a health check is probed at once when its container starts, then
//! after 50 ms, 100 ms, 200 ms, ... (doubling from [`Knobs::first_probe_gap`], capped at
//! the check's `interval`) until the first pass, then every `interval`, as issue #5 sets
//! it. One passing probe makes a running alloc `healthy`; `failure_threshold` consecutive
//! failures make a healthy one `running` again with
//! `Healthy=False`, which takes it out of routing. An alloc without a health check is
//! healthy once it runs.
//!
//! Probe results are too frequent for the store, so the loop owns a map of
//! [`ProbeState`] per alloc (updated with [`record`]) and passes it to [`plan`]; the plan
//! says which probes are due and which phase changes the results call for.

use crate::action::Action;
use crate::knobs::Knobs;
use crate::view::{self, is_active, ObjectKey, View};
use crate::HEALTHY;
use jiff::{SignedDuration, Timestamp};
use mill_crds::{Alloc, AllocPhase, HealthCheck};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the loop remembers of one alloc's probes since its container started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    /// When the container started; a restart starts a fresh state.
    pub started_at: Timestamp,
    /// Probes made so far.
    pub probes: u32,
    /// When the last probe was made.
    pub last_probe: Option<Timestamp>,
    /// Whether any probe passed since the start (ends the fast schedule).
    pub passed_once: bool,
    /// Failures since the last pass.
    pub consecutive_failures: u32,
    /// Why the last probe failed.
    pub last_error: Option<String>,
}

impl ProbeState {
    /// No probe yet for a container started at `started_at`.
    pub fn new(started_at: Timestamp) -> ProbeState {
        ProbeState {
            started_at,
            probes: 0,
            last_probe: None,
            passed_once: false,
            consecutive_failures: 0,
            last_error: None,
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// A 2xx or 3xx answer within the timeout.
    Passed,
    /// Anything else, and why (`connection refused`, `HTTP 500`, `timed out after 2s`).
    Failed(String),
}

/// When the next probe of `state` is due.
pub fn next_probe_at(state: &ProbeState, check: &HealthCheck, knobs: &Knobs) -> Timestamp {
    let Some(last) = state.last_probe else {
        return state.started_at;
    };
    let interval = check.interval.get();
    let gap = if state.passed_once {
        interval
    } else {
        let doublings = state.probes.saturating_sub(1).min(30);
        knobs
            .first_probe_gap
            .saturating_mul(1 << doublings)
            .min(interval)
    };
    last.saturating_add(SignedDuration::try_from(gap).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// `state` after a probe made at `at` had `result`.
pub fn record(state: &ProbeState, result: &ProbeResult, at: Timestamp) -> ProbeState {
    let mut next = state.clone();
    next.probes = next.probes.saturating_add(1);
    next.last_probe = Some(at);
    match result {
        ProbeResult::Passed => {
            next.passed_once = true;
            next.consecutive_failures = 0;
            next.last_error = None;
        }
        ProbeResult::Failed(why) => {
            next.consecutive_failures = next.consecutive_failures.saturating_add(1);
            next.last_error = Some(why.clone());
        }
    }
    next
}

/// One HTTP GET to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// The alloc probed.
    pub alloc: ObjectKey,
    /// `node-ip:host-port`.
    pub address: String,
    /// The path to GET.
    pub path: String,
    /// How long the probe may take.
    pub timeout: Duration,
}

/// What the health loop does now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthPlan {
    /// Probes due now.
    pub probes: Vec<Probe>,
    /// Phase and condition changes the recorded results call for.
    pub actions: Vec<Action>,
    /// When the next probe not yet due will be.
    pub next_wake: Option<Timestamp>,
}

/// The probes due at `now` and the transitions `states` call for. `states` holds the
/// loop's [`ProbeState`] per alloc; a missing or outdated (restarted) one counts as fresh.
pub fn plan(
    view: &View,
    states: &BTreeMap<ObjectKey, ProbeState>,
    now: Timestamp,
    knobs: &Knobs,
) -> HealthPlan {
    let mut plan = HealthPlan::default();
    for alloc in &view.allocs {
        let phase = view::phase(alloc);
        if !view::is_service_alloc(alloc)
            || !is_active(alloc)
            || !matches!(phase, AllocPhase::Running | AllocPhase::Healthy)
        {
            continue;
        }
        let key = ObjectKey::of(&alloc.metadata);
        let Some(check) = &alloc.spec.template.health else {
            if phase == AllocPhase::Running {
                plan.actions
                    .extend(transition(alloc, true, "running; no health check", now));
            }
            continue;
        };
        let started_at = alloc
            .status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .map_or(now, |t| t.0);
        let state = states
            .get(&key)
            .filter(|s| s.started_at == started_at)
            .cloned()
            .unwrap_or_else(|| ProbeState::new(started_at));
        if state.probes > 0 && state.consecutive_failures == 0 && phase == AllocPhase::Running {
            plan.actions
                .extend(transition(alloc, true, "health check passed", now));
        }
        if state.consecutive_failures >= check.failure_threshold && phase == AllocPhase::Healthy {
            let message = format!(
                "health check failed {} times: {}",
                state.consecutive_failures,
                state.last_error.as_deref().unwrap_or("no answer")
            );
            plan.actions.extend(transition(alloc, false, &message, now));
        }
        let due = next_probe_at(&state, check, knobs);
        let address = alloc.status.as_ref().and_then(|s| s.address.clone());
        match address {
            Some(address) if due <= now => plan.probes.push(Probe {
                alloc: key,
                address,
                path: check.path.clone(),
                timeout: check.timeout.get(),
            }),
            _ => plan.next_wake = Some(plan.next_wake.map_or(due, |w| w.min(due))),
        }
    }
    plan
}

fn transition(alloc: &Alloc, healthy: bool, message: &str, now: Timestamp) -> [Action; 2] {
    let key = ObjectKey::of(&alloc.metadata);
    [
        Action::SetAllocPhase {
            alloc: key.clone(),
            phase: if healthy {
                AllocPhase::Healthy
            } else {
                AllocPhase::Running
            },
            reason: None,
        },
        Action::SetAllocConditions {
            alloc: key,
            conditions: view::with_condition(
                alloc,
                HEALTHY,
                if healthy { "True" } else { "False" },
                Some(message.to_string()),
                now,
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, ms};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::sync::Arc;

    fn check() -> HealthCheck {
        serde_json::from_value(serde_json::json!({"path": "/health", "interval": "1s"})).unwrap()
    }

    #[test]
    fn probes_start_at_once_then_every_50ms_doubling_up_to_the_interval() {
        let knobs = Knobs::default();
        let mut state = ProbeState::new(ms(0));
        let mut times = Vec::new();
        for _ in 0..7 {
            let at = next_probe_at(&state, &check(), &knobs);
            times.push(at.as_millisecond() - ms(0).as_millisecond());
            state = record(&state, &ProbeResult::Failed("refused".into()), at);
        }
        assert_eq!(times, vec![0, 50, 150, 350, 750, 1550, 2550]);
    }

    #[test]
    fn the_fast_schedule_counts_from_the_last_probe_not_the_whole_second_start() {
        // `startedAt` has whole seconds: a container started at 0.9 s reads as 0 s.
        let knobs = Knobs::default();
        let state = record(
            &ProbeState::new(ms(0)),
            &ProbeResult::Failed("refused".into()),
            ms(900),
        );
        assert_eq!(next_probe_at(&state, &check(), &knobs), ms(950));
    }

    #[test]
    fn after_the_first_pass_probes_come_every_interval() {
        let knobs = Knobs::default();
        let state = record(&ProbeState::new(ms(0)), &ProbeResult::Passed, ms(0));
        assert_eq!(next_probe_at(&state, &check(), &knobs), ms(1000));
    }

    fn running(phase: AllocPhase, health: Option<HealthCheck>) -> mill_crds::Alloc {
        let mut alloc = fixtures::alloc("web-1-1", "web", 1, phase);
        alloc.spec.template.health = health;
        let status = alloc.status.as_mut().unwrap();
        status.started_at = Some(Time(ms(0)));
        status.address = Some("10.0.0.1:20000".to_string());
        alloc
    }

    fn view_of(alloc: mill_crds::Alloc) -> View {
        View {
            allocs: vec![Arc::new(alloc)],
            ..View::default()
        }
    }

    fn phases(plan: &HealthPlan) -> Vec<AllocPhase> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::SetAllocPhase { phase, .. } => Some(*phase),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_service_without_health_check_is_healthy_once_running() {
        let p = plan(
            &view_of(running(AllocPhase::Running, None)),
            &BTreeMap::new(),
            ms(0),
            &Knobs::default(),
        );
        assert_eq!(phases(&p), vec![AllocPhase::Healthy]);
        assert!(p.probes.is_empty());
    }

    #[test]
    fn a_started_alloc_is_probed_at_once_and_healthy_after_one_pass() {
        let view = view_of(running(AllocPhase::Running, Some(check())));
        let knobs = Knobs::default();
        let p = plan(&view, &BTreeMap::new(), ms(0), &knobs);
        assert_eq!(p.probes.len(), 1);
        assert_eq!(p.probes[0].address, "10.0.0.1:20000");
        assert!(phases(&p).is_empty());
        let passed = record(&ProbeState::new(ms(0)), &ProbeResult::Passed, ms(3));
        let states = BTreeMap::from([(fixtures::key("web-1-1"), passed)]);
        let p = plan(&view, &states, ms(10), &knobs);
        assert_eq!(phases(&p), vec![AllocPhase::Healthy]);
        assert!(p.probes.is_empty());
        assert_eq!(p.next_wake, Some(ms(1003)));
    }

    #[test]
    fn failure_threshold_consecutive_failures_make_a_healthy_alloc_unhealthy() {
        let view = view_of(running(AllocPhase::Healthy, Some(check())));
        let knobs = Knobs::default();
        let mut state = record(&ProbeState::new(ms(0)), &ProbeResult::Passed, ms(0));
        for (i, expected) in [(1, vec![]), (2, vec![]), (3, vec![AllocPhase::Running])] {
            state = record(
                &state,
                &ProbeResult::Failed("HTTP 500".into()),
                ms(i * 1000),
            );
            let states = BTreeMap::from([(fixtures::key("web-1-1"), state.clone())]);
            let p = plan(&view, &states, ms(i * 1000), &knobs);
            assert_eq!(phases(&p), expected, "after {i} failures");
        }
    }

    #[test]
    fn a_restarted_container_starts_a_fresh_probe_schedule() {
        let view = view_of(running(AllocPhase::Running, Some(check())));
        let stale = record(&ProbeState::new(ms(-5000)), &ProbeResult::Passed, ms(-5000));
        let states = BTreeMap::from([(fixtures::key("web-1-1"), stale)]);
        let p = plan(&view, &states, ms(0), &Knobs::default());
        assert!(phases(&p).is_empty(), "an old pass does not count");
        assert_eq!(p.probes.len(), 1);
    }
}
