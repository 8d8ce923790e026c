//! Simulated clients and the history they keep. Each client owns a few file names and writes,
//! renames and removes them one operation at a time, sending every request exactly once
//! (session and sequence, retried across leaders); it reads its own names and the other
//! clients' names and checks each answer against the history (linearizability for single-writer
//! registers: a read may see the state after the last operation that ended before it began, or
//! after one that overlapped it). Every acknowledged write is remembered for the final check.

use crate::meta::now_ns;
use crate::store::CAPACITY;
use crate::wire::{self, Msg, Reply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_types::attr::{Credentials, FileKind};
use shoal_types::error::FsError;
use shoal_types::ids::{FileHandle, MetaNodeId, SessionId};
use shoal_types::layout::{Slice, CHUNK_SIZE};
use shoal_types::meta_msg::INLINE_BYTES_MAX;
use shoal_types::ByteBuf;
use shoal_types::meta_msg::{
    ChunkUpdate, Commit, MetaOp, MetaReply, MetaRequest, MetaResponse, NewBlob,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a name holds: nothing, or a file of this length and CRC32C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Absent,
    File { len: u64, crc: u32 },
}

/// An operation on a name: when it was answered (simulated time), the state it leaves.
#[derive(Clone, Debug)]
struct OpRec {
    end: Option<Duration>,
    after: State,
    failed: bool,
}

/// Every client's operations per name; names whose last operation got no answer are dropped
/// from the checks (the outcome is legitimately unknown).
#[derive(Default)]
pub struct History {
    names: BTreeMap<String, Vec<OpRec>>,
    pub uncertain: BTreeSet<String>,
    pub acked: u64,
    pub reads_checked: u64,
    /// Reads that found the name's data unreadable for the moment (tried again).
    pub unavailable: u64,
}

#[derive(Clone, Default)]
pub struct SharedHistory(pub Arc<Mutex<History>>);

impl SharedHistory {
    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.0.lock().expect("history lock")
    }

    fn begin(&self, name: &str, after: State) -> usize {
        let mut h = self.lock();
        let ops = h.names.entry(name.to_string()).or_default();
        ops.push(OpRec {
            end: None,
            after,
            failed: false,
        });
        ops.len() - 1
    }

    fn end(&self, name: &str, i: usize, ok: bool) {
        let mut h = self.lock();
        if let Some(op) = h.names.get_mut(name).and_then(|o| o.get_mut(i)) {
            op.end = Some(turmoil::elapsed());
            op.failed = !ok;
        }
        if ok {
            h.acked += 1;
        }
    }

    fn unknown(&self, name: &str) {
        self.lock().uncertain.insert(name.to_string());
    }

    /// The state every operation so far leaves (the final state of a name).
    pub fn final_states(&self) -> Vec<(String, State)> {
        let h = self.lock();
        h.names
            .iter()
            .filter(|(n, _)| !h.uncertain.contains(*n))
            .map(|(n, ops)| {
                (
                    n.clone(),
                    ops.iter()
                        .rev()
                        .find(|o| !o.failed)
                        .map_or(State::Absent, |o| o.after),
                )
            })
            .collect()
    }

    /// Check a read of `name` that was sent at `start` and saw `seen` (`exact`: the CRC too).
    /// `Err` names the violation.
    pub fn check_read(
        &self,
        name: &str,
        start: Duration,
        seen: State,
        exact: bool,
    ) -> Result<(), String> {
        let mut h = self.lock();
        if h.uncertain.contains(name) {
            return Ok(());
        }
        let ops: Vec<OpRec> = h.names.get(name).cloned().unwrap_or_default();
        let mut before = State::Absent;
        let mut candidates = Vec::new();
        for op in ops.iter().filter(|o| !o.failed) {
            match op.end {
                Some(end) if end < start => before = op.after,
                _ => candidates.push(op.after),
            }
        }
        candidates.push(before);
        let same = |a: &State, b: &State| match (a, b) {
            (State::File { len: l1, crc: c1 }, State::File { len: l2, crc: c2 }) => {
                l1 == l2 && (!exact || c1 == c2)
            }
            (x, y) => x == y,
        };
        h.reads_checked += 1;
        if candidates.iter().any(|c| same(c, &seen)) {
            Ok(())
        } else {
            Err(format!(
                "read of {name} sent at {start:?} saw {seen:?}; possible: {candidates:?}"
            ))
        }
    }
}

/// Requests to the metadata service, following "not the leader" hints.
pub struct MetaClient {
    metas: u64,
    next: u64,
    pub session: SessionId,
    /// Nodes that did not answer, and when: a hint naming one is not followed for a while (as
    /// the real client does).
    unreachable: std::collections::BTreeMap<u64, tokio::time::Instant>,
}

