use super::*;
use crate::frame::{read_frame, write_frame, PAYLOAD_LEN_MAX};
use serde::{Deserialize, Serialize};
use shoal_pki::{Ca, Role};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum EchoReq {
    Echo(String),
    Sum,
}

struct Echo;

impl Service for Echo {
    type Req = EchoReq;
    type Resp = String;
    async fn call(self: Arc<Self>, peer: Arc<PeerInfo>, req: EchoReq, payload: Bytes) -> (String, Bytes) {
        match req {
            EchoReq::Echo(s) => (format!("{s} from {}", peer.identity.as_ref().map_or("?".into(), |i| i.name.clone())), payload),
            EchoReq::Sum => (payload.iter().map(|b| *b as u64).sum::<u64>().to_string(), Bytes::new()),
        }
    }
}

struct Pki {
    _dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test").unwrap();
    shoal_pki::write_ca(dir.path(), &ca).unwrap();
    let s = shoal_pki::write_files(dir.path(), "server", &ca.issue(Role::Meta, "m1", &[]).unwrap()).unwrap();
    let c = shoal_pki::write_files(dir.path(), "client", &ca.issue(Role::Client, "alice", &[]).unwrap()).unwrap();
    Pki { server: shoal_pki::server_config(&s).unwrap(), client: shoal_pki::client_config(&c).unwrap(), _dir: dir }
}

async fn start(p: &Pki) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(listener, p.server.clone(), Arc::new(Echo)));
    addr
}

#[tokio::test]
async fn concurrent_calls_over_one_connection() {
    let p = pki();
    let addr = start(&p).await;
    let client = Arc::new(RpcClient::new(addr, p.client.clone(), 1, Duration::from_secs(5)));
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let payload = vec![i as u8; (i as usize) * 1000];
            let (resp, body): (String, Bytes) = client.call(&EchoReq::Echo(format!("hi {i}")), &payload).await.unwrap();
            assert_eq!(resp, format!("hi {i} from alice"));
            assert_eq!(&body[..], &payload[..]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn garbage_closes_that_connection_and_server_keeps_serving() {
    let p = pki();
    let addr = start(&p).await;
    // Random bytes without TLS.
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n random garbage").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut raw, &mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0) | Ok(7) | Err(_)) || n.is_ok(), "server answers garbage with an alert or a close");
    // Then a well-behaved client is still served.
    let client = RpcClient::new(addr, p.client.clone(), 1, Duration::from_secs(5));
    let (resp, _): (String, Bytes) = client.call(&EchoReq::Sum, &[1, 2, 3]).await.unwrap();
    assert_eq!(resp, "6");
}

#[tokio::test]
async fn frame_decoder_refuses_bad_prefixes() {
    let mut ok = Vec::new();
    write_frame(&mut ok, frame::Kind::Request, 7, b"hdr", b"payload").await.unwrap();
    let f = read_frame(&mut &ok[..]).await.unwrap().unwrap();
    assert_eq!((f.id, &f.header[..], &f.payload[..]), (7, &b"hdr"[..], &b"payload"[..]));
    // Truncated at every point: never a panic, always an error (or a clean end at 0).
    for cut in 1..ok.len() {
        assert!(read_frame(&mut &ok[..cut]).await.is_err(), "cut at {cut}");
    }
    let mut bad_magic = ok.clone();
    bad_magic[0] = b'X';
    assert!(matches!(read_frame(&mut &bad_magic[..]).await, Err(FrameError::BadMagic(_))));
    let mut huge = ok.clone();
    huge[16..20].copy_from_slice(&(PAYLOAD_LEN_MAX + 1).to_be_bytes());
    assert!(matches!(read_frame(&mut &huge[..]).await, Err(FrameError::TooLong { .. })));
}

#[tokio::test]
async fn client_of_another_ca_is_refused() {
    let p = pki();
    let addr = start(&p).await;
    let other = pki();
    let client = RpcClient::new(addr, other.client.clone(), 1, Duration::from_secs(5));
    let r: Result<(String, Bytes), _> = client.call(&EchoReq::Sum, &[]).await;
    assert!(r.is_err(), "a client certificate from another CA must be refused");
}

/// A server that takes the connection but never answers the handshake (a process stopped, or
/// a peer whose packets are dropped) costs a caller only its connect timeout.
#[tokio::test]
async fn a_silent_server_costs_only_the_connect_timeout() {
    let p = pki();
    // Bound and listening (the kernel completes TCP connects), never accepting.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let client = RpcClient::new(addr, p.client.clone(), 1, Duration::from_secs(10)).with_connect_timeout(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let r: Result<(String, Bytes), _> = client.call(&EchoReq::Sum, &[]).await;
    assert!(matches!(r, Err(NetError::Connect { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "waited {:?}", t.elapsed());
    drop(listener);
}
