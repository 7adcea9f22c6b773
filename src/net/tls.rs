//! TLS on the ingress (SPEC §5): the certificates every node serves on `--https-addr`,
//! chosen by SNI, and the ACME HTTP-01 answers every node serves on `--http-addr`.
//!
//! Both live in the store as Secrets in namespace [`NAMESPACE`], sealed at rest like every
//! Secret, so every node serves what the leader's ACME task ([`super::acme`]) obtained:
//! - a certificate: `tls-<host>`, type `kubernetes.io/tls` (`tls.crt` = the PEM chain,
//!   `tls.key` = the PEM key), label [`KIND_LABEL`]`=certificate`, annotation
//!   [`HOST_ANNOTATION`] = the host;
//! - a pending HTTP-01 challenge: `acme-http01-<host>` (`token`, `keyAuthorization`),
//!   label [`KIND_LABEL`]`=acme-http01`;
//! - the ACME account: `acme-account` (its credentials), label [`KIND_LABEL`]`=acme-account`.
//!
//! One task per node ([`follow`]) lists those Secrets, unseals them with the cluster key
//! and publishes an immutable [`Snapshot`] behind an `ArcSwap` after every batch of watch
//! events (the store's watch, as `table` does, so a snapshot install arrives as events too).
//! [`Tls`] is the rustls [`ResolvesServerCert`]: the exact SNI host's certificate when
//! there is one, else a self-signed one made with rcgen for that name and kept (at most
//! [`FALLBACK_CACHE`] names; the cache starts over beyond that). Key material is never
//! logged: errors name the Secret, not its data.

use crate::api::SecretBox;
use crate::store::{Rv, Store};
use arc_swap::ArcSwap;
use base64::Engine;
use futures_util::FutureExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The namespace of the ingress's certificates, challenges and ACME account.
pub const NAMESPACE: &str = "mill-system";
/// The label saying what a Secret of [`NAMESPACE`] is to the ingress.
pub const KIND_LABEL: &str = "mill.dev/tls";
/// The annotation naming a certificate's (or challenge's) host.
pub const HOST_ANNOTATION: &str = "mill.dev/host";
/// The name of the ACME account's Secret.
pub const ACCOUNT_SECRET: &str = "acme-account";
/// Where ACME HTTP-01 validation asks for a token.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
/// How many self-signed fallback certificates a node keeps.
pub const FALLBACK_CACHE: usize = 1024;
/// The name a self-signed fallback carries for a client that sent no SNI.
const NO_SNI: &str = "mill-ingress";

const SECRETS: &str = "/secrets";

/// The Secret holding `host`'s certificate.
pub fn certificate_secret(host: &str) -> String {
    format!("tls-{host}")
}

/// The Secret holding `host`'s pending HTTP-01 challenge.
pub fn challenge_secret(host: &str) -> String {
    format!("acme-http01-{host}")
}

/// What the ingress serves at one store revision.
#[derive(Default)]
pub struct Snapshot {
    /// The store revision the snapshot reflects.
    pub revision: Rv,
    /// Certificates by host (lower case).
    certs: HashMap<String, Arc<CertifiedKey>>,
    /// HTTP-01 key authorizations by token.
    challenges: HashMap<String, String>,
}

/// The node's TLS state: certificates by SNI, fallbacks, challenges.
pub struct Tls {
    current: ArcSwap<Snapshot>,
    fallback: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.load();
        f.debug_struct("Tls")
            .field("revision", &current.revision)
            .field("hosts", &current.certs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            current: ArcSwap::from_pointee(Snapshot::default()),
            fallback: Mutex::new(HashMap::new()),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ResolvesServerCert for Tls {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello
            .server_name()
            .map(|name| name.trim_end_matches('.').to_ascii_lowercase());
        let host = host.as_deref().unwrap_or(NO_SNI);
        if let Some(cert) = self.current.load().certs.get(host) {
            return Some(cert.clone());
        }
        self.fallback(host)
    }
}

impl Tls {
    /// The key authorization for an HTTP-01 request path, if it asks for a pending token.
    pub fn challenge(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PREFIX)?;
        self.current.load().challenges.get(token).cloned()
    }

    /// Whether an ACME certificate for `host` is being served.
    pub fn has_certificate(&self, host: &str) -> bool {
        self.current.load().certs.contains_key(host)
    }

    /// The store revision the served certificates and challenges reflect.
    pub fn revision(&self) -> Rv {
        self.current.load().revision
    }

    /// A rustls server config over this resolver, offering HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The acceptor the proxy's HTTPS listener hands its connections to.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(
            self.server_config()?,
        )))
    }

    /// The self-signed certificate for `host`, made on first use.
    fn fallback(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let mut cache = self.fallback.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cert) = cache.get(host) {
            return Some(cert.clone());
        }
        let made = self_signed(host, &self.provider)
            .or_else(|err| {
                tracing::debug!("ingress TLS: no self-signed certificate for {host:?}: {err}");
                self_signed(NO_SNI, &self.provider)
            })
            .map_err(|err| {
                tracing::warn!("ingress TLS: cannot make a self-signed certificate: {err}")
            })
            .ok()?;
        if cache.len() >= FALLBACK_CACHE {
            cache.clear();
        }
        cache.insert(host.to_string(), made.clone());
        Some(made)
    }

    fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

