//! A multiplexed request/response layer over framed TLS streams.
//!
//! Server: one task reads frames from a connection and spawns a handler per request (bounded by
//! [`REQUESTS_IN_FLIGHT_MAX`]); one task writes responses in completion order. Client: callers
//! write their request under a lock and wait on a oneshot; one task per connection reads
//! responses and routes them by request id.

use crate::frame::{self, Frame, FrameError, Kind};
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use shoal_pki::PeerIdentity;
use shoal_types::codec;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Requests one connection may have in flight on a server; the reader waits beyond this.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;
/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client waits to connect (TCP and TLS handshake), whatever its request timeout: a
/// peer that takes longer is stopped or cut off, and the caller should try another.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The TLS handshake failed: a certificate was refused. Retrying does not help.
    #[error("TLS handshake with {addr} refused: {reason}")]
    Handshake { addr: String, reason: String },
    #[error("request to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("connection to {addr} lost: {reason}")]
    Disconnected { addr: String, reason: String },
    #[error("malformed reply from {addr}: {reason}")]
    Decode { addr: String, reason: String },
}

impl From<NetError> for shoal_types::FsError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Handshake { .. } => shoal_types::FsError::PermissionDenied,
            e => shoal_types::FsError::Unavailable(e.to_string()),
        }
    }
}

/// Who is on the other end of a server connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub identity: Option<PeerIdentity>,
}

/// A request handler. `call` runs concurrently for the requests of one connection.
pub trait Service: Send + Sync + 'static {
    type Req: DeserializeOwned + Send + 'static;
    type Resp: Serialize + Send + 'static;
    fn call(self: Arc<Self>, peer: Arc<PeerInfo>, req: Self::Req, payload: Bytes)
        -> impl Future<Output = (Self::Resp, Bytes)> + Send;
}

/// Accept connections until the task is aborted.
pub async fn serve<S: Service>(listener: TcpListener, tls: Arc<rustls::ServerConfig>, service: Arc<S>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("failed to accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%addr, "refused connection: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%addr, "refused connection: TLS handshake timed out");
                    return;
                }
            };
            let identity = shoal_pki::peer_identity(tls.get_ref().1);
            let peer = Arc::new(PeerInfo { addr, identity });
            if let Err(e) = serve_connection(tls, peer.clone(), service).await {
                tracing::warn!(%addr, "closed connection: {e}");
            }
        });
    }
}

async fn serve_connection<S, T>(stream: T, peer: Arc<PeerInfo>, service: Arc<S>) -> Result<(), String>
where
    S: Service,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<(u64, Vec<u8>, Bytes)>(REQUESTS_IN_FLIGHT_MAX);
    let writer = tokio::spawn(async move {
        let mut wr = BufWriter::with_capacity(256 << 10, wr);
        while let Some((id, header, payload)) = rx.recv().await {
            frame::write_frame(&mut wr, Kind::Response, id, &header, &payload).await?;
            // Flush only when no other response is ready: batches small replies.
            if rx.is_empty() {
                wr.flush().await?;
            }
        }
        wr.shutdown().await?;
        Ok::<_, FrameError>(())
    });
    let permits = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
    let result = loop {
        let frame = match frame::read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("bad frame: {e}")),
        };
        if frame.kind != Kind::Request {
            break Err("peer sent a response frame to a server".to_string());
        }
        let req: S::Req = match codec::decode(&frame.header) {
            Ok(r) => r,
            Err(e) => break Err(format!("bad request message: {e}")),
        };
        let permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
        let (service, peer, tx) = (service.clone(), peer.clone(), tx.clone());
        tokio::spawn(async move {
            let (resp, payload) = service.call(peer, req, frame.payload).await;
            let _ = tx.send((frame.id, codec::encode(&resp), payload)).await;
            drop(permit);
        });
    };
    drop(tx);
    let _ = writer.await;
    result
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Frame, String>>>>>;

