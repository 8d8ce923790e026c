//! Persistent Raft log and state machine.
//!
//! - Log entries are appended to segment files ([`crate::wal`]), many appends per `fdatasync`;
//!   `log_io_completed` is called only after it returned. The vote and the purge point are kept
//!   in `raft-log.redb` (durable transactions).
//! - Entries are applied in transactions on `meta.redb` committed without fsync: the log already
//!   made them durable, and after a crash openraft re-applies from the persisted `last_applied`.
//!   A purge first makes the state machine durable, so the log is never purged past what the
//!   state machine has on disk.
//! - Snapshots are streamed to and from files: a snapshot is every state-machine table dumped in
//!   key order, each record length-prefixed, ending with a CRC32C of the whole file.

use crate::TypeConfig;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use shoal_meta_core::kv::{Kv, KvPair, KvRead, Table, TABLES};
use shoal_meta_core::Command;
use shoal_types::codec;
use shoal_types::meta_msg::MetaResponse;
use crate::wal::{WalReader, WalWriter};
use std::fmt::Debug;
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type NodeId = u64;
type SResult<T> = Result<T, StorageError<NodeId>>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

fn table_def(t: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(t.name())
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}
fn log_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, verb, e)
}
fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    io_err(ErrorSubject::StateMachine, verb, e)
}

/// The two databases of a metadata node: the Raft log (and vote) in `raft-log.redb`, the state
/// machine in `meta.redb`. Kept apart so that fsyncing the log never waits for an apply, and an
/// apply never waits for a log fsync (redb has one writer per database).
pub struct Dbs {
    pub log: Arc<Database>,
    pub sm: Arc<Database>,
}

/// Open (or create) both databases with every table present. A data directory of format 1 kept
/// the log inside `meta.redb`; it is moved to `raft-log.redb` here (an upgrade in place).
pub fn open_dbs(dir: &Path, cache_size_bytes: u64) -> anyhow::Result<Dbs> {
    // The configured cache is shared: the log needs little (it is read back only to replicate
    // recent entries), the state machine gets the rest.
    let log_cache = (cache_size_bytes / 8).min(32 << 20);
    let sm = Database::builder().set_cache_size((cache_size_bytes - log_cache) as usize).create(dir.join("meta.redb"))?;
    let log = Database::builder().set_cache_size(log_cache as usize).create(dir.join("raft-log.redb"))?;
    let txn = sm.begin_write()?;
    txn.open_table(SM_META)?;
    for t in TABLES {
        txn.open_table(table_def(t))?;
    }
    txn.commit()?;
    let txn = log.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(RAFT_META)?;
    txn.commit()?;
    upgrade_log_location(&sm, &log)?;
    Ok(Dbs { log: Arc::new(log), sm: Arc::new(sm) })
}

fn upgrade_log_location(sm: &Database, log: &Database) -> anyhow::Result<()> {
    let legacy = {
        let txn = sm.begin_read()?;
        let mut rows: (Vec<(u64, Vec<u8>)>, Vec<(String, Vec<u8>)>) = (Vec::new(), Vec::new());
        if let Ok(t) = txn.open_table(LOG) {
            for r in t.iter()? {
                let (k, v) = r?;
                rows.0.push((k.value(), v.value().to_vec()));
            }
        }
        if let Ok(t) = txn.open_table(RAFT_META) {
            for r in t.iter()? {
                let (k, v) = r?;
                rows.1.push((k.value().to_string(), v.value().to_vec()));
            }
        }
        rows
    };
    if legacy.0.is_empty() && legacy.1.is_empty() {
        return Ok(());
    }
    let log_is_empty = {
        let txn = log.begin_read()?;
        txn.open_table(LOG)?.is_empty()? && txn.open_table(RAFT_META)?.is_empty()?
    };
    if log_is_empty {
        let mut txn = log.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut t = txn.open_table(LOG)?;
            for (k, v) in &legacy.0 {
                t.insert(*k, v.as_slice())?;
            }
            let mut m = txn.open_table(RAFT_META)?;
            for (k, v) in &legacy.1 {
                m.insert(k.as_str(), v.as_slice())?;
            }
        }
        txn.commit()?;
        tracing::info!(entries = legacy.0.len(), "upgraded the data directory: the Raft log moved to raft-log.redb");
    }
    // Only once the log is safe in its own database are the old copies dropped.
    let mut txn = sm.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.delete_table(LOG)?;
    txn.delete_table(RAFT_META)?;
    txn.commit()?;
    Ok(())
}

