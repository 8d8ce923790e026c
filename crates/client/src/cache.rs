//! The client's block cache: pieces of blobs in memory and on local disk, each bounded, least
//! recently used evicted first (on disk: oldest segment first, a block read from the oldest
//! segment moving to the newest).
//!
//! Blobs are immutable and their ids are never reused, so a cached block never goes stale: which
//! blobs a file's current version uses comes from the layout, asked of `meta` at each open. What
//! needs checking is the disk: every cached block carries the CRC32C of its bytes and is verified
//! when read, so a cache directory that survived a restart (or was damaged) is never trusted
//! blindly; a block that fails is forgotten and fetched again.
//!
//! On disk, blocks are appended to segment files (`seg-SSSSSSSSSSSSSSSS`), each record a header
//! (magic, blob, block, length, CRC32C) and the bytes: a file per block cost an inode allocation
//! and a deletion per 128 KiB, a third of the CPU of a cold sequential read.

use bytes::Bytes;
use shoal_types::BlobId;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Bytes of a blob per cached block (the last block of a blob may be shorter): small enough that
/// a random 4 KiB read fetches little more than it needs, a multiple of the storage block.
pub const CACHE_BLOCK: u64 = 128 << 10;

#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Where blocks are kept on disk; `None`: memory only.
    pub dir: Option<PathBuf>,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
}

type Key = (BlobId, u64);

#[derive(Default)]
struct Tier {
    entries: HashMap<Key, (u64, u64)>, // key -> (bytes, last use)
    by_use: BTreeMap<u64, Key>,
    used: u64,
}

impl Tier {
    fn touch(&mut self, key: Key, tick: u64) -> bool {
        match self.entries.get_mut(&key) {
            Some((_, at)) => {
                self.by_use.remove(at);
                *at = tick;
                self.by_use.insert(tick, key);
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, key: Key, len: u64, tick: u64) {
        self.remove(&key);
        self.entries.insert(key, (len, tick));
        self.by_use.insert(tick, key);
        self.used += len;
    }

    fn remove(&mut self, key: &Key) -> bool {
        match self.entries.remove(key) {
            Some((len, at)) => {
                self.by_use.remove(&at);
                self.used -= len;
                true
            }
            None => false,
        }
    }

    /// Keys to evict so that `used` fits in `limit`, least recently used first.
    fn over(&mut self, limit: u64) -> Vec<Key> {
        let mut out = Vec::new();
        while self.used > limit {
            let Some((_, key)) = self.by_use.pop_first() else { break };
            if let Some((len, _)) = self.entries.remove(&key) {
                self.used -= len;
            }
            out.push(key);
        }
        out
    }
}

struct Inner {
    tick: u64,
    mem: Tier,
    data: HashMap<Key, Bytes>,
}

/// A cache segment is at most this big (an eighth of the disk budget for a small one, so
/// eviction stays fine-grained).
const SEGMENT_BYTES_MAX: u64 = 32 << 20;
const RECORD_MAGIC: u32 = 0x5342_4331;
/// magic, blob, block, length, crc32c
const RECORD_HEADER: u64 = 4 + 8 + 8 + 4 + 4;

#[derive(Clone, Copy)]
struct Loc {
    seq: u64,
    /// Where the block's bytes begin.
    off: u64,
    len: u32,
    crc: u32,
}

struct Segment {
    file: Arc<std::fs::File>,
    len: u64,
}

/// The disk tier: segments by sequence number (oldest first) and where each block is.
#[derive(Default)]
struct Disk {
    segments: BTreeMap<u64, Segment>,
    index: HashMap<Key, Loc>,
    used: u64,
}

/// Blocks waiting for the disk writer at most; a block that finds the queue full stays in
/// memory only (a fast stream is not slowed to the local disk's pace).
const DISK_QUEUE_BLOCKS: usize = 256;
/// Scheduling priority of the disk writer thread (nice value).
const DISK_WRITER_NICE: libc::c_int = 10;

pub struct BlockCache {
    config: CacheConfig,
    inner: Mutex<Inner>,
    disk: Mutex<Disk>,
    segment_bytes: u64,
    /// The disk writer's queue, started with the first block cached inside a runtime.
    disk_queue: std::sync::OnceLock<std::sync::mpsc::SyncSender<(Key, Bytes)>>,
}

fn segment_name(seq: u64) -> String {
    format!("seg-{seq:016x}")
}

fn parse_segment(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_prefix("seg-")?, 16).ok()
}

/// Index a segment left by an earlier run: every whole record, the torn end cut off.
fn scan_segment(seq: u64, file: &std::fs::File, disk: &mut Disk) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let size = file.metadata()?.len();
    let mut off = 0u64;
    let mut h = [0u8; RECORD_HEADER as usize];
    while off + RECORD_HEADER <= size {
        file.read_exact_at(&mut h, off)?;
        let magic = u32::from_le_bytes(h[0..4].try_into().expect("4"));
        let key = (BlobId(u64::from_le_bytes(h[4..12].try_into().expect("8"))), u64::from_le_bytes(h[12..20].try_into().expect("8")));
        let len = u32::from_le_bytes(h[20..24].try_into().expect("4"));
        let crc = u32::from_le_bytes(h[24..28].try_into().expect("4"));
        let end = off + RECORD_HEADER + len as u64;
        if magic != RECORD_MAGIC || len as u64 > 2 * CACHE_BLOCK || end > size {
            break;
        }
        disk.index.insert(key, Loc { seq, off: off + RECORD_HEADER, len, crc });
        off = end;
    }
    if off < size {
        file.set_len(off)?;
    }
    Ok(off)
}

