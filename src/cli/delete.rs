//! `mill delete KIND NAME`: deletes one object through the Kubernetes-shaped API (a
//! Service is drained by the controllers first; its finalizer keeps it until then).

use super::client::{Client, ClientError};
use super::get;
use reqwest::Method;
use serde_json::Value;

/// `mill delete`.
pub async fn run(client: &Client, kind: &str, name: &str, namespace: &str) -> anyhow::Result<()> {
    let kind = get::resolve(client, kind).await?;
    let request = client.request(Method::DELETE, &kind.object(namespace, name));
    let _: Value = client.json(request).await.map_err(|e| match e {
        ClientError::NotFound(_) => anyhow::anyhow!(
            "{} \"{name}\" not found in namespace \"{namespace}\"; mill get {} lists them",
            kind.singular,
            kind.plural
        ),
        e => e.into(),
    })?;
    println!("{} deleted", kind.name_of(name));
    Ok(())
}