// ---------------------------------------------------------------- key-value adapters

/// The state machine's view of a write transaction, with every table opened once. A storage
/// failure is recorded and surfaces as a fatal storage error after the apply; it cannot be a
/// reply, which must be deterministic.
pub struct WriteKv<'t> {
    tables: Vec<redb::Table<'t, &'static [u8], &'static [u8]>>,
    pub failed: Option<String>,
}

fn table_index(t: Table) -> usize {
    TABLES.iter().position(|x| *x == t).expect("every table is listed in TABLES")
}

impl<'t> WriteKv<'t> {
    pub fn new(txn: &'t redb::WriteTransaction) -> Result<Self, redb::TableError> {
        let tables = TABLES.iter().map(|t| txn.open_table(table_def(*t))).collect::<Result<_, _>>()?;
        Ok(WriteKv { tables, failed: None })
    }
    fn fail(&mut self, e: impl std::fmt::Display) {
        if self.failed.is_none() {
            self.failed = Some(e.to_string());
        }
    }
}

impl KvRead for WriteKv<'_> {
    fn get(&self, t: Table, key: &[u8]) -> Option<Vec<u8>> {
        let v = self.tables[table_index(t)].get(key).ok()??;
        Some(v.value().to_vec())
    }
    fn scan(&self, t: Table, start: &[u8], end: &[u8], limit: usize) -> Vec<KvPair> {
        if start >= end {
            return Vec::new();
        }
        let Ok(range) = self.tables[table_index(t)].range::<&[u8]>(start..end) else { return Vec::new() };
        range.take(limit).filter_map(|r| r.ok()).map(|(k, v)| (k.value().to_vec(), v.value().to_vec())).collect()
    }
}

impl Kv for WriteKv<'_> {
    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) {
        let r = self.tables[table_index(t)].insert(key, value).map(|_| ());
        if let Err(e) = r {
            self.fail(e);
        }
    }
    fn delete(&mut self, t: Table, key: &[u8]) {
        let r = self.tables[table_index(t)].remove(key).map(|_| ());
        if let Err(e) = r {
            self.fail(e);
        }
    }
}

/// A consistent read-only view for linearizable reads; tables are opened on first use.
pub struct ReadKv {
    txn: redb::ReadTransaction,
    tables: Vec<std::sync::OnceLock<Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>>>,
}

impl ReadKv {
    pub fn new(db: &Database) -> anyhow::Result<ReadKv> {
        Ok(ReadKv { txn: db.begin_read()?, tables: TABLES.iter().map(|_| std::sync::OnceLock::new()).collect() })
    }
    fn table(&self, t: Table) -> Option<&redb::ReadOnlyTable<&'static [u8], &'static [u8]>> {
        self.tables[table_index(t)].get_or_init(|| self.txn.open_table(table_def(t)).ok()).as_ref()
    }
}

impl KvRead for ReadKv {
    fn get(&self, t: Table, key: &[u8]) -> Option<Vec<u8>> {
        let v = self.table(t)?.get(key).ok()??;
        Some(v.value().to_vec())
    }
    fn scan(&self, t: Table, start: &[u8], end: &[u8], limit: usize) -> Vec<KvPair> {
        if start >= end {
            return Vec::new();
        }
        let Some(table) = self.table(t) else { return Vec::new() };
        let Ok(range) = table.range::<&[u8]>(start..end) else { return Vec::new() };
        range.take(limit).filter_map(|r| r.ok()).map(|(k, v)| (k.value().to_vec(), v.value().to_vec())).collect()
    }
}

