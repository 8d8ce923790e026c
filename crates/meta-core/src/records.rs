//! Records stored in the metadata tables. Each is encoded with `shoal_types::codec` (a format
//! version byte, then postcard).

use serde::{Deserialize, Serialize};
use shoal_types::attr::TimeNs;
use shoal_types::{BlobId, FileKind, InodeId, Policy, SessionId};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_inode: u64,
    pub next_blob: u64,
    pub next_session: u64,
    /// The cluster clock: the largest time any applied entry carried. Never goes back.
    pub now: TimeNs,
    pub files: u64,
    /// Bytes of committed blobs still referenced (one copy each): what `df` reports as used.
    pub blob_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRec {
    pub generation: u64,
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    pub atime: TimeNs,
    pub mtime: TimeNs,
    pub ctime: TimeNs,
    pub crtime: TimeNs,
    pub version: u64,
    /// Directories only: the parent (directories have exactly one).
    pub parent: Option<InodeId>,
    pub symlink_target: Option<String>,
    /// Directories only: next readdir cookie to hand out.
    pub next_cookie: u64,
    /// Directories only: number of entries.
    pub entries: u64,
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirentRec {
    pub inode: InodeId,
    pub kind: FileKind,
    pub cookie: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRec {
    pub client: String,
    pub expires: TimeNs,
    /// Replies below this sequence number were dropped from the table: such a request is refused,
    /// never executed again.
    pub pruned_below: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRec {
    pub inode: InodeId,
    pub session: SessionId,
    pub expires: TimeNs,
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRec {
    pub addr: String,
    pub capacity: u64,
    pub used: u64,
    pub last_heartbeat: TimeNs,
    pub alive: bool,
    pub blobs: u64,
}

/// How far the check of a returning server's blobs has come: ids below `next` are checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturningRec {
    pub next: u64,
    /// It went silent while being checked, and its blobs were queued for repair.
    pub failed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRec {
    /// Server last told to make a copy, and when; reassigned after `REPAIR_REASSIGN_NS`.
    pub assigned: Option<(u64, TimeNs)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcBlob {
    pub blob: BlobId,
}

/// A directory delegated to a session ([`shoal_types::meta_msg::MetaOp::Delegate`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationRec {
    pub session: SessionId,
    pub until: TimeNs,
}
