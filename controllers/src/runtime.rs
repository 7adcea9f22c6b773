//! The I/O shell around the planners: reflectors, the plan–apply loop, health probes.
//!
//! [`run`] keeps one kube-runtime reflector per kind (Services, Allocs, Nodes, Volumes,
//! Deploys), and on every watch event, probe result and tick builds a [`View`] from their
//! stores, runs every planner on it and applies the [`Action`]s, one API write each: in
//! order, except those the plan marked [`Action::Independent`], which go at once alongside
//! (the store's proposer commits concurrent writes in one Raft entry). Before the next plan
//! it waits (at most a tick) until the reflectors show its own writes, so no plan is made
//! from a View older than the last one's effects. A 409 Conflict ends the ordered writes of
//! the batch: the rest of them was planned from the same stale View. The Deploy status
//! writes (the event logs) do not hold up the next plan at all ([`Logs`]).
//!
//! The health loop's probe states live here, in the one task that owns them.

use crate::action::Action;
use crate::barrier::{Barrier, Tables};
use crate::health::{self, Probe, ProbeResult, ProbeState};
use crate::knobs::Knobs;
use crate::metrics::Metrics;
use crate::view::{resource_version, ObjectKey, Routing, View};
use crate::{deploy, drain, gc, nodes, rollout, scheduler, tasks, vip, SERVICE_FINALIZER};
use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use mill_crds::{Alloc, Deploy, Node, Service, Volume};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

/// Why the controllers stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A reflector's watch ended for good.
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
    /// The probe HTTP client could not be built.
    #[error("cannot build the health probe client: {0}")]
    ProbeClient(#[from] reqwest::Error),
}

/// How the loop is paced (the daemon's knobs).
#[derive(Debug, Clone)]
pub struct Pacing {
    /// `MILL_WATCHDOG_TICK_MS` (1000): re-plan at least this often, so timeouts are
    /// noticed; also the longest the loop waits to see its own writes.
    pub tick: Duration,
}

/// Runs every controller against `client` until a watch ends for good. Abort the task to
/// stop them (the daemon does when this node stops being the leader): nothing is lost,
/// everything the loop knows is in the store except the probe states, which restart.
pub async fn run(client: Client, knobs: Knobs, pacing: Pacing) -> Result<(), RunError> {
    run_observed(client, knobs, pacing, Metrics::default()).await
}

/// [`run`], counting its plans and failed writes in `metrics` (the node's `/metrics`).
///
/// [`run`] and this credit every node's routing tables with everything
/// ([`Barrier::Assumed`]): for tests that play the agent. The daemon uses [`run_routed`].
pub async fn run_observed(
    client: Client,
    knobs: Knobs,
    pacing: Pacing,
    metrics: Metrics,
) -> Result<(), RunError> {
    run_routed(client, knobs, pacing, metrics, Barrier::Assumed).await
}

/// [`run_observed`] with the routing barrier asked of `barrier` (every live node's
/// routing tables, over the node RPC, for the daemon).
pub async fn run_routed(
    client: Client,
    knobs: Knobs,
    pacing: Pacing,
    metrics: Metrics,
    barrier: Barrier,
) -> Result<(), RunError> {
    let wake = Arc::new(Notify::new());
    let (services, services_watch) = reflect::<Service>(&client, &wake, "Service");
    let (allocs, allocs_watch) = reflect::<Alloc>(&client, &wake, "Alloc");
    let (nodes, nodes_watch) = reflect::<Node>(&client, &wake, "Node");
    let (volumes, volumes_watch) = reflect::<Volume>(&client, &wake, "Volume");
    let (deploys, deploys_watch) = reflect::<Deploy>(&client, &wake, "Deploy");
    let caches = Caches {
        services,
        allocs,
        nodes,
        volumes,
        deploys,
    };
    let mut loop_ = Loop {
        barrier: Tables::new(barrier, pacing.tick, wake.clone()),
        logs: Logs::new(client.clone(), metrics.clone(), wake.clone(), &pacing),
        writer: Writer::new(client, metrics.clone()),
        metrics,
        caches,
        knobs,
        pacing,
        wake,
        probes: BTreeMap::new(),
        heard: nodes::Heard::default(),
        probing: BTreeSet::new(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
    };
    tokio::select! {
        ended = services_watch => ended,
        ended = allocs_watch => ended,
        ended = nodes_watch => ended,
        ended = volumes_watch => ended,
        ended = deploys_watch => ended,
        () = loop_.run() => Ok(()),
    }
}

/// A reflector of every `K` and the future that drives it (waking the loop on each event).
fn reflect<K>(
    client: &Client,
    wake: &Arc<Notify>,
    kind: &'static str,
) -> (
    Store<K>,
    impl std::future::Future<Output = Result<(), RunError>>,
)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let wake = wake.clone();
    let driven = async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(err) = event {
                tracing::debug!("{kind} watch: {err}");
            }
            wake.notify_one();
        }
        Err(RunError::WatchEnded(kind))
    };
    (reader, driven)
}

