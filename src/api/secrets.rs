//! Secrets encrypted at rest.
//!
//! Before a Secret is proposed its `data` (with `stringData` merged in) is sealed with
//! XChaCha20-Poly1305 under the cluster's secret key into one `sealedData` field
//! (`{keys, ciphertext}`); reads and watches unseal it back into normal base64 `data`.
//! The store — its log, snapshots and every replica — never sees a plaintext value.
//! The ciphertext is bound to the secret's namespace and name (associated data), so a
//! blob copied onto another secret does not decrypt.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The stored field that holds the sealed data.
pub const SEALED_FIELD: &str = "sealedData";

/// XChaCha20's nonce length.
const NONCE_LEN: usize = 24;

/// Why a secret could not be sealed or unsealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A `data` value is not base64.
    #[error("data[{key}]: illegal base64 data: {why}")]
    BadBase64 { key: String, why: String },
    /// A key is not `[-._a-zA-Z0-9]+`.
    #[error(
        "data[{0}]: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
    )]
    BadKey(String),
    /// `data` or `stringData` is not a map of strings.
    #[error("{0} must be a map of strings")]
    NotAMap(&'static str),
    /// The stored blob is damaged or was sealed with another key.
    #[error("cannot decrypt secret {0}: it was sealed with another key or is damaged")]
    Undecryptable(String),
}

/// Seals and unseals Secret data with the cluster's key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

fn identity(obj: &Value) -> String {
    let meta = &obj["metadata"];
    format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default()
    )
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `data` with `stringData` merged in, as raw bytes per key.
fn plain_data(obj: &Value) -> Result<BTreeMap<String, Vec<u8>>, SealError> {
    let mut out = BTreeMap::new();
    match obj.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(data)) => {
            for (key, value) in data {
                let text = value.as_str().ok_or(SealError::NotAMap("data"))?;
                let bytes = STANDARD.decode(text).map_err(|e| SealError::BadBase64 {
                    key: key.clone(),
                    why: e.to_string(),
                })?;
                out.insert(key.clone(), bytes);
            }
        }
        Some(_) => return Err(SealError::NotAMap("data")),
    }
    match obj.get("stringData") {
        None | Some(Value::Null) => {}
        Some(Value::Object(data)) => {
            for (key, value) in data {
                let text = value.as_str().ok_or(SealError::NotAMap("stringData"))?;
                out.insert(key.clone(), text.as_bytes().to_vec());
            }
        }
        Some(_) => return Err(SealError::NotAMap("stringData")),
    }
    match out.keys().find(|k| !valid_key(k)) {
        Some(bad) => Err(SealError::BadKey(bad.clone())),
        None => Ok(out),
    }
}