// ---------------------------------------------------------------- log store

type LogEntry = Entry<TypeConfig>;

/// Work for the log writer thread, done in queue order.
enum LogOp {
    Append(Vec<LogEntry>, LogFlushed<TypeConfig>),
    Truncate(u64, std::sync::mpsc::SyncSender<Result<(), String>>),
    Purge(LogId<NodeId>, std::sync::mpsc::SyncSender<Result<(), String>>),
}

/// A log read of at most this many entries is served on the calling task (they are in the page
/// cache: a replication of recent entries); a longer one on a blocking thread.
const INLINE_READ_MAX: u64 = 64;

/// The Raft log: entries in the segment files of [`crate::wal`], the vote and the purge point in
/// `raft-log.redb`. `append` returns at once: entries wait in `pending` (readable) while the
/// writer thread makes them durable, many appends per `fdatasync`, and then reports them flushed
/// (group commit of the log).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The state machine's database: made durable before any purge.
    sm: Arc<Database>,
    wal: WalReader<LogId<NodeId>>,
    pending: Arc<Mutex<BTreeMap<u64, LogEntry>>>,
    tx: std::sync::mpsc::Sender<LogOp>,
}

fn entry_id(bytes: &[u8]) -> std::io::Result<(u64, LogId<NodeId>)> {
    let e: LogEntry = codec::decode(bytes).map_err(std::io::Error::other)?;
    Ok((e.log_id.index, e.log_id))
}

impl LogStore {
    /// Open the log whose entries are in `wal_dir`. Entries an earlier format kept in
    /// `raft-log.redb` move into the segment files first (an upgrade in place).
    pub fn new(db: Arc<Database>, sm: Arc<Database>, wal_dir: &Path) -> anyhow::Result<LogStore> {
        let last_purged: Option<LogId<NodeId>> = read_meta(&db, "last_purged")?;
        let (mut writer, wal) = crate::wal::open(wal_dir, last_purged.map(|l| l.index), entry_id)?;
        upgrade_log_entries(&db, &mut writer, &wal, last_purged.map(|l| l.index))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let pending: Arc<Mutex<BTreeMap<u64, LogEntry>>> = Arc::default();
        let (wdb, wpending) = (db.clone(), pending.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || log_writer(wdb, writer, wpending, rx))
            .expect("spawn the log writer");
        Ok(LogStore { db, sm, wal, pending, tx })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> SResult<Option<T>> {
        read_meta(&self.db, key).map_err(|e| log_err(ErrorVerb::Read, e))
    }

    async fn put_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> SResult<()> {
        let db = self.db.clone();
        let bytes = codec::encode(value);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(|e| log_err(ErrorVerb::Write, e))?;
            {
                let mut table = txn.open_table(RAFT_META).map_err(|e| log_err(ErrorVerb::Write, e))?;
                table.insert(key, bytes.as_slice()).map_err(|e| log_err(ErrorVerb::Write, e))?;
            }
            txn.commit().map_err(|e| log_err(ErrorVerb::Write, e))
        })
        .await
        .map_err(|e| log_err(ErrorVerb::Write, e))?
    }

    async fn writer_op(&self, make: impl FnOnce(std::sync::mpsc::SyncSender<Result<(), String>>) -> LogOp) -> SResult<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.tx.send(make(tx)).map_err(|_| log_err(ErrorVerb::Write, "log writer stopped"))?;
        tokio::task::spawn_blocking(move || rx.recv())
            .await
            .map_err(|e| log_err(ErrorVerb::Write, e))?
            .map_err(|_| log_err(ErrorVerb::Write, "log writer stopped"))?
            .map_err(|e| log_err(ErrorVerb::Write, e))
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(db: &Database, key: &str) -> anyhow::Result<Option<T>> {
    let txn = db.begin_read()?;
    let table = txn.open_table(RAFT_META)?;
    match table.get(key)? {
        None => Ok(None),
        Some(v) => Ok(Some(codec::decode(v.value())?)),
    }
}

