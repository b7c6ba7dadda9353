//! Throwaway certificate authorities for the TLS tests (rcgen): a CA, certificates it signs
//! for given host names or IP addresses, PEM files in a temporary directory, and a rustls
//! client configuration that trusts a CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A CA: its certificate as PEM and the key it signs with.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names; IP addresses become IP SANs) signed by this CA:
    /// (certificate PEM, PKCS#8 key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "pgtenant test server");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A CA file and a server certificate and key it signed, in a temporary directory.
pub struct TlsFiles {
    dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `server.pem`, `server.key` for a certificate naming `names`.
    pub fn new(ca: &Ca, names: &[&str]) -> TlsFiles {
        let dir = tempfile::Builder::new()
            .prefix("pgtenant-tls-")
            .tempdir()
            .unwrap();
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            dir,
        };
        std::fs::write(&files.ca, &ca.pem).unwrap();
        files.replace_certificate(ca, names);
        files
    }

    /// Overwrites `server.pem` and `server.key` with a new certificate from `ca`.
    pub fn replace_certificate(&self, ca: &Ca, names: &[&str]) {
        let (cert, key) = ca.issue(names);
        std::fs::write(&self.cert, cert).unwrap();
        std::fs::write(&self.key, key).unwrap();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes another file into the directory (another CA, say) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Path as a string for a TOML value or a libpq parameter.
    pub fn path_str(path: &Path) -> String {
        path.to_str().unwrap().to_owned()
    }
}

/// A rustls client configuration trusting `ca_pem`, offering `alpn` if given.
pub fn client_config(ca_pem: &str, alpn: Option<&[u8]>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Arc::new(config)
}
