//! The cluster CA and the certificates it issues.

use crate::{PkiError, Result, SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

const CA_VALIDITY_SECS: i64 = 10 * 365 * 24 * 3600;
const LEAF_VALIDITY_SECS: i64 = 2 * 365 * 24 * 3600;
/// Certificates start being valid this long before they were made, so that a node whose clock
/// is a little behind the issuer's accepts them.
const BACKDATE_SECS: i64 = 3600;
const CA_CN_PREFIX: &str = "Shoal CA ";
/// Every role SAN ends with this label: `<role>.<name>.shoal`.
pub(crate) const ROLE_SAN_SUFFIX: &str = ".shoal";
const NAME_LEN_MAX: usize = 63;

/// What a process is allowed to be; encoded in its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Meta,
    Store,
    Client,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Meta, Role::Store, Role::Client, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Store => "store",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == s)
    }

    /// Servers (meta and store nodes) get the [`SERVER_NAME`] SAN; clients and admins don't.
    pub fn is_server(self) -> bool {
        matches!(self, Role::Meta | Role::Store)
    }

    /// The DNS SAN that carries the identity: `meta.meta-1.shoal`.
    pub fn san(self, name: &str) -> String {
        format!("{}.{name}{ROLE_SAN_SUFFIX}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate and its private key, both PEM (the key is PKCS#8).
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster certificate authority: a self-signed ECDSA P-256 certificate whose CN is
/// `Shoal CA <cluster>`, plus its key.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    cluster_name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Makes a new CA valid for 10 years.
    pub fn generate(cluster_name: &str) -> Result<Ca> {
        if cluster_name.is_empty() || cluster_name.chars().any(|c| c.is_control()) {
            return Err(PkiError::InvalidName {
                name: cluster_name.to_owned(),
                reason: "a cluster name must be non-empty printable text",
            });
        }
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{CA_CN_PREFIX}{cluster_name}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Shoal");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY_SECS)?;
        let cert = params.self_signed(&key_pair)?;
        let cert_pem = cert.pem();
        let key_pem = key_pair.serialize_pem();
        Ok(Ca {
            cert_pem,
            key_pem,
            cluster_name: cluster_name.to_owned(),
            issuer: Issuer::new(params, key_pair),
        })
    }

    /// Rebuilds a CA from the PEM that [`Ca::cert_pem`] and [`Ca::key_pem`] returned.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        Ca::load_from(cert_pem, "CA certificate", key_pem, "CA key")
    }

    /// [`Ca::load`], naming the origins (file paths) of the two PEM texts in errors.
    pub(crate) fn load_from(
        cert_pem: &str,
        cert_origin: &str,
        key_pem: &str,
        key_origin: &str,
    ) -> Result<Ca> {
        let cert_der = crate::tls::parse_certs(cert_pem.as_bytes(), cert_origin)?.swap_remove(0);
        let key_der = crate::tls::parse_key(key_pem.as_bytes(), key_origin)?;
        let key_pair = KeyPair::try_from(&key_der).map_err(|e| PkiError::BadPem {
            origin: key_origin.to_owned(),
            detail: e.to_string(),
        })?;

        let bad_cert = |detail: String| PkiError::BadCertificate {
            origin: cert_origin.to_owned(),
            detail,
        };
        let (_, x509) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| bad_cert(e.to_string()))?;
        if !x509.is_ca() {
            return Err(bad_cert("not a CA certificate".to_owned()));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
            return Err(PkiError::KeyMismatch {
                origin: key_origin.to_owned(),
            });
        }
        let cluster_name = x509
            .subject()
            .iter_common_name()
            .find_map(|cn| {
                cn.as_str()
                    .ok()?
                    .strip_prefix(CA_CN_PREFIX)
                    .map(str::to_owned)
            })
            .ok_or_else(|| bad_cert(format!("subject CN does not start with {CA_CN_PREFIX:?}")))?;
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key_pair).map_err(|e| bad_cert(e.to_string()))?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cluster_name,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PKCS#8 PEM). Whoever holds it can mint any identity.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// Issues a certificate valid for about 2 years, for both TLS server and client use.
    ///
    /// SANs: `<role>.<name>.shoal`, `localhost`, `127.0.0.1`, [`SERVER_NAME`] for server roles,
    /// then `extra_sans` (IP addresses become IP SANs, anything else a DNS SAN). The subject CN
    /// is `<role>:<name>`. `name` is one DNS label: lowercase letters, digits and `-`.
    pub fn issue(&self, role: Role, name: &str, extra_sans: &[String]) -> Result<IssuedCert> {
        check_name(name)?;
        let mut sans = vec![
            dns_san(&role.san(name))?,
            dns_san("localhost")?,
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        if role.is_server() {
            sans.push(dns_san(SERVER_NAME)?);
        }
        for extra in extra_sans {
            sans.push(match extra.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => dns_san(extra)?,
            });
        }

        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{}:{name}", role.as_str()));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Shoal");
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALIDITY_SECS)?;
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }
}

fn bad_cert(detail: String) -> PkiError {
    PkiError::BadCertificate { origin: "certificate".into(), detail }
}

/// The serial number of a certificate (PEM), as hex.
pub fn cert_serial(cert_pem: &str) -> Result<String> {
    let der = crate::tls::parse_certs(cert_pem.as_bytes(), "certificate")?
        .into_iter()
        .next()
        .ok_or_else(|| bad_cert("no certificate in the PEM".into()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad_cert(e.to_string()))?;
    Ok(x509.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
}

impl Ca {
    /// A certificate revocation list (PEM) naming `serials` (hex), signed by this CA; `number`
    /// must grow with each new list.
    pub fn revocation_list(&self, serials: &[String], number: u64) -> Result<String> {
        let now_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let at = |secs: i64| {
            x509_parser::time::ASN1Time::from_timestamp(secs)
                .map(|t| t.to_datetime())
                .map_err(|_| PkiError::Generate(rcgen::Error::Time))
        };
        let mut revoked = Vec::new();
        for hex in serials {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad_cert(format!("bad serial {hex:?}")))?;
            revoked.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&bytes),
                revocation_time: at(now_secs)?,
                reason_code: Some(rcgen::RevocationReason::Superseded),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: at(now_secs - BACKDATE_SECS)?,
            next_update: at(now_secs + CA_VALIDITY_SECS)?,
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// Accepts the names that fit in one DNS label, so `<role>.<name>.shoal` parses back unambiguously.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() || name.len() > NAME_LEN_MAX {
        Some("must be 1 to 63 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may contain only lowercase letters, digits and '-'")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("may not start or end with '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PkiError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn dns_san(name: &str) -> Result<SanType> {
    let ia5 = name
        .to_owned()
        .try_into()
        .map_err(|_| PkiError::InvalidName {
            name: name.to_owned(),
            reason: "a DNS name must be ASCII",
        })?;
    Ok(SanType::DnsName(ia5))
}

fn set_validity(params: &mut CertificateParams, validity_secs: i64) -> Result<()> {
    // rcgen wants `time::OffsetDateTime`; x509-parser's ASN1Time makes one from a Unix timestamp,
    // which spares this crate a direct dependency on `time`.
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let at = |secs: i64| {
        x509_parser::time::ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|_| PkiError::Generate(rcgen::Error::Time))
    };
    params.not_before = at(now_secs - BACKDATE_SECS)?;
    params.not_after = at(now_secs + validity_secs)?;
    Ok(())
}
