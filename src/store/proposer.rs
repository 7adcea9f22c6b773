//! The leader's proposer: concurrent transactions share Raft entries.
//!
//! openraft 0.9's core appends every `client_write` as its own entry and waits for that
//! append's flush before it takes the next request, so one transaction per entry means one
//! fsync per write, strictly one after the other (about 1,400 writes/s here whatever the
//! number of clients). The proposer queues the transactions proposed on this node and hands
//! Raft one [`Batch`] of everything queued whenever fewer than [`IN_FLIGHT`] batches are
//! being committed and the append of the last one it handed over has finished (the log's
//! [`Appends`]): a lone writer still gets an entry of its own at once, and what is proposed
//! while an entry is being flushed waits for that flush and shares the next entry, instead
//! of queueing in Raft's core behind it as entries of its own, each with its own flush
//! (group commit: three writes proposed together take two flushes, not three; 64 concurrent
//! writers share a few entries and a few flushes). Each transaction keeps its own outcome
//! and its own resourceVersion ([`super::consensus::txn_rv`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::consensus::{Batch, Raft, TXNS_PER_ENTRY};
use super::facade::Attempt;
use super::log::Appends;
use super::network::{route, CallError, RpcClient};
use super::types::{Applied, StoreError, Txn};

/// How many batches may be in Raft at once. More than one lets the next entries be appended
/// while the previous ones are replicated and applied (at 3 nodes an entry's commit is mostly
/// waiting: flushes and round trips); few enough that the proposals arriving meanwhile wait
/// here and share the next entry instead of each taking its own. 4 measured slightly better
/// than 2 at 64 clients on 3 nodes (`benches/README.md`).
const IN_FLIGHT: usize = 4;

/// A batch takes no more transactions once their JSON reaches this size (a transaction
/// larger than it gets an entry of its own), so entries and replication requests stay small.
const BATCH_BYTES: usize = 1024 * 1024;

/// A transaction waiting for a batch, and where its outcome goes.
struct Pending {
    txn: Txn,
    bytes: usize,
    /// When it was proposed.
    queued: Instant,
    reply: oneshot::Sender<Attempt<Applied>>,
}

/// The handle of the proposer task of one node; the task ends when the handle is dropped.
pub(crate) struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
    applied: Histogram,
}

impl Proposer {
    /// Starts the proposer task of `raft`, whose log store counts its appends in `appends`.
    pub fn spawn(raft: Raft, appends: Arc<Appends>) -> Proposer {
        let (queue, rx) = mpsc::unbounded_channel();
        // 100 µs .. ~3.3 s.
        let applied = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        tokio::spawn(run(raft, appends, rx, applied.clone()));
        Proposer { queue, applied }
    }

    /// Seconds from handing an entry to Raft until it was applied here, one per entry.
    pub fn apply_latency(&self) -> Histogram {
        self.applied.clone()
    }

    /// Commits `txn` in the next batch; this node should be the leader.
    pub async fn propose(&self, txn: Txn) -> Attempt<Applied> {
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            bytes: encoded_len(&txn),
            queued: Instant::now(),
            txn,
            reply,
        };
        if self.queue.send(pending).is_err() {
            return Attempt::Failed(StoreError::Unavailable("the store is shutting down".into()));
        }
        outcome.await.unwrap_or_else(|_| {
            Attempt::Failed(StoreError::Unavailable(
                "raft stopped before the transaction's outcome was known".into(),
            ))
        })
    }
}

/// Takes batches off the queue while a slot is free, each committed by its own task, the
/// next one once the append of the last one has finished.
async fn run(
    raft: Raft,
    appends: Arc<Appends>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    applied: Histogram,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut finished = appends.finished();
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < TXNS_PER_ENTRY {
            let Ok(next) = queue.try_recv() else { break };
            if bytes + next.bytes > BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        // Raft's core appends one entry at a time, in order: this batch's entry is the next
        // append to begin (one already running finishes first).
        let append = appends.begun() + 1;
        let mut committed = tokio::spawn(commit(raft.clone(), batch, slot, applied.clone()));
        // Until it has finished, what is proposed queues here for the next entry. A batch that
        // ends without an append (this node is no longer the leader) ends the wait too; so
        // does an append that is not this batch's (a blank or membership entry of Raft's own
        // began first), which costs only this grouping.
        tokio::select! {
            _ = finished.wait_for(|&n| n >= append) => {}
            _ = &mut committed => {}
        }
    }
}