impl BlockCache {
    /// Open the cache, taking in the blocks a previous run left on disk (verified when read).
    pub fn open(config: CacheConfig) -> std::io::Result<Arc<BlockCache>> {
        let mut disk = Disk::default();
        if let Some(dir) = &config.dir {
            std::fs::create_dir_all(dir)?;
            let mut found = BTreeMap::new();
            for e in std::fs::read_dir(dir)?.flatten() {
                match parse_segment(&e.file_name().to_string_lossy()) {
                    Some(seq) => {
                        found.insert(seq, e.path());
                    }
                    // Block files of an earlier version, partial writes and strangers.
                    None => {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            // Oldest first, so a block written again later is found where it was last put.
            for (seq, path) in found {
                let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
                let len = scan_segment(seq, &file, &mut disk)?;
                disk.used += len;
                disk.segments.insert(seq, Segment { file: Arc::new(file), len });
            }
        }
        let segment_bytes = (config.disk_bytes / 8).min(SEGMENT_BYTES_MAX);
        let cache = BlockCache {
            config,
            inner: Mutex::new(Inner { tick: 0, mem: Tier::default(), data: HashMap::new() }),
            disk: Mutex::new(disk),
            segment_bytes,
            disk_queue: std::sync::OnceLock::new(),
        };
        cache.evict_disk(&mut cache.disk.lock().expect("disk cache lock"));
        Ok(Arc::new(cache))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("cache lock")
    }

    /// Drop the oldest segments until the disk tier fits its budget (the one being written
    /// stays).
    fn evict_disk(&self, disk: &mut Disk) {
        while disk.used > self.config.disk_bytes && disk.segments.len() > 1 {
            let Some((seq, seg)) = disk.segments.pop_first() else { break };
            disk.used -= seg.len;
            disk.index.retain(|_, l| l.seq != seq);
            if let Some(dir) = &self.config.dir {
                let _ = std::fs::remove_file(dir.join(segment_name(seq)));
            }
        }
    }

    /// A cached block, from memory or else from disk (verified; a bad one is dropped).
    pub fn get(&self, blob: BlobId, block: u64) -> Option<Bytes> {
        use std::os::unix::fs::FileExt;
        let key = (blob, block);
        {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if inner.mem.touch(key, tick) {
                return inner.data.get(&key).cloned();
            }
        }
        let (loc, file, oldest) = {
            let disk = self.disk.lock().expect("disk cache lock");
            let loc = *disk.index.get(&key)?;
            let file = disk.segments.get(&loc.seq)?.file.clone();
            let oldest = disk.segments.len() > 1 && disk.segments.first_key_value().is_some_and(|(s, _)| *s == loc.seq);
            (loc, file, oldest)
        };
        let mut buf = vec![0u8; loc.len as usize];
        let read = file.read_exact_at(&mut buf, loc.off);
        if read.is_err() || crc32c::crc32c(&buf) != loc.crc {
            tracing::warn!(blob = blob.0, block, "a cached block failed its checksum: dropped");
            let mut disk = self.disk.lock().expect("disk cache lock");
            if disk.index.get(&key).is_some_and(|l| l.seq == loc.seq && l.off == loc.off) {
                disk.index.remove(&key);
            }
            return None;
        }
        let data = Bytes::from(buf);
        self.remember(key, data.clone());
        if oldest {
            // Used again: keep it past the eviction of its segment.
            self.store_on_disk(key, &data);
        }
        Some(data)
    }

    /// Keep a block in memory only.
    fn remember(&self, key: Key, data: Bytes) {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.mem.insert(key, data.len() as u64, tick);
        inner.data.insert(key, data);
        let limit = self.config.mem_bytes;
        for k in inner.mem.over(limit) {
            inner.data.remove(&k);
        }
    }

    /// Cache a block in memory only (a block of a long stream: on disk it would push out most
    /// of what the disk tier holds, and writing it competes with the stream's own reads).
    pub fn put_in_memory(&self, blob: BlobId, block: u64, data: Bytes) {
        self.remember((blob, block), data);
    }

    /// Bytes the disk tier holds at most (0 without one).
    pub fn disk_bytes(&self) -> u64 {
        if self.config.dir.is_some() {
            self.config.disk_bytes
        } else {
            0
        }
    }

    /// Cache a block fetched from a storage server: in memory now, on disk by one writer thread
    /// (inside a tokio runtime) so the read that fetched it does not wait for the local disk;
    /// outside a runtime (tests), on disk before returning.
    pub fn put(self: &Arc<Self>, blob: BlobId, block: u64, data: Bytes) {
        self.remember((blob, block), data.clone());
        if self.config.dir.is_none() || data.len() as u64 > self.config.disk_bytes {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return self.store_on_disk((blob, block), &data);
        }
        let queue = self.disk_queue.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Key, Bytes)>(DISK_QUEUE_BLOCKS);
            let cache = Arc::downgrade(self);
            let spawned = std::thread::Builder::new().name("cache-disk-writer".into()).spawn(move || {
                // Below the reads it caches for: on a busy machine the queue fills and blocks stay
                // in memory only, rather than the read path waiting for a core.
                // SAFETY: plain system calls on this thread's own id.
                unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, DISK_WRITER_NICE);
                }
                // Ends when the cache (holding the sender) is dropped.
                while let Ok((key, data)) = rx.recv() {
                    let Some(cache) = cache.upgrade() else { return };
                    cache.store_on_disk(key, &data);
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("no disk cache writer: {e}");
            }
            tx
        });
        // Full (or no writer): this block stays in memory only.
        let _ = queue.try_send(((blob, block), data));
    }

