//! `mill logs NAME [-f] [-n N]` and `mill logs --all`: log lines from `/v1/logs`, which
//! fetches them from the nodes that ran the allocs. NAME is a service (its replicas
//! interleaved), an alloc or a task run. `--all` follows every service of the namespace,
//! each line prefixed by its alloc.

use super::client::Client;
use super::output::Format;
use futures_util::stream::{self, BoxStream, StreamExt};
use reqwest::Method;
use serde_json::Value;
use std::io::Write;

/// What `mill logs` was asked.
pub struct LogsArgs<'a> {
    /// `NAME` (absent with `--all`).
    pub name: Option<&'a str>,
    /// `--all`.
    pub all: bool,
    /// `-f`.
    pub follow: bool,
    /// `-n N`.
    pub tail: Option<usize>,
    /// `-n`/`--namespace` of the global flags.
    pub namespace: &'a str,
    /// `--json`: the lines as the API sends them.
    pub format: Format,
}

/// `mill logs`.
pub async fn run(client: &Client, args: &LogsArgs<'_>) -> anyhow::Result<()> {
    let names: Vec<String> = match (args.name, args.all) {
        (Some(name), _) => vec![name.to_string()],
        (None, true) => {
            let path = format!("/apis/mill.dev/v1/namespaces/{}/services", args.namespace);
            let list: Value = client.get(&path).await?;
            let names: Vec<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            if names.is_empty() {
                anyhow::bail!(
                    "no services in namespace \"{}\"; deploy one first",
                    args.namespace
                );
            }
            names
        }
        (None, false) => anyhow::bail!("name a service, alloc or task, or pass --all"),
    };
    let mut streams: Vec<BoxStream<'static, Result<Value, String>>> = Vec::new();
    for name in &names {
        let mut query = vec![
            ("namespace", args.namespace.to_string()),
            ("follow", args.follow.to_string()),
        ];
        if let Some(tail) = args.tail {
            query.push(("tail", tail.to_string()));
        }
        let request = client
            .request(Method::GET, &format!("/v1/logs/{name}"))
            .query(&query);
        streams.push(lines(client.send(request).await?));
    }
    let mut merged = stream::select_all(streams);
    while let Some(line) = merged.next().await {
        let line =
            line.map_err(|e| anyhow::anyhow!("the log stream broke: {e}; run mill logs again"))?;
        let text = match args.format {
            Format::Json => serde_json::to_string(&line).unwrap_or_default(),
            _ if args.all => format!(
                "[{}] {}",
                line["alloc"].as_str().unwrap_or_default(),
                line["line"].as_str().unwrap_or_default()
            ),
            _ => line["line"].as_str().unwrap_or_default().to_string(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    Ok(())
}

/// The `data:` lines of an SSE answer, parsed.
fn lines(answer: reqwest::Response) -> BoxStream<'static, Result<Value, String>> {
    let state = (
        answer,
        Vec::<u8>::new(),
        std::collections::VecDeque::new(),
        false,
    );
    stream::unfold(
        state,
        |(mut answer, mut buffer, mut ready, mut done)| async move {
            loop {
                if let Some(line) = ready.pop_front() {
                    return Some((line, (answer, buffer, ready, done)));
                }
                if done {
                    return None;
                }
                match answer.chunk().await {
                    Ok(Some(chunk)) => buffer.extend_from_slice(&chunk),
                    Ok(None) => done = true,
                    Err(e) => {
                        ready.push_back(Err(e.to_string()));
                        done = true;
                    }
                }
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let raw: Vec<u8> = buffer.drain(..=end).collect();
                    let raw = String::from_utf8_lossy(&raw);
                    if let Some(data) = raw.trim_end_matches(['\r', '\n']).strip_prefix("data:") {
                        if let Ok(value) = serde_json::from_str::<Value>(data.trim_start()) {
                            ready.push_back(Ok(value));
                        }
                    }
                }
            }
        },
    )
    .boxed()
}
