//! Pulling images from OCI registries (oci-client) into containerd's content store, then
//! recording and unpacking them. One pull per image at a time: concurrent requests for
//! the same image wait for the one in flight.

use crate::image::{self, ImageError, Unpacked};
use crate::runtime::{Containerd, RuntimeError};
use futures::future::{BoxFuture, FutureExt, Shared};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{self as media, OciDescriptor};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use oci_spec::image::{ImageIndex, ImageManifest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a pull's lease protects half-written content if the agent dies mid-pull.
const LEASE_TTL: Duration = Duration::from_secs(3600);

/// Why a pull failed, as the alloc's reason shows it after `image pull failed: `.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PullError(pub String);

impl From<ImageError> for PullError {
    fn from(e: ImageError) -> Self {
        PullError(e.to_string())
    }
}

impl From<RuntimeError> for PullError {
    fn from(e: RuntimeError) -> Self {
        PullError(e.to_string())
    }
}

type InFlight = Shared<BoxFuture<'static, Result<Unpacked, PullError>>>;

/// Pulls images for one node.
#[derive(Clone)]
pub struct Puller {
    runtime: Containerd,
    insecure: Arc<Vec<String>>,
    in_flight: Arc<Mutex<HashMap<String, InFlight>>>,
}

impl Puller {
    /// A puller into `runtime`; `insecure` registries (`HOST:PORT`) are spoken to over
    /// plain HTTP, as are registries on loopback.
    pub fn new(runtime: Containerd, insecure: Vec<String>) -> Puller {
        Puller {
            runtime,
            insecure: Arc::new(insecure),
            in_flight: Arc::default(),
        }
    }

    /// Pulls `image` (canonical name) unless another pull of it is in flight, in which
    /// case this waits for that one.
    pub async fn pull(&self, image: &str, auth: RegistryAuth) -> Result<Unpacked, PullError> {
        let shared = {
            // The map is only touched in these short, non-async sections.
            let mut map = self
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(existing) = map.get(image) {
                existing.clone()
            } else {
                let this = self.clone();
                let name = image.to_string();
                let fut = async move { this.pull_now(&name, &auth).await }
                    .boxed()
                    .shared();
                map.insert(image.to_string(), fut.clone());
                fut
            }
        };
        let result = shared.await;
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(image);
        result
    }

    fn client_for(&self, reference: &Reference) -> oci_client::Client {
        let registry = reference.resolve_registry().to_string();
        let protocol = if is_loopback(&registry) || self.insecure.contains(&registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        oci_client::Client::new(ClientConfig {
            protocol,
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            ..Default::default()
        })
    }

    async fn pull_now(&self, name: &str, auth: &RegistryAuth) -> Result<Unpacked, PullError> {
        let reference: Reference = name
            .parse()
            .map_err(|e: oci_client::ParseError| PullError(format!("invalid reference: {e}")))?;
        let client = self.client_for(&reference);
        let lease = self.runtime.lease_create(LEASE_TTL).await?;
        let result = self.fetch(&client, &reference, auth, &lease).await;
        self.runtime.lease_delete(&lease).await;
        result
    }

    async fn fetch(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        auth: &RegistryAuth,
        lease: &str,
    ) -> Result<Unpacked, PullError> {
        let accepted = [
            media::OCI_IMAGE_MEDIA_TYPE,
            media::IMAGE_MANIFEST_MEDIA_TYPE,
            media::OCI_IMAGE_INDEX_MEDIA_TYPE,
            media::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ];
        let (top_bytes, top_digest) = client
            .pull_manifest_raw(reference, auth, &accepted)
            .await
            .map_err(registry_error)?;
        verify(&top_bytes, &top_digest)?;
        let top_type = media_type_of(&top_bytes);
        let mut index_entry = None;
        let (manifest_bytes, manifest_digest) = if image::is_index(&top_type, &top_bytes) {
            let index: ImageIndex = serde_json::from_slice(&top_bytes)
                .map_err(|e| PullError(format!("malformed index: {e}")))?;
            let (position, chosen) = index
                .manifests()
                .iter()
                .enumerate()
                .find(|(_, d)| {
                    d.platform().as_ref().is_none_or(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .ok_or_else(|| PullError("no linux/amd64 variant in the image index".into()))?;
            index_entry = Some(position);
            let by_digest = reference.clone_with_digest(chosen.digest().to_string());
            let (bytes, digest) = client
                .pull_manifest_raw(&by_digest, auth, &accepted)
                .await
                .map_err(registry_error)?;
            verify(&bytes, &digest)?;
            (bytes, digest)
        } else {
            (top_bytes.clone(), top_digest.clone())
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| PullError(format!("malformed manifest: {e}")))?;
        let blobs = std::iter::once(manifest.config()).chain(manifest.layers().iter());
        for blob in blobs {
            let digest = blob.digest().to_string();
            if self.runtime.content_exists(&digest).await? {
                continue;
            }
            let descriptor = OciDescriptor {
                media_type: blob.media_type().to_string(),
                digest: digest.clone(),
                size: blob.size() as i64,
                ..Default::default()
            };
            let stream = client
                .pull_blob_stream(reference, &descriptor)
                .await
                .map_err(registry_error)?;
            self.runtime
                .content_write(
                    Some(lease),
                    &digest,
                    blob.size() as i64,
                    HashMap::new(),
                    stream.stream,
                )
                .await
                .map_err(digest_error)?;
        }
        let manifest_type = media_type_of(&manifest_bytes);
        self.runtime
            .content_write(
                Some(lease),
                &manifest_digest,
                manifest_bytes.len() as i64,
                image::manifest_labels(&manifest),
                once(manifest_bytes.clone()),
            )
            .await?;
        if let Some(position) = index_entry {
            let labels = HashMap::from([(
                format!("containerd.io/gc.ref.content.m.{position}"),
                manifest_digest.clone(),
            )]);
            self.runtime
                .content_write(
                    Some(lease),
                    &top_digest,
                    top_bytes.len() as i64,
                    labels,
                    once(top_bytes.clone()),
                )
                .await?;
        }
        let name = reference.whole();
        let unpacked = image::unpack(&self.runtime, Some(lease), &name, &manifest).await?;
        let target = match index_entry {
            Some(_) => containerd_client::types::Descriptor {
                media_type: top_type,
                digest: top_digest,
                size: top_bytes.len() as i64,
                annotations: HashMap::new(),
            },
            None => containerd_client::types::Descriptor {
                media_type: manifest_type,
                digest: manifest_digest,
                size: manifest_bytes.len() as i64,
                annotations: HashMap::new(),
            },
        };
        self.runtime.image_put(&name, target).await?;
        Ok(unpacked)
    }
}

/// A one-chunk stream.
pub(crate) fn once(
    bytes: Vec<u8>,
) -> futures::stream::Iter<std::vec::IntoIter<Result<bytes::Bytes, std::io::Error>>> {
    futures::stream::iter(vec![Ok(bytes::Bytes::from(bytes))])
}

/// The `mediaType` a manifest declares (docker v2 schema 2 if it declares none).
fn media_type_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
        .unwrap_or_else(|| media::OCI_IMAGE_MEDIA_TYPE.to_string())
}

fn verify(bytes: &[u8], digest: &str) -> Result<(), PullError> {
    let actual = image::sha256(bytes);
    if digest.starts_with("sha256:") && actual != digest {
        return Err(PullError(format!(
            "digest mismatch: the registry sent {actual} for {digest}"
        )));
    }
    Ok(())
}

/// Whether a registry host is on loopback (`127.0.0.0/8`, `localhost`, `[::1]`).
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The registry's own words: `manifest unknown: manifest unknown` rather than a URL dump.
fn registry_error(e: oci_client::errors::OciDistributionError) -> PullError {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::RegistryError { envelope, .. } => PullError(
            envelope
                .errors
                .iter()
                .map(|err| {
                    let code = serde_json::to_value(&err.code)
                        .ok()
                        .and_then(|v| v.as_str().map(|s| s.to_lowercase().replace('_', " ")))
                        .unwrap_or_else(|| "error".into());
                    format!("{code}: {}", err.message)
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        E::ImageManifestNotFoundError(m) => PullError(format!("manifest unknown: {m}")),
        E::ServerError { code, message, .. } => {
            PullError(format!("registry answered {code}: {message}"))
        }
        E::AuthenticationFailure(m) => PullError(format!("unauthorized: {m}")),
        E::RequestError(e) => PullError(format!("cannot reach the registry: {e}")),
        other => PullError(other.to_string()),
    }
}

fn digest_error(e: RuntimeError) -> PullError {
    match &e {
        RuntimeError::Rpc { message, .. } if message.contains("unexpected commit digest") => {
            PullError(format!("digest mismatch: {message}"))
        }
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for (host, want) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("127.3.4.5", true),
            ("[::1]:5000", true),
            ("registry.example.com", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(is_loopback(host), want, "{host}");
        }
    }
}
