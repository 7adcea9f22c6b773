//! A tiny fake world that applies the planners' actions and plays the agents: allocs start,
//! become healthy or fail after a number of steps, and stop when asked. Used to drive the
//! rollout planner step by step in tests, including a property test over random scenarios.

use crate::fixtures::{self, t};
use crate::view::{self, ObjectKey, Routing, View};
use crate::{rollout, scheduler, Action, Knobs, SERVICE_FINALIZER};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mill_crds::{Alloc, AllocPhase, AllocStatus, DesiredState, Node, Service};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a container of some revision does once placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Runs, and passes its health check this many steps after it was placed.
    HealthyAfter(u32),
    /// Exits with an error this many steps after it was placed.
    FailsAfter(u32),
    /// Runs but never passes its health check.
    NeverHealthy,
    /// Becomes healthy, then restarts in place.
    CrashLoops,
}

pub struct World {
    pub services: Vec<Service>,
    pub allocs: Vec<Alloc>,
    pub nodes: Vec<Node>,
    pub now: Timestamp,
    pub knobs: Knobs,
    rv: u64,
    /// How many steps the routing tables lag behind the store (0: applied at once).
    pub routing_lag: usize,
    applied_history: Vec<u64>,
    /// Behaviour per (revision, n-th alloc of that revision, from 1); falls back to
    /// `default_behaviour`.
    pub behaviours: BTreeMap<(i64, usize), Behaviour>,
    pub default_behaviour: Behaviour,
    /// Whether the writes a plan marks independent land before its ordered ones (they are
    /// sent at once, so they may) instead of after them.
    pub independent_first: bool,
    ages: BTreeMap<String, u32>,
    pub log: Vec<Action>,
}

