//! [`Store`]: the facade the rest of mill uses. It wires sled, the state machine, the
//! network and openraft together, forwards writes and read barriers from followers to the
//! leader, and waits for local apply so every node reads its own writes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::consensus::{entry_rv, Raft, Timing};
use super::db::{internal, Database};
use super::log::LogStore;
use super::network::{route, CallError, Network, RpcClient};
use super::proposer::{Forwarder, Proposer};
use super::rounds::Rounds;
use super::state_machine::{Replica, StateMachine};
use super::types::{Applied, Expired, Key, RaftInfo, Role, Rv, StoreConfig, StoreError, Txn};
use super::watch::Watch;

/// A node's replicated store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    config: StoreConfig,
    timing: Timing,
    raft: Raft,
    proposer: Proposer,
    forwarder: Forwarder,
    /// Read-index rounds on this node as the leader, and forwarded to the leader.
    leader_reads: Rounds<Attempt<Rv>>,
    forwarded_reads: Rounds<Result<Attempt<Rv>, CallError>>,
    replica: Arc<Replica>,
    committed: Arc<AtomicU64>,
    rpc: RpcClient,
    /// `None` once shut down.
    db: Mutex<Option<Database>>,
}

/// The outcome of one attempt at a leader-only operation; also the answer of the
/// forwarding routes, so a follower retries exactly when the leader says nothing happened.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) enum Attempt<T> {
    Done(T),
    /// Nothing happened (no leader, leader changed, peer unreachable): try again.
    Retry(String),
    /// Failed, or the outcome is unknown (raft stopped mid-way): do not retry.
    Failed(StoreError),
}

