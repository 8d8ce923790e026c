//! File attributes as the metadata service stores and returns them.

use crate::ids::{FileHandle, VersionNo};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => 0o100000,
            FileKind::Dir => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::Fifo => 0o010000,
            FileKind::CharDev => 0o020000,
            FileKind::BlockDev => 0o060000,
            FileKind::Socket => 0o140000,
        }
    }
}

/// Time in nanoseconds since the Unix epoch. Time enters replicated state only as a value carried
/// in a log entry, never from a local clock during apply.
pub type TimeNs = i64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub handle: FileHandle,
    pub kind: FileKind,
    /// Permission bits only (no `S_IFMT`).
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
    /// The committed content version (files) or the change counter (directories).
    pub version: VersionNo,
}

/// Which attributes a `setattr` changes. `size` truncates or extends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeNs>,
    pub mtime: Option<TimeNs>,
}

/// The acting user's identity, carried on every request apart from the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Credentials {
    pub const ROOT: Credentials = Credentials { uid: 0, gid: 0, groups: Vec::new() };

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}
