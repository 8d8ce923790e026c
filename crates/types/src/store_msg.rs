//! The storage servers' protocol. A request header travels with an optional raw payload (the
//! blob bytes), so bulk data is never copied through the serializer.

use crate::ids::{BlobId, Term};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreRequest {
    /// Store the payload as `blob` (idempotent: same id, same bytes). `crc` is the CRC32C of the
    /// whole payload; the server checks it before acknowledging. Acknowledged only once fsynced.
    Put { blob: BlobId, crc: u32 },
    /// Read `len` bytes at `offset` of `blob`; every block touched is verified.
    Get { blob: BlobId, offset: u64, len: u64 },
    /// Delete on a garbage-collection order of the leader of `term`.
    Delete { blob: BlobId, term: Term },
    /// Capacity and usage of this server.
    Stat,
    /// Walk every stored block and verify its checksum.
    Verify { blob: BlobId },
    /// A client's `Put`, `Get` or `Verify` with the capability that allows it (clients may send
    /// nothing else; storage servers and metadata nodes send requests bare).
    Capable { cap: Capability, req: Box<StoreRequest> },
}

/// Signed by the metadata service: rights on some blobs until a time (a `shoal-auth` format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub body: Vec<u8>,
    pub sig: Vec<u8>,
}

impl StoreRequest {
    /// The request wrapped with `cap`, if there is one.
    pub fn with_cap(self, cap: Option<&Capability>) -> StoreRequest {
        match cap {
            Some(c) => StoreRequest::Capable { cap: c.clone(), req: Box::new(self) },
            None => self,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreReply {
    Ok,
    /// The payload carries the bytes.
    Data { len: u64 },
    Stat { capacity: u64, used: u64, blobs: u64, scrub: crate::meta_msg::ScrubStatus },
}

pub type StoreResponse = Result<StoreReply, crate::FsError>;