impl Store {
    /// Opens (or resumes from) the sled database under `config.data_dir`, starts Raft.
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let timing = Timing::new(&config);
        let raft_config = timing.raft_config(&config)?;
        let database = Database::open(&config).await?;
        let log = LogStore::open(&database.db, database.user())?;
        let committed = log.committed();
        let appends = log.appends();
        let (machine, replica) =
            StateMachine::open(&database.db, database.user(), config.watch_window)?;
        let rpc = RpcClient::new(&config.token, config.node_id)?;
        let network = Network { rpc: rpc.clone() };
        let raft = Raft::new(config.node_id, raft_config, network, log, machine)
            .await
            .map_err(internal)?;
        let proposer = Proposer::spawn(raft.clone(), appends);
        let forwarder = Forwarder::spawn(rpc.clone(), timing.forward_deadline());
        let leader_reads = {
            let raft = raft.clone();
            Rounds::spawn(move |_| {
                let raft = raft.clone();
                async move { read_index(&raft).await }
            })
        };
        let forwarded_reads = {
            let (rpc, timeout) = (rpc.clone(), timing.forward_deadline());
            Rounds::spawn(move |leader: String| {
                let rpc = rpc.clone();
                async move { rpc.call(&leader, route::READ_INDEX, &(), timeout).await }
            })
        };
        tracing::info!(
            node_id = config.node_id,
            applied = replica.applied(),
            "store opened"
        );
        Ok(Store {
            inner: Arc::new(Inner {
                config,
                timing,
                raft,
                proposer,
                forwarder,
                leader_reads,
                forwarded_reads,
                replica,
                committed,
                rpc,
                db: Mutex::new(Some(database)),
            }),
        })
    }

    /// Makes this node a one-member cluster, if it has never been initialised.
    pub async fn bootstrap(&self) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(internal)? {
            return Ok(());
        }
        let members = BTreeMap::from([(self.id(), self.node())]);
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(internal(e)),
        }
    }

    /// Leader (forwarded if called on a follower): adds node `id` reachable at `api_addr`
    /// as a learner, waits until it has caught up, then makes it a voter.
    pub async fn add_voter(&self, id: u64, api_addr: String) -> Result<(), StoreError> {
        let deadline = self.inner.timing.add_voter_deadline();
        let request = MemberRequest {
            id,
            addr: Some(api_addr),
        };
        self.on_leader(
            deadline,
            route::ADD_VOTER,
            || self.add_voter_here(request.clone()),
            self.call(route::ADD_VOTER, &request),
        )
        .await
    }

    /// Leader (forwarded): removes node `id` from the membership.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        let deadline = self.inner.timing.forward_deadline();
        let request = MemberRequest { id, addr: None };
        self.on_leader(
            deadline,
            route::REMOVE_MEMBER,
            || self.remove_member_here(id),
            self.call(route::REMOVE_MEMBER, &request),
        )
        .await
    }

    /// Commits `txn` through Raft (forwarded to the leader from a follower) and returns once
    /// it is applied on this node, so a read here right after sees it.
    pub async fn propose(&self, txn: Txn) -> Result<Applied, StoreError> {
        let deadline = self.inner.timing.forward_deadline();
        let started = Instant::now();
        let applied: Applied = self
            .on_leader(
                deadline,
                route::PROPOSE,
                || self.propose_here(txn.clone()),
                |leader, _| {
                    let txn = &txn;
                    async move { self.inner.forwarder.forward(&leader, txn).await }
                },
            )
            .await?;
        self.inner
            .replica
            .wait_applied(applied.rv, deadline.saturating_sub(started.elapsed()))
            .await?;
        Ok(applied)
    }

    /// Waits until this node has applied everything committed before the call
    /// (openraft `ensure_linearizable` on the leader; read index from the leader on a
    /// follower). Returns the local applied rv.
    pub async fn read_barrier(&self) -> Result<Rv, StoreError> {
        let deadline = self.inner.timing.forward_deadline();
        let started = Instant::now();
        let index: Rv = self
            .on_leader(
                deadline,
                route::READ_INDEX,
                || self.read_index_here(),
                |leader, _| async move {
                    let shared = self.inner.forwarded_reads.join(leader).await;
                    shared.unwrap_or_else(|| Ok(Attempt::Failed(shutting_down())))
                },
            )
            .await?;
        self.inner
            .replica
            .wait_applied(index, deadline.saturating_sub(started.elapsed()))
            .await
    }

    /// One object from the local state machine.
    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.inner.replica.get(key)
    }

    /// All objects of `resource` (in `namespace`, or all namespaces when `None`) from the
    /// local state machine, sorted by key, and the rv the list is consistent at.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> (Vec<Arc<Value>>, Rv) {
        self.inner.replica.list(resource, namespace)
    }

    /// Events of `resource` (in `namespace`, or all) with rv > `from`. Fails with
    /// [`Expired`] if `from` is older than the retained window.
    pub fn watch(
        &self,
        resource: &str,
        namespace: Option<&str>,
        from: Rv,
    ) -> Result<Watch, Expired> {
        self.inner.replica.hub().watch(resource, namespace, from)
    }

    /// The rv of everything applied on this node.
    pub fn applied_rv(&self) -> Rv {
        self.inner.replica.applied()
    }

    /// The rv up to which this node's latest snapshot (built or installed) covers the log.
    pub fn snapshot_rv(&self) -> Option<Rv> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .snapshot
            .map(|id| entry_rv(id.index))
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> u64 {
        self.id()
    }

    /// This node's Raft state.
    pub fn raft_info(&self) -> RaftInfo {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let addr_of = |id: u64| membership.get_node(&id).map(|n| n.addr.clone());
        RaftInfo {
            node_id: self.id(),
            role: match metrics.state {
                ServerState::Leader => Role::Leader,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Follower | ServerState::Shutdown => Role::Follower,
            },
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            leader_addr: metrics.current_leader.and_then(addr_of),
            commit_index: self.inner.committed.load(Ordering::Relaxed),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            voters: membership
                .voter_ids()
                .map(|id| (id, addr_of(id).unwrap_or_default()))
                .collect(),
        }
    }

    /// How long this node's entries took from proposal to applied (as the leader; a
    /// follower forwards its writes, so the leader counts them).
    pub fn apply_latency(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.inner.proposer.apply_latency()
    }

    /// The node-to-node routes (`/internal/raft/*`: append, vote, snapshot, propose,
    /// read-index, membership), guarded by the cluster token. The API server merges them.
    pub fn router(&self) -> axum::Router {
        super::rpc::router(self.clone())
    }

    /// Stops Raft and flushes sled.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let mut db = self.inner.db.lock().await;
        let Some(database) = db.take() else {
            return Ok(());
        };
        self.inner.replica.close();
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        database
            .close(self.inner.timing.shutdown_deadline())
            .await?;
        tracing::info!(node_id = self.id(), "store shut down");
        Ok(())
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub(crate) fn token(&self) -> &str {
        &self.inner.config.token
    }

    fn id(&self) -> u64 {
        self.inner.config.node_id
    }

    fn node(&self) -> BasicNode {
        BasicNode {
            addr: self.inner.config.api_addr.clone(),
        }
    }

    /// A `remote` for [`Store::on_leader`]: POSTs `body` to `route` on the leader.
    fn call<'a, Req, T>(
        &'a self,
        route: &'a str,
        body: &'a Req,
    ) -> impl Fn(String, Duration) -> BoxFuture<'a, Result<Attempt<T>, CallError>> + 'a
    where
        Req: Serialize + Sync,
        T: DeserializeOwned + Send + 'a,
    {
        move |leader, left| {
            Box::pin(async move {
                self.inner
                    .rpc
                    .call::<_, Attempt<T>>(&leader, route, body, left)
                    .await
            })
        }
    }

    /// The current leader and its address, as this node knows it.
    fn leader(&self) -> Option<(u64, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let id = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    /// Runs `here` if this node leads, else `remote` with the leader's address (both within
    /// the time left); retries while there is no leader or it changes, until `deadline`.
    /// `route` names the operation in logs.
    async fn on_leader<T, F, Fut, R, RFut>(
        &self,
        deadline: Duration,
        route: &str,
        here: F,
        remote: R,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Attempt<T>>,
        R: Fn(String, Duration) -> RFut,
        RFut: Future<Output = Result<Attempt<T>, CallError>>,
    {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let attempt = match self.leader() {
                Some((id, _)) if id == self.id() => {
                    match tokio::time::timeout(left, here()).await {
                        Ok(attempt) => attempt,
                        Err(_) => Attempt::Failed(StoreError::Unavailable(format!(
                            "no answer from raft within {deadline:?}"
                        ))),
                    }
                }
                Some((_, addr)) => match tokio::time::timeout(left, remote(addr, left)).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(e @ CallError::Unreachable { .. })) => Attempt::Retry(e.to_string()),
                    Ok(Err(e @ CallError::Failed { .. })) => {
                        Attempt::Failed(StoreError::Unavailable(e.to_string()))
                    }
                    Err(_) => Attempt::Failed(StoreError::Unavailable(format!(
                        "no answer from the leader within {deadline:?}"
                    ))),
                },
                None => Attempt::Retry("no leader elected yet".into()),
            };
            match attempt {
                Attempt::Done(value) => return Ok(value),
                Attempt::Failed(e) => return Err(e),
                Attempt::Retry(why) => {
                    if Instant::now() + self.inner.timing.retry_pause() > until {
                        return Err(StoreError::Unavailable(format!(
                            "{why} (gave up after {deadline:?}; is a majority of the nodes up?)"
                        )));
                    }
                    tracing::debug!(route, reason = %why, "retrying on the leader");
                    tokio::time::sleep(self.inner.timing.retry_pause()).await;
                }
            }
        }
    }

    /// Proposes on this node, which should be the leader, in the next batch.
    pub(crate) async fn propose_here(&self, txn: Txn) -> Attempt<Applied> {
        self.inner.proposer.propose(txn).await
    }

    /// The read index as an rv, on this node, which should be the leader.
    /// Concurrent callers share one round (see `rounds`).
    pub(crate) async fn read_index_here(&self) -> Attempt<Rv> {
        self.inner
            .leader_reads
            .join(String::new())
            .await
            .unwrap_or_else(|| Attempt::Failed(shutting_down()))
    }

    pub(crate) async fn add_voter_here(&self, request: MemberRequest) -> Attempt<()> {
        let raft = &self.inner.raft;
        let id = request.id;
        let voters: BTreeSet<u64> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.contains(&id) {
            return Attempt::Done(());
        }
        let node = BasicNode {
            addr: request.addr.unwrap_or_default(),
        };
        tracing::info!(id, addr = %node.addr, "adding a learner");
        if let Some(failed) = membership_attempt(raft.add_learner(id, node, true).await) {
            return failed;
        }
        tracing::info!(id, "learner caught up; making it a voter");
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        membership_attempt(raft.change_membership(change, false).await).unwrap_or(Attempt::Done(()))
    }

    pub(crate) async fn remove_member_here(&self, id: u64) -> Attempt<()> {
        let raft = &self.inner.raft;
        let (is_voter, is_node) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            (
                membership.voter_ids().any(|v| v == id),
                membership.get_node(&id).is_some(),
            )
        };
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if is_node {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Attempt::Done(());
        };
        tracing::info!(id, "removing a member");
        membership_attempt(raft.change_membership(change, false).await).unwrap_or(Attempt::Done(()))
    }
}

