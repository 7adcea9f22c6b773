//! The client every CLI command uses to talk to a node's `/v1` API (and, for `get` and
//! friends, its Kubernetes-shaped API): the address and token from the global flags, and
//! one place that turns transport failures and error statuses into messages a person
//! can act on (SPEC §8: never a debug dump).

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A connection to one cluster node, as the global flags name it.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// What went wrong talking to the cluster, already worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token given.
    #[error("no cluster token: set MILL_TOKEN or pass --token")]
    NoToken,
    /// The node could not be reached at all.
    #[error(
        "cannot reach the cluster ({0}): is mill running? tried {1}; set --address or MILL_ADDRESS"
    )]
    Unreachable(String, String),
    /// 401.
    #[error("the cluster refused the token: set MILL_TOKEN or pass --token")]
    Unauthorized,
    /// 404, with the server's message.
    #[error("{0}")]
    NotFound(String),
    /// 409, with the server's message.
    #[error("{0}")]
    Conflict(String),
    /// Any other non-success status.
    #[error("the cluster answered HTTP {0}: {1}")]
    Status(u16, String),
    /// A success whose body was not what the command expected.
    #[error("the cluster sent an answer this mill does not understand ({0}); are client and server the same version?")]
    Decode(String),
}

impl Client {
    /// A client for `address` (`--address`) with `token` (`--token`).
    pub fn new(address: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let token = token.ok_or(ClientError::NoToken)?.to_string();
        Ok(Client {
            base: address.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        })
    }

    /// The same cluster through another node's API (`http://IP:PORT`), e.g. to reach the
    /// node that holds an alloc's logs or runs its agent.
    pub fn at(&self, base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            ..self.clone()
        }
    }

    /// A request to `path` (starting with `/`), authenticated, not yet sent.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends `request`; a transport failure or an error status becomes a [`ClientError`].
    /// Success answers are returned unread (for streams).
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let answer = self.send_raw(request).await?;
        if answer.status().is_success() {
            return Ok(answer);
        }
        let code = answer.status();
        let message = error_message(answer).await;
        Err(match code {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized,
            StatusCode::NOT_FOUND => ClientError::NotFound(message),
            StatusCode::CONFLICT => ClientError::Conflict(message),
            _ => ClientError::Status(code.as_u16(), message),
        })
    }

    /// Sends `request`; only a transport failure is an error, every status is returned
    /// (for callers that read error bodies themselves, like `mill deploy`'s 400 details).
    pub async fn send_raw(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        request
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string(), self.base.clone()))
    }

    /// Sends a prepared `request` → JSON (for requests with a query or headers).
    pub async fn json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        json(self.send(request).await?).await
    }

    /// `GET path` → JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        json(self.send(self.request(Method::GET, path)).await?).await
    }

    /// `method path` with a JSON body → JSON (`Value::Null` for an empty body).
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        json(self.send(request).await?).await
    }
}

/// Reads a success body as JSON; an empty body reads as `null`.
async fn json<T: DeserializeOwned>(answer: Response) -> Result<T, ClientError> {
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| ClientError::Decode(e.to_string()))?;
    let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
}

/// The server's own words for an error: `/v1`'s `{error}` or a Kubernetes Status'
/// `message`, else the status line.
async fn error_message(answer: Response) -> String {
    let code = answer.status();
    let body: Value = answer.json().await.unwrap_or_default();
    body["error"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| code.to_string())
}
