use super::*;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Issues `role`/`name` from `ca` and writes it, with the CA, into `dir`.
fn must_issue(dir: &Path, ca: &Ca, role: Role, name: &str) -> TlsFiles {
    let cert = ca.issue(role, name, &[]).expect("issue");
    write_ca(dir, ca).expect("write CA");
    write_files(dir, &format!("{role}-{name}"), &cert).expect("write cert")
}

/// What each side of [`exchange`] saw: the peer's identity if the handshake and a
/// ping/pong succeeded.
struct Outcome {
    server: io::Result<Option<PeerIdentity>>,
    client: io::Result<Option<PeerIdentity>>,
    /// `require_role(.., &[Role::Meta])` on the server side, when the handshake succeeded.
    server_requires_meta: Option<Result<PeerIdentity>>,
}

/// Runs one TLS connection over loopback: the client sends `ping!`, the server answers `pong!`.
async fn exchange(server_config: Arc<ServerConfig>, client_config: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config);
    let connector = TlsConnector::from(client_config);

    let server = async {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let identity = peer_identity(tls.get_ref().1);
        let requires_meta = require_role(tls.get_ref().1, &[Role::Meta]);
        let mut ping = [0u8; 5];
        tls.read_exact(&mut ping).await?;
        assert_eq!(&ping, b"ping!");
        tls.write_all(b"pong!").await?;
        tls.shutdown().await?;
        Ok::<_, io::Error>((identity, requires_meta))
    };
    let client = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(server_name(), tcp).await?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN));
        let identity = peer_identity(tls.get_ref().1);
        tls.write_all(b"ping!").await?;
        let mut pong = [0u8; 5];
        tls.read_exact(&mut pong).await?;
        assert_eq!(&pong, b"pong!");
        Ok::<_, io::Error>(identity)
    };
    let (server, client) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server, client)
    })
    .await
    .expect("TLS exchange hung");
    let (server, server_requires_meta) = match server {
        Ok((identity, requires_meta)) => (Ok(identity), Some(requires_meta)),
        Err(e) => (Err(e), None),
    };
    Outcome {
        server,
        client,
        server_requires_meta,
    }
}

fn identity(role: Role, name: &str) -> PeerIdentity {
    PeerIdentity {
        role,
        name: name.to_owned(),
    }
}

#[tokio::test]
async fn mutual_tls_exchanges_bytes_and_names_both_peers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let server = must_issue(dir.path(), &ca, Role::Meta, "meta-1");
    let client = must_issue(dir.path(), &ca, Role::Client, "alice");

    let outcome = exchange(
        server_config(&server).unwrap(),
        client_config(&client).unwrap(),
    )
    .await;
    assert_eq!(
        outcome.server.unwrap(),
        Some(identity(Role::Client, "alice"))
    );
    assert_eq!(
        outcome.client.unwrap(),
        Some(identity(Role::Meta, "meta-1"))
    );
    match outcome.server_requires_meta.unwrap() {
        Err(PkiError::WrongRole { found, allowed }) => {
            assert_eq!(found, identity(Role::Client, "alice"));
            assert_eq!(allowed, vec![Role::Meta]);
        }
        other => panic!("expected WrongRole, got {other:?}"),
    }
}

#[tokio::test]
async fn meta_peer_passes_require_role() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let server = must_issue(dir.path(), &ca, Role::Meta, "meta-1");
    let peer = must_issue(dir.path(), &ca, Role::Meta, "meta-2");

    let outcome = exchange(
        server_config(&server).unwrap(),
        client_config(&peer).unwrap(),
    )
    .await;
    assert_eq!(
        outcome.server_requires_meta.unwrap().unwrap(),
        identity(Role::Meta, "meta-2")
    );
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let other_ca = Ca::generate("test").unwrap();
    let server = must_issue(dir.path(), &ca, Role::Store, "store-1");
    // The impostor trusts the real CA, so it accepts the server, but its own cert is foreign.
    let mut impostor = must_issue(other_dir.path(), &other_ca, Role::Meta, "meta-1");
    impostor.ca_cert = server.ca_cert.clone();

    let outcome = exchange(
        server_config(&server).unwrap(),
        client_config(&impostor).unwrap(),
    )
    .await;
    assert!(
        outcome.server.is_err(),
        "server accepted a foreign client cert"
    );
    assert!(outcome.client.is_err(), "client saw the exchange succeed");
}

#[tokio::test]
async fn client_without_cert_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let server = must_issue(dir.path(), &ca, Role::Meta, "meta-1");

    let mut roots = RootCertStore::empty();
    roots
        .add(
            tls::parse_certs(ca.cert_pem().as_bytes(), "ca")
                .unwrap()
                .remove(0),
        )
        .unwrap();
    let mut anonymous = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    anonymous.alpn_protocols = vec![ALPN.to_vec()];

    let outcome = exchange(server_config(&server).unwrap(), Arc::new(anonymous)).await;
    assert!(
        outcome.server.is_err(),
        "server accepted a client without a cert"
    );
    assert!(outcome.client.is_err(), "client saw the exchange succeed");
}

