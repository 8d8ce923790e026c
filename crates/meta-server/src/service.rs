//! The metadata port's handler: client requests (reads and commands) and Raft messages.

use crate::callbacks::Promises;
use crate::store::{Batch, ReadKv};
use crate::MetaRaft;
use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use shoal_meta_core::{Command, CommandKind, Params};
use shoal_net::{PeerInfo, Service};
use shoal_pki::Role;
use shoal_types::codec;
use shoal_types::config::MetaConfig;
use shoal_types::meta_msg::*;
use shoal_types::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Commands gathered into one log entry at most.
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Most file bytes ([`MetaOp::CommitInline`]) in one log entry: with at most
/// [`crate::APPEND_ENTRIES_MAX`] entries per AppendEntries, a message stays far below the
/// frame's payload limit.
pub const BATCH_INLINE_BYTES_MAX: usize = 512 << 10;
/// Log entries being replicated at once; beyond this, commands wait and batch up.
pub const BATCHES_IN_FLIGHT_MAX: usize = 1;
/// Commands waiting for a batch.
pub const WRITE_QUEUE_MAX: usize = 8192;
/// How long a poll of the callback channel waits for a callback before answering empty.
pub const WATCH_WAIT: Duration = Duration::from_secs(1);
/// A leader that has not heard from a majority for this long refuses requests at once, saying
/// why (it is on the minority side of a partition, or its peers are down), instead of letting
/// them wait for a commit that cannot come.
pub const QUORUM_LOST_AFTER: Duration = Duration::from_millis(1500);
/// How often the leader checks that it still has its majority, for the requests waiting on it.
const QUORUM_POLL: Duration = Duration::from_millis(100);
/// Recalls of a delegated directory one read waits for before it gives up.
const RECALL_ATTEMPTS_MAX: u32 = 3;
/// Waited beyond the end of a delegation's lease (clocks of the nodes differ a little).
const RECALL_MARGIN: Duration = Duration::from_millis(20);
/// A promise horizon is renewed when it covers less than a lease plus this.
pub const HORIZON_MARGIN: Duration = Duration::from_millis(500);

type WriteWaiter = (CommandKind, oneshot::Sender<MetaResponse>);
type ReadWaiter = oneshot::Sender<Result<(), FsError>>;

/// Changes that may remove a file's last name, queued for the log and not yet applied (with an
/// epoch counted up at each): an open answered before its commit ([`MetaOp::OpenRead`]) is
/// answered from the applied state, so it may be only while none is on its way.
#[derive(Default)]
pub struct DropGate {
    /// (in flight, epoch)
    st: std::sync::Mutex<(u64, u64)>,
}

impl DropGate {
    fn removes_names(kind: &CommandKind) -> bool {
        matches!(kind, CommandKind::Request(MetaRequest { op: MetaOp::Unlink { .. } | MetaOp::Rename { .. } | MetaOp::Rmdir { .. }, .. }))
    }

    fn begin(&self) {
        let mut st = self.st.lock().expect("drop gate");
        st.0 += 1;
        st.1 += 1;
    }

    fn end(&self) {
        self.st.lock().expect("drop gate").0 -= 1;
    }

    /// The epoch now, if nothing is on its way.
    fn quiet(&self) -> Option<u64> {
        let st = self.st.lock().expect("drop gate");
        (st.0 == 0).then_some(st.1)
    }

    /// Run `queue` if nothing was queued since `epoch` and nothing is on its way; its answer.
    fn queue_if_quiet(&self, epoch: u64, queue: impl FnOnce() -> bool) -> bool {
        let st = self.st.lock().expect("drop gate");
        *st == (0, epoch) && queue()
    }
}

pub struct MetaService {
    pub raft: MetaRaft,
    db: Arc<redb::Database>,
    params: Params,
    writes: mpsc::Sender<WriteWaiter>,
    reads: mpsc::Sender<ReadWaiter>,
    promises: Promises,
    read_lease: Arc<ReadLease>,
    /// True while this node leads without a majority (one watcher for all waiting requests).
    quorum_lost: tokio::sync::watch::Receiver<bool>,
    pub auth: crate::auth::Auth,
    /// Woken when a session polls that the recorded promise horizon does not cover: it gets no
    /// promise until a new horizon names it, so [`horizon_keeper`] records one at once.
    horizon_wake: tokio::sync::Notify,
    drops: Arc<DropGate>,
}

