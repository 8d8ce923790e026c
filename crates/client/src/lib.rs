//! The client library: the only way to talk to a Shoal cluster.
//!
//! - [`Client::connect`] opens a session on the metadata service and keeps it alive.
//! - [`Client::meta`] sends one request: mutations get the next sequence number of the session
//!   (exactly-once), and every request is retried with exponential backoff and jitter, following
//!   `NotLeader` hints, with the same sequence number, so a retry returns the first answer.
//! - [`data`]: the write path (cut into blobs, put to several servers in parallel, commit once a
//!   write quorum is durable) and the read path (resolve the layout, read any live copy, verify,
//!   fail over).

pub mod cache;
pub mod data;
mod tickets;

pub use tickets::Login;

use bytes::Bytes;
use rand::Rng;
use shoal_net::RpcClient;
use shoal_types::config::ClientConfig;
use shoal_types::meta_msg::*;
use shoal_types::store_msg::{StoreRequest, StoreResponse};
use shoal_types::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Attempts of one metadata request before giving up (a bound besides [`META_RETRY_FOR`]).
pub const META_ATTEMPTS_MAX: u32 = 1000;
/// Times a request refused for a delegated directory is sent again (each after a recall).
const DELEGATED_ATTEMPTS_MAX: u32 = 4;
/// Time after which a metadata request stops retrying (an attempt in flight may add
/// [`META_TIMEOUT`]): failovers take about a second, so this only ends waits for a partition
/// or a cluster that is down, with the last error seen.
pub const META_RETRY_FOR: Duration = Duration::from_secs(25);
/// Longest pause between attempts while the metadata nodes have no leader (or the one tried
/// is down): a new leader is elected within about a second.
pub const ELECTION_POLL: Duration = Duration::from_millis(100);
/// First backoff; doubles each attempt up to [`BACKOFF_MAX`], with full jitter.
pub const BACKOFF_MIN: Duration = Duration::from_millis(20);
pub const BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// Longest wait to connect to one metadata node before trying the next: a node cut off by a
/// partition drops the packets, and a new process that tries it first would otherwise wait the
/// transport's 3 s (loopback and LAN handshakes take milliseconds).
pub const META_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed for one metadata request.
pub const META_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one storage request (a blob of up to 64 MiB).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections per storage server (bulk transfers in parallel).
pub const STORE_CONNS: usize = 2;

pub struct Client {
    meta: Vec<(MetaNodeId, Arc<RpcClient>)>,
    leader: AtomicUsize,
    /// See [`Client::changes`].
    changes: AtomicU64,
    stores: Mutex<HashMap<String, Arc<RpcClient>>>,
    tls: Arc<rustls::ClientConfig>,
    session: SessionId,
    seq: AtomicU64,
    pub cred: Credentials,
    keepalive: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Storage servers that failed a request recently, and when: tried last for a while.
    suspects: Mutex<HashMap<StoreId, std::time::Instant>>,
    /// Metadata nodes that did not answer recently, and when (by index in `meta`): a "not the
    /// leader" hint naming one (a follower that has not yet heard of the election) is not
    /// followed for [`UNREACHABLE_FOR`], since every try costs a connect timeout.
    unreachable: Mutex<HashMap<usize, std::time::Instant>>,
    /// Blocks of blobs read before (a mount sets one; the CLI reads without).
    block_cache: std::sync::OnceLock<Arc<cache::BlockCache>>,
    /// The tickets every metadata request carries (none for a storage server's client).
    tickets: Option<tickets::Tickets>,
}

/// Share of a promise's lease a client relies on (a margin for clocks that run at different
/// rates on the client and the leader).
pub const PROMISE_SHARE: f64 = 0.9;

/// How long a storage server that failed a request is tried last.
pub const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// How long a metadata node that did not answer is not sent to on another node's hint.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(t) = self.keepalive.lock().expect("keepalive lock").take() {
            t.abort();
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_MIN.saturating_mul(1u32 << attempt.min(10)).min(BACKOFF_MAX);
    let ms = rand::thread_rng().gen_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64);
    Duration::from_millis(ms)
}

