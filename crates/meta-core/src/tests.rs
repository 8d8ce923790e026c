use crate::kv::{MemKv, Table};
use crate::*;
use shoal_types::layout::Slice;
use shoal_types::meta_msg::*;
use shoal_types::*;

/// A tiny driver: one state, one session, a clock that advances 1 ms per command.
struct T {
    kv: MemKv,
    now: i64,
    session: SessionId,
    seq: u64,
    cred: Credentials,
}

impl T {
    fn new() -> T {
        let mut t = T { kv: MemKv::default(), now: 1_000_000_000, session: SessionId(0), seq: 0, cred: Credentials::ROOT };
        t.cmd(CommandKind::Bootstrap(Params::default())).unwrap();
        match t.cmd(CommandKind::Request(t.req(MetaOp::OpenSession { client: "test".into() }))).unwrap() {
            MetaReply::Session { session, .. } => t.session = session,
            other => panic!("{other:?}"),
        }
        t
    }
    fn cmd(&mut self, kind: CommandKind) -> MetaResponse {
        self.now += 1_000_000;
        apply(&mut self.kv, &Command { now: self.now, kind })
    }
    fn req(&self, op: MetaOp) -> MetaRequest {
        MetaRequest { session: self.session, seq: self.seq, cred: self.cred.clone(), op }
    }
    /// A mutation with a fresh sequence number.
    fn op(&mut self, op: MetaOp) -> MetaResponse {
        self.seq += 1;
        let r = self.req(op);
        self.cmd(CommandKind::Request(r))
    }
    /// Send the same sequence number again (a retry).
    fn retry(&mut self, op: MetaOp) -> MetaResponse {
        let r = self.req(op);
        self.cmd(CommandKind::Request(r))
    }
    fn read(&self, op: MetaOp) -> MetaResponse {
        read(&self.kv, &self.req(op), self.now)
    }
    fn must_create(&mut self, parent: FileHandle, name: &str) -> Attr {
        match self.op(MetaOp::Create { parent, name: name.into(), kind: FileKind::File, mode: 0o644, rdev: 0, exclusive: true }) {
            Ok(MetaReply::Attr(a)) => a,
            other => panic!("create {name}: {other:?}"),
        }
    }
    fn must_mkdir(&mut self, parent: FileHandle, name: &str) -> Attr {
        match self.op(MetaOp::Mkdir { parent, name: name.into(), mode: 0o755 }) {
            Ok(MetaReply::Attr(a)) => a,
            other => panic!("mkdir {name}: {other:?}"),
        }
    }
    fn lookup(&self, parent: FileHandle, name: &str) -> FsResult<Attr> {
        match self.read(MetaOp::Lookup { parent, name: name.into() })? {
            MetaReply::Attr(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }
    fn list(&self, dir: FileHandle) -> Vec<String> {
        let mut names = Vec::new();
        let mut cookie = 0;
        loop {
            let MetaReply::Dir { entries, eof } = self.read(MetaOp::Readdir { dir, cookie, limit: 2 }).unwrap() else { panic!() };
            for e in entries {
                cookie = e.cookie;
                names.push(e.name);
            }
            if eof {
                return names;
            }
        }
    }
    fn must_add_stores(&mut self, n: u64) {
        for i in 1..=n {
            self.cmd(CommandKind::Request(self.req(MetaOp::RegisterStore {
                store: StoreId(i),
                addr: format!("127.0.0.1:{}", 7000 + i),
                capacity: 1 << 30,
                used: 0,
            })))
            .unwrap();
        }
    }
    /// A new 10-byte file `name` in `dir` whose one blob is committed as held by `stores`.
    fn must_commit_on(&mut self, dir: FileHandle, name: &str, stores: Vec<StoreId>) -> BlobId {
        let f = self.must_create(dir, name);
        self.must_write_to(f.handle, 10, Some(stores))
    }
    fn must_write(&mut self, file: FileHandle, len: u64) -> BlobId {
        self.must_write_to(file, len, None)
    }
    /// Commit one new blob of `len` bytes as `file`'s content, held by `stores` (by default the
    /// intent's first three targets).
    fn must_write_to(&mut self, file: FileHandle, len: u64, stores: Option<Vec<StoreId>>) -> BlobId {
        let Ok(MetaReply::Intent(intent)) = self.op(MetaOp::AllocBlobs { handle: file, count: 1, bytes: len }) else { panic!() };
        let blob = intent.blobs[0];
        let stores = stores.unwrap_or_else(|| intent.targets.iter().take(3).map(|t| t.store).collect());
        self.op(MetaOp::Commit(one_blob_commit(file, blob, len, stores, self.now))).unwrap();
        blob
    }
}

/// A commit making `blob` (`len` bytes, held by `stores`) the whole content of `file`.
/// Lay enough 10-byte slices, one commit each, on chunk 0 of `file` to queue it for the
/// compactor.
fn lay_small_slices(t: &mut T, file: FileHandle) {
    for i in 0..crate::COMPACT_SLICES_MIN as u64 {
        let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: file, count: 1, bytes: 10 }) else { panic!() };
        let blob = intent.blobs[0];
        t.op(MetaOp::Commit(Commit {
            handle: file,
            base_version: None,
            chunks: vec![ChunkUpdate { idx: 0, slices: vec![Slice { blob: Some(blob), blob_offset: 0, offset_in_chunk: i * 10, len: 10 }] }],
            size: (i + 1) * 10,
            mtime: 0,
            blobs: vec![NewBlob { blob, len: 10, crc: 0, stores: vec![StoreId(1), StoreId(2), StoreId(3)] }],
        }))
        .unwrap();
    }
}

fn one_blob_commit(file: FileHandle, blob: BlobId, len: u64, stores: Vec<StoreId>, mtime: i64) -> Commit {
    Commit {
        handle: file,
        base_version: None,
        chunks: vec![ChunkUpdate { idx: 0, slices: vec![Slice { blob: Some(blob), blob_offset: 0, offset_in_chunk: 0, len }] }],
        size: len,
        mtime,
        blobs: vec![NewBlob { blob, len, crc: 0, stores }],
    }
}

const ROOT: FileHandle = FileHandle::ROOT;

#[test]
fn create_lookup_and_list() {
    let mut t = T::new();
    let a = t.must_create(ROOT, "a");
    let d = t.must_mkdir(ROOT, "d");
    assert_eq!(t.lookup(ROOT, "a").unwrap().handle, a.handle);
    assert_eq!(t.lookup(ROOT, "d").unwrap().kind, FileKind::Dir);
    assert_eq!(t.lookup(ROOT, "nope"), Err(FsError::NotFound));
    assert_eq!(t.list(ROOT), vec!["a", "d"]);
    assert_eq!(t.lookup(d.handle, "..").unwrap().handle, ROOT);
    let root = t.lookup(ROOT, ".").unwrap();
    assert_eq!(root.nlink, 3);
}

#[test]
fn retried_exclusive_create_and_unlink_get_their_first_answer() {
    let mut t = T::new();
    let op = MetaOp::Create { parent: ROOT, name: "x".into(), kind: FileKind::File, mode: 0o644, rdev: 0, exclusive: true };
    let first = t.op(op.clone());
    assert!(matches!(first, Ok(MetaReply::Attr(_))));
    assert_eq!(t.retry(op.clone()), first, "a retry returns the first success, not 'exists'");
    // A new request (new sequence number) does see "exists".
    assert_eq!(t.op(op), Err(FsError::Exists));
    let unlink = MetaOp::Unlink { parent: ROOT, name: "x".into() };
    assert_eq!(t.op(unlink.clone()), Ok(MetaReply::Ok));
    assert_eq!(t.retry(unlink), Ok(MetaReply::Ok), "a retried unlink does not say 'not found'");
}

