//! rustls configurations for mutual TLS, and reading the peer's identity after a handshake.

use crate::ca::{check_name, ROLE_SAN_SUFFIX};
use crate::files::read_to_string;
use crate::{PkiError, Result, Role, TlsFiles};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};
use std::fmt;
use std::sync::Arc;

/// The one ALPN protocol Shoal speaks.
pub const ALPN: &[u8] = b"shoal/1";

/// The DNS SAN of every server certificate, and the name clients verify servers against.
pub const SERVER_NAME: &str = "shoal-node";

/// [`SERVER_NAME`] as the `ServerName` that `tokio_rustls::TlsConnector::connect` takes.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name")
}

/// Who is on the other end of a connection, according to its CA-signed certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role.as_str(), self.name)
    }
}

/// The config of a listening process: presents `files.cert`, requires every client to present a
/// certificate signed by `files.ca_cert`, speaks only TLS 1.3 and ALPN [`ALPN`].
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let roots = Arc::new(load_roots(files)?);
    let what = || format!("server TLS config from {}", files.ca_cert.display());
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(load_crls(files)?)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| PkiError::Verifier {
            what: what(),
            detail: e.to_string(),
        })?;
    let (chain, key) = load_identity(files)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| PkiError::Tls {
            what: what(),
            source,
        })?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|source| PkiError::Tls {
            what: identity_what(files),
            source,
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The config of a connecting process: trusts only `files.ca_cert` (never the system roots),
/// presents `files.cert`, speaks only TLS 1.3 and ALPN [`ALPN`]. Connect with [`server_name`].
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let roots = Arc::new(load_roots(files)?);
    let what = || format!("client TLS config from {}", files.ca_cert.display());
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(load_crls(files)?)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| PkiError::Verifier {
            what: what(),
            detail: e.to_string(),
        })?;
    let (chain, key) = load_identity(files)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| PkiError::Tls {
            what: what(),
            source,
        })?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|source| PkiError::Tls {
            what: identity_what(files),
            source,
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The role and name in the peer's certificate (its `<role>.<name>.shoal` DNS SAN), or `None`
/// before the handshake completes or when the certificate has no such SAN. Trustworthy only
/// because both configs of this crate verify the peer against the cluster CA.
pub fn peer_identity(conn: &CommonState) -> Option<PeerIdentity> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value
        .general_names
        .iter()
        .find_map(|general_name| match general_name {
            x509_parser::extensions::GeneralName::DNSName(dns) => parse_role_san(dns),
            _ => None,
        })
}

/// [`peer_identity`], failing unless the peer has one of the `allowed` roles.
pub fn require_role(conn: &CommonState, allowed: &[Role]) -> Result<PeerIdentity> {
    let found = peer_identity(conn).ok_or(PkiError::NoPeerIdentity)?;
    if allowed.contains(&found.role) {
        Ok(found)
    } else {
        Err(PkiError::WrongRole {
            found,
            allowed: allowed.to_vec(),
        })
    }
}

fn parse_role_san(dns: &str) -> Option<PeerIdentity> {
    let (role, name) = dns.strip_suffix(ROLE_SAN_SUFFIX)?.split_once('.')?;
    let role = Role::parse(role)?;
    check_name(name).ok()?;
    Some(PeerIdentity {
        role,
        name: name.to_owned(),
    })
}

/// The aws-lc-rs provider, passed explicitly so no process-wide default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn identity_what(files: &TlsFiles) -> String {
    format!(
        "certificate {} with key {}",
        files.cert.display(),
        files.key.display()
    )
}

/// The CA's revocation list, `ca.crl` beside the CA certificate, if there is one: a
/// certificate it names is refused as a peer.
pub(crate) fn crl_path(files: &TlsFiles) -> std::path::PathBuf {
    files.ca_cert.with_file_name(CRL_FILE)
}

/// File name of the revocation list, beside the CA certificate.
pub const CRL_FILE: &str = "ca.crl";

fn load_crls(files: &TlsFiles) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>> {
    let path = crl_path(files);
    let pem = match std::fs::read(&path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PkiError::Read { path, source }),
    };
    rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(&path.display().to_string(), e))
}

fn load_roots(files: &TlsFiles) -> Result<RootCertStore> {
    let origin = files.ca_cert.display().to_string();
    let pem = read_to_string(&files.ca_cert)?;
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem.as_bytes(), &origin)? {
        roots.add(cert).map_err(|e| PkiError::BadCertificate {
            origin: origin.clone(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn load_identity(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = parse_certs(
        read_to_string(&files.cert)?.as_bytes(),
        &files.cert.display().to_string(),
    )?;
    let key = parse_key(
        read_to_string(&files.key)?.as_bytes(),
        &files.key.display().to_string(),
    )?;
    Ok((chain, key))
}

/// Every certificate in `pem`, at least one.
pub(crate) fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(origin, e))?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in `pem`.
pub(crate) fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => PkiError::NoKey {
            origin: origin.to_owned(),
        },
        e => bad_pem(origin, e),
    })
}

fn bad_pem(origin: &str, e: pem::Error) -> PkiError {
    PkiError::BadPem {
        origin: origin.to_owned(),
        detail: e.to_string(),
    }
}