    fn store_on_disk(&self, key: Key, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let Some(dir) = &self.config.dir else { return };
        let mut disk = self.disk.lock().expect("disk cache lock");
        let record = RECORD_HEADER + data.len() as u64;
        let head = disk.segments.last_key_value().filter(|(_, s)| s.len + record <= self.segment_bytes.max(record)).map(|(q, _)| *q);
        let seq = match head {
            Some(seq) => seq,
            None => {
                let seq = disk.segments.last_key_value().map_or(1, |(q, _)| q + 1);
                let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.join(segment_name(seq)));
                match file {
                    Ok(f) => disk.segments.insert(seq, Segment { file: Arc::new(f), len: 0 }),
                    Err(e) => {
                        tracing::debug!("cannot cache a block on disk: {e}");
                        return;
                    }
                };
                seq
            }
        };
        let seg = disk.segments.get_mut(&seq).expect("the head segment");
        let crc = crc32c::crc32c(data);
        let mut h = Vec::with_capacity(RECORD_HEADER as usize);
        h.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        h.extend_from_slice(&key.0 .0.to_le_bytes());
        h.extend_from_slice(&key.1.to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&crc.to_le_bytes());
        let at = seg.len;
        if let Err(e) = seg.file.write_all_at(&h, at).and_then(|()| seg.file.write_all_at(data, at + RECORD_HEADER)) {
            tracing::debug!("cannot cache a block on disk: {e}");
            return;
        }
        seg.len += record;
        disk.used += record;
        disk.index.insert(key, Loc { seq, off: at + RECORD_HEADER, len: data.len() as u32, crc });
        self.evict_disk(&mut disk);
    }

    /// Bytes held in memory and on disk.
    pub fn usage(&self) -> (u64, u64) {
        let mem = self.lock().mem.used;
        (mem, self.disk.lock().expect("disk cache lock").used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cache(dir: &Path, mem: u64, disk: u64) -> Arc<BlockCache> {
        BlockCache::open(CacheConfig { dir: Some(dir.to_path_buf()), mem_bytes: mem, disk_bytes: disk }).unwrap()
    }

    fn block(seed: u8, len: usize) -> Bytes {
        Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(seed)).collect::<Vec<u8>>())
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }

    #[test]
    fn memory_and_disk_are_bounded_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of an eighth of 3,200 bytes: each 1,000-byte block gets its own.
        let c = cache(dir.path(), 2000, 3200);
        for i in 0..5u64 {
            c.put(BlobId(1), i, block(i as u8 + 1, 1000));
        }
        let (mem, disk) = c.usage();
        assert!(mem <= 2000 && disk <= 3200, "usage {mem} {disk}");
        assert_eq!(segments(dir.path()).len(), 3);
        assert!(c.get(BlobId(1), 0).is_none() && c.get(BlobId(1), 1).is_none(), "the oldest were evicted");
        assert_eq!(c.get(BlobId(1), 4).unwrap(), block(5, 1000));
        // Block 2 is in the oldest segment: read from disk, it moves to the newest one ...
        assert_eq!(c.get(BlobId(1), 2).unwrap(), block(3, 1000), "still on disk");
        // ... so the next block evicts block 3, not block 2.
        c.put(BlobId(1), 5, block(6, 1000));
        let c = cache(dir.path(), 2000, 3200);
        assert_eq!(c.get(BlobId(1), 2).unwrap(), block(3, 1000), "kept, having been used");
        assert!(c.get(BlobId(1), 3).is_none());
        assert_eq!(c.get(BlobId(1), 5).unwrap(), block(6, 1000));
    }

    #[test]
    fn the_disk_tier_survives_a_restart_and_a_damaged_block_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = cache(dir.path(), 1 << 20, 1 << 20);
            c.put(BlobId(7), 0, block(3, 5000));
            c.put(BlobId(7), 1, block(4, 5000));
            c.put(BlobId(7), 2, block(5, 5000));
        }
        let seg = segments(dir.path()).pop().unwrap();
        let mut raw = std::fs::read(&seg).unwrap();
        // Flip a byte of the second block, and cut the third one short (a crash mid-write).
        raw[(RECORD_HEADER as usize + 5000) + RECORD_HEADER as usize + 100] ^= 1;
        raw.truncate(raw.len() - 10);
        std::fs::write(&seg, raw).unwrap();
        std::fs::write(dir.path().join("junk.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("0000000000000007-000001"), b"an old block file").unwrap();
        let c = cache(dir.path(), 1 << 20, 1 << 20);
        assert_eq!(c.get(BlobId(7), 0).unwrap(), block(3, 5000));
        assert!(c.get(BlobId(7), 1).is_none(), "a damaged block is never returned");
        assert!(c.get(BlobId(7), 2).is_none(), "nor a torn one");
        assert_eq!(segments(dir.path()), vec![seg.clone()], "strangers are removed");
        // The torn end is cut off: new blocks follow the last whole one and read back.
        c.put(BlobId(8), 0, block(9, 3000));
        let c = cache(dir.path(), 1 << 20, 1 << 20);
        assert_eq!(c.get(BlobId(8), 0).unwrap(), block(9, 3000));
        assert_eq!(c.get(BlobId(7), 0).unwrap(), block(3, 5000));
    }
}
