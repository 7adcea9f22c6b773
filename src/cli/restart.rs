//! `mill restart SERVICE`: replace every replica with a fresh container, rolling, same
//! spec (`POST /v1/restart/{service}`), then follow the rollout until it ends.

use super::client::Client;
use super::deploy::{follow_deploy, Progress, Words};
use reqwest::Method;
use serde_json::Value;
use std::process::ExitCode;

/// `mill restart SERVICE`.
pub async fn restart(client: &Client, namespace: &str, service: &str) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/restart/{service}?namespace={namespace}");
    let answer: Value = client.call::<(), _>(Method::POST, &path, None).await?;
    let deploy = deploy_of(&answer)?;
    let words = Words {
        done: "restarted",
        failed: "restart failed",
        partial: "restart finished with errors",
    };
    follow_deploy(client, namespace, &deploy, Progress::new(words)).await
}

/// The Deploy a restart or undo answer names.
pub(super) fn deploy_of(answer: &Value) -> anyhow::Result<String> {
    answer["deploy"].as_str().map(str::to_string).ok_or_else(|| {
        anyhow::anyhow!(
            "the cluster's answer names no rollout to follow; are client and server the same version?"
        )
    })
}