#[test]
fn expired_session_is_refused_not_reexecuted() {
    let mut t = T::new();
    t.must_create(ROOT, "a");
    t.now += Params::default().session_lease_ns + 1;
    t.cmd(CommandKind::Tick).unwrap();
    let r = t.retry(MetaOp::Create { parent: ROOT, name: "b".into(), kind: FileKind::File, mode: 0o644, rdev: 0, exclusive: true });
    assert_eq!(r, Err(FsError::SessionExpired));
    assert_eq!(t.kv.len(Table::Replies), 0, "the reply table of an expired session is dropped");
}

#[test]
fn rename_rules() {
    let mut t = T::new();
    let a = t.must_mkdir(ROOT, "a");
    let b = t.must_mkdir(a.handle, "b");
    let r = t.op(MetaOp::Rename { parent: ROOT, name: "a".into(), new_parent: b.handle, new_name: "x".into(), no_replace: false });
    assert!(matches!(r, Err(FsError::Invalid(_))), "no directory into its own subtree: {r:?}");
    // Over an existing file: atomic replace.
    let f = t.must_create(ROOT, "f");
    let g = t.must_create(ROOT, "g");
    t.op(MetaOp::Rename { parent: ROOT, name: "f".into(), new_parent: ROOT, new_name: "g".into(), no_replace: false }).unwrap();
    assert_eq!(t.lookup(ROOT, "g").unwrap().handle, f.handle);
    assert_eq!(t.read(MetaOp::GetAttr { handle: g.handle }), Err(FsError::Stale));
    // A directory over a non-empty directory is refused; over an empty one it works.
    let c = t.must_mkdir(ROOT, "c");
    t.must_create(c.handle, "inside");
    let r = t.op(MetaOp::Rename { parent: a.handle, name: "b".into(), new_parent: ROOT, new_name: "c".into(), no_replace: false });
    assert_eq!(r, Err(FsError::NotEmpty));
    t.must_mkdir(ROOT, "e");
    t.op(MetaOp::Rename { parent: a.handle, name: "b".into(), new_parent: ROOT, new_name: "e".into(), no_replace: false }).unwrap();
    assert_eq!(t.lookup(ROOT, "e").unwrap().handle, b.handle);
    assert_eq!(t.lookup(b.handle, "..").unwrap().handle, ROOT);
    assert_eq!(t.lookup(a.handle, ".").unwrap().nlink, 2);
}

#[test]
fn unlinked_open_file_lives_until_release() {
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "f");
    t.op(MetaOp::Open { handle: f.handle }).unwrap();
    t.must_write(f.handle, 100);
    t.op(MetaOp::Unlink { parent: ROOT, name: "f".into() }).unwrap();
    assert_eq!(t.lookup(ROOT, "f"), Err(FsError::NotFound));
    let attr = t.read(MetaOp::GetAttr { handle: f.handle }).unwrap();
    assert!(matches!(attr, MetaReply::Attr(Attr { nlink: 0, size: 100, .. })));
    t.op(MetaOp::Release { handle: f.handle }).unwrap();
    assert_eq!(t.read(MetaOp::GetAttr { handle: f.handle }), Err(FsError::Stale));
    assert_eq!(t.kv.len(Table::GcOrders), 3, "its blob is ordered deleted on all three holders");
}

#[test]
fn overwrite_frees_the_old_blob_and_commit_needs_a_live_intent() {
    let mut t = T::new();
    t.must_add_stores(4);
    let f = t.must_create(ROOT, "f");
    let b1 = t.must_write(f.handle, 100);
    let b2 = t.must_write(f.handle, 100);
    assert_ne!(b1, b2);
    assert_eq!(t.kv.len(Table::Blobs), 1);
    assert_eq!(t.kv.len(Table::GcOrders), 3);
    // An intent that expired cannot be committed.
    let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 1, bytes: 10 }) else { panic!() };
    t.now += Params::default().intent_lease_ns + 1;
    t.cmd(CommandKind::Tick).unwrap();
    let Ok(MetaReply::Session { session, .. }) = t.cmd(CommandKind::Request(t.req(MetaOp::OpenSession { client: "again".into() }))) else { panic!() };
    t.session = session;
    let r = t.op(MetaOp::Commit(Commit {
        handle: f.handle,
        base_version: None,
        chunks: vec![],
        size: 10,
        mtime: 0,
        blobs: vec![NewBlob { blob: intent.blobs[0], len: 10, crc: 0, stores: vec![StoreId(1), StoreId(2)] }],
    }));
    assert_eq!(r, Err(FsError::IntentExpired));
}

#[test]
fn truncate_then_extend_reads_zeros() {
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "f");
    t.must_write(f.handle, 100);
    t.op(MetaOp::SetAttr { handle: f.handle, set: SetAttr { size: Some(10), ..Default::default() } }).unwrap();
    t.op(MetaOp::SetAttr { handle: f.handle, set: SetAttr { size: Some(100), ..Default::default() } }).unwrap();
    let MetaReply::Layout(layout) = t.read(MetaOp::GetLayout { handle: f.handle, first_chunk: 0, n_chunks: 1 }).unwrap() else { panic!() };
    let extents = shoal_types::layout::resolve_chunk(&layout.chunks[0].1, 100);
    assert_eq!(extents.len(), 2);
    assert_eq!((extents[0].len, extents[0].blob.is_some()), (10, true));
    assert_eq!((extents[1].len, extents[1].blob.is_some()), (90, false));
}

#[test]
fn readdir_cookies_survive_removals() {
    let mut t = T::new();
    for i in 0..10 {
        t.must_create(ROOT, &format!("f{i}"));
    }
    // Read two pages, then remove entries on both sides of the cursor, then finish.
    let MetaReply::Dir { entries, .. } = t.read(MetaOp::Readdir { dir: ROOT, cookie: 0, limit: 4 }).unwrap() else { panic!() };
    let cookie = entries.last().unwrap().cookie;
    t.op(MetaOp::Unlink { parent: ROOT, name: "f1".into() }).unwrap();
    t.op(MetaOp::Unlink { parent: ROOT, name: "f7".into() }).unwrap();
    let MetaReply::Dir { entries: rest, eof } = t.read(MetaOp::Readdir { dir: ROOT, cookie, limit: 100 }).unwrap() else { panic!() };
    assert!(eof);
    let names: Vec<_> = entries.iter().chain(rest.iter()).map(|e| e.name.clone()).collect();
    assert_eq!(names, vec!["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f8", "f9"]);
}

#[test]
fn readdir_plus_pages_give_each_name_with_what_a_lookup_gives() {
    let mut t = T::new();
    let d = t.must_mkdir(ROOT, "d");
    for i in 0..7 {
        t.must_create(d.handle, &format!("f{i}"));
    }
    t.must_mkdir(d.handle, "sub");
    let mut seen = Vec::new();
    let mut cookie = 0;
    loop {
        let MetaReply::DirPlus { entries, eof } = t.read(MetaOp::ReaddirPlus { dir: d.handle, cookie, limit: 3 }).unwrap() else { panic!() };
        assert!(entries.len() <= 3);
        for e in entries {
            assert_eq!(t.lookup(d.handle, &e.name).unwrap(), e.attr, "{}", e.name);
            cookie = e.cookie;
            seen.push(e.name);
        }
        if eof {
            break;
        }
    }
    assert_eq!(seen, t.list(d.handle));
    assert_eq!(seen.len(), 8);
    // It needs read permission on the directory, as a plain listing does, and search
    // permission, as a lookup does.
    t.op(MetaOp::SetAttr { handle: d.handle, set: SetAttr { mode: Some(0o711), ..Default::default() } }).unwrap();
    t.cred = Credentials { uid: 2000, gid: 2000, groups: vec![] };
    assert_eq!(t.read(MetaOp::ReaddirPlus { dir: d.handle, cookie: 0, limit: 3 }), Err(FsError::PermissionDenied));
    assert!(t.lookup(d.handle, "f1").is_ok());
    t.cred = Credentials::ROOT;
    t.op(MetaOp::SetAttr { handle: d.handle, set: SetAttr { mode: Some(0o744), ..Default::default() } }).unwrap();
    t.cred = Credentials { uid: 2000, gid: 2000, groups: vec![] };
    assert!(t.read(MetaOp::Readdir { dir: d.handle, cookie: 0, limit: 3 }).is_ok());
    assert_eq!(t.read(MetaOp::ReaddirPlus { dir: d.handle, cookie: 0, limit: 3 }), Err(FsError::PermissionDenied));
    assert_eq!(t.lookup(d.handle, "f1"), Err(FsError::PermissionDenied));
}