/// How long after a leadership check was *sent* its result may serve reads without another.
/// Followers refuse to vote for anyone else for openraft's leader lease (the maximum election
/// timeout, 400 ms by default) after they last heard from this leader, and a node does not
/// elect itself in that time either, so no other leader can commit anything within it; this
/// window stays well inside (clocks here only need to run at similar rates).
pub const READ_LEASE_MAX: Duration = Duration::from_millis(250);

/// The last leadership check that succeeded: (term, when it was sent).
pub struct ReadLease {
    window: Duration,
    last: std::sync::Mutex<Option<(u64, tokio::time::Instant)>>,
}

impl ReadLease {
    fn holds(&self, raft: &MetaRaft) -> bool {
        let Some((term, sent)) = *self.last.lock().expect("read lease") else { return false };
        if sent.elapsed() >= self.window {
            return false;
        }
        let m = raft.metrics().borrow().clone();
        m.current_leader == Some(m.id) && m.current_term == term
    }

    fn confirmed(&self, term: u64, sent: tokio::time::Instant) {
        *self.last.lock().expect("read lease") = Some((term, sent));
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl MetaService {
    pub fn new(raft: MetaRaft, db: Arc<redb::Database>, config: &MetaConfig, keys: shoal_auth::ClusterKeys) -> Arc<MetaService> {
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE_MAX);
        let (rtx, rrx) = mpsc::channel(WRITE_QUEUE_MAX);
        let params = Params {
            session_lease_ns: config.session_lease_ms as i64 * 1_000_000,
            intent_lease_ns: config.intent_lease_ms as i64 * 1_000_000,
            store_dead_after_ns: config.store_dead_after_ms as i64 * 1_000_000,
        };
        let drops = Arc::new(DropGate::default());
        tokio::spawn(write_batcher(raft.clone(), wrx, drops.clone()));
        let window = READ_LEASE_MAX.min(Duration::from_millis(config.election_timeout_max_ms) / 3);
        let read_lease = Arc::new(ReadLease { window, last: std::sync::Mutex::new(None) });
        tokio::spawn(read_gate(raft.clone(), rrx, read_lease.clone()));
        let promises = Promises::new(Duration::from_millis(config.callback_lease_ms.max(1)));
        let auth = crate::auth::Auth::new(keys, config, db.clone());
        let (lost_tx, quorum_lost) = tokio::sync::watch::channel(false);
        tokio::spawn(quorum_watch(raft.clone(), lost_tx));
        Arc::new(MetaService {
            raft,
            db,
            params,
            writes: wtx,
            reads: rtx,
            promises,
            read_lease,
            quorum_lost,
            auth,
            horizon_wake: tokio::sync::Notify::new(),
            drops,
        })
    }

    /// Propose a command through the batcher and wait for its reply.
    pub async fn propose(&self, kind: CommandKind) -> MetaResponse {
        let (tx, rx) = oneshot::channel();
        let slot = self.writes.reserve().await.map_err(|_| FsError::Unavailable("shutting down".into()))?;
        // Counted from just before it is queued (nothing awaited in between) until the
        // batcher is done with it, which ends the count.
        if DropGate::removes_names(&kind) {
            self.drops.begin();
        }
        slot.send((kind, tx));
        rx.await.map_err(|_| FsError::Unavailable("shutting down".into()))?
    }

    /// [`MetaOp::OpenRead`] answered from this leader's state once the open is queued for the
    /// log, before it commits: the answer then is what it would be after the commit, since
    /// nothing queued before it may remove the file (`drops`) and the batcher proposes in queue
    /// order. `None`: answer after the commit instead. The open is lost if this leader fails
    /// before the entry commits (the file is then not kept for this reader if it is unlinked).
    async fn open_read_early(&self, req: &MetaRequest, handle: FileHandle) -> Result<Option<MetaReply>, FsError> {
        let Some(epoch) = self.drops.quiet() else { return Ok(None) };
        let read = MetaRequest { op: MetaOp::GetLayout { handle, first_chunk: 0, n_chunks: OPEN_LAYOUT_CHUNKS }, ..req.clone() };
        let reply = match self.read_now(read).await {
            Ok(r) => r,
            // The logged open gives the answer it always gave.
            Err(FsError::PermissionDenied) => return Ok(None),
            Err(e) => return Err(e),
        };
        let attr = match &reply {
            MetaReply::Layout(l) => &l.attr,
            MetaReply::Inlined { reply, .. } => match reply.as_ref() {
                MetaReply::Layout(l) => &l.attr,
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        // An orphan may be freed by a release or an expiry: its opens go through the log.
        if attr.nlink == 0 || attr.kind != FileKind::File {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        let queued = self.drops.queue_if_quiet(epoch, || self.writes.try_send((CommandKind::Request(req.clone()), tx)).is_ok());
        if !queued {
            return Ok(None);
        }
        tokio::spawn(async move {
            if let Ok(Err(e)) = rx.await {
                tracing::debug!("an open answered before its commit did not commit: {e}");
            }
        });
        Ok(Some(reply))
    }

    /// Wait until this node may serve a linearizable read: at once within a read lease, else
    /// after a leadership check shared with every read waiting at that moment.
    async fn read_barrier(&self) -> Result<(), FsError> {
        if self.read_lease.holds(&self.raft) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.reads.send(tx).await.map_err(|_| FsError::Unavailable("shutting down".into()))?;
        rx.await.map_err(|_| FsError::Unavailable("shutting down".into()))?
    }

    async fn read(&self, req: MetaRequest) -> MetaResponse {
        // A watching session is promised what it looks up: what the request names now, the
        // child it finds after the read (see `callbacks`).
        let named = match &req.op {
            MetaOp::Lookup { parent, .. } => Some(parent.inode),
            MetaOp::GetAttr { handle } => Some(handle.inode),
            MetaOp::ReaddirPlus { dir, .. } => Some(dir.inode),
            _ => None,
        };
        let session = req.session;
        let since = match named {
            Some(ino) if session != SessionId(0) => self.promises.begin(session, &[ino], tokio::time::Instant::now()),
            _ => None,
        };
        let is_lookup = matches!(req.op, MetaOp::Lookup { .. });
        let reply = self.read_now(req).await?;
        let Some(since) = since else { return Ok(reply) };
        let found: Vec<InodeId> = match &reply {
            MetaReply::Attr(a) if is_lookup => vec![a.handle.inode],
            MetaReply::DirPlus { entries, .. } => entries.iter().map(|e| e.attr.handle.inode).collect(),
            _ => Vec::new(),
        };
        if !found.is_empty() && !self.promises.grant_after(session, &found, since, tokio::time::Instant::now()) {
            return Ok(reply);
        }
        Ok(MetaReply::Promised { lease_ms: self.promises.lease().as_millis() as u64, reply: Box::new(reply) })
    }

    /// A poll of the callback channel (on the leader only). `held_term`: the term of the
    /// promises the session still holds (0: none).
    async fn watch(&self, session: SessionId, acks: &[u64], held_term: u64) -> MetaResponse {
        if session == SessionId(0) {
            return Err(FsError::Invalid("the callback channel needs a session".into()));
        }
        if self.promises.has_ended(session) {
            return Err(FsError::SessionExpired);
        }
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) {
            return Err(FsError::NotLeader { leader_hint: m.current_leader.map(MetaNodeId) });
        }
        let lease_ms = self.promises.lease().as_millis() as u64;
        if held_term != 0 && held_term != m.current_term {
            // Promises from another term: the session drops them when it sees this term.
            return Ok(MetaReply::Callbacks { term: m.current_term, lease_ms, callbacks: Vec::new() });
        }
        self.ensure_inherited(m.current_term).await;
        let (mut callbacks, wake) = self.promises.poll(session, acks, true, tokio::time::Instant::now());
        if !self.promises.covers(session, tokio::time::Instant::now()) {
            self.horizon_wake.notify_one();
        }
        if callbacks.is_empty() {
            let _ = tokio::time::timeout(WATCH_WAIT, wake.notified()).await;
            callbacks = self.promises.poll(session, &[], true, tokio::time::Instant::now()).0;
        }
        Ok(MetaReply::Callbacks { term: m.current_term, lease_ms, callbacks })
    }

    /// Learn, once per term, which promises earlier leaders may have given (the last horizon
    /// in the log, read once everything committed before this term is applied).
    async fn ensure_inherited(&self, term: u64) {
        if self.promises.inherited_term() == Some(term) || self.read_barrier().await.is_err() {
            return;
        }
        let db = self.db.clone();
        let horizon = tokio::task::spawn_blocking(move || {
            ReadKv::new(&db).ok().and_then(|kv| shoal_meta_core::promise_horizon(&kv))
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
        let left = Duration::from_nanos(horizon.until.saturating_sub(now_ns()).max(0) as u64);
        self.promises.inherit(term, horizon.watchers, left, tokio::time::Instant::now());
    }

    /// Tell the holders of promises that a mutation broke, and wait until each acknowledged or
    /// its lease ran out. In a new term, first wait until the watchers of earlier leaders came
    /// back (having dropped their promises) or those promises ended.
    async fn call_back(&self, writer: SessionId, items: &[shoal_types::meta_msg::Invalidate]) {
        if items.is_empty() {
            return;
        }
        let term = self.raft.metrics().borrow().current_term;
        self.ensure_inherited(term).await;
        while let Some((done, until)) = self.promises.inherited_wait(tokio::time::Instant::now()) {
            let notified = done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.promises.inherited_wait(tokio::time::Instant::now()).is_none() {
                break;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                break;
            }
        }
        let waits = self.promises.break_promises(writer, items, tokio::time::Instant::now());
        for w in waits {
            if tokio::time::timeout_at(w.expiry, w.acked).await.is_err() {
                // The change went ahead only once the holder's promise ran out.
                tracing::warn!(session = w.holder.0, callback = w.callback, "a mount did not acknowledge a callback: waited for its promise to expire");
            }
        }
    }

    /// `holder` has the delegation of `dir` until `until` (cluster time): ask it to give it
    /// back and wait until it acknowledged (having given it back) or its lease ran out. After
    /// a first recall that did not free the directory, only the end of the lease does.
    async fn recall(&self, asker: SessionId, dir: InodeId, holder: SessionId, until: shoal_types::attr::TimeNs, attempt: u32) {
        let left = Duration::from_nanos(until.saturating_sub(now_ns()).max(0) as u64) + RECALL_MARGIN;
        let expiry = tokio::time::Instant::now() + left;
        // Counted while waiting, also if the request is dropped meanwhile.
        struct Waiting<'a>(&'a Promises, SessionId, InodeId);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.recall_waiting(self.1, self.2, false);
            }
        }
        self.promises.recall_waiting(asker, dir, true);
        let _waiting = Waiting(&self.promises, asker, dir);
        self.recall_wait(dir, holder, expiry, attempt).await;
    }

    async fn recall_wait(&self, dir: InodeId, holder: SessionId, expiry: tokio::time::Instant, attempt: u32) {
        match self.promises.recall(holder, dir, expiry).filter(|_| attempt == 0) {
            Some(w) => {
                if tokio::time::timeout_at(w.expiry, w.acked).await.is_err() {
                    tracing::warn!(session = holder.0, dir = dir.0, "a mount did not give a delegated directory back: waited for its lease to end");
                }
            }
            None => tokio::time::sleep_until(expiry).await,
        }
    }

    async fn read_now(&self, req: MetaRequest) -> MetaResponse {
        tokio::select! {
            r = self.read_barrier() => r?,
            e = self.quorum_lost() => return Err(e),
        }
        let db = self.db.clone();
        let is_status = matches!(req.op, MetaOp::Status);
        // A read of a few keys takes less than handing it to another thread: done here.
        let small = match &req.op {
            MetaOp::Lookup { .. } | MetaOp::GetAttr { .. } | MetaOp::Readlink { .. } | MetaOp::GetXattr { .. } => true,
            MetaOp::GetLayout { n_chunks, .. } => *n_chunks <= OPEN_LAYOUT_CHUNKS,
            _ => false,
        };
        let read = move || {
            let kv = ReadKv::new(&db).map_err(|e| FsError::Internal(e.to_string()))?;
            shoal_meta_core::read(&kv, &req, now_ns())
        };
        let mut reply = if small { read()? } else { tokio::task::spawn_blocking(read).await.map_err(|e| FsError::Internal(e.to_string()))?? };
        if is_status {
            if let MetaReply::Status(s) = &mut reply {
                self.fill_status(s);
            }
        }
        Ok(reply)
    }

    fn fill_status(&self, s: &mut ClusterStatus) {
        let m = self.raft.metrics().borrow().clone();
        s.leader = m.current_leader.map(MetaNodeId);
        s.term = m.current_term;
        s.last_applied = m.last_applied.map_or(0, |l| l.index);
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        s.members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: MetaNodeId(*id),
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched: matched.get(id).and_then(|l| l.map(|l| l.index)),
            })
            .collect();
    }

