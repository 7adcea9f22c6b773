//! The node-to-node RPC client: HTTP POST of JSON to `http://<api_addr>/internal/raft/*`
//! with the cluster token as bearer token. [`Network`] is openraft's `RaftNetworkFactory`;
//! [`RpcClient`] is also what the facade forwards proposals, read-index and membership
//! calls with.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::consensus::TypeConfig;
use super::db::internal;
use super::types::StoreError;

/// The routes of the node-to-node RPC (served by [`super::rpc`]).
pub(crate) mod route {
    pub const APPEND: &str = "/internal/raft/append";
    pub const VOTE: &str = "/internal/raft/vote";
    pub const SNAPSHOT: &str = "/internal/raft/snapshot";
    pub const PROPOSE: &str = "/internal/raft/propose";
    pub const READ_INDEX: &str = "/internal/raft/read-index";
    pub const ADD_VOTER: &str = "/internal/raft/add-voter";
    pub const REMOVE_MEMBER: &str = "/internal/raft/remove-member";
}

/// The header naming the sending node (for logs, and for tests that cut links).
pub const FROM_HEADER: &str = "x-mill-raft-from";

/// Why a call did not produce an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallError {
    /// The request never reached the peer (nothing happened there): safe to retry.
    #[error("cannot reach {addr}: {message}")]
    Unreachable { addr: String, message: String },
    /// The request may have reached the peer, but no valid answer came back.
    #[error("call to {addr} failed: {message}")]
    Failed { addr: String, message: String },
}

/// An HTTP client for the node RPC of one node.
#[derive(Clone)]
pub(crate) struct RpcClient {
    http: reqwest::Client,
    token: Arc<str>,
    from: u64,
}

impl RpcClient {
    pub fn new(token: &str, from: u64) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder().build().map_err(internal)?;
        Ok(RpcClient {
            http,
            token: token.into(),
            from,
        })
    }

    /// POSTs `body` to `route` on the node at `addr` and decodes the answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        route: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let failed = |message: String| CallError::Failed {
            addr: addr.to_string(),
            message,
        };
        let response = self
            .http
            .post(format!("http://{addr}{route}"))
            .bearer_auth(&self.token)
            .header(FROM_HEADER, self.from)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable {
                        addr: addr.to_string(),
                        message: crate::source_chain(&e),
                    }
                } else {
                    failed(crate::source_chain(&e))
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let message = format!("{route} answered {status}: {text}");
            // A 4xx means the route refused the call (wrong token, not served yet): nothing
            // was done there.
            return Err(if status.is_client_error() {
                CallError::Unreachable {
                    addr: addr.to_string(),
                    message,
                }
            } else {
                failed(message)
            });
        }
        response.json().await.map_err(|e| failed(e.to_string()))
    }
}

/// openraft's network: one [`Peer`] per target node, addressed by its `BasicNode::addr`.
#[derive(Clone)]
pub(crate) struct Network {
    pub rpc: RpcClient,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            rpc: self.rpc.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The Raft RPC to one peer.
pub(crate) struct Peer {
    rpc: RpcClient,
    target: u64,
    addr: String,
}

impl Peer {
    async fn raft_call<Req, Resp, E>(
        &self,
        route: &str,
        body: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<u64, E>> = self
            .rpc
            .call(&self.addr, route, body, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.raft_call(route::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.raft_call(route::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.raft_call(route::VOTE, &rpc, &option).await
    }
}