const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

impl MetaClient {
    pub fn new(metas: u64, start: u64) -> MetaClient {
        MetaClient {
            metas,
            next: start % metas + 1,
            session: SessionId(0),
            unreachable: Default::default(),
        }
    }

    fn move_on(&mut self, hint: Option<MetaNodeId>) {
        self.next = match hint {
            Some(h)
                if h.0 != self.next
                    && (1..=self.metas).contains(&h.0)
                    && self
                        .unreachable
                        .get(&h.0)
                        .is_none_or(|at| at.elapsed() >= UNREACHABLE_FOR) =>
            {
                h.0
            }
            _ => self.next % self.metas + 1,
        };
    }

    /// Send the next request to the next node first.
    pub fn rotate(&mut self) {
        self.move_on(None);
    }

    /// Send `op` (with `seq` for exactly-once, 0 for none) until a node gives an answer that is
    /// not "not the leader" or "unavailable", for at most `patience`. `None`: no answer.
    pub async fn call(&mut self, seq: u64, op: MetaOp, patience: Duration) -> Option<MetaResponse> {
        let req = MetaRequest {
            session: self.session,
            seq,
            cred: Credentials::ROOT,
            op,
        };
        let deadline = tokio::time::Instant::now() + patience;
        while tokio::time::Instant::now() < deadline {
            match wire::call(
                &crate::meta::host(self.next),
                &Msg::Meta(req.clone()),
                Duration::from_secs(1),
            )
            .await
            {
                Ok(Reply::Meta(Err(FsError::NotLeader { leader_hint }))) => {
                    self.move_on(leader_hint)
                }
                Ok(Reply::Meta(Err(FsError::Unavailable(_)))) => self.move_on(None),
                Ok(Reply::Meta(r)) => return Some(r),
                _ => {
                    self.unreachable
                        .insert(self.next, tokio::time::Instant::now());
                    self.move_on(None)
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        None
    }
}

/// How long a client keeps retrying one request before calling its outcome unknown.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct SimClient {
    pub id: u64,
    meta: MetaClient,
    seq: u64,
}

impl SimClient {
    pub async fn connect(id: u64, metas: u64) -> Result<SimClient, String> {
        let mut meta = MetaClient::new(metas, id);
        match meta
            .call(
                0,
                MetaOp::OpenSession {
                    client: format!("sim-{id}"),
                },
                PATIENCE,
            )
            .await
        {
            Some(Ok(MetaReply::Session { session, .. })) => meta.session = session,
            other => return Err(format!("client {id}: no session: {other:?}")),
        }
        Ok(SimClient { id, meta, seq: 0 })
    }

    /// A request that changes state, exactly once. `None`: no answer within the patience.
    async fn write(&mut self, op: MetaOp) -> Option<Result<MetaReply, FsError>> {
        self.seq += 1;
        self.meta.call(self.seq, op, PATIENCE).await
    }

    /// A read, first sent to the node after the last one that answered: a node that is not
    /// the leader must refuse it, never answer from its own (possibly stale) state.
    async fn read(&mut self, op: MetaOp) -> Option<Result<MetaReply, FsError>> {
        self.meta.rotate();
        let session = std::mem::replace(&mut self.meta.session, SessionId(0));
        let r = self.meta.call(0, op, PATIENCE).await;
        self.meta.session = session;
        r
    }

    pub async fn lookup(&mut self, name: &str) -> Option<Result<shoal_types::attr::Attr, FsError>> {
        match self
            .read(MetaOp::Lookup {
                parent: FileHandle::ROOT,
                name: name.into(),
            })
            .await?
        {
            Ok(MetaReply::Attr(a)) => Some(Ok(a)),
            Ok(other) => Some(Err(FsError::Protocol(format!("lookup answered {other:?}")))),
            Err(e) => Some(Err(e)),
        }
    }

    /// What `name` holds now, reading its data from the storage servers when `data`.
    pub async fn observe(&mut self, name: &str, data: bool) -> Result<State, String> {
        let attr = match self.lookup(name).await {
            None => return Err(format!("lookup of {name}: no answer")),
            Some(Err(FsError::NotFound)) => return Ok(State::Absent),
            Some(Err(e)) => return Err(format!("lookup of {name}: {e}")),
            Some(Ok(a)) => a,
        };
        if !data {
            return Ok(State::File {
                len: attr.size,
                crc: 0,
            });
        }
        let bytes = self
            .read_file(attr.handle, attr.size)
            .await
            .map_err(|e| format!("read of {name}: {e}"))?;
        Ok(State::File {
            len: bytes.len() as u64,
            crc: crc32c::crc32c(&bytes),
        })
    }

    async fn read_file(&mut self, handle: FileHandle, size: u64) -> Result<Vec<u8>, String> {
        let op = MetaOp::GetLayout {
            handle,
            first_chunk: 0,
            n_chunks: 1,
        };
        let layout = match self.read(op).await.map(|r| r.map(MetaReply::attach_capability)) {
            Some(Ok(MetaReply::Layout(l))) => l,
            other => return Err(format!("layout: {other:?}")),
        };
        let mut buf = vec![0u8; size as usize];
        for (idx, slices) in &layout.chunks {
            for s in slices {
                let Some(blob) = s.blob else { continue };
                let loc = layout
                    .blobs
                    .iter()
                    .find(|b| b.blob == blob)
                    .ok_or(format!("blob {blob} without a location"))?;
                let mut got = loc.inline.as_ref().map(|d| d.to_vec());
                for store in loc.stores.iter().filter(|_| got.is_none()) {
                    if let Ok(Reply::Get(Ok(d))) =
                        wire::call(&store.addr, &Msg::Get { blob }, Duration::from_secs(2)).await
                    {
                        if crc32c::crc32c(&d) == loc.crc {
                            got = Some(d);
                            break;
                        }
                    }
                }
                let d = got.ok_or(format!(
                    "no copy of blob {blob} could be read from {:?}",
                    loc.stores
                ))?;
                let at = idx * CHUNK_SIZE + s.offset_in_chunk;
                let (from, len) = (s.blob_offset as usize, s.len as usize);
                for i in 0..len {
                    let pos = at as usize + i;
                    if pos < buf.len() {
                        buf[pos] = *d
                            .get(from + i)
                            .ok_or(format!("slice past the end of blob {blob}"))?;
                    }
                }
            }
        }
        Ok(buf)
    }

    /// Create (if needed) and write `name` with `data`: intent, puts to the targets, commit.
    async fn write_file(
        &mut self,
        hist: &SharedHistory,
        name: &str,
        data: &[u8],
        existed: bool,
    ) -> Option<bool> {
        let created = (!existed).then(|| {
            (
                hist.begin(
                    name,
                    State::File {
                        len: 0,
                        crc: crc32c::crc32c(&[]),
                    },
                ),
                (),
            )
        });
        let op = MetaOp::Create {
            parent: FileHandle::ROOT,
            name: name.into(),
            kind: FileKind::File,
            mode: 0o644,
            rdev: 0,
            exclusive: false,
        };
        let Some(created_reply) = self.write(op).await else {
            hist.unknown(name);
            return None;
        };
        let attr = match created_reply {
            Ok(MetaReply::Attr(a)) => a,
            _ => {
                if let Some((i, ())) = created {
                    hist.end(name, i, false);
                }
                return Some(false);
            }
        };
        if let Some((i, ())) = created {
            hist.end(name, i, true);
        }
        let len = data.len() as u64;
        let intent = match self
            .write(MetaOp::AllocBlobs {
                handle: attr.handle,
                count: 1,
                bytes: len,
            })
            .await
        {
            Some(Ok(MetaReply::Intent(i))) => i,
            _ => return Some(false),
        };
        let blob = intent.blobs[0];
        let crc = crc32c::crc32c(data);
        // Small files of even length go to the metadata with their commit (`CommitInline`).
        let inline = len <= INLINE_BYTES_MAX && len % 2 == 0;
        let mut stores = Vec::new();
        for t in &intent.targets {
            if stores.len() == 3 || inline {
                break;
            }
            let put = Msg::Put {
                blob,
                crc,
                data: data.to_vec(),
            };
            if let Ok(Reply::Put(Ok(()))) = wire::call(&t.addr, &put, Duration::from_secs(2)).await
            {
                stores.push(t.store);
            }
        }
        if stores.len() < 2 && !inline {
            return Some(false);
        }
        let commit = Commit {
            handle: attr.handle,
            base_version: None,
            chunks: vec![ChunkUpdate {
                idx: 0,
                slices: vec![Slice {
                    blob: Some(blob),
                    blob_offset: 0,
                    offset_in_chunk: 0,
                    len,
                }],
            }],
            size: len,
            mtime: now_ns(),
            blobs: vec![NewBlob {
                blob,
                len,
                crc,
                stores,
            }],
        };
        let i = hist.begin(name, State::File { len, crc });
        let op = if inline {
            MetaOp::CommitInline { commit, grow: false, data: vec![(blob, ByteBuf::from(data.to_vec()))] }
        } else {
            MetaOp::Commit(commit)
        };
        match self.write(op).await {
            None => {
                hist.unknown(name);
                None
            }
            Some(r) => {
                hist.end(name, i, r.is_ok());
                Some(r.is_ok())
            }
        }
    }
}

/// Names client `id` writes.
pub fn names(id: u64) -> Vec<String> {
    (0..6).map(|k| format!("c{id}-f{k}")).collect()
}

/// The workload of client `id` until `until` (simulated time); violations go to `violations`.
pub async fn workload(
    id: u64,
    metas: u64,
    clients: u64,
    seed: u64,
    until: Duration,
    hist: SharedHistory,
    observer: crate::observe::Observer,
) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ (id << 32) ^ 0x5eed);
    let mut c = SimClient::connect(id, metas).await?;
    let mine = names(id);
    let mut model: BTreeMap<String, State> =
        mine.iter().map(|n| (n.clone(), State::Absent)).collect();
    while turmoil::elapsed() < until && !observer.quiet() {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..60))).await;
        let name = mine[rng.gen_range(0..mine.len())].clone();
        if hist.0.lock().expect("history").uncertain.contains(&name) {
            continue;
        }
        let exists = model[&name] != State::Absent;
        match rng.gen_range(0..10) {
            0..=3 => {
                let len = rng.gen_range(1..(96 << 10).min(CAPACITY as usize));
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                if c.write_file(&hist, &name, &data, exists).await == Some(true) {
                    model.insert(
                        name.clone(),
                        State::File {
                            len: len as u64,
                            crc: crc32c::crc32c(&data),
                        },
                    );
                } else if !exists {
                    // The create may have happened without the commit.
                    match c.observe(&name, false).await {
                        Ok(State::Absent) => {}
                        Ok(_) => {
                            model.insert(
                                name.clone(),
                                State::File {
                                    len: 0,
                                    crc: crc32c::crc32c(&[]),
                                },
                            );
                        }
                        Err(_) => hist.unknown(&name),
                    }
                }
            }
            4 if exists => {
                let to = mine[rng.gen_range(0..mine.len())].clone();
                if to == name || hist.0.lock().expect("history").uncertain.contains(&to) {
                    continue;
                }
                let moved = model[&name];
                let (i, j) = (hist.begin(&name, State::Absent), hist.begin(&to, moved));
                let op = MetaOp::Rename {
                    parent: FileHandle::ROOT,
                    name: name.clone(),
                    new_parent: FileHandle::ROOT,
                    new_name: to.clone(),
                    no_replace: false,
                };
                match c.write(op).await {
                    None => {
                        hist.unknown(&name);
                        hist.unknown(&to);
                    }
                    Some(r) => {
                        hist.end(&name, i, r.is_ok());
                        hist.end(&to, j, r.is_ok());
                        if let Err(e) = r {
                            observer.violation(format!(
                                "client {id}: rename of {name} (which exists) failed: {e}"
                            ));
                        } else {
                            model.insert(name.clone(), State::Absent);
                            model.insert(to.clone(), moved);
                        }
                    }
                }
            }
            5 if exists => {
                let i = hist.begin(&name, State::Absent);
                match c
                    .write(MetaOp::Unlink {
                        parent: FileHandle::ROOT,
                        name: name.clone(),
                    })
                    .await
                {
                    None => hist.unknown(&name),
                    Some(r) => {
                        hist.end(&name, i, r.is_ok());
                        match r {
                            Ok(_) => {
                                model.insert(name.clone(), State::Absent);
                            }
                            Err(e) => observer.violation(format!(
                                "client {id}: unlink of {name} (which exists) failed: {e}"
                            )),
                        }
                    }
                }
            }
            _ => {
                // A read: of one of mine with its data, or of another client's name.
                let other = rng.gen_range(1..=clients);
                let (target, data) = if other == id {
                    (name.clone(), true)
                } else {
                    (names(other)[rng.gen_range(0..6)].clone(), false)
                };
                // A read that finds no copy to read (all on servers down or being checked) is
                // tried again: unavailable during a fault is allowed, a wrong answer is not. The
                // final check reads everything back once the cluster has healed.
                for _ in 0..5 {
                    let start = turmoil::elapsed();
                    match c.observe(&target, data).await {
                        Ok(seen) => {
                            if let Err(v) = hist.check_read(&target, start, seen, data) {
                                observer.violation(format!("client {id}: {v}"));
                            }
                            break;
                        }
                        Err(_) => {
                            hist.lock().unavailable += 1;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