/// A membership change request (also the body of the membership RPCs).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct MemberRequest {
    pub id: u64,
    pub addr: Option<String>,
}

/// `None` if a membership call succeeded, else the attempt to report.
fn membership_attempt<T, R>(
    result: Result<T, RaftError<u64, ClientWriteError<u64, BasicNode>>>,
) -> Option<Attempt<R>> {
    match result {
        Ok(_) => None,
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Some(Attempt::Retry("this node is no longer the leader".into()))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Some(
            Attempt::Retry(format!("membership change not possible yet: {e}")),
        ),
        Err(e) => Some(Attempt::Failed(fatal(e))),
    }
}

/// One leadership round on this node, which should be the leader: the read index as an rv.
async fn read_index(raft: &Raft) -> Attempt<Rv> {
    match raft.ensure_linearizable().await {
        Ok(log_id) => Attempt::Done(log_id.map_or(0, |id| entry_rv(id.index))),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
            Attempt::Retry("this node is no longer the leader".into())
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
            Attempt::Retry(format!("the leader lost its quorum: {e}"))
        }
        Err(e) => Attempt::Failed(fatal(e)),
    }
}

fn shutting_down() -> StoreError {
    StoreError::Unavailable("the store is shutting down".into())
}

fn fatal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("raft stopped: {e}"))
}