/// Format 2 kept the log entries in `raft-log.redb`: move them into the segment files, durably,
/// and only then drop the table (a crash in between finds them in both and keeps the files').
fn upgrade_log_entries(db: &Database, writer: &mut WalWriter<LogId<NodeId>>, wal: &WalReader<LogId<NodeId>>, purged: Option<u64>) -> anyhow::Result<()> {
    let rows: Vec<(u64, Vec<u8>)> = {
        let txn = db.begin_read()?;
        let table = txn.open_table(LOG)?;
        table.iter()?.map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec()))).collect::<Result<_, _>>()?
    };
    if rows.is_empty() {
        return Ok(());
    }
    // What the files do not hold yet (all of it, unless an earlier upgrade was cut short).
    let after = wal.last().map(|(i, _)| i).max(purged);
    let mut moved = Vec::new();
    for (i, bytes) in &rows {
        if after.is_none_or(|a| *i > a) {
            moved.push((*i, entry_id(bytes)?.1, &bytes[..]));
        }
    }
    if !moved.is_empty() {
        let n = moved.len();
        writer.append(moved)?;
        tracing::info!(entries = n, "upgraded the data directory: the Raft log moved to segment files");
    }
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.delete_table(LOG)?;
    txn.commit()?;
    Ok(())
}

fn log_writer(db: Arc<Database>, mut wal: WalWriter<LogId<NodeId>>, pending: Arc<Mutex<BTreeMap<u64, LogEntry>>>, rx: std::sync::mpsc::Receiver<LogOp>) {
    let mut appends: Vec<(Vec<LogEntry>, LogFlushed<TypeConfig>)> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        for op in ops {
            match op {
                LogOp::Append(entries, cb) => appends.push((entries, cb)),
                LogOp::Truncate(index, reply) => {
                    flush_appends(&mut wal, &pending, &mut appends);
                    let _ = reply.send(wal.truncate(index).map_err(|e| e.to_string()));
                }
                LogOp::Purge(log_id, reply) => {
                    flush_appends(&mut wal, &pending, &mut appends);
                    // The purge point is durable before any entry goes.
                    let r = record_purged(&db, &log_id).and_then(|()| wal.purge(log_id.index).map_err(|e| e.to_string()));
                    let _ = reply.send(r);
                }
            }
        }
        flush_appends(&mut wal, &pending, &mut appends);
    }
}

fn record_purged(db: &Database, log_id: &LogId<NodeId>) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
    txn.open_table(RAFT_META).map_err(|e| e.to_string())?.insert("last_purged", codec::encode(log_id).as_slice()).map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())
}

