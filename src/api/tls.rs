//! Serving the API over TLS and plain HTTP on one port.
//!
//! kubectl (client-go) sends a kubeconfig's bearer token only to `https://` servers, so
//! the Kubernetes API must speak TLS for kubectl to authenticate at all. Node-to-node
//! RPC and other plain-HTTP clients keep working on the same port: the first byte of a
//! connection tells a TLS ClientHello (0x16) from an HTTP request.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The PEM certificate or key is unusable.
    #[error("invalid TLS certificate or key: {0}")]
    Pem(String),
    /// rustls refused the certificate/key pair.
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A server certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// The certificate (self-signed: it is also the CA clients trust).
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl TlsIdentity {
    /// A self-signed certificate for `names` (DNS names or IP addresses).
    pub fn self_signed(names: &[String]) -> Result<TlsIdentity, TlsError> {
        let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
        Ok(TlsIdentity {
            cert_pem: certified.cert.pem(),
            key_pem: certified.key_pair.serialize_pem(),
        })
    }

    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// Serves `router` on `listener`: TLS connections with `identity`, plain HTTP otherwise.
/// Runs until the listener fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    identity: &TlsIdentity,
) -> Result<(), TlsError> {
    let acceptor = identity.acceptor()?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            if let Err(err) = connection(stream, acceptor, router).await {
                tracing::debug!("API connection ended: {err}");
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Watch events, forwarded writes and Raft replies are small writes that must not wait
    // for the peer's ACK of the previous one (Nagle).
    stream.set_nodelay(true).ok();
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    let service = TowerToHyperService::new(router);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if n == 1 && first[0] == TLS_HANDSHAKE {
        let tls = acceptor.accept(stream).await?;
        builder
            .serve_connection_with_upgrades(TokioIo::new(tls), service)
            .await
    } else {
        builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await
    }
}
