//! Blobs put recently, kept in memory as they arrived: the put's own receive buffer, so keeping
//! one costs no copy, and serving it costs none either (a slice goes out as the reply payload).
//! Blobs are written to disk with direct I/O, past the page cache, so without this a read that
//! follows a write would always go to the disk. Bounded in bytes, least recently used out first.
//!
//! What is kept was checked against the client's CRC32C when it was put. A copy on disk damaged
//! later is still found by the scrubber, which reads the disk, never this.

use bytes::Bytes;
use shoal_types::BlobId;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub struct RecentBlobs {
    limit_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Blob → (last use, bytes).
    blobs: HashMap<BlobId, (u64, Bytes)>,
    /// Last use → blob: the eviction order.
    by_use: BTreeMap<u64, BlobId>,
    bytes: u64,
    clock: u64,
}

impl Inner {
    fn remove(&mut self, blob: BlobId) {
        if let Some((used, data)) = self.blobs.remove(&blob) {
            self.by_use.remove(&used);
            self.bytes -= data.len() as u64;
        }
    }
}

impl RecentBlobs {
    /// A cache of at most `limit_bytes` (0: keep nothing).
    pub fn new(limit_bytes: u64) -> RecentBlobs {
        RecentBlobs { limit_bytes, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `data`, the whole of `blob`, durable on disk by now.
    pub fn insert(&self, blob: BlobId, data: Bytes) {
        let len = data.len() as u64;
        if len == 0 || len > self.limit_bytes {
            return;
        }
        let mut inner = self.lock();
        inner.remove(blob);
        while inner.bytes + len > self.limit_bytes {
            let Some((_, oldest)) = inner.by_use.pop_first() else { break };
            if let Some((_, gone)) = inner.blobs.remove(&oldest) {
                inner.bytes -= gone.len() as u64;
            }
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.by_use.insert(used, blob);
        inner.blobs.insert(blob, (used, data));
        inner.bytes += len;
    }

    /// Up to `len` bytes of `blob` at `offset`, if it is kept and `offset` is inside it.
    pub fn get(&self, blob: BlobId, offset: u64, len: u64) -> Option<Bytes> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let (used, data) = inner.blobs.get_mut(&blob)?;
        let size = data.len() as u64;
        if offset >= size {
            return None;
        }
        let piece = data.slice(offset as usize..offset.saturating_add(len).min(size) as usize);
        let before = std::mem::replace(used, now);
        inner.by_use.remove(&before);
        inner.by_use.insert(now, blob);
        Some(piece)
    }

    pub fn remove(&self, blob: BlobId) {
        self.lock().remove(blob);
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    #[test]
    fn keeps_within_its_limit_and_drops_the_least_recently_used() {
        let r = RecentBlobs::new(300);
        r.insert(BlobId(1), blob(1, 100));
        r.insert(BlobId(2), blob(2, 100));
        r.insert(BlobId(3), blob(3, 100));
        // A read makes blob 1 the most recently used: blob 2 goes first.
        assert_eq!(r.get(BlobId(1), 10, 5).unwrap(), blob(1, 5));
        r.insert(BlobId(4), blob(4, 100));
        assert!(r.get(BlobId(2), 0, 1).is_none());
        assert!(r.get(BlobId(1), 0, 1).is_some() && r.get(BlobId(3), 0, 1).is_some() && r.get(BlobId(4), 0, 1).is_some());
        assert_eq!(r.bytes(), 300);
        // Larger than the whole cache: not kept, nothing evicted.
        r.insert(BlobId(5), blob(5, 301));
        assert!(r.get(BlobId(5), 0, 1).is_none());
        assert_eq!(r.bytes(), 300);
    }

    #[test]
    fn ranges_are_clipped_to_the_blob_and_removal_frees() {
        let r = RecentBlobs::new(1000);
        r.insert(BlobId(7), Bytes::from((0..200u8).collect::<Vec<_>>()));
        assert_eq!(&r.get(BlobId(7), 190, 50).unwrap()[..], &(190..200u8).collect::<Vec<_>>()[..]);
        assert!(r.get(BlobId(7), 200, 1).is_none(), "an offset at the end goes to the store, which answers Invalid");
        // Re-inserting replaces, without counting twice.
        r.insert(BlobId(7), blob(9, 50));
        assert_eq!(r.bytes(), 50);
        r.remove(BlobId(7));
        assert_eq!(r.bytes(), 0);
        assert!(r.get(BlobId(7), 0, 1).is_none());
        assert!(RecentBlobs::new(0).get(BlobId(7), 0, 1).is_none());
    }
}
