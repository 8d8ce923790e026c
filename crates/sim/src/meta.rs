//! A simulated metadata node: openraft around the real state machine (`shoal_meta_core::apply`
//! and `read`) on a simulated disk, serving Raft and client messages over turmoil's network.
//!
//! Disk model, what a crash keeps ([`MetaDisk`]): the vote (synced before `save_vote` returns),
//! the log entries whose flush was reported (a writer task syncs queued appends together after a
//! simulated fsync delay; a crash loses the queue), and the last snapshot. The applied state is
//! memory only, as on a real node that applies without fsync: a restart starts from the snapshot
//! and openraft applies the log again.

use crate::observe::Observer;
use crate::wire::{self, Msg, Reply};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use shoal_meta_core::kv::{Kv, MemKv, TABLES};
use shoal_meta_core::{Command, CommandKind, Params};
use shoal_types::codec;
use shoal_types::error::FsError;
use shoal_types::ids::{MetaNodeId, Term};
use shoal_types::meta_msg::{MetaReply, MetaResponse};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Batch = Vec<Command>;

openraft::declare_raft_types!(
    /// The simulated node's Raft types: the entries of the real service (a batch of commands),
    /// snapshots in memory.
    pub SimConfig:
        D = Batch,
        R = Vec<MetaResponse>,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type SimRaft = openraft::Raft<SimConfig>;
type SResult<T> = Result<T, StorageError<u64>>;

/// Simulated fsync of the log.
const LOG_SYNC_DELAY: Duration = Duration::from_millis(2);
/// How often the leader proposes a tick.
const TICK_EVERY: Duration = Duration::from_millis(500);

/// What survives a crash of a metadata node.
#[derive(Default)]
pub struct MetaDisk {
    vote: Option<Vote<u64>>,
    log: BTreeMap<u64, Entry<SimConfig>>,
    last_purged: Option<LogId<u64>>,
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
}

pub type SharedMetaDisk = Arc<Mutex<MetaDisk>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("simulation state lock")
}

fn storage_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::new(
        ErrorSubject::Store,
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

// ---------------------------------------------------------------- log

enum LogOp {
    Append(Vec<Entry<SimConfig>>, LogFlushed<SimConfig>),
    Truncate(u64),
    Purge(LogId<u64>),
}

/// Entries by index, and the last purged log id.
type LogView = (BTreeMap<u64, Entry<SimConfig>>, Option<LogId<u64>>);

/// The log as this node sees it (synced and queued entries), and the queue to the writer.
#[derive(Clone)]
pub struct LogStore {
    disk: SharedMetaDisk,
    view: Arc<Mutex<LogView>>,
    tx: tokio::sync::mpsc::UnboundedSender<LogOp>,
}

impl LogStore {
    fn open(disk: SharedMetaDisk) -> LogStore {
        let view = {
            let d = lock(&disk);
            (d.log.clone(), d.last_purged)
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogOp>();
        let wdisk = disk.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut ops = vec![first];
                while let Ok(op) = rx.try_recv() {
                    ops.push(op);
                }
                tokio::time::sleep(LOG_SYNC_DELAY).await;
                let mut done = Vec::new();
                {
                    let mut d = lock(&wdisk);
                    for op in ops {
                        match op {
                            LogOp::Append(entries, cb) => {
                                for e in entries {
                                    d.log.insert(e.log_id.index, e);
                                }
                                done.push(cb);
                            }
                            LogOp::Truncate(from) => {
                                d.log.split_off(&from);
                            }
                            LogOp::Purge(upto) => {
                                d.log = d.log.split_off(&(upto.index + 1));
                                d.last_purged = Some(upto);
                            }
                        }
                    }
                }
                for cb in done {
                    cb.log_io_completed(Ok(()));
                }
            }
        });
        LogStore {
            disk,
            view: Arc::new(Mutex::new(view)),
            tx,
        }
    }

    fn queue(&self, op: LogOp) -> SResult<()> {
        self.tx
            .send(op)
            .map_err(|_| storage_err(ErrorVerb::Write, "log writer stopped"))
    }
}