#[test]
fn permissions_are_enforced_from_credentials() {
    let mut t = T::new();
    let d = t.must_mkdir(ROOT, "home");
    t.op(MetaOp::SetAttr { handle: d.handle, set: SetAttr { uid: Some(1000), gid: Some(1000), mode: Some(0o755), ..Default::default() } }).unwrap();
    t.cred = Credentials { uid: 2000, gid: 2000, groups: vec![] };
    let r = t.op(MetaOp::Create { parent: d.handle, name: "x".into(), kind: FileKind::File, mode: 0o644, rdev: 0, exclusive: true });
    assert_eq!(r, Err(FsError::PermissionDenied));
    t.cred = Credentials { uid: 1000, gid: 1000, groups: vec![] };
    t.must_create(d.handle, "x");
}

#[test]
fn full_cluster_says_no_space() {
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "f");
    let r = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 1, bytes: 2 << 30 });
    assert_eq!(r, Err(FsError::NoSpace));
}

#[test]
fn replicas_apply_identically() {
    // Two replicas applying the same log reach byte-identical state.
    let mut a = T::new();
    a.must_add_stores(4);
    let d = a.must_mkdir(ROOT, "d");
    for i in 0..20 {
        let f = a.must_create(d.handle, &format!("f{i}"));
        a.must_write(f.handle, 10 + i);
    }
    let log_len = a.now;
    let _ = log_len;
    let mut b = T::new();
    b.must_add_stores(4);
    let d2 = b.must_mkdir(ROOT, "d");
    for i in 0..20 {
        let f = b.must_create(d2.handle, &format!("f{i}"));
        b.must_write(f.handle, 10 + i);
    }
    assert_eq!(a.kv, b.kv);
}

#[test]
fn policy_is_inherited_and_fixed_once_data_exists() {
    let mut t = T::new();
    t.must_add_stores(4);
    let d = t.must_mkdir(ROOT, "one-copy");
    let single = Policy::Replicas { copies: 1, write_quorum: 1 };
    t.op(MetaOp::SetPolicy { handle: d.handle, policy: single }).unwrap();
    let f = t.must_create(d.handle, "f");
    let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 1, bytes: 10 }) else { panic!() };
    assert_eq!(intent.policy, single, "a file takes its directory's policy");
    let g = t.must_create(ROOT, "g");
    t.must_write(g.handle, 10);
    let r = t.op(MetaOp::SetPolicy { handle: g.handle, policy: single });
    assert!(matches!(r, Err(FsError::Invalid(_))), "{r:?}");
    let bad = t.op(MetaOp::SetPolicy { handle: d.handle, policy: Policy::Replicas { copies: 2, write_quorum: 3 } });
    assert!(matches!(bad, Err(FsError::Invalid(_))));
}

#[test]
fn an_abandoned_blob_is_deleted_at_once_and_only_its_writer_may_abandon_it() {
    let mut t = T::new();
    t.must_add_stores(4);
    let f = t.must_create(ROOT, "f");
    let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 2, bytes: 10 }) else { panic!() };
    let (mine, kept) = (intent.blobs[0], intent.blobs[1]);
    // Another session cannot end this writer's intent.
    let writer = t.session;
    let Ok(MetaReply::Session { session: other, .. }) = t.op(MetaOp::OpenSession { client: "other".into() }) else { panic!() };
    t.session = other;
    t.op(MetaOp::AbandonBlobs { blobs: vec![mine] }).unwrap();
    assert_eq!(t.kv.len(Table::GcOrders), 0);
    t.session = writer;
    t.op(MetaOp::AbandonBlobs { blobs: vec![mine] }).unwrap();
    // Its copies may be anywhere: every server is told to delete it; the other blob stays.
    assert_eq!(t.kv.len(Table::GcOrders), 4);
    assert!(crate::kv::KvRead::get(&t.kv, Table::Intents, &crate::kv::key::u64(mine.0)).is_none());
    assert!(crate::kv::KvRead::get(&t.kv, Table::Intents, &crate::kv::key::u64(kept.0)).is_some());
    // A commit naming it is refused.
    let r = t.op(MetaOp::Commit(one_blob_commit(f.handle, mine, 10, vec![StoreId(1), StoreId(2), StoreId(3)], 0)));
    assert_eq!(r, Err(FsError::IntentExpired));
}

#[test]
fn a_deleted_or_truncated_file_leaves_nothing_for_the_compactor() {
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "f");
    let g = t.must_create(ROOT, "g");
    lay_small_slices(&mut t, f.handle);
    lay_small_slices(&mut t, g.handle);
    assert_eq!(t.kv.len(Table::Fragmented), 2);
    t.op(MetaOp::Unlink { parent: ROOT, name: "f".into() }).unwrap();
    t.op(MetaOp::SetAttr { handle: g.handle, set: SetAttr { size: Some(0), ..Default::default() } }).unwrap();
    assert_eq!(t.kv.len(Table::Fragmented), 0, "no work is listed for chunks that are gone");
}

#[test]
fn fragmented_chunks_are_queued_and_compaction_swaps_only_an_unchanged_chunk() {
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "f");
    lay_small_slices(&mut t, f.handle);
    let MetaReply::Fragmented(queued) = t.read(MetaOp::FragmentedChunks { limit: 10 }).unwrap() else { panic!() };
    assert_eq!(queued, vec![], "a chunk just written is not compacted yet");
    t.now += crate::COMPACT_QUIET_NS;
    let MetaReply::Fragmented(queued) = t.read(MetaOp::FragmentedChunks { limit: 10 }).unwrap() else { panic!() };
    assert_eq!(queued, vec![(f.handle, 0)], "a quiet one is");
    t.cred = Credentials { uid: 1000, gid: 1000, groups: vec![] };
    assert_eq!(t.read(MetaOp::FragmentedChunks { limit: 10 }), Err(FsError::NotPermitted), "the work list is the admin's");
    t.cred = Credentials::ROOT;
    let MetaReply::Layout(layout) = t.read(MetaOp::GetLayout { handle: f.handle, first_chunk: 0, n_chunks: 1 }).unwrap() else { panic!() };
    let replaces = layout.chunks[0].1.clone();
    let compact = |t: &mut T, replaces: Vec<Slice>| {
        let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 1, bytes: 160 }) else { panic!() };
        let blob = NewBlob { blob: intent.blobs[0], len: 160, crc: 0, stores: vec![StoreId(1), StoreId(2), StoreId(3)] };
        t.op(MetaOp::CompactChunk { handle: f.handle, idx: 0, replaces, blob })
    };
    // A stale view is refused and its blob becomes garbage at once.
    let mut stale = replaces.clone();
    stale.pop();
    assert!(matches!(compact(&mut t, stale), Err(FsError::VersionConflict { .. })));
    let gc_before = t.kv.len(Table::GcOrders);
    assert_eq!(gc_before, 3);
    let version = t.read(MetaOp::GetAttr { handle: f.handle }).unwrap();
    compact(&mut t, replaces).unwrap();
    let MetaReply::Layout(layout) = t.read(MetaOp::GetLayout { handle: f.handle, first_chunk: 0, n_chunks: 1 }).unwrap() else { panic!() };
    assert_eq!(layout.chunks[0].1.len(), 1, "one slice after compaction");
    assert_eq!(t.read(MetaOp::GetAttr { handle: f.handle }).unwrap(), version, "same bytes, same version");
    assert_eq!(t.kv.len(Table::Blobs), 1, "the sixteen small blobs are freed");
    assert_eq!(t.kv.len(Table::Fragmented), 0);
}

