//! Watch streams: newline-delimited `{"type", "object"}` events, chunked and flushed one
//! per event, with Kubernetes' resourceVersion semantics.
//!
//! - rv unset or `0`: a synthetic ADDED per current match, then live events;
//!   `N`: only events after `N`; older than the store's window: HTTP 200 and an
//!   in-stream ERROR `Status` 410 Expired (kube-rs relists on it).
//! - `sendInitialEvents=true`: the current state as ADDED, then a BOOKMARK annotated
//!   `k8s.io/initial-events-end`.
//! - Selectors apply per event; an object that stops matching is DELETED for this
//!   watcher, one that starts matching is ADDED.
//! - Bookmarks (when allowed) every `bookmark_interval`, at the rv of the last event
//!   this watch has seen, so a client resuming from one misses nothing.

use super::crud::present;
use super::objects::{meta_str, name_of};
use super::request::{flag, Params, Representation};
use super::resources::ResourceKind;
use super::selectors::Selectors;
use super::status::ApiError;
use super::{table, ApiState};
use crate::store::{EventType, Rv, Watch};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events buffered per watcher before the producer waits for the client.
const BUFFER: usize = 64;

/// One watch, as the producer task runs it.
struct Watcher {
    state: Arc<ApiState>,
    kind: ResourceKind,
    selectors: Selectors,
    representation: Representation,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    /// Keys of objects this client currently sees as matching.
    visible: HashSet<(Option<String>, String)>,
    /// Events at or below this rv were not tracked precisely (a watch from rv N): one
    /// that does not match may still have matched before, so it is sent as DELETED.
    uncertain_until: Rv,
    /// The rv of the last event this watch has processed.
    last_rv: Rv,
}

fn identity(obj: &Value) -> (Option<String>, String) {
    (
        meta_str(obj, "namespace").map(str::to_string),
        name_of(obj).unwrap_or_default().to_string(),
    )
}

