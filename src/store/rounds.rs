//! Shared rounds for read barriers: concurrent callers share one leadership check.
//!
//! A read barrier must reflect every write committed before it was asked for, so a caller
//! may only use a round that *started* after it arrived. [`Rounds`] runs one round at a
//! time; the callers that arrive while it is under way wait for the next round and all
//! share it. On the leader a round is one openraft `ensure_linearizable` (a heartbeat to a
//! quorum); on a follower it is one read-index request to the leader, which joins the
//! leader's rounds in turn. 64 concurrent read-modify-writes then cost a few rounds, not 64.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// Callers waiting for a round, by key (the leader's address on a follower; rounds for
/// different keys never mix).
type Waiting<T> = (String, oneshot::Sender<T>);

/// The handle of a rounds task; the task ends when the handle is dropped.
pub(crate) struct Rounds<T> {
    queue: mpsc::UnboundedSender<Waiting<T>>,
}

impl<T: Clone + Send + 'static> Rounds<T> {
    /// Starts the task that runs `round(key)` for every group of waiting callers.
    pub fn spawn<F, Fut>(round: F) -> Rounds<T>
    where
        F: Fn(String) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(round, rx));
        Rounds { queue }
    }

    /// The outcome of the next round for `key` that starts after this call; `None` if the
    /// task has stopped (the store shuts down).
    pub async fn join(&self, key: String) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((key, tx)).ok()?;
        rx.await.ok()
    }
}

async fn run<T, F, Fut>(round: F, mut queue: mpsc::UnboundedReceiver<Waiting<T>>)
where
    T: Clone,
    F: Fn(String) -> Fut,
    Fut: Future<Output = T>,
{
    let mut carried: Option<Waiting<T>> = None;
    loop {
        let (key, first) = match carried.take() {
            Some(waiting) => waiting,
            None => match queue.recv().await {
                Some(waiting) => waiting,
                None => return,
            },
        };
        let mut waiting = vec![first];
        while let Ok((next_key, next)) = queue.try_recv() {
            if next_key != key {
                carried = Some((next_key, next));
                break;
            }
            waiting.push(next);
        }
        let outcome = round(key).await;
        for caller in waiting {
            // A caller that gave up (its deadline passed) no longer listens.
            let _ = caller.send(outcome.clone());
        }
    }
}