struct Caches {
    services: Store<Service>,
    allocs: Store<Alloc>,
    nodes: Store<Node>,
    volumes: Store<Volume>,
    deploys: Store<Deploy>,
}

impl Caches {
    async fn ready(&self) {
        // `wait_until_ready` fails only if the writer is dropped, which ends `run` anyway.
        let _ = self.services.wait_until_ready().await;
        let _ = self.allocs.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.volumes.wait_until_ready().await;
        let _ = self.deploys.wait_until_ready().await;
    }

    fn view(&self) -> View {
        View {
            services: self.services.state(),
            allocs: self.allocs.state(),
            nodes: self.nodes.state(),
            volumes: self.volumes.state(),
            deploys: self.deploys.state(),
            routing: Routing::default(),
        }
    }

    /// Whether the reflectors show `write`.
    fn shows(&self, write: &Written) -> bool {
        let found = match write.kind {
            Kind::Service => rv_in(&self.services, &write.key),
            Kind::Alloc => rv_in(&self.allocs, &write.key),
            Kind::Node => rv_in(&self.nodes, &write.key),
            Kind::Deploy => rv_in(&self.deploys, &write.key),
        };
        match (write.rv, found) {
            (Some(want), Some(have)) => have >= want,
            // Gone since: a later write (a delete) covers this one.
            (Some(_), None) => !write.created,
            (None, found) => found.is_none(),
        }
    }
}

fn rv_in<K>(store: &Store<K>, key: &ObjectKey) -> Option<u64>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let mut reference = ObjectRef::new(&key.name);
    if !key.namespace.is_empty() {
        reference = reference.within(&key.namespace);
    }
    store.get(&reference).map(|o| resource_version(o.meta()))
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_default()
}

struct Loop {
    barrier: Tables,
    logs: Logs,
    writer: Writer,
    metrics: Metrics,
    caches: Caches,
    knobs: Knobs,
    pacing: Pacing,
    wake: Arc<Notify>,
    probes: BTreeMap<ObjectKey, ProbeState>,
    heard: nodes::Heard,
    probing: BTreeSet<ObjectKey>,
    http: reqwest::Client,
}

type ProbeDone = (ObjectKey, ProbeResult, Timestamp);

/// The tracing target of the rollout's timeline: one debug event per step (writes, probe
/// results, barrier progress), for `benches/rollout.rs` to collect with
/// `RUST_LOG=mill::timeline=debug`.
pub const TIMELINE: &str = "mill::timeline";

/// An action in a few words: its kind and object.
fn summary(action: &Action) -> String {
    match action {
        Action::CreateAlloc(new) => format!("create-alloc {}", new.key.name),
        Action::PlaceAlloc { alloc, .. } => format!("place {}", alloc.name),
        Action::SetDesiredState { alloc, state } => format!("desired-{state:?} {}", alloc.name),
        Action::SetDraining { alloc, draining } => format!("draining={draining} {}", alloc.name),
        Action::Evict { alloc } => format!("evict {}", alloc.name),
        Action::SetAllocPhase { alloc, phase, .. } => format!("phase-{phase:?} {}", alloc.name),
        Action::SetAllocConditions { alloc, conditions } => {
            let conditions: Vec<String> = conditions
                .iter()
                .map(|c| format!("{}={}", c.type_, c.status))
                .collect();
            format!("conditions[{}] {}", conditions.join(","), alloc.name)
        }
        Action::DeleteAlloc { alloc } => format!("delete-alloc {}", alloc.name),
        Action::WriteServiceStatus { service, .. } => format!("service-status {}", service.name),
        Action::SetServiceTemplate { service, .. } => format!("service-template {}", service.name),
        Action::AddServiceFinalizer { service } => format!("add-finalizer {}", service.name),
        Action::RemoveServiceFinalizer { service } => format!("remove-finalizer {}", service.name),
        Action::SetNodeState { node, .. } => format!("node-state {node}"),
        Action::WriteDeployStatus { deploy, .. } => format!("deploy-status {}", deploy.name),
        Action::DeleteDeploy { deploy } => format!("delete-deploy {}", deploy.name),
        Action::Independent(write) => summary(write),
    }
}

