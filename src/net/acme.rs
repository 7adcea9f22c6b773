//! ACME (RFC 8555, instant-acme) for the ingress's route hosts: runs on the Raft leader
//! only (the daemon starts it through `daemon::leader::while_leader`, and aborts it when
//! the node stops leading; everything it needs to resume is in the store).
//!
//! Every [`AcmeKnobs::poll`] it lists the Services, and for every route host that can have
//! a public certificate ([`acme_host`]: a DNS name with a dot, not an IP, not a wildcard,
//! not under `.mill`, `.localhost`, `.local` or `.internal`) whose certificate Secret
//! (`tls::certificate_secret`) is missing or expires within
//! [`AcmeKnobs::renew_before`], it orders one:
//! 1. the account comes from Secret `mill-system/acme-account` (created on first use,
//!    with `--acme-email` as contact; made anew when `--acme-directory` changes);
//! 2. for each pending authorization, the HTTP-01 key authorization is written to Secret
//!    `acme-http01-<host>`, which every node's proxy answers on
//!    `/.well-known/acme-challenge/<token>` of `--http-addr` once its store applied it;
//!    before telling the CA to validate, the task asks every live node's routing
//!    barrier (`/internal/routing/applied`, at most [`SPREAD_WAIT`]) whether it applied
//!    that write, so the CA's request finds the answer on whichever node it reaches;
//! 3. the order is finalized with a CSR for a fresh ECDSA P-256 key (rcgen), the chain
//!    and key are written to Secret `tls-<host>` (type `kubernetes.io/tls`, sealed at
//!    rest), and the challenge Secret is deleted.
//!
//! A failed order is retried after [`AcmeKnobs::retry`], doubling per failure up to an
//! hour. Writes go through the in-process Kubernetes API, so Secrets are sealed like any
//! other. Keys are never logged.

use super::tls::{
    certificate_secret, challenge_secret, ACCOUNT_SECRET, HOST_ANNOTATION, KIND_LABEL, NAMESPACE,
};
use anyhow::Context;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// The longest a failing host waits before its next order.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// How long a challenge waits for every live node to have applied it.
const SPREAD_WAIT: Duration = Duration::from_secs(5);
/// The annotation of the account Secret naming its directory.
const DIRECTORY_ANNOTATION: &str = "mill.dev/acme-directory";

/// The ACME task's timings (`MILL_ACME_*`, from the daemon's knobs).
#[derive(Debug, Clone)]
pub struct AcmeKnobs {
    /// `MILL_ACME_RENEW_BEFORE_SECS` (2592000 = 30 days): a certificate expiring within
    /// this window is renewed.
    pub renew_before: Duration,
    /// `MILL_ACME_POLL_MS` (10000): how often the leader looks for hosts that need a
    /// certificate.
    pub poll: Duration,
    /// `MILL_ACME_RETRY_MS` (60000): the wait after a failed order, doubled per failure.
    pub retry: Duration,
    /// `MILL_ACME_ORDER_TIMEOUT_MS` (120000): validation and issuance of one order.
    pub order_timeout: Duration,
}

impl Default for AcmeKnobs {
    fn default() -> Self {
        AcmeKnobs {
            renew_before: Duration::from_secs(30 * 86_400),
            poll: Duration::from_millis(10_000),
            retry: Duration::from_millis(60_000),
            order_timeout: Duration::from_millis(120_000),
        }
    }
}

/// What the leader's ACME task needs.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// `--acme-directory`: the directory URL of any RFC 8555 server.
    pub directory: String,
    /// `--acme-email`: the account's contact.
    pub email: Option<String>,
    /// `MILL_ACME_CA_FILE`: a PEM CA to trust for the directory's HTTPS (a test CA),
    /// instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The cluster token (the other nodes' routing barrier asks for it).
    pub token: String,
    /// Timings.
    pub knobs: AcmeKnobs,
}

/// Whether `host` can get a certificate from a public ACME CA (and its Secrets' names
/// stay valid).
pub fn acme_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let internal = [".mill", ".localhost", ".local", ".internal", ".invalid"];
    host.parse::<std::net::IpAddr>().is_err()
        && host.contains('.')
        && !host.starts_with('*')
        // "acme-http01-" + host must still be a Secret name (≤ 253).
        && host.len() <= 240
        && !internal.iter().any(|suffix| host.ends_with(suffix))
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Why a host's certificate must be ordered now, if it must.
pub fn due(not_after: Option<SystemTime>, now: SystemTime, renew_before: Duration) -> bool {
    match not_after {
        None => true,
        Some(not_after) => now + renew_before >= not_after,
    }
}

