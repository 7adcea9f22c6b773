//! The node-to-node routes (`/internal/raft/*`), served by every node's API server.
//!
//! Raft's own RPCs (append, vote, snapshot) hand the request to openraft and return its
//! `Result` as JSON. The forwarding routes (propose, read-index, add-voter, remove-member)
//! run on the leader only and never forward again: they answer `Done`, `Retry` (nothing
//! happened, e.g. this node is not the leader: the caller looks for the leader anew) or
//! `Failed` (an error, or an outcome that is unknown and must not be retried). Every route needs the cluster
//! token as bearer token.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::future::join_all;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use subtle::ConstantTimeEq;

use super::consensus::TypeConfig;
use super::facade::{Attempt, MemberRequest, Store};
use super::network::route;
use super::types::{Applied, Rv, Txn};

/// Raft batches and snapshot chunks are bigger than axum's default body limit.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The routes, with `store` as their state.
pub(crate) fn router(store: Store) -> Router {
    Router::new()
        .route(route::APPEND, post(append))
        .route(route::VOTE, post(vote))
        .route(route::SNAPSHOT, post(snapshot))
        .route(route::PROPOSE, post(propose))
        .route(route::READ_INDEX, post(read_index))
        .route(route::ADD_VOTER, post(add_voter))
        .route(route::REMOVE_MEMBER, post(remove_member))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(store.clone(), authorize))
        .with_state(store)
}

async fn authorize(State(store): State<Store>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(store.token().as_bytes())) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        "node RPC needs the cluster token as bearer token",
    )
        .into_response()
}

async fn append(
    State(store): State<Store>,
    Json(request): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<u64>, RaftError<u64>>> {
    Json(store.raft().append_entries(request).await)
}

async fn vote(
    State(store): State<Store>,
    Json(request): Json<VoteRequest<u64>>,
) -> Json<Result<VoteResponse<u64>, RaftError<u64>>> {
    Json(store.raft().vote(request).await)
}

async fn snapshot(
    State(store): State<Store>,
    Json(request): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>> {
    Json(store.raft().install_snapshot(request).await)
}

/// Txns forwarded together by a follower: proposed here together, so that they share the
/// leader's next entry.
async fn propose(
    State(store): State<Store>,
    Json(txns): Json<Vec<Txn>>,
) -> Json<Vec<Attempt<Applied>>> {
    Json(join_all(txns.into_iter().map(|txn| store.propose_here(txn))).await)
}

async fn read_index(State(store): State<Store>) -> Json<Attempt<Rv>> {
    Json(store.read_index_here().await)
}

async fn add_voter(
    State(store): State<Store>,
    Json(request): Json<MemberRequest>,
) -> Json<Attempt<()>> {
    Json(store.add_voter_here(request).await)
}

async fn remove_member(
    State(store): State<Store>,
    Json(request): Json<MemberRequest>,
) -> Json<Attempt<()>> {
    Json(store.remove_member_here(request.id).await)
}