/// Write every queued append and make it durable with one `fdatasync`, then report each one
/// flushed.
fn flush_appends(wal: &mut WalWriter<LogId<NodeId>>, pending: &Mutex<BTreeMap<u64, LogEntry>>, appends: &mut Vec<(Vec<LogEntry>, LogFlushed<TypeConfig>)>) {
    if appends.is_empty() {
        return;
    }
    let encoded: Vec<(u64, LogId<NodeId>, Vec<u8>)> = appends.iter().flat_map(|(es, _)| es.iter()).map(|e| (e.log_id.index, e.log_id, codec::encode(e))).collect();
    let result = wal.append(encoded.iter().map(|(i, id, b)| (*i, *id, &b[..]))).map_err(|e| e.to_string());
    for (entries, cb) in appends.drain(..) {
        if result.is_ok() {
            let mut p = pending.lock().expect("pending lock");
            for e in &entries {
                if p.get(&e.log_id.index).is_some_and(|x| x.log_id == e.log_id) {
                    p.remove(&e.log_id.index);
                }
            }
        }
        cb.log_io_completed(result.clone().map_err(std::io::Error::other));
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(&mut self, range: RB) -> SResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            std::ops::Bound::Included(x) => *x,
            std::ops::Bound::Excluded(x) => x + 1,
            std::ops::Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            std::ops::Bound::Included(x) => x.saturating_add(1),
            std::ops::Bound::Excluded(x) => *x,
            std::ops::Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let (wal, pending) = (self.wal.clone(), self.pending.clone());
        let read = move || -> SResult<Vec<LogEntry>> {
            // Pending entries first: the writer indexes an entry in the files before it leaves
            // `pending`, so every entry is in this copy or in the files read after it (reading
            // the files first could miss one flushed in between).
            let unflushed: Vec<(u64, LogEntry)> = pending.lock().expect("pending lock").range(start..end).map(|(i, e)| (*i, e.clone())).collect();
            let mut out: BTreeMap<u64, LogEntry> = BTreeMap::new();
            for (i, bytes) in wal.read(start..end).map_err(|e| log_err(ErrorVerb::Read, e))? {
                out.insert(i, codec::decode(&bytes).map_err(|e| log_err(ErrorVerb::Read, e))?);
            }
            // Entries not yet flushed are newer than what the files hold at their index.
            out.extend(unflushed);
            Ok(out.into_values().collect())
        };
        if end - start <= INLINE_READ_MAX {
            return read();
        }
        tokio::task::spawn_blocking(read).await.map_err(|e| log_err(ErrorVerb::Read, e))?
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        if let Some((_, e)) = self.pending.lock().expect("pending lock").last_key_value() {
            return Ok(LogState { last_purged_log_id: last_purged, last_log_id: Some(e.log_id) });
        }
        let last = self.wal.last().map(|(_, id)| id).or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        self.put_meta("vote", vote).await
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        self.get_meta("vote")
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<LogEntry> = entries.into_iter().collect();
        {
            let mut p = self.pending.lock().expect("pending lock");
            for e in &entries {
                p.insert(e.log_id.index, e.clone());
            }
        }
        self.tx.send(LogOp::Append(entries, callback)).map_err(|_| log_err(ErrorVerb::Write, "log writer stopped"))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        self.pending.lock().expect("pending lock").retain(|i, _| *i < log_id.index);
        self.writer_op(|tx| LogOp::Truncate(log_id.index, tx)).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        // First a durable commit on the state machine's database: it makes every earlier
        // non-durable apply durable, so the state on disk covers what the log will no longer hold.
        let sm = self.sm.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut txn = sm.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
            txn.open_table(SM_META).map_err(|e| e.to_string())?.insert("synced_before_purge", codec::encode(&log_id).as_slice()).map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| log_err(ErrorVerb::Delete, e))?
        .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        self.pending.lock().expect("pending lock").retain(|i, _| *i > log_id.index);
        self.writer_op(|tx| LogOp::Purge(log_id, tx)).await
    }
}

// ---------------------------------------------------------------- state machine

#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    snapshot_dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"SHOALSNP";

