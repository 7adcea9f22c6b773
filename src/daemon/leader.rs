//! Leadership → controllers: the controllers run on the Raft leader only. A watcher task
//! polls this node's role and starts them when it becomes leader, aborts them when it
//! stops being one. Aborting loses nothing: their state is in the store.

use super::Knobs;
use crate::store::{Role, Store};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts the task that follows this node's leadership; `client` is the in-process
/// kube client the controllers write through.
pub(crate) fn follow(
    store: Store,
    client: kube::Client,
    knobs: &Knobs,
    port_range: mill_agent::PortRange,
    metrics: mill_controllers::metrics::Metrics,
    token: &str,
) -> JoinHandle<()> {
    if !knobs.run_controllers {
        tracing::info!("controllers disabled on this node (MILL_RUN_CONTROLLERS=0)");
        return tokio::spawn(async {});
    }
    let mut controller_knobs = knobs.controllers.clone();
    controller_knobs.port_range = port_range.first..=port_range.last;
    // The routing barrier asks every live node's tables (`/internal/routing/applied`).
    let barrier = mill_controllers::barrier::Barrier::Nodes {
        token: token.to_string(),
    };
    let pacing = mill_controllers::runtime::Pacing {
        tick: knobs.watchdog_tick,
    };
    // A quarter of the election timeout: a new leader starts its controllers well within
    // the time the cluster needed to elect it.
    let poll = (knobs.election_timeout / 4).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut running: Option<JoinHandle<()>> = None;
        loop {
            let leader = store.raft_info().role == Role::Leader;
            match (&running, leader) {
                (None, true) => {
                    tracing::info!("this node leads: starting the controllers");
                    let run = mill_controllers::runtime::run_routed(
                        client.clone(),
                        controller_knobs.clone(),
                        pacing.clone(),
                        metrics.clone(),
                        barrier.clone(),
                    );
                    running = Some(tokio::spawn(async move {
                        if let Err(err) = run.await {
                            tracing::warn!("controllers stopped: {err}");
                        }
                    }));
                }
                (Some(task), false) => {
                    tracing::info!("this node no longer leads: stopping the controllers");
                    task.abort();
                    running = None;
                }
                // Restart controllers that stopped on their own (a watch ended) while leading.
                (Some(task), true) if task.is_finished() => running = None,
                _ => {}
            }
            tokio::time::sleep(poll).await;
        }
    })
}

/// Runs the task `start` makes while this node leads: started when it becomes leader,
/// aborted when it stops being one, started again if it ended on its own. For leader-only
/// work besides the controllers (the ingress's ACME orders).
pub(crate) fn while_leader<F>(store: Store, poll: Duration, start: F) -> JoinHandle<()>
where
    F: Fn() -> JoinHandle<()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut running: Option<JoinHandle<()>> = None;
        loop {
            let leader = store.raft_info().role == Role::Leader;
            match (&running, leader) {
                (None, true) => running = Some(start()),
                (Some(task), false) => {
                    task.abort();
                    running = None;
                }
                (Some(task), true) if task.is_finished() => running = None,
                _ => {}
            }
            tokio::time::sleep(poll).await;
        }
    })
}
