//! The FUSE mount: kernel file-system requests mapped onto the client library. This is the only
//! crate that knows fuser or errno ([`errno`] is the one mapping point).
//!
//! The kernel caches entries and attributes only under a cache promise from the metadata leader,
//! for what is left of it, and drops them when a callback arrives ([`promises`]); a file's pages
//! are kept across opens only while its version is the one they were read from
//! (close-to-open). Writes are buffered per open file (contiguous runs up to
//! [`WRITE_BUFFER_MAX`]) and committed on `flush` (close) and `fsync`.
//!
//! FUSE inode numbers are Shoal inode numbers (the root is 1 in both); the generation of each
//! inode seen is remembered so every call carries a full file handle, and a handle whose inode
//! was removed answers `ESTALE`.

use fuser::{
    Errno, FileAttr, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use shoal_client::Client;
use shoal_types::meta_msg::{MetaOp, MetaReply, INLINE_BYTES_MAX};
use shoal_types::*;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod delegation;
pub mod listings;
pub mod promises;
pub mod readahead;
use promises::Promises;

/// Kernel timeout of what no promise covers (answers to mutations): ask again next time.
pub const NO_TTL: Duration = Duration::ZERO;
/// Bytes buffered per open file before they are written out.
pub const WRITE_BUFFER_MAX: usize = 16 << 20;
/// Separate runs buffered per open file at most (each becomes a slice of the file's layout).
pub const WRITE_RUNS_MAX: usize = 4096;

/// The one mapping from Shoal errors to errno.
pub fn errno(e: &FsError) -> Errno {
    Errno::from_i32(match e {
        FsError::NotFound | FsError::BlobNotFound => libc::ENOENT,
        FsError::Exists => libc::EEXIST,
        FsError::NotDir => libc::ENOTDIR,
        FsError::IsDir => libc::EISDIR,
        FsError::NotEmpty => libc::ENOTEMPTY,
        FsError::Invalid(_) => libc::EINVAL,
        FsError::NameTooLong => libc::ENAMETOOLONG,
        FsError::Stale => libc::ESTALE,
        FsError::NoSpace => libc::ENOSPC,
        FsError::PermissionDenied => libc::EACCES,
        FsError::NotPermitted => libc::EPERM,
        FsError::TooManyLinks => libc::EMLINK,
        FsError::CrossDevice => libc::EXDEV,
        FsError::VersionConflict { .. } => libc::EAGAIN,
        FsError::Corrupt(_) | FsError::Io(_) => libc::EIO,
        FsError::NotLeader { .. } | FsError::Unavailable(_) | FsError::SessionExpired | FsError::IntentExpired => libc::EIO,
        FsError::Fenced { .. } | FsError::Protocol(_) | FsError::Internal(_) => libc::EIO,
        FsError::NoAttribute => libc::ENODATA,
        FsError::NotSupported(_) => libc::EOPNOTSUPP,
        FsError::Unauthenticated(_) | FsError::TicketExpired => libc::EACCES,
        FsError::Delegated { .. } => libc::EAGAIN,
    })
}

/// Writes not yet sent: runs in write order (a write that continues the last run extends it).
/// They go out as one blob, however scattered.
#[derive(Default)]
struct WriteBuf {
    runs: Vec<(u64, Vec<u8>)>,
    bytes: usize,
}

impl WriteBuf {
    fn end(&self) -> Option<u64> {
        self.runs.iter().map(|(o, d)| o + d.len() as u64).max()
    }

    /// Whether `len` more bytes at `offset` fit (otherwise put what is buffered first).
    fn fits(&self, offset: u64, len: usize) -> bool {
        let extends = self.runs.last().is_some_and(|(o, d)| o + d.len() as u64 == offset);
        self.bytes + len <= WRITE_BUFFER_MAX && (extends || self.runs.len() < WRITE_RUNS_MAX)
    }

    fn add(&mut self, offset: u64, data: &[u8]) {
        match self.runs.last_mut() {
            Some((o, d)) if *o + d.len() as u64 == offset => d.extend_from_slice(data),
            _ => self.runs.push((offset, data.to_vec())),
        }
        self.bytes += data.len();
    }
}

struct OpenFile {
    handle: FileHandle,
    buf: Option<WriteBuf>,
    /// Blobs put and not committed yet, in write order: `close` publishes them in one commit.
    pending: Vec<shoal_client::data::Written>,
    /// End of the furthest byte among `pending`.
    pending_end: u64,
    append: bool,
    /// Opened for writing (or with O_TRUNC), as the kernel or `squashed_root_may_open` allowed:
    /// what lets a later ftruncate through this handle skip the permission check.
    writable: bool,
    reads: readahead::ReadState,
    reserved: shoal_client::data::Reserved,
    /// When the oldest of `pending` was put.
    pending_since: Option<std::time::Instant>,
    /// Full buffers being put in the background, oldest first: they join `pending` in this
    /// order, before anything is committed.
    in_flight: std::collections::VecDeque<InFlight>,
}

/// A full write buffer being put as one blob while the writer goes on.
struct InFlight {
    runs: Vec<(u64, bytes::Bytes)>,
    end: u64,
    /// `None` once it failed: put again, in its turn, by the next flush.
    task: Option<tokio::task::JoinHandle<FsResult<Vec<shoal_client::data::Written>>>>,
}

/// Puts of full buffers an open file may have running at once (the writer waits for the
/// oldest beyond this: memory stays bounded at this many buffers per file, plus one).
pub const PUTS_IN_FLIGHT_MAX: usize = 2;

impl OpenFile {
    /// End of what this open file wrote and did not commit.
    fn uncommitted_end(&self) -> Option<u64> {
        let buffered = self.buf.as_ref().and_then(WriteBuf::end);
        let pending = (!self.pending.is_empty()).then_some(self.pending_end);
        let in_flight = self.in_flight.iter().map(|p| p.end).max();
        buffered.max(pending).max(in_flight)
    }

    /// Nothing put and not committed, here or in the background.
    fn nothing_put(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }
}

/// Wait for the oldest `keep`-exceeding puts running in the background and add what they wrote
/// to `pending`, in order. A put that failed is tried again here, with a new blob; if that fails
/// too, it stays first in line and the error is returned.
fn land_puts(rt: &tokio::runtime::Handle, client: &Arc<Client>, f: &mut OpenFile, keep: usize) -> Result<(), Errno> {
    while f.in_flight.len() > keep {
        let p = f.in_flight.front_mut().expect("one in flight");
        let first = match p.task.take() {
            Some(task) => rt.block_on(task).unwrap_or_else(|e| Err(FsError::Internal(e.to_string()))),
            None => Err(FsError::Internal("an earlier attempt failed".into())),
        };
        let written = match first {
            Ok(w) => Ok(w),
            Err(e) => {
                tracing::debug!(inode = f.handle.inode.0, "a background put failed ({e}); trying again");
                let (handle, runs) = (f.handle, p.runs.clone());
                let bytes = runs.iter().map(|(_, d)| d.len() as u64).sum();
                rt.block_on(async {
                    let (blob, intent) = client.next_blob(handle, &mut f.reserved, bytes).await?;
                    client.clone().put_runs(blob, intent, runs).await
                })
            }
        };
        match written {
            Ok(w) => {
                let p = f.in_flight.pop_front().expect("one in flight");
                f.pending_end = f.pending_end.max(p.end);
                f.pending.extend(w);
                f.pending_since.get_or_insert_with(std::time::Instant::now);
            }
            Err(e) => {
                tracing::warn!(inode = f.handle.inode.0, "a write could not be put: {e}");
                return Err(errno(&e));
            }
        }
    }
    Ok(())
}

/// Publish what an open file put and did not commit, in one commit.
fn commit_pending(rt: &tokio::runtime::Handle, client: &Arc<Client>, local_changes: &AtomicU64, f: &mut OpenFile) -> Result<(), Errno> {
    land_puts(rt, client, f, 0)?;
    if !f.pending.is_empty() {
        let committed = rt.block_on(client.commit_at(f.handle, f.pending.clone(), f.pending_end));
        local_changes.fetch_add(1, Ordering::AcqRel);
        committed.map_err(|e| {
            tracing::warn!(inode = f.handle.inode.0, "commit failed: {e}");
            errno(&e)
        })?;
        f.pending.clear();
        f.pending_end = 0;
    }
    f.pending_since = None;
    Ok(())
}

/// The extended attribute the kernel reads before every write (file capabilities to clear).
const CAPS_XATTR: &str = "security.capability";

/// How long a closed file's open record may wait to be released with others.
pub const RELEASE_DELAY: Duration = Duration::from_millis(20);

/// Release the open records of closed files, all waiting ones at once.
fn send_releases(rt: &tokio::runtime::Handle, client: &Client, releases: &Mutex<Vec<FileHandle>>) {
    let handles = std::mem::take(&mut *releases.lock().expect("releases"));
    if handles.is_empty() {
        return;
    }
    let results = rt.block_on(futures::future::join_all(handles.iter().map(|h| client.release(*h))));
    for (h, r) in handles.iter().zip(results) {
        if let Err(e) = r {
            // The session's end releases it anyway.
            tracing::warn!(inode = h.inode.0, "release failed: {e}");
        }
    }
}

/// Data put and not committed is committed after this long even if the file stays open, well
/// before the intents covering its blobs expire.
pub const PENDING_AGE_MAX: Duration = Duration::from_secs(60);

/// Commit what open files put long ago and still hold (a writer that keeps a file open).
fn commit_old_pending(rt: tokio::runtime::Handle, client: Arc<Client>, open: Arc<Mutex<HashMap<u64, Arc<Mutex<OpenFile>>>>>, local_changes: Arc<AtomicU64>) {
    loop {
        std::thread::sleep(Duration::from_secs(5));
        let files: Vec<_> = open.lock().expect("open").values().cloned().collect();
        for file in files {
            // A file busy with a request is committed by that request's path or a later round.
            let Ok(mut f) = file.try_lock() else { continue };
            if f.pending_since.is_some_and(|t| t.elapsed() > PENDING_AGE_MAX) {
                let _ = commit_pending(&rt, &client, &local_changes, &mut f);
            }
        }
    }
}

/// Blobs an open file may put before it commits them anyway (intents expire; a file written
/// in one open beyond this many blobs is published in several versions).
pub const PENDING_BLOBS_MAX: usize = 64;
/// Slices an open file may put before it commits them anyway: one buffer of scattered writes.
pub const PENDING_SLICES_MAX: usize = WRITE_RUNS_MAX;

pub struct ShoalFs {
    rt: tokio::runtime::Handle,
    client: Arc<Client>,
    /// Per inode: its generation, and its size when last seen (`u64::MAX`: not seen).
    generations: Mutex<HashMap<u64, (u64, u64)>>,
    open: Arc<Mutex<HashMap<u64, Arc<Mutex<OpenFile>>>>>,
    next_fh: AtomicU64,
    promises: Arc<Promises>,
    /// The version each file's kernel pages were read from, as far as this mount knows.
    page_versions: Mutex<HashMap<u64, VersionNo>>,
    /// Bumped by every change of file contents made through this mount (no callback tells this
    /// mount about its own changes): cached layouts from before are dropped.
    local_changes: Arc<AtomicU64>,
    /// Closed files whose open records are still to be released ([`send_releases`]).
    releases: Arc<Mutex<Vec<FileHandle>>>,
    whole_file_bytes: u64,
    inline_bytes: u64,
    /// Read-only opens keep reading the version they opened (`--consistency open-snapshot`).
    open_snapshot: bool,
    ids: IdMap,
    /// Directories delegated to this mount and the files created in them here.
    delegations: Arc<delegation::Delegations>,
    /// Whether to ask for delegations (`--no-delegations` turns it off).
    delegate: bool,
    /// Listings of directories looked in often, to answer lookups here.
    listings: Arc<listings::Listings>,
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    }
}

