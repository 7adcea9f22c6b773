//! mill's node agent: runs the Allocs placed on this node on containerd.
//!
//! It watches Allocs with `spec.nodeName=<this node>` through a `kube::Client` (it knows
//! nothing of mill's API server) and converges, level-triggered: [`reconcile::plan`]
//! decides, one [`supervisor`] task per alloc acts (pull, create, start, restart with
//! backoff, stop, clean up) and writes the alloc's status. At start it re-adopts the
//! containers it finds in its containerd namespace. It also serves its node's logs and
//! image imports ([`endpoints`]), renews the Node's heartbeat ([`heartbeat`]) and samples its
//! containers' usage and task runs' durations for the node's metrics ([`usage`]).

pub mod cgroup;
pub mod config;
pub mod endpoints;
pub mod heartbeat;
pub mod image;
pub mod import;
pub mod logdriver;
pub mod logs;
pub mod ports;
pub mod pull;
pub mod reconcile;
pub mod runtime;
pub mod spec;
mod status;
pub mod supervisor;
pub mod usage;

pub use config::{AgentConfig, Timings};
pub use ports::PortRange;

use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use mill_crds::{Alloc, AllocPhase};
use reconcile::{Action, Found, Placed, Supervised};
use runtime::Containerd;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use supervisor::{Report, Start, LABEL_PORT, LABEL_UID};
use tokio::sync::{mpsc, watch, Notify};

/// The Secret (per namespace) holding registry credentials: one key per registry host
/// with `:` written as `_` (`registry.example.com`, `127.0.0.1_5000`), value `user:password`.
pub const REGISTRY_AUTH_SECRET: &str = "registry-auth";

/// What every supervisor shares.
pub struct Ctx {
    /// The agent's configuration.
    pub config: AgentConfig,
    /// The API.
    pub client: kube::Client,
    /// containerd.
    pub runtime: Containerd,
    /// Image pulls.
    pub puller: pull::Puller,
    /// Logs.
    pub logs: logs::LogStore,
    /// Usage samples and ended task runs, for the node's metrics.
    pub meter: usage::Meter,
    /// Images resolved before, so a start does not read them again.
    pub images: image::Cache,
    /// Container starts in flight, which removals of ended containers wait for.
    pub starts: supervisor::StartGate,
}

/// A started agent.
pub struct Agent {
    /// The agent's endpoints, to merge into the node's API router.
    pub router: axum::Router,
}

impl Agent {
    /// Starts the agent in the background: it connects to containerd (retrying, with a
    /// clear error while it cannot), re-adopts, then converges forever. Its usage samples
    /// and ended task runs go to `meter`.
    pub fn start(config: AgentConfig, client: kube::Client, meter: usage::Meter) -> Agent {
        let logs = logs::LogStore::new(
            config.data_dir.join("logs"),
            config.timings.log_max_bytes,
            config.timings.log_retention,
            config.timings.log_poll,
        );
        let (ctx_tx, ctx_rx) = watch::channel(None);
        let router = endpoints::router(config.token.clone(), logs.clone(), ctx_rx);
        tokio::spawn(run(config, client, logs, meter, ctx_tx));
        Agent { router }
    }
}

async fn connect(config: &AgentConfig) -> Containerd {
    loop {
        match Containerd::connect(&config.containerd_socket, &config.containerd_namespace).await {
            Ok(rt) => return rt,
            Err(e) => {
                tracing::error!(
                    "{e}; no alloc runs on this node until it answers (retrying every {:?})",
                    config.timings.containerd_retry
                );
                tokio::time::sleep(config.timings.containerd_retry).await;
            }
        }
    }
}

struct Handle {
    stop: watch::Sender<bool>,
    supervised: Supervised,
}

