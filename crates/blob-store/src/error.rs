//! The blob store's error boundary, and its single mapping to the shared [`FsError`] vocabulary.

use shoal_types::{BlobId, FsError};
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {blob} not found")]
    NotFound { blob: BlobId },
    /// The bytes handed to `put` do not match the checksum the writer computed: they were damaged
    /// on the way. Nothing was written; the writer should send them again.
    #[error("blob {blob}: data crc32c {actual:#010x} does not match the expected {expected:#010x}")]
    ChecksumMismatch { blob: BlobId, expected: u32, actual: u32 },
    /// The stored copy is damaged. `block` is the index of the first bad data block, or `None`
    /// when the header, the block table or the file length is bad. Either way this copy must not
    /// be served and should be replaced from another replica.
    #[error("blob {blob} is corrupt ({})", match .block { Some(b) => format!("block {b}"), None => "header".to_string() })]
    Corrupt { blob: BlobId, block: Option<u64> },
    /// Storing the blob would exceed the store's capacity. Both counts are zero when the
    /// filesystem itself ran out of space (ENOSPC) before the store's own accounting did.
    #[error("no space: need {needed_bytes} bytes, {available_bytes} available")]
    NoSpace { needed_bytes: u64, available_bytes: u64 },
    /// The blob is already stored with a different length or checksum. Blob ids are never reused,
    /// so this is a bug in the writer (or in id allocation), never a benign retry.
    #[error("blob {blob} already exists with different content")]
    Conflict { blob: BlobId },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("I/O error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for BlobError {
    /// A full disk is something the caller acts on (place the blob elsewhere), so it gets its own
    /// variant even when the filesystem, not our accounting, noticed it first.
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(nix::libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull {
            BlobError::NoSpace { needed_bytes: 0, available_bytes: 0 }
        } else {
            BlobError::Io(e)
        }
    }
}

impl BlobError {
    /// Whether the stored copy is damaged (and should be repaired from another replica).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, BlobError::Corrupt { .. })
    }
}

impl From<BlobError> for FsError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound { .. } => FsError::BlobNotFound,
            e @ (BlobError::ChecksumMismatch { .. } | BlobError::Corrupt { .. }) => FsError::Corrupt(e.to_string()),
            BlobError::NoSpace { .. } => FsError::NoSpace,
            e @ BlobError::Conflict { .. } => FsError::Internal(e.to_string()),
            BlobError::Invalid(msg) => FsError::Invalid(msg),
            BlobError::Io(e) => FsError::Io(e.to_string()),
        }
    }
}