#[tokio::test]
async fn server_cert_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let other_ca = Ca::generate("test").unwrap();
    let client = must_issue(dir.path(), &ca, Role::Client, "alice");
    // The impostor server accepts the real client, but presents a foreign cert.
    let mut impostor = must_issue(other_dir.path(), &other_ca, Role::Meta, "meta-1");
    impostor.ca_cert = client.ca_cert.clone();

    let outcome = exchange(
        server_config(&impostor).unwrap(),
        client_config(&client).unwrap(),
    )
    .await;
    let err = outcome
        .client
        .expect_err("client accepted a foreign server cert");
    // Both CAs are named "Shoal CA test", so the chain is found but its signature is wrong.
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn client_cert_cannot_pose_as_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let posing = must_issue(dir.path(), &ca, Role::Client, "mallory");
    let client = must_issue(dir.path(), &ca, Role::Client, "alice");

    let outcome = exchange(
        server_config(&posing).unwrap(),
        client_config(&client).unwrap(),
    )
    .await;
    let err = outcome
        .client
        .expect_err("client accepted a server without the shoal-node SAN");
    assert!(
        err.to_string()
            .contains("not valid for name \"shoal-node\""),
        "{err}"
    );
}

#[tokio::test]
async fn ca_round_trips_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("prod-east").unwrap();
    let ca_files = write_ca(dir.path(), &ca).unwrap();
    assert_eq!(ca_files.cert, dir.path().join("ca.crt"));
    assert_eq!(ca_files.key, dir.path().join("ca.key"));

    let loaded = read_ca(dir.path()).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.key_pem(), ca.key_pem());
    assert_eq!(loaded.cluster_name(), "prod-east");
    let again = Ca::load(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(again.cluster_name(), "prod-east");

    // Certificates from the loaded CA chain to the original ca.crt.
    let server = must_issue(dir.path(), &loaded, Role::Store, "store-2");
    let client = write_files(
        dir.path(),
        "alice",
        &ca.issue(Role::Admin, "alice", &[]).unwrap(),
    )
    .unwrap();
    let outcome = exchange(
        server_config(&server).unwrap(),
        client_config(&client).unwrap(),
    )
    .await;
    assert_eq!(
        outcome.server.unwrap(),
        Some(identity(Role::Admin, "alice"))
    );
    assert_eq!(
        outcome.client.unwrap(),
        Some(identity(Role::Store, "store-2"))
    );
}

#[cfg(unix)]
#[test]
fn keys_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let ca_files = write_ca(dir.path(), &ca).unwrap();
    let files = must_issue(dir.path(), &ca, Role::Store, "store-1");
    assert_eq!(files.cert, dir.path().join("store-store-1.crt"));
    assert_eq!(files.key, dir.path().join("store-store-1.key"));
    assert_eq!(files.ca_cert, ca_files.cert);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca_files.key), 0o600);
    assert_eq!(mode(&files.key), 0o600);
    // Rewriting keeps the mode.
    write_ca(dir.path(), &ca).unwrap();
    assert_eq!(mode(&ca_files.key), 0o600);
}

#[test]
fn issued_cert_carries_role_sans_and_both_key_usages() {
    use x509_parser::extensions::GeneralName;
    let ca = Ca::generate("test").unwrap();
    let extra = vec!["10.0.0.7".to_owned(), "node7.example".to_owned()];
    let cert = ca.issue(Role::Store, "store-2", &extra).unwrap();
    let der = tls::parse_certs(cert.cert_pem.as_bytes(), "cert")
        .unwrap()
        .remove(0);
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();

    let cn: Vec<_> = x509
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["store:store-2"]);
    let issuer_cn: Vec<_> = x509
        .issuer()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap())
        .collect();
    assert_eq!(issuer_cn, ["Shoal CA test"]);
    let sans: Vec<String> = x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("dns:{dns}"),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => format!(
                    "ip:{}",
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap())
                ),
                _ => format!("ip:{ip:?}"),
            },
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sans,
        [
            "dns:store.store-2.shoal",
            "dns:localhost",
            "ip:127.0.0.1",
            "dns:shoal-node",
            "ip:10.0.0.7",
            "dns:node7.example",
        ]
    );
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!x509.is_ca());
    let validity_days =
        (x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp()) / 86_400;
    assert!((729..=731).contains(&validity_days), "{validity_days}");

    // Clients don't get the server name.
    let client = ca.issue(Role::Client, "alice", &[]).unwrap();
    assert!(!client.cert_pem.is_empty());
    let der = tls::parse_certs(client.cert_pem.as_bytes(), "cert")
        .unwrap()
        .remove(0);
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .len();
    assert_eq!(sans, 3);
}