impl Client {
    /// Connect as the admin (with the key file the configuration names) and open a session
    /// named `client_name`.
    pub async fn connect(config: &ClientConfig, cred: Credentials, client_name: &str) -> FsResult<Arc<Client>> {
        Self::connect_as(config, Self::admin_login(config)?, cred, client_name).await
    }

    /// The admin's login, from the key file the configuration names.
    pub fn admin_login(config: &ClientConfig) -> FsResult<Login> {
        let path = config.admin_key.as_ref().ok_or_else(|| FsError::Unauthenticated("not logged in: run `shoal login USER`".into()))?;
        let text = std::fs::read_to_string(path).map_err(|e| FsError::Unauthenticated(format!("not logged in (run `shoal login USER`), and the admin key {} is not readable: {e}", path.display())))?;
        let key = shoal_auth::Key::from_hex(&text).map_err(|e| FsError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(Login::Key { user: shoal_auth::ADMIN.into(), key })
    }

    /// Connect with the tickets `login` gives and open a session named `client_name`.
    /// `cred`: the local user requests act for (honoured only for the trusted admin).
    pub async fn connect_as(config: &ClientConfig, login: Login, cred: Credentials, client_name: &str) -> FsResult<Arc<Client>> {
        let tls = shoal_pki::client_config(&config.tls).map_err(|e| FsError::Invalid(format!("TLS files: {e}")))?;
        let mut client = Self::without_session(config, tls, cred)?;
        client.log_in(login).await?;
        let lease_ms = match client.send_meta(MetaOp::OpenSession { client: client_name.into() }, 0).await? {
            MetaReply::Session { session, lease_ms } => {
                client.session = session;
                lease_ms
            }
            other => return Err(FsError::Protocol(format!("unexpected reply {other:?}"))),
        };
        let client = Arc::new(client);
        let weak = Arc::downgrade(&client);
        let every = Duration::from_millis((lease_ms / 3).max(100));
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(c) = weak.upgrade() else { return };
                if let Err(e) = c.meta(MetaOp::RenewSession).await {
                    tracing::warn!("failed to renew the session: {e}");
                }
            }
        });
        *client.keepalive.lock().expect("keepalive lock") = Some(task);
        Ok(client)
    }

    /// A client with no session: enough for reads and for storage servers' registration and
    /// heartbeats, which are not exactly-once requests.
    pub fn without_session(config: &ClientConfig, tls: Arc<rustls::ClientConfig>, cred: Credentials) -> FsResult<Client> {
        if config.meta.is_empty() {
            return Err(FsError::Invalid("no metadata servers configured".into()));
        }
        let meta = config
            .meta
            .iter()
            .map(|p| (p.id, Arc::new(RpcClient::new(p.addr.clone(), tls.clone(), 1, META_TIMEOUT).with_connect_timeout(META_CONNECT_TIMEOUT))))
            .collect();
        Ok(Client {
            meta,
            leader: AtomicUsize::new(0),
            changes: AtomicU64::new(0),
            stores: Mutex::new(HashMap::new()),
            tls,
            session: SessionId(0),
            seq: AtomicU64::new(0),
            cred,
            keepalive: Mutex::new(None),
            suspects: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            block_cache: std::sync::OnceLock::new(),
            tickets: None,
        })
    }

    /// Serve blob reads through `cache` from now on (once).
    pub fn set_block_cache(&self, cache: Arc<cache::BlockCache>) {
        let _ = self.block_cache.set(cache);
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Close the session (releases what it holds open).
    pub async fn close(&self) -> FsResult<()> {
        self.meta(MetaOp::CloseSession).await.map(|_| ())
    }

    /// Send one metadata request, exactly once, retrying as needed.
    pub async fn meta(&self, op: MetaOp) -> MetaResponse {
        self.meta_as(&self.cred, op).await
    }

    /// Like [`Client::meta`], acting as `cred` (a mount serves many local users).
    pub async fn meta_as(&self, cred: &Credentials, op: MetaOp) -> MetaResponse {
        self.meta_promised(cred, op).await.0
    }

    /// Like [`Client::meta_as`], also telling until when the answer is covered by a cache
    /// promise (only for a session that polls the callback channel, see [`Client::watch`]).
    /// The promise is counted from before the request was sent, so it ends no later here than
    /// on the leader.
    pub async fn meta_promised(&self, cred: &Credentials, op: MetaOp) -> (MetaResponse, Option<std::time::Instant>) {
        // Refused for a directory delegated to another session: the leader recalled it before
        // answering, so the request goes again at once, as a new one.
        let again = op.invalidates().iter().any(|i| matches!(i, Invalidate::Entry { .. }))
            || matches!(op, MetaOp::Lookup { .. } | MetaOp::GetAttr { .. } | MetaOp::Readdir { .. } | MetaOp::ReaddirPlus { .. });
        if !again {
            return self.meta_promised_once(cred, op).await;
        }
        let mut attempt = 0;
        loop {
            let r = self.meta_promised_once(cred, op.clone()).await;
            match r.0 {
                Err(FsError::Delegated { .. }) if attempt < DELEGATED_ATTEMPTS_MAX => attempt += 1,
                _ => return r,
            }
        }
    }

    async fn meta_promised_once(&self, cred: &Credentials, op: MetaOp) -> (MetaResponse, Option<std::time::Instant>) {
        let seq = if op.is_read() { 0 } else { self.seq.fetch_add(1, Ordering::Relaxed) + 1 };
        let sent = std::time::Instant::now();
        let (r, maybe_replayed) = self.send_meta_tracked(cred, op, seq).await;
        match r {
            // A replayed answer to a change is as old as the change: no promise covers it.
            Ok(MetaReply::Promised { reply, .. }) if maybe_replayed && seq != 0 => (Ok(reply.attach_capability()), None),
            Ok(MetaReply::Promised { lease_ms, reply }) => {
                let lease = Duration::from_millis(lease_ms).mul_f64(PROMISE_SHARE);
                (Ok(reply.attach_capability()), Some(sent + lease))
            }
            // A layout or intent keeps its capability for the storage servers.
            other => (other.map(MetaReply::attach_capability), None),
        }
    }

    /// One poll of the callback channel: acknowledge `acks`, get the callbacks waiting (after at
    /// most about a second) with the leader's term and the promise lease.
    ///
    /// One attempt only: any failure means contact with the leader is lost, and the caller must
    /// stop trusting its promises before polling again (the next poll follows the leader hint).
    /// `term`: the term of the promises still held (0 after dropping them all).
    pub async fn watch(&self, acks: Vec<u64>, term: u64) -> FsResult<(u64, Duration, Vec<Callback>)> {
        self.refresh_tickets(false).await?;
        let req = self.wire(MetaRequest { session: self.session, seq: 0, cred: self.cred.clone(), op: MetaOp::WatchCallbacks { acks, term } });
        let idx = self.leader.load(Ordering::Relaxed) % self.meta.len();
        let rpc = &self.meta[idx].1;
        match rpc.call::<_, MetaWireResp>(&req, &[]).await {
            Ok((MetaWireResp::Client(Ok(MetaReply::Callbacks { term, lease_ms, callbacks })), _)) => {
                Ok((term, Duration::from_millis(lease_ms), callbacks))
            }
            Ok((MetaWireResp::Client(Err(FsError::NotLeader { leader_hint })), _)) => {
                let next = leader_hint.and_then(|h| self.meta.iter().position(|(id, _)| *id == h)).unwrap_or(idx + 1);
                self.leader.store(next % self.meta.len(), Ordering::Relaxed);
                Err(FsError::NotLeader { leader_hint })
            }
            Ok((MetaWireResp::Client(Err(e)), _)) => Err(e),
            Ok((other, _)) => Err(FsError::Protocol(format!("expected callbacks, got {other:?}"))),
            Err(e) => {
                self.leader.store((idx + 1) % self.meta.len(), Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    async fn send_meta(&self, op: MetaOp, seq: u64) -> MetaResponse {
        self.send_meta_as(&self.cred, op, seq).await
    }

    async fn send_meta_as(&self, cred: &Credentials, op: MetaOp, seq: u64) -> MetaResponse {
        self.send_meta_tracked(cred, op, seq).await.0
    }

    /// Send with retries; also tells whether an attempt before the one answered may have been
    /// carried out (its answer lost): the answer is then the first one, replayed from the reply
    /// table, and describes the state as it was then.
    async fn send_meta_tracked(&self, cred: &Credentials, op: MetaOp, seq: u64) -> (MetaResponse, bool) {
        if !op.may_change_names_or_attrs() {
            return self.send_meta_attempts(cred, op, seq).await;
        }
        // Counted before it is sent and after it is answered: a read whose answer arrives with
        // the count unchanged since before it was sent did not overlap this change.
        self.changes.fetch_add(1, Ordering::AcqRel);
        let r = self.send_meta_attempts(cred, op, seq).await;
        self.changes.fetch_add(1, Ordering::AcqRel);
        r
    }

    /// How many requests that may change names or attributes this client began or ended: an
    /// answer got with this count unchanged over its request overlapped none of them.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    async fn send_meta_attempts(&self, cred: &Credentials, op: MetaOp, seq: u64) -> (MetaResponse, bool) {
        let mut maybe_done = false;
        let req = MetaRequest { session: self.session, seq, cred: cred.clone(), op };
        let mut last_err = FsError::Unavailable("no metadata server answered".into());
        let mut renewed = false;
        let started = std::time::Instant::now();
        for attempt in 0..META_ATTEMPTS_MAX {
            if attempt > 0 && started.elapsed() > META_RETRY_FOR {
                break;
            }
            let idx = self.leader.load(Ordering::Relaxed) % self.meta.len();
            let (_, rpc) = &self.meta[idx];
            if let Err(e) = self.refresh_tickets(false).await {
                return (Err(e), maybe_done);
            }
            // Each attempt carries a fresh authenticator: the server accepts each only once.
            let result: Result<(MetaWireResp, Bytes), _> = rpc.call(&self.wire(req.clone()), &[]).await;
            if result.is_ok() {
                self.unreachable.lock().expect("unreachable lock").remove(&idx);
            }
            match result {
                Ok((MetaWireResp::Client(Err(FsError::TicketExpired)), _)) if !renewed => {
                    renewed = true;
                    if let Err(e) = self.refresh_tickets(true).await {
                        return (Err(e), maybe_done);
                    }
                }
                Ok((MetaWireResp::Client(Err(FsError::NotLeader { leader_hint })), _)) => {
                    let next = leader_hint
                        .and_then(|h| self.meta.iter().position(|(id, _)| *id == h))
                        .filter(|&i| i != idx && !self.recently_unreachable(i))
                        .unwrap_or((idx + 1) % self.meta.len());
                    self.leader.store(next, Ordering::Relaxed);
                    last_err = FsError::NotLeader { leader_hint };
                    // A leader that stepped down may have logged the request before answering.
                    maybe_done = true;
                    if leader_hint.is_none() || next == idx {
                        // An election is on: poll briskly, it ends within a second or two.
                        tokio::time::sleep(backoff(attempt).min(ELECTION_POLL)).await;
                    }
                }
                Ok((MetaWireResp::Client(Err(e @ FsError::Unavailable(_))), _)) => {
                    // Busy, or a leader cut off from its majority (while the majority may have
                    // elected another): try the next node too.
                    last_err = e;
                    maybe_done = true;
                    self.leader.store((idx + 1) % self.meta.len(), Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Ok((MetaWireResp::Client(r), _)) => return (r, maybe_done),
                Ok((other, _)) => return (Err(FsError::Protocol(format!("unexpected reply {other:?}"))), maybe_done),
                Err(e @ shoal_net::NetError::Handshake { .. }) => {
                    tracing::warn!("metadata server {} refused our certificate: {e}", rpc.addr());
                    return (Err(e.into()), maybe_done);
                }
                Err(e) => {
                    tracing::debug!("metadata server {} unreachable: {e}", rpc.addr());
                    maybe_done = true;
                    // A node's own answer (say "no quorum") tells more than another's silence.
                    if !matches!(last_err, FsError::Unavailable(ref m) if m.starts_with("no quorum")) {
                        last_err = e.into();
                    }
                    self.unreachable.lock().expect("unreachable lock").insert(idx, std::time::Instant::now());
                    self.leader.store((idx + 1) % self.meta.len(), Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt).min(ELECTION_POLL)).await;
                }
            }
        }
        (Err(last_err), maybe_done)
    }

    fn recently_unreachable(&self, idx: usize) -> bool {
        self.unreachable.lock().expect("unreachable lock").get(&idx).is_some_and(|at| at.elapsed() < UNREACHABLE_FOR)
    }

    pub(crate) fn suspect(&self, store: StoreId) {
        self.suspects.lock().expect("suspects lock").insert(store, std::time::Instant::now());
    }

    pub(crate) fn is_suspect(&self, store: StoreId) -> bool {
        let mut s = self.suspects.lock().expect("suspects lock");
        match s.get(&store) {
            Some(at) if at.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                s.remove(&store);
                false
            }
            None => false,
        }
    }

    pub(crate) fn store_rpc(&self, addr: &str) -> Arc<RpcClient> {
        self.stores
            .lock()
            .expect("stores lock")
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(RpcClient::new(addr.to_string(), self.tls.clone(), STORE_CONNS, STORE_TIMEOUT)))
            .clone()
    }

    /// One request to one storage server, no retry (the caller fails over to another copy).
    pub async fn store_call(&self, addr: &str, req: &StoreRequest, payload: &[u8]) -> FsResult<(shoal_types::store_msg::StoreReply, Bytes)> {
        let (resp, body): (StoreResponse, Bytes) = self.store_rpc(addr).call(req, payload).await?;
        Ok((resp?, body))
    }

    // ---- namespace helpers ----

    fn attr(r: MetaResponse) -> FsResult<Attr> {
        match r? {
            MetaReply::Attr(a) => Ok(a),
            other => Err(FsError::Protocol(format!("expected attributes, got {other:?}"))),
        }
    }

    pub async fn lookup(&self, parent: FileHandle, name: &str) -> FsResult<Attr> {
        Self::attr(self.meta(MetaOp::Lookup { parent, name: name.into() }).await)
    }

    pub async fn getattr(&self, handle: FileHandle) -> FsResult<Attr> {
        Self::attr(self.meta(MetaOp::GetAttr { handle }).await)
    }

    /// Walk an absolute path from the root ("/" is the root). Symlinks are not followed.
    pub async fn resolve(&self, path: &str) -> FsResult<Attr> {
        let mut attr = self.getattr(FileHandle::ROOT).await?;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            attr = self.lookup(attr.handle, part).await?;
        }
        Ok(attr)
    }

    /// Split "/a/b/c" into the parent's attributes and "c".
    pub async fn resolve_parent<'p>(&self, path: &'p str) -> FsResult<(Attr, &'p str)> {
        let trimmed = path.trim_end_matches('/');
        let (dir, name) = match trimmed.rfind('/') {
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => ("", trimmed),
        };
        if name.is_empty() {
            return Err(FsError::Invalid(format!("{path:?} names no entry")));
        }
        Ok((self.resolve(dir).await?, name))
    }

    pub async fn mkdir(&self, parent: FileHandle, name: &str, mode: u32) -> FsResult<Attr> {
        Self::attr(self.meta(MetaOp::Mkdir { parent, name: name.into(), mode }).await)
    }

    pub async fn create(&self, parent: FileHandle, name: &str, mode: u32, exclusive: bool) -> FsResult<Attr> {
        Self::attr(self.meta(MetaOp::Create { parent, name: name.into(), kind: FileKind::File, mode, rdev: 0, exclusive }).await)
    }

    pub async fn setattr(&self, handle: FileHandle, set: SetAttr) -> FsResult<Attr> {
        Self::attr(self.meta(MetaOp::SetAttr { handle, set }).await)
    }

    pub async fn unlink(&self, parent: FileHandle, name: &str) -> FsResult<()> {
        self.meta(MetaOp::Unlink { parent, name: name.into() }).await.map(|_| ())
    }

    pub async fn rmdir(&self, parent: FileHandle, name: &str) -> FsResult<()> {
        self.meta(MetaOp::Rmdir { parent, name: name.into() }).await.map(|_| ())
    }

    pub async fn rename(&self, parent: FileHandle, name: &str, new_parent: FileHandle, new_name: &str) -> FsResult<()> {
        self.meta(MetaOp::Rename { parent, name: name.into(), new_parent, new_name: new_name.into(), no_replace: false })
            .await
            .map(|_| ())
    }

    pub async fn symlink(&self, parent: FileHandle, name: &str, target: &str) -> FsResult<Attr> {
        Self::attr(self.meta(MetaOp::Symlink { parent, name: name.into(), target: target.into() }).await)
    }

    pub async fn readlink(&self, handle: FileHandle) -> FsResult<String> {
        match self.meta(MetaOp::Readlink { handle }).await? {
            MetaReply::Target(t) => Ok(t),
            other => Err(FsError::Protocol(format!("expected a target, got {other:?}"))),
        }
    }

    /// One page of a directory listing, after `cookie` (0 = from the start).
    pub async fn readdir(&self, dir: FileHandle, cookie: u64, limit: u32) -> FsResult<(Vec<DirEntry>, bool)> {
        match self.meta(MetaOp::Readdir { dir, cookie, limit }).await? {
            MetaReply::Dir { entries, eof } => Ok((entries, eof)),
            other => Err(FsError::Protocol(format!("expected entries, got {other:?}"))),
        }
    }

    /// The whole listing, page by page.
    pub async fn readdir_all(&self, dir: FileHandle) -> FsResult<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut cookie = 0;
        loop {
            let (entries, eof) = self.readdir(dir, cookie, READDIR_LIMIT_MAX).await?;
            if let Some(last) = entries.last() {
                cookie = last.cookie;
            }
            out.extend(entries);
            if eof {
                return Ok(out);
            }
        }
    }

    pub async fn statfs(&self) -> FsResult<Statfs> {
        match self.meta(MetaOp::Statfs).await? {
            MetaReply::Statfs(s) => Ok(s),
            other => Err(FsError::Protocol(format!("expected statfs, got {other:?}"))),
        }
    }

    pub async fn status(&self) -> FsResult<ClusterStatus> {
        match self.meta(MetaOp::Status).await? {
            MetaReply::Status(s) => Ok(s),
            other => Err(FsError::Protocol(format!("expected status, got {other:?}"))),
        }
    }

    pub async fn set_policy(&self, handle: FileHandle, policy: Policy) -> FsResult<Attr> {
        Self::attr(self.meta(MetaOp::SetPolicy { handle, policy }).await)
    }

    pub async fn open(&self, handle: FileHandle) -> FsResult<Attr> {
        Self::attr(self.meta(MetaOp::Open { handle }).await)
    }

    pub async fn release(&self, handle: FileHandle) -> FsResult<()> {
        self.meta(MetaOp::Release { handle }).await.map(|_| ())
    }
}