impl Loop {
    async fn run(&mut self) {
        self.caches.ready().await;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ProbeDone>();
        let mut previous: Vec<Action> = Vec::new();
        let mut last_applied = 0;
        loop {
            while let Ok((key, result, at)) = done_rx.try_recv() {
                self.record(key, &result, at);
            }
            let mut view = self.caches.view();
            view.routing = self.barrier.routing(&view);
            let applied = view.routing.applied_everywhere(&view.nodes);
            if applied != last_applied {
                tracing::debug!(target: TIMELINE, "barrier: every live node applied {applied}");
                last_applied = applied;
            }
            let now = Timestamp::now();
            let health = health::plan(&view, &self.probes, now, &self.knobs);
            self.probes.retain(|key, _| {
                view.allocs
                    .iter()
                    .any(|a| ObjectKey::of(&a.metadata) == *key)
            });
            for probe in health.probes {
                self.start_probe(probe, &done_tx);
            }
            // gc first: a 409 ends the batch, and under steady churn (task runs ending
            // while others start) some write of every batch conflicts; gc's deletions of
            // ended allocs hold whatever the View's age, so they must not starve behind them.
            let mut actions = gc::plan(&view, now, &self.knobs);
            actions.extend(health.actions);
            // The rollout's new allocs are created placed: the scheduler places them in this
            // plan as it would in the next, so no separate placement write follows.
            let mut rollout = rollout::plan(&view, now, &self.knobs);
            actions.extend(scheduler::plan_placing(
                &view,
                now,
                &self.knobs,
                &mut rollout,
            ));
            actions.extend(rollout);
            self.heard.observe(&view, now);
            actions.extend(nodes::plan(&view, &self.heard, now, &self.knobs));
            actions.extend(drain::plan(&view));
            actions.extend(tasks::plan(&view, now));
            actions.extend(deploy::plan(&view, now, &self.knobs));
            actions.extend(vip::plan(&view));
            self.metrics.reconciled(actions.len());
            self.logs.settle(&self.caches);
            let actions = self.logs.send(&view, actions);
            // The same plan twice in a row means the last writes did not change what the
            // planners see (e.g. a field the API drops): wait for news instead of spinning.
            let repeated = actions == previous;
            previous.clone_from(&actions);
            let written = self.writer.apply(&view, actions).await;
            // The barrier can ask the nodes for these writes now, while the reflectors
            // catch up with them, instead of at the next plan.
            if let Some(newest) = written
                .iter()
                .filter(|w| matches!(w.kind, Kind::Alloc))
                .filter_map(|w| w.rv)
                .max()
            {
                self.barrier.want_at_least(newest);
            }
            let began = std::time::Instant::now();
            self.see(&written).await;
            if !written.is_empty() {
                tracing::debug!(
                    target: TIMELINE,
                    "saw {} own writes after {:.1} ms",
                    written.len(),
                    began.elapsed().as_secs_f64() * 1000.0
                );
            }
            let wait = health
                .next_wake
                .map(|at| crate::view::elapsed(Timestamp::now(), at))
                .map_or(self.pacing.tick, |d| d.min(self.pacing.tick));
            if written.is_empty() || repeated {
                tokio::select! {
                    () = self.wake.notified() => {}
                    Some((key, result, at)) = done_rx.recv() => self.record(key, &result, at),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    fn record(&mut self, key: ObjectKey, result: &ProbeResult, at: Timestamp) {
        tracing::debug!(target: TIMELINE, "probe {} made at {at}: {result:?}", key.name);
        self.probing.remove(&key);
        let started_at = self
            .caches
            .allocs
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .and_then(|a| a.status.as_ref()?.started_at.as_ref().map(|t| t.0))
            .unwrap_or(at);
        let state = self
            .probes
            .get(&key)
            .filter(|s| s.started_at == started_at)
            .cloned()
            .unwrap_or_else(|| ProbeState::new(started_at));
        self.probes.insert(key, health::record(&state, result, at));
    }

    fn start_probe(&mut self, probe: Probe, done: &mpsc::UnboundedSender<ProbeDone>) {
        if !self.probing.insert(probe.alloc.clone()) {
            return;
        }
        let http = self.http.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let at = Timestamp::now();
            let result = probe_once(&http, &probe).await;
            // The loop may be gone (leadership lost): then nobody needs the result.
            let _ = done.send((probe.alloc, result, at));
        });
    }

    /// Waits until the reflectors show every write, or a tick passed.
    async fn see(&self, written: &[Written]) {
        let deadline = tokio::time::Instant::now() + self.pacing.tick;
        loop {
            // Register before checking, so an event between the check and the wait wakes us.
            let notified = self.wake.notified();
            if written.iter().all(|w| self.caches.shows(w)) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::debug!("controllers: own writes not seen within a tick; re-planning");
                return;
            }
        }
    }
}

/// One HTTP GET of a health check.
async fn probe_once(http: &reqwest::Client, probe: &Probe) -> ProbeResult {
    let url = format!("http://{}{}", probe.address, probe.path);
    match http.get(&url).timeout(probe.timeout).send().await {
        Ok(answer) if answer.status().is_success() || answer.status().is_redirection() => {
            ProbeResult::Passed
        }
        Ok(answer) => ProbeResult::Failed(format!("HTTP {}", answer.status().as_u16())),
        Err(err) if err.is_timeout() => {
            ProbeResult::Failed(format!("timed out after {:?}", probe.timeout))
        }
        Err(err) if err.is_connect() => ProbeResult::Failed("connection refused".to_string()),
        Err(err) => ProbeResult::Failed(err.to_string()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Service,
    Alloc,
    Node,
    Deploy,
}

/// A write the loop made and must see before planning again. `rv: None` = deleted.
#[derive(Debug)]
struct Written {
    kind: Kind,
    key: ObjectKey,
    rv: Option<u64>,
    created: bool,
}

/// Why a write did not come to an [`Outcome`].
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}; the next plan decides again")]
    TimedOut(Duration),
}

/// `write`, given up after [`WRITE_TIMEOUT`].
async fn bounded(
    write: impl std::future::Future<Output = Result<Outcome, kube::Error>>,
) -> Result<Outcome, WriteError> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(outcome) => Ok(outcome?),
        Err(_) => Err(WriteError::TimedOut(WRITE_TIMEOUT)),
    }
}

