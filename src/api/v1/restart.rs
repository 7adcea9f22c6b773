//! `POST /v1/restart/{service}[?namespace=NS]`: replace every replica with a fresh
//! container, rolling, same spec (SPEC §3).
//!
//! It writes a new [`mill_controllers::RESTART_ANNOTATION`] token on the Service; the
//! rollout planner makes that a new revision with the same template and replaces the
//! replicas the zero-downtime way. The token is the name of a Deploy committed in the same
//! transaction (see `rollout`), so the restart's progress is followed like a deploy's.
//! Answers `{service, namespace, deploy}` at once.

use super::rollout::{commit_rollout, deploy_name, service_to_roll};
use super::{kept_changing, NamespaceQuery, ATTEMPTS};
use crate::api::ApiState;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::json;
use std::sync::Arc;

/// `POST /v1/restart/{service}`.
pub(crate) async fn restart(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    let store = &state.store;
    for _ in 0..ATTEMPTS {
        let (key, stored, _) = match service_to_roll(store, query.namespace(), &name).await {
            Ok(found) => found,
            Err(answer) => return *answer,
        };
        let deploy = deploy_name("restart");
        let mut updated = stored.clone();
        updated["metadata"]["annotations"][mill_controllers::RESTART_ANNOTATION] = json!(deploy);
        if let Some(answer) = commit_rollout(store, key, &stored, updated, &deploy).await {
            return answer;
        }
    }
    kept_changing(&format!("service {name}"))
}
