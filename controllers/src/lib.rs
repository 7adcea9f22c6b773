//! mill's controllers: the decisions of the control plane, as pure planners.
//!
//! Every controller of DESIGN.md (scheduler, rollout, health, nodes, drain, tasks, gc,
//! deploy) is one module here with a planner at its heart:
//!
//! ```text
//! plan(&View, now, &Knobs) -> Vec<Action>
//! ```
//!
//! A [`View`] is what the controller observed: the objects of the kinds it watches, as
//! `Arc`s straight out of kube-runtime reflector stores, plus the [`Routing`] barrier
//! state that only the node RPC knows. An [`Action`] is one write, as plain data. Planners
//! do no I/O, read no clock (`now` is an argument) and keep no state between calls: what
//! they need to remember lives in the store (revision history in Service status, the
//! `Routed` condition on Allocs, the event log in Deploy status). So they are
//! level-triggered, idempotent and restart-safe: the same View gives the same Actions,
//! and a new leader continues where the old one stopped.
//!
//! # The contract with the I/O loop
//! The thin loop around each planner (kube-runtime, wired by the daemon) must:
//! - build the [`View`] from reflector stores (`Store::state()` gives `Vec<Arc<K>>`) and,
//!   for the rollout planner, fill [`Routing`] from the nodes' "applied revision" answers;
//! - wait until its reflectors have seen its own previous writes before planning again
//!   (read your writes), and re-plan on every watch event and on a tick
//!   (`MILL_WATCHDOG_TICK_MS`): timeouts (health, heartbeat, drain grace, task, deploy)
//!   are noticed by re-planning with a later `now`;
//! - apply the Actions of one plan in order, each as one API write ([`Action`] documents
//!   the patch for each), except those marked [`Action::Independent`]: those go at once,
//!   concurrently with the ordered ones (the [`action`] module doc says when a planner may
//!   mark a write so: its reason is in the View alone, nothing later in the plan relies on
//!   it, and no other write of the plan touches its object). Order is kept wherever it
//!   carries a guarantee, e.g. a new alloc's `Routed=True` before the old one's draining.
//!   List-valued fields (conditions, history, events) are sent whole, computed from the
//!   observed object: send them with the observed `resourceVersion` as precondition and
//!   re-plan on 409 Conflict (a 409 ends the ordered writes of the batch);
//! - treat `AlreadyExists` on [`Action::CreateAlloc`] as success: alloc names are
//!   deterministic so that a plan made from a stale View cannot create a replica twice.
//!
//! The health planner is the one exception to "no state": probe results are too frequent
//! for the store, so its loop owns a map of [`health::ProbeState`] and feeds it in.

pub mod action;
pub mod barrier;
pub mod deploy;
pub mod drain;
pub mod gc;
pub mod health;
pub mod knobs;
pub mod metrics;
pub mod nodes;
pub mod rollout;
pub mod runtime;
pub mod scheduler;
pub mod tasks;
pub mod view;
pub mod vip;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod simulation;

pub use action::Action;
pub use knobs::Knobs;
pub use view::{ObjectKey, Routing, View};

/// Annotation on a Service: the name of the deploy that last wrote its spec. Recorded as
/// the `cause` of the revision that spec makes, so a deploy can find its revision.
pub const DEPLOY_ANNOTATION: &str = "mill.dev/deploy";
/// Annotation on a Service: a restart request (any token, e.g. the time of
/// `mill restart`). A token not seen before makes a new revision with the same template.
pub const RESTART_ANNOTATION: &str = "mill.dev/restart";
/// Finalizer the rollout planner keeps on every Service, so that deleting one drains and
/// stops its allocs before the object goes.
pub const SERVICE_FINALIZER: &str = "mill.dev/allocs";
/// Alloc condition: every live node routes to it (`True`), or none does any more (`False`).
pub const ROUTED: &str = "Routed";
/// Alloc condition: the health check passes (`True`) or failed its threshold (`False`).
pub const HEALTHY: &str = "Healthy";
/// Alloc condition: `False` with the reason when the scheduler cannot place it.
pub const SCHEDULED: &str = "Scheduled";
/// Label on every alloc: the service or task it belongs to.
pub const OWNER_LABEL: &str = "mill.dev/owner";
