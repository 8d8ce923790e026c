//! Every identifier has its own newtype; none crosses a crate boundary as a bare integer.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        pub struct $name(pub $inner);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A metadata (Raft) node.
    MetaNodeId(u64)
);
id_type!(
    /// A storage server.
    StoreId(u64)
);
id_type!(
    /// A client session: the unit of exactly-once bookkeeping and of open-file ownership.
    SessionId(u64)
);
id_type!(
    /// A data blob: immutable bytes on storage servers. Allocated by `meta` from a replicated
    /// counter, so a blob id is never handed to two writers or two inodes.
    BlobId(u64)
);
id_type!(
    /// The generation of an inode number: bumped each time the number is reused.
    Generation(u64)
);
id_type!(
    /// A committed version of a file's contents.
    VersionNo(u64)
);
id_type!(
    /// A Raft term as seen by storage servers (fencing of deposed leaders).
    Term(u64)
);
id_type!(
    /// A volume (one namespace). Shoal serves volume 1 today.
    VolumeId(u32)
);

/// An inode number. The top [`InodeId::SHARD_BITS`] bits name the metadata shard that owns it,
/// so splitting the namespace into several Raft groups later changes no format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InodeId(pub u64);

impl InodeId {
    pub const SHARD_BITS: u32 = 8;
    pub const ROOT: InodeId = InodeId(1);

    pub fn new(shard: u8, local: u64) -> InodeId {
        assert!(local < (1u64 << (64 - Self::SHARD_BITS)), "inode local part overflows");
        InodeId(((shard as u64) << (64 - Self::SHARD_BITS)) | local)
    }
    pub fn shard(self) -> u8 {
        (self.0 >> (64 - Self::SHARD_BITS)) as u8
    }
    pub fn local(self) -> u64 {
        self.0 & ((1u64 << (64 - Self::SHARD_BITS)) - 1)
    }
}

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What every operation on an existing file names: a stale handle (the inode is gone, or its
/// number was reused with a new generation) gets `FsError::Stale`, never another file's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileHandle {
    pub volume: VolumeId,
    pub inode: InodeId,
    pub generation: Generation,
}

impl FileHandle {
    pub const ROOT: FileHandle =
        FileHandle { volume: VolumeId(1), inode: InodeId::ROOT, generation: Generation(1) };
}

impl fmt::Display for FileHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.volume, self.inode, self.generation)
    }
}

/// Exactly-once key of a non-idempotent request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestKey {
    pub session: SessionId,
    pub seq: u64,
}