/// Turns Actions into API writes.
struct Writer {
    client: Client,
    metrics: Metrics,
}

/// What applying one action came to.
enum Outcome {
    Wrote(Written),
    /// Nothing to wait for (already done, or the object is gone).
    Nothing,
    /// 409: the View is stale; stop this batch.
    Conflict,
}

impl Writer {
    fn new(client: Client, metrics: Metrics) -> Writer {
        Writer { client, metrics }
    }

    /// Applies `actions`; returns the writes made. The writes the plan marked
    /// [`Action::Independent`] go at once, concurrently with the rest, so the store commits
    /// them in the same Raft entries instead of after; the rest go in order.
    async fn apply(&self, view: &View, actions: Vec<Action>) -> Vec<Written> {
        let (independent, ordered): (Vec<Action>, Vec<Action>) =
            actions.into_iter().partition(Action::is_independent);
        let independent = futures::future::join_all(independent.iter().map(|action| async move {
            let action = action.write();
            let began = std::time::Instant::now();
            let outcome = bounded(self.apply_one(view, action)).await;
            tracing::debug!(
                target: TIMELINE,
                "write {} took {:.1} ms",
                summary(action),
                began.elapsed().as_secs_f64() * 1000.0
            );
            match outcome {
                Ok(Outcome::Wrote(w)) => Some(w),
                Ok(Outcome::Nothing | Outcome::Conflict) => None,
                Err(err) => {
                    self.metrics.write_failed();
                    tracing::warn!("controllers: {action:?} failed: {err}");
                    None
                }
            }
        }));
        let (mut written, independent) =
            futures::join!(self.apply_in_order(view, ordered), independent);
        written.extend(independent.into_iter().flatten());
        written
    }

    /// Applies `actions` in order; a 409 ends the batch. A phase change followed by a
    /// conditions change of the same alloc (the health planner's transitions) is one
    /// write: one Raft commit instead of two, with the conditions' precondition.
    async fn apply_in_order(&self, view: &View, actions: Vec<Action>) -> Vec<Written> {
        let mut written = Vec::new();
        let mut actions = actions.into_iter().peekable();
        while let Some(action) = actions.next() {
            let began = std::time::Instant::now();
            let merged = match (&action, actions.peek()) {
                (
                    Action::SetAllocPhase {
                        alloc,
                        phase,
                        reason,
                    },
                    Some(Action::SetAllocConditions {
                        alloc: same,
                        conditions,
                    }),
                ) if alloc == same => Some(json!({
                    "phase": phase, "reason": reason, "conditions": conditions,
                })),
                _ => None,
            };
            let (outcome, what) = match merged {
                Some(status) => {
                    let next = actions.next();
                    let what = format!(
                        "{} + {}",
                        summary(&action),
                        next.as_ref().map(summary).unwrap_or_default()
                    );
                    let write = self.write_alloc_status(view, &action, status);
                    (bounded(write).await, what)
                }
                None => (
                    bounded(self.apply_one(view, &action)).await,
                    summary(&action),
                ),
            };
            tracing::debug!(
                target: TIMELINE,
                "write {what} took {:.1} ms",
                began.elapsed().as_secs_f64() * 1000.0
            );
            match outcome {
                Ok(Outcome::Wrote(w)) => written.push(w),
                Ok(Outcome::Nothing) => {}
                Ok(Outcome::Conflict) => break,
                Err(err) => {
                    self.metrics.write_failed();
                    tracing::warn!("controllers: {action:?} failed: {err}");
                }
            }
        }
        written
    }

