//! The blob file format: encoding, decoding and checksums. Decoding never panics on bad bytes.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "SHOALBLB"
//!      8     1  format version = 1
//!      9     7  reserved, zero
//!     16     8  blob id (u64)
//!     24     8  data length in bytes (u64, <= BLOB_SIZE_MAX)
//!     32     4  crc32c of the whole data (u32)
//!     36     4  block size in bytes (u32, BLOCK_SIZE = 64 KiB when written by this build)
//!     40    20  reserved, zero
//!     60     4  crc32c of bytes 0..60 (u32)
//!     64  4 * n block table: crc32c of each data block (u32), n = ceil(data length / block size)
//!  64+4n   len data, block i at 64 + 4n + i * block size (the last block may be short)
//! ```
//!
//! All integers are little-endian. The file length must be exactly `64 + 4n + len`.

use crate::BlobError;
use shoal_types::layout::{BLOB_SIZE_MAX, BLOCK_SIZE};
use shoal_types::BlobId;
use std::sync::OnceLock;

pub const MAGIC: [u8; 8] = *b"SHOALBLB";
pub const VERSION: u8 = 1;
/// Bytes of the fixed header; the block table follows it.
pub const HEADER_BYTES: u64 = 64;
/// Bytes of one block table entry.
pub const BLOCK_CRC_BYTES: u64 = 4;
/// Block sizes this build can read (it writes only [`BLOCK_SIZE`]).
const BLOCK_SIZE_MIN: u32 = 4 << 10;
const BLOCK_SIZE_MAX: u32 = 1 << 20;
const HEADER_CRC_AT: usize = 60;

const _: () = assert!(BLOCK_SIZE <= BLOCK_SIZE_MAX as u64 && BLOCK_SIZE >= BLOCK_SIZE_MIN as u64);
const _: () = assert!(BLOCK_SIZE.is_power_of_two());

/// The decoded fixed header of a blob file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobHeader {
    pub blob: BlobId,
    pub data_len: u64,
    pub data_crc: u32,
    pub block_bytes: u32,
}

impl BlobHeader {
    pub fn n_blocks(&self) -> u64 {
        self.data_len.div_ceil(self.block_bytes as u64)
    }
    /// Offset in the file of the first table entry.
    pub fn table_offset(&self) -> u64 {
        HEADER_BYTES
    }
    /// Offset in the file of the first data byte.
    pub fn data_offset(&self) -> u64 {
        HEADER_BYTES + self.n_blocks() * BLOCK_CRC_BYTES
    }
    pub fn file_bytes(&self) -> u64 {
        self.data_offset() + self.data_len
    }
    /// Data bytes of block `block_idx` (only the last block is short).
    pub fn block_len(&self, block_idx: u64) -> u64 {
        let start = block_idx * self.block_bytes as u64;
        (self.data_len - start).min(self.block_bytes as u64)
    }

    pub fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut out = [0u8; HEADER_BYTES as usize];
        out[0..8].copy_from_slice(&MAGIC);
        out[8] = VERSION;
        out[16..24].copy_from_slice(&self.blob.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        out[32..36].copy_from_slice(&self.data_crc.to_le_bytes());
        out[36..40].copy_from_slice(&self.block_bytes.to_le_bytes());
        let header_crc = crc32c::crc32c(&out[..HEADER_CRC_AT]);
        out[HEADER_CRC_AT..].copy_from_slice(&header_crc.to_le_bytes());
        out
    }

    /// Decodes and checks the header of the file that should hold `blob`. Any inconsistency,
    /// including a header naming another blob, is `Corrupt { block: None }`.
    pub fn decode(blob: BlobId, bytes: &[u8; HEADER_BYTES as usize]) -> Result<BlobHeader, BlobError> {
        let corrupt = BlobError::Corrupt { blob, block: None };
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        if bytes[0..8] != MAGIC || crc32c::crc32c(&bytes[..HEADER_CRC_AT]) != u32_at(HEADER_CRC_AT) {
            return Err(corrupt);
        }
        if bytes[8] != VERSION {
            // A checksummed header of a version we do not know: written by a newer build.
            return Err(BlobError::Invalid(format!("blob {blob}: unsupported format version {}", bytes[8])));
        }
        let header = BlobHeader {
            blob: BlobId(u64_at(16)),
            data_len: u64_at(24),
            data_crc: u32_at(32),
            block_bytes: u32_at(36),
        };
        let block_ok =
            (BLOCK_SIZE_MIN..=BLOCK_SIZE_MAX).contains(&header.block_bytes) && header.block_bytes.is_power_of_two();
        if header.blob != blob || header.data_len > BLOB_SIZE_MAX || !block_ok {
            return Err(corrupt);
        }
        Ok(header)
    }
}

/// File bytes a blob of `data_len` bytes occupies when written by this build.
pub fn file_bytes_for(data_len: u64) -> u64 {
    HEADER_BYTES + data_len.div_ceil(BLOCK_SIZE) * BLOCK_CRC_BYTES + data_len
}

/// The block table of `data` (cut in [`BLOCK_SIZE`] blocks) and the crc32c of the whole data,
/// computed in one pass over the bytes.
pub fn block_crcs(data: &[u8]) -> (Vec<u8>, u32) {
    let mut table = Vec::with_capacity(data.len().div_ceil(BLOCK_SIZE as usize) * BLOCK_CRC_BYTES as usize);
    let mut whole = CrcCombiner::new();
    for block in data.chunks(BLOCK_SIZE as usize) {
        let crc = crc32c::crc32c(block);
        table.extend_from_slice(&crc.to_le_bytes());
        whole.push(crc, block.len());
    }
    (table, whole.finish())
}

/// Builds the crc32c of a concatenation from the crcs of its consecutive pieces, so the whole-blob
/// checksum costs no second pass over the data. Pieces of [`BLOCK_SIZE`] bytes use a precomputed
/// table; other lengths fall back to `crc32c_combine`.
pub struct CrcCombiner {
    crc: u32,
}

impl CrcCombiner {
    pub fn new() -> CrcCombiner {
        CrcCombiner { crc: 0 }
    }

    pub fn push(&mut self, piece_crc: u32, piece_len: usize) {
        self.crc = if piece_len as u64 == BLOCK_SIZE {
            shift_by_block(self.crc) ^ piece_crc
        } else {
            crc32c::crc32c_combine(self.crc, piece_crc, piece_len)
        };
    }

    pub fn finish(&self) -> u32 {
        self.crc
    }
}

/// Appending `n` bytes to a message changes its crc by a linear map of the old crc (the "zeros
/// operator" that `crc32c_combine` builds for each call). For `n = BLOCK_SIZE` we build that map
/// once, as byte-indexed tables.
fn shift_by_block(crc: u32) -> u32 {
    static TABLES: OnceLock<[[u32; 256]; 4]> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        // The map's image of each single bit: combine(bit, crc of empty appendix = 0, n).
        let columns: [u32; 32] = std::array::from_fn(|bit| crc32c::crc32c_combine(1 << bit, 0, BLOCK_SIZE as usize));
        let mut tables = [[0u32; 256]; 4];
        for (byte_idx, table) in tables.iter_mut().enumerate() {
            for (value, entry) in table.iter_mut().enumerate() {
                *entry = (0..8).filter(|b| value & (1 << b) != 0).fold(0, |acc, b| acc ^ columns[byte_idx * 8 + b]);
            }
        }
        tables
    });
    let [b0, b1, b2, b3] = crc.to_le_bytes();
    tables[0][b0 as usize] ^ tables[1][b1 as usize] ^ tables[2][b2 as usize] ^ tables[3][b3 as usize]
}
