//! How a file's bytes map onto blobs. A file is cut into chunks of [`CHUNK_SIZE`]; each chunk is a
//! list of slices, later slices laid over earlier ones, so a small write changes one chunk's list
//! and never rewrites data. The compactor replaces a long list by one slice of a new blob.

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
/// offset, clipped to `chunk_len` (the part of the chunk below the file size). Gaps are holes.
pub fn resolve_chunk(slices: &[Slice], chunk_len: u64) -> Vec<Extent> {
    // Extents by offset, never overlapping; each slice replaces what it covers. A commit after
    // many small writes lays thousands of slices on one chunk: each costs a few map operations,
    // not a pass over every extent.
    let mut extents: std::collections::BTreeMap<u64, Extent> = std::collections::BTreeMap::new();
    extents.insert(0, Extent { offset_in_chunk: 0, len: chunk_len, blob: None, blob_offset: 0 });
    let mut hit = Vec::new();
    for s in slices {
        let (s_start, s_end) = (s.offset_in_chunk.min(chunk_len), s.end_in_chunk().min(chunk_len));
        if s_start >= s_end {
            continue;
        }
        hit.clear();
        if let Some((&k, e)) = extents.range(..=s_start).next_back() {
            if k + e.len > s_start {
                hit.push(k);
            }
        }
        hit.extend(extents.range(s_start + 1..s_end).map(|(k, _)| *k));
        for k in &hit {
            let e = extents.remove(k).expect("an extent just found");
            let (e_start, e_end) = (e.offset_in_chunk, e.offset_in_chunk + e.len);
            if e_start < s_start {
                extents.insert(e_start, Extent { len: s_start - e_start, ..e.clone() });
            }
            if e_end > s_end {
                let cut = s_end - e_start;
                extents.insert(
                    s_end,
                    Extent {
                        offset_in_chunk: s_end,
                        len: e_end - s_end,
                        blob: e.blob,
                        blob_offset: if e.blob.is_some() { e.blob_offset + cut } else { 0 },
                    },
                );
            }
        }
        extents.insert(
            s_start,
            Extent { offset_in_chunk: s_start, len: s_end - s_start, blob: s.blob, blob_offset: s.blob_offset + (s_start - s.offset_in_chunk) },
        );
    }
    extents.into_values().collect()
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