    fn api<K>(&self, key: &ObjectKey) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &key.namespace)
    }

    async fn apply_one(&self, view: &View, action: &Action) -> Result<Outcome, kube::Error> {
        let pp = PatchParams::default();
        let action = action.write();
        let outcome = match action {
            Action::CreateAlloc(new) => {
                let api: Api<Alloc> = self.api(&new.key);
                let created = api.create(&PostParams::default(), &new.to_alloc()).await;
                let created = match created {
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        return Ok(Outcome::Nothing)
                    }
                    other => other?,
                };
                wrote(Kind::Alloc, &new.key, created.meta(), true)
            }
            Action::PlaceAlloc {
                alloc,
                node,
                host_port,
            } => {
                let patch = json!({"spec": {"nodeName": node, "hostPort": host_port}});
                self.patch_alloc(alloc, &patch, false).await?
            }
            Action::SetDesiredState { alloc, state } => {
                let patch = json!({"spec": {"desiredState": state}});
                self.patch_alloc(alloc, &patch, false).await?
            }
            Action::SetDraining { alloc, draining } => {
                let patch = json!({"spec": {"draining": draining}});
                self.patch_alloc(alloc, &patch, false).await?
            }
            Action::Evict { alloc } => {
                let patch = json!({"spec": {"evict": true}});
                self.patch_alloc(alloc, &patch, false).await?
            }
            Action::SetAllocPhase {
                alloc,
                phase,
                reason,
            } => {
                let patch = json!({"status": {"phase": phase, "reason": reason}});
                self.patch_alloc(alloc, &patch, true).await?
            }
            Action::SetAllocConditions { alloc, conditions } => {
                let Some(observed) = find(&view.allocs, alloc) else {
                    return Ok(Outcome::Nothing);
                };
                let patch = json!({
                    "metadata": {"resourceVersion": observed.metadata.resource_version},
                    "status": {"conditions": conditions},
                });
                self.patch_alloc(alloc, &patch, true).await?
            }
            Action::DeleteAlloc { alloc } => {
                let api: Api<Alloc> = self.api(alloc);
                gone(api.delete(&alloc.name, &DeleteParams::default()).await)?;
                Outcome::Wrote(Written {
                    kind: Kind::Alloc,
                    key: alloc.clone(),
                    rv: None,
                    created: false,
                })
            }
            Action::WriteServiceStatus { service, status } => {
                let Some(observed) = find(&view.services, service) else {
                    return Ok(Outcome::Nothing);
                };
                let mut object = (**observed).clone();
                object.status = Some((**status).clone());
                let api: Api<Service> = self.api(service);
                let written = api
                    .replace_status(&service.name, &PostParams::default(), &object)
                    .await;
                conflict_or(written, |o| wrote(Kind::Service, service, o.meta(), false))?
            }
            Action::SetServiceTemplate { service, template } => {
                let spec = serde_json::to_value(template).map_err(kube::Error::SerdeError)?;
                let api: Api<Service> = self.api(service);
                let written = api
                    .patch(&service.name, &pp, &Patch::Merge(&json!({"spec": spec})))
                    .await;
                conflict_or(written, |o| wrote(Kind::Service, service, o.meta(), false))?
            }
            Action::AddServiceFinalizer { service }
            | Action::RemoveServiceFinalizer { service } => {
                let Some(observed) = find(&view.services, service) else {
                    return Ok(Outcome::Nothing);
                };
                let mut finalizers: Vec<String> = observed.finalizers().to_vec();
                finalizers.retain(|f| f != SERVICE_FINALIZER);
                if matches!(action, Action::AddServiceFinalizer { .. }) {
                    finalizers.push(SERVICE_FINALIZER.to_string());
                }
                let patch = json!({"metadata": {
                    "resourceVersion": observed.metadata.resource_version,
                    "finalizers": finalizers,
                }});
                let api: Api<Service> = self.api(service);
                let written = api.patch(&service.name, &pp, &Patch::Merge(&patch)).await;
                conflict_or(written, |o| wrote(Kind::Service, service, o.meta(), false))?
            }
            Action::SetNodeState {
                node,
                state,
                drained,
            } => {
                let api: Api<Node> = Api::all(self.client.clone());
                let patch = json!({"status": {"state": state, "drained": drained}});
                let written = api.patch_status(node, &pp, &Patch::Merge(&patch)).await;
                let key = ObjectKey {
                    namespace: String::new(),
                    name: node.clone(),
                };
                conflict_or(written, |o| wrote(Kind::Node, &key, o.meta(), false))?
            }
            Action::WriteDeployStatus { deploy, status } => {
                let Some(observed) = find(&view.deploys, deploy) else {
                    return Ok(Outcome::Nothing);
                };
                let mut object = (**observed).clone();
                object.status = Some((**status).clone());
                let api: Api<Deploy> = self.api(deploy);
                let written = api
                    .replace_status(&deploy.name, &PostParams::default(), &object)
                    .await;
                conflict_or(written, |o| wrote(Kind::Deploy, deploy, o.meta(), false))?
            }
            Action::DeleteDeploy { deploy } => {
                let api: Api<Deploy> = self.api(deploy);
                gone(api.delete(&deploy.name, &DeleteParams::default()).await)?;
                Outcome::Wrote(Written {
                    kind: Kind::Deploy,
                    key: deploy.clone(),
                    rv: None,
                    created: false,
                })
            }
            // `write()` above unwrapped it.
            Action::Independent(_) => Outcome::Nothing,
        };
        Ok(outcome)
    }

    /// Merge-patches `status` into the status of `action`'s alloc, with the observed
    /// resourceVersion as precondition.
    async fn write_alloc_status(
        &self,
        view: &View,
        action: &Action,
        status: serde_json::Value,
    ) -> Result<Outcome, kube::Error> {
        let Action::SetAllocPhase { alloc, .. } = action else {
            return Ok(Outcome::Nothing);
        };
        let Some(observed) = find(&view.allocs, alloc) else {
            return Ok(Outcome::Nothing);
        };
        let patch = json!({
            "metadata": {"resourceVersion": observed.metadata.resource_version},
            "status": status,
        });
        self.patch_alloc(alloc, &patch, true).await
    }

    async fn patch_alloc(
        &self,
        alloc: &ObjectKey,
        patch: &serde_json::Value,
        status: bool,
    ) -> Result<Outcome, kube::Error> {
        let api: Api<Alloc> = self.api(alloc);
        let pp = PatchParams::default();
        let written = if status {
            api.patch_status(&alloc.name, &pp, &Patch::Merge(patch))
                .await
        } else {
            api.patch(&alloc.name, &pp, &Patch::Merge(patch)).await
        };
        conflict_or(written, |o| wrote(Kind::Alloc, alloc, o.meta(), false))
    }
}

