//! A node's identity, kept in `<data-dir>/node.json` so that `init` and `join` resume.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Who this node is and how it reaches its cluster. Written once at init/join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The Raft node id (1 for the node that ran `init`).
    pub node_id: u64,
    /// The Node object's name (`node-N` by default).
    pub node_name: String,
    /// The cluster token: API bearer token and join credential.
    pub token: String,
    /// The per-cluster key that seals Secret values (base64 of 32 bytes).
    pub secret_key: String,
    /// The cluster CA certificate (PEM): what kubeconfigs trust.
    pub ca_cert: String,
    /// The cluster CA key (PEM): every node issues its API certificate with it.
    pub ca_key: String,
    /// The advertised IP.
    pub advertise: String,
    /// The API listen address.
    pub api_addr: String,
    /// Whether the node has become a voter (join finished); always true after init.
    pub joined: bool,
}

impl Identity {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("node.json")
    }

    /// The identity stored in `data_dir`, if the node was set up there before.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Identity>> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| {
                    format!(
                        "{} is corrupt; restore it or use a new data dir",
                        path.display()
                    )
                })
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the identity atomically, readable only by its owner (it holds the token and key).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let path = Self::path(data_dir);
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The secret key as bytes.
    pub fn secret_key_bytes(&self) -> anyhow::Result<[u8; 32]> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.secret_key)
            .context("node.json: secret_key is not base64")?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("node.json: secret_key is not 32 bytes"))
    }

    /// The names this node's API certificate is valid for.
    pub fn tls_names(&self) -> Vec<String> {
        let mut names = vec![
            self.advertise.clone(),
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            self.node_name.clone(),
        ];
        names.dedup();
        names
    }

    /// The address other nodes and clients use for this node's API (`advertise:port`).
    pub fn advertised_api(&self) -> String {
        let port = self.api_addr.rsplit(':').next().unwrap_or("4400");
        format!("{}:{}", self.advertise, port)
    }
}

/// A fresh random token for a new cluster.
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no system randomness for the cluster token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh random 32-byte key, base64.
pub fn new_secret_key() -> anyhow::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no system randomness for the secret key: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}
