//! One alloc's container from start to removal: image, container, task, exit handling
//! (in-place restarts with backoff for services, terminal phases for tasks), task
//! timeouts, graceful stop, cleanup. Each supervised alloc is one tokio task that owns
//! its container; the agent loop only tells it to stop.

use crate::image::{self, Unpacked};
use crate::runtime::{Exit, RuntimeError, TaskState};
use crate::spec::{self, BindMount, ContainerShape};
use crate::status;
use crate::Ctx;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use mill_crds::template::{self, Part};
use mill_crds::{Alloc, AllocPhase, OwnerKind, Service};
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Container labels: the alloc's identity, read back at re-adoption.
pub const LABEL_UID: &str = "mill.dev/alloc-uid";
/// The alloc's name.
pub const LABEL_NAME: &str = "mill.dev/alloc-name";
/// The alloc's namespace.
pub const LABEL_NAMESPACE: &str = "mill.dev/alloc-namespace";
/// The host port it holds.
pub const LABEL_PORT: &str = "mill.dev/host-port";
/// How long the lease guarding a new container's snapshot lives if the agent dies mid-way.
const SETUP_LEASE_TTL: Duration = Duration::from_secs(300);

/// What a supervisor tells the agent loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The alloc's container has exited (or never ran) and its terminal phase is written:
    /// its host port is free for another alloc; the container is not removed yet.
    Exited(String),
    /// The container is removed and the supervisor has ended (after writing the alloc's
    /// terminal phase).
    Removed(String),
    /// A container found at start and not adopted is removed. Nothing wrote its alloc's
    /// phase: the agent's next round decides it like that of any alloc with no container
    /// (e.g. marks one that should stay stopped `Stopped`).
    OrphanRemoved(String),
}

/// How long the removal of an ended container waits for the node's container starts to
/// be over, at most (see [`StartGate`]).
const REMOVAL_DEFER_MAX: Duration = Duration::from_secs(10);
/// How long no container start must have begun before a deferred removal goes ahead.
const REMOVAL_QUIET: Duration = Duration::from_millis(200);

/// The container starts in flight on this node. Removing a container (runc delete, the
/// rootfs unmount, the snapshot) competes with a start on the same containerd and CPUs;
/// in a rolling update the old replica's removal overlapped its successor's start, so
/// ended containers are removed once no start is in flight and none began for
/// [`REMOVAL_QUIET`] (at most [`REMOVAL_DEFER_MAX`] later).
#[derive(Debug)]
pub struct StartGate {
    /// Starts in flight, and when the last one began.
    state: watch::Sender<(usize, Instant)>,
}

impl Default for StartGate {
    fn default() -> StartGate {
        StartGate {
            state: watch::Sender::new((0, Instant::now())),
        }
    }
}

/// One start in flight; it ends when dropped.
pub struct Starting<'a>(&'a StartGate);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.state.send_modify(|(n, _)| *n = n.saturating_sub(1));
    }
}