    async fn client(&self, peer: &PeerInfo, req: MetaRequest) -> MetaResponse {
        let role = peer.identity.as_ref().map(|i| i.role);
        let claimed = req.op.from_store();
        if claimed.is_some() && role != Some(Role::Store) {
            return Err(FsError::PermissionDenied);
        }
        // A storage server speaks only for itself: the id it names is the one its certificate
        // was issued to (`store-N`).
        if let (Some(store), Some(id)) = (claimed, peer.identity.as_ref()) {
            if id.name != format!("store-{}", store.0) {
                tracing::warn!(peer = %peer.addr, certificate = id.name, claimed = store.0, "refused a storage server speaking for another");
                return Err(FsError::PermissionDenied);
            }
        }
        if let Some(e) = self.without_quorum() {
            return Err(e);
        }
        if let MetaOp::WatchCallbacks { acks, term } = &req.op {
            return self.watch(req.session, acks, *term).await;
        }
        if let MetaOp::OpenRead { handle } = &req.op {
            if let Some(reply) = self.open_read_early(&req, *handle).await? {
                return Ok(reply);
            }
        }
        if req.op.is_read() {
            // A read of a directory delegated to another session waits for its recall.
            let mut attempt = 0;
            loop {
                match self.read(req.clone()).await {
                    Err(FsError::Delegated { dir, holder, until }) if attempt < RECALL_ATTEMPTS_MAX => {
                        self.recall(req.session, dir, holder, until, attempt).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        }
        let is_delegate = matches!(req.op, MetaOp::Delegate { .. });
        let is_heartbeat = matches!(req.op, MetaOp::StoreHeartbeat(_));
        let is_close = matches!(req.op, MetaOp::CloseSession);
        let (writer, invalidates) = (req.session, req.op.invalidates());
        // A watching session is promised the file it creates (and the directory it is in), as
        // if it had looked it up: its mount may cache the new file's attributes.
        let since = match &req.op {
            MetaOp::CreateOpenReserve { parent, .. } if writer != SessionId(0) => self.promises.begin(writer, &[parent.inode], tokio::time::Instant::now()),
            _ => None,
        };
        // A request that arrived while this leader still had its majority but lost it while
        // waiting is refused as soon as the loss shows, not left to the client's timeout: the
        // client retries elsewhere with the same sequence number, so whether or not this
        // proposal ever commits, it takes effect once.
        let mut reply = match tokio::select! {
            r = self.propose(CommandKind::Request(req)) => r,
            e = self.quorum_lost() => return Err(e),
        } {
            Ok(r) => r,
            // Refused because another session holds a directory it touches: recall it, then
            // the client sends the request again (as a new one: this one's answer is kept).
            // A request for the delegation itself recalls nothing: the asker does without.
            Err(FsError::Delegated { dir, holder, until }) if !is_delegate => {
                self.recall(writer, dir, holder, until, 0).await;
                return Err(FsError::Delegated { dir, holder, until });
            }
            Err(e) => return Err(e),
        };
        self.call_back(writer, &invalidates).await;
        if let (Some(since), MetaReply::Created { attr, .. }) = (since, &reply) {
            if self.promises.grant_after(writer, &[attr.handle.inode], since, tokio::time::Instant::now()) {
                reply = MetaReply::Promised { lease_ms: self.promises.lease().as_millis() as u64, reply: Box::new(reply) };
            }
        }
        if is_close {
            // A mount closes its session once unmounted: nothing it cached is left to call back.
            self.promises.end_session(writer);
        }
        if is_heartbeat {
            if let MetaReply::StoreOrders(orders) = &mut reply {
                orders.term = Term(self.raft.metrics().borrow().current_term);
            }
        }
        Ok(reply)
    }

    async fn raft_rpc(&self, peer: &PeerInfo, kind: RaftRpc, payload: &[u8]) -> Result<Vec<u8>, FsError> {
        if peer.identity.as_ref().map(|i| i.role) != Some(Role::Meta) {
            tracing::warn!(peer = %peer.addr, "refused a Raft message from a peer without a metadata-node certificate");
            return Err(FsError::PermissionDenied);
        }
        let bad = |e: codec::CodecError| FsError::Protocol(e.to_string());
        Ok(match kind {
            RaftRpc::AppendEntries => codec::encode(&self.raft.append_entries(codec::decode(payload).map_err(bad)?).await),
            RaftRpc::Vote => codec::encode(&self.raft.vote(codec::decode(payload).map_err(bad)?).await),
            RaftRpc::InstallSnapshot => codec::encode(&self.raft.install_snapshot(codec::decode(payload).map_err(bad)?).await),
        })
    }

    /// Keep a promise horizon in the log that covers every promise this leader may give.
    async fn record_horizon(&self, term: u64) {
        self.ensure_inherited(term).await;
        if self.promises.inherited_term() != Some(term) {
            return; // Only after the earlier leaders' horizon is known, so it is not overwritten first.
        }
        let Some(watchers) = self.promises.horizon_due(tokio::time::Instant::now(), HORIZON_MARGIN) else { return };
        let ahead = self.promises.lease() + HORIZON_MARGIN * 2;
        let until = tokio::time::Instant::now() + ahead;
        let horizon = shoal_meta_core::PromiseHorizon { until: now_ns() + ahead.as_nanos() as i64, watchers: watchers.clone() };
        match self.propose(CommandKind::PromiseHorizon(horizon)).await {
            Ok(_) => self.promises.horizon_recorded(until, watchers),
            Err(e) => tracing::debug!("promise horizon not committed: {e}"),
        }
    }

    /// Resolves with the refusal once this node leads without a majority (see
    /// [`without_quorum`]); never resolves while it has one.
    async fn quorum_lost(&self) -> FsError {
        let mut lost = self.quorum_lost.clone();
        if lost.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await; // The watcher stops only with the runtime.
        }
        self.without_quorum().unwrap_or_else(|| FsError::Unavailable("no quorum: the metadata leader lost its majority".into()))
    }

    fn without_quorum(&self) -> Option<FsError> {
        without_quorum(&self.raft)
    }
    fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == Some(m.id)
    }
}

impl Service for MetaService {
    type Req = MetaWireReq;
    type Resp = MetaWireResp;