/// One event as the client reads it, encoded straight from the borrowed object.
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    object: &'a Value,
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&Line { event_type, object }).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn stream_response(rx: mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Starts a watch and returns its streaming response.
pub async fn serve(
    state: Arc<ApiState>,
    kind: ResourceKind,
    namespace: Option<String>,
    params: &Params,
    selectors: Selectors,
    representation: Representation,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let resource = kind.store_resource();
    let send_initial = flag(&params.send_initial_events);
    let requested: Option<Rv> = match params.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    if params.resource_version.is_none() {
        store
            .read_barrier()
            .await
            .map_err(|e| ApiError::from_store(e, &kind, ""))?;
    }
    // The initial state, when the client asked for it (rv unset/0, or sendInitialEvents).
    let initial = if requested.is_none() || send_initial {
        let (items, rv) = store.list(&resource, namespace.as_deref());
        Some((items, rv.max(requested.unwrap_or(0))))
    } else {
        None
    };
    let start = initial
        .as_ref()
        .map_or(requested.unwrap_or(0), |(_, rv)| *rv);
    let (tx, rx) = mpsc::channel(BUFFER);
    let watch = match store.watch(&resource, namespace.as_deref(), start) {
        Ok(watch) => watch,
        Err(expired) => {
            let status = ApiError::expired(expired.to_string()).to_status();
            // The channel is fresh and has room: this send cannot fail.
            let _ = tx.try_send(Ok(line("ERROR", &status)));
            return Ok(stream_response(rx));
        }
    };
    let mut watcher = Watcher {
        state: state.clone(),
        kind,
        selectors,
        representation,
        tx,
        visible: HashSet::new(),
        uncertain_until: 0,
        last_rv: start,
    };
    let bookmarks = flag(&params.allow_watch_bookmarks);
    let timeout = params.timeout_seconds.map(Duration::from_secs);
    let seed = match initial {
        Some((items, _)) => Seed::Initial(
            items.into_iter().map(|o| (*o).clone()).collect(),
            send_initial,
        ),
        None if !watcher.selectors.is_everything() => {
            let (items, rv) = store.list(&resource, namespace.as_deref());
            Seed::Visible(items.into_iter().map(|o| (*o).clone()).collect(), rv)
        }
        None => Seed::Nothing,
    };
    tokio::spawn(async move {
        watcher.run(watch, seed, bookmarks, timeout).await;
    });
    Ok(stream_response(rx))
}

/// What a watch starts from.
enum Seed {
    /// Send these as ADDED (and, if the flag is set, an initial-events-end bookmark).
    Initial(Vec<Value>, bool),
    /// A watch from rv N with selectors: these (current, at rv) are taken as visible.
    Visible(Vec<Value>, Rv),
    /// Nothing to seed.
    Nothing,
}

impl Watcher {
    fn render<'a>(&self, obj: &'a Value) -> std::borrow::Cow<'a, Value> {
        use std::borrow::Cow;
        match self.representation {
            Representation::Object => Cow::Borrowed(obj),
            Representation::Metadata => Cow::Owned(table::partial_metadata(obj)),
            Representation::Table => {
                let rv = meta_str(obj, "resourceVersion")
                    .unwrap_or_default()
                    .to_string();
                Cow::Owned(table::table(&self.kind, &[obj], &rv, None))
            }
        }
    }

    async fn send(&self, event_type: &str, obj: &Value) -> bool {
        self.tx
            .send(Ok(line(event_type, &self.render(obj))))
            .await
            .is_ok()
    }

    async fn bookmark(&self, initial_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": self.last_rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.kind.kind,
            "apiVersion": self.kind.api_version(),
            "metadata": metadata,
        });
        self.tx.send(Ok(line("BOOKMARK", &object))).await.is_ok()
    }

    async fn error(&self, err: ApiError) {
        let _ = self.tx.send(Ok(line("ERROR", &err.to_status()))).await;
    }

    async fn run(
        &mut self,
        mut watch: Watch,
        seed: Seed,
        bookmarks: bool,
        timeout: Option<Duration>,
    ) {
        match seed {
            Seed::Initial(items, initial_end_bookmark) => {
                for item in items {
                    let obj = match present(&self.state, &self.kind, &item) {
                        Ok(obj) => obj,
                        Err(err) => return self.error(err).await,
                    };
                    if self.selectors.matches(&obj) {
                        self.visible.insert(identity(&obj));
                        if !self.send("ADDED", &obj).await {
                            return;
                        }
                    }
                }
                if initial_end_bookmark && !self.bookmark(true).await {
                    return;
                }
            }
            Seed::Visible(items, rv) => {
                for item in items {
                    if let Ok(obj) = present(&self.state, &self.kind, &item) {
                        if self.selectors.matches(&obj) {
                            self.visible.insert(identity(&obj));
                        }
                    }
                }
                self.uncertain_until = rv;
            }
            Seed::Nothing => {}
        }
        let interval = self.state.tuning.bookmark_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until_deadline);
        loop {
            tokio::select! {
                event = watch.next() => {
                    let Some(event) = event else { return };
                    self.last_rv = self.last_rv.max(event.rv);
                    let obj = match present(&self.state, &self.kind, &event.object) {
                        Ok(obj) => obj,
                        Err(err) => return self.error(err).await,
                    };
                    if !self.deliver(event.kind, event.rv, &obj).await {
                        return;
                    }
                }
                _ = ticker.tick(), if bookmarks => {
                    if !self.bookmark(false).await {
                        return;
                    }
                }
                _ = &mut until_deadline => return,
                _ = self.tx.closed() => return,
            }
        }
    }

    /// Sends one store event as this watcher sees it; false once the client is gone.
    async fn deliver(&mut self, kind: EventType, rv: Rv, obj: &Value) -> bool {
        let id = identity(obj);
        let matches = self.selectors.matches(obj);
        let was_visible = self.visible.contains(&id);
        let maybe_visible = was_visible || rv <= self.uncertain_until;
        match (kind, matches) {
            (EventType::Deleted, _) => {
                self.visible.remove(&id);
                if matches || maybe_visible {
                    return self.send("DELETED", obj).await;
                }
                true
            }
            (_, true) => {
                self.visible.insert(id);
                let event_type = if was_visible || (kind == EventType::Modified && maybe_visible) {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                self.send(event_type, obj).await
            }
            (_, false) => {
                self.visible.remove(&id);
                if maybe_visible {
                    return self.send("DELETED", obj).await;
                }
                true
            }
        }
    }
}
