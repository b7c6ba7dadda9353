//! TLS configuration for both sides: the rustls server configuration clients are accepted
//! with (certificate and key from `client_tls_cert_file` / `client_tls_key_file`) and the
//! client configurations pgtenant connects to PostgreSQL with (`server_tls_sslmode`,
//! `server_tls_ca_file`), kept behind an `ArcSwap` so that [`TlsState::reload`] replaces them
//! for new connections while established ones keep theirs.
//!
//! This module owns reading and checking the PEM files and what each mode verifies. It never
//! does I/O on a connection (the login and [`crate::server`] do, over [`crate::net`]) and
//! never keeps a private key anywhere but inside rustls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClientTlsMode, Config, ConfigError, ServerTlsMode};

/// The ALPN protocol name of PostgreSQL (PostgreSQL 17, "SSL Session Encryption"): required
/// for direct TLS, offered to servers.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

const CERT_KEY: &str = "pgtenant.client_tls_cert_file";
const KEY_KEY: &str = "pgtenant.client_tls_key_file";
const CA_KEY: &str = "pgtenant.server_tls_ca_file";

/// Why the TLS configuration could not be built. Each error names its configuration key and
/// file; none quotes file contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {}: {problem}", path.display())]
    Unusable {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("{key}: {problem}")]
    Missing { key: &'static str, problem: String },
}

impl TlsError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Unusable { key, .. }
            | TlsError::Missing { key, .. } => key,
        }
    }
}

impl From<TlsError> for ConfigError {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Read { key, path, source } => ConfigError::KeyFile {
                key: key.to_owned(),
                file: path,
                source,
            },
            TlsError::Unusable { key, path, problem } => {
                ConfigError::invalid(key, format!("{}: {problem}", path.display()))
            }
            TlsError::Missing { key, problem } => ConfigError::invalid(key, problem),
        }
    }
}

/// What a client connection may do about TLS, as configured when it arrived.
#[derive(Clone)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    /// `None` when `mode` is `Disable`.
    pub acceptor: Option<TlsAcceptor>,
}

/// What a new server connection does about TLS.
#[derive(Clone)]
pub struct UpstreamTls {
    pub mode: ServerTlsMode,
    /// `None` when `mode` is `Disable`.
    pub connector: Option<TlsConnector>,
}

/// The TLS configurations in force; shared by every connection, replaced by `reload`.
pub struct TlsState {
    current: ArcSwap<Snapshot>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.current.load();
        f.debug_struct("TlsState")
            .field("client_tls_sslmode", &s.client.mode)
            .field("server_tls_sslmode", &s.server_mode)
            .finish_non_exhaustive()
    }
}

struct Snapshot {
    client: ClientTls,
    server_mode: ServerTlsMode,
    /// Databases whose `server_tls_sslmode` differs from the default.
    database_modes: HashMap<String, ServerTlsMode>,
    /// Encrypts without verifying (prefer, require).
    unverified: TlsConnector,
    /// Checks the chain against the CA file (verify-ca); needs `server_tls_ca_file`.
    verify_ca: Option<TlsConnector>,
    /// Checks the chain and the host name (verify-full); needs `server_tls_ca_file`.
    verify_full: Option<TlsConnector>,
}

impl TlsState {
    /// Reads the files the configuration names and builds both sides' configurations.
    pub fn new(config: &Config) -> Result<TlsState, TlsError> {
        Ok(TlsState {
            current: ArcSwap::from_pointee(Snapshot::build(config)?),
        })
    }