#[test]
fn extended_attributes_follow_permissions_and_die_with_the_inode() {
    let mut t = T::new();
    let f = t.must_create(ROOT, "f");
    let set = |name: &str, flags| MetaOp::SetXattr { handle: f.handle, name: name.into(), value: b"v".to_vec(), flags };
    t.op(set("user.a", 0)).unwrap();
    assert_eq!(t.op(set("user.a", 1)), Err(FsError::Exists));
    assert_eq!(t.op(set("user.b", 2)), Err(FsError::NoAttribute));
    t.cred = Credentials { uid: 1000, gid: 1000, groups: vec![] };
    assert_eq!(t.op(set("user.c", 0)), Err(FsError::PermissionDenied), "0644 root file: others cannot write");
    assert_eq!(t.op(set("trusted.x", 0)), Err(FsError::NotPermitted));
    assert_eq!(t.read(MetaOp::GetXattr { handle: f.handle, name: "user.a".into() }), Ok(MetaReply::XattrValue(b"v".to_vec())));
    t.cred = Credentials::ROOT;
    t.op(MetaOp::Unlink { parent: ROOT, name: "f".into() }).unwrap();
    assert_eq!(t.kv.len(Table::Xattrs), 0);
}

#[test]
fn blobs_an_open_file_drops_are_held_until_its_last_close() {
    let mut t = T::new();
    t.must_add_stores(4);
    let f = t.must_create(ROOT, "f");
    let b1 = t.must_write(f.handle, 100);
    t.op(MetaOp::Open { handle: f.handle }).unwrap();
    t.op(MetaOp::Open { handle: f.handle }).unwrap();
    t.must_write(f.handle, 100);
    t.op(MetaOp::SetAttr { handle: f.handle, set: SetAttr { size: Some(0), ..Default::default() } }).unwrap();
    assert_eq!(t.kv.len(Table::GcOrders), 0, "a reader may still read the versions it opened");
    assert_eq!(t.kv.len(Table::HeldBlobs), 2);
    assert!(crate::kv::KvRead::get(&t.kv, Table::Blobs, &crate::kv::key::u64(b1.0)).is_some());
    t.op(MetaOp::Release { handle: f.handle }).unwrap();
    assert_eq!(t.kv.len(Table::GcOrders), 0, "still open once");
    t.op(MetaOp::Release { handle: f.handle }).unwrap();
    assert_eq!(t.kv.len(Table::HeldBlobs), 0);
    assert_eq!(t.kv.len(Table::GcOrders), 6, "both blobs' three copies are ordered deleted at the last close");
    assert_eq!(t.kv.len(Table::Blobs), 0);
}

#[test]
fn create_open_creates_and_opens_once_even_when_retried() {
    let mut t = T::new();
    let op = MetaOp::CreateOpen { parent: ROOT, name: "x".into(), mode: 0o600, exclusive: true };
    let first = t.op(op.clone()).unwrap();
    assert_eq!(t.retry(op).unwrap(), first, "a retry gets the first answer, not EEXIST");
    assert_eq!(t.kv.len(Table::Opens), 1);
    let MetaReply::Attr(a) = first else { panic!() };
    t.op(MetaOp::Unlink { parent: ROOT, name: "x".into() }).unwrap();
    assert!(matches!(t.read(MetaOp::GetAttr { handle: a.handle }), Ok(MetaReply::Attr(_))), "open: kept as an orphan");
    t.op(MetaOp::Release { handle: a.handle }).unwrap();
    assert_eq!(t.read(MetaOp::GetAttr { handle: a.handle }), Err(FsError::Stale));
}

#[test]
fn a_corrupt_copy_is_replaced_before_it_is_deleted_and_a_corrupt_last_copy_is_kept() {
    let mut t = T::new();
    t.must_add_stores(4);
    let f = t.must_create(ROOT, "f");
    let blob = t.must_write(f.handle, 100);
    let info = |t: &T| crate::apply::load::<shoal_types::layout::BlobInfo>(&t.kv, Table::Blobs, &crate::kv::key::u64(blob.0)).unwrap();
    let holders = info(&t).stores;
    assert_eq!(holders.len(), 3);
    let (bad, spare) = (holders[0], (1..=4).map(StoreId).find(|s| !holders.contains(s)).unwrap());
    let report = |t: &mut T, store: StoreId, blob: BlobId| t.cmd(CommandKind::Request(t.req(MetaOp::ReportCorrupt { store, blobs: vec![blob] })));
    let heartbeat = |t: &mut T, store: StoreId, repaired: Vec<BlobId>| match t
        .cmd(CommandKind::Request(t.req(MetaOp::StoreHeartbeat(StoreHeartbeat {
            store,
            addr: format!("127.0.0.1:{}", 7000 + store.0),
            capacity: 1 << 30,
            used: 0,
            deleted: vec![],
            repaired,
        }))))
        .unwrap()
    {
        MetaReply::StoreOrders(o) => o,
        other => panic!("{other:?}"),
    };

    assert_eq!(report(&mut t, bad, blob), Ok(MetaReply::Unrepairable(vec![])));
    assert!(!info(&t).stores.contains(&bad), "reads and repairs avoid the corrupt copy");
    let MetaReply::Status(s) = t.read(MetaOp::Status).unwrap() else { panic!() };
    assert_eq!((s.blobs_under_replicated, s.blobs_awaiting_gc, s.blobs_damaged), (1, 0, 0), "queued; the copy is not deleted yet");
    // The server with the bad copy is not asked to repair (it would think it has the blob).
    let o = heartbeat(&mut t, bad, vec![]);
    assert!(o.repair.is_empty() && o.delete.is_empty(), "{o:?}");
    let o = heartbeat(&mut t, spare, vec![]);
    assert_eq!(o.repair.len(), 1);
    assert!(o.repair[0].sources.iter().all(|s| s.store != bad));
    // Once rebuilt, the corrupt copy is ordered deleted.
    heartbeat(&mut t, spare, vec![blob]);
    let o = heartbeat(&mut t, bad, vec![]);
    assert_eq!(o.delete, vec![blob]);
    let MetaReply::Status(s) = t.read(MetaOp::Status).unwrap() else { panic!() };
    assert_eq!((s.blobs_under_replicated, s.blobs_damaged), (0, 0));

    // A blob with one copy: a corrupt copy is its last, and stays.
    let d = t.must_mkdir(ROOT, "one");
    t.op(MetaOp::SetPolicy { handle: d.handle, policy: Policy::Replicas { copies: 1, write_quorum: 1 } }).unwrap();
    let g = t.must_create(d.handle, "g");
    let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: g.handle, count: 1, bytes: 100 }) else { panic!() };
    let (single, only) = (intent.blobs[0], vec![intent.targets[0].store]);
    t.op(MetaOp::Commit(Commit {
        handle: g.handle,
        base_version: None,
        chunks: vec![ChunkUpdate { idx: 0, slices: vec![Slice { blob: Some(single), blob_offset: 0, offset_in_chunk: 0, len: 100 }] }],
        size: 100,
        mtime: t.now,
        blobs: vec![NewBlob { blob: single, len: 100, crc: 0, stores: only.clone() }],
    }))
    .unwrap();
    assert_eq!(report(&mut t, only[0], single), Ok(MetaReply::Unrepairable(vec![single])));
    let MetaReply::Status(s) = t.read(MetaOp::Status).unwrap() else { panic!() };
    assert_eq!((s.blobs_damaged, s.blobs_under_replicated), (1, 0));
    let o = heartbeat(&mut t, only[0], vec![]);
    assert!(!o.delete.contains(&single), "the last copy is never deleted while the file needs it");
    // Deleting the file deletes it and the record.
    t.op(MetaOp::Unlink { parent: d.handle, name: "g".into() }).unwrap();
    let MetaReply::Status(s) = t.read(MetaOp::Status).unwrap() else { panic!() };
    assert_eq!(s.blobs_damaged, 0);
}