    async fn call(self: Arc<Self>, peer: Arc<PeerInfo>, req: MetaWireReq, payload: Bytes) -> (MetaWireResp, Bytes) {
        match req {
            MetaWireReq::Client(r) => {
                // Without a ticket: only a storage server's registration, heartbeats and
                // corruption reports (its certificate says what it is).
                if r.op.from_store().is_none() {
                    tracing::warn!(peer = %peer.addr, "refused a request without a ticket");
                    let e = FsError::Unauthenticated("this cluster needs a ticket: log in with `shoal login`".into());
                    return (MetaWireResp::Client(Err(e)), Bytes::new());
                }
                (MetaWireResp::Client(self.client(&peer, r).await), Bytes::new())
            }
            MetaWireReq::Authed { auth, mut req } => {
                let encoded = codec::encode(&req);
                let reply = match self.auth.verify(peer.addr, &auth, &encoded) {
                    Ok(identity) => match self.auth.bind(peer.addr, &identity, &mut req).await {
                        Ok(()) => self.client(&peer, req).await.map(|r| self.auth.with_capability(r)),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                (MetaWireResp::Client(reply), Bytes::new())
            }
            MetaWireReq::Auth(a) => (MetaWireResp::Auth(self.auth.exchange(peer.addr, a).await), Bytes::new()),
            MetaWireReq::Raft(kind) => match self.raft_rpc(&peer, kind, &payload).await {
                Ok(body) => (MetaWireResp::Raft, Bytes::from(body)),
                Err(e) => (MetaWireResp::Refused(e), Bytes::new()),
            },
        }
    }
}

fn not_leader(e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> FsError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => FsError::NotLeader { leader_hint: f.leader_id.map(MetaNodeId) },
        other => FsError::Unavailable(other.to_string()),
    }
}

/// The refusal a leader cut off from a majority gives (openraft's metrics say when a majority
/// last acknowledged it, refreshed at each of its heartbeat ticks).
fn without_quorum(raft: &MetaRaft) -> Option<FsError> {
    let m = raft.metrics();
    let m = m.borrow();
    let since = m.millis_since_quorum_ack.filter(|_| m.current_leader == Some(m.id))?;
    let voters = m.membership_config.membership().voter_ids().count();
    (since > QUORUM_LOST_AFTER.as_millis() as u64).then(|| {
        FsError::Unavailable(format!(
            "no quorum: this metadata leader has not heard from a majority of its {voters} nodes for {:.1} s, so nothing can commit until they are back",
            since as f64 / 1e3
        ))
    })
}

/// Publish whether this node leads without a majority, so requests waiting on it are refused
/// when it loses one (checked every [`QUORUM_POLL`]).
async fn quorum_watch(raft: MetaRaft, lost: tokio::sync::watch::Sender<bool>) {
    loop {
        tokio::time::sleep(QUORUM_POLL).await;
        let now_lost = without_quorum(&raft).is_some();
        lost.send_if_modified(|l| std::mem::replace(l, now_lost) != now_lost);
        if lost.is_closed() {
            return;
        }
    }
}

/// Group commit: gather every command waiting, stamp the batch with the leader's clock and
/// propose it as one log entry; up to [`BATCHES_IN_FLIGHT_MAX`] entries replicate at once.
///
/// Entries are proposed in the order their commands were queued (one batch in flight), which
/// [`MetaService::open_read_early`] relies on.
async fn write_batcher(raft: MetaRaft, mut rx: mpsc::Receiver<WriteWaiter>, drops: Arc<DropGate>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    // A command that would have taken its entry past `BATCH_INLINE_BYTES_MAX` starts the next.
    let mut carried: Option<WriteWaiter> = None;
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => break,
            },
        };
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore never closed");
        let mut bytes = inline_bytes(&first.0);
        let mut waiting = vec![first];
        while waiting.len() < BATCH_COMMANDS_MAX {
            match rx.try_recv() {
                Ok(w) => {
                    let more = inline_bytes(&w.0);
                    if bytes + more > BATCH_INLINE_BYTES_MAX {
                        carried = Some(w);
                        break;
                    }
                    bytes += more;
                    waiting.push(w);
                }
                Err(_) => break,
            }
        }
        let now = now_ns();
        let (kinds, senders): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
        let removing = kinds.iter().filter(|k| DropGate::removes_names(k)).count();
        let batch: Batch = kinds.into_iter().map(|kind| Command { now, kind }).collect();
        // Handed to Raft here, in queue order; its answer is awaited apart.
        let sent = raft.client_write_ff(batch).await;
        let drops = drops.clone();
        tokio::spawn(async move {
            let result = match sent {
                Ok(answer) => match answer.await {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(e)) => Err(not_leader(RaftError::APIError(e))),
                    Err(_) => Err(FsError::Unavailable("shutting down".into())),
                },
                Err(fatal) => Err(FsError::Unavailable(fatal.to_string())),
            };
            match result {
                Ok(resp) => {
                    for (tx, r) in senders.into_iter().zip(resp.data) {
                        let _ = tx.send(r);
                    }
                }
                Err(e) => {
                    for tx in senders {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
            // Applied (or refused): opens may be answered early again.
            for _ in 0..removing {
                drops.end();
            }
            drop(permit);
        });
    }
}

/// File bytes a command carries ([`MetaOp::CommitInline`]).
fn inline_bytes(kind: &CommandKind) -> usize {
    match kind {
        CommandKind::Request(MetaRequest { op: MetaOp::CommitInline { data, .. }, .. }) => data.iter().map(|(_, d)| d.len()).sum(),
        CommandKind::Request(MetaRequest { op: MetaOp::CreateAtWith { data, .. }, .. }) => data.len(),
        _ => 0,
    }
}

/// Batched linearizable reads: one `ensure_linearizable` (a heartbeat round to a quorum, then
/// waiting until the read point is applied) serves every read that was waiting when it began.
async fn read_gate(raft: MetaRaft, mut rx: mpsc::Receiver<ReadWaiter>, lease: Arc<ReadLease>) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiting.push(w);
        }
        let term = raft.metrics().borrow().current_term;
        let sent = tokio::time::Instant::now();
        let result = match raft.ensure_linearizable().await {
            Ok(_) => {
                // Everything committed when the check began is applied here now; writes acknowledged
                // later were applied here before their acknowledgement.
                lease.confirmed(term, sent);
                Ok(())
            }
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(FsError::NotLeader { leader_hint: f.leader_id.map(MetaNodeId) })
            }
            Err(e) => Err(FsError::Unavailable(e.to_string())),
        };
        for tx in waiting {
            let _ = tx.send(result.clone());
        }
    }
}

