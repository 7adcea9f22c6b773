//! Images in containerd: names, manifests, unpacking layers into snapshots, and reading
//! back what a container needs (its config and top snapshot). Shared by pull and import.

use crate::runtime::{Containerd, RuntimeError};
use containerd_client::types::Descriptor;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Index and manifest media types the agent understands.
pub(crate) const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// What a container needs from its image.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// The image's config (entrypoint, cmd, env, workdir, user).
    pub config: ImageConfiguration,
    /// The chain id of the top layer: the parent of the container's snapshot.
    pub chain_id: String,
}

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference {0:?}: {1}")]
    Reference(String, String),
    /// A manifest or config is malformed.
    #[error("malformed image {0}: {1}")]
    Malformed(String, String),
    /// No linux/amd64 manifest in an index.
    #[error("image {0} has no linux/amd64 variant")]
    NoPlatform(String),
    /// containerd failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The canonical name of an image reference (`busybox` → `docker.io/library/busybox:latest`),
/// the name image records are stored and looked up under.
pub fn canonical(image: &str) -> Result<String, ImageError> {
    let reference: oci_client::Reference = image
        .parse()
        .map_err(|e: oci_client::ParseError| ImageError::Reference(image.into(), e.to_string()))?;
    Ok(reference.whole())
}

/// `sha256:<hex>` of bytes.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The chain ids of a stack of layers (`chain(0) = diff(0)`,
/// `chain(n) = sha256(chain(n-1) + " " + diff(n))`), the names of their snapshots.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => sha256(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Whether a media type (or a blob's content) is an index.
pub(crate) fn is_index(media_type: &str, blob: &[u8]) -> bool {
    INDEX_TYPES.contains(&media_type)
        || serde_json::from_slice::<serde_json::Value>(blob)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some())
}

/// The linux/amd64 manifest of an index (an entry without platform counts as a match,
/// as single-platform indexes written by tools often have none).
pub(crate) fn select_platform(index: &ImageIndex) -> Option<&oci_spec::image::Descriptor> {
    let matches = |d: &&oci_spec::image::Descriptor| match d.platform() {
        Some(p) => p.os().to_string() == "linux" && p.architecture().to_string() == "amd64",
        None => true,
    };
    index.manifests().iter().find(matches)
}

/// A containerd descriptor from an OCI one.
pub(crate) fn descriptor(d: &oci_spec::image::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: d.size() as i64,
        annotations: HashMap::new(),
    }
}

/// Garbage-collection labels of a manifest blob: it references its config and layers.
pub(crate) fn manifest_labels(manifest: &ImageManifest) -> HashMap<String, String> {
    let mut labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        manifest.config().digest().to_string(),
    )]);
    for (i, layer) in manifest.layers().iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest().to_string(),
        );
    }
    labels
}

/// Unpacks the manifest's layers into snapshots (skipping those that exist) and labels
/// the config with its top snapshot so neither is collected while the image exists.
pub async fn unpack(
    rt: &Containerd,
    lease: Option<&str>,
    name: &str,
    manifest: &ImageManifest,
) -> Result<Unpacked, ImageError> {
    let config_digest = manifest.config().digest().to_string();
    let config_bytes = rt.content_read(&config_digest).await?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| ImageError::Malformed(name.into(), format!("config: {e}")))?;
    let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::Malformed(
            name.into(),
            format!(
                "{} layers but {} diff ids",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let chains = chain_ids(&diff_ids);
    let mut parent = String::new();
    for (layer, chain) in manifest.layers().iter().zip(&chains) {
        if !rt.snapshot_exists(chain).await? {
            let key = format!("extract-{}-{chain}", uuid::Uuid::new_v4());
            let mounts = rt.snapshot_prepare(lease, &key, &parent).await?;
            let applied = rt.diff_apply(lease, descriptor(layer), mounts).await;
            if let Err(e) = applied {
                rt.snapshot_remove(&key).await;
                return Err(e.into());
            }
            rt.snapshot_commit(lease, chain, &key).await?;
        }
        parent = chain.clone();
    }
    let top = chains.last().cloned().unwrap_or_default();
    if !top.is_empty() {
        rt.content_label(
            &config_digest,
            HashMap::from([(
                format!(
                    "containerd.io/gc.ref.snapshot.{}",
                    crate::runtime::containerd::SNAPSHOTTER
                ),
                top.clone(),
            )]),
        )
        .await?;
    }
    Ok(Unpacked {
        config,
        chain_id: top,
    })
}

/// What [`resolve`] found per image name: the image record's target digest and what it
/// unpacked to. A start of an image resolved before costs one round trip (the image record
/// and the top snapshot, read at once) instead of reading the manifest and config and
/// labelling the config again (benches/README.md, rolling update).
#[derive(Debug, Default)]
pub struct Cache {
    entries: std::sync::Mutex<HashMap<String, (String, Unpacked)>>,
}

impl Cache {
    fn get(&self, name: &str) -> Option<(String, Unpacked)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(name).cloned()
    }

    fn put(&self, name: &str, digest: String, unpacked: Unpacked) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(name.to_string(), (digest, unpacked));
    }

    fn forget(&self, name: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(name);
    }
}

