//! The cluster's certificate authority and each node's serving certificate.
//!
//! kubectl sends its bearer token only over TLS, so the API port speaks TLS (and plain
//! HTTP, see `api::tls`). `init` makes one CA per cluster; joining nodes receive it with
//! the secret key, and every node issues itself a fresh leaf certificate for its
//! addresses at each start. A kubeconfig from any node trusts every node.

use crate::api::tls::TlsIdentity;
use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The CA's subject. Leaf certificates name it as their issuer, so it never changes.
const CA_NAME: &str = "mill cluster CA";

/// A new cluster CA: (certificate PEM, private key PEM).
pub fn new_ca() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("cannot generate the cluster CA key")?;
    let cert = ca_params()
        .self_signed(&key)
        .context("cannot sign the cluster CA certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

/// A serving certificate for `names` (IPs or DNS names), signed by the CA whose key is
/// `ca_key_pem`.
pub fn issue(ca_key_pem: &str, names: &[String]) -> anyhow::Result<TlsIdentity> {
    let ca_key = KeyPair::from_pem(ca_key_pem).context("node.json: ca_key is not a PEM key")?;
    // Re-signing the same subject with the same key yields an issuer equivalent to the
    // CA certificate clients hold: same name, same key identifier, same public key.
    let ca = ca_params()
        .self_signed(&ca_key)
        .context("cannot load the cluster CA")?;
    let mut params =
        CertificateParams::new(names.to_vec()).context("invalid name for the API certificate")?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("mill", |n| n.as_str()),
    );
    let key = KeyPair::generate().context("cannot generate the API certificate key")?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .context("cannot sign the API certificate")?;
    Ok(TlsIdentity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn verify(ca_pem: &str, leaf_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn leaves_issued_on_any_node_verify_against_the_cluster_ca() {
        let (ca_pem, ca_key) = new_ca().unwrap();
        // Two nodes issue their own leaves from the shared CA key.
        for ip in ["127.0.0.1", "10.1.2.3"] {
            let leaf = issue(&ca_key, &[ip.into(), "localhost".into()]).unwrap();
            verify(&ca_pem, &leaf.cert_pem, ip).unwrap();
            verify(&ca_pem, &leaf.cert_pem, "localhost").unwrap();
            assert!(verify(&ca_pem, &leaf.cert_pem, "192.0.2.1").is_err());
        }
    }

    #[test]
    fn a_leaf_of_another_cluster_does_not_verify() {
        let (ca_pem, _) = new_ca().unwrap();
        let (_, other_key) = new_ca().unwrap();
        let leaf = issue(&other_key, &["127.0.0.1".into()]).unwrap();
        assert!(verify(&ca_pem, &leaf.cert_pem, "127.0.0.1").is_err());
    }
}