async fn run(
    config: AgentConfig,
    client: kube::Client,
    logs: logs::LogStore,
    meter: usage::Meter,
    ctx_tx: watch::Sender<Option<Arc<Ctx>>>,
) {
    let runtime = connect(&config).await;
    tracing::info!(
        "agent connected to containerd at {} (namespace {})",
        config.containerd_socket.display(),
        config.containerd_namespace
    );
    let ctx = Arc::new(Ctx {
        puller: pull::Puller::new(runtime.clone(), config.insecure_registries.clone()),
        config,
        client,
        runtime,
        logs,
        meter,
        images: image::Cache::default(),
        starts: supervisor::StartGate::default(),
    });
    ctx_tx.send_replace(Some(ctx.clone()));

    let allocs: Api<Alloc> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.config.node_name);
    let (reader, writer) = reflector::store();
    let wake = Arc::new(Notify::new());
    let stream = reflector(
        writer,
        watcher(allocs, watcher::Config::default().fields(&selector)),
    )
    .default_backoff()
    .touched_objects();
    {
        let wake = wake.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!("alloc watch: {e}");
                }
                wake.notify_one();
            }
        });
    }
    if reader.wait_until_ready().await.is_err() {
        tracing::error!("the alloc watch ended before its first list; the agent stops");
        return;
    }

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Report>();
    let mut handles: BTreeMap<String, Handle> = BTreeMap::new();
    adopt(&ctx, &reader, &mut handles, &done_tx).await;

    tokio::spawn(heartbeat::run(ctx.clone(), reader.clone()));
    tokio::spawn(usage::run(ctx.clone(), reader.clone()));
    tokio::spawn(janitor(ctx.clone(), reader.clone()));

    let mut marked: HashSet<String> = HashSet::new();
    let mut waiting: HashSet<String> = HashSet::new();
    // Allocs whose supervisor finished: their terminal status may not be in the cache yet.
    let mut ended: BTreeSet<String> = BTreeSet::new();
    loop {
        let (by_uid, placed) = placed_allocs(&reader);
        let supervised: BTreeMap<String, Supervised> = handles
            .iter()
            .map(|(uid, h)| (uid.clone(), h.supervised.clone()))
            .collect();
        for action in reconcile::plan(&placed, &supervised, &ended) {
            match action {
                Action::Start(uid) => {
                    let Some(alloc) = by_uid.get(&uid) else {
                        continue;
                    };
                    tracing::debug!(target: status::TIMELINE, "agent starts {}", alloc.name_any());
                    let (stop, stop_rx) = watch::channel(false);
                    tokio::spawn(supervisor::supervise(
                        ctx.clone(),
                        (**alloc).clone(),
                        Start::Fresh,
                        stop_rx,
                        done_tx.clone(),
                    ));
                    handles.insert(
                        uid,
                        Handle {
                            stop,
                            supervised: Supervised {
                                host_port: alloc.spec.host_port.unwrap_or_default(),
                                stopping: false,
                            },
                        },
                    );
                }
                Action::Stop(uid) => {
                    tracing::debug!(
                        target: status::TIMELINE,
                        "agent stops {}",
                        by_uid.get(&uid).map(|a| a.name_any()).unwrap_or_default()
                    );
                    if let Some(h) = handles.get_mut(&uid) {
                        h.stop.send_replace(true);
                        h.supervised.stopping = true;
                    }
                }
                Action::MarkStopped(uid) | Action::MarkLost(uid) if marked.contains(&uid) => {}
                Action::MarkStopped(uid) => {
                    if let Some(alloc) = by_uid.get(&uid) {
                        let patch =
                            json!({"phase": AllocPhase::Stopped, "finishedAt": status::now()});
                        status::write_alloc(&ctx, alloc, patch).await;
                    }
                    marked.insert(uid);
                }
                Action::MarkLost(uid) => {
                    if let Some(alloc) = by_uid.get(&uid) {
                        let patch = json!({"phase": AllocPhase::Failed, "reason": "container lost", "finishedAt": status::now()});
                        status::write_alloc(&ctx, alloc, patch).await;
                    }
                    marked.insert(uid);
                }
                Action::WaitForPort { uid, port, holder } => {
                    if waiting.insert(uid.clone()) {
                        let holder = by_uid
                            .get(&holder)
                            .map(|a| format!("alloc {}", a.name_any()))
                            .unwrap_or_else(|| "a container being removed".into());
                        if let Some(alloc) = by_uid.get(&uid) {
                            let reason = format!("waiting for host port {port}, held by {holder}");
                            let patch = json!({"phase": AllocPhase::Pending, "reason": reason});
                            status::write_alloc(&ctx, alloc, patch).await;
                        }
                    }
                }
            }
        }
        marked.retain(|uid| by_uid.contains_key(uid));
        waiting.retain(|uid| by_uid.contains_key(uid) && !handles.contains_key(uid));
        ended.retain(|uid| placed.get(uid).is_some_and(|p| !p.phase.is_terminal()));
        tokio::select! {
            _ = wake.notified() => {}
            report = done_rx.recv() => match report {
                // Its container exited: the port is free, the removal comes later.
                Some(Report::Exited(uid)) => {
                    if let Some(h) = handles.get_mut(&uid) {
                        h.supervised.host_port = 0;
                    }
                }
                Some(Report::Removed(uid)) => {
                    handles.remove(&uid);
                    ended.insert(uid);
                }
                // Not `ended`: no supervisor wrote its phase. An alloc stopped while this
                // node's mill was down still shows it running, and only the next round's
                // `MarkStopped` ends it (else its rollout waits for it forever).
                Some(Report::OrphanRemoved(uid)) => {
                    handles.remove(&uid);
                }
                None => {}
            },
            _ = tokio::time::sleep(ctx.config.timings.resync) => {}
        }
    }
}