    /// Re-reads the certificate, key and CA files and takes the modes from `config`. New
    /// connections use the result; on error nothing changes.
    pub fn reload(&self, config: &Config) -> Result<(), TlsError> {
        let next = Snapshot::build(config)?;
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// The client side as configured now.
    pub fn client(&self) -> ClientTls {
        self.current.load().client.clone()
    }

    /// The upstream side for database `name` (a `[databases.NAME]` entry) as configured now.
    pub fn upstream(&self, name: &str) -> UpstreamTls {
        let s = self.current.load();
        let mode = s.database_modes.get(name).copied().unwrap_or(s.server_mode);
        let connector = match mode {
            ServerTlsMode::Disable => None,
            ServerTlsMode::Prefer | ServerTlsMode::Require => Some(s.unverified.clone()),
            // Configuration validation requires the CA file for these modes, so the
            // connector exists; were it missing, refusing to connect is the safe answer.
            ServerTlsMode::VerifyCa => s.verify_ca.clone(),
            ServerTlsMode::VerifyFull => s.verify_full.clone(),
        };
        UpstreamTls { mode, connector }
    }
}

impl Snapshot {
    fn build(config: &Config) -> Result<Snapshot, TlsError> {
        let tls = &config.general.tls;
        let provider = provider();
        let acceptor = match tls.client_tls_sslmode {
            ClientTlsMode::Disable => None,
            ClientTlsMode::Allow | ClientTlsMode::Require => Some(acceptor(
                &provider,
                tls.client_tls_cert_file.as_deref(),
                tls.client_tls_key_file.as_deref(),
                tls.client_tls_sslmode,
            )?),
        };
        let database_modes = config
            .databases
            .iter()
            .filter_map(|(name, db)| db.server_tls_sslmode.map(|m| (name.clone(), m)))
            .collect::<HashMap<_, _>>();
        let verifying = std::iter::once(tls.server_tls_sslmode)
            .chain(database_modes.values().copied())
            .any(ServerTlsMode::verifies);
        let roots = match &tls.server_tls_ca_file {
            Some(path) => Some(Arc::new(load_roots(path)?)),
            None if verifying => {
                return Err(TlsError::Missing {
                    key: CA_KEY,
                    problem: "required by server_tls_sslmode verify-ca or verify-full".into(),
                });
            }
            None => None,
        };
        let client_builder = || {
            ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| protocol_error(CA_KEY, e))
        };
        let signatures = Unverified(provider.signature_verification_algorithms);
        let unverified = connector(
            client_builder()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(signatures.clone()))
                .with_no_client_auth(),
        );
        let (verify_ca, verify_full) = match roots {
            None => (None, None),
            Some(roots) => {
                let chain_only = ChainOnly {
                    roots: Arc::clone(&roots),
                    signatures,
                };
                let verify_ca = client_builder()?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(chain_only))
                    .with_no_client_auth();
                let verify_full = client_builder()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                (Some(connector(verify_ca)), Some(connector(verify_full)))
            }
        };
        Ok(Snapshot {
            client: ClientTls {
                mode: tls.client_tls_sslmode,
                acceptor,
            },
            server_mode: tls.server_tls_sslmode,
            database_modes,
            unverified,
            verify_ca,
            verify_full,
        })
    }
}

/// ring only: the default aws-lc-rs provider needs cmake and a long C build.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn protocol_error(key: &'static str, e: rustls::Error) -> TlsError {
    TlsError::Missing {
        key,
        problem: format!("no usable TLS protocol version: {e}"),
    }
}

fn connector(mut config: ClientConfig) -> TlsConnector {
    // PostgreSQL 17 checks ALPN when the client offers it; older servers ignore it.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    TlsConnector::from(Arc::new(config))
}

fn acceptor(
    provider: &Arc<CryptoProvider>,
    cert: Option<&Path>,
    key: Option<&Path>,
    mode: ClientTlsMode,
) -> Result<TlsAcceptor, TlsError> {
    let missing = |key| TlsError::Missing {
        key,
        problem: format!("required when client_tls_sslmode = {:?}", mode.as_str()),
    };
    let cert_path = cert.ok_or_else(|| missing(CERT_KEY))?;
    let key_path = key.ok_or_else(|| missing(KEY_KEY))?;
    let chain = load_certs(CERT_KEY, cert_path)?;
    let key = load_key(key_path)?;
    let mut config = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| protocol_error(CERT_KEY, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Unusable {
            key: KEY_KEY,
            path: key_path.to_owned(),
            problem: format!("not usable with {}: {e}", cert_path.display()),
        })?;
    // Clients using SSLRequest may offer ALPN or not; direct TLS must offer "postgresql"
    // (checked after the handshake by the login).
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Unusable {
            key,
            path: path.to_owned(),
            problem: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Unusable {
            key,
            path: path.to_owned(),
            problem: "holds no certificate (expected \"-----BEGIN CERTIFICATE-----\")".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(KEY_KEY, path)?;
    // The error type says what kind of problem, never the key bytes.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Unusable {
        key: KEY_KEY,
        path: path.to_owned(),
        problem: format!(
            "holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected): {}",
            pem_problem(&e)
        ),
    })
}

