//! Shoal's public-key infrastructure. `shoal init` creates one certificate authority per cluster
//! ([`Ca`]) and issues every process a certificate ([`Ca::issue`]) whose SAN names its [`Role`]
//! and name (`meta.meta-1.shoal`). Every connection in the cluster is mutual TLS 1.3 over rustls
//! with the aws-lc-rs provider: [`server_config`] demands a client certificate signed by the
//! cluster CA, [`client_config`] trusts only that CA (never the system roots) and presents its own
//! certificate. After the handshake either side reads who it talks to with [`peer_identity`] (or
//! [`require_role`]), which is how a meta server accepts Raft traffic only from meta nodes.
//!
//! Server-name scheme: certificates of server roles (meta, store) carry the DNS SAN
//! [`SERVER_NAME`] (`shoal-node`), and clients always verify against it
//! ([`server_name`]), whatever the address they dial. Nodes can therefore run on any IP or host
//! name without reissuing certificates. Client and admin certificates lack `shoal-node`, so they
//! can't pose as servers; a caller that needs a specific server role (a meta node, not a store)
//! checks it with [`require_role`] after the handshake.
//!
//! This crate does file I/O only in [`write_ca`], [`read_ca`], [`write_files`] and the config
//! builders, which read the PEM files named by a [`TlsFiles`].

mod ca;
mod files;
mod tls;

pub use ca::{cert_serial, Ca, IssuedCert, Role};
pub use files::{read_ca, write_atomic, write_ca, write_files, CaFiles, CA_CERT_FILE, CA_KEY_FILE};
pub use shoal_types::config::TlsFiles;
pub use tls::{
    client_config, peer_identity, require_role, server_config, server_name, PeerIdentity, ALPN,
    CRL_FILE, SERVER_NAME,
};

use std::path::PathBuf;

/// Everything that can go wrong while making, storing or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `origin` is the file path, or a description when the PEM came from memory.
    #[error("{origin}: bad PEM: {detail}")]
    BadPem { origin: String, detail: String },
    #[error("{origin}: no certificate found")]
    NoCertificate { origin: String },
    #[error("{origin}: no private key found")]
    NoKey { origin: String },
    #[error("{origin}: not a usable certificate: {detail}")]
    BadCertificate { origin: String, detail: String },
    #[error("{origin}: the private key does not belong to the certificate")]
    KeyMismatch { origin: String },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration; `what` names the files involved.
    #[error("{what}: {source}")]
    Tls { what: String, source: rustls::Error },
    #[error("{what}: {detail}")]
    Verifier { what: String, detail: String },
    #[error("peer presented no Shoal identity")]
    NoPeerIdentity,
    #[error("peer {found} has role {}, expected one of {allowed:?}", found.role.as_str())]
    WrongRole {
        found: PeerIdentity,
        allowed: Vec<Role>,
    },
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
