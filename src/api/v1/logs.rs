//! `GET /v1/logs/{name}?tail=N&follow=true`: log lines as Server-Sent Events
//! (`data: {"ts","stream","line","alloc"}`).
//!
//! `name` is an alloc, a service (every alloc of it, interleaved) or a task (every run of
//! it). Logs live on the node that ran the alloc, so each alloc's lines are fetched from
//! that node's agent (`/internal/agent/logs/...` on the API address its Node object
//! publishes) and passed on: without `follow`, merged in time order and cut to the last
//! `tail` lines; with `follow`, each alloc's tail and then its live lines as they come.
//! For a service, only its live allocs are read once it has any. A follow names the
//! allocs that exist when it starts.

use super::secrets::NamespaceQuery;
use crate::api::ApiState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use mill_crds::{Alloc, Node, OwnerKind};
use serde::Deserialize;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;

const ALLOCS: &str = "mill.dev/allocs";
const NODES: &str = "mill.dev/nodes";
const SERVICES: &str = "mill.dev/services";
/// Lines answered when the request names no `tail`.
const DEFAULT_TAIL: usize = 100;

/// The query.
#[derive(Debug, Deserialize)]
pub(crate) struct LogsQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// The handler.
pub(crate) async fn logs(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(namespace): Query<NamespaceQuery>,
    Query(query): Query<LogsQuery>,
) -> Response {
    let namespace = namespace.namespace().to_string();
    let allocs = match resolve(&state, &namespace, &name) {
        Ok(allocs) => allocs,
        Err(response) => return response,
    };
    let tail = query.tail.unwrap_or(DEFAULT_TAIL);
    let http = reqwest::Client::new();
    let mut streams: Vec<BoxStream<'static, String>> = Vec::new();
    let mut first_error = None;
    for (alloc, address) in &allocs {
        let url = format!(
            "http://{address}/internal/agent/logs/{namespace}/{alloc}?tail={tail}&follow={}",
            query.follow
        );
        let answer = http.get(&url).bearer_auth(&state.token).send().await;
        match answer {
            Ok(answer) if answer.status().is_success() => streams.push(data_lines(answer)),
            Ok(answer) => {
                let code = answer.status();
                let body: Value = answer.json().await.unwrap_or_default();
                let message = body["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| code.to_string());
                first_error.get_or_insert((code, message));
            }
            Err(e) => {
                first_error.get_or_insert((
                    StatusCode::BAD_GATEWAY,
                    format!("cannot reach the node at {address} that holds the logs of alloc {alloc}: {e}"),
                ));
            }
        }
    }
    if streams.is_empty() {
        let (code, message) =
            first_error.unwrap_or((StatusCode::NOT_FOUND, format!("no logs of \"{name}\" yet")));
        let code = StatusCode::from_u16(code.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        return super::error(code, message);
    }
    if query.follow {
        let events = stream::select_all(streams)
            .map(|payload| Ok::<_, Infallible>(Event::default().data(payload)));
        return Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    let mut lines: Vec<(String, String)> = Vec::new();
    for upstream in streams {
        for payload in upstream.collect::<Vec<_>>().await {
            let ts = serde_json::from_str::<Value>(&payload)
                .ok()
                .and_then(|v| v["ts"].as_str().map(str::to_string))
                .unwrap_or_default();
            lines.push((ts, payload));
        }
    }
    // Stable: lines of one alloc with the same timestamp keep their order.
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let skip = lines.len().saturating_sub(tail);
    let events: Vec<Result<Event, Infallible>> = lines
        .into_iter()
        .skip(skip)
        .map(|(_, payload)| Ok(Event::default().data(payload)))
        .collect();
    Sse::new(stream::iter(events)).into_response()
}

/// The allocs `name` stands for, each with the API address of its node.
#[allow(clippy::result_large_err)]
fn resolve(
    state: &ApiState,
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, String)>, Response> {
    let decode = |v: &Arc<Value>| serde_json::from_value::<Alloc>(Value::clone(v)).ok();
    let (stored, _) = state.store.list(ALLOCS, Some(namespace));
    let mut allocs: Vec<Alloc> = stored.iter().filter_map(decode).collect();
    allocs.sort_by(|a, b| {
        let created = |a: &Alloc| a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a).cmp(&created(b))
    });
    let named = |a: &Alloc| a.metadata.name.as_deref() == Some(name);
    let chosen: Vec<Alloc> = if allocs.iter().any(named) {
        allocs.into_iter().filter(named).collect()
    } else {
        let owned: Vec<Alloc> = allocs
            .into_iter()
            .filter(|a| {
                a.spec.owner.name == name
                    && matches!(a.spec.owner.kind, OwnerKind::Service | OwnerKind::Task)
            })
            .collect();
        // A service's current replicas, once it has any: replaced allocs linger until
        // gc, and their old lines would crowd the tail.
        let live = |a: &Alloc| !a.status.as_ref().is_some_and(|s| s.phase.is_terminal());
        let is_service = owned
            .iter()
            .any(|a| a.spec.owner.kind == OwnerKind::Service);
        if is_service && owned.iter().any(live) {
            owned.into_iter().filter(live).collect()
        } else {
            owned
        }
    };
    if chosen.is_empty() {
        let service = crate::store::Key {
            resource: SERVICES.to_string(),
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        };
        let message = if state.store.get(&service).is_some() {
            format!(
                "service \"{name}\" has no allocs yet; mill get allocs shows when they are placed"
            )
        } else {
            format!("no service, alloc or task named \"{name}\" in namespace \"{namespace}\"; mill get allocs lists them")
        };
        return Err(super::error(StatusCode::NOT_FOUND, message));
    }
    let (nodes, _) = state.store.list(NODES, None);
    let nodes: Vec<Node> = nodes
        .iter()
        .filter_map(|v| serde_json::from_value(Value::clone(v)).ok())
        .collect();
    let address_of = |node: &str| {
        nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))
            .map(|n| n.spec.api_address.clone())
    };
    let placed: Vec<(String, String)> = chosen
        .iter()
        .filter_map(|a| {
            let address = address_of(a.spec.node_name.as_deref()?)?;
            Some((a.metadata.name.clone()?, address))
        })
        .collect();
    if placed.is_empty() {
        return Err(super::error(
            StatusCode::NOT_FOUND,
            format!("\"{name}\" is not placed on a node yet; mill get allocs shows when it is"),
        ));
    }
    Ok(placed)
}

/// The `data:` payloads of an SSE answer, as they arrive.
fn data_lines(answer: reqwest::Response) -> BoxStream<'static, String> {
    let state = (
        answer,
        Vec::<u8>::new(),
        std::collections::VecDeque::<String>::new(),
    );
    stream::unfold(state, |(mut answer, mut buffer, mut ready)| async move {
        loop {
            if let Some(payload) = ready.pop_front() {
                return Some((payload, (answer, buffer, ready)));
            }
            let chunk = answer.chunk().await.ok()??;
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(payload) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") {
                    ready.push_back(payload.trim_start().to_string());
                }
            }
        }
    })
    .boxed()
}