impl World {
    pub fn new(nodes: usize) -> World {
        World {
            services: Vec::new(),
            allocs: Vec::new(),
            nodes: (1..=nodes)
                .map(|i| fixtures::node(&format!("node-{i}"), 8.0, "32G"))
                .collect(),
            now: t(0),
            knobs: Knobs::default(),
            rv: 1,
            routing_lag: 0,
            applied_history: Vec::new(),
            behaviours: BTreeMap::new(),
            default_behaviour: Behaviour::HealthyAfter(2),
            independent_first: false,
            ages: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    fn bump(&mut self) -> Option<String> {
        self.rv += 1;
        Some(self.rv.to_string())
    }

    pub fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap()
    }

    pub fn edit(&mut self, name: &str, f: impl FnOnce(&mut Service)) {
        let rv = self.bump();
        let service = self
            .services
            .iter_mut()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap();
        f(service);
        service.metadata.resource_version = rv;
    }

    pub fn add_service(&mut self, service: Service) {
        self.services.push(service);
    }

    pub fn view(&self) -> View {
        let applied = if self.routing_lag == 0 {
            self.rv
        } else {
            let n = self.applied_history.len();
            self.applied_history
                .get(n.saturating_sub(self.routing_lag))
                .copied()
                .unwrap_or(0)
        };
        View {
            services: self.services.iter().cloned().map(Arc::new).collect(),
            allocs: self.allocs.iter().cloned().map(Arc::new).collect(),
            nodes: self.nodes.iter().cloned().map(Arc::new).collect(),
            routing: Routing {
                applied: self
                    .nodes
                    .iter()
                    .map(|n| (view::name(&n.metadata), applied))
                    .collect(),
                in_flight: BTreeMap::new(),
            },
            ..View::default()
        }
    }

    /// Allocs of `service` that the routing tables send requests to: healthy, wanted
    /// running, not draining.
    pub fn serving(&self, service: &str) -> usize {
        self.allocs
            .iter()
            .filter(|a| {
                a.spec.owner.name == service
                    && view::is_active(a)
                    && view::phase(a) == AllocPhase::Healthy
                    && !a.spec.draining
            })
            .count()
    }

    pub fn active_revisions(&self, service: &str) -> Vec<i64> {
        let mut revisions: Vec<i64> = self
            .allocs
            .iter()
            .filter(|a| a.spec.owner.name == service && !view::phase(a).is_terminal())
            .map(|a| a.spec.revision)
            .collect();
        revisions.sort();
        revisions
    }

    /// One round: plan (scheduler + rollout, whose creates the scheduler places, as the
    /// loop does), apply, then the agents act and time passes.
    pub fn step(&mut self) -> Vec<Action> {
        let view = self.view();
        let mut rollout = rollout::plan(&view, self.now, &self.knobs);
        let mut actions = scheduler::plan_placing(&view, self.now, &self.knobs, &mut rollout);
        actions.extend(rollout);
        let (independent, ordered): (Vec<&Action>, Vec<&Action>) =
            actions.iter().partition(|a| a.is_independent());
        let order = if self.independent_first {
            [independent, ordered]
        } else {
            [ordered, independent]
        };
        for action in order.into_iter().flatten() {
            self.apply(action);
        }
        self.agents();
        self.applied_history.push(self.rv);
        self.now = self.now.checked_add(SignedDuration::from_secs(1)).unwrap();
        self.log.extend(actions.iter().cloned());
        actions
    }

    pub fn run_until_quiet(&mut self, max_steps: usize, mut check: impl FnMut(&World)) -> usize {
        let mut quiet = 0;
        for step in 0..max_steps {
            let actions = self.step();
            check(self);
            quiet = if actions.is_empty() { quiet + 1 } else { 0 };
            // Longer than any health timeout the tests use, so waiting is not mistaken for done.
            if quiet >= 40 {
                return step;
            }
        }
        panic!("the world did not settle in {max_steps} steps");
    }

    fn alloc_mut(&mut self, key: &ObjectKey) -> Option<&mut Alloc> {
        let rv = self.bump();
        let alloc = self
            .allocs
            .iter_mut()
            .find(|a| a.metadata.name.as_deref() == Some(&key.name))?;
        alloc.metadata.resource_version = rv;
        Some(alloc)
    }

    fn apply(&mut self, action: &Action) {
        let now = self.now;
        match action.write() {
            Action::CreateAlloc(new) => {
                if self
                    .allocs
                    .iter()
                    .any(|a| a.metadata.name.as_deref() == Some(&new.key.name))
                {
                    return;
                }
                let mut alloc = new.to_alloc();
                alloc.metadata.creation_timestamp = Some(Time(now));
                alloc.metadata.resource_version = self.bump();
                self.allocs.push(alloc);
            }
            Action::PlaceAlloc {
                alloc,
                node,
                host_port,
            } => {
                if let Some(a) = self.alloc_mut(alloc) {
                    a.spec.node_name = Some(node.clone());
                    a.spec.host_port = Some(*host_port);
                }
            }
            Action::SetDesiredState { alloc, state } => {
                if let Some(a) = self.alloc_mut(alloc) {
                    a.spec.desired_state = *state;
                }
            }
            Action::SetDraining { alloc, draining } => {
                if let Some(a) = self.alloc_mut(alloc) {
                    a.spec.draining = *draining;
                }
            }
            Action::Evict { alloc } => {
                if let Some(a) = self.alloc_mut(alloc) {
                    a.spec.evict = true;
                }
            }
            Action::SetAllocPhase {
                alloc,
                phase,
                reason,
            } => {
                if let Some(a) = self.alloc_mut(alloc) {
                    let status = a.status.get_or_insert_with(AllocStatus::default);
                    status.phase = *phase;
                    status.reason = reason.clone();
                }
            }
            Action::SetAllocConditions { alloc, conditions } => {
                if let Some(a) = self.alloc_mut(alloc) {
                    a.status.get_or_insert_with(AllocStatus::default).conditions =
                        conditions.clone();
                }
            }
            Action::DeleteAlloc { alloc } => {
                self.allocs
                    .retain(|a| a.metadata.name.as_deref() != Some(&alloc.name));
            }
            Action::WriteServiceStatus { service, status } => {
                let status = (**status).clone();
                self.edit(&service.name, |s| s.status = Some(status));
            }
            Action::SetServiceTemplate { service, template } => {
                let template = (**template).clone();
                self.edit(&service.name, |s| {
                    s.spec.image = template.image;
                    s.spec.command = template.command;
                    s.spec.cpu = template.cpu;
                    s.spec.memory = template.memory;
                    s.spec.env = template.env;
                    s.spec.health = template.health;
                    s.spec.volumes = template.volumes;
                });
            }
            Action::AddServiceFinalizer { service } => self.edit(&service.name, |s| {
                s.metadata
                    .finalizers
                    .get_or_insert_with(Vec::new)
                    .push(SERVICE_FINALIZER.to_string())
            }),
            Action::RemoveServiceFinalizer { service } => {
                self.services
                    .retain(|s| s.metadata.name.as_deref() != Some(&service.name));
            }
            Action::SetNodeState { .. }
            | Action::WriteDeployStatus { .. }
            | Action::DeleteDeploy { .. }
            | Action::Independent(_) => {}
        }
    }

    /// The agents: placed allocs start and behave; stopped ones stop.
    fn agents(&mut self) {
        let mut nth: BTreeMap<i64, usize> = BTreeMap::new();
        let mut order: Vec<usize> = (0..self.allocs.len()).collect();
        order.sort_by_key(|&i| self.allocs[i].metadata.name.clone());
        let mut by_creation: Vec<usize> = (0..self.allocs.len()).collect();
        by_creation.sort_by_key(|&i| {
            let name = self.allocs[i].metadata.name.clone().unwrap_or_default();
            let seq: u64 = name
                .rsplit('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            seq
        });
        let mut rank = vec![0usize; self.allocs.len()];
        for &i in &by_creation {
            let n = nth.entry(self.allocs[i].spec.revision).or_default();
            *n += 1;
            rank[i] = *n;
        }
        let now = self.now;
        for i in order {
            let behaviour = self
                .behaviours
                .get(&(self.allocs[i].spec.revision, rank[i]))
                .copied()
                .unwrap_or(self.default_behaviour);
            let name = self.allocs[i].metadata.name.clone().unwrap_or_default();
            let alloc = &self.allocs[i];
            let phase = view::phase(alloc);
            if phase.is_terminal() || alloc.spec.node_name.is_none() {
                continue;
            }
            let rv = {
                self.rv += 1;
                Some(self.rv.to_string())
            };
            let alloc = &mut self.allocs[i];
            let status = alloc.status.get_or_insert_with(AllocStatus::default);
            if alloc.spec.desired_state == DesiredState::Stopped {
                if status.phase != AllocPhase::Failed {
                    status.phase = AllocPhase::Stopped;
                }
                status.finished_at = Some(Time(now));
                alloc.metadata.resource_version = rv;
                continue;
            }
            let age = self.ages.entry(name).or_default();
            *age += 1;
            let before = status.clone();
            match behaviour {
                Behaviour::HealthyAfter(n) => {
                    status.phase = if *age >= n {
                        AllocPhase::Healthy
                    } else {
                        AllocPhase::Running
                    }
                }
                Behaviour::FailsAfter(n) => {
                    status.phase = if *age >= n {
                        status.reason = Some("exited with code 2".to_string());
                        AllocPhase::Failed
                    } else {
                        AllocPhase::Running
                    }
                }
                Behaviour::NeverHealthy => status.phase = AllocPhase::Running,
                Behaviour::CrashLoops => {
                    status.phase = AllocPhase::Healthy;
                    if *age >= 3 {
                        status.restarts = 1;
                        status.reason = Some("exited with code 1".to_string());
                    }
                }
            }
            if *status != before {
                alloc.metadata.resource_version = rv;
            }
        }
    }
}

/// A world with one service `web` of `replicas` healthy replicas at revision 1.
pub fn settled(replicas: i32, max_parallel: u32) -> World {
    let mut world = World::new(3);
    let mut service = fixtures::deployed_by(fixtures::service("web", "web:1", replicas), "d1");
    service.spec.update.max_parallel = max_parallel;
    world.add_service(service);
    world.run_until_quiet(100, |_| {});
    assert_eq!(world.serving("web"), replicas as usize);
    world
}

/// Deploy `image` to `web` as deploy `deploy`.
pub fn deploy_image(world: &mut World, image: &str, deploy: &str) {
    let image = image.to_string();
    let deploy = deploy.to_string();
    world.edit("web", move |s| {
        s.spec.image = image;
        s.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(crate::DEPLOY_ANNOTATION.to_string(), deploy);
    });
}

#[derive(Debug, Clone)]
struct Scenario {
    replicas: i32,
    max_parallel: u32,
    new_behaviours: Vec<Behaviour>,
    supersede_at: Option<usize>,
    routing_lag: usize,
    auto_rollback: bool,
    independent_first: bool,
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        6 => (1u32..6).prop_map(Behaviour::HealthyAfter),
        1 => (1u32..6).prop_map(Behaviour::FailsAfter),
        1 => Just(Behaviour::NeverHealthy),
        1 => Just(Behaviour::CrashLoops),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1i32..5,
        1u32..4,
        proptest::collection::vec(behaviour(), 1..8),
        proptest::option::of(1usize..40),
        0usize..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                replicas,
                max_parallel,
                new_behaviours,
                supersede_at,
                routing_lag,
                auto_rollback,
                independent_first,
            )| {
                Scenario {
                    replicas,
                    max_parallel,
                    new_behaviours,
                    supersede_at,
                    routing_lag,
                    auto_rollback,
                    independent_first,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the new revision does, the service never serves from fewer than `replicas`
    /// healthy allocs, and it settles with exactly `replicas` replicas of one revision.
    #[test]
    fn rollout_never_drops_below_replicas_healthy_in_random_scenarios(s in scenario()) {
        let mut world = settled(s.replicas, s.max_parallel);
        world.routing_lag = s.routing_lag;
        world.independent_first = s.independent_first;
        world.edit("web", |svc| svc.spec.update.auto_rollback = s.auto_rollback);
        for (i, b) in s.new_behaviours.iter().enumerate() {
            world.behaviours.insert((2, i + 1), *b);
        }
        deploy_image(&mut world, "web:2", "d2");
        let replicas = s.replicas as usize;
        let mut lowest = usize::MAX;
        for step in 0..400 {
            if Some(step) == s.supersede_at {
                deploy_image(&mut world, "web:3", "d3");
            }
            world.step();
            lowest = lowest.min(world.serving("web"));
        }
        prop_assert!(lowest >= replicas, "healthy dropped to {lowest} of {replicas}");
        let status = world.service("web").status.clone().unwrap();
        let revisions = world.active_revisions("web");
        let target = status.history.iter().find(|r| Some(r.revision) == status.target_revision).unwrap();
        if target.failure.is_none() {
            // Rolled out, or rolled back: one revision, `replicas` of it, all serving.
            prop_assert_eq!(status.revision, status.target_revision);
            prop_assert_eq!(revisions, vec![target.revision; replicas]);
            prop_assert_eq!(world.serving("web"), replicas);
            if target.revision == 1 {
                prop_assert_eq!(&world.service("web").spec.image, "web:1");
                prop_assert!(status.message.unwrap().contains("rolled back to revision 1"));
            }
        } else {
            // Halted without rollback: the old revision keeps serving.
            prop_assert!(!s.auto_rollback);
            prop_assert!(status.message.unwrap().contains("failed"));
        }
    }
}