fn placed(uid: &str, alloc: &Alloc) -> Placed {
    Placed {
        uid: uid.to_string(),
        kind: alloc.spec.owner.kind,
        desired: alloc.spec.desired_state,
        phase: alloc.status.as_ref().map(|s| s.phase).unwrap_or_default(),
        host_port: alloc.spec.host_port,
    }
}

/// Re-adopts the containers of live allocs and removes the rest.
async fn adopt(
    ctx: &Arc<Ctx>,
    reader: &reflector::Store<Alloc>,
    handles: &mut BTreeMap<String, Handle>,
    done: &mpsc::UnboundedSender<Report>,
) {
    let containers = match ctx
        .runtime
        .container_list(&format!("labels.\"{LABEL_UID}\""))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot list containers to re-adopt: {e}");
            return;
        }
    };
    let (by_uid, placed) = placed_allocs(reader);
    let found: Vec<String> = containers
        .iter()
        .filter_map(|c| c.labels.get(LABEL_UID).cloned())
        .collect();
    let decisions = reconcile::adopt(&found, &placed);
    for container in containers {
        let Some(uid) = container.labels.get(LABEL_UID).cloned() else {
            continue;
        };
        let port: u16 = container
            .labels
            .get(LABEL_PORT)
            .and_then(|p| p.parse().ok())
            .unwrap_or_default();
        let (stop, stop_rx) = watch::channel(false);
        let alloc = by_uid
            .get(&uid)
            .filter(|a| supervisor::container_id(a) == container.id);
        match (decisions.get(&uid), alloc) {
            (Some(Found::Adopt), Some(alloc)) => {
                let state = ctx.runtime.task_get(&container.id).await.ok().flatten();
                tracing::info!("re-adopting {} ({state:?})", alloc.name_any());
                tokio::spawn(supervisor::supervise(
                    ctx.clone(),
                    (**alloc).clone(),
                    Start::Adopted(state),
                    stop_rx,
                    done.clone(),
                ));
                handles.insert(
                    uid,
                    Handle {
                        stop,
                        supervised: Supervised {
                            host_port: port,
                            stopping: false,
                        },
                    },
                );
            }
            _ => {
                // Held until it is gone, so its port is not handed to another alloc meanwhile.
                tokio::spawn(supervisor::remove_orphan(
                    ctx.clone(),
                    container.id.clone(),
                    uid.clone(),
                    done.clone(),
                ));
                handles.insert(
                    uid,
                    Handle {
                        stop,
                        supervised: Supervised {
                            host_port: port,
                            stopping: true,
                        },
                    },
                );
            }
        }
    }
}

/// Enforces the log limits every `log_janitor`.
/// This node's Allocs from the reflector, by uid, and what the planner needs of each.
fn placed_allocs(
    reader: &reflector::Store<Alloc>,
) -> (HashMap<String, Arc<Alloc>>, BTreeMap<String, Placed>) {
    let by_uid: HashMap<String, Arc<Alloc>> = reader
        .state()
        .into_iter()
        .filter_map(|a| Some((a.metadata.uid.clone()?, a)))
        .collect();
    let placed = by_uid
        .iter()
        .map(|(uid, a)| (uid.clone(), placed(uid, a)))
        .collect();
    (by_uid, placed)
}

async fn janitor(ctx: Arc<Ctx>, reader: reflector::Store<Alloc>) {
    let mut tick = tokio::time::interval(ctx.config.timings.log_janitor);
    loop {
        tick.tick().await;
        let live: HashSet<(String, String)> = reader
            .state()
            .iter()
            .filter(|a| !a.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
            .map(|a| (a.namespace().unwrap_or_default(), a.name_any()))
            .collect();
        let logs = ctx.logs.clone();
        let _ = tokio::task::spawn_blocking(move || logs.enforce(&live)).await;
    }
}
