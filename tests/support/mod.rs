//! The end-to-end harness shared by every test that runs real containers: a private
//! containerd ([`containerd`]), test images built from Debian's busybox-static as OCI
//! archives ([`images`]), a local OCI registry ([`registry`]), and real `mill` node
//! processes on loopback ([`node`]).
//!
//! Include it from a test crate with `#[path = "support/mod.rs"] mod support;`.
//! Nothing here skips: without root, containerd, runc, busybox-static, docker-registry
//! or skopeo the harness panics with what is missing (CI runs as root with all of them,
//! installed by `scripts/setup`).

#![allow(dead_code)] // Each test crate uses a different part of the harness.

pub mod cli;
pub mod containerd;
pub mod images;
pub mod node;
pub mod registry;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, failing the test with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Panics unless this process is root and `tools` are installed: the e2e tests must
/// fail loudly, never skip, where they cannot run.
pub fn require(tools: &[&str]) {
    // SAFETY-free check of the effective uid: /proc/self/status names it.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "the container end-to-end tests need root (containerd, cgroups, mounts); run them as root"
    );
    for tool in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is not installed; run scripts/setup (the end-to-end tests need it)"
        );
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A short random suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}