/// The validity end and serial (hex) of the first certificate of a PEM chain.
pub fn leaf_facts(chain_pem: &[u8]) -> anyhow::Result<(SystemTime, String)> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(chain_pem)
        .context("not a PEM certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    Ok((not_after, cert.raw_serial_as_string()))
}

/// Runs until aborted: orders and renews certificates for the route hosts.
pub async fn run(client: kube::Client, config: AcmeConfig) {
    tracing::info!(
        "ACME: this node leads: certificates for route hosts come from {}",
        config.directory
    );
    let mut manager = Manager {
        secrets: Api::namespaced(client.clone(), NAMESPACE),
        client,
        config,
        http: reqwest::Client::new(),
        account: None,
        failures: HashMap::new(),
    };
    loop {
        manager.pass().await;
        tokio::time::sleep(manager.config.knobs.poll).await;
    }
}

struct Manager {
    client: kube::Client,
    secrets: Api<Secret>,
    config: AcmeConfig,
    http: reqwest::Client,
    account: Option<Account>,
    /// Per failing host: when it may be tried again, and the wait after that.
    failures: HashMap<String, (Instant, Duration)>,
}

impl Manager {
    async fn pass(&mut self) {
        let hosts = match self.hosts().await {
            Ok(hosts) => hosts,
            Err(err) => {
                tracing::warn!("ACME: cannot list the services' routes: {err:#}");
                return;
            }
        };
        for host in hosts {
            if self
                .failures
                .get(&host)
                .is_some_and(|(next, _)| Instant::now() < *next)
            {
                continue;
            }
            match self.needs_certificate(&host).await {
                Ok(false) => continue,
                Ok(true) => {}
                Err(err) => {
                    tracing::warn!("ACME: cannot read the certificate of {host}: {err:#}");
                    continue;
                }
            }
            let started = Instant::now();
            let obtained =
                tokio::time::timeout(self.config.knobs.order_timeout, self.obtain(&host))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!(
                            "no certificate within {:?} (MILL_ACME_ORDER_TIMEOUT_MS)",
                            self.config.knobs.order_timeout
                        ))
                    });
            match obtained {
                Ok((serial, not_after)) => {
                    self.failures.remove(&host);
                    tracing::info!(
                        "ACME: certificate for {host} issued in {:?}: serial {serial}, valid until {}",
                        started.elapsed(),
                        jiff::Timestamp::try_from(not_after)
                            .map(|t| t.to_string())
                            .unwrap_or_default()
                    );
                }
                Err(err) => {
                    let wait = self
                        .failures
                        .get(&host)
                        .map_or(self.config.knobs.retry, |(_, wait)| {
                            (*wait * 2).min(MAX_RETRY)
                        });
                    self.failures
                        .insert(host.clone(), (Instant::now() + wait, wait));
                    // A failure may be the account's (deleted on the server, directory
                    // reset): load it again next time.
                    self.account = None;
                    tracing::warn!(
                        "ACME: cannot get a certificate for {host} from {}: {err:#}; the ingress serves a self-signed one meanwhile; next try in {wait:?}",
                        self.config.directory
                    );
                }
            }
        }
    }

    /// The route hosts of every Service that can have an ACME certificate.
    async fn hosts(&self) -> anyhow::Result<BTreeSet<String>> {
        let services: Api<mill_crds::Service> = Api::all(self.client.clone());
        let list = services.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .flat_map(|s| s.spec.routes.iter())
            .map(|r| r.host.trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| acme_host(h))
            .collect())
    }

    async fn needs_certificate(&self, host: &str) -> anyhow::Result<bool> {
        let Some(secret) = self.secrets.get_opt(&certificate_secret(host)).await? else {
            return Ok(true);
        };
        let chain = secret
            .data
            .as_ref()
            .and_then(|d| d.get("tls.crt"))
            .map(|b| b.0.clone());
        let not_after = chain.and_then(|c| leaf_facts(&c).ok()).map(|(t, _)| t);
        Ok(due(
            not_after,
            SystemTime::now(),
            self.config.knobs.renew_before,
        ))
    }

    /// Orders, validates and stores a certificate for `host`; its serial and expiry.
    async fn obtain(&mut self, host: &str) -> anyhow::Result<(String, SystemTime)> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("the ACME server refused the order")?;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.context("cannot read an authorization")?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => anyhow::bail!("the authorization for {host} is {other:?}"),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| anyhow::anyhow!("the ACME server offers no HTTP-01 challenge"))?;
            let answer = challenge.key_authorization();
            let revision = self
                .put_challenge(host, &challenge.token, answer.as_str())
                .await?;
            self.wait_everywhere(revision).await;
            challenge
                .set_ready()
                .await
                .context("the ACME server did not take the challenge")?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.config.knobs.order_timeout);
        let status = order.poll_ready(&retries).await;
        let status = match status {
            Ok(status) => status,
            Err(err) => {
                self.delete_challenge(host).await;
                return Err(err).context("validation failed");
            }
        };
        if status != OrderStatus::Ready {
            self.delete_challenge(host).await;
            anyhow::bail!(
                "validation failed: the order is {status:?} (can the ACME server reach this cluster's --http-addr as {host}:80?)"
            );
        }
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
            .context("the host is not a valid certificate name")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
        let csr = params
            .serialize_request(&key)
            .context("cannot make the CSR")?;
        order
            .finalize_csr(csr.der())
            .await
            .context("the ACME server refused the CSR")?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .context("the ACME server issued no certificate")?;
        self.delete_challenge(host).await;
        let (not_after, serial) = leaf_facts(chain.as_bytes())?;
        // The proxy would refuse a pair that does not match: check before storing.
        super::tls::certified_key(
            chain.as_bytes(),
            key.serialize_pem().as_bytes(),
            &rustls::crypto::ring::default_provider(),
        )?;
        let mut annotations = BTreeMap::from([(HOST_ANNOTATION.to_string(), host.to_string())]);
        annotations.insert("mill.dev/serial".into(), serial.clone());
        if let Ok(t) = jiff::Timestamp::try_from(not_after) {
            annotations.insert("mill.dev/not-after".into(), t.to_string());
        }
        let secret = Secret {
            metadata: meta(&certificate_secret(host), "certificate", annotations),
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(chain.into_bytes())),
                (
                    "tls.key".to_string(),
                    ByteString(key.serialize_pem().into_bytes()),
                ),
            ])),
            ..Secret::default()
        };
        self.put(secret).await?;
        Ok((serial, not_after))
    }

    /// The ACME account: from its Secret, or registered now.
    async fn account(&mut self) -> anyhow::Result<Account> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        self.ensure_namespace().await?;
        let stored = self.secrets.get_opt(ACCOUNT_SECRET).await?;
        let same_directory = stored.as_ref().is_some_and(|s| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DIRECTORY_ANNOTATION))
                == Some(&self.config.directory)
        });
        let credentials = stored
            .filter(|_| same_directory)
            .and_then(|s| s.data)
            .and_then(|d| d.get("credentials.json").map(|b| b.0.clone()))
            .and_then(|json| serde_json::from_slice::<AccountCredentials>(&json).ok());
        let account = match credentials {
            Some(credentials) => self
                .builder()?
                .from_credentials(credentials)
                .await
                .with_context(|| {
                    format!("cannot reach the ACME directory {}", self.config.directory)
                })?,
            None => {
                let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        None,
                    )
                    .await
                    .with_context(|| {
                        format!(
                            "cannot register an ACME account at {} (is --acme-directory right, and does MILL_ACME_CA_FILE trust its certificate?)",
                            self.config.directory
                        )
                    })?;
                let json = serde_json::to_vec(&credentials)?;
                let annotations = BTreeMap::from([(
                    DIRECTORY_ANNOTATION.to_string(),
                    self.config.directory.clone(),
                )]);
                self.put(Secret {
                    metadata: meta(ACCOUNT_SECRET, "acme-account", annotations),
                    data: Some(BTreeMap::from([(
                        "credentials.json".to_string(),
                        ByteString(json),
                    )])),
                    ..Secret::default()
                })
                .await?;
                tracing::info!("ACME: registered an account at {}", self.config.directory);
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    fn builder(&self) -> anyhow::Result<instant_acme::AccountBuilder> {
        match &self.config.ca_file {
            Some(path) => Account::builder_with_root(path).with_context(|| {
                format!(
                    "MILL_ACME_CA_FILE={}: not a readable PEM certificate",
                    path.display()
                )
            }),
            None => Account::builder().context("cannot load the system's root certificates"),
        }
    }

    async fn ensure_namespace(&self) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        if namespaces.get_opt(NAMESPACE).await?.is_some() {
            return Ok(());
        }
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e).context("cannot create namespace mill-system"),
        }
    }

    /// Waits until every live node applied store revision `revision` (or
    /// [`SPREAD_WAIT`] passed: a node that does not answer must not block issuance).
    async fn wait_everywhere(&self, revision: u64) {
        let nodes: Api<mill_crds::Node> = Api::all(self.client.clone());
        let nodes = match nodes.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(err) => {
                tracing::debug!("ACME: cannot list the nodes: {err}");
                return;
            }
        };
        let asks = nodes
            .iter()
            .filter(|n| {
                n.status.as_ref().map(|s| s.state).unwrap_or_default() != mill_crds::NodeState::Down
            })
            .map(|node| {
                let url = format!("http://{}/internal/routing/applied", node.spec.api_address);
                let ask = self
                    .http
                    .get(url)
                    .query(&[
                        ("revision", revision),
                        ("timeoutMs", SPREAD_WAIT.as_millis() as u64),
                    ])
                    .bearer_auth(&self.config.token)
                    .timeout(SPREAD_WAIT * 2)
                    .send();
                async move {
                    if let Err(err) = ask.await.and_then(|r| r.error_for_status()) {
                        tracing::debug!(
                            "ACME: {} did not confirm the challenge: {err}",
                            node.spec.api_address
                        );
                    }
                }
            });
        futures_util::future::join_all(asks).await;
    }

    /// Stores `host`'s challenge; the store revision of the write.
    async fn put_challenge(&self, host: &str, token: &str, answer: &str) -> anyhow::Result<u64> {
        self.ensure_namespace().await?;
        let annotations = BTreeMap::from([(HOST_ANNOTATION.to_string(), host.to_string())]);
        self.put(Secret {
            metadata: meta(&challenge_secret(host), "acme-http01", annotations),
            data: Some(BTreeMap::from([
                ("token".to_string(), ByteString(token.as_bytes().to_vec())),
                (
                    "keyAuthorization".to_string(),
                    ByteString(answer.as_bytes().to_vec()),
                ),
            ])),
            ..Secret::default()
        })
        .await
        .context("cannot store the HTTP-01 challenge")
    }

    async fn delete_challenge(&self, host: &str) {
        match self
            .secrets
            .delete(&challenge_secret(host), &DeleteParams::default())
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(err) => tracing::warn!("ACME: cannot delete the challenge of {host}: {err}"),
        }
    }

    /// Creates the Secret, or replaces the one of that name; the store revision of the
    /// write.
    async fn put(&self, secret: Secret) -> anyhow::Result<u64> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        for _ in 0..5 {
            match self.secrets.get_opt(&name).await? {
                None => match self.secrets.create(&PostParams::default(), &secret).await {
                    Ok(written) => return Ok(revision_of(&written)),
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e).context(format!("cannot create secret {name}")),
                },
                Some(existing) => {
                    let mut secret = secret.clone();
                    secret.metadata.resource_version = existing.metadata.resource_version;
                    match self
                        .secrets
                        .replace(&name, &PostParams::default(), &secret)
                        .await
                    {
                        Ok(written) => return Ok(revision_of(&written)),
                        Err(kube::Error::Api(e)) if e.code == 409 => continue,
                        Err(e) => return Err(e).context(format!("cannot replace secret {name}")),
                    }
                }
            }
        }
        anyhow::bail!("secret {NAMESPACE}/{name} kept changing under five writes")
    }
}