/// Proposes `batch` as one entry and answers each transaction; frees `slot` when done.
async fn commit(raft: Raft, batch: Vec<Pending>, slot: OwnedSemaphorePermit, applied: Histogram) {
    let proposed = Instant::now();
    let waited = batch
        .iter()
        .map(|p| proposed.duration_since(p.queued))
        .max()
        .unwrap_or_default();
    let (txns, replies): (Vec<Txn>, Vec<_>) = batch.into_iter().map(|p| (p.txn, p.reply)).unzip();
    let count = txns.len();
    let written = raft.client_write(Batch { txns: txns.into() }).await;
    drop(slot);
    if written.is_ok() {
        applied.observe(proposed.elapsed().as_secs_f64());
    }
    tracing::debug!(
        target: mill_controllers::runtime::TIMELINE,
        "store entry of {count} txns: queued up to {:.1} ms, then applied in {:.1} ms",
        waited.as_secs_f64() * 1000.0,
        proposed.elapsed().as_secs_f64() * 1000.0
    );
    let outcomes: Vec<Attempt<Applied>> = match written {
        Ok(response) if response.data.0.len() == count => response
            .data
            .0
            .into_iter()
            .map(|result| match result {
                Ok(applied) => Attempt::Done(applied),
                Err(e) => Attempt::Failed(e),
            })
            .collect(),
        Ok(response) => {
            let message = format!(
                "a batch of {count} transactions was applied with {} outcomes",
                response.data.0.len()
            );
            vec![Attempt::Failed(StoreError::Internal(message)); count]
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            vec![Attempt::Retry("this node is no longer the leader".into()); count]
        }
        Err(e) => {
            let message = format!("raft stopped: {e}");
            vec![Attempt::Failed(StoreError::Unavailable(message)); count]
        }
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A caller that gave up (its deadline passed) no longer listens.
        let _ = reply.send(outcome);
    }
}

/// The size of `txn` as JSON, without building it.
fn encoded_len(txn: &Txn) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, txn) {
        Ok(()) => count.0,
        // Unencodable: the log append will fail it; give it an entry of its own.
        Err(_) => BATCH_BYTES,
    }
}

/// How many forwarding requests a follower may have open to the leader at once (as many
/// as the leader has batches in flight, so a follower's proposals can fill them).
const FORWARDS_IN_FLIGHT: usize = IN_FLIGHT;

/// A txn a follower forwards, to whom, and where the leader's answer goes.
struct Forward {
    leader: String,
    txn: Txn,
    bytes: usize,
    answer: oneshot::Sender<Result<Attempt<Applied>, CallError>>,
}

/// A follower's forwarding of proposals: the txns proposed here while earlier forwards are
/// under way travel to the leader together, in one [`route::PROPOSE`] request (whose
/// handler puts them in the leader's queue together, so they share an entry there too).
pub(crate) struct Forwarder {
    queue: mpsc::UnboundedSender<Forward>,
}

impl Forwarder {
    /// Starts the forwarding task; `timeout` bounds each request to the leader.
    pub fn spawn(rpc: RpcClient, timeout: Duration) -> Forwarder {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_forwards(rpc, timeout, rx));
        Forwarder { queue }
    }

    /// Has the leader at `leader` commit `txn`; its answer, or why none came.
    pub async fn forward(&self, leader: &str, txn: &Txn) -> Result<Attempt<Applied>, CallError> {
        let (answer, outcome) = oneshot::channel();
        let forward = Forward {
            leader: leader.to_string(),
            bytes: encoded_len(txn),
            txn: txn.clone(),
            answer,
        };
        let stopped = || CallError::Unreachable {
            addr: leader.to_string(),
            message: "this node's store is shutting down".into(),
        };
        if self.queue.send(forward).is_err() {
            return Err(stopped());
        }
        outcome.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Takes batches of forwards to one leader off the queue while a slot is free.
async fn run_forwards(
    rpc: RpcClient,
    timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<Forward>,
) {
    let slots = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT));
    let mut carried: Option<Forward> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(forward) => forward,
            None => match queue.recv().await {
                Some(forward) => forward,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < TXNS_PER_ENTRY {
            let Ok(next) = queue.try_recv() else { break };
            if next.leader != batch[0].leader || bytes + next.bytes > BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        tokio::spawn(send_forwards(rpc.clone(), timeout, batch, slot));
    }
}

/// One request carrying `batch` to its leader; answers each forward.
async fn send_forwards(
    rpc: RpcClient,
    timeout: Duration,
    batch: Vec<Forward>,
    slot: OwnedSemaphorePermit,
) {
    let leader = batch[0].leader.clone();
    let (txns, answers): (Vec<Txn>, Vec<_>) = batch.into_iter().map(|f| (f.txn, f.answer)).unzip();
    let count = txns.len();
    let called = rpc
        .call::<_, Vec<Attempt<Applied>>>(&leader, route::PROPOSE, &txns, timeout)
        .await;
    drop(slot);
    let outcomes: Vec<Result<Attempt<Applied>, CallError>> = match called {
        Ok(attempts) if attempts.len() == count => attempts.into_iter().map(Ok).collect(),
        Ok(attempts) => {
            let message = format!(
                "the leader answered {} outcomes for {count} transactions",
                attempts.len()
            );
            vec![Ok(Attempt::Failed(StoreError::Internal(message))); count]
        }
        Err(e) => vec![Err(e); count],
    };
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        let _ = answer.send(outcome);
    }
}
