//! The routing barrier's I/O: how far every live node's routing tables are.
//!
//! The rollout planner marks an alloc `Routed` (or unrouted) only once every live node has
//! applied the store revision the alloc reached ([`Routing::applied_everywhere`]). The
//! loop asks each live node over the node RPC, `GET
//! /internal/routing/applied?revision=R&timeoutMs=T` at `Node.spec.apiAddress`: a
//! long-poll the node answers the moment its DNS/VIP (and proxy) tables have applied `R`,
//! or after `T` with what it has, plus its per-alloc in-flight counts.
//!
//! One poll task per live node sends its answers back to the loop, which owns the
//! [`Routing`] they add up to: [`Barrier::routing`] is called once per plan, starts and
//! stops the poll tasks as nodes come, go down or leave, and tells them the revision the
//! View wants (the newest alloc resourceVersion).

use crate::view::{self, ObjectKey, Routing, View};
use kube::ResourceExt;
use mill_crds::NodeState;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

/// Where the routing barrier's answers come from.
#[derive(Clone)]
pub enum Barrier {
    /// Ask every live node over the node RPC with the cluster token (the daemon).
    Nodes {
        /// The cluster token, sent as bearer token.
        token: String,
    },
    /// Credit every node with the newest revision the View holds: for tests that play
    /// the agent and run no routing tables.
    Assumed,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Barrier::Nodes { .. } => f.write_str("Barrier::Nodes"),
            Barrier::Assumed => f.write_str("Barrier::Assumed"),
        }
    }
}

/// One node's answer to the long-poll.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// The store revision the node's routing tables have applied.
    pub applied: u64,
    /// Connections/requests in flight per alloc through this node's VIPs and proxy.
    #[serde(default)]
    pub in_flight: Vec<InFlight>,
}

/// In-flight work to one alloc through one node.
#[derive(Debug, Clone, Deserialize)]
pub struct InFlight {
    /// The alloc's namespace.
    pub namespace: String,
    /// The alloc's name.
    pub name: String,
    /// How many connections or requests are in flight.
    pub count: u32,
}

/// The loop's side of the barrier: the answers so far and the poll tasks.
pub(crate) struct Tables {
    barrier: Barrier,
    tick: Duration,
    wake: Arc<Notify>,
    want: watch::Sender<u64>,
    answers_tx: mpsc::UnboundedSender<(String, Applied)>,
    answers_rx: mpsc::UnboundedReceiver<(String, Applied)>,
    answers: BTreeMap<String, Applied>,
    polls: BTreeMap<String, Poll>,
    http: reqwest::Client,
}

/// A running poll of one node at one API address; aborted when dropped.
struct Poll {
    address: String,
    task: JoinHandle<()>,
}

impl Drop for Poll {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tables {
    pub(crate) fn new(barrier: Barrier, tick: Duration, wake: Arc<Notify>) -> Tables {
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        Tables {
            barrier,
            tick,
            wake,
            want: watch::Sender::new(0),
            answers_tx,
            answers_rx,
            answers: BTreeMap::new(),
            polls: BTreeMap::new(),
            http: reqwest::Client::new(),
        }
    }

    /// The routing state for a plan of `view`; keeps one poll per live node running.
    pub(crate) fn routing(&mut self, view: &View) -> Routing {
        let token = match &self.barrier {
            Barrier::Assumed => return assumed(view),
            Barrier::Nodes { token } => token.clone(),
        };
        while let Ok((node, applied)) = self.answers_rx.try_recv() {
            self.answers.insert(node, applied);
        }
        let wanted = view
            .allocs
            .iter()
            .map(|a| view::resource_version(&a.metadata))
            .filter(|rv| *rv != u64::MAX)
            .max()
            .unwrap_or(0);
        self.want.send_if_modified(|want| {
            let changed = *want != wanted;
            *want = wanted;
            changed
        });
        let live: BTreeMap<String, String> = view
            .nodes
            .iter()
            .filter(|n| view::node_state(n) != NodeState::Down)
            .map(|n| (n.name_any(), n.spec.api_address.clone()))
            .collect();
        self.polls
            .retain(|name, poll| live.get(name).is_some_and(|a| *a == poll.address));
        self.answers.retain(|name, _| live.contains_key(name));
        for (name, address) in live {
            if self.polls.contains_key(&name) {
                continue;
            }
            let ask = Ask {
                node: name.clone(),
                url: format!("http://{address}/internal/routing/applied"),
                token: token.clone(),
                tick: self.tick,
                http: self.http.clone(),
                want: self.want.subscribe(),
                answers: self.answers_tx.clone(),
                wake: self.wake.clone(),
            };
            let task = tokio::spawn(ask.run());
            self.polls.insert(name, Poll { address, task });
        }
        let mut routing = Routing::default();
        for (node, answer) in &self.answers {
            routing.applied.insert(node.clone(), answer.applied);
            for f in &answer.in_flight {
                let key = ObjectKey {
                    namespace: f.namespace.clone(),
                    name: f.name.clone(),
                };
                *routing.in_flight.entry(key).or_default() += f.count;
            }
        }
        routing
    }
}

impl Tables {
    /// Asks the nodes for at least `revision` now (the loop's newest own alloc write),
    /// before the next plan's View would ask for it.
    pub(crate) fn want_at_least(&self, revision: u64) {
        self.want.send_if_modified(|want| {
            let more = *want < revision;
            if more {
                *want = revision;
            }
            more
        });
    }
}

/// [`Barrier::Assumed`]: every node has applied everything this View holds.
fn assumed(view: &View) -> Routing {
    let revision = view
        .services
        .iter()
        .map(|o| &o.metadata)
        .chain(view.allocs.iter().map(|o| &o.metadata))
        .chain(view.nodes.iter().map(|o| &o.metadata))
        .chain(view.volumes.iter().map(|o| &o.metadata))
        .chain(view.deploys.iter().map(|o| &o.metadata))
        .filter_map(|m| m.resource_version.as_deref()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Routing {
        applied: view
            .nodes
            .iter()
            .map(|n| (n.name_any(), revision))
            .collect(),
        in_flight: BTreeMap::new(),
    }
}

/// The long-poll loop against one node.
struct Ask {
    node: String,
    url: String,
    token: String,
    tick: Duration,
    http: reqwest::Client,
    want: watch::Receiver<u64>,
    answers: mpsc::UnboundedSender<(String, Applied)>,
    wake: Arc<Notify>,
}

impl Ask {
    async fn run(mut self) {
        loop {
            let want = *self.want.borrow_and_update();
            let applied = match self.ask(want).await {
                Ok(answer) => {
                    let applied = answer.applied;
                    if self.answers.send((self.node.clone(), answer)).is_err() {
                        return;
                    }
                    self.wake.notify_one();
                    Some(applied)
                }
                Err(err) => {
                    tracing::debug!("routing barrier: node {}: {err}", self.node);
                    None
                }
            };
            // Caught up (or unreachable): ask again when the View wants more, and every
            // tick anyway so that in-flight counts stay fresh while allocs drain.
            if applied.is_none_or(|a| a >= want) {
                tokio::select! {
                    changed = self.want.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(self.tick) => {}
                }
            }
        }
    }

    async fn ask(&self, revision: u64) -> Result<Applied, reqwest::Error> {
        let wait = self.tick;
        self.http
            .get(&self.url)
            .query(&[
                ("revision", revision.to_string()),
                ("timeoutMs", wait.as_millis().to_string()),
            ])
            .bearer_auth(&self.token)
            .timeout(wait * 3)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
}