/// The longest the loop lets one controller write take. The API answers every write
/// within the store's forward deadline (a few election timeouts), so this is the
/// backstop should it not: a write past it is given up (it may still land; the next
/// level-triggered plan decides again from what the View shows).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many ticks a Deploy's write, answered but not yet in the reflector, may hold back
/// that Deploy's later writes before the hold is dropped with a warning.
const SEEN_WITHIN_TICKS: u32 = 10;

/// The Deploy status writes (the event logs), sent without holding up the loop. Each is
/// derived from the View alone, and nothing but the deploy planner reads a Deploy's
/// status, so no plan has to wait for one: the loop sends them off and plans on. While a
/// Deploy's write is in flight, or written but not yet in the reflector, that Deploy's
/// writes in later plans are held back (one from the older View would only conflict);
/// the first plan whose View has it writes whatever the log gained meanwhile. Every hold
/// ends within a bounded time ([`Holds`]): a write that fails, times out or is never seen
/// lets the next plan write that Deploy's log again.
struct Logs {
    client: Client,
    metrics: Metrics,
    wake: Arc<Notify>,
    holds: Holds,
    done_tx: mpsc::UnboundedSender<Answer>,
    done_rx: mpsc::UnboundedReceiver<Answer>,
    /// The writes in flight; dropped with the loop (leadership lost), which aborts them.
    tasks: JoinSet<()>,
}

/// A Deploy status write's answer: which write ([`Holds::hold`]'s number) and what the
/// reflector must show before that Deploy is written again (`None`: nothing to wait for).
type Answer = (ObjectKey, u64, Option<Written>);

impl Logs {
    fn new(client: Client, metrics: Metrics, wake: Arc<Notify>, pacing: &Pacing) -> Logs {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Logs {
            client,
            metrics,
            wake,
            holds: Holds::new(WRITE_TIMEOUT + pacing.tick, pacing.tick * SEEN_WITHIN_TICKS),
            done_tx,
            done_rx,
            tasks: JoinSet::new(),
        }
    }

    /// Takes in the writes that ended and forgets those the reflectors show, and those
    /// held longer than they may be.
    fn settle(&mut self, caches: &Caches) {
        while let Some(ended) = self.tasks.try_join_next() {
            if let Err(err) = ended {
                tracing::warn!("controllers: a deploy status write task ended early: {err}");
            }
        }
        while let Ok((key, write, seen)) = self.done_rx.try_recv() {
            self.holds.answered(&key, write, seen, Instant::now());
        }
        for (key, expired) in self.holds.settle(Instant::now(), |w| caches.shows(w)) {
            self.metrics.write_failed();
            match expired {
                Expired::InFlight(after) => tracing::warn!(
                    "controllers: the status write of deploy {} has no answer after {after:?}; \
                     writing its log again from the current View",
                    key.name
                ),
                Expired::NotSeen(after) => tracing::warn!(
                    "controllers: the status write of deploy {} is not in the Deploy watch \
                     after {after:?}; writing its log again from the current View",
                    key.name
                ),
            }
        }
    }

