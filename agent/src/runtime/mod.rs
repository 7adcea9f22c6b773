//! The container runtime the agent drives: containerd (the only one), and the errors and
//! states it reports in the agent's terms.

pub mod containerd;

pub use containerd::{ContainerRecord, Containerd, Exit};

/// What went wrong talking to the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The socket does not answer.
    #[error("containerd at {socket} is unreachable: {message}; is containerd running (check --containerd-socket)?")]
    Unreachable {
        /// The socket path.
        socket: String,
        /// What the connection attempt said.
        message: String,
    },
    /// A call failed.
    #[error("containerd could not {what}: {message}")]
    Rpc {
        /// What was being done.
        what: &'static str,
        /// containerd's message.
        message: String,
        /// Whether the object did not exist.
        not_found: bool,
    },
    /// containerd answered something unexpected.
    #[error("unexpected answer from containerd: {0}")]
    Protocol(String),
    /// Reading a blob's source failed.
    #[error("{0}")]
    Fetch(String),
}

/// The state of a container's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Created, not started.
    Created,
    /// Running with this pid.
    Running {
        /// The process id on the host.
        pid: u32,
    },
    /// Exited.
    Exited(Exit),
}