fn ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

/// How a mount's local users appear in the cluster. Only a mount with the admin key acts for
/// local users at all (a user's mount acts as that user whatever the local uid); for it, local
/// root can be squashed to `nobody` and local ids mapped to cluster ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    /// (local, cluster) pairs; ids not listed are the same on both sides.
    pub uids: Vec<(u32, u32)>,
    pub gids: Vec<(u32, u32)>,
    /// Local root acts as `nobody` (65534) in the cluster.
    pub root_squash: bool,
}

pub const NOBODY: u32 = 65534;

fn forward(pairs: &[(u32, u32)], id: u32) -> u32 {
    pairs.iter().find(|(l, _)| *l == id).map_or(id, |(_, c)| *c)
}

fn backward(pairs: &[(u32, u32)], id: u32) -> u32 {
    pairs.iter().find(|(_, c)| *c == id).map_or(id, |(l, _)| *l)
}

impl IdMap {
    pub fn cluster_uid(&self, local: u32) -> u32 {
        if self.root_squash && local == 0 {
            return NOBODY;
        }
        forward(&self.uids, local)
    }

    pub fn cluster_gid(&self, local: u32, local_uid: u32) -> u32 {
        if self.root_squash && local_uid == 0 {
            return NOBODY;
        }
        forward(&self.gids, local)
    }

