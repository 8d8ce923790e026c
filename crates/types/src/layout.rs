//! How a file's bytes map onto blobs. A file is cut into chunks of [`CHUNK_SIZE`]; each chunk is a
//! list of slices, later slices laid over earlier ones, so a small write changes one chunk's list
//! and never rewrites data. The metadata service keeps each list flat ([`overlay`]): what is
//! visible, sorted, no two slices overlapping. The compactor replaces a long list by one slice of
//! a new blob.

use crate::ids::{BlobId, StoreId};
use serde::{Deserialize, Serialize};

/// Bytes of a file covered by one chunk.
pub const CHUNK_SIZE: u64 = 64 << 20;
/// Largest single blob: one chunk.
pub const BLOB_SIZE_MAX: u64 = CHUNK_SIZE;
/// Block size of the checksummed blob format (see `shoal-blob-store`).
pub const BLOCK_SIZE: u64 = 64 << 10;
const _: () = assert!(CHUNK_SIZE % BLOCK_SIZE == 0);

/// Index of a chunk within a file: byte offset / [`CHUNK_SIZE`].
pub type ChunkIdx = u64;

/// `len` bytes at `offset_in_chunk` of a chunk come from `blob` at `blob_offset`.
/// A slice with `blob == None` is a hole (zeros), used by truncation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub blob: Option<BlobId>,
    pub blob_offset: u64,
    pub offset_in_chunk: u64,
    pub len: u64,
}

impl Slice {
    pub fn end_in_chunk(&self) -> u64 {
        self.offset_in_chunk + self.len
    }
}

/// A piece of a chunk resolved to its source: what a reader fetches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset_in_chunk: u64,
    pub len: u64,
    /// `None` is a hole.
    pub blob: Option<BlobId>,
    pub blob_offset: u64,
}

/// Flatten a chunk's slice list (later over earlier) into non-overlapping extents sorted by
/// offset, clipped to `chunk_len` (the part of the chunk below the file size). Gaps and holes
/// are holes, one extent per run of zeros.
pub fn resolve_chunk(slices: &[Slice], chunk_len: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut at = 0;
    for e in cover(slices, chunk_len).into_iter().filter(|e| e.blob.is_some()) {
        if e.offset_in_chunk > at {
            out.push(Extent { offset_in_chunk: at, len: e.offset_in_chunk - at, blob: None, blob_offset: 0 });
        }
        at = e.offset_in_chunk + e.len;
        out.push(Extent { offset_in_chunk: e.offset_in_chunk, len: e.len, blob: e.blob, blob_offset: e.blob_offset });
    }
    if at < chunk_len {
        out.push(Extent { offset_in_chunk: at, len: chunk_len - at, blob: None, blob_offset: 0 });
    }
    out
}

/// What a slice list (later over earlier) covers, as non-overlapping slices sorted by offset,
/// clipped to `chunk_len`; hole slices stay (they hide what lies under them), gaps are left out.
fn cover(slices: &[Slice], chunk_len: u64) -> Vec<Slice> {
    // Each slice replaces what it covers. A commit after many small writes lays thousands of
    // slices on one chunk: each costs a few map operations, not a pass over every extent.
    let mut extents: std::collections::BTreeMap<u64, Slice> = std::collections::BTreeMap::new();
    let mut hit = Vec::new();
    for s in slices {
        let (s_start, s_end) = (s.offset_in_chunk.min(chunk_len), s.end_in_chunk().min(chunk_len));
        if s_start >= s_end {
            continue;
        }
        hit.clear();
        if let Some((&k, e)) = extents.range(..=s_start).next_back() {
            if e.end_in_chunk() > s_start {
                hit.push(k);
            }
        }
        hit.extend(extents.range(s_start + 1..s_end).map(|(k, _)| *k));
        for k in &hit {
            let e = extents.remove(k).expect("an extent just found");
            if e.offset_in_chunk < s_start {
                extents.insert(e.offset_in_chunk, e.part(e.offset_in_chunk, s_start));
            }
            if e.end_in_chunk() > s_end {
                extents.insert(s_end, e.part(s_end, e.end_in_chunk()));
            }
        }
        extents.insert(s_start, s.part(s_start, s_end));
    }
    extents.into_values().collect()
}