struct Conn {
    writer: tokio::sync::Mutex<BufWriter<WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>>>,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

/// A client of one server address, with `n_conns` connections used round-robin and re-opened
/// when lost. Cheap to share (`Arc`).
pub struct RpcClient {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    conns: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    pub timeout: Duration,
    connect_timeout: Duration,
}

impl RpcClient {
    pub fn new(addr: impl Into<String>, tls: Arc<rustls::ClientConfig>, n_conns: usize, timeout: Duration) -> RpcClient {
        RpcClient {
            addr: addr.into(),
            tls,
            conns: (0..n_conns.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// Give up connecting after `d` instead of [`CONNECT_TIMEOUT`]: for a caller with other
    /// servers to try, which should not wait long on one that is cut off.
    pub fn with_connect_timeout(mut self, d: Duration) -> RpcClient {
        self.connect_timeout = d;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn conn(&self) -> Result<Arc<Conn>, NetError> {
        let slot = &self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()];
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.closed.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let conn = tokio::time::timeout(self.timeout.min(self.connect_timeout), self.connect())
            .await
            .map_err(|_| NetError::Connect { addr: self.addr.clone(), reason: "timed out".into() })??;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self) -> Result<Arc<Conn>, NetError> {
        let err = |reason: String| NetError::Connect { addr: self.addr.clone(), reason };
        let tcp = TcpStream::connect(&self.addr).await.map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(shoal_pki::SERVER_NAME).map_err(|e| err(e.to_string()))?;
        let tls = TlsConnector::from(self.tls.clone()).connect(name, tcp).await.map_err(|e| {
            // Only a refused certificate is final; a peer dying mid-handshake is worth a retry.
            let refused = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).is_some_and(|r| {
                matches!(r, rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_) | rustls::Error::NoCertificatesPresented)
            });
            if refused {
                NetError::Handshake { addr: self.addr.clone(), reason: e.to_string() }
            } else {
                err(format!("TLS: {e}"))
            }
        })?;
        let (mut rd, wr) = tokio::io::split(tls);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (p, c, addr) = (pending.clone(), closed.clone(), self.addr.clone());
        tokio::spawn(async move {
            let reason = loop {
                match frame::read_frame(&mut rd).await {
                    Ok(Some(f)) if f.kind == Kind::Response => {
                        let waiter = p.lock().expect("pending lock").remove(&f.id);
                        if let Some(w) = waiter {
                            let _ = w.send(Ok(f));
                        }
                    }
                    Ok(Some(_)) => break "server sent a request frame".to_string(),
                    Ok(None) => break "closed by server".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            c.store(true, Ordering::Release);
            tracing::debug!(%addr, "connection closed: {reason}");
            for (_, w) in p.lock().expect("pending lock").drain() {
                let _ = w.send(Err(reason.clone()));
            }
        });
        Ok(Arc::new(Conn {
            writer: tokio::sync::Mutex::new(BufWriter::with_capacity(64 << 10, wr)),
            pending,
            next_id: AtomicU64::new(1),
            closed,
        }))
    }

    /// Send `req` with `payload`, wait for the reply and its payload.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(&self, req: &Req, payload: &[u8]) -> Result<(Resp, Bytes), NetError> {
        self.call_timeout(req, payload, self.timeout).await
    }

    pub async fn call_timeout<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        req: &Req,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(Resp, Bytes), NetError> {
        let conn = self.conn().await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().expect("pending lock").insert(id, tx);
        let header = codec::encode(req);
        let lost = |reason: String| NetError::Disconnected { addr: self.addr.clone(), reason };
        let sent = async {
            let mut w = conn.writer.lock().await;
            frame::write_frame(&mut *w, Kind::Request, id, &header, payload).await?;
            w.flush().await?;
            Ok::<_, FrameError>(())
        };
        let result = tokio::time::timeout(timeout, async {
            if let Err(e) = sent.await {
                conn.closed.store(true, Ordering::Release);
                return Err(lost(e.to_string()));
            }
            match rx.await {
                Ok(Ok(f)) => Ok(f),
                // With TLS 1.3 a client learns that the server refused its certificate only from
                // the alert that closes the connection after the handshake.
                Ok(Err(reason)) if reason.contains("received fatal alert") => {
                    Err(NetError::Handshake { addr: self.addr.clone(), reason })
                }
                Ok(Err(reason)) => Err(lost(reason)),
                Err(_) => Err(lost("reader stopped".into())),
            }
        })
        .await;
        let frame = match result {
            Ok(r) => r,
            Err(_) => {
                conn.pending.lock().expect("pending lock").remove(&id);
                // The request may have been cut mid-frame: this connection cannot be reused.
                conn.closed.store(true, Ordering::Release);
                return Err(NetError::Timeout { addr: self.addr.clone(), after: timeout });
            }
        }?;
        let resp = codec::decode(&frame.header).map_err(|e| NetError::Decode { addr: self.addr.clone(), reason: e.to_string() })?;
        Ok((resp, frame.payload))
    }
}

#[cfg(test)]
mod tests;