    /// Sends the plan's Deploy status writes (but those held back); the rest of the plan.
    fn send(&mut self, view: &View, actions: Vec<Action>) -> Vec<Action> {
        let mut rest = Vec::with_capacity(actions.len());
        for action in actions {
            let Action::WriteDeployStatus { deploy, status } = action.write() else {
                rest.push(action);
                continue;
            };
            if self.holds.is_held(deploy) {
                continue;
            }
            let Some(observed) = find(&view.deploys, deploy) else {
                continue;
            };
            let mut object = (**observed).clone();
            object.status = Some((**status).clone());
            let key = deploy.clone();
            let number = self.holds.hold(&key, Instant::now());
            let api: Api<Deploy> = Api::namespaced(self.client.clone(), &key.namespace);
            let (metrics, wake, done) = (
                self.metrics.clone(),
                self.wake.clone(),
                self.done_tx.clone(),
            );
            let observed_rv = resource_version(observed.meta());
            self.tasks.spawn(async move {
                let began = std::time::Instant::now();
                let written = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    api.replace_status(&key.name, &PostParams::default(), &object),
                )
                .await;
                tracing::debug!(
                    target: TIMELINE,
                    "write deploy-status {} took {:.1} ms",
                    key.name,
                    began.elapsed().as_secs_f64() * 1000.0
                );
                let seen = match written {
                    Ok(Ok(o)) => match wrote(Kind::Deploy, &key, o.meta(), false) {
                        Outcome::Wrote(w) => Some(w),
                        _ => None,
                    },
                    // Our View was stale: wait for a newer one before writing again.
                    Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
                        (observed_rv != u64::MAX).then(|| Written {
                            kind: Kind::Deploy,
                            key: key.clone(),
                            rv: Some(observed_rv + 1),
                            created: false,
                        })
                    }
                    Ok(Err(kube::Error::Api(status))) if status.code == 404 => None,
                    Ok(Err(err)) => {
                        metrics.write_failed();
                        tracing::warn!(
                            "controllers: the status of deploy {} failed: {err}",
                            key.name
                        );
                        None
                    }
                    Err(_) => {
                        metrics.write_failed();
                        tracing::warn!(
                            "controllers: the status of deploy {} got no answer within \
                             {WRITE_TIMEOUT:?}; the next plan writes it again",
                            key.name
                        );
                        None
                    }
                };
                // The loop may be gone (leadership lost): then nobody needs the answer.
                let _ = done.send((key, number, seen));
                wake.notify_one();
            });
        }
        rest
    }
}

/// Which Deploys' log writes are held back, and until when: the pure part of [`Logs`].
///
/// A hold starts when a write is sent ([`Holds::hold`]) and ends when the write fails or
/// was a no-op, when the reflector shows what it wrote, or when it lasted longer than it
/// may: `in_flight` without an answer, `seen` after the answer without the reflector
/// showing it. An answer to a write whose hold ended already is ignored, so a late one
/// cannot hold back a newer write of the same Deploy.
#[derive(Debug)]
struct Holds {
    held: BTreeMap<ObjectKey, Hold>,
    sent: u64,
    in_flight: Duration,
    seen: Duration,
}

#[derive(Debug)]
struct Hold {
    /// Which write ([`Holds::hold`]'s number).
    write: u64,
    /// When it was sent, or answered.
    since: Instant,
    /// `None` while in flight, then the write the reflector must show.
    seen: Option<Written>,
}

/// Why a hold ended without the write being seen, and after how long.
#[derive(Debug, PartialEq, Eq)]
enum Expired {
    InFlight(Duration),
    NotSeen(Duration),
}

impl Holds {
    fn new(in_flight: Duration, seen: Duration) -> Holds {
        Holds {
            held: BTreeMap::new(),
            sent: 0,
            in_flight,
            seen,
        }
    }

    /// A write of `key` goes out at `now`: holds the Deploy's later writes back; the
    /// write's number for [`Holds::answered`].
    fn hold(&mut self, key: &ObjectKey, now: Instant) -> u64 {
        self.sent += 1;
        self.held.insert(
            key.clone(),
            Hold {
                write: self.sent,
                since: now,
                seen: None,
            },
        );
        self.sent
    }

    /// Write `write` of `key` was answered at `now`: wait until the reflector shows
    /// `seen`, or (`None`) hold nothing any more.
    fn answered(&mut self, key: &ObjectKey, write: u64, seen: Option<Written>, now: Instant) {
        let Some(hold) = self.held.get_mut(key).filter(|h| h.write == write) else {
            return;
        };
        match seen {
            Some(seen) => {
                hold.since = now;
                hold.seen = Some(seen);
            }
            None => {
                self.held.remove(key);
            }
        }
    }

    /// Ends the holds whose writes `shows`, and those held too long (returned).
    fn settle(
        &mut self,
        now: Instant,
        shows: impl Fn(&Written) -> bool,
    ) -> Vec<(ObjectKey, Expired)> {
        let mut expired = Vec::new();
        self.held.retain(|key, hold| {
            let held = now.saturating_duration_since(hold.since);
            match &hold.seen {
                Some(written) if shows(written) => false,
                Some(_) if held > self.seen => {
                    expired.push((key.clone(), Expired::NotSeen(held)));
                    false
                }
                None if held > self.in_flight => {
                    expired.push((key.clone(), Expired::InFlight(held)));
                    false
                }
                _ => true,
            }
        });
        expired
    }

    fn is_held(&self, key: &ObjectKey) -> bool {
        self.held.contains_key(key)
    }
}

fn find<'a, K: Resource>(objects: &'a [Arc<K>], key: &ObjectKey) -> Option<&'a Arc<K>> {
    objects.iter().find(|o| ObjectKey::of(o.meta()) == *key)
}

fn wrote(
    kind: Kind,
    key: &ObjectKey,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    created: bool,
) -> Outcome {
    Outcome::Wrote(Written {
        kind,
        key: ObjectKey {
            namespace: namespace_of(meta),
            name: key.name.clone(),
        },
        rv: meta
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok()),
        created,
    })
}