impl SecretBox {
    /// A box for the cluster's 32-byte key.
    pub fn new(key: &[u8; 32]) -> SecretBox {
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Rewrites `obj` for storage: `data` and `stringData` become `sealedData`.
    /// When `previous` (the stored object) holds the same data, its ciphertext is kept,
    /// so an update that does not touch the data does not look like a change.
    pub fn seal(&self, obj: &mut Value, previous: Option<&Value>) -> Result<(), SealError> {
        let data = plain_data(obj)?;
        let Some(map) = obj.as_object_mut() else {
            return Err(SealError::NotAMap("the secret"));
        };
        map.remove("data");
        map.remove("stringData");
        map.remove(SEALED_FIELD);
        if data.is_empty() {
            return Ok(());
        }
        if let Some(prev) = previous {
            if let (Ok(old), Some(sealed)) = (self.open(prev), prev.get(SEALED_FIELD)) {
                if old == data {
                    map.insert(SEALED_FIELD.into(), sealed.clone());
                    return Ok(());
                }
            }
        }
        let aad = identity(obj);
        let plaintext = serde_json::to_vec(
            &data
                .iter()
                .map(|(k, v)| (k.clone(), STANDARD.encode(v)))
                .collect::<BTreeMap<_, _>>(),
        )
        .map_err(|_| SealError::NotAMap("data"))?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Undecryptable(aad.clone()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        let keys: Vec<&String> = data.keys().collect();
        if let Some(map) = obj.as_object_mut() {
            map.insert(
                SEALED_FIELD.into(),
                json!({"keys": keys, "ciphertext": STANDARD.encode(blob)}),
            );
        }
        Ok(())
    }

    /// The plaintext data of a stored (sealed) secret.
    fn open(&self, stored: &Value) -> Result<BTreeMap<String, Vec<u8>>, SealError> {
        let Some(sealed) = stored.get(SEALED_FIELD) else {
            return Ok(BTreeMap::new());
        };
        let aad = identity(stored);
        let bad = || SealError::Undecryptable(aad.clone());
        let blob = sealed["ciphertext"]
            .as_str()
            .and_then(|b| STANDARD.decode(b).ok())
            .ok_or_else(bad)?;
        if blob.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| bad())?;
        let encoded: BTreeMap<String, String> =
            serde_json::from_slice(&plaintext).map_err(|_| bad())?;
        encoded
            .into_iter()
            .map(|(k, v)| STANDARD.decode(v).map(|b| (k, b)).map_err(|_| bad()))
            .collect()
    }

    /// The client's view of a stored secret: `sealedData` opened back into `data`.
    pub fn unseal(&self, stored: &Value) -> Result<Value, SealError> {
        let data = self.open(stored)?;
        let mut obj = stored.clone();
        if let Some(map) = obj.as_object_mut() {
            map.remove(SEALED_FIELD);
            if !data.is_empty() {
                let encoded: Map<String, Value> = data
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(STANDARD.encode(v))))
                    .collect();
                map.insert("data".into(), Value::Object(encoded));
            }
        }
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "db", "namespace": "default"},
            "data": {"password": STANDARD.encode("hunter2-plaintext")},
            "stringData": {"url": "postgres://very-secret-host"},
        })
    }

    #[test]
    fn sealed_secret_holds_no_plaintext_and_unseals_to_base64_data() {
        let sb = SecretBox::new(&[7; 32]);
        let mut obj = secret();
        sb.seal(&mut obj, None).unwrap();
        let stored = serde_json::to_string(&obj).unwrap();
        assert!(!stored.contains("hunter2"));
        assert!(!stored.contains(&STANDARD.encode("hunter2-plaintext")));
        assert!(!stored.contains("very-secret-host"));
        assert!(obj.get("data").is_none() && obj.get("stringData").is_none());
        let back = sb.unseal(&obj).unwrap();
        assert_eq!(
            back["data"]["password"],
            STANDARD.encode("hunter2-plaintext")
        );
        assert_eq!(
            back["data"]["url"],
            STANDARD.encode("postgres://very-secret-host")
        );
        assert!(back.get(SEALED_FIELD).is_none());
    }

    #[test]
    fn a_sealed_blob_does_not_open_under_another_key_or_name() {
        let sb = SecretBox::new(&[7; 32]);
        let mut obj = secret();
        sb.seal(&mut obj, None).unwrap();
        assert!(SecretBox::new(&[8; 32]).unseal(&obj).is_err());
        let mut moved = obj.clone();
        moved["metadata"]["name"] = json!("other");
        assert!(sb.unseal(&moved).is_err());
    }

    #[test]
    fn unchanged_data_keeps_its_ciphertext() {
        let sb = SecretBox::new(&[1; 32]);
        let mut first = secret();
        sb.seal(&mut first, None).unwrap();
        let mut again = sb.unseal(&first).unwrap();
        sb.seal(&mut again, Some(&first)).unwrap();
        assert_eq!(again[SEALED_FIELD], first[SEALED_FIELD]);
        let mut changed = sb.unseal(&first).unwrap();
        changed["data"]["password"] = json!(STANDARD.encode("new"));
        sb.seal(&mut changed, Some(&first)).unwrap();
        assert_ne!(changed[SEALED_FIELD], first[SEALED_FIELD]);
    }

    #[test]
    fn bad_data_is_refused() {
        let sb = SecretBox::new(&[1; 32]);
        let mut obj = json!({"metadata": {"name": "x"}, "data": {"k": "not base64!"}});
        assert!(matches!(
            sb.seal(&mut obj, None),
            Err(SealError::BadBase64 { .. })
        ));
        let mut obj = json!({"metadata": {"name": "x"}, "stringData": {"bad key": "v"}});
        assert!(matches!(sb.seal(&mut obj, None), Err(SealError::BadKey(_))));
    }
}
