//! The on-disk store of immutable data blobs on a storage server. [`BlobStore`] keeps one
//! checksummed file per blob, writes it durably (temp file, sync, rename, directory sync) before a
//! put is acknowledged, verifies the checksum of every block a read touches, and accounts for the
//! space it uses. It does all I/O through the [`Disk`] trait: [`RealDisk`] in production,
//! [`MemDisk`] (which can crash, cut power and flip bytes) in tests and the simulator. The code is
//! synchronous; the server calls it from blocking threads.
//!
//! # Layout
//!
//! `<dir>/blobs/<low byte of id, 2 hex>/<id, 16 hex>`; a put in progress writes
//! `<id>.tmp.<seq>` in the same directory, and `open` removes such leftovers.
//!
//! # Blob file format (version 1)
//!
//! ```text
//! offset  size  field
//!      0     8  magic "SHOALBLB"
//!      8     1  format version = 1
//!      9     7  reserved, zero
//!     16     8  blob id (u64)
//!     24     8  data length in bytes (u64, at most BLOB_SIZE_MAX = 64 MiB)
//!     32     4  crc32c of the whole data
//!     36     4  block size in bytes (BLOCK_SIZE = 64 KiB)
//!     40    20  reserved, zero
//!     60     4  crc32c of header bytes 0..60
//!     64  4 * n block table: crc32c of each data block, n = ceil(data length / block size)
//!  64+4n   len the data; the last block may be short
//! ```
//!
//! Integers are little-endian; the file is exactly `64 + 4n + len` bytes. The block checksums sit
//! in one table between the header and the data rather than after each block, so the data stays
//! contiguous: a read of whole blocks is one `pread` straight into the caller's buffer plus one
//! small read of the table, and a put is two writes (header with table, then the data). The writer
//! has all the data before it writes, so the table can precede it. A damaged table entry makes its
//! block fail verification, which is the right outcome: the copy is no longer trustworthy.

mod disk;
mod error;
mod format;
mod mem_disk;
mod store;

pub use disk::{Disk, DiskFile, DiskSpace, RealDisk, RealFile};
pub use error::BlobError;
pub use format::{file_bytes_for, BlobHeader, HEADER_BYTES};
pub use mem_disk::{MemDisk, MemFile};
pub use store::BlobStore;

#[cfg(test)]
mod tests;
