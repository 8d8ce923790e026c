//! The client's block cache: pieces of blobs in memory and on local disk, each bounded, least
//! recently used evicted first.
//!
//! Blobs are immutable and their ids are never reused, so a cached block never goes stale: which
//! blobs a file's current version uses comes from the layout, asked of `meta` at each open. What
//! needs checking is the disk: every block file carries the CRC32C of its bytes and is verified
//! when read, so a cache directory that survived a restart (or was damaged) is never trusted
//! blindly; a block that fails is deleted and fetched again.

use bytes::Bytes;
use shoal_types::BlobId;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
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
    disk: Tier,
}

/// Blocks waiting for the disk writer at most; a block that finds the queue full stays in
/// memory only (a fast stream is not slowed to the local disk's pace).
const DISK_QUEUE_BLOCKS: usize = 256;

pub struct BlockCache {
    config: CacheConfig,
    inner: Mutex<Inner>,
    /// The disk writer's queue, started with the first block cached inside a runtime.
    disk_queue: std::sync::OnceLock<std::sync::mpsc::SyncSender<(Key, Bytes)>>,
}

fn file_name(key: &Key) -> String {
    format!("{:016x}-{:06x}", key.0 .0, key.1)
}

fn parse_name(name: &str) -> Option<Key> {
    let (blob, block) = name.split_once('-')?;
    Some((BlobId(u64::from_str_radix(blob, 16).ok()?), u64::from_str_radix(block, 16).ok()?))
}

impl BlockCache {
    /// Open the cache, taking in the blocks a previous run left on disk (verified when read).
    pub fn open(config: CacheConfig) -> std::io::Result<Arc<BlockCache>> {
        let mut disk = Tier::default();
        let mut tick = 0;
        if let Some(dir) = &config.dir {
            std::fs::create_dir_all(dir)?;
            let mut found: Vec<(std::time::SystemTime, Key, u64)> = Vec::new();
            for e in std::fs::read_dir(dir)?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(meta) = e.metadata() else { continue };
                match parse_name(&name) {
                    Some(key) if meta.len() > 4 => found.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), key, meta.len() - 4)),
                    // Partial writes and strangers.
                    _ => {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            found.sort_by_key(|f| f.0);
            for (_, key, len) in found {
                tick += 1;
                disk.insert(key, len, tick);
            }
        }
        let cache = BlockCache {
            config,
            inner: Mutex::new(Inner { tick, mem: Tier::default(), data: HashMap::new(), disk }),
            disk_queue: std::sync::OnceLock::new(),
        };
        let evicted = cache.lock().disk.over(cache.config.disk_bytes);
        cache.remove_files(&evicted);
        Ok(Arc::new(cache))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("cache lock")
    }

    fn path(&self, key: &Key) -> Option<PathBuf> {
        self.config.dir.as_ref().map(|d| d.join(file_name(key)))
    }

    fn remove_files(&self, keys: &[Key]) {
        for k in keys {
            if let Some(p) = self.path(k) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// A cached block, from memory or else from disk (verified; a bad one is dropped).
    pub fn get(&self, blob: BlobId, block: u64) -> Option<Bytes> {
        let key = (blob, block);
        {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if inner.mem.touch(key, tick) {
                return inner.data.get(&key).cloned();
            }
            if !inner.disk.touch(key, tick) {
                return None;
            }
        }
        let path = self.path(&key)?;
        let verified = std::fs::read(&path).ok().and_then(|raw| read_block_file(&raw));
        match verified {
            Some(data) => {
                self.remember(key, data.clone());
                Some(data)
            }
            None => {
                tracing::warn!(blob = blob.0, block, "a cached block failed its checksum: dropped");
                self.lock().disk.remove(&key);
                let _ = std::fs::remove_file(path);
                None
            }
        }
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
        let Some(path) = self.path(&key) else { return };
        if let Err(e) = write_block_file(&path, data) {
            tracing::debug!("cannot cache a block on disk: {e}");
            return;
        }
        let evicted = {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            inner.disk.insert(key, data.len() as u64, tick);
            inner.disk.over(self.config.disk_bytes)
        };
        self.remove_files(&evicted);
    }

    /// Bytes held in memory and on disk.
    pub fn usage(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.mem.used, inner.disk.used)
    }
}

fn read_block_file(raw: &[u8]) -> Option<Bytes> {
    if raw.len() < 4 {
        return None;
    }
    let (crc, data) = raw.split_at(4);
    (u32::from_le_bytes(crc.try_into().ok()?) == crc32c::crc32c(data)).then(|| Bytes::copy_from_slice(data))
}

/// Written beside and renamed into place, so a crash leaves no half block under a valid name.
fn write_block_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&crc32c::crc32c(data).to_le_bytes())?;
    file.write_all(data)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, mem: u64, disk: u64) -> Arc<BlockCache> {
        BlockCache::open(CacheConfig { dir: Some(dir.to_path_buf()), mem_bytes: mem, disk_bytes: disk }).unwrap()
    }

    fn block(seed: u8, len: usize) -> Bytes {
        Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(seed)).collect::<Vec<u8>>())
    }

    #[test]
    fn memory_and_disk_are_bounded_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 2000, 3000);
        for i in 0..5u64 {
            c.put(BlobId(1), i, block(i as u8 + 1, 1000));
        }
        let (mem, disk) = c.usage();
        assert!(mem <= 2000 && disk <= 3000, "usage {mem} {disk}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
        assert!(c.get(BlobId(1), 0).is_none() && c.get(BlobId(1), 1).is_none(), "the oldest were evicted");
        assert_eq!(c.get(BlobId(1), 4).unwrap(), block(5, 1000));
        assert_eq!(c.get(BlobId(1), 2).unwrap(), block(3, 1000), "still on disk");
    }

    #[test]
    fn the_disk_tier_survives_a_restart_and_a_damaged_block_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = cache(dir.path(), 1 << 20, 1 << 20);
            c.put(BlobId(7), 0, block(3, 5000));
            c.put(BlobId(7), 1, block(4, 5000));
        }
        // Flip a byte of one block file.
        let path = dir.path().join(file_name(&(BlobId(7), 1)));
        let mut raw = std::fs::read(&path).unwrap();
        raw[100] ^= 1;
        std::fs::write(&path, raw).unwrap();
        std::fs::write(dir.path().join("junk.tmp"), b"x").unwrap();
        let c = cache(dir.path(), 1 << 20, 1 << 20);
        assert_eq!(c.get(BlobId(7), 0).unwrap(), block(3, 5000));
        assert!(c.get(BlobId(7), 1).is_none(), "a damaged block is never returned");
        assert!(!path.exists(), "and is deleted");
        assert!(!dir.path().join("junk.tmp").exists());
    }
}