    pub fn local_uid(&self, cluster: u32) -> u32 {
        backward(&self.uids, cluster)
    }

    pub fn local_gid(&self, cluster: u32) -> u32 {
        backward(&self.gids, cluster)
    }

    /// The credentials a request from local `uid`/`gid` acts with.
    pub fn cred(&self, uid: u32, gid: u32) -> Credentials {
        Credentials { uid: self.cluster_uid(uid), gid: self.cluster_gid(gid, uid), groups: Vec::new() }
    }
}

/// Whether a lookup of `name` may be answered from a directory listing (a name the service
/// refuses, or a dot entry, is left to it).
fn listing_may_answer(name: &str) -> bool {
    name.len() <= 255 && !name.contains('/') && name != "." && name != ".."
}

fn name_of(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

impl ShoalFs {
    pub fn new(rt: tokio::runtime::Handle, client: Arc<Client>) -> ShoalFs {
        let mut generations = HashMap::new();
        generations.insert(InodeId::ROOT.0, (FileHandle::ROOT.generation.0, u64::MAX));
        let releases = Arc::new(Mutex::new(Vec::new()));
        ShoalFs {
            delegations: Arc::new(delegation::Delegations::new(rt.clone(), client.clone(), releases.clone())),
            rt,
            client,
            generations: Mutex::new(generations),
            open: Arc::new(Mutex::new(HashMap::new())),
            next_fh: AtomicU64::new(1),
            promises: Arc::new(Promises::default()),
            listings: Arc::new(listings::Listings::default()),
            page_versions: Mutex::new(HashMap::new()),
            local_changes: Arc::new(AtomicU64::new(0)),
            releases,
            whole_file_bytes: 0,
            inline_bytes: 0,
            open_snapshot: false,
            delegate: false,
            ids: IdMap::default(),
        }
    }

    fn read_stamp(&self) -> readahead::Stamp {
        (self.promises.generation(), self.local_changes.load(Ordering::Acquire))
    }

    /// A read that may come with a cache promise: the answer, until when it is promised, and
    /// the callback generation it was asked at.
    fn read_promised(&self, req: &Request, op: MetaOp) -> (Result<Attr, Errno>, Option<std::time::Instant>, u64) {
        let since = self.promises.generation();
        let (r, until) = self.rt.block_on(self.client.meta_promised(&self.cred(req), op));
        let r = r.map_err(|e| {
            tracing::debug!("request failed: {e}");
            errno(&e)
        });
        (r.and_then(attr_reply), until, since)
    }

    /// Whether the kernel's pages of a file just opened at `version` may be kept.
    fn keep_pages(&self, ino: u64, version: VersionNo) -> FopenFlags {
        let mut v = self.page_versions.lock().expect("page versions");
        if v.insert(ino, version) == Some(version) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    /// The size of `ino` when this mount last saw its attributes (`u64::MAX` if it did not).
    fn last_size(&self, ino: u64) -> u64 {
        self.generations.lock().expect("generations").get(&ino).map_or(u64::MAX, |g| g.1)
    }

    fn handle(&self, ino: INodeNo) -> FileHandle {
        let generation = self.generations.lock().expect("generations").get(&ino.0).map_or(0, |g| g.0);
        FileHandle { volume: VolumeId(1), inode: InodeId(ino.0), generation: Generation_(generation) }
    }

    /// With root squashed, the kernel still lets local root open anything (it checks as root),
    /// and pages it cached could be read without asking the cluster: check as `nobody` here.
    fn squashed_root_may_open(&self, req: &Request, a: &Attr, flags: i32) -> bool {
        if !(self.ids.root_squash && req.uid() == 0) {
            return true;
        }
        let mut want = match flags & libc::O_ACCMODE {
            libc::O_RDONLY => 4,
            libc::O_WRONLY => 2,
            _ => 6,
        };
        if flags & libc::O_TRUNC != 0 {
            want |= 2; // the truncation that follows is a write
        }
        let bits = if a.uid == NOBODY {
            a.mode >> 6
        } else if a.gid == NOBODY {
            a.mode >> 3
        } else {
            a.mode
        };
        bits & want == want
    }

    fn cred(&self, req: &Request) -> Credentials {
        self.ids.cred(req.uid(), req.gid())
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        self.generations.lock().expect("generations").insert(a.handle.inode.0, (a.handle.generation.0, a.size));
        let size = self.buffered_end(a.handle.inode.0).map_or(a.size, |end| end.max(a.size));
        FileAttr {
            ino: INodeNo(a.handle.inode.0),
            size,
            blocks: size.div_ceil(512),
            atime: time(a.atime),
            mtime: time(a.mtime),
            ctime: time(a.ctime),
            crtime: time(a.crtime),
            kind: kind(a.kind),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: self.ids.local_uid(a.uid),
            gid: self.ids.local_gid(a.gid),
            rdev: a.rdev,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    /// End of the data buffered for an inode by any open file (not yet committed).
    fn buffered_end(&self, ino: u64) -> Option<u64> {
        let open = self.open.lock().expect("open");
        open.values()
            .filter_map(|f| {
                let f = f.lock().expect("file");
                if f.handle.inode.0 != ino {
                    return None;
                }
                f.uncommitted_end()
            })
            .max()
    }

    fn run<T>(&self, f: impl std::future::Future<Output = FsResult<T>>) -> Result<T, Errno> {
        self.rt.block_on(f).map_err(|e| {
            tracing::debug!("request failed: {e}");
            errno(&e)
        })
    }

    fn file(&self, fh: fuser::FileHandle) -> Result<Arc<Mutex<OpenFile>>, Errno> {
        self.open.lock().expect("open").get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// Put a full buffer in the background and go on (waiting for the oldest put beyond
    /// [`PUTS_IN_FLIGHT_MAX`]). A file still waiting here to be written back is put at once.
    fn start_put(&self, f: &mut OpenFile) -> Result<(), Errno> {
        if self.delegations.is_pending(f.handle.inode.0) {
            return self.put_buffer(f);
        }
        // Room for one more first: while puts fail, the writer gets the error and the buffer
        // stays, so memory stays bounded.
        land_puts(&self.rt, &self.client, f, PUTS_IN_FLIGHT_MAX - 1)?;
        let Some(buf) = f.buf.take().filter(|b| !b.runs.is_empty()) else { return Ok(()) };
        let (end, bytes) = (buf.end().unwrap_or(0), buf.bytes as u64);
        let (blob, intent) = match self.run(self.client.next_blob(f.handle, &mut f.reserved, bytes)) {
            Ok(x) => x,
            Err(e) => {
                f.buf = Some(buf);
                return Err(e);
            }
        };
        let runs: Vec<(u64, bytes::Bytes)> = buf.runs.into_iter().map(|(o, d)| (o, bytes::Bytes::from(d))).collect();
        let task = self.rt.spawn(self.client.clone().put_runs(blob, intent, runs.clone()));
        f.in_flight.push_back(InFlight { runs, end, task: Some(task) });
        // Its blob's intent runs out: the old-writes thread commits it in time, as it does
        // what was put in the foreground.
        f.pending_since.get_or_insert_with(std::time::Instant::now);
        self.commit_if_long(f)
    }

    /// Put what an open file buffered (without committing it), after what is being put.
    fn put_buffer(&self, f: &mut OpenFile) -> Result<(), Errno> {
        land_puts(&self.rt, &self.client, f, 0)?;
        if f.buf.as_ref().is_some_and(|b| !b.runs.is_empty()) && self.delegations.is_pending(f.handle.inode.0) {
            // Created here under a delegation: written back first, with an intent for its data.
            if let Some(intent) = self.delegations.write_back(None, Some(f.handle.inode.0)) {
                f.reserved.fill(f.handle, intent);
            }
        }
        if let Some(buf) = f.buf.take().filter(|b| !b.runs.is_empty()) {
            let handle = f.handle;
            let pieces: Vec<(u64, &[u8])> = buf.runs.iter().map(|(o, d)| (*o, &d[..])).collect();
            // Small files go to the metadata service with their commit, up to its limit per file.
            let inline = (self.inline_bytes, self.inline_bytes.saturating_sub(shoal_client::data::inline_bytes(&f.pending)));
            let written = match self.run(self.client.put_pieces_with(handle, &pieces, &mut f.reserved, inline)) {
                Ok(w) => w,
                Err(e) => {
                    // Kept for the next attempt (close or fsync report the error).
                    f.buf = Some(buf);
                    return Err(e);
                }
            };
            f.pending_end = f.pending_end.max(buf.end().unwrap_or(0));
            f.pending.extend(written);
            f.pending_since.get_or_insert_with(std::time::Instant::now);
        }
        self.commit_if_long(f)
    }

    /// Commit what was put once it is long enough.
    fn commit_if_long(&self, f: &mut OpenFile) -> Result<(), Errno> {
        // Bounded in blobs (intents expire; a blob's pieces are adjacent) and in slices (a
        // commit lays each on its chunk).
        let blobs = f.pending.chunk_by(|a, b| a.blob.blob == b.blob.blob).count();
        if blobs >= PENDING_BLOBS_MAX || f.pending.len() >= PENDING_SLICES_MAX {
            self.commit_pending(f)?;
        }
        Ok(())
    }

    fn commit_pending(&self, f: &mut OpenFile) -> Result<(), Errno> {
        commit_pending(&self.rt, &self.client, &self.local_changes, f)
    }

    /// Write back every file created here under a delegation (before a request that may
    /// involve one of them at the metadata service).
    fn write_back_creates(&self) {
        if self.delegations.any_pending() {
            self.delegations.write_back(None, None);
        }
    }

    /// Put what an open file buffered and commit everything it wrote as one new version. The
    /// file stays locked until the commit is done, so a concurrent getattr sees either the
    /// uncommitted size or the committed one, never a size from before the write; on failure
    /// the uncommitted data is kept.
    fn flush_file(&self, file: &Mutex<OpenFile>) -> Result<(), Errno> {
        let mut f = file.lock().expect("file");
        if self.write_back_small(&mut f)? {
            return Ok(());
        }
        self.put_buffer(&mut f)?;
        self.commit_pending(&mut f)
    }

    /// A small file created here under a delegation, written from its start in one run: its
    /// first version waits with its create and goes with it in one command (`CreateAtWith`),
    /// written back with the others. False when that does not apply (the ordinary path
    /// follows).
    fn write_back_small(&self, f: &mut OpenFile) -> Result<bool, Errno> {
        let ino = f.handle.inode.0;
        if !f.nothing_put() {
            return Ok(false);
        }
        let Some(buf) = f.buf.as_mut() else { return Ok(false) };
        let small = buf.runs.len() == 1 && buf.runs[0].0 == 0 && buf.bytes as u64 <= self.inline_bytes;
        if !small {
            return Ok(false);
        }
        if let Err(data) = self.delegations.hold_data(ino, std::mem::take(&mut buf.runs[0].1)) {
            buf.runs[0].1 = data;
            return Ok(false);
        }
        f.buf = None;
        self.local_changes.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// Flush every open file of an inode (before a read, a truncate or a getattr that must see it).
    fn flush_inode(&self, ino: u64) -> Result<(), Errno> {
        let files: Vec<_> = self.open.lock().expect("open").values().cloned().collect();
        for f in files {
            let same = f.lock().expect("file").handle.inode.0 == ino;
            if same {
                self.flush_file(&f)?;
            }
        }
        Ok(())
    }

    fn new_fh(&self, handle: FileHandle, flags: i32) -> u64 {
        let append = flags & libc::O_APPEND != 0;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let file = OpenFile {
            handle,
            buf: None,
            pending: Vec::new(),
            pending_end: 0,
            append,
            writable,
            reads: Default::default(),
            reserved: Default::default(),
            pending_since: None,
            in_flight: Default::default(),
        };
        self.open.lock().expect("open").insert(fh, Arc::new(Mutex::new(file)));
        fh
    }

    /// An entry answer to a mutation: nothing promised, so the kernel asks again next time.
    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => {
                let attr = self.attr(&a);
                reply.entry(&NO_TTL, &attr, Generation(a.handle.generation.0));
            }
            Err(e) => reply.error(e),
        }
    }
}

#[allow(non_snake_case)]
fn Generation_(g: u64) -> shoal_types::Generation {
    shoal_types::Generation(g)
}

impl Filesystem for ShoalFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Lookups and listings of one directory run side by side (without this the kernel
        // sends them one at a time per directory).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.delegations.lookup(parent.0, &name) {
            Some(Some(a)) => return reply.entry(&NO_TTL, &self.attr(&a), Generation(a.handle.generation.0)),
            Some(None) => return reply.error(Errno::ENOENT),
            None => {}
        }
        let cred = self.cred(req);
        let stamp = listings::Stamp::now(&self.promises, &self.client);
        if listing_may_answer(&name) {
            if let Some(hit) = self.listings.lookup(parent.0, &name, &cred, stamp, std::time::Instant::now()) {
                let Some(a) = hit.attr else { return reply.error(Errno::ENOENT) };
                let attr = self.attr(&a);
                let granted = self.promises.grant(stamp.callbacks, Some(hit.until), a.handle.inode.0, Some((parent.0, &name)));
                return reply.entry(&granted.ttl, &attr, Generation(a.handle.generation.0));
            }
        }
        let (r, until, since) = self.read_promised(req, MetaOp::Lookup { parent: self.handle(parent), name: name.clone() });
        if self.listings.missed(parent.0, stamp, std::time::Instant::now()) {
            let (listings, client, promises, dir) = (self.listings.clone(), self.client.clone(), self.promises.clone(), self.handle(parent));
            self.rt.spawn(async move { listings.fetch(&client, &promises, dir, cred).await });
        }
        match r {
            Ok(a) => {
                let attr = self.attr(&a);
                let granted = self.promises.grant(since, until, a.handle.inode.0, Some((parent.0, &name)));
                reply.entry(&granted.ttl, &attr, Generation(a.handle.generation.0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<fuser::FileHandle>, reply: ReplyAttr) {
        // What this mount wrote and did not commit, looked at before asking: a commit finishing
        // meanwhile is then either seen by the answer or counted here.
        if let Some(a) = self.delegations.pending_attr(ino.0).or_else(|| self.delegations.dir_attr(ino.0)) {
            return reply.attr(&NO_TTL, &self.attr(&a));
        }
        let uncommitted = self.buffered_end(ino.0);
        let (r, until, since) = self.read_promised(req, MetaOp::GetAttr { handle: self.handle(ino) });
        match r {
            Ok(a) => {
                if a.kind == FileKind::Dir {
                    self.delegations.fresh_dir_attr(&a);
                }
                let mut attr = self.attr(&a);
                if let Some(end) = uncommitted.filter(|e| *e > attr.size) {
                    attr.size = end;
                    attr.blocks = end.div_ceil(512);
                }
                // Data buffered here and not committed yet: the size is this mount's, not the
                // leader's, so it is not cached.
                let until = until.filter(|_| attr.size == a.size);
                let granted = self.promises.grant(since, until, ino.0, None);
                reply.attr(&granted.ttl, &attr);
            }
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<fuser::FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.write_back_creates();
        if size.is_some() {
            if let Err(e) = self.flush_inode(ino.0) {
                return reply.error(e);
            }
        }
        let t = |x: TimeOrNow| match x {
            TimeOrNow::SpecificTime(t) => ns(t),
            TimeOrNow::Now => ns(SystemTime::now()),
        };
        let (uid, gid) = (uid.map(|u| self.ids.cluster_uid(u)), gid.map(|g| self.ids.cluster_gid(g, req.uid())));
        let set = SetAttr { mode: mode.map(|m| m & 0o7777), uid, gid, size, atime: atime.map(t), mtime: mtime.map(t) };
        // ftruncate on a descriptor opened for writing needs no write permission now (the file
        // may have been created with mode 0): the kernel checked it at open.
        let only_size = size.is_some() && mode.is_none() && uid.is_none() && gid.is_none() && atime.is_none() && mtime.is_none();
        let opened_for_writing = fh.and_then(|fh| self.file(fh).ok()).is_some_and(|f| f.lock().expect("file").writable);
        let as_who = if only_size && opened_for_writing { Credentials::ROOT } else { self.cred(req) };
        let r = self.run(self.client.meta_as(&as_who, MetaOp::SetAttr { handle: self.handle(ino), set })).and_then(attr_reply);
        self.local_changes.fetch_add(1, Ordering::AcqRel);
        self.delegations.dir_changed(Some(ino.0));
        match r {
            Ok(a) => reply.attr(&NO_TTL, &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.run(self.client.meta_as(&self.cred(req), MetaOp::Readlink { handle: self.handle(ino) })) {
            Ok(shoal_types::meta_msg::MetaReply::Target(t)) => reply.data(t.as_bytes()),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let k = match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return reply.error(Errno::EINVAL),
        };
        self.write_back_creates();
        let r = name_of(name).and_then(|name| {
            let op = MetaOp::Create { parent: self.handle(parent), name: name.clone(), kind: k, mode: mode & !umask & 0o7777, rdev, exclusive: true };
            let r = self.run(self.client.meta_as(&self.cred(req), op)).and_then(attr_reply);
            self.delegations.note_entry(parent.0, &name, r.is_ok());
            r
        });
        self.entry(reply, r);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        // A new directory depends on no file created here and not written back, unless it
        // takes such a file's name (then the service must see the file to refuse the name).
        if name.to_str().is_none_or(|n| self.delegations.lookup(parent.0, n).is_some_and(|a| a.is_some())) {
            self.write_back_creates();
        }
        let r = name_of(name).and_then(|name| {
            let (parent_handle, mode) = (self.handle(parent), mode & !umask & 0o7777);
            // Files are often created in a new directory next: it comes delegated to this
            // mount (no other client can have looked into it yet).
            let delegated = self.delegate && self.delegations.begin_mkdir();
            let r = if delegated {
                let sent = std::time::Instant::now();
                let r = self.run(self.client.meta_as(&self.cred(req), MetaOp::MkdirDelegated { parent: parent_handle, name: name.clone(), mode }));
                let (r, granted) = match r {
                    Ok(MetaReply::Delegated { attr }) => (Ok(attr), true),
                    Ok(other) => (attr_reply(other), false),
                    Err(e) => (Err(e), false),
                };
                self.delegations.end_mkdir(r.as_ref().ok().filter(|_| granted), sent);
                r
            } else {
                self.run(self.client.meta_as(&self.cred(req), MetaOp::Mkdir { parent: parent_handle, name: name.clone(), mode })).and_then(attr_reply)
            };
            if let Ok(a) = &r {
                self.delegations.note_entry(parent.0, &name, true);
                if self.delegate && !delegated {
                    self.delegations.maybe_ask(a.handle);
                }
            }
            r
        });
        self.entry(reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.write_back_creates();
        let r = name_of(name).and_then(|name| {
            let r = self.run(self.client.meta_as(&self.cred(req), MetaOp::Unlink { parent: self.handle(parent), name: name.clone() }));
            if r.is_ok() {
                self.delegations.note_entry(parent.0, &name, false);
            }
            r
        });
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.write_back_creates();
        let r = name_of(name).and_then(|name| {
            let r = self.run(self.client.meta_as(&self.cred(req), MetaOp::Rmdir { parent: self.handle(parent), name: name.clone() }));
            if r.is_ok() {
                self.delegations.note_entry(parent.0, &name, false);
            }
            r
        });
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        self.write_back_creates();
        let r = name_of(link_name).and_then(|name| {
            let target = target.to_str().ok_or(Errno::EINVAL)?.to_string();
            let r = self.run(self.client.meta_as(&self.cred(req), MetaOp::Symlink { parent: self.handle(parent), name: name.clone(), target })).and_then(attr_reply);
            if r.is_ok() {
                self.delegations.note_entry(parent.0, &name, true);
            }
            r
        });
        self.entry(reply, r);
    }

    fn rename(&self, req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        if flags.bits() & !libc::RENAME_NOREPLACE != 0 {
            return reply.error(Errno::EINVAL);
        }
        self.write_back_creates();
        let r = name_of(name).and_then(|name| {
            let new_name = name_of(newname)?;
            let op = MetaOp::Rename {
                parent: self.handle(parent),
                name: name.clone(),
                new_parent: self.handle(newparent),
                new_name: new_name.clone(),
                no_replace: flags.bits() & libc::RENAME_NOREPLACE != 0,
            };
            let r = self.run(self.client.meta_as(&self.cred(req), op));
            if r.is_ok() {
                self.delegations.note_entry(parent.0, &name, false);
                self.delegations.note_entry(newparent.0, &new_name, true);
                self.delegations.dir_changed(None);
            }
            r
        });
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.write_back_creates();
        let r = name_of(newname).and_then(|new_name| {
            let op = MetaOp::Link { handle: self.handle(ino), new_parent: self.handle(newparent), new_name: new_name.clone() };
            let r = self.run(self.client.meta_as(&self.cred(req), op)).and_then(attr_reply);
            if r.is_ok() {
                self.delegations.note_entry(newparent.0, &new_name, true);
            }
            r
        });
        self.entry(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.delegations.is_pending(ino.0) {
            self.delegations.write_back(None, None);
        }
        let handle = self.handle(ino);
        // An open for reading comes back with the file's layout (and a small file's bytes), so
        // its first read needs no round trip of its own.
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
        let stamp = self.read_stamp();
        // A small file whose bytes all live in the metadata comes whole with its layout, a read
        // (no log entry): the open needs no record at the service to keep what it already holds.
        let whole = if read_only && !self.open_snapshot && self.last_size(ino.0) <= INLINE_BYTES_MAX {
            match self.run(self.client.meta_as(&self.cred(req), MetaOp::GetLayout { handle, first_chunk: 0, n_chunks: 1 })) {
                Ok(MetaReply::Layout(l)) if readahead::holds_whole(&l) => Some(Ok((l.attr.clone(), Some(l)))),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        } else {
            None
        };
        let recorded = whole.is_none();
        let opened = if let Some(whole) = whole {
            whole
        } else if read_only && !self.open_snapshot {
            self.run(self.client.meta_as(&self.cred(req), MetaOp::OpenRead { handle })).and_then(|r| match r {
                MetaReply::Layout(l) => Ok((l.attr.clone(), Some(l))),
                other => attr_reply(other).map(|a| (a, None)),
            })
        } else {
            self.run(self.client.meta_as(&self.cred(req), MetaOp::Open { handle })).and_then(attr_reply).map(|a| (a, None))
        };
        match opened {
            Ok((a, layout)) => {
                if !self.squashed_root_may_open(req, &a, flags.0) {
                    if recorded {
                        let _ = self.run(self.client.release(handle));
                    }
                    return reply.error(Errno::EACCES);
                }
                let fh = self.new_fh(handle, flags.0);
                if let (Some(layout), Ok(file)) = (layout, self.file(fuser::FileHandle(fh))) {
                    file.lock().expect("file").reads.seed(stamp, layout, !recorded);
                }
                if self.open_snapshot && flags.0 & libc::O_ACCMODE == libc::O_RDONLY {
                    // Reads of this open come from the version it opened, past the page cache
                    // (which is per inode, shared with opens of newer versions).
                    let pinned = self.file(fuser::FileHandle(fh)).and_then(|f| {
                        let mut f = f.lock().expect("file");
                        self.run(f.reads.pin(&self.client, handle))
                    });
                    return match pinned {
                        Ok(()) => reply.opened(fuser::FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
                        Err(e) => {
                            self.open.lock().expect("open").remove(&fh);
                            let _ = self.run(self.client.release(handle));
                            reply.error(e)
                        }
                    };
                }
                let keep = self.keep_pages(ino.0, a.version);
                reply.opened(fuser::FileHandle(fh), keep);
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        // In a directory delegated to this mount: created here, written back shortly.
        if let Some(a) = name_of(name).ok().and_then(|n| self.delegations.create(parent.0, &n, mode & !umask & 0o7777, &self.cred(req))) {
            let attr = self.attr(&a);
            self.page_versions.lock().expect("page versions").insert(a.handle.inode.0, a.version);
            let fh = self.new_fh(a.handle, flags);
            return reply.created(&NO_TTL, &attr, Generation(a.handle.generation.0), fuser::FileHandle(fh), FopenFlags::empty());
        }
        let r = name_of(name).and_then(|name| {
            // The intent for the file's first blob comes with the create: a small file is then
            // written with no other round trip before its commit.
            let op = MetaOp::CreateOpenReserve {
                parent: self.handle(parent),
                name: name.clone(),
                mode: mode & !umask & 0o7777,
                exclusive: flags & libc::O_EXCL != 0,
                count: 1,
                bytes: shoal_client::data::BLOB_BYTES,
            };
            let since = self.promises.generation();
            let (r, until) = self.rt.block_on(self.client.meta_promised(&self.cred(req), op));
            match r.map_err(|e| {
                tracing::debug!("request failed: {e}");
                errno(&e)
            })? {
                MetaReply::Created { attr, intent } => Ok((attr, intent, until, since, name)),
                _ => Err(Errno::EIO),
            }
        });
        match r {
            Ok((a, intent, until, since, name)) => {
                self.delegations.note_entry(parent.0, &name, true);
                if self.delegate {
                    self.delegations.maybe_ask(self.handle(parent));
                }
                let attr = self.attr(&a);
                // Promised like a lookup: the kernel need not ask for the new file's attributes.
                let granted = self.promises.grant(since, until, a.handle.inode.0, Some((parent.0, &name)));
                self.page_versions.lock().expect("page versions").insert(a.handle.inode.0, a.version);
                let fh = self.new_fh(a.handle, flags);
                if let (Some(intent), Ok(file)) = (intent, self.file(fuser::FileHandle(fh))) {
                    file.lock().expect("file").reserved.fill(a.handle, intent);
                }
                reply.created(&granted.ttl, &attr, Generation(a.handle.generation.0), fuser::FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: fuser::FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        if self.delegations.is_pending(ino.0) {
            self.delegations.write_back(None, None);
        }
        // Read-after-write within this mount: what is buffered is committed first.
        if let Err(e) = self.flush_inode(ino.0) {
            return reply.error(e);
        }
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let stamp = self.read_stamp();
        let mut f = file.lock().expect("file");
        let handle = f.handle;
        match self.run(readahead::read(&self.client, handle, &mut f.reads, stamp, offset, size as u64, self.whole_file_bytes)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: fuser::FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let mut offset = offset;
        {
            let f = file.lock().expect("file");
            if f.append {
                // O_APPEND: the end is the committed size plus what this file buffered.
                drop(f);
                if self.delegations.is_pending(ino.0) {
                    self.delegations.write_back(None, None);
                }
                if let Err(e) = self.flush_file(&file) {
                    return reply.error(e);
                }
                let handle = file.lock().expect("file").handle;
                match self.run(self.client.getattr(handle)) {
                    Ok(a) => offset = a.size,
                    Err(e) => return reply.error(e),
                }
            }
        }
        // Extend the buffered run, or put it and start a new one.
        {
            let mut f = file.lock().expect("file");
            if f.buf.as_ref().is_some_and(|b| !b.fits(offset, data.len())) {
                if let Err(e) = self.start_put(&mut f) {
                    return reply.error(e);
                }
            }
            f.buf.get_or_insert_with(WriteBuf::default).add(offset, data);
        }
        reply.written(data.len() as u32);
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: fuser::FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        match self.file(fh).and_then(|f| self.flush_file(&f)) {
            // A write-back of this file refused since (it was created here): it is lost.
            Ok(()) if self.delegations.take_lost(ino.0) => reply.error(Errno::EIO),
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: fuser::FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Durable means at the metadata service too, for a file created here (with what it
        // holds of its first version).
        let flushed = self.file(fh).and_then(|f| self.flush_file(&f));
        if flushed.is_ok() && self.delegations.is_pending(ino.0) {
            self.delegations.write_back(None, None);
            if self.delegations.is_pending(ino.0) {
                return reply.error(Errno::EIO);
            }
        }
        if self.delegations.take_lost(ino.0) {
            return reply.error(Errno::EIO);
        }
        match flushed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: fuser::FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let flushed = self.flush_file(&file);
        self.open.lock().expect("open").remove(&fh.0);
        let handle = file.lock().expect("file").handle;
        // The open record is released a moment later, together with others (one log entry for
        // many closes instead of one each, out of the way of the next create). A file created
        // here and not written back has none.
        let recorded = file.lock().expect("file").reads.recorded();
        if !self.delegations.closed(handle.inode.0) && recorded {
            self.releases.lock().expect("releases").push(handle);
        }
        match flushed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, req: &Request, ino: INodeNo, _fh: fuser::FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.write_back_creates();
        // Offsets: 1 is ".", 2 is "..", then each entry's cookie + 2.
        let dir = self.handle(ino);
        if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset < 2 {
            let parent = match self.run(self.client.meta_as(&self.cred(req), MetaOp::Lookup { parent: dir, name: "..".into() })).and_then(attr_reply) {
                Ok(a) => a.handle.inode.0,
                Err(e) => return reply.error(e),
            };
            if reply.add(INodeNo(parent), 2, FileType::Directory, "..") {
                return reply.ok();
            }
        }
        let mut cookie = offset.saturating_sub(2);
        loop {
            let page = self.run(self.client.meta_as(&self.cred(req), MetaOp::Readdir { dir, cookie, limit: 512 }));
            let (entries, eof) = match page {
                Ok(shoal_types::meta_msg::MetaReply::Dir { entries, eof }) => (entries, eof),
                Ok(_) => return reply.error(Errno::EIO),
                Err(e) => return reply.error(e),
            };
            for e in entries {
                cookie = e.cookie;
                let mut known = self.generations.lock().expect("generations");
                let k = known.entry(e.handle.inode.0).or_insert((e.handle.generation.0, u64::MAX));
                if k.0 != e.handle.generation.0 {
                    *k = (e.handle.generation.0, u64::MAX);
                }
                drop(known);
                if reply.add(INodeNo(e.handle.inode.0), e.cookie + 2, kind(e.kind), &e.name) {
                    return reply.ok();
                }
            }
            if eof {
                return reply.ok();
            }
        }
    }

    fn setxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        let flags = match flags {
            0 => 0,
            libc::XATTR_CREATE => 1,
            libc::XATTR_REPLACE => 2,
            _ => return reply.error(Errno::EINVAL),
        };
        self.write_back_creates();
        let r = name_of(name).and_then(|name| {
            let op = MetaOp::SetXattr { handle: self.handle(ino), name, value: value.to_vec(), flags };
            self.run(self.client.meta_as(&self.cred(req), op))
        });
        self.promises.forget_caps(ino.0);
        self.delegations.dir_changed(Some(ino.0));
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let caps = name == CAPS_XATTR;
        if self.delegations.is_pending(ino.0) {
            // Created here and not written back: no extended attribute yet.
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        if caps && self.promises.caps_absent(ino.0) {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let since = self.promises.generation();
        let r = name_of(name).and_then(|name| self.run(self.client.meta_as(&self.cred(req), MetaOp::GetXattr { handle: self.handle(ino), name })));
        if caps && matches!(r, Err(e) if e == Errno::from_i32(libc::ENODATA)) {
            self.promises.note_caps_absent(since, ino.0);
        }
        match r {
            Ok(shoal_types::meta_msg::MetaReply::XattrValue(v)) => xattr_reply(reply, size, &v),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.delegations.is_pending(ino.0) {
            return xattr_reply(reply, size, &[]);
        }
        match self.run(self.client.meta_as(&self.cred(req), MetaOp::ListXattr { handle: self.handle(ino) })) {
            Ok(shoal_types::meta_msg::MetaReply::XattrNames(names)) => {
                let mut list = Vec::new();
                for n in names {
                    list.extend_from_slice(n.as_bytes());
                    list.push(0);
                }
                xattr_reply(reply, size, &list)
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.write_back_creates();
        let r = name_of(name).and_then(|name| self.run(self.client.meta_as(&self.cred(req), MetaOp::RemoveXattr { handle: self.handle(ino), name })));
        self.promises.forget_caps(ino.0);
        self.delegations.dir_changed(Some(ino.0));
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.run(self.client.statfs()) {
            Ok(s) => {
                let bsize = s.block_size.max(512) as u64;
                reply.statfs(s.capacity / bsize, s.available / bsize, s.available / bsize, s.files + 1_000_000, 1_000_000, bsize as u32, 255, bsize as u32)
            }
            Err(e) => reply.error(e),
        }
    }
}

/// `size` 0 asks for the length; a buffer too small is ERANGE.
fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

fn attr_reply(r: shoal_types::meta_msg::MetaReply) -> Result<Attr, Errno> {
    match r {
        shoal_types::meta_msg::MetaReply::Attr(a) => Ok(a),
        _ => Err(Errno::EIO),
    }
}

pub struct MountOptions {
    /// Request threads.
    pub threads: usize,
    /// Files up to this size are fetched whole at their first read.
    pub whole_file_bytes: u64,
    /// Writes within a file's first this many bytes go with their commit to the metadata
    /// service (at most [`shoal_types::meta_msg::INLINE_BYTES_MAX`]; 0: never).
    pub inline_bytes: u64,
    /// Read-only opens keep reading the version they opened.
    pub open_snapshot: bool,
    /// Ask for directory delegations (create files locally, write them back shortly).
    pub delegations: bool,
    pub ids: IdMap,
}

/// How far the kernel reads ahead of a sequential reader on the mount (its default is 128 KiB;
/// it sends the window as requests of up to `max_write` bytes, several at once).
pub const KERNEL_READAHEAD_KIB: u32 = 4096;

/// Set the kernel's read-ahead for the mount at `mountpoint` (root only; a no-op otherwise).
/// The mount's backing device is named after its device number, found in mountinfo (reading
/// it asks nothing of the mount, whose requests are not served yet).
fn raise_readahead(mountpoint: &std::path::Path, kib: u32) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    // mountinfo escapes a space in a path as \040.
    let target = mountpoint.to_string_lossy().replace(' ', "\\040");
    // The last line for the path is the mount on top.
    let dev = info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[4] == target).then(|| f[2].to_string())
    });
    if let Some(dev) = dev {
        if let Err(e) = std::fs::write(format!("/sys/class/bdi/{dev}/read_ahead_kb"), kib.to_string()) {
            tracing::debug!("kernel read-ahead left as it was: {e}");
        }
    }
}

/// Mount and serve until unmounted. Blocks the calling thread.
pub fn mount(rt: tokio::runtime::Handle, client: Arc<Client>, mountpoint: &std::path::Path, opts: &MountOptions) -> std::io::Result<()> {
    let threads = opts.threads;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("shoal".into()),
        fuser::MountOption::Subtype("shoal".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if unsafe { libc::geteuid() } == 0 {
        // allow_other: every local user reaches the mount; permissions are checked per request.
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(threads.max(1));
    let mut fs = ShoalFs::new(rt.clone(), client.clone());
    fs.whole_file_bytes = opts.whole_file_bytes;
    fs.inline_bytes = opts.inline_bytes.min(shoal_types::meta_msg::INLINE_BYTES_MAX);
    fs.open_snapshot = opts.open_snapshot;
    fs.delegate = opts.delegations;
    fs.ids = opts.ids.clone();
    let promises = fs.promises.clone();
    let releases = fs.releases.clone();
    let delegations = fs.delegations.clone();
    let keeper_delegations = delegations.clone();
    std::thread::Builder::new().name("delegations".into()).spawn(move || delegation::keeper(keeper_delegations))?;
    let (open, changes, flusher_rt, flusher_client) = (fs.open.clone(), fs.local_changes.clone(), rt.clone(), client.clone());
    std::thread::Builder::new()
        .name("old-writes".into())
        .spawn(move || commit_old_pending(flusher_rt, flusher_client, open, changes))?;
    // Resolved before the mount exists: afterwards resolving it asks this very mount.
    let resolved = mountpoint.canonicalize().unwrap_or_else(|_| mountpoint.to_path_buf());
    let session = fuser::Session::new(fs, mountpoint, &config)?;
    raise_readahead(&resolved, KERNEL_READAHEAD_KIB);
    let notifier = session.notifier();
    // Fault injection for tests: a mount whose callback channel is cut.
    let ignore = std::env::var_os("SHOAL_TEST_CUT_CALLBACKS").is_some();
    let (release_rt, release_client, thread_releases) = (rt.clone(), client.clone(), releases.clone());
    std::thread::Builder::new().name("releases".into()).spawn(move || loop {
        std::thread::sleep(RELEASE_DELAY);
        send_releases(&release_rt, &release_client, &thread_releases);
    })?;
    let (last_rt, last_client) = (rt.clone(), client.clone());
    let recall_delegations = delegations.clone();
    let recall = move |dir: InodeId| recall_delegations.recall(dir.0);
    std::thread::Builder::new()
        .name("callbacks".into())
        .spawn(move || promises::callback_loop(rt, client, promises, notifier, ignore, recall))?;
    let served = session.run();
    // Files created here go to the metadata service before the session ends, and delegated
    // directories back to everyone.
    delegations.give_all_back();
    send_releases(&last_rt, &last_client, &releases);
    served
}