/// On the leader: bootstrap the state once, then propose a tick regularly (expiries and failure
/// detection run on the time carried by ticks).
pub async fn housekeeping(service: Arc<MetaService>, every: Duration) {
    let mut bootstrapped_term = None;
    loop {
        tokio::time::sleep(every).await;
        if !service.is_leader() {
            service.promises.clear();
            continue;
        }
        service.promises.forget_silent(tokio::time::Instant::now());
        let term = service.raft.metrics().borrow().current_term;
        if bootstrapped_term != Some(term) {
            match service.propose(CommandKind::Bootstrap(service.params.clone())).await {
                Ok(_) => bootstrapped_term = Some(term),
                Err(e) => {
                    tracing::debug!("bootstrap not committed yet: {e}");
                    continue;
                }
            }
        }
        if let Err(e) = service.propose(CommandKind::Tick).await {
            tracing::debug!("tick not committed: {e}");
        }
    }
}

/// On the leader: keep a promise horizon in the log that covers every watcher, renewed before
/// it runs out, and recorded at once when a new watcher polls (a mount gets promises, so the
/// kernel caches, from its first requests rather than up to a housekeeping period later).
pub async fn horizon_keeper(service: Arc<MetaService>, every: Duration) {
    loop {
        let _ = tokio::time::timeout(every, service.horizon_wake.notified()).await;
        if service.is_leader() {
            let term = service.raft.metrics().borrow().current_term;
            service.record_horizon(term).await;
        }
    }
}