impl StartGate {
    /// Marks a start as in flight until the guard is dropped.
    pub fn begin(&self) -> Starting<'_> {
        self.state.send_modify(|(n, at)| {
            *n += 1;
            *at = Instant::now();
        });
        Starting(self)
    }

    /// Waits until no start is in flight and none began for `quiet`, or `max` passed.
    pub async fn quiet(&self, quiet: Duration, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let mut state = self.state.subscribe();
        loop {
            let (in_flight, last) = *state.borrow_and_update();
            let wait = if in_flight == 0 {
                match quiet.checked_sub(last.elapsed()) {
                    None => return,
                    Some(left) => left,
                }
            } else {
                max
            };
            let until = (tokio::time::Instant::now() + wait).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {
                    if until >= deadline {
                        return;
                    }
                }
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// How a supervisor begins.
#[derive(Debug, Clone)]
pub enum Start {
    /// Nothing exists yet: pull, create, start.
    Fresh,
    /// A container found at agent start, with its task's state.
    Adopted(Option<TaskState>),
}

/// How the alloc ended.
#[derive(Debug)]
enum Outcome {
    /// Stopped on request, or a task that exited 0.
    Stopped(Option<i32>),
    /// Failed with a reason.
    Failed(String, Option<i32>),
}

/// The container id of an alloc.
pub fn container_id(alloc: &Alloc) -> String {
    let uid = alloc.metadata.uid.clone().unwrap_or_default();
    let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    format!(
        "{}-{}-{short}",
        alloc.namespace().unwrap_or_else(|| "default".into()),
        alloc.name_any()
    )
}

/// Runs one alloc until it ends or is stopped, then cleans up and reports `uid` on `done`.
pub async fn supervise(
    ctx: Arc<Ctx>,
    alloc: Alloc,
    start: Start,
    stop: watch::Receiver<bool>,
    done: mpsc::UnboundedSender<Report>,
) {
    let uid = alloc.metadata.uid.clone().unwrap_or_default();
    let mut sup = Supervisor::new(ctx.clone(), alloc);
    let outcome = sup.lifecycle(start, stop).await;
    // The terminal phase is written as soon as the container has exited; removing it comes
    // after (the port stays claimed until `done`), so the rollout does not wait for it.
    let now = status::now();
    let patch = match outcome {
        // A failure verdict a controller wrote (e.g. a task timeout) stands.
        Outcome::Stopped(code) if sup.failed_by_controller().await => json!({
            "finishedAt": now, "exitCode": code,
        }),
        Outcome::Stopped(code) => json!({
            "phase": AllocPhase::Stopped, "finishedAt": now, "exitCode": code,
        }),
        Outcome::Failed(reason, code) => json!({
            "phase": AllocPhase::Failed, "reason": reason, "finishedAt": now, "exitCode": code,
        }),
    };
    sup.status(patch).await;
    sup.task_ended();
    // Nothing runs in the container any more: its port can go to another alloc. Its
    // removal waits until this node's container starts are over.
    let _ = done.send(Report::Exited(uid.clone()));
    ctx.starts.quiet(REMOVAL_QUIET, REMOVAL_DEFER_MAX).await;
    sup.cleanup().await;
    sup.step("cleaned up");
    let _ = done.send(Report::Removed(uid));
}

struct Supervisor {
    ctx: Arc<Ctx>,
    alloc: Alloc,
    id: String,
    namespace: String,
    restarts: i32,
    scratch: PathBuf,
    /// When the container first started: a task run's start, for its duration.
    started: Option<jiff::Timestamp>,
}

impl Supervisor {
    fn new(ctx: Arc<Ctx>, alloc: Alloc) -> Supervisor {
        let id = container_id(&alloc);
        let namespace = alloc.namespace().unwrap_or_else(|| "default".into());
        let restarts = alloc.status.as_ref().map(|s| s.restarts).unwrap_or(0);
        let scratch = ctx
            .config
            .data_dir
            .join("allocs")
            .join(alloc.metadata.uid.clone().unwrap_or_default());
        let started = alloc.status.as_ref().and_then(|s| s.started_at.as_ref());
        let started = started.map(|t| t.0);
        Supervisor {
            ctx,
            alloc,
            id,
            namespace,
            restarts,
            scratch,
            started,
        }
    }

    fn is_task(&self) -> bool {
        self.alloc.spec.owner.kind == OwnerKind::Task
    }

    fn host_port(&self) -> u16 {
        self.alloc.spec.host_port.unwrap_or_default()
    }

    /// Whether the alloc's current status (not this supervisor's copy) says failed.
    async fn failed_by_controller(&self) -> bool {
        let api: Api<Alloc> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        api.get_opt(&self.alloc.name_any())
            .await
            .ok()
            .flatten()
            .and_then(|a| a.status)
            .is_some_and(|s| s.phase == AllocPhase::Failed)
    }

    async fn status(&self, patch: serde_json::Value) {
        status::write_alloc(&self.ctx, &self.alloc, patch).await;
    }

    fn cgroups_path(&self) -> String {
        crate::usage::cgroups_path(&self.ctx.config.containerd_namespace, &self.id)
    }

    /// Reports a task run that started as ended, with its duration, for the node's metrics.
    fn task_ended(&self) {
        let (true, Some(started)) = (self.is_task(), self.started) else {
            return;
        };
        let took = jiff::Timestamp::now().duration_since(started);
        self.ctx.meter.task_ended(&crate::usage::TaskRun {
            namespace: self.namespace.clone(),
            task: self.alloc.spec.owner.name.clone(),
            took: Duration::try_from(took).unwrap_or_default(),
        });
    }

    async fn lifecycle(&mut self, start: Start, mut stop: watch::Receiver<bool>) -> Outcome {
        let first_started = self
            .alloc
            .status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .and_then(|t| jiff::Timestamp::from_second(t.0.as_second()).ok());
        let mut start = Some(start);
        let mut deadline: Option<Instant> = None;
        let mut backoff_step = 0usize;
        loop {
            let run_began = Instant::now();
            match start.take() {
                Some(Start::Adopted(state)) => {
                    self.ctx
                        .logs
                        .follow(&self.namespace, &self.alloc.name_any());
                    deadline = self.deadline(first_started);
                    match state {
                        Some(TaskState::Running { pid }) => {
                            tracing::info!("re-adopted {} (pid {pid})", self.id);
                        }
                        Some(TaskState::Exited(exit)) => {
                            match self
                                .exited(Some(exit), &mut backoff_step, run_began, &mut stop)
                                .await
                            {
                                Ok(()) => continue,
                                Err(outcome) => return outcome,
                            }
                        }
                        _ => {
                            if self.is_task() {
                                return Outcome::Failed("container lost".into(), None);
                            }
                            if let Err(outcome) = self.restart_task().await {
                                return outcome;
                            }
                        }
                    }
                }
                Some(Start::Fresh) => {
                    if let Err(outcome) = self.create_and_start(&mut stop).await {
                        return outcome;
                    }
                    deadline = self.deadline(None);
                }
                None => {
                    if let Err(outcome) = self.restart_task().await {
                        return outcome;
                    }
                }
            }
            let timeout = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            enum Event {
                Exited(Option<Exit>),
                Stop,
                Timeout,
            }
            let event = tokio::select! {
                exit = self.wait_exit() => Event::Exited(exit),
                _ = stop.wait_for(|s| *s) => Event::Stop,
                _ = timeout => Event::Timeout,
            };
            match event {
                Event::Exited(exit) => {
                    if let Err(outcome) = self
                        .exited(exit, &mut backoff_step, run_began, &mut stop)
                        .await
                    {
                        return outcome;
                    }
                }
                Event::Stop => return self.stop_gracefully().await,
                Event::Timeout => {
                    let limit = self.alloc.spec.timeout.unwrap_or_default();
                    self.kill_now().await;
                    return Outcome::Failed(format!("timeout after {limit}"), None);
                }
            }
        }
    }

    /// The task deadline, counted from its first start.
    fn deadline(&self, first_started: Option<jiff::Timestamp>) -> Option<Instant> {
        let timeout = self.alloc.spec.timeout.filter(|_| self.is_task())?.get();
        let elapsed = first_started
            .map(|t| {
                let since = jiff::Timestamp::now().duration_since(t);
                Duration::try_from(since).unwrap_or_default()
            })
            .unwrap_or_default();
        Some(Instant::now() + timeout.saturating_sub(elapsed))
    }

    /// Handles an exit: Ok to run again (services), Err with the final outcome.
    async fn exited(
        &mut self,
        exit: Option<Exit>,
        backoff_step: &mut usize,
        run_began: Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Outcome> {
        let oom = crate::cgroup::oom_killed(&self.cgroups_path());
        let code = exit.map(|e| e.code as i32);
        let reason = match (oom, code) {
            (true, _) => "OOM killed".to_string(),
            (false, Some(c)) => format!("exited with code {c}"),
            (false, None) => "container lost".to_string(),
        };
        if self.is_task() {
            return Err(match code {
                Some(0) if !oom => Outcome::Stopped(Some(0)),
                _ => Outcome::Failed(reason, code),
            });
        }
        let timings = &self.ctx.config.timings;
        // A run that outlasted the longest backoff was healthy: start the ladder over.
        if run_began.elapsed() > timings.backoff(usize::MAX) {
            *backoff_step = 0;
        }
        let wait = timings.backoff(*backoff_step);
        *backoff_step += 1;
        self.status(json!({
            "phase": AllocPhase::Starting,
            "reason": format!("{reason}; restarting in {}", mill_crds::Duration(wait)),
            "exitCode": code,
        }))
        .await;
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = stop.wait_for(|s| *s) => Err(Outcome::Stopped(code)),
        }
    }

    /// Image, spec, container, task: Err with the failure if any step fails.
    async fn create_and_start(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), Outcome> {
        let ctx = self.ctx.clone();
        let _starting = ctx.starts.begin();
        let rt = &self.ctx.runtime;
        let image_name = image::canonical(&self.alloc.spec.template.image)
            .map_err(|e| Outcome::Failed(e.to_string(), None))?;
        let unpacked = match image::resolve_cached(rt, &self.ctx.images, &image_name).await {
            Ok(Some(u)) => u,
            Ok(None) => {
                self.status(json!({"phase": AllocPhase::Pulling})).await;
                let auth = self.registry_auth(&image_name).await;
                let pull = self.ctx.puller.pull(&image_name, auth);
                tokio::select! {
                    pulled = pull => pulled.map_err(|e| Outcome::Failed(format!("image pull failed: {e}"), None))?,
                    _ = stop.wait_for(|s| *s) => return Err(Outcome::Stopped(None)),
                }
            }
            Err(e) => return Err(Outcome::Failed(format!("image unusable: {e}"), None)),
        };
        self.step("image resolved");
        // `starting` is written while the container is made; the next status write
        // (running, or failed) waits for it, so the phases stay in order.
        let starting = self.status(json!({"phase": AllocPhase::Starting}));
        let (_, created) = tokio::join!(starting, self.prepare(&image_name, &unpacked));
        created?;
        self.step("container created");
        self.start_task().await
    }

    /// The runtime spec, root filesystem and container record of a fresh start.
    async fn prepare(&self, image_name: &str, unpacked: &Unpacked) -> Result<(), Outcome> {
        let rt = &self.ctx.runtime;
        let failed = |what: &str, e: RuntimeError| Outcome::Failed(format!("{what}: {e}"), None);
        // At once (independent steps): the spec; removing a leftover container of the same
        // alloc (a crash between create and record); and the lease that holds the new
        // snapshot until the container record references it (before that it is garbage
        // to containerd's collector).
        let (spec, (), lease) = tokio::join!(
            self.runtime_spec(unpacked),
            self.remove_container(),
            rt.lease_create(SETUP_LEASE_TTL)
        );
        let lease = lease.map_err(|e| failed("cannot take a containerd lease", e))?;
        let created = match spec {
            Ok(spec) => {
                self.create_container(&lease, image_name, &unpacked.chain_id, spec)
                    .await
            }
            Err(e) => Err(Outcome::Failed(e, None)),
        };
        // The container record holds the snapshot now; the lease can go in the background.
        let rt = rt.clone();
        tokio::spawn(async move { rt.lease_delete(&lease).await });
        created
    }

    /// The alloc's root filesystem snapshot and container record, made under `lease`.
    async fn create_container(
        &self,
        lease: &str,
        image_name: &str,
        chain_id: &str,
        spec: Vec<u8>,
    ) -> Result<(), Outcome> {
        let rt = &self.ctx.runtime;
        let failed = |what: &str, e: RuntimeError| Outcome::Failed(format!("{what}: {e}"), None);
        rt.snapshot_prepare(Some(lease), &self.id, chain_id)
            .await
            .map_err(|e| failed("cannot prepare the root filesystem", e))?;
        let labels = HashMap::from([
            (
                LABEL_UID.to_string(),
                self.alloc.metadata.uid.clone().unwrap_or_default(),
            ),
            (LABEL_NAME.to_string(), self.alloc.name_any()),
            (LABEL_NAMESPACE.to_string(), self.namespace.clone()),
            (LABEL_PORT.to_string(), self.host_port().to_string()),
        ]);
        rt.container_create(&self.id, image_name, spec, labels)
            .await
            .map_err(|e| failed("cannot create the container", e))
    }

    /// A new task in the existing container (in-place restart).
    async fn restart_task(&mut self) -> Result<(), Outcome> {
        if let Err(e) = self.ctx.runtime.task_delete(&self.id).await {
            tracing::warn!("cannot delete the old task of {}: {e}", self.id);
        }
        self.restarts += 1;
        self.start_task().await
    }

    async fn start_task(&mut self) -> Result<(), Outcome> {
        let rt = &self.ctx.runtime;
        let failed = |e: RuntimeError| Outcome::Failed(format!("cannot start: {e}"), None);
        let name = self.alloc.name_any();
        let log_dir =
            self.ctx.logs.prepare(&self.namespace, &name).map_err(|e| {
                Outcome::Failed(format!("cannot create the log directory: {e}"), None)
            })?;
        let log_uri = format!(
            "binary://{}?agent-log-driver={}",
            live_path(&self.ctx.config.log_driver).display(),
            log_dir.display()
        );
        let mounts = rt.snapshot_mounts(&self.id).await.map_err(failed)?;
        rt.task_create(&self.id, mounts, &log_uri)
            .await
            .map_err(failed)?;
        self.ctx.logs.follow(&self.namespace, &name);
        rt.task_start(&self.id).await.map_err(failed)?;
        self.started.get_or_insert_with(jiff::Timestamp::now);
        self.step("task started");
        let phase = if self.alloc.spec.template.health.is_some() {
            AllocPhase::Running
        } else {
            AllocPhase::Healthy
        };
        self.status(json!({
            "phase": phase,
            "reason": null,
            "address": format!("{}:{}", self.ctx.config.advertise, self.host_port()),
            "containerId": self.id,
            "startedAt": status::now(),
            "restarts": self.restarts,
        }))
        .await;
        Ok(())
    }

    /// Waits for the task to exit; `None` if it vanished (containerd lost it).
    async fn wait_exit(&self) -> Option<Exit> {
        let rt = &self.ctx.runtime;
        loop {
            match rt.task_wait(&self.id).await {
                Ok(exit) => return Some(exit),
                Err(e) => {
                    match rt.task_get(&self.id).await {
                        Ok(None) => return None,
                        Ok(Some(TaskState::Exited(exit))) => return Some(exit),
                        _ => {}
                    }
                    tracing::warn!("waiting for {}: {e}; retrying", self.id);
                    tokio::time::sleep(self.ctx.config.timings.containerd_retry).await;
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL after the stop grace; `stopping` is written while the
    /// container exits (the terminal phase comes after it).
    async fn stop_gracefully(&self) -> Outcome {
        sigterm(&self.ctx, &self.id).await;
        self.step("SIGTERM sent");
        let stopping = async {
            // A controller's failure verdict (a task timeout) is not overwritten by `stopping`.
            if !self.failed_by_controller().await {
                self.status(json!({"phase": AllocPhase::Stopping})).await;
            }
        };
        let grace = self.ctx.config.timings.stop_grace;
        let (_, exited) = tokio::join!(stopping, tokio::time::timeout(grace, self.wait_exit()));
        let exit = match exited {
            Ok(exit) => exit,
            Err(_) => {
                tracing::info!("{} ignored SIGTERM for {grace:?}; killing it", self.id);
                self.kill_now().await;
                None
            }
        };
        self.step("exited");
        Outcome::Stopped(exit.map(|e| e.code as i32))
    }

    /// One step of the lifecycle on the rollout's timeline.
    fn step(&self, what: &str) {
        tracing::debug!(target: status::TIMELINE, "agent {} {what}", self.alloc.name_any());
    }

    async fn kill_now(&self) {
        if let Err(e) = self.ctx.runtime.task_kill(&self.id, 9).await {
            tracing::warn!("cannot SIGKILL {}: {e}", self.id);
        }
        self.wait_exit().await;
    }

    async fn remove_container(&self) {
        remove(&self.ctx, &self.id).await;
    }

    /// Task, container, snapshot, scratch space; the log follower ends.
    async fn cleanup(&self) {
        self.remove_container().await;
        self.ctx
            .logs
            .unfollow(&self.namespace, &self.alloc.name_any());
        if self.scratch.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.scratch) {
                tracing::warn!("cannot remove {}: {e}", self.scratch.display());
            }
        }
    }

    async fn registry_auth(&self, image: &str) -> RegistryAuth {
        let host = image
            .split('/')
            .next()
            .unwrap_or_default()
            .replace(':', "_");
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let Ok(Some(secret)) = secrets.get_opt(crate::REGISTRY_AUTH_SECRET).await else {
            return RegistryAuth::Anonymous;
        };
        let entry = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&host))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        match entry.as_deref().and_then(|e| e.split_once(':')) {
            Some((user, password)) => RegistryAuth::Basic(user.into(), password.into()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Resolves `${secret(..)}` and `${service.X.address}` in env and command.
    async fn render(&self) -> Result<(Vec<(String, String)>, Option<Vec<String>>), String> {
        let template = &self.alloc.spec.template;
        let parse =
            |s: &str| template::parse(s).map_err(|e| format!("invalid reference in {s:?}: {e}"));
        let mut env_parts = Vec::new();
        for (k, v) in &template.env {
            env_parts.push((k.clone(), parse(v)?));
        }
        let mut command_parts = Vec::new();
        for arg in template.command.iter().flatten() {
            command_parts.push(parse(arg)?);
        }
        let mut secrets: BTreeMap<String, String> = BTreeMap::new();
        let mut services: BTreeMap<String, String> = BTreeMap::new();
        for part in env_parts
            .iter()
            .flat_map(|(_, p)| p.iter())
            .chain(command_parts.iter().flatten())
        {
            match part {
                Part::Secret(name) if !secrets.contains_key(name) => {
                    secrets.insert(name.clone(), self.secret(name).await?);
                }
                Part::ServiceAddress(name) if !services.contains_key(name) => {
                    services.insert(name.clone(), self.service_address(name).await?);
                }
                _ => {}
            }
        }
        let lookup = |map: &BTreeMap<String, String>, n: &str| -> Result<String, String> {
            map.get(n)
                .cloned()
                .ok_or_else(|| format!("unresolved reference {n}"))
        };
        let render = |parts: &[Part]| {
            template::render(parts, |n| lookup(&secrets, n), |n| lookup(&services, n))
        };
        let mut env = Vec::new();
        for (k, parts) in &env_parts {
            env.push((k.clone(), render(parts)?));
        }
        let command = match &template.command {
            Some(_) => Some(
                command_parts
                    .iter()
                    .map(|p| render(p))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        Ok((env, command))
    }

    async fn secret(&self, name: &str) -> Result<String, String> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read secret {name:?}: {e}"))?
            .ok_or_else(|| format!("secret {name:?} not found"))?;
        let data = secret.data.unwrap_or_default();
        let value = data
            .get("value")
            .or_else(|| (data.len() == 1).then(|| data.values().next()).flatten())
            .ok_or_else(|| format!("secret {name:?} has no \"value\" key"))?;
        String::from_utf8(value.0.clone()).map_err(|_| format!("secret {name:?} is not UTF-8"))
    }

    async fn service_address(&self, name: &str) -> Result<String, String> {
        let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let service = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read service {name:?}: {e}"))?
            .ok_or_else(|| {
                format!("service {name:?} not found (referenced by ${{service.{name}.address}})")
            })?;
        let host = if self.namespace == "default" {
            format!("{name}.mill")
        } else {
            format!("{name}.{}.mill", self.namespace)
        };
        Ok(format!("{host}:{}", service.spec.port))
    }

    /// The OCI runtime spec as JSON.
    async fn runtime_spec(&self, unpacked: &Unpacked) -> Result<Vec<u8>, String> {
        let (mut env, command) = self.render().await?;
        let template = &self.alloc.spec.template;
        let owner = &self.alloc.spec.owner;
        env.push(("PORT".into(), self.host_port().to_string()));
        env.push(("MILL_ALLOC_ID".into(), self.alloc.name_any()));
        let owner_var = match owner.kind {
            OwnerKind::Service => "MILL_SERVICE",
            OwnerKind::Task => "MILL_TASK",
        };
        env.push((owner_var.into(), owner.name.clone()));
        env.push(("MILL_NODE".into(), self.ctx.config.node_name.clone()));
        env.push(("MILL_NAMESPACE".into(), self.namespace.clone()));
        std::fs::create_dir_all(&self.scratch)
            .map_err(|e| format!("cannot create {}: {e}", self.scratch.display()))?;
        let resolv = self.scratch.join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {}\nsearch mill\n", self.ctx.config.nameserver),
        )
        .map_err(|e| format!("cannot write resolv.conf: {e}"))?;
        let mut mounts = vec![BindMount {
            source: resolv,
            destination: "/etc/resolv.conf".into(),
            read_only: true,
        }];
        for volume in &template.volumes {
            let source = if volume.ephemeral {
                self.scratch.join("scratch").join(&volume.name)
            } else {
                self.ctx
                    .config
                    .data_dir
                    .join("volumes")
                    .join(&self.namespace)
                    .join(&volume.name)
            };
            std::fs::create_dir_all(&source)
                .map_err(|e| format!("cannot create volume {}: {e}", source.display()))?;
            mounts.push(BindMount {
                source,
                destination: volume.path.clone(),
                read_only: false,
            });
        }
        let shape = ContainerShape {
            image: &unpacked.config,
            command,
            env,
            cpu: template.cpu,
            memory: template.memory.bytes(),
            hostname: self.alloc.name_any(),
            netns: self.ctx.config.netns_path.as_deref(),
            cgroups_path: self.cgroups_path(),
            mounts,
        };
        let spec = spec::build(&shape).map_err(|e| e.to_string())?;
        serde_json::to_vec(&spec).map_err(|e| format!("cannot encode the runtime spec: {e}"))
    }
}

/// SIGTERM to every process of container `id`: straight through its cgroup, else (no
/// cgroup to read, nothing listed) through containerd, which runs `runc kill --all`.
/// Whether the signal went out.
async fn sigterm(ctx: &Ctx, id: &str) -> bool {
    let cgroup = crate::usage::cgroups_path(&ctx.config.containerd_namespace, id);
    match crate::cgroup::signal_all(&cgroup, libc::SIGTERM) {
        Ok(_) => return true,
        Err(e) => tracing::debug!("cannot signal {id} through its cgroup ({e}); asking containerd"),
    }
    match ctx.runtime.task_kill(id, 15).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot SIGTERM {id}: {e}");
            false
        }
    }
}

/// Stops (SIGKILL) and removes a container with its task and snapshot.
pub async fn remove(ctx: &Ctx, id: &str) {
    let rt = &ctx.runtime;
    if let Ok(Some(TaskState::Running { .. })) = rt.task_get(id).await {
        if let Err(e) = rt.task_kill(id, 9).await {
            tracing::warn!("cannot kill {id}: {e}");
        }
        let _ = tokio::time::timeout(ctx.config.timings.stop_grace, rt.task_wait(id)).await;
    }
    if let Err(e) = rt.task_delete(id).await {
        tracing::warn!("cannot delete the task of {id}: {e}");
    }
    if let Err(e) = rt.container_delete(id).await {
        tracing::warn!("cannot delete container {id}: {e}");
    }
}

/// Stops an orphan gracefully (SIGTERM, grace, SIGKILL) and removes it.
pub async fn remove_orphan(
    ctx: Arc<Ctx>,
    id: String,
    uid: String,
    done: mpsc::UnboundedSender<Report>,
) {
    let rt = &ctx.runtime;
    if let Ok(Some(TaskState::Running { .. })) = rt.task_get(&id).await {
        if sigterm(&ctx, &id).await {
            let _ = tokio::time::timeout(ctx.config.timings.stop_grace, rt.task_wait(&id)).await;
        }
    }
    remove(&ctx, &id).await;
    tracing::info!("removed container {id} (its alloc is gone, stopped or elsewhere)");
    let _ = done.send(Report::OrphanRemoved(uid));
}

/// The path to exec for `exe`: once the running `mill` binary is replaced on disk (an
/// upgrade, a rebuild), Linux names the old one `PATH (deleted)`; the new binary at `PATH`
/// is the one to run as the log driver.
fn live_path(exe: &std::path::Path) -> std::path::PathBuf {
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(path) => std::path::PathBuf::from(path),
        None => exe.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_binary_is_run_from_its_path() {
        let exe = std::path::Path::new("/usr/bin/mill (deleted)");
        assert_eq!(live_path(exe), std::path::Path::new("/usr/bin/mill"));
        let exe = std::path::Path::new("/usr/bin/mill");
        assert_eq!(live_path(exe), exe);
    }
}