/// A PEM error without anything that could be key material.
fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => "no private key section found",
        Error::MissingSectionEnd { .. } => "a PEM section is not terminated",
        Error::IllegalSectionStart { .. } => "a PEM section start is malformed",
        Error::Base64Decode(_) => "a PEM section is not valid base64",
        _ => "not valid PEM",
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(CA_KEY, path)? {
        roots.add(cert).map_err(|e| TlsError::Unusable {
            key: CA_KEY,
            path: path.to_owned(),
            problem: format!("a certificate cannot be used as a trust anchor: {e}"),
        })?;
    }
    Ok(roots)
}

/// `require` / `prefer`: encryption without authentication, as libpq does it. The
/// handshake signature is still checked, so the session key belongs to whoever holds the
/// presented certificate; who that is, is not checked.
#[derive(Debug, Clone)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA and be valid now; the host name is not
/// compared (libpq's verify-ca).
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    /// The handshake signature checks, the same as without verification.
    signatures: Unverified,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.signatures.0.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// The name a server certificate is checked against (verify-full) and sent as SNI: the
/// configured host, a DNS name or an IP address. Other modes fall back to a placeholder for
/// a host rustls cannot parse, since they do not compare it.
pub fn server_name(host: &str, mode: ServerTlsMode) -> Option<ServerName<'static>> {
    match ServerName::try_from(host.to_owned()) {
        Ok(name) => Some(name),
        Err(_) if mode != ServerTlsMode::VerifyFull => Some(ServerName::IpAddress(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
        )),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    // Handshakes with real certificates (reload, verify modes, key mismatch) are in
    // tests/tls.rs, next to the certificate authority they are signed with.
    use super::*;

    #[test]
    fn missing_files_are_refused_at_load_naming_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let load = |extra: &str| {
            let toml = format!(
                "[pgtenant]\n{extra}\n[auth]\nalgorithm = \"HS256\"\n\
                 secret = \"0123456789abcdef0123456789abcdef\"\n\
                 [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n"
            );
            Config::from_toml_str_with_env(&toml, dir.path(), |_| None)
        };
        let serving = "client_tls_sslmode = \"require\"\n\
                       client_tls_cert_file = \"server.pem\"\n\
                       client_tls_key_file = \"server.key\"";
        let err = load(serving).unwrap_err();
        assert_eq!(err.key(), Some(CERT_KEY), "{err}");
        let err =
            load("client_tls_sslmode = \"allow\"\nclient_tls_cert_file = \"x.pem\"").unwrap_err();
        assert_eq!(err.key(), Some(KEY_KEY), "{err}");
        let err = load("server_tls_sslmode = \"verify-full\"").unwrap_err();
        assert_eq!(err.key(), Some(CA_KEY), "{err}");
        let err = load("server_tls_sslmode = \"verify-ca\"\nserver_tls_ca_file = \"ca.pem\"")
            .unwrap_err();
        assert_eq!(err.key(), Some(CA_KEY), "{err}");
        let err = load("server_tls_sslmode = \"allow\"").unwrap_err();
        assert_eq!(err.key(), Some("pgtenant.server_tls_sslmode"), "{err}");
        let err = load("client_tls_sslmode = \"verify-full\"").unwrap_err();
        assert_eq!(err.key(), Some("pgtenant.client_tls_sslmode"), "{err}");
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let err = load("server_tls_sslmode = \"require\"\nserver_tls_ca_file = \"empty.pem\"")
            .unwrap_err();
        assert_eq!(err.key(), Some(CA_KEY), "{err}");
        std::fs::write(
            dir.path().join("junk.key"),
            "-----BEGIN PRIVATE KEY-----\nsecretish\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let err = load(
            "client_tls_sslmode = \"allow\"\nclient_tls_cert_file = \"empty.pem\"\n\
             client_tls_key_file = \"junk.key\"",
        )
        .unwrap_err();
        assert_eq!(err.key(), Some(CERT_KEY), "{err}");
    }

    #[test]
    fn defaults_are_plaintext_clients_and_opportunistic_upstream_tls() {
        let dir = tempfile::tempdir().unwrap();
        let toml = "[auth]\nalgorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
                    [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n";
        let config = Config::from_toml_str_with_env(toml, dir.path(), |_| None).unwrap();
        let state = TlsState::new(&config).unwrap();
        let client = state.client();
        assert_eq!(client.mode, ClientTlsMode::Disable);
        assert!(client.acceptor.is_none());
        let upstream = state.upstream("app");
        assert_eq!(upstream.mode, ServerTlsMode::Prefer);
        assert!(upstream.connector.is_some());
    }
}