/// 409 → [`Outcome::Conflict`], 404 → nothing to do, else `ok` of the written object.
fn conflict_or<K>(
    written: Result<K, kube::Error>,
    ok: impl FnOnce(&K) -> Outcome,
) -> Result<Outcome, kube::Error> {
    match written {
        Ok(object) => Ok(ok(&object)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Conflict),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Outcome::Nothing),
        Err(err) => Err(err),
    }
}

fn gone<T>(deleted: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match deleted {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "default".to_string(),
            name: name.to_string(),
        }
    }

    fn written(key: &ObjectKey, rv: u64) -> Written {
        Written {
            kind: Kind::Deploy,
            key: key.clone(),
            rv: Some(rv),
            created: false,
        }
    }

    const IN_FLIGHT: Duration = Duration::from_secs(30);
    const SEEN: Duration = Duration::from_secs(2);

    #[test]
    fn a_deploy_is_held_until_the_reflector_shows_its_write() {
        let (mut holds, t0, d) = (Holds::new(IN_FLIGHT, SEEN), Instant::now(), deploy("d1"));
        let write = holds.hold(&d, t0);
        assert!(holds.is_held(&d));
        assert!(holds.settle(t0, |_| true).is_empty());
        assert!(holds.is_held(&d), "in flight: nothing to see yet");
        holds.answered(&d, write, Some(written(&d, 7000)), t0);
        let reflector = 6000;
        let shows = |w: &Written| w.rv.is_some_and(|rv| reflector >= rv);
        assert!(holds
            .settle(t0 + Duration::from_millis(10), shows)
            .is_empty());
        assert!(holds.is_held(&d));
        let reflector = 7000;
        let shows = |w: &Written| w.rv.is_some_and(|rv| reflector >= rv);
        assert!(holds
            .settle(t0 + Duration::from_millis(20), shows)
            .is_empty());
        assert!(!holds.is_held(&d));
    }

    #[test]
    fn a_failed_or_empty_write_holds_nothing() {
        let (mut holds, t0) = (Holds::new(IN_FLIGHT, SEEN), Instant::now());
        let (a, b) = (deploy("a"), deploy("b"));
        let wa = holds.hold(&a, t0);
        let wb = holds.hold(&b, t0);
        holds.answered(&a, wa, None, t0);
        assert!(!holds.is_held(&a));
        assert!(holds.is_held(&b), "each Deploy is held on its own");
        holds.answered(&b, wb, None, t0);
        assert!(!holds.is_held(&b));
    }

    #[test]
    fn a_write_without_an_answer_holds_its_deploy_no_longer_than_in_flight() {
        let (mut holds, t0, d) = (Holds::new(IN_FLIGHT, SEEN), Instant::now(), deploy("d1"));
        holds.hold(&d, t0);
        assert!(holds.settle(t0 + IN_FLIGHT, |_| false).is_empty());
        assert!(holds.is_held(&d));
        let later = t0 + IN_FLIGHT + Duration::from_millis(1);
        assert_eq!(
            holds.settle(later, |_| false),
            vec![(
                d.clone(),
                Expired::InFlight(IN_FLIGHT + Duration::from_millis(1))
            )]
        );
        assert!(!holds.is_held(&d), "the next plan writes the log again");
    }

    #[test]
    fn a_write_the_reflector_never_shows_holds_its_deploy_no_longer_than_seen() {
        let (mut holds, t0, d) = (Holds::new(IN_FLIGHT, SEEN), Instant::now(), deploy("d1"));
        let write = holds.hold(&d, t0);
        // Answered late: the wait for the reflector counts from the answer.
        let answered = t0 + Duration::from_secs(20);
        holds.answered(&d, write, Some(written(&d, 9000)), answered);
        assert!(holds.settle(answered + SEEN, |_| false).is_empty());
        let later = answered + SEEN + Duration::from_millis(1);
        assert_eq!(
            holds.settle(later, |_| false),
            vec![(d.clone(), Expired::NotSeen(SEEN + Duration::from_millis(1)))]
        );
        assert!(!holds.is_held(&d));
    }

    #[test]
    fn a_late_answer_of_a_write_given_up_on_does_not_hold_the_next_one() {
        let (mut holds, t0, d) = (Holds::new(IN_FLIGHT, SEEN), Instant::now(), deploy("d1"));
        let first = holds.hold(&d, t0);
        let gave_up = t0 + IN_FLIGHT * 2;
        assert_eq!(holds.settle(gave_up, |_| false).len(), 1);
        let second = holds.hold(&d, gave_up);
        assert_ne!(first, second);
        // The first write's answer arrives after all: it says nothing about the second.
        holds.answered(&d, first, None, gave_up);
        assert!(holds.is_held(&d), "the second write is still in flight");
        holds.answered(&d, first, Some(written(&d, 1)), gave_up);
        holds.answered(&d, second, Some(written(&d, 5000)), gave_up);
        let shows = |w: &Written| w.rv == Some(5000);
        assert!(holds.settle(gave_up, shows).is_empty());
        assert!(
            !holds.is_held(&d),
            "released by the second write's own answer"
        );
    }
}