/// Chunks compacted per round.
pub const COMPACTIONS_PER_ROUND_MAX: u32 = 16;

/// On the leader: rewrite fragmented chunks (many small slices) as one blob each, through the
/// ordinary client path, so files written in many small pieces do not stay fragmented.
pub async fn compactor(service: Arc<MetaService>, config: shoal_types::config::ClientConfig, every: Duration) {
    let mut client: Option<Arc<shoal_client::Client>> = None;
    loop {
        tokio::time::sleep(every).await;
        if !service.is_leader() {
            client = None;
            continue;
        }
        if client.is_none() {
            let login = shoal_client::Login::Key { user: shoal_auth::ADMIN.into(), key: service.auth.keys().admin_key() };
            match shoal_client::Client::connect_as(&config, login, Credentials::ROOT, "compactor").await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::warn!("compactor cannot connect: {e}");
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let queued = match c.fragmented_chunks(COMPACTIONS_PER_ROUND_MAX).await {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!("compactor: {e}");
                client = None;
                continue;
            }
        };
        for (handle, idx) in queued {
            match c.compact_chunk(handle, idx).await {
                Ok(true) => tracing::debug!(inode = handle.inode.0, idx, "compacted a chunk"),
                Ok(false) => {}
                Err(e) => tracing::warn!(inode = handle.inode.0, idx, "failed to compact a chunk: {e}"),
            }
        }
    }
}