/// A self-signed certificate for `host` (rcgen, ECDSA P-256).
fn self_signed(
    host: &str,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = provider.key_provider.load_private_key(der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// A certificate chain and key in PEM, as a rustls signing identity.
pub fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("tls.crt is not a PEM certificate chain: {e}"))?;
    anyhow::ensure!(!chain.is_empty(), "tls.crt holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| anyhow::anyhow!("tls.key is not a PEM private key: {e}"))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow::anyhow!("tls.key is not a usable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| anyhow::anyhow!("tls.key does not belong to tls.crt: {e}"))?;
    Ok(Arc::new(certified))
}

/// The bytes of `data[key]` of an unsealed Secret.
pub fn secret_data(secret: &Value, key: &str) -> Option<Vec<u8>> {
    let text = secret["data"][key].as_str()?;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Starts the task that keeps `Tls` current with the store's Secrets in [`NAMESPACE`];
/// returns it with the current state loaded.
pub fn follow(store: Store, secrets: SecretBox) -> Arc<Tls> {
    let tls = Arc::new(Tls::default());
    let rv = load(&store, &secrets, &tls);
    tokio::spawn(run(store, secrets, tls.clone(), rv));
    tls
}

async fn run(store: Store, secrets: SecretBox, tls: Arc<Tls>, mut rv: Rv) {
    // A watch reopened and ended again before any event: the store closed its watches.
    let mut fresh = true;
    loop {
        let mut watch = match store.watch(SECRETS, Some(NAMESPACE), rv) {
            Ok(watch) => watch,
            Err(expired) => {
                tracing::debug!("ingress TLS: secrets watch: {expired}; listing again");
                rv = load(&store, &secrets, &tls);
                continue;
            }
        };
        while watch.next().await.is_some() {
            fresh = false;
            // Take every event already queued, then list once.
            while let Some(Some(_)) = watch.next().now_or_never() {}
            load(&store, &secrets, &tls);
        }
        if fresh {
            tracing::debug!("ingress TLS: the store closed its watches");
            return;
        }
        fresh = true;
        rv = load(&store, &secrets, &tls);
    }
}

/// Lists the Secrets of [`NAMESPACE`] and publishes what they hold; returns the list's rv.
fn load(store: &Store, secrets: &SecretBox, tls: &Tls) -> Rv {
    let (objects, rv) = store.list(SECRETS, Some(NAMESPACE));
    let mut snapshot = Snapshot {
        revision: rv,
        ..Snapshot::default()
    };
    for stored in objects {
        let name = stored["metadata"]["name"].as_str().unwrap_or_default();
        let kind = stored["metadata"]["labels"][KIND_LABEL].as_str();
        if !matches!(kind, Some("certificate" | "acme-http01")) {
            continue;
        }
        let secret = match secrets.unseal(&stored) {
            Ok(secret) => secret,
            Err(err) => {
                tracing::warn!("ingress TLS: secret {NAMESPACE}/{name}: {err}");
                continue;
            }
        };
        match kind {
            Some("certificate") => {
                let Some(host) = secret["metadata"]["annotations"][HOST_ANNOTATION].as_str() else {
                    tracing::warn!(
                        "ingress TLS: secret {NAMESPACE}/{name} names no host (annotation {HOST_ANNOTATION})"
                    );
                    continue;
                };
                let pair = secret_data(&secret, "tls.crt").zip(secret_data(&secret, "tls.key"));
                let Some((chain, key)) = pair else {
                    tracing::warn!(
                        "ingress TLS: secret {NAMESPACE}/{name} lacks tls.crt or tls.key"
                    );
                    continue;
                };
                match certified_key(&chain, &key, &tls.provider) {
                    Ok(certified) => {
                        snapshot
                            .certs
                            .insert(host.to_ascii_lowercase(), certified);
                    }
                    Err(err) => tracing::warn!(
                        "ingress TLS: secret {NAMESPACE}/{name} for {host}: {err}; serving a self-signed certificate instead"
                    ),
                }
            }
            _ => {
                let token = secret_data(&secret, "token").and_then(|t| String::from_utf8(t).ok());
                let answer = secret_data(&secret, "keyAuthorization")
                    .and_then(|t| String::from_utf8(t).ok());
                if let (Some(token), Some(answer)) = (token, answer) {
                    snapshot.challenges.insert(token, answer);
                }
            }
        }
    }
    tls.publish(snapshot);
    rv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> rustls::crypto::CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn a_matching_pem_pair_loads_and_a_foreign_key_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = cert.pem();
        certified_key(pem.as_bytes(), key.serialize_pem().as_bytes(), &provider()).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let err = certified_key(
            pem.as_bytes(),
            other.serialize_pem().as_bytes(),
            &provider(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(certified_key(b"junk", b"junk", &provider()).is_err());
    }

    #[test]
    fn fallbacks_are_made_once_per_host() {
        let tls = Tls::default();
        let a = tls.fallback("a.example").unwrap();
        let again = tls.fallback("a.example").unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        let b = tls.fallback("b.example").unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        // A name rcgen cannot put in a certificate still gets one (the generic name).
        assert!(tls.fallback("bad\u{7f}name").is_some());
    }

    #[test]
    fn challenges_answer_only_their_token() {
        let tls = Tls::default();
        let mut snapshot = Snapshot::default();
        snapshot
            .challenges
            .insert("tok-1".into(), "tok-1.thumb".into());
        tls.publish(snapshot);
        assert_eq!(
            tls.challenge("/.well-known/acme-challenge/tok-1")
                .as_deref(),
            Some("tok-1.thumb")
        );
        assert_eq!(tls.challenge("/.well-known/acme-challenge/other"), None);
        assert_eq!(tls.challenge("/tok-1"), None);
    }
}