impl StateMachine {
    pub fn new(db: Arc<Database>, snapshot_dir: PathBuf) -> anyhow::Result<StateMachine> {
        std::fs::create_dir_all(&snapshot_dir)?;
        // Leftovers of an interrupted transfer.
        for e in std::fs::read_dir(&snapshot_dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "partial") {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(StateMachine { db, snapshot_dir })
    }

    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    fn sm_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> SResult<Option<T>> {
        let txn = self.db.begin_read().map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let table = txn.open_table(SM_META).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        match table.get(key).map_err(|e| sm_err(ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(v) => codec::decode(v.value()).map(Some).map_err(|e| sm_err(ErrorVerb::Read, e)),
        }
    }

    fn current_snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join("current.snap")
    }

    /// Dump every state-machine table, as of one read transaction, into `path`.
    fn write_snapshot(db: &Database, path: &Path, meta: &SnapshotMeta<NodeId, openraft::BasicNode>) -> anyhow::Result<()> {
        let txn = db.begin_read()?;
        let tmp = path.with_extension("partial");
        let file = std::fs::File::create(&tmp)?;
        let mut w = CrcWriter { inner: std::io::BufWriter::with_capacity(1 << 20, file), crc: 0 };
        w.write_all(SNAPSHOT_MAGIC)?;
        let header = codec::encode(&SnapshotHeader { meta: meta.clone() });
        w.write_all(&(header.len() as u32).to_be_bytes())?;
        w.write_all(&header)?;
        for (i, t) in TABLES.iter().enumerate() {
            let table = txn.open_table(table_def(*t))?;
            for row in table.iter()? {
                let (k, v) = row?;
                w.write_all(&[i as u8])?;
                w.write_all(&(k.value().len() as u32).to_be_bytes())?;
                w.write_all(k.value())?;
                w.write_all(&(v.value().len() as u32).to_be_bytes())?;
                w.write_all(v.value())?;
            }
        }
        w.write_all(&[0xff])?;
        let crc = w.crc;
        w.inner.write_all(&crc.to_be_bytes())?;
        let file = w.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Replace every state-machine table with the snapshot's contents, durably.
    fn load_snapshot(db: &Database, path: &Path) -> anyhow::Result<SnapshotMeta<NodeId, openraft::BasicNode>> {
        let bytes_total = std::fs::metadata(path)?.len();
        anyhow::ensure!(bytes_total >= 8 + 4 + 1 + 4, "snapshot file too short");
        let file = std::fs::File::open(path)?;
        let mut r = CrcReader { inner: std::io::BufReader::with_capacity(1 << 20, file), crc: 0 };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        anyhow::ensure!(&magic == SNAPSHOT_MAGIC, "not a Shoal snapshot");
        let header_len = read_u32(&mut r)? as usize;
        anyhow::ensure!(header_len as u64 <= bytes_total, "snapshot header length out of range");
        let mut header = vec![0u8; header_len];
        r.read_exact(&mut header)?;
        let header: SnapshotHeader = codec::decode(&header)?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        for t in TABLES {
            txn.delete_table(table_def(t))?;
            txn.open_table(table_def(t))?;
        }
        loop {
            let mut tag = [0u8; 1];
            r.read_exact(&mut tag)?;
            if tag[0] == 0xff {
                break;
            }
            let t = *TABLES.get(tag[0] as usize).ok_or_else(|| anyhow::anyhow!("bad table tag {}", tag[0]))?;
            let klen = read_u32(&mut r)? as u64;
            anyhow::ensure!(klen <= bytes_total, "key length out of range");
            let mut k = vec![0u8; klen as usize];
            r.read_exact(&mut k)?;
            let vlen = read_u32(&mut r)? as u64;
            anyhow::ensure!(vlen <= bytes_total, "value length out of range");
            let mut v = vec![0u8; vlen as usize];
            r.read_exact(&mut v)?;
            txn.open_table(table_def(t))?.insert(k.as_slice(), v.as_slice())?;
        }
        let expect = r.crc;
        let mut crc = [0u8; 4];
        r.inner.read_exact(&mut crc)?;
        anyhow::ensure!(u32::from_be_bytes(crc) == expect, "snapshot checksum mismatch");
        {
            let mut meta = txn.open_table(SM_META)?;
            meta.insert("last_applied", codec::encode(&header.meta.last_log_id).as_slice())?;
            meta.insert("membership", codec::encode(&header.meta.last_membership).as_slice())?;
        }
        txn.commit()?;
        Ok(header.meta)
    }
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

struct CrcWriter<W> {
    inner: W,
    crc: u32,
}
impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
struct CrcReader<R> {
    inner: R,
    crc: u32,
}
impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let last_applied: Option<LogId<NodeId>> = self.sm_meta("last_applied")?.flatten();
        let membership: StoredMembership<NodeId, openraft::BasicNode> = self.sm_meta("membership")?.unwrap_or_default();
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: format!("{}-{}", last_applied.map_or(0, |l| l.leader_id.term), last_applied.map_or(0, |l| l.index)),
        };
        let (db, path, m) = (self.db.clone(), self.current_snapshot_path(), meta.clone());
        // The read transaction sees exactly the state as of `last_applied`: applies are serialized
        // with this call by openraft's state-machine worker.
        tokio::task::spawn_blocking(move || Self::write_snapshot(&db, &path, &m))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let file = tokio::fs::File::open(self.current_snapshot_path()).await.map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> SResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>)> {
        let last: Option<LogId<NodeId>> = self.sm_meta("last_applied")?.flatten();
        let membership = self.sm_meta("membership")?.unwrap_or_default();
        Ok((last, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Vec<MetaResponse>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> SResult<Vec<Vec<MetaResponse>>> {
            let mut txn = db.begin_write().map_err(|e| sm_err(ErrorVerb::Write, e))?;
            txn.set_durability(Durability::None).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let mut replies = Vec::with_capacity(entries.len());
            let mut last_applied = None;
            let mut membership = None;
            {
                let mut kv = WriteKv::new(&txn).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                for entry in &entries {
                    last_applied = Some(entry.log_id);
                    match &entry.payload {
                        EntryPayload::Blank => replies.push(Vec::new()),
                        EntryPayload::Normal(batch) => {
                            replies.push(batch.iter().map(|cmd| shoal_meta_core::apply(&mut kv, cmd)).collect());
                        }
                        EntryPayload::Membership(m) => {
                            membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                            replies.push(Vec::new());
                        }
                    }
                }
                if let Some(e) = kv.failed {
                    return Err(sm_err(ErrorVerb::Write, e));
                }
            }
            {
                let mut meta = txn.open_table(SM_META).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                meta.insert("last_applied", codec::encode(&last_applied).as_slice()).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                if let Some(m) = membership {
                    meta.insert("membership", codec::encode(&m).as_slice()).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                }
            }
            txn.commit().map_err(|e| sm_err(ErrorVerb::Write, e))?;
            Ok(replies)
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))?
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<tokio::fs::File>> {
        let path = self.snapshot_dir.join("incoming.partial");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<NodeId, openraft::BasicNode>, snapshot: Box<tokio::fs::File>) -> SResult<()> {
        snapshot.sync_all().await.map_err(|e| sm_err(ErrorVerb::Write, e))?;
        drop(snapshot);
        let incoming = self.snapshot_dir.join("incoming.partial");
        let current = self.current_snapshot_path();
        std::fs::rename(&incoming, &current).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let db = self.db.clone();
        let loaded = tokio::task::spawn_blocking(move || Self::load_snapshot(&db, &current))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        if loaded.last_log_id != meta.last_log_id {
            return Err(sm_err(ErrorVerb::Write, "snapshot file does not match its announced metadata"));
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let path = self.current_snapshot_path();
        if !path.exists() {
            return Ok(None);
        }
        let p = path.clone();
        let meta = tokio::task::spawn_blocking(move || -> anyhow::Result<SnapshotMeta<NodeId, openraft::BasicNode>> {
            let mut f = std::fs::File::open(&p)?;
            let mut magic = [0u8; 8];
            f.read_exact(&mut magic)?;
            anyhow::ensure!(&magic == SNAPSHOT_MAGIC, "not a snapshot");
            let len = read_u32(&mut f)? as usize;
            anyhow::ensure!(len < (64 << 20), "snapshot header too long");
            let mut h = vec![0u8; len];
            f.read_exact(&mut h)?;
            Ok(codec::decode::<SnapshotHeader>(&h)?.meta)
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Read, e))?
        .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

/// Commands are applied in batches: one log entry carries every command gathered while the
/// previous entry was being replicated (group commit).
pub type Batch = Vec<Command>;