#[test]
fn a_returning_storage_server_is_fenced_until_its_blobs_are_checked() {
    let mut t = T::new();
    t.must_add_stores(4);
    let f = t.must_create(ROOT, "f");
    let kept = t.must_write(f.handle, 100);
    let g = t.must_create(ROOT, "g");
    let lost = t.must_write(g.handle, 100);
    let holders = |t: &T, b: BlobId| crate::apply::load::<shoal_types::layout::BlobInfo>(&t.kv, Table::Blobs, &crate::kv::key::u64(b.0)).unwrap().stores;
    // A server holding both comes back (a restart registers again).
    let back = *holders(&t, kept).iter().find(|s| holders(&t, lost).contains(s)).unwrap();
    // A writer is putting a blob it was placed on before it went away.
    let Ok(MetaReply::Intent(in_flight)) = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 1, bytes: 10 }) else { panic!() };
    t.cmd(CommandKind::Request(t.req(MetaOp::RegisterStore { store: back, addr: "127.0.0.1:7999".into(), capacity: 1 << 30, used: 0 }))).unwrap();
    let stores_status = |t: &T| {
        let MetaReply::Status(s) = t.read(MetaOp::Status).unwrap() else { panic!() };
        s.stores.into_iter().find(|s| s.id == back).unwrap()
    };
    let st = stores_status(&t);
    assert!(!st.alive && st.checking, "{st:?}");
    // Fenced: not a place to read from, write to, or repair onto.
    let MetaReply::Layout(layout) = t.read(MetaOp::GetLayout { handle: f.handle, first_chunk: 0, n_chunks: 1 }).unwrap() else { panic!() };
    assert!(layout.blobs[0].stores.iter().all(|s| s.store != back), "{layout:?}");
    let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 1, bytes: 10 }) else { panic!() };
    assert!(intent.targets.iter().all(|s| s.store != back));
    let hb = StoreHeartbeat { store: back, addr: "127.0.0.1:7999".into(), capacity: 1 << 30, used: 0, deleted: vec![], repaired: vec![] };
    let heartbeat = |t: &mut T| match t.cmd(CommandKind::Request(t.req(MetaOp::StoreHeartbeat(hb.clone())))).unwrap() {
        MetaReply::StoreOrders(o) => o,
        other => panic!("{other:?}"),
    };
    let o = heartbeat(&mut t);
    assert_eq!(o.inventory_from, Some(0));
    assert!(o.repair.is_empty());
    assert!(!stores_status(&t).alive, "a heartbeat alone does not end the check");

    // Its disk lost `lost`, kept `kept`, holds the in-flight blob and a stray one nothing knows.
    let stray = BlobId(in_flight.blobs[0].0 + 1000);
    let inventory = |t: &mut T, from: u64, blobs: Vec<BlobId>, done: bool| {
        t.cmd(CommandKind::Request(t.req(MetaOp::StoreInventory { store: back, from, blobs, done })))
    };
    let mut held = vec![kept, in_flight.blobs[0], stray];
    held.sort();
    assert!(matches!(inventory(&mut t, 5, held.clone(), true), Err(FsError::Invalid(_))), "out of step");
    assert!(matches!(inventory(&mut t, 0, vec![held[1], held[0]], false), Err(FsError::Invalid(_))), "out of order");
    inventory(&mut t, 0, held[..1].to_vec(), false).unwrap();
    assert!(stores_status(&t).checking);
    assert_eq!(heartbeat(&mut t).inventory_from, Some(held[0].0 + 1), "the next part starts after the last one listed");
    inventory(&mut t, held[0].0 + 1, held[1..].to_vec(), true).unwrap();

    let st = stores_status(&t);
    assert!(st.alive && !st.checking, "{st:?}");
    assert!(holders(&t, kept).contains(&back), "a copy it still has counts again");
    assert!(!holders(&t, lost).contains(&back), "a copy it lost is forgotten");
    let MetaReply::Status(s) = t.read(MetaOp::Status).unwrap() else { panic!() };
    assert_eq!(s.blobs_under_replicated, 1, "and rebuilt elsewhere");
    let o = heartbeat(&mut t);
    assert_eq!(o.delete, vec![stray], "the stray blob is deleted, the in-flight one left to its writer");
    assert_eq!(o.inventory_from, None);

    // A server declared failed (silent, not restarted) that heartbeats again is checked too.
    let other = (1..=4).map(StoreId).find(|s| *s != back).unwrap();
    // (Ticks every second: after a gap in the ticks nobody is declared failed.)
    for _ in 0..7 {
        t.now += 1_000_000_000;
        t.cmd(CommandKind::Tick).unwrap();
    }
    let hb2 = StoreHeartbeat { store: other, ..hb.clone() };
    let MetaReply::StoreOrders(o) = t.cmd(CommandKind::Request(t.req(MetaOp::StoreHeartbeat(hb2)))).unwrap() else { panic!() };
    assert_eq!(o.inventory_from, Some(0));
    let MetaReply::Status(s) = t.read(MetaOp::Status).unwrap() else { panic!() };
    assert!(s.stores.iter().any(|st| st.id == other && st.checking && !st.alive));
}

#[test]
fn repairs_go_to_the_most_endangered_blob_first() {
    let mut t = T::new();
    t.must_add_stores(4);
    let d = t.must_mkdir(ROOT, "four");
    t.op(MetaOp::SetPolicy { handle: d.handle, policy: Policy::Replicas { copies: 4, write_quorum: 2 } }).unwrap();
    let commit = |t: &mut T, name: &str, stores: Vec<StoreId>| t.must_commit_on(d.handle, name, stores);
    // The older blob lacks one copy, the newer two.
    let short_one = commit(&mut t, "a", vec![StoreId(1), StoreId(2), StoreId(3)]);
    let short_two = commit(&mut t, "b", vec![StoreId(1), StoreId(2)]);
    assert!(short_one < short_two);
    let hb = StoreHeartbeat { store: StoreId(4), addr: "127.0.0.1:7004".into(), capacity: 1 << 30, used: 0, deleted: vec![], repaired: vec![] };
    let MetaReply::StoreOrders(o) = t.cmd(CommandKind::Request(t.req(MetaOp::StoreHeartbeat(hb)))).unwrap() else { panic!() };
    let order: Vec<BlobId> = o.repair.iter().map(|r| r.blob).collect();
    assert_eq!(order, vec![short_two, short_one]);
}

#[test]
fn a_returning_server_keeps_live_blobs_it_holds_and_last_copies_and_a_tick_gap_fails_nobody() {
    let mut t = T::new();
    t.must_add_stores(4);
    let d = t.must_mkdir(ROOT, "one");
    t.op(MetaOp::SetPolicy { handle: d.handle, policy: Policy::Replicas { copies: 1, write_quorum: 1 } }).unwrap();
    let commit = |t: &mut T, name: &str, stores: Vec<StoreId>| t.must_commit_on(d.handle, name, stores);
    let only = commit(&mut t, "a", vec![StoreId(1)]);
    let elsewhere = commit(&mut t, "b", vec![StoreId(2)]);
    let holders = |t: &T, b: BlobId| crate::apply::load::<shoal_types::layout::BlobInfo>(&t.kv, Table::Blobs, &crate::kv::key::u64(b.0)).unwrap().stores;
    // Store 1 returns. Its list lacks `only` (say, taken just before that put landed) and holds
    // a copy of `elsewhere` nothing recorded there.
    t.cmd(CommandKind::Request(t.req(MetaOp::RegisterStore { store: StoreId(1), addr: "127.0.0.1:7001".into(), capacity: 1 << 30, used: 0 }))).unwrap();
    t.cmd(CommandKind::Request(t.req(MetaOp::StoreInventory { store: StoreId(1), from: 0, blobs: vec![elsewhere], done: true }))).unwrap();
    assert_eq!(holders(&t, only), vec![StoreId(1)], "the last copy of a live blob is never forgotten");
    assert_eq!(holders(&t, elsewhere), vec![StoreId(1), StoreId(2)], "a copy of a live blob is adopted");
    assert_eq!(t.kv.len(Table::GcOrders), 0, "and not deleted");

    // After a gap in the ticks (no leader for a while), nobody is declared failed at once.
    t.cmd(CommandKind::Tick).unwrap();
    t.now += Params::default().store_dead_after_ns * 3;
    t.cmd(CommandKind::Tick).unwrap();
    let MetaReply::Status(s) = t.read(MetaOp::Status).unwrap() else { panic!() };
    assert!(s.stores.iter().all(|st| st.alive), "{:?}", s.stores);
}