/// [`resolve`], remembering the answer in `cache`: an image whose record still names the
/// same target and whose top snapshot still exists is not read again. Anything else (a new
/// pull or import moved the name, the snapshot was removed) resolves in full.
pub async fn resolve_cached(
    rt: &Containerd,
    cache: &Cache,
    name: &str,
) -> Result<Option<Unpacked>, ImageError> {
    if let Some((digest, unpacked)) = cache.get(name) {
        let (target, snapshot) =
            tokio::join!(rt.image_get(name), rt.snapshot_exists(&unpacked.chain_id));
        match (target?, snapshot?) {
            (Some(target), true) if target.digest == digest => return Ok(Some(unpacked)),
            (None, _) => {
                cache.forget(name);
                return Ok(None);
            }
            _ => cache.forget(name),
        }
    }
    let Some(target) = rt.image_get(name).await? else {
        return Ok(None);
    };
    let resolved = resolve_target(rt, name, &target).await?;
    cache.put(name, target.digest.clone(), resolved.clone());
    Ok(Some(resolved))
}

/// The image's config and top snapshot if the image is present (unpacking it if its
/// snapshots are gone); `None` if containerd has no such image.
pub async fn resolve(rt: &Containerd, name: &str) -> Result<Option<Unpacked>, ImageError> {
    let Some(target) = rt.image_get(name).await? else {
        return Ok(None);
    };
    Ok(Some(resolve_target(rt, name, &target).await?))
}

/// What the image record's `target` unpacks to.
async fn resolve_target(
    rt: &Containerd,
    name: &str,
    target: &Descriptor,
) -> Result<Unpacked, ImageError> {
    let mut manifest_digest = target.digest.clone();
    let mut blob = rt.content_read(&manifest_digest).await?;
    if is_index(&target.media_type, &blob) {
        let index: ImageIndex = serde_json::from_slice(&blob)
            .map_err(|e| ImageError::Malformed(name.into(), format!("index: {e}")))?;
        let chosen = select_platform(&index).ok_or_else(|| ImageError::NoPlatform(name.into()))?;
        manifest_digest = chosen.digest().to_string();
        blob = rt.content_read(&manifest_digest).await?;
    }
    let manifest: ImageManifest = serde_json::from_slice(&blob)
        .map_err(|e| ImageError::Malformed(name.into(), format!("manifest: {e}")))?;
    unpack(rt, None, name, &manifest).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let diffs = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let chains = chain_ids(&diffs);
        assert_eq!(chains[0], "sha256:a");
        assert_eq!(chains[1], sha256(b"sha256:a sha256:b"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn names_are_canonical() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("127.0.0.1:5000/httpd:1", "127.0.0.1:5000/httpd:1"),
            ("mill.test/app:v2", "mill.test/app:v2"),
        ];
        for (given, want) in cases {
            assert_eq!(canonical(given).unwrap(), want, "{given}");
        }
        assert!(canonical("Bad Name").is_err());
    }
}