fn revision_of(secret: &Secret) -> u64 {
    secret
        .metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_default()
}

fn meta(name: &str, kind: &str, annotations: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(NAMESPACE.to_string()),
        labels: Some(BTreeMap::from([(KIND_LABEL.to_string(), kind.to_string())])),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_dns_names_are_ordered() {
        for host in ["app.example.com", "a-b.example.org.", "x.y.z.test"] {
            assert!(acme_host(host), "{host}");
        }
        let long = format!("{}.example.com", vec!["a".repeat(60); 4].join("."));
        for host in [
            "localhost",
            "web.mill",
            "web.default.mill",
            "app.localhost",
            "127.0.0.1",
            "::1",
            "*.example.com",
            "bad_name.example.com",
            "a..b",
            "printer.local",
            long.as_str(),
        ] {
            assert!(!acme_host(host), "{host}");
        }
    }

    #[test]
    fn a_certificate_is_due_when_missing_or_inside_the_window() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let window = 30 * day;
        assert!(due(None, now, window));
        assert!(!due(Some(now + 31 * day), now, window));
        assert!(due(Some(now + 30 * day), now, window));
        assert!(due(Some(now + day), now, window));
        assert!(due(Some(now - day), now, window));
    }

    #[test]
    fn leaf_facts_read_the_first_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x0a, 0xbc]));
        let cert = params.self_signed(&key).unwrap();
        let (not_after, serial) = leaf_facts(cert.pem().as_bytes()).unwrap();
        let expected = jiff::Timestamp::from_second(1_935_792_000).unwrap();
        assert_eq!(jiff::Timestamp::try_from(not_after).unwrap(), expected);
        assert_eq!(serial, "0a:bc");
        assert!(leaf_facts(b"junk").is_err());
    }
}