#[test]
fn a_new_leader_gives_every_server_a_full_period_before_declaring_it_failed() {
    let mut t = T::new();
    t.must_add_stores(2);
    let dead_after = Params::default().store_dead_after_ns;
    let alive = |t: &T| {
        let MetaReply::Status(s) = t.read(MetaOp::Status).unwrap() else { panic!() };
        s.stores.iter().map(|st| st.alive).collect::<Vec<bool>>()
    };
    let beat = |t: &mut T, store: u64| {
        let hb = StoreHeartbeat { store: StoreId(store), addr: format!("127.0.0.1:700{store}"), capacity: 1 << 30, used: 0, deleted: vec![], repaired: vec![] };
        t.cmd(CommandKind::Request(t.req(MetaOp::StoreHeartbeat(hb)))).unwrap();
    };
    let tick_for = |t: &mut T, ns: i64, beating: &[u64]| {
        for _ in 0..ns / 500_000_000 {
            t.now += 500_000_000;
            for s in beating {
                beat(t, *s);
            }
            t.cmd(CommandKind::Tick).unwrap();
        }
    };
    // Store 2 falls silent; most of its period passes, then the leader changes.
    tick_for(&mut t, dead_after - 1_000_000_000, &[1]);
    t.cmd(CommandKind::Bootstrap(Params::default())).unwrap();
    tick_for(&mut t, dead_after - 1_000_000_000, &[1]);
    assert_eq!(alive(&t), vec![true, true], "silence before the new leader counts from its start");
    // A full period after the new leader's start it is failed.
    tick_for(&mut t, 2_000_000_000, &[1]);
    assert_eq!(alive(&t), vec![true, false]);
}

/// A create that reserves: the file is created and open, and the intent it brings is for that
/// file, good for a commit with no `AllocBlobs`. A retry gets the same answer.
#[test]
fn create_open_reserve_brings_an_intent_for_the_new_file() {
    let mut t = T::new();
    t.must_add_stores(3);
    let op = MetaOp::CreateOpenReserve { parent: ROOT, name: "f".into(), mode: 0o644, exclusive: true, count: 1, bytes: 10 };
    let first = t.op(op.clone());
    let Ok(MetaReply::Created { attr, intent: Some(intent) }) = first.clone() else { panic!("{first:?}") };
    assert_eq!(t.retry(op), first, "a retried create-and-reserve returns its first answer");
    assert_eq!(intent.blobs.len(), 1);
    assert_eq!(t.kv.len(Table::Opens), 1, "the file is open");
    let blob = intent.blobs[0];
    let stores = intent.targets.iter().map(|s| s.store).collect();
    let r = t.op(MetaOp::Commit(one_blob_commit(attr.handle, blob, 10, stores, 0)));
    assert!(matches!(r, Ok(MetaReply::Attr(ref a)) if a.size == 10), "{r:?}");
    // Where AllocBlobs would be refused, the file is still created, without an intent.
    let d = t.must_mkdir(ROOT, "d");
    t.op(MetaOp::SetAttr { handle: d.handle, set: SetAttr { uid: Some(1000), gid: Some(1000), ..Default::default() } }).unwrap();
    t.cred = Credentials { uid: 1000, gid: 1000, groups: vec![] };
    let r = t.op(MetaOp::CreateOpenReserve { parent: d.handle, name: "ro".into(), mode: 0o444, exclusive: true, count: 1, bytes: 10 });
    assert!(matches!(r, Ok(MetaReply::Created { intent: None, .. })), "{r:?}");
    assert!(t.lookup(d.handle, "ro").is_ok());
    let r = t.op(MetaOp::CreateOpenReserve { parent: d.handle, name: "big".into(), mode: 0o644, exclusive: true, count: 1, bytes: 2 << 30 });
    assert!(matches!(r, Ok(MetaReply::Created { intent: None, .. })), "no server has room: {r:?}");
}

/// `CommitGrow` never shrinks the file; `Commit` sets the size it names.
#[test]
fn commit_grow_takes_the_larger_size() {
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "f");
    t.must_write(f.handle, 100);
    let commit = |size| Commit { handle: f.handle, base_version: None, chunks: vec![], size, mtime: 0, blobs: vec![] };
    let size = |r: MetaResponse| match r {
        Ok(MetaReply::Attr(a)) => a.size,
        other => panic!("{other:?}"),
    };
    assert_eq!(size(t.op(MetaOp::CommitGrow(commit(10)))), 100);
    assert_eq!(size(t.op(MetaOp::CommitGrow(commit(150)))), 150);
    assert_eq!(size(t.op(MetaOp::Commit(commit(10)))), 10);
}

/// Commit `bytes` as the whole content of `file`, inline, under a fresh intent.
fn inline_commit(t: &mut T, file: FileHandle, bytes: &[u8]) -> (BlobId, MetaResponse) {
    let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: file, count: 1, bytes: bytes.len() as u64 }) else { panic!() };
    let blob = intent.blobs[0];
    let mut commit = one_blob_commit(file, blob, bytes.len() as u64, vec![], 0);
    commit.blobs[0].crc = crc32c::crc32c(bytes);
    (blob, t.op(MetaOp::CommitInline { commit, grow: false, data: vec![(blob, ByteBuf::from(bytes.to_vec()))] }))
}

#[test]
fn a_small_file_lives_in_the_metadata_and_is_freed_with_it() {
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "small");
    let (blob, r) = inline_commit(&mut t, f.handle, b"hello, inline");
    assert_eq!(r.unwrap(), MetaReply::Attr(t.lookup(ROOT, "small").unwrap()));
    // The layout brings the bytes along; no server holds the blob and none is asked to repair it.
    let reply = t.read(MetaOp::GetLayout { handle: f.handle, first_chunk: 0, n_chunks: 1 }).unwrap();
    let MetaReply::Inlined { ref data, .. } = reply else { panic!("{reply:?}") };
    assert_eq!(data, &vec![(blob, ByteBuf::from(b"hello, inline".to_vec()))]);
    let MetaReply::Layout(layout) = reply.attach_capability() else { panic!() };
    assert_eq!(layout.attr.size, 13);
    assert!(layout.blobs[0].stores.is_empty());
    assert_eq!(layout.blobs[0].inline.as_deref(), Some(&b"hello, inline"[..]));
    assert_eq!((t.kv.len(Table::StoreBlobs), t.kv.len(Table::Repair)), (0, 0));
    // An overwrite frees the first version's bytes at once, an unlink the second's; no server
    // is ordered to delete anything.
    let (_, r) = inline_commit(&mut t, f.handle, b"second");
    r.unwrap();
    assert_eq!(t.kv.len(Table::Inline), 1);
    t.op(MetaOp::Unlink { parent: ROOT, name: "small".into() }).unwrap();
    assert_eq!((t.kv.len(Table::Inline), t.kv.len(Table::Blobs), t.kv.len(Table::GcOrders)), (0, 0, 0));
}

