//! The agent's HTTP endpoints on its node's API port (token-guarded):
//! `GET /internal/agent/logs/{namespace}/{alloc}?tail=N&follow=true` (SSE of
//! `{"ts","stream","line","alloc"}`) and `POST /internal/agent/images/load` (an OCI
//! archive as the body; imported into this node's containerd).

use crate::logs::LogStore;
use crate::Ctx;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Lines a log request returns when it names no `tail`.
const DEFAULT_TAIL: usize = 100;

#[derive(Clone)]
struct EndpointState {
    token: String,
    logs: LogStore,
    runtime: watch::Receiver<Option<Arc<Ctx>>>,
}

/// The router; `runtime` becomes `Some` once containerd answers.
pub fn router(token: String, logs: LogStore, runtime: watch::Receiver<Option<Arc<Ctx>>>) -> Router {
    Router::new()
        .route(
            "/internal/agent/logs/{namespace}/{alloc}",
            get(logs_handler),
        )
        .route(
            "/internal/agent/images/load",
            post(load_handler).layer(DefaultBodyLimit::disable()),
        )
        .with_state(EndpointState {
            token,
            logs,
            runtime,
        })
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())))
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({"error": message.into()}))).into_response()
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

async fn logs_handler(
    State(state): State<EndpointState>,
    headers: HeaderMap,
    Path((namespace, alloc)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    if !authorized(&headers, &state.token) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if !state.logs.exists(&namespace, &alloc) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no logs of alloc {namespace}/{alloc} on this node"),
        );
    }
    let (lines, live) = state
        .logs
        .tail(&namespace, &alloc, query.tail.unwrap_or(DEFAULT_TAIL));
    let event = |line: &crate::logs::LogLine| {
        Ok::<_, Infallible>(Event::default().data(serde_json::to_string(line).unwrap_or_default()))
    };
    let past: Vec<Result<Event, Infallible>> = lines.iter().map(event).collect();
    let past = futures::stream::iter(past);
    match (query.follow, live) {
        (true, Some(rx)) => {
            let live = tokio_stream::wrappers::BroadcastStream::new(rx)
                .filter_map(move |l| async move { l.ok().map(|l| event(&l)) });
            Sse::new(past.chain(live))
                .keep_alive(KeepAlive::default())
                .into_response()
        }
        _ => Sse::new(past).into_response(),
    }
}

async fn load_handler(
    State(state): State<EndpointState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&headers, &state.token) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let Some(ctx) = state.runtime.borrow().clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node's containerd is not reachable; check --containerd-socket",
        );
    };
    let scratch = ctx.config.data_dir.join("tmp");
    if let Err(e) = tokio::fs::create_dir_all(&scratch).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot create {}: {e}", scratch.display()),
        );
    }
    let archive = match tempfile::NamedTempFile::new_in(&scratch) {
        Ok(f) => f.into_temp_path(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let written = async {
        let mut file = tokio::fs::File::create(&archive).await?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.map_err(std::io::Error::other)?)
                .await?;
        }
        file.flush().await
    };
    if let Err(e) = written.await {
        return error(
            StatusCode::BAD_REQUEST,
            format!("cannot receive the archive: {e}"),
        );
    }
    match crate::import::import(&ctx.runtime, &archive, &scratch).await {
        Ok(images) => Json(serde_json::json!({"images": images})).into_response(),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("image load failed: {e}"),
        ),
    }
}