impl Slice {
    /// The part of this slice over `[from, to)` of the chunk (within the slice).
    fn part(&self, from: u64, to: u64) -> Slice {
        let blob_offset = if self.blob.is_some() { self.blob_offset + (from - self.offset_in_chunk) } else { 0 };
        Slice { blob: self.blob, blob_offset, offset_in_chunk: from, len: to - from }
    }
}

/// Whether a chunk's list is in the flat form that [`overlay`] keeps: sorted by offset, no two
/// slices overlapping, no holes, nothing empty or past `chunk_len`.
pub fn is_flat(slices: &[Slice], chunk_len: u64) -> bool {
    let mut at = 0;
    for s in slices {
        if s.blob.is_none() || s.len == 0 || s.offset_in_chunk < at || s.end_in_chunk() > chunk_len {
            return false;
        }
        at = s.end_in_chunk();
    }
    true
}

/// Lay `new` (in write order, later over earlier, holes included) over `base`, a chunk's list:
/// the result is flat ([`is_flat`]) and resolves to the same bytes as `base` followed by `new`.
/// A flat `base` costs one pass, so a chunk's list costs what it holds, not its history; a
/// list in the older form (every slice ever laid, in write order) is flattened first.
pub fn overlay(base: &[Slice], new: &[Slice], chunk_len: u64) -> Vec<Slice> {
    let flattened;
    let base = if is_flat(base, chunk_len) {
        base
    } else {
        flattened = cover(base, chunk_len).into_iter().filter(|s| s.blob.is_some()).collect::<Vec<_>>();
        &flattened
    };
    let top = cover(new, chunk_len);
    let mut out = Vec::with_capacity(base.len() + top.len());
    let mut rest = base.iter();
    let mut cur = rest.next().cloned();
    for t in &top {
        let (t_start, t_end) = (t.offset_in_chunk, t.end_in_chunk());
        // Base slices wholly before this one stay as they are.
        while let Some(c) = cur.take() {
            if c.end_in_chunk() <= t_start {
                out.push(c);
                cur = rest.next().cloned();
            } else {
                cur = Some(c);
                break;
            }
        }
        // A base slice that starts before it keeps its head.
        if let Some(c) = cur.as_ref().filter(|c| c.offset_in_chunk < t_start) {
            out.push(c.part(c.offset_in_chunk, t_start));
        }
        // Base slices under it are dropped; one that reaches past its end keeps its tail.
        while let Some(c) = cur.take() {
            if c.offset_in_chunk >= t_end {
                cur = Some(c);
                break;
            }
            if c.end_in_chunk() > t_end {
                cur = Some(c.part(t_end, c.end_in_chunk()));
                break;
            }
            cur = rest.next().cloned();
        }
        if t.blob.is_some() {
            out.push(t.clone());
        }
    }
    out.extend(cur);
    out.extend(rest.cloned());
    out
}

/// Redundancy policy of a file's blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// `copies` full copies on distinct servers; a write commits once `write_quorum` are durable.
    Replicas { copies: u8, write_quorum: u8 },
    /// Reed-Solomon with `data` + `parity` shards (a later issue implements it; the format is here).
    Erasure { data: u8, parity: u8 },
    /// The bytes are held by the metadata service itself, replicated with its log
    /// ([`crate::meta_msg::MetaOp::CommitInline`]): no storage server has a copy. Never a
    /// file's policy, only a blob's.
    Inline,
}

impl Policy {
    pub const DEFAULT: Policy = Policy::Replicas { copies: 3, write_quorum: 2 };

    pub fn copies(self) -> usize {
        match self {
            Policy::Replicas { copies, .. } => copies as usize,
            Policy::Erasure { data, parity } => (data + parity) as usize,
            Policy::Inline => 0,
        }
    }
    pub fn write_quorum(self) -> usize {
        match self {
            Policy::Replicas { write_quorum, .. } => write_quorum as usize,
            Policy::Erasure { data, parity } => (data + parity.div_ceil(2)) as usize,
            Policy::Inline => 0,
        }
    }
}

/// What `meta` knows of a blob: its length, where its durable copies are, and whether a writer
/// may still be putting it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    pub len: u64,
    pub policy: Policy,
    /// Servers that acknowledged a durable copy.
    pub stores: Vec<StoreId>,
    /// Number of slices (over all files and kept versions) that reference the blob.
    pub refs: u64,
    /// CRC32C of the whole blob, as the writer computed it.
    pub crc: u32,
}

#[cfg(test)]
mod tests;