#[test]
fn inline_commits_are_small_at_the_start_of_the_file_and_match_their_bytes() {
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "f");
    let invalid = |r: MetaResponse| matches!(r, Err(FsError::Invalid(_)));
    // Too many bytes.
    let big = vec![7u8; INLINE_BYTES_MAX as usize + 1];
    assert!(invalid(inline_commit(&mut t, f.handle, &big).1));
    // Past the first INLINE_BYTES_MAX bytes of the file.
    let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 1, bytes: 10 }) else { panic!() };
    let blob = intent.blobs[0];
    let mut commit = one_blob_commit(f.handle, blob, 10, vec![], 0);
    commit.chunks[0].slices[0].offset_in_chunk = INLINE_BYTES_MAX - 5;
    commit.size = INLINE_BYTES_MAX + 5;
    commit.blobs[0].crc = crc32c::crc32c(&[1u8; 10]);
    let data = vec![(blob, ByteBuf::from(vec![1u8; 10]))];
    assert!(invalid(t.op(MetaOp::CommitInline { commit: commit.clone(), grow: false, data: data.clone() })));
    // Bytes that do not match the blob's CRC or length, or a blob also claimed by servers.
    commit.chunks[0].slices[0].offset_in_chunk = 0;
    commit.size = 10;
    let mut bad = commit.clone();
    bad.blobs[0].crc ^= 1;
    assert!(invalid(t.op(MetaOp::CommitInline { commit: bad, grow: false, data: data.clone() })));
    let mut bad = commit.clone();
    bad.blobs[0].stores = vec![StoreId(1), StoreId(2)];
    assert!(invalid(t.op(MetaOp::CommitInline { commit: bad, grow: false, data: data.clone() })));
    // A plain commit of a blob with no server is refused: only inline bytes skip the quorum.
    assert!(invalid(t.op(MetaOp::Commit(commit.clone()))));
    assert_eq!(t.kv.len(Table::Inline), 0);
    // Inline bytes are never a file's policy.
    assert!(invalid(t.op(MetaOp::SetPolicy { handle: f.handle, policy: Policy::Inline })));
    t.op(MetaOp::CommitInline { commit, grow: false, data }).unwrap();
    assert_eq!(t.kv.len(Table::Inline), 1);
}

/// A delegated directory: the holder reads and changes it; every other session's reads and
/// changes of its entries are refused with `Delegated` (naming the holder and the end of the
/// lease) until the holder gives it back or the lease ends.
#[test]
fn a_directory_made_with_its_delegation_is_the_makers_alone() {
    let mut t = T::new();
    let maker = t.session;
    let Ok(MetaReply::Session { session: other, .. }) = t.op(MetaOp::OpenSession { client: "other".into() }) else { panic!() };
    let r = t.op(MetaOp::MkdirDelegated { parent: ROOT, name: "d".into(), mode: 0o755 });
    let Ok(MetaReply::Delegated { attr }) = r else { panic!("{r:?}") };
    assert_eq!((attr.kind, attr.mode, attr.nlink), (FileKind::Dir, 0o755, 2));
    assert_eq!(t.lookup(ROOT, "d").unwrap(), attr);
    t.must_create(attr.handle, "mine");
    t.session = other;
    assert!(matches!(t.read(MetaOp::Readdir { dir: attr.handle, cookie: 0, limit: 10 }), Err(FsError::Delegated { holder, .. }) if holder == maker));
    // A name taken is refused as by `Mkdir`, and nothing is delegated.
    t.session = maker;
    assert_eq!(t.op(MetaOp::MkdirDelegated { parent: ROOT, name: "d".into(), mode: 0o755 }), Err(FsError::Exists));
    // The lease runs out as any delegation's does.
    t.now += DELEGATION_LEASE_NS + 1;
    t.session = other;
    assert!(t.read(MetaOp::Readdir { dir: attr.handle, cookie: 0, limit: 10 }).is_ok());
}

#[test]
fn a_delegated_directory_is_the_holders_alone_until_returned_or_expired() {
    let mut t = T::new();
    let d = t.must_mkdir(ROOT, "d");
    let sub = t.must_mkdir(d.handle, "sub");
    let holder = t.session;
    let Ok(MetaReply::Session { session: other, .. }) = t.op(MetaOp::OpenSession { client: "other".into() }) else { panic!() };
    let r = t.op(MetaOp::Delegate { dir: d.handle });
    assert!(matches!(r, Ok(MetaReply::Delegated { ref attr }) if attr.handle == d.handle), "{r:?}");
    t.must_create(d.handle, "mine");
    assert!(t.lookup(d.handle, "mine").is_ok());
    t.session = other;
    fn is_refused<R>(r: &FsResult<R>, holder: SessionId) -> bool {
        matches!(r, Err(FsError::Delegated { holder: h, .. }) if *h == holder)
    }
    assert!(is_refused(&t.lookup(d.handle, "mine"), holder), "lookup");
    assert!(is_refused(&t.read(MetaOp::Readdir { dir: d.handle, cookie: 0, limit: 10 }), holder), "readdir");
    assert!(is_refused(&t.read(MetaOp::GetAttr { handle: d.handle }), holder), "getattr of the directory");
    let chmod = MetaOp::SetAttr { handle: d.handle, set: SetAttr { mode: Some(0o700), ..Default::default() } };
    assert!(is_refused(&t.op(chmod), holder), "its mode decides who may create in it");
    assert!(is_refused(&t.op(MetaOp::Create { parent: d.handle, name: "x".into(), kind: FileKind::File, mode: 0o644, rdev: 0, exclusive: true }), holder));
    assert!(is_refused(&t.op(MetaOp::Unlink { parent: d.handle, name: "mine".into() }), holder));
    assert!(!is_refused(&t.op(MetaOp::Rename { parent: ROOT, name: "d".into(), new_parent: ROOT, new_name: "e".into(), no_replace: false }), holder), "moving the directory itself leaves its entries alone");
    assert!(is_refused(&t.op(MetaOp::Delegate { dir: d.handle }), holder), "one holder at a time");
    // A directory removed or replaced by someone else counts as touched.
    let e = t.lookup(ROOT, "e").unwrap();
    t.session = holder;
    t.op(MetaOp::Delegate { dir: sub.handle }).unwrap();
    t.session = other;
    assert!(is_refused(&t.op(MetaOp::Rmdir { parent: e.handle, name: "sub".into() }), holder));
    let _ = t.must_mkdir(ROOT, "empty");
    assert!(is_refused(&t.op(MetaOp::Rename { parent: ROOT, name: "empty".into(), new_parent: e.handle, new_name: "sub".into(), no_replace: false }), holder));
    // Given back: open to all again.
    t.op(MetaOp::ReturnDelegation { dir: d.handle }).unwrap();
    assert!(is_refused(&t.lookup(d.handle, "mine"), holder), "only its holder gives it back");
    t.session = holder;
    t.op(MetaOp::ReturnDelegation { dir: d.handle }).unwrap();
    t.session = other;
    assert!(t.lookup(d.handle, "mine").is_ok());
    // Run out: open too, and swept away by a tick.
    t.now += DELEGATION_LEASE_NS;
    assert!(t.op(MetaOp::Rmdir { parent: e.handle, name: "sub".into() }).is_ok());
    t.cmd(CommandKind::Tick).unwrap();
    assert_eq!(t.kv.len(Table::Delegations), 0);
}

