//! `mill deploy [-f FILE] [--dry-run] [--detach]` and `mill apply -f FILE`.
//!
//! A `.mill` file is posted to `POST /v1/deploy`; the answer is the deploy's SSE stream,
//! printed one line per step (SPEC §8); on a terminal, also a spinner per service with its
//! elapsed time. If the stream drops before `done`, the CLI reattaches: it follows the
//! Deploy object the answer named (`x-mill-deploy`) through the Kubernetes API and goes on
//! printing its events until it ends. `mill restart` and `mill rollout undo` follow their
//! Deploy the same way ([`follow_deploy`]). `mill apply` of a `.yaml`/`.json` manifest of mill
//! kinds goes to the Kubernetes-shaped API instead (create, or replace what exists).

use super::client::{Client, ClientError};
use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mill_crds::{Deploy, DeployEvent, DeployPhase};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// What `mill deploy` was asked.
pub struct DeployArgs<'a> {
    /// `--address`.
    pub address: &'a str,
    /// `--token`.
    pub token: Option<&'a str>,
    /// `-n`.
    pub namespace: &'a str,
    /// `-f`.
    pub file: &'a Path,
    /// `--dry-run`: print the diff, change nothing.
    pub dry_run: bool,
    /// `--detach`: return once the deploy is accepted.
    pub detach: bool,
}

/// `mill deploy`, and `mill apply` of a `.mill` file.
pub fn deploy(args: &DeployArgs<'_>) -> anyhow::Result<ExitCode> {
    let client = Client::new(args.address, args.token)?;
    let source = std::fs::read_to_string(args.file).with_context(|| {
        format!(
            "cannot read {}; pass the config with -f FILE",
            args.file.display()
        )
    })?;
    let file_name = args.file.display().to_string();
    tokio::runtime::Runtime::new()?.block_on(async {
        let mut query = vec![("namespace", args.namespace), ("file", file_name.as_str())];
        if args.dry_run {
            query.push(("dryRun", "true"));
        }
        let request = client
            .request(Method::POST, "/v1/deploy")
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(source);
        let answer = client.send_raw(request).await?;
        match answer.status().as_u16() {
            200 => {}
            401 => return Err(ClientError::Unauthorized.into()),
            400 => {
                let body: Value = answer.json().await.unwrap_or_default();
                eprintln!(
                    "{}",
                    body["error"].as_str().unwrap_or("the config is invalid")
                );
                for d in body["details"].as_array().into_iter().flatten() {
                    eprintln!(
                        "{file_name}:{}:{}: {}",
                        d["line"],
                        d["col"],
                        d["message"].as_str().unwrap_or_default()
                    );
                }
                return Ok(ExitCode::FAILURE);
            }
            code => {
                let body: Value = answer.json().await.unwrap_or_default();
                anyhow::bail!(
                    "the deploy was refused (HTTP {code}): {}",
                    body["error"].as_str().unwrap_or("no reason given")
                );
            }
        }
        if args.dry_run {
            let body: Value = answer.json().await?;
            print_diff(&body);
            return Ok(ExitCode::SUCCESS);
        }
        if args.detach {
            let name = answer
                .headers()
                .get(DEPLOY_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("deploy")
                .to_string();
            println!("{name} started; it goes on in the cluster (see: mill get deploy {name})");
            return Ok(ExitCode::SUCCESS);
        }
        follow(&client, args.namespace, answer).await
    })
}

fn print_diff(body: &Value) {
    for change in body["changes"].as_array().into_iter().flatten() {
        let kind = change["kind"].as_str().unwrap_or_default();
        let name = change["name"].as_str().unwrap_or_default();
        let what = match change["change"].as_str().unwrap_or_default() {
            "new" => "will be created",
            "unchanged" => "unchanged",
            "rollout" => "will roll out a new revision",
            "scale" => "will be updated in place",
            "routes" => "routes will be updated",
            "changed" => "will be replaced",
            "removed" => "will be removed",
            other => other,
        };
        let prefix = if kind == "task" { "task " } else { "" };
        println!("  {prefix}{name}: {what}");
    }
    println!("dry run: nothing was changed");
}

/// Prints the SSE stream of a deploy until its `done`. If the stream drops first, follows
/// the Deploy object it names (`x-mill-deploy`) instead, from the first event not printed.
async fn follow(
    client: &Client,
    namespace: &str,
    mut answer: reqwest::Response,
) -> anyhow::Result<ExitCode> {
    let name = answer
        .headers()
        .get(DEPLOY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut buffer = String::new();
    let mut progress = Progress::new(Words::DEPLOY);
    while let Ok(Some(chunk)) = answer.chunk().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            if let Some(code) = progress.message(&message) {
                return Ok(code);
            }
        }
    }
    let Some(name) = name else {
        anyhow::bail!(
            "lost the connection to the cluster before the deploy finished; it goes on there (see: mill get deploys)"
        );
    };
    progress.note(&format!(
        "the progress stream dropped; following {name} in the cluster"
    ));
    follow_deploy(client, namespace, &name, progress).await
}