#[test]
fn bad_names_are_refused() {
    let ca = Ca::generate("test").unwrap();
    for name in ["", "Alice", "a.b", "-x", "x-", "a b", &"x".repeat(64)] {
        match ca.issue(Role::Client, name, &[]) {
            Err(PkiError::InvalidName { .. }) => {}
            other => panic!("{name:?}: expected InvalidName, got {other:?}"),
        }
    }
    assert!(ca.issue(Role::Client, &"x".repeat(63), &[]).is_ok());
    assert!(matches!(
        Ca::generate(""),
        Err(PkiError::InvalidName { .. })
    ));
}

#[test]
fn load_refuses_a_key_from_another_ca() {
    let ca = Ca::generate("test").unwrap();
    let other = Ca::generate("test").unwrap();
    assert!(matches!(
        Ca::load(ca.cert_pem(), other.key_pem()),
        Err(PkiError::KeyMismatch { .. })
    ));
    // A leaf certificate is not a CA.
    let leaf = ca.issue(Role::Meta, "meta-1", &[]).unwrap();
    assert!(matches!(
        Ca::load(&leaf.cert_pem, &leaf.key_pem),
        Err(PkiError::BadCertificate { .. })
    ));
}

#[test]
fn errors_name_the_failing_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let files = must_issue(dir.path(), &ca, Role::Meta, "meta-1");
    let message = |result: Result<Arc<ServerConfig>>| result.unwrap_err().to_string();

    let missing = TlsFiles {
        cert: dir.path().join("nope.crt"),
        ..files.clone()
    };
    let text = message(server_config(&missing));
    assert!(
        text.starts_with(&format!("read {}", missing.cert.display())),
        "{text}"
    );

    // A key file holding only a certificate has no key.
    let no_key = TlsFiles {
        key: files.cert.clone(),
        ..files.clone()
    };
    let err = server_config(&no_key).unwrap_err();
    assert!(matches!(err, PkiError::NoKey { .. }), "{err}");
    assert!(
        err.to_string().contains(&files.cert.display().to_string()),
        "{err}"
    );

    let garbage = dir.path().join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad = TlsFiles {
        ca_cert: garbage.clone(),
        ..files.clone()
    };
    let err = client_config(&bad).unwrap_err();
    assert!(matches!(err, PkiError::BadPem { .. }), "{err}");
    assert!(
        err.to_string().contains(&garbage.display().to_string()),
        "{err}"
    );

    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let err = client_config(&TlsFiles {
        cert: empty.clone(),
        ..files.clone()
    })
    .unwrap_err();
    assert!(matches!(err, PkiError::NoCertificate { .. }), "{err}");

    // A key that does not belong to the certificate.
    let other = must_issue(dir.path(), &ca, Role::Meta, "meta-2");
    let err = server_config(&TlsFiles {
        key: other.key,
        ..files
    })
    .unwrap_err();
    assert!(matches!(err, PkiError::Tls { .. }), "{err}");
}

#[tokio::test]
async fn revoked_certificates_are_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    let server = must_issue(dir.path(), &ca, Role::Store, "store-1");
    let client = must_issue(dir.path(), &ca, Role::Client, "client");
    let spare = must_issue(dir.path(), &ca, Role::Client, "spare");
    let ok = exchange(server_config(&server).unwrap(), client_config(&client).unwrap()).await;
    assert!(ok.server.is_ok() && ok.client.is_ok(), "before revocation");

    // Revoke the client's certificate: a server loading the list refuses it, not the other.
    let serial = cert_serial(&std::fs::read_to_string(&client.cert).unwrap()).unwrap();
    std::fs::write(tls::crl_path(&server), ca.revocation_list(&[serial], 1).unwrap()).unwrap();
    let refused = exchange(server_config(&server).unwrap(), client_config(&client).unwrap()).await;
    assert!(refused.server.is_err(), "server accepted a revoked client certificate");
    let other = exchange(server_config(&server).unwrap(), client_config(&spare).unwrap()).await;
    assert!(other.server.is_ok() && other.client.is_ok(), "another certificate still works");

    // Revoke the server's: a client refuses it.
    let serial = cert_serial(&std::fs::read_to_string(&server.cert).unwrap()).unwrap();
    std::fs::write(tls::crl_path(&server), ca.revocation_list(&[serial], 2).unwrap()).unwrap();
    let refused = exchange(server_config(&server).unwrap(), client_config(&spare).unwrap()).await;
    assert!(refused.client.is_err(), "client accepted a revoked server certificate");
}
