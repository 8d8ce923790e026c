//! Tickets and authorization through the real binaries: logins, forged, foreign, expired and
//! replayed credentials, a modified client, a user's mount, and a man in the middle.

use crate::harness::*;
use shoal_client::{Client, Login};
use shoal_types::codec;
use shoal_types::meta_msg::*;
use shoal_types::{Credentials, FileHandle, FsError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `shoal --dir C ARGS` with `cache` as the ticket cache and `stdin` as standard input.
fn as_user(c: &TestCluster, cache: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(SHOAL)
        .arg("--dir")
        .arg(c.path())
        .args(args)
        .env("SHOAL_TICKET_CACHE", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn refused(o: &Output, why: &str) {
    assert_eq!(o.status.code(), Some(4), "exit code 4 (refused) expected; stderr: {}", stderr(o));
    assert!(stderr(o).contains(why), "the error should say {why:?}: {}", stderr(o));
}

fn add_user(c: &TestCluster, name: &str, uid: u32, password: &str) {
    let o = as_user(c, &c.file("no-cache"), &["user", "add", name, "--uid", &uid.to_string(), "--gid", &uid.to_string(), "--password-stdin"], &format!("{password}\n"));
    assert!(o.status.success(), "user add {name}: {}", stderr(&o));
}

/// Log `name` in; returns the ticket cache.
fn login(c: &TestCluster, name: &str, password: &str) -> PathBuf {
    let cache = c.file(&format!("tgt-{name}"));
    let o = as_user(c, &cache, &["login", name, "--password-stdin"], &format!("{password}\n"));
    assert!(o.status.success(), "login {name}: {}", stderr(&o));
    cache
}

fn cached_grant(cache: &Path) -> shoal_auth::Grant {
    codec::decode(&std::fs::read(cache).unwrap()).unwrap()
}

fn meta_logs(c: &TestCluster) -> String {
    let mut s = String::new();
    for e in std::fs::read_dir(c.path().join("logs")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("meta") {
            s += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
    }
    s
}

#[test]
fn logins_and_foreign_or_altered_tickets_are_refused_and_logged() {
    let c = TestCluster::start();
    add_user(&c, "alice", 1000, "alice's password");
    let nobody = c.file("tgt-nobody");
    refused(&as_user(&c, &nobody, &["login", "alice", "--password-stdin"], "guess\n"), "wrong password or unknown user");
    refused(&as_user(&c, &nobody, &["login", "mallory", "--password-stdin"], "guess\n"), "wrong password or unknown user");
    assert!(!nobody.exists(), "a refused login caches nothing");
    let alice = login(&c, "alice", "alice's password");
    let who = as_user(&c, &alice, &["whoami"], "");
    assert!(String::from_utf8_lossy(&who.stdout).starts_with("alice uid=1000"), "{}", String::from_utf8_lossy(&who.stdout));
    // A non-admin cannot add users, even one with a chosen uid of 0.
    refused(&as_user(&c, &alice, &["user", "add", "eve", "--uid", "0", "--gid", "0", "--password-stdin"], "x\n"), "not permitted");

    // A ticket whose bytes were altered.
    let mut g = cached_grant(&alice);
    let mid = g.ticket.len() / 2;
    g.ticket[mid] ^= 0x40;
    let altered = c.file("tgt-altered");
    std::fs::write(&altered, codec::encode(&g)).unwrap();
    refused(&as_user(&c, &altered, &["ls", "/"], ""), "altered or forged");

    // A ticket from another cluster, for a user of the same name.
    let other = TestCluster::start();
    add_user(&other, "alice", 1000, "alice's password");
    let foreign = login(&other, "alice", "alice's password");
    refused(&as_user(&c, &foreign, &["ls", "/"], ""), "issued by another cluster");

    // A removed user's ticket-granting ticket buys no new ticket.
    add_user(&c, "carol", 1002, "pw");
    let carol = login(&c, "carol", "pw");
    assert!(as_user(&c, &carol, &["ls", "/"], "").status.success());
    c.must_shoal(&["user", "remove", "carol"]);
    refused(&as_user(&c, &carol, &["ls", "/"], ""), "no longer exists");

    let o = as_user(&c, &alice, &["logout"], "");
    assert!(o.status.success() && !alice.exists());
    let logs = meta_logs(&c);
    for why in ["refused a login: wrong password", "altered or forged", "issued by another cluster", "no longer exists"] {
        assert!(logs.contains(why), "the metadata service logs {why:?}");
    }
}

#[test]
fn expired_tickets_are_refused() {
    let c = TestCluster::start_with(&["--ticket-lifetime-s", "3", "--ticket-renew-s", "3"]);
    add_user(&c, "alice", 1000, "pw");
    let alice = login(&c, "alice", "pw");
    let ok = as_user(&c, &alice, &["ls", "/"], "");
    assert!(ok.status.success(), "{}", stderr(&ok));
    std::thread::sleep(Duration::from_secs(4));
    refused(&as_user(&c, &alice, &["ls", "/"], ""), "ticket expired");
    // After a new login it works again.
    let alice = login(&c, "alice", "pw");
    assert!(as_user(&c, &alice, &["ls", "/"], "").status.success());
}

/// A service ticket for `tgt`, got by hand (as a modified client would).
async fn service_ticket(client: &Client, tgt: &shoal_auth::Grant) -> shoal_auth::Grant {
    let authenticator = shoal_auth::authenticator(&tgt.session_key, shoal_auth::now_us(), shoal_auth::digest(b"service"));
    match client.auth_call(AuthRequest::Service { tgt: tgt.ticket.clone(), authenticator }).await.unwrap() {
        AuthReply::Grant(sealed) => shoal_auth::open_grant(&tgt.session_key, &sealed).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn authed(ticket: &shoal_auth::Grant, req: &MetaRequest, time_us: u64) -> MetaWireReq {
    let authenticator = shoal_auth::authenticator(&ticket.session_key, time_us, shoal_auth::digest(&codec::encode(req)));
    MetaWireReq::Authed { auth: RequestAuth { ticket: ticket.ticket.clone(), authenticator }, req: req.clone() }
}

async fn send(rpc: &shoal_net::RpcClient, wire: &MetaWireReq) -> MetaResponse {
    match rpc.call::<_, MetaWireResp>(wire, &[]).await.unwrap().0 {
        MetaWireResp::Client(r) => r,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_unticketed_and_pre_restart_requests_are_refused() {
    let c = TestCluster::start_with(&["--ticket-lifetime-s", "4", "--ticket-renew-s", "4"]);
    add_user(&c, "alice", 1000, "pw");
    let cfg = c.client_config();
    let tls = shoal_pki::client_config(&cfg.tls).unwrap();
    let anon = Client::without_session(&cfg, tls.clone(), Credentials::ROOT).unwrap();
    let tgt = anon.login_password("alice", b"pw").await.unwrap();
    let st = service_ticket(&anon, &tgt).await;
    let leader = c.leader();
    let addr = cfg.meta.iter().find(|m| m.id.0 == leader).unwrap().addr.clone();
    let rpc = shoal_net::RpcClient::new(addr, tls.clone(), 1, Duration::from_secs(10));
    let req = MetaRequest { session: shoal_types::SessionId(0), seq: 0, cred: Credentials::ROOT, op: MetaOp::GetAttr { handle: FileHandle::ROOT } };

    // Accepted once; the same bytes again are a replay.
    let first = authed(&st, &req, shoal_auth::now_us());
    assert!(send(&rpc, &first).await.is_ok());
    let again = send(&rpc, &first).await;
    assert!(matches!(&again, Err(FsError::Unauthenticated(m)) if m.contains("replayed")), "{again:?}");
    // Its authenticator on another request.
    let MetaWireReq::Authed { auth, .. } = &first else { unreachable!() };
    let other = MetaRequest { op: MetaOp::Statfs, ..req.clone() };
    let swapped = send(&rpc, &MetaWireReq::Authed { auth: auth.clone(), req: other }).await;
    assert!(matches!(&swapped, Err(FsError::Unauthenticated(m)) if m.contains("does not match")), "{swapped:?}");
    // No ticket at all.
    let bare = send(&rpc, &MetaWireReq::Client(req.clone())).await;
    assert!(matches!(&bare, Err(FsError::Unauthenticated(m)) if m.contains("needs a ticket")), "{bare:?}");

    // Made now, sent after every metadata node restarted: refused (the replay caches are
    // empty, so a restart must not reopen the window).
    let before_restart = authed(&st, &req, shoal_auth::now_us());
    for i in 1..=3 {
        c.kill9(&format!("meta-{i}"));
    }
    c.up();
    let leader = c.leader();
    let addr = cfg.meta.iter().find(|m| m.id.0 == leader).unwrap().addr.clone();
    let rpc = shoal_net::RpcClient::new(addr, tls, 1, Duration::from_secs(10));
    let late = send(&rpc, &before_restart).await;
    assert!(matches!(&late, Err(FsError::Unauthenticated(m)) if m.contains("before this server started")), "{late:?}");
    // A fresh authenticator with the same ticket is fine.
    assert!(send(&rpc, &authed(&st, &req, shoal_auth::now_us())).await.is_ok());

    // Past its expiry the ticket is refused, however fresh the authenticator.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let expired = send(&rpc, &authed(&st, &req, shoal_auth::now_us())).await;
    assert_eq!(expired, Err(FsError::TicketExpired));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_modified_client_claiming_root_gets_only_its_users_rights() {
    let c = TestCluster::start();
    add_user(&c, "alice", 1000, "pw");
    add_user(&c, "bob", 1001, "pw");
    c.must_shoal(&["mkdir", "/home-bob"]);
    c.must_shoal(&["chown", "1001:1001", "/home-bob"]);
    let bob = login(&c, "bob", "pw");
    let secret = c.file("secret");
    std::fs::write(&secret, b"bob's secret").unwrap();
    assert!(as_user(&c, &bob, &["put", secret.to_str().unwrap(), "/home-bob/secret"], "").status.success());
    assert!(as_user(&c, &bob, &["chmod", "600", "/home-bob/secret"], "").status.success());

    // Through the CLI, logged in as alice.
    let alice_cache = login(&c, "alice", "pw");
    refused(&as_user(&c, &alice_cache, &["cat", "/home-bob/secret"], ""), "permission denied");
    refused(&as_user(&c, &alice_cache, &["put", secret.to_str().unwrap(), "/home-bob/planted"], ""), "permission denied");
    // Alice's client sends root's credentials with each request; the server acts as alice.
    let alice = cached_grant(&alice_cache);
    let client = Client::connect_as(&c.client_config(), Login::Tgt(alice), Credentials::ROOT, "modified").await.unwrap();
    let dir = client.resolve("/home-bob").await.unwrap();
    let file = client.resolve("/home-bob/secret").await.unwrap();
    assert_eq!(client.read_range(file.handle, 0, 12).await.err(), Some(FsError::PermissionDenied), "reading bob's 0600 file");
    let created = client.create(dir.handle, "planted", 0o644, true).await;
    assert_eq!(created.err(), Some(FsError::PermissionDenied), "writing into bob's 0755 directory");
    let chown = client.meta(MetaOp::SetAttr { handle: file.handle, set: shoal_types::SetAttr { uid: Some(1000), ..Default::default() } }).await;
    assert!(matches!(chown, Err(FsError::NotPermitted | FsError::PermissionDenied)), "{chown:?}");
    let rec = shoal_auth::new_user("eve", 0, 0, vec![], b"x").unwrap();
    assert_eq!(client.meta(MetaOp::AddUser(rec)).await.err(), Some(FsError::NotPermitted));
    // What alice may do, she can, as herself: a file in a sticky world-writable directory.
    c.must_shoal(&["mkdir", "/shared"]);
    c.must_shoal(&["chmod", "1777", "/shared"]);
    let shared = client.resolve("/shared").await.unwrap();
    let mine = client.create(shared.handle, "alice-file", 0o644, true).await.unwrap();
    assert_eq!((mine.uid, mine.gid), (1000, 1000), "created as alice, not as the root it claimed");
}

#[test]
fn a_users_mount_acts_as_that_user() {
    let c = TestCluster::start();
    add_user(&c, "alice", 1000, "pw");
    c.must_shoal(&["mkdir", "/home-bob"]);
    c.must_shoal(&["chown", "1001:1001", "/home-bob"]);
    let secret = c.file("secret");
    std::fs::write(&secret, b"bob's secret").unwrap();
    c.must_shoal(&["put", secret.to_str().unwrap(), "/home-bob/secret"]);
    c.must_shoal(&["chown", "1001:1001", "/home-bob/secret"]);
    c.must_shoal(&["chmod", "600", "/home-bob/secret"]);
    c.must_shoal(&["mkdir", "/shared"]);
    c.must_shoal(&["chmod", "1777", "/shared"]);
    let alice = login(&c, "alice", "pw");
    let mnt = c.file("mnt-alice");
    let o = Command::new(SHOAL).arg("--dir").arg(c.path()).arg("mount").arg(&mnt).env("SHOAL_TICKET_CACHE", &alice).output().unwrap();
    assert!(o.status.success(), "mount: {}", stderr(&o));
    // This test runs as root; through alice's mount it is alice.
    let read = std::fs::read(mnt.join("home-bob/secret"));
    assert_eq!(read.map_err(|e| e.raw_os_error()), Err(Some(libc::EACCES)), "bob's 0600 file");
    let planted = std::fs::write(mnt.join("home-bob/planted"), b"x");
    assert_eq!(planted.map_err(|e| e.raw_os_error()), Err(Some(libc::EACCES)), "bob's 0755 directory");
    std::fs::write(mnt.join("shared/from-alice"), b"hello").unwrap();
    assert!(c.must_shoal(&["stat", "/shared/from-alice"]).contains("Uid: 1000"), "owned by alice: {}", c.must_shoal(&["stat", "/shared/from-alice"]));
    let _ = Command::new(SHOAL).arg("--dir").arg(c.path()).arg("umount").arg(&mnt).output();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_man_in_the_middle_with_its_own_certificate_is_refused() {
    let c = TestCluster::start();
    // The proxy presents a metadata-node certificate from its own CA.
    let other = tempfile::tempdir().unwrap();
    let ca = shoal_pki::Ca::generate("mallory").unwrap();
    shoal_pki::write_ca(other.path(), &ca).unwrap();
    let files = shoal_pki::write_files(other.path(), "meta-1", &ca.issue(shoal_pki::Role::Meta, "meta-1", &[]).unwrap()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(shoal_pki::server_config(&files).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap().to_string();
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // A relay would copy bytes on to the real server; it never gets that far.
            if acceptor.accept(tcp).await.is_ok() {
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let mut cfg = c.client_config();
    for m in &mut cfg.meta {
        m.addr = proxy.clone();
    }
    let r = tokio::time::timeout(Duration::from_secs(20), Client::connect(&cfg, Credentials::ROOT, "via-proxy")).await.expect("refused quickly");
    assert!(r.is_err(), "a client must not talk through the proxy");
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 0, "no TLS session was established with the proxy");
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_servers_refuse_requests_without_a_valid_capability() {
    use shoal_types::store_msg::{StoreReply, StoreRequest};
    let c = TestCluster::start();
    let open = c.file("open");
    std::fs::write(&open, bytes(1, 100_000)).unwrap();
    c.must_shoal(&["put", open.to_str().unwrap(), "/open"]);
    c.must_shoal(&["put", open.to_str().unwrap(), "/other"]);
    let client = c.client().await;
    let layout = |path: &'static str| {
        let client = client.clone();
        async move {
            let a = client.resolve(path).await.unwrap();
            match client.meta(MetaOp::GetLayout { handle: a.handle, first_chunk: 0, n_chunks: 1 }).await.unwrap() {
                MetaReply::Layout(l) => l.blobs[0].clone(),
                other => panic!("{other:?}"),
            }
        }
    };
    let (mine, theirs) = (layout("/open").await, layout("/other").await);
    let cap = mine.cap.clone().expect("a layout comes with a capability");
    let addr = &mine.stores[0].addr;
    let get = |blob| StoreRequest::Get { blob, offset: 0, len: 100 };
    let refusal = |r: shoal_types::FsResult<(StoreReply, bytes::Bytes)>| match r {
        Err(FsError::Unauthenticated(why)) => why,
        other => panic!("expected a refusal, got {:?}", other.map(|(r, _)| r)),
    };

    // With its capability the read works; without one, or with another blob's, it does not.
    let (_, data) = client.store_call(addr, &get(mine.blob).with_cap(Some(&cap)), &[]).await.unwrap();
    assert_eq!(&data[..], &bytes(1, 100_000)[..100]);
    assert!(refusal(client.store_call(addr, &get(mine.blob), &[]).await).contains("capability"));
    let theirs_addr = &theirs.stores[0].addr;
    assert!(refusal(client.store_call(theirs_addr, &get(theirs.blob).with_cap(Some(&cap)), &[]).await).contains("does not name this blob"));
    // A read capability does not allow a put.
    let put = StoreRequest::Put { blob: mine.blob, crc: crc32c::crc32c(b"x") }.with_cap(Some(&cap));
    assert!(refusal(client.store_call(addr, &put, b"x").await).contains("does not grant"));
    // Altered, or signed with the right key but expired.
    let mut forged = (*cap).clone();
    let last = forged.body.len() - 1;
    forged.body[last] ^= 1;
    assert!(refusal(client.store_call(addr, &get(mine.blob).with_cap(Some(&forged)), &[]).await).contains("forged"));
    let keys = shoal_auth::ClusterKeys::from_text(&std::fs::read_to_string(c.path().join("secrets/cluster.keys")).unwrap()).unwrap();
    let old = keys.sign_capability(shoal_auth::READ, [mine.blob], shoal_auth::now_ns() - 1);
    assert!(refusal(client.store_call(addr, &get(mine.blob).with_cap(Some(&old)), &[]).await).contains("expired"));
    // A client may not delete, capability or not.
    let del = StoreRequest::Delete { blob: mine.blob, term: shoal_types::Term(u64::MAX) };
    assert!(client.store_call(addr, &del, &[]).await.is_err());
    assert!(client.store_call(addr, &get(mine.blob).with_cap(Some(&cap)), &[]).await.is_ok(), "still there");

    // A certificate with the admin role (signed by the cluster's CA) is no server: it too needs
    // a capability, and may not delete.
    let ca = shoal_pki::read_ca(&c.path().join("tls")).unwrap();
    let files = shoal_pki::write_files(&c.path().join("tls"), "admin-test", &ca.issue(shoal_pki::Role::Admin, "admin-test", &[]).unwrap()).unwrap();
    let admin = shoal_net::RpcClient::new(addr.clone(), shoal_pki::client_config(&files).unwrap(), 1, Duration::from_secs(10));
    let call = |req: StoreRequest| {
        let admin = &admin;
        async move {
            let (r, _): (shoal_types::store_msg::StoreResponse, bytes::Bytes) = admin.call(&req, &[]).await.unwrap();
            r
        }
    };
    assert!(matches!(call(get(mine.blob)).await, Err(FsError::Unauthenticated(_))), "admin role without a capability");
    assert!(call(StoreRequest::Delete { blob: mine.blob, term: shoal_types::Term(u64::MAX) }).await.is_err(), "admin role deleting");
    assert!(client.store_call(addr, &get(mine.blob).with_cap(Some(&cap)), &[]).await.is_ok(), "still there");
}

#[test]
fn an_admin_mount_squashes_root_and_maps_local_ids() {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    use std::os::unix::process::CommandExt;
    let c = TestCluster::start();
    let secret = c.file("secret");
    std::fs::write(&secret, b"root's").unwrap();
    c.must_shoal(&["put", secret.to_str().unwrap(), "/root-only"]);
    c.must_shoal(&["chmod", "600", "/root-only"]);
    c.must_shoal(&["mkdir", "/shared"]);
    c.must_shoal(&["chmod", "1777", "/shared"]);
    let mnt = c.file("mnt");
    let o = Command::new(SHOAL).arg("--dir").arg(c.path()).args(["mount", "--root-squash", "--map-uid=4242:1000", "--map-gid=4242:1000"]).arg(&mnt).output().unwrap();
    assert!(o.status.success(), "mount: {}", stderr(&o));
    // Local root is nobody in the cluster.
    let read = std::fs::read(mnt.join("root-only"));
    assert_eq!(read.map_err(|e| e.raw_os_error()), Err(Some(libc::EACCES)), "root squashed");
    let made = std::fs::write(mnt.join("planted"), b"x");
    assert_eq!(made.map_err(|e| e.raw_os_error()), Err(Some(libc::EACCES)), "root squashed: / is 0755 root's");
    // Opening for reading with O_TRUNC is a write too: a world-readable file stays whole.
    c.must_shoal(&["put", secret.to_str().unwrap(), "/readable"]);
    c.must_shoal(&["chmod", "644", "/readable"]);
    let trunc = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_TRUNC).open(mnt.join("readable"));
    assert_eq!(trunc.map(|_| ()).map_err(|e| e.raw_os_error()), Err(Some(libc::EACCES)), "O_RDONLY|O_TRUNC by squashed root");
    assert_eq!(std::fs::read(mnt.join("readable")).unwrap(), b"root's", "not truncated");
    // Local uid 4242 is cluster uid 1000, and shows as 4242 locally.
    let st = Command::new("sh").arg("-c").arg(format!("echo hi > {}/shared/mapped", mnt.display())).uid(4242).gid(4242).status().unwrap();
    assert!(st.success());
    assert!(c.must_shoal(&["stat", "/shared/mapped"]).contains("Uid: 1000"), "{}", c.must_shoal(&["stat", "/shared/mapped"]));
    assert_eq!(std::fs::metadata(mnt.join("shared/mapped")).unwrap().uid(), 4242);
    let _ = Command::new(SHOAL).arg("--dir").arg(c.path()).arg("umount").arg(&mnt).output();
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_and_revoked_certificates_are_refused() {
    let c = TestCluster::start();
    c.must_shoal(&["mkdir", "/before"]);
    // Keep a copy of the client's certificate as it is now.
    let old = c.file("old-client");
    std::fs::create_dir_all(&old).unwrap();
    for f in ["client.crt", "client.key", "ca.crt"] {
        std::fs::copy(c.path().join("tls").join(f), old.join(f)).unwrap();
    }
    c.must_shoal(&["cert", "rotate"]);
    assert!(c.must_shoal(&["ls", "/"]).contains("before"), "the cluster serves with the new certificates");
    // The old client certificate is refused, even with the current CA list beside it.
    std::fs::copy(c.path().join("tls/ca.crl"), old.join("ca.crl")).unwrap();
    let mut cfg = c.client_config();
    cfg.tls = shoal_types::config::TlsFiles { ca_cert: old.join("ca.crt"), cert: old.join("client.crt"), key: old.join("client.key") };
    let r = tokio::time::timeout(Duration::from_secs(20), Client::connect(&cfg, Credentials::ROOT, "old")).await.expect("refused quickly");
    assert!(r.is_err(), "a rotated-out client certificate must be refused");

    // A revoked storage server leaves the cluster and cannot come back with its certificate.
    c.must_shoal(&["cert", "revoke", "store-4"]);
    let store4 = c.path().join("store-4/store.toml");
    let log = std::fs::File::create(c.file("store-4-again.log")).unwrap();
    let mut again = Command::new(SHOAL).arg("store").arg("--config").arg(&store4).stderr(log).spawn().unwrap();
    // (The revocation restarts the metadata nodes; a new leader counts a server's silence from
    // its own start, so store 4 is declared failed up to 5 s after that.)
    let store4_alive = |status: &serde_json::Value| {
        status["stores"].as_array().unwrap().iter().any(|s| s["id"].as_u64() == Some(4) && s["alive"] != false)
    };
    let mut status = c.status_json();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        status = c.status_json();
        if !store4_alive(&status) {
            break;
        }
    }
    assert!(!store4_alive(&status), "store 4 must not be alive: {status}");
    // And it stays out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = c.status_json();
    assert!(!store4_alive(&status), "store 4 must stay out: {status}");
    let _ = again.kill();
    let _ = again.wait();
    assert!(meta_logs(&c).contains("revoked") || meta_logs(&c).contains("Revoked"), "the refusal is logged");
    c.must_shoal(&["mkdir", "/after"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_can_use_another_users_session() {
    let c = TestCluster::start();
    add_user(&c, "alice", 1000, "pw");
    add_user(&c, "bob", 1001, "pw");
    c.must_shoal(&["mkdir", "/shared"]);
    c.must_shoal(&["chmod", "1777", "/shared"]);
    let cfg = c.client_config();
    let bob = Client::connect_as(&cfg, Login::Tgt(cached_grant(&login(&c, "bob", "pw"))), Credentials::ROOT, "bob").await.unwrap();
    let shared = bob.resolve("/shared").await.unwrap();

    // Alice, with her own valid ticket, names bob's session: refused, whatever the request.
    let tls = shoal_pki::client_config(&cfg.tls).unwrap();
    let anon = Client::without_session(&cfg, tls.clone(), Credentials::ROOT).unwrap();
    let tgt = anon.login_password("alice", b"pw").await.unwrap();
    let st = service_ticket(&anon, &tgt).await;
    let leader = c.leader();
    let addr = cfg.meta.iter().find(|m| m.id.0 == leader).unwrap().addr.clone();
    let rpc = shoal_net::RpcClient::new(addr, tls, 1, Duration::from_secs(10));
    for (seq, op) in [
        (1, MetaOp::Mkdir { parent: shared.handle, name: "as-bob".into(), mode: 0o755 }),
        (2, MetaOp::CloseSession),
        (0, MetaOp::WatchCallbacks { acks: vec![], term: 0 }),
    ] {
        let req = MetaRequest { session: bob.session(), seq, cred: Credentials::ROOT, op };
        let r = send(&rpc, &authed(&st, &req, shoal_auth::now_us())).await;
        assert!(matches!(&r, Err(FsError::Unauthenticated(m)) if m.contains("another user")), "{r:?}");
    }
    // Bob's session is intact and his.
    let made = bob.mkdir(shared.handle, "bobs", 0o755).await.unwrap();
    assert_eq!(made.uid, 1001);
    assert!(meta_logs(&c).contains("another user's session"), "the refusal is logged");
}