/// Files created under a delegation take inode numbers the session reserved, each once, and
/// the timestamps of their creation on the client; a retried `CreateAt` gets its first answer.
#[test]
fn reserved_inode_numbers_are_used_once_by_their_session_only() {
    let mut t = T::new();
    let d = t.must_mkdir(ROOT, "d");
    let Ok(MetaReply::Inodes { first, count: 3 }) = t.op(MetaOp::ReserveInodes { count: 3 }) else { panic!() };
    let next = t.must_create(ROOT, "after");
    assert_eq!(next.handle.inode.0, first.0 + 3, "the numbers are taken from the counter");
    let at = |name: &str, inode: u64| MetaOp::CreateAt { parent: d.handle, name: name.into(), inode: InodeId(inode), mode: 0o600, time: 77, open: true, count: 0, bytes: 0 };
    let op = at("b", first.0 + 1);
    let r = t.op(op.clone());
    let Ok(MetaReply::Created { attr, intent: None }) = r.clone() else { panic!("{r:?}") };
    assert_eq!((attr.handle.inode, attr.mtime, attr.ctime, attr.mode & 0o777), (InodeId(first.0 + 1), 77, 77, 0o600));
    assert_eq!(t.retry(op), r);
    assert_eq!(t.kv.len(Table::Opens), 1, "open, as asked");
    // Used: not again, not even once the file is gone.
    t.op(MetaOp::Unlink { parent: d.handle, name: "b".into() }).unwrap();
    assert!(matches!(t.op(at("b2", first.0 + 1)), Err(FsError::Invalid(_))));
    assert!(matches!(t.op(at("big", first.0 + 3)), Err(FsError::Invalid(_))), "beyond the reservation");
    assert!(matches!(t.op(at("old", 1)), Err(FsError::Invalid(_))), "never reserved");
    // The rest of the reservation is still good, on both sides of the used number ...
    let Ok(MetaReply::Created { .. }) = t.op(at("c", first.0 + 2)) else { panic!() };
    // ... but not for another session.
    let Ok(MetaReply::Session { session: other, .. }) = t.op(MetaOp::OpenSession { client: "other".into() }) else { panic!() };
    let mine = t.session;
    t.session = other;
    assert!(matches!(t.op(at("a", first.0)), Err(FsError::Invalid(_))));
    t.session = mine;
    assert!(matches!(t.op(at("c", first.0)), Err(FsError::Exists)), "a taken name is refused and the number stays");
    let Ok(MetaReply::Created { .. }) = t.op(at("a", first.0)) else { panic!() };
    assert_eq!(t.kv.len(Table::InodeGrants), 0);
}

/// A small file created under a delegation and closed is written back in one command: created
/// with its first version (held inline), even with a mode that does not let its owner write.
#[test]
fn create_at_with_data_creates_the_file_with_its_first_version() {
    let mut t = T::new();
    let d = t.must_mkdir(ROOT, "d");
    t.op(MetaOp::SetAttr { handle: d.handle, set: SetAttr { uid: Some(1000), gid: Some(1000), ..Default::default() } }).unwrap();
    t.cred = Credentials { uid: 1000, gid: 1000, groups: vec![] };
    let Ok(MetaReply::Inodes { first, .. }) = t.op(MetaOp::ReserveInodes { count: 2 }) else { panic!() };
    let op = MetaOp::CreateAtWith { parent: d.handle, name: "f".into(), inode: first, mode: 0o444, time: 55, open: false, data: ByteBuf::from(b"first version".to_vec()) };
    let r = t.op(op.clone());
    let Ok(MetaReply::Created { ref attr, intent: None }) = r else { panic!("{r:?}") };
    assert_eq!((attr.size, attr.mtime, attr.uid, attr.mode), (13, 55, 1000, 0o444));
    assert_eq!(t.retry(op), r);
    let reply = t.read(MetaOp::GetLayout { handle: attr.handle, first_chunk: 0, n_chunks: 1 }).unwrap();
    let MetaReply::Layout(layout) = reply.attach_capability() else { panic!() };
    assert_eq!(layout.blobs[0].inline.as_deref(), Some(&b"first version"[..]));
    assert_eq!(t.lookup(d.handle, "f").unwrap().size, 13);
    // Too large for the metadata: refused, nothing created.
    let big = MetaOp::CreateAtWith { parent: d.handle, name: "g".into(), inode: InodeId(first.0 + 1), mode: 0o644, time: 55, open: false, data: ByteBuf::from(vec![0u8; INLINE_BYTES_MAX as usize + 1]) };
    assert!(matches!(t.op(big), Err(FsError::Invalid(_))));
    assert!(t.lookup(d.handle, "g").is_err());
}

#[test]
fn a_slice_cut_in_two_by_a_write_keeps_its_blob_until_both_halves_are_gone() {
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "f");
    let b1 = t.must_write(f.handle, 100);
    let stores = vec![StoreId(1), StoreId(2), StoreId(3)];
    let mut write = |t: &mut T, offset: u64, len: u64| {
        let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 1, bytes: len }) else { panic!() };
        let blob = intent.blobs[0];
        t.op(MetaOp::Commit(Commit {
            handle: f.handle,
            base_version: None,
            chunks: vec![ChunkUpdate { idx: 0, slices: vec![Slice { blob: Some(blob), blob_offset: 0, offset_in_chunk: offset, len }] }],
            size: 100,
            mtime: 0,
            blobs: vec![NewBlob { blob, len, crc: 0, stores: stores.clone() }],
        }))
        .unwrap();
        blob
    };
    let layout = |t: &T| {
        let MetaReply::Layout(layout) = t.read(MetaOp::GetLayout { handle: f.handle, first_chunk: 0, n_chunks: 1 }).unwrap() else { panic!() };
        layout.chunks[0].1.clone()
    };
    // A write in the middle leaves b1 on both sides: the chunk holds three slices, flat.
    let b2 = write(&mut t, 40, 20);
    let slices = layout(&t);
    assert_eq!(slices.iter().map(|s| s.blob).collect::<Vec<_>>(), vec![Some(b1), Some(b2), Some(b1)]);
    assert_eq!((slices[2].offset_in_chunk, slices[2].blob_offset), (60, 60));
    // Covering the head frees nothing (the tail still names b1); covering the tail frees b1.
    write(&mut t, 0, 40);
    assert_eq!(t.kv.len(Table::GcOrders), 0, "b1 still holds bytes 60..100");
    write(&mut t, 60, 40);
    assert_eq!(t.kv.len(Table::GcOrders), 3, "b1 is ordered deleted on its three holders");
    assert_eq!(t.kv.len(Table::Blobs), 3);
    // Removing the file frees the other three blobs once each.
    t.op(MetaOp::Unlink { parent: ROOT, name: "f".into() }).unwrap();
    assert_eq!((t.kv.len(Table::Blobs), t.kv.len(Table::GcOrders)), (0, 12));
}

#[test]
fn a_blob_hidden_in_one_chunk_by_the_same_commit_stays_for_its_other_chunk() {
    // One commit: blob X over the end of chunk 0 and the start of chunk 1, then blob Y over
    // X's part in chunk 0. X loses every slice in chunk 0 but keeps one in chunk 1.
    let mut t = T::new();
    t.must_add_stores(3);
    let f = t.must_create(ROOT, "f");
    let Ok(MetaReply::Intent(intent)) = t.op(MetaOp::AllocBlobs { handle: f.handle, count: 2, bytes: 20 }) else { panic!() };
    let (x, y) = (intent.blobs[0], intent.blobs[1]);
    let stores = vec![StoreId(1), StoreId(2), StoreId(3)];
    let at = CHUNK_SIZE - 10;
    t.op(MetaOp::Commit(Commit {
        handle: f.handle,
        base_version: None,
        chunks: vec![
            ChunkUpdate {
                idx: 0,
                slices: vec![
                    Slice { blob: Some(x), blob_offset: 0, offset_in_chunk: at, len: 10 },
                    Slice { blob: Some(y), blob_offset: 0, offset_in_chunk: at, len: 10 },
                ],
            },
            ChunkUpdate { idx: 1, slices: vec![Slice { blob: Some(x), blob_offset: 10, offset_in_chunk: 0, len: 10 }] },
        ],
        size: CHUNK_SIZE + 10,
        mtime: 0,
        blobs: vec![NewBlob { blob: x, len: 20, crc: 0, stores: stores.clone() }, NewBlob { blob: y, len: 10, crc: 0, stores }],
    }))
    .unwrap();
    assert_eq!(t.kv.len(Table::GcOrders), 0, "X still holds chunk 1's first bytes");
    assert_eq!(t.kv.len(Table::Blobs), 2);
}
