//! The multi-node end-to-end suite (issue #5): three real `mill` processes, each in a
//! test host of its own (a network namespace on a bridge the harness makes), one private
//! containerd with a containerd namespace per node, images from a registry on the
//! bridge. Each scenario group is a module; the harness is [`harness`] and [`hosts`].

#[path = "../support/mod.rs"]
mod support;

mod deploys;
mod failures;
mod harness;
mod hosts;
mod nodes;
mod tasks;
mod zero_downtime;
