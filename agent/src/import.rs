//! Importing OCI image archives (a tar of an OCI image layout) into containerd: every
//! blob into the content store, an image record per named manifest, layers unpacked.

use crate::image::{self, canonical};
use crate::runtime::{Containerd, RuntimeError};
use containerd_client::types::Descriptor;
use oci_spec::image::{ImageIndex, ImageManifest};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How long an import's lease protects its content if the agent dies mid-import.
const LEASE_TTL: Duration = Duration::from_secs(3600);
/// The annotation containerd's and mill's tools name an image with.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI layout's reference annotation.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The archive cannot be read.
    #[error("cannot read the archive: {0}")]
    Archive(String),
    /// The archive is not an OCI image layout.
    #[error("not an OCI image archive: {0}")]
    Layout(String),
    /// containerd failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// An image in it is malformed.
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

/// Imports the archive at `archive`, extracting it under `scratch`; returns the names of
/// the images it recorded.
pub async fn import(
    rt: &Containerd,
    archive: &Path,
    scratch: &Path,
) -> Result<Vec<String>, ImportError> {
    std::fs::create_dir_all(scratch).map_err(|e| ImportError::Archive(e.to_string()))?;
    let dir = tempfile::tempdir_in(scratch).map_err(|e| ImportError::Archive(e.to_string()))?;
    let root = dir.path().to_path_buf();
    let source = archive.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), ImportError> {
        let file = std::fs::File::open(&source).map_err(|e| ImportError::Archive(e.to_string()))?;
        tar::Archive::new(file)
            .unpack(&root)
            .map_err(|e| ImportError::Archive(e.to_string()))
    })
    .await
    .map_err(|e| ImportError::Archive(e.to_string()))??;
    let root = dir.path();
    let index_bytes = std::fs::read(root.join("index.json"))
        .map_err(|_| ImportError::Layout("no index.json".into()))?;
    let index: ImageIndex = serde_json::from_slice(&index_bytes)
        .map_err(|e| ImportError::Layout(format!("index.json: {e}")))?;
    let lease = rt.lease_create(LEASE_TTL).await?;
    let result = import_index(rt, root, &index, &lease).await;
    rt.lease_delete(&lease).await;
    result
}

async fn import_index(
    rt: &Containerd,
    root: &Path,
    index: &ImageIndex,
    lease: &str,
) -> Result<Vec<String>, ImportError> {
    let mut names = Vec::new();
    for entry in index.manifests() {
        let annotations = entry.annotations().clone().unwrap_or_default();
        let Some(name) = annotations
            .get(CONTAINERD_NAME)
            .or_else(|| annotations.get(REF_NAME))
            .filter(|n| n.contains(':') || n.contains('/'))
        else {
            tracing::info!("skipping unnamed manifest {} in archive", entry.digest());
            continue;
        };
        let name = canonical(name)?;
        let digest = entry.digest().to_string();
        let bytes = read_blob(root, &digest)?;
        let manifest_digest;
        let manifest_bytes;
        let mut top_labels = HashMap::new();
        if image::is_index(entry.media_type().as_ref(), &bytes) {
            let nested: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| ImportError::Layout(format!("index {digest}: {e}")))?;
            let chosen = image::select_platform(&nested)
                .ok_or_else(|| image::ImageError::NoPlatform(name.clone()))?;
            let position = nested
                .manifests()
                .iter()
                .position(|d| d.digest() == chosen.digest())
                .unwrap_or(0);
            manifest_digest = chosen.digest().to_string();
            manifest_bytes = read_blob(root, &manifest_digest)?;
            top_labels.insert(
                format!("containerd.io/gc.ref.content.m.{position}"),
                manifest_digest.clone(),
            );
        } else {
            manifest_digest = digest.clone();
            manifest_bytes = bytes.clone();
        }
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ImportError::Layout(format!("manifest {manifest_digest}: {e}")))?;
        for blob in std::iter::once(manifest.config()).chain(manifest.layers().iter()) {
            let d = blob.digest().to_string();
            if rt.content_exists(&d).await? {
                continue;
            }
            let path = blob_path(root, &d)?;
            rt.content_write(
                Some(lease),
                &d,
                blob.size() as i64,
                HashMap::new(),
                file_stream(path).await?,
            )
            .await?;
        }
        rt.content_write(
            Some(lease),
            &manifest_digest,
            manifest_bytes.len() as i64,
            image::manifest_labels(&manifest),
            crate::pull::once(manifest_bytes.clone()),
        )
        .await?;
        if digest != manifest_digest {
            rt.content_write(
                Some(lease),
                &digest,
                bytes.len() as i64,
                top_labels,
                crate::pull::once(bytes.clone()),
            )
            .await?;
        }
        image::unpack(rt, Some(lease), &name, &manifest).await?;
        rt.image_put(
            &name,
            Descriptor {
                media_type: entry.media_type().to_string(),
                digest,
                size: bytes.len() as i64,
                annotations: HashMap::new(),
            },
        )
        .await?;
        names.push(name);
    }
    if names.is_empty() {
        return Err(ImportError::Layout(format!(
            "no manifest in index.json is named (annotation {CONTAINERD_NAME} or {REF_NAME} with a full reference)"
        )));
    }
    Ok(names)
}

fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, ImportError> {
    let (algorithm, hex) = digest
        .split_once(':')
        .filter(|(a, h)| !a.contains('/') && !h.contains('/') && !h.contains(".."))
        .ok_or_else(|| ImportError::Layout(format!("bad digest {digest:?}")))?;
    Ok(root.join("blobs").join(algorithm).join(hex))
}

fn read_blob(root: &Path, digest: &str) -> Result<Vec<u8>, ImportError> {
    let path = blob_path(root, digest)?;
    let bytes = std::fs::read(&path)
        .map_err(|_| ImportError::Layout(format!("blob {digest} is missing")))?;
    if image::sha256(&bytes) != digest {
        return Err(ImportError::Layout(format!(
            "blob {digest} does not match its digest"
        )));
    }
    Ok(bytes)
}

/// A file as a stream of chunks.
async fn file_stream(
    path: PathBuf,
) -> Result<impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin, ImportError>
{
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ImportError::Archive(format!("{}: {e}", path.display())))?;
    Ok(Box::pin(futures::stream::unfold(
        file,
        |mut file| async move {
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        },
    )))
}