/// Response header of `POST /v1/deploy`: the Deploy's name.
const DEPLOY_HEADER: &str = "x-mill-deploy";
/// How often a followed Deploy is read again.
const POLL: Duration = Duration::from_millis(300);
/// How many reads in a row may fail (node restarting, no leader) before giving up.
const READ_RETRIES: u32 = 100;

/// Prints the event log of the Deploy `name` (skipping what `progress` printed already)
/// until it ends; the exit code says whether it succeeded. Used by deploy (after the stream
/// dropped), restart and rollout undo, whose answers name a Deploy.
pub(super) async fn follow_deploy(
    client: &Client,
    namespace: &str,
    name: &str,
    mut progress: Progress,
) -> anyhow::Result<ExitCode> {
    let path = format!("/apis/mill.dev/v1/namespaces/{namespace}/deploys/{name}");
    let mut failures = 0;
    loop {
        match client.get::<Deploy>(&path).await {
            Ok(deploy) => {
                failures = 0;
                let status = deploy.status.unwrap_or_default();
                for event in status.events.iter().skip(progress.seen) {
                    let (kind, data) = event_data(event);
                    progress.event(kind, &data);
                }
                if status.phase != DeployPhase::Running {
                    let success = status.phase == DeployPhase::Succeeded;
                    let data =
                        json!({"elapsed": status.elapsed.unwrap_or(0.0), "success": success});
                    if let Some(code) = progress.event("done", &data) {
                        return Ok(code);
                    }
                }
            }
            Err(ClientError::Unreachable(..) | ClientError::Status(502..=504, _))
                if failures < READ_RETRIES =>
            {
                failures += 1;
            }
            Err(err) => {
                progress.finish();
                return Err(anyhow::Error::new(err).context(format!(
                    "cannot follow {name}; it goes on in the cluster (see: mill get deploy {name})"
                )));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A Deploy event as the SSE stream renders it: the event name and its data.
fn event_data(event: &DeployEvent) -> (&'static str, Value) {
    if event.phase == "failed" {
        return (
            "failed",
            json!({"service": event.service, "reason": event.reason}),
        );
    }
    let mut data = json!({"phase": event.phase});
    if let Some(service) = &event.service {
        data["service"] = json!(service);
    }
    if let Some(node) = &event.node {
        data["node"] = json!(node);
    }
    if let Some(elapsed) = event.elapsed {
        data["elapsed"] = json!(elapsed);
    }
    ("progress", data)
}

/// How the end of a followed rollout is worded.
pub(super) struct Words {
    /// Success, followed by the elapsed time: `deployed (4.2s)`.
    pub done: &'static str,
    /// Every service failed.
    pub failed: &'static str,
    /// Some services failed.
    pub partial: &'static str,
}

impl Words {
    /// `mill deploy`'s words (SPEC §8).
    pub const DEPLOY: Words = Words {
        done: "deployed",
        failed: "deploy failed",
        partial: "deploy finished with errors",
    };
}

/// What the stream said so far, and how it is shown: one line per step, and on a terminal
/// also a spinner per service with its latest step and elapsed time.
pub(super) struct Progress {
    words: Words,
    services: BTreeSet<String>,
    failed: BTreeSet<String>,
    /// How many events (`progress`, `failed`) were handled: where a reattach resumes.
    seen: usize,
    live: Option<Live>,
}

/// The spinners of a terminal.
struct Live {
    bars: MultiProgress,
    by_service: BTreeMap<String, ProgressBar>,
}

impl Progress {
    /// A fresh display; spinners only when stderr is a terminal.
    pub(super) fn new(words: Words) -> Progress {
        let live = std::io::stderr().is_terminal().then(|| Live {
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            by_service: BTreeMap::new(),
        });
        Progress {
            words,
            services: BTreeSet::new(),
            failed: BTreeSet::new(),
            seen: 0,
            live,
        }
    }

    /// Prints one SSE message; the exit code once it was `done`.
    fn message(&mut self, message: &str) -> Option<ExitCode> {
        let mut event = "message";
        let mut data = String::new();
        for line in message.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim());
            }
        }
        let data: Value = serde_json::from_str(&data).unwrap_or_default();
        self.event(event, &data)
    }

    /// A line for the operator that is not a step (on stderr).
    fn note(&mut self, text: &str) {
        match &self.live {
            Some(live) => live.bars.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// One step's line on stdout (above the spinners), and the service's spinner updated.
    fn line(&mut self, service: &str, line: String, step: &str) {
        match &mut self.live {
            Some(live) => {
                live.bars.suspend(|| println!("{line}"));
                if !service.is_empty() {
                    let bar = live
                        .by_service
                        .entry(service.to_string())
                        .or_insert_with(|| {
                            let style = ProgressStyle::with_template(
                                "{spinner} {prefix}: {msg} [{elapsed}]",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_spinner());
                            let bar = ProgressBar::new_spinner()
                                .with_style(style)
                                .with_prefix(service.to_string())
                                .with_message(step.to_string());
                            let bar = live.bars.add(bar);
                            bar.enable_steady_tick(Duration::from_millis(120));
                            bar
                        });
                    bar.set_message(step.to_string());
                }
            }
            None => println!("{line}"),
        }
    }

    /// Takes the spinners away.
    fn finish(&mut self) {
        if let Some(live) = self.live.take() {
            for bar in live.by_service.values() {
                bar.finish_and_clear();
            }
            let _ = live.bars.clear();
        }
    }

    /// Prints one event; the exit code once it was `done`.
    pub(super) fn event(&mut self, event: &str, data: &Value) -> Option<ExitCode> {
        let service = data["service"].as_str().unwrap_or_default().to_string();
        match event {
            "progress" => {
                self.seen += 1;
                if !service.is_empty() {
                    self.services.insert(service.clone());
                }
                if let Some(step) = progress_step(data) {
                    self.line(&service, format!("  {service}: {step}"), &step);
                }
                None
            }
            "failed" => {
                self.seen += 1;
                self.services.insert(service.clone());
                self.failed.insert(service.clone());
                let reason = data["reason"].as_str().unwrap_or("no reason given");
                self.line(&service, format!("  {service}: failed: {reason}"), "failed");
                None
            }
            "done" => {
                self.finish();
                let elapsed = data["elapsed"].as_f64().unwrap_or(0.0);
                if data["success"].as_bool() == Some(true) {
                    println!("{} ({elapsed:.1}s)", self.words.done);
                    Some(ExitCode::SUCCESS)
                } else {
                    if self.failed.len() < self.services.len() {
                        println!("{}", self.words.partial);
                    } else {
                        println!("{}", self.words.failed);
                    }
                    Some(ExitCode::FAILURE)
                }
            }
            _ => None,
        }
    }
}

fn progress_step(data: &Value) -> Option<String> {
    let text = match data["phase"].as_str()? {
        "scheduled" => format!("scheduled on {}", data["node"].as_str().unwrap_or("a node")),
        "pulling" => "pulling the image".to_string(),
        "starting" => "starting".to_string(),
        "healthy" => format!("healthy ({:.1}s)", data["elapsed"].as_f64().unwrap_or(0.0)),
        "routed" => "routed".to_string(),
        "stopped" => "old instance stopped".to_string(),
        "rolling_back" => "rolling back".to_string(),
        "rolled_back" => "rolled back".to_string(),
        "removed" => "removed".to_string(),
        "unchanged" => "unchanged".to_string(),
        _ => return None,
    };
    Some(text)
}

/// `mill apply -f FILE`: a `.mill` deploys; `.yaml`/`.yml`/`.json` manifests of mill kinds
/// are created (or replaced) through the Kubernetes-shaped API.
pub fn apply(args: &DeployArgs<'_>) -> anyhow::Result<ExitCode> {
    let extension = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    if !matches!(extension, "yaml" | "yml" | "json") {
        return deploy(args);
    }
    let client = Client::new(args.address, args.token)?;
    let text = std::fs::read_to_string(args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document)
            .with_context(|| format!("{} is not valid YAML/JSON", args.file.display()))?;
        if value.is_null() {
            continue;
        }
        objects.push(serde_json::to_value(value)?);
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        for object in objects {
            apply_object(&client, args.namespace, object).await?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn apply_object(client: &Client, namespace: &str, mut object: Value) -> anyhow::Result<()> {
    let api_version = object["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    if api_version != "mill.dev/v1" {
        anyhow::bail!(
            "mill apply takes manifests of mill kinds (apiVersion mill.dev/v1), not {api_version:?} {kind}; use kubectl for others"
        );
    }
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("a {kind} manifest has no metadata.name"))?
        .to_string();
    let plural = format!("{}s", kind.to_lowercase());
    let collection = if kind == "Node" {
        format!("/apis/mill.dev/v1/{plural}")
    } else {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(namespace)
            .to_string();
        object["metadata"]["namespace"] = Value::String(ns.clone());
        format!("/apis/mill.dev/v1/namespaces/{ns}/{plural}")
    };
    let created = client
        .send_raw(client.request(Method::POST, &collection).json(&object))
        .await?;
    let label = format!("{}/{name}", kind.to_lowercase());
    match created.status().as_u16() {
        200 | 201 => {
            println!("{label} created");
            return Ok(());
        }
        401 => return Err(ClientError::Unauthorized.into()),
        409 => {}
        code => anyhow::bail!("{label}: HTTP {code}: {}", status_message(created).await),
    }
    let url = format!("{collection}/{name}");
    let current: Value = client.get(&url).await?;
    object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    let replaced = client
        .send_raw(client.request(Method::PUT, &url).json(&object))
        .await?;
    if replaced.status().is_success() {
        println!("{label} configured");
        Ok(())
    } else {
        let code = replaced.status().as_u16();
        anyhow::bail!("{label}: HTTP {code}: {}", status_message(replaced).await)
    }
}

async fn status_message(answer: reqwest::Response) -> String {
    let body: Value = answer.json().await.unwrap_or_default();
    body["message"]
        .as_str()
        .unwrap_or("no reason given")
        .to_string()
}
