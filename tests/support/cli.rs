//! The `mill` CLI as a user runs it: the test binary's `mill` as a child process, pointed
//! at a node with the test token (and none of the caller's `MILL_*` environment).

use super::node::TOKEN;
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;

/// The most one CLI run may take before the test calls it hung (deploys included).
const DEADLINE: Duration = Duration::from_secs(240);

/// Runs `mill --address ADDRESS --token TOKEN ARGS...`; a run that outlives [`DEADLINE`]
/// is killed and fails the test.
pub async fn mill(address: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mill"));
    command
        .args(["--address", address, "--token", TOKEN])
        .args(args)
        .env_remove("MILL_ADDRESS")
        .env_remove("MILL_TOKEN")
        .kill_on_drop(true);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("mill {args:?} did not finish within {DEADLINE:?}"))
        .unwrap()
}

/// A run's stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