impl RaftLogReader<SimConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<SimConfig>>> {
        Ok(lock(&self.view)
            .0
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<SimConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> SResult<LogState<SimConfig>> {
        let v = lock(&self.view);
        let last = v.0.last_key_value().map(|(_, e)| e.log_id).or(v.1);
        Ok(LogState {
            last_purged_log_id: v.1,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> SResult<()> {
        tokio::time::sleep(LOG_SYNC_DELAY).await;
        lock(&self.disk).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<u64>>> {
        Ok(lock(&self.disk).vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<SimConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<SimConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        {
            let mut v = lock(&self.view);
            for e in &entries {
                v.0.insert(e.log_id.index, e.clone());
            }
        }
        self.queue(LogOp::Append(entries, callback))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> SResult<()> {
        lock(&self.view).0.split_off(&log_id.index);
        self.queue(LogOp::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> SResult<()> {
        {
            let mut v = lock(&self.view);
            v.0 = v.0.split_off(&(log_id.index + 1));
            v.1 = Some(log_id);
        }
        self.queue(LogOp::Purge(log_id))
    }
}

// ---------------------------------------------------------------- state machine

/// The applied state of a node: memory only.
#[derive(Clone, Default)]
pub struct SmState {
    pub kv: MemKv,
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, BasicNode>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    /// (index in `TABLES`, key, value)
    rows: Vec<(u8, Vec<u8>, Vec<u8>)>,
}

impl SmState {
    fn encode(&self) -> Vec<u8> {
        let rows = self
            .kv
            .rows()
            .map(|(t, k, v)| {
                (
                    TABLES
                        .iter()
                        .position(|x| *x == t)
                        .expect("every table is listed") as u8,
                    k.to_vec(),
                    v.to_vec(),
                )
            })
            .collect();
        codec::encode(&SnapshotBody {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            rows,
        })
    }

    fn decode(bytes: &[u8]) -> Result<SmState, String> {
        let body: SnapshotBody = codec::decode(bytes).map_err(|e| e.to_string())?;
        let mut kv = MemKv::default();
        for (t, k, v) in body.rows {
            let table = *TABLES
                .get(t as usize)
                .ok_or_else(|| format!("unknown table {t}"))?;
            kv.put(table, &k, &v);
        }
        Ok(SmState {
            kv,
            last_applied: body.last_applied,
            membership: body.membership,
        })
    }
}

#[derive(Clone)]
pub struct StateMachine {
    pub state: Arc<Mutex<SmState>>,
    disk: SharedMetaDisk,
}

impl StateMachine {
    fn open(disk: SharedMetaDisk) -> Result<StateMachine, String> {
        let state = match &lock(&disk).snapshot {
            Some((_, bytes)) => SmState::decode(bytes)?,
            None => SmState::default(),
        };
        Ok(StateMachine {
            state: Arc::new(Mutex::new(state)),
            disk,
        })
    }
}

impl RaftSnapshotBuilder<SimConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<SimConfig>> {
        let (bytes, last, membership) = {
            let s = lock(&self.state);
            (s.encode(), s.last_applied, s.membership.clone())
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id: format!(
                "{}-{}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index)
            ),
        };
        lock(&self.disk).snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<SimConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> SResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        let s = lock(&self.state);
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Vec<MetaResponse>>>
    where
        I: IntoIterator<Item = Entry<SimConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut s = lock(&self.state);
        let mut replies = Vec::new();
        for entry in entries {
            s.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Vec::new()),
                EntryPayload::Normal(batch) => replies.push(
                    batch
                        .iter()
                        .map(|c| shoal_meta_core::apply(&mut s.kv, c))
                        .collect(),
                ),
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(Vec::new());
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let bytes = snapshot.into_inner();
        let state = SmState::decode(&bytes).map_err(|e| storage_err(ErrorVerb::Read, e))?;
        if state.last_applied != meta.last_log_id {
            return Err(storage_err(
                ErrorVerb::Read,
                "snapshot does not match its announced metadata",
            ));
        }
        lock(&self.disk).snapshot = Some((meta.clone(), bytes));
        *lock(&self.state) = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<SimConfig>>> {
        Ok(lock(&self.disk)
            .snapshot
            .clone()
            .map(|(meta, bytes)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            }))
    }
}

// ---------------------------------------------------------------- network

pub struct Network;

pub struct Peer {
    target: u64,
    host: String,
}

impl RaftNetworkFactory<SimConfig> for Network {
    type Network = Peer;
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            host: node.addr.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

fn unexpected<E: std::error::Error>() -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "a reply of another kind than the request",
    )))
}

fn remote<T, E: std::error::Error>(
    target: u64,
    r: Result<T, RaftError<u64, E>>,
) -> RpcResult<T, E> {
    r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

impl Peer {
    /// Send `msg` and take its answer out of the reply with `answer` (`None`: a reply of
    /// another kind).
    async fn rpc<T, E: std::error::Error>(
        &self,
        msg: Msg,
        ttl: Duration,
        answer: impl FnOnce(Reply) -> Option<Result<T, RaftError<u64, E>>>,
    ) -> RpcResult<T, E> {
        match wire::call(&self.host, &msg, ttl).await {
            Ok(reply) => match answer(reply) {
                Some(r) => remote(self.target, r),
                None => Err(unexpected()),
            },
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }
}

impl RaftNetwork<SimConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.rpc(Msg::Append(rpc), option.hard_ttl(), |r| match r {
            Reply::Append(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.rpc(Msg::Snapshot(rpc), option.hard_ttl(), |r| match r {
            Reply::Snapshot(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.rpc(Msg::Vote(rpc), option.hard_ttl(), |r| match r {
            Reply::Vote(r) => Some(r),
            _ => None,
        })
        .await
    }
}

// ---------------------------------------------------------------- the node

/// The cluster clock as the leader reads it: simulated time since the epoch.
pub fn now_ns() -> i64 {
    turmoil::since_epoch().map_or(0, |d| d.as_nanos() as i64)
}

/// Parameters of the simulated metadata service.
pub fn params() -> Params {
    Params {
        session_lease_ns: 60_000_000_000,
        intent_lease_ns: 60_000_000_000,
        store_dead_after_ns: 3_000_000_000,
    }
}

/// Host name of metadata node `id`.
pub fn host(id: u64) -> String {
    format!("meta-{id}")
}

/// Run metadata node `id` of `n` until the simulation crashes it. `timeout_ms`: this node's
/// election timeout (fixed per node and seed, since openraft draws the random one from the
/// thread's generator, which no seed controls).
pub async fn run(
    id: u64,
    n: u64,
    timeout_ms: u64,
    disk: SharedMetaDisk,
    observer: Observer,
) -> turmoil::Result {
    let config = openraft::Config {
        cluster_name: "shoal-sim".into(),
        heartbeat_interval: 50,
        election_timeout_min: timeout_ms,
        election_timeout_max: timeout_ms + 1,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(300),
        max_in_snapshot_log_to_keep: 50,
        ..Default::default()
    };
    let config = Arc::new(config.validate()?);
    let log = LogStore::open(disk.clone());
    let sm = StateMachine::open(disk)?;
    let state = sm.state.clone();
    let raft = SimRaft::new(id, config, Network, log, sm).await?;
    if !raft.is_initialized().await? {
        let members: BTreeMap<u64, BasicNode> =
            (1..=n).map(|i| (i, BasicNode { addr: host(i) })).collect();
        let _ = raft.initialize(members).await;
    }
    observer.meta_started(id, state.clone(), raft.metrics());
    tokio::spawn(housekeeping(raft.clone(), observer.clone()));
    let serve_raft = raft.clone();
    wire::serve(move |msg| {
        let (raft, state) = (serve_raft.clone(), state.clone());
        async move { handle(&raft, &state, msg).await }
    })
    .await?;
    Ok(())
}

async fn handle(raft: &SimRaft, state: &Arc<Mutex<SmState>>, msg: Msg) -> Reply {
    match msg {
        Msg::Append(r) => Reply::Append(raft.append_entries(r).await),
        Msg::Vote(r) => Reply::Vote(raft.vote(r).await),
        Msg::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
        Msg::Meta(req) if req.op.is_read() => Reply::Meta(match raft.ensure_linearizable().await {
            Ok(_) => shoal_meta_core::read(&lock(state).kv, &req, now_ns()),
            Err(e) => Err(refusal(e, raft.metrics().borrow().current_leader)),
        }),
        Msg::Meta(req) => {
            let mut reply = propose(raft, CommandKind::Request(req)).await;
            // As the real service does: orders carry the term of the leader that gave them.
            if let Ok(MetaReply::StoreOrders(orders)) = &mut reply {
                orders.term = Term(raft.metrics().borrow().current_term);
            }
            Reply::Meta(reply)
        }
        Msg::Put { .. } | Msg::Get { .. } => {
            Reply::Put(Err("a metadata node holds no blobs".into()))
        }
    }
}

fn refusal<E: std::fmt::Display>(e: RaftError<u64, E>, leader: Option<u64>) -> FsError {
    match e {
        RaftError::APIError(_) => FsError::NotLeader {
            leader_hint: leader.map(MetaNodeId),
        },
        other => FsError::Unavailable(other.to_string()),
    }
}

async fn propose(raft: &SimRaft, kind: CommandKind) -> MetaResponse {
    match raft
        .client_write(vec![Command {
            now: now_ns(),
            kind,
        }])
        .await
    {
        Ok(mut r) => r
            .data
            .pop()
            .unwrap_or_else(|| Err(FsError::Internal("an entry without its reply".into()))),
        Err(e) => Err(refusal(e, raft.metrics().borrow().current_leader)),
    }
}

/// On the leader: bootstrap once per term, then tick (expiries and failure detection).
async fn housekeeping(raft: SimRaft, observer: Observer) {
    let mut bootstrapped = None;
    loop {
        tokio::time::sleep(TICK_EVERY).await;
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) || observer.quiet() {
            continue;
        }
        if bootstrapped != Some(m.current_term) {
            if propose(&raft, CommandKind::Bootstrap(params()))
                .await
                .is_ok()
            {
                bootstrapped = Some(m.current_term);
            }
            continue;
        }
        let _ = propose(&raft, CommandKind::Tick).await;
    }
}
