//! The metadata service's protocol: what clients and storage servers ask of `meta`.
//! Reads are answered from the state machine after one leadership check; every other operation
//! goes through the Raft log as a command (see `shoal-meta-core`).

use crate::store_msg::Capability;
use crate::attr::{Attr, Credentials, FileKind, SetAttr, TimeNs};
use crate::error::FsError;
use crate::ids::*;
use crate::layout::{ChunkIdx, Policy, Slice};
use serde::{Deserialize, Serialize};
use crate::ByteBuf;

/// Longest name of one directory entry.
pub const NAME_LEN_MAX: usize = 255;
/// Most directory entries returned by one `Readdir`.
pub const READDIR_LIMIT_MAX: u32 = 4096;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetaRequest {
    /// Zero before a session is opened (only `OpenSession` and reads are allowed then).
    pub session: SessionId,
    /// Sequence number for exactly-once; zero for reads. Strictly increasing per session.
    pub seq: u64,
    pub cred: Credentials,
    pub op: MetaOp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaOp {
    // Sessions.
    OpenSession { client: String },
    RenewSession,
    CloseSession,

    // Reads (linearizable, not logged).
    Lookup { parent: FileHandle, name: String },
    GetAttr { handle: FileHandle },
    Readdir { dir: FileHandle, cookie: u64, limit: u32 },
    Readlink { handle: FileHandle },
    GetLayout { handle: FileHandle, first_chunk: ChunkIdx, n_chunks: u64 },
    Statfs,
    Status,

    // Namespace mutations.
    SetAttr { handle: FileHandle, set: SetAttr },
    Create { parent: FileHandle, name: String, kind: FileKind, mode: u32, rdev: u32, exclusive: bool },
    Mkdir { parent: FileHandle, name: String, mode: u32 },
    Symlink { parent: FileHandle, name: String, target: String },
    Link { handle: FileHandle, new_parent: FileHandle, new_name: String },
    Unlink { parent: FileHandle, name: String },
    Rmdir { parent: FileHandle, name: String },
    Rename { parent: FileHandle, name: String, new_parent: FileHandle, new_name: String, no_replace: bool },
    /// Record that this session holds the file open (keeps an unlinked file alive).
    Open { handle: FileHandle },
    Release { handle: FileHandle },

    // Data path.
    /// Reserve blob ids and placement for `bytes` of new data to `handle`.
    AllocBlobs { handle: FileHandle, count: u32, bytes: u64 },
    /// Publish a new file version: slices laid over the named chunks, new size and mtime.
    Commit(Commit),

    // Storage servers.
    RegisterStore { store: StoreId, addr: String, capacity: u64, used: u64 },
    StoreHeartbeat(StoreHeartbeat),

    // Added after format 1: new variants go at the end, since the encoding numbers variants in
    // order and logs, snapshots and reply tables keep old encodings.
    /// Set the redundancy policy of a directory (inherited by what is created in it later) or
    /// of a file that holds no data yet.
    SetPolicy { handle: FileHandle, policy: Policy },
    /// Chunks made of many slices, for the compactor (a read).
    FragmentedChunks { limit: u32 },
    /// Replace a chunk's slices by one slice of `blob`, which holds the same bytes; refused with
    /// `VersionConflict` if the chunk no longer has exactly the slices `replaces`.
    CompactChunk { handle: FileHandle, idx: ChunkIdx, replaces: Vec<Slice>, blob: NewBlob },
    /// Extended attributes. `flags`: 1 = create only (fail if it exists), 2 = replace only.
    SetXattr { handle: FileHandle, name: String, value: Vec<u8>, flags: u32 },
    RemoveXattr { handle: FileHandle, name: String },
    GetXattr { handle: FileHandle, name: String },
    ListXattr { handle: FileHandle },
    /// The callback channel (long poll, to the leader, never logged): acknowledge the callbacks
    /// in `acks` (their invalidations are done) and wait briefly for new ones. A session that
    /// polls gets cache promises on what it looks up (answers wrapped in [`MetaReply::Promised`]).
    /// `term`: the leader term of the promises the session still holds, 0 if none.
    WatchCallbacks { acks: Vec<u64>, term: u64 },
    /// `Create` of a regular file followed by `Open` of it, in one command (one log write).
    CreateOpen { parent: FileHandle, name: String, mode: u32, exclusive: bool },
    /// Register a user who can log in (the admin only). The record holds the key derived from
    /// the password, never the password.
    AddUser(UserRec),
    /// Remove a user (the admin only); tickets already issued run until they expire.
    RemoveUser { name: String },
    /// Names and ids of the registered users (no keys).
    ListUsers,
    /// A storage server found its copies of `blobs` corrupt (by scrubbing, or serving a read):
    /// each stops counting as a copy and is rebuilt from a good one, unless it is the last.
    /// Answered with [`MetaReply::Unrepairable`].
    ReportCorrupt { store: StoreId, blobs: Vec<BlobId> },
    /// Ask every storage server to scrub all it holds now (the admin only); answered with
    /// [`MetaReply::ScrubEpoch`], which each server reports once a pass begun after it is done.
    RequestScrub,
    /// Part of a returning storage server's list of the blobs it holds, asked for by
    /// [`StoreOrders::inventory_from`]: `blobs` are every blob it holds from id `from` up to
    /// the last one listed (to the end when `done`), in id order. Until the whole list is
    /// checked against where the metadata says copies are, the server is fenced out: no reads
    /// are sent to it, no writes or repairs placed on it.
    StoreInventory { store: StoreId, from: u64, blobs: Vec<BlobId>, done: bool },
    /// [`MetaOp::CreateOpen`] that also reserves `count` blob ids for `bytes` of data, as
    /// [`MetaOp::AllocBlobs`] would, so a new file is written without another round trip for
    /// its intent. Answered with [`MetaReply::Created`]; the intent is left out where
    /// `AllocBlobs` would be refused (no write permission, no space): the writer asks for one
    /// later and hears why.
    CreateOpenReserve { parent: FileHandle, name: String, mode: u32, exclusive: bool, count: u32, bytes: u64 },
    /// [`MetaOp::Commit`] whose `size` is a floor: the file grows to it if shorter and never
    /// shrinks, decided when the commit applies (a writer need not read the size first).
    CommitGrow(Commit),
    /// The writer gave up on these blobs of its intents (their put failed): copies some servers
    /// may hold are deleted now, not when the intent would have expired.
    AbandonBlobs { blobs: Vec<BlobId> },
    /// [`MetaOp::Commit`] (or, with `grow`, [`MetaOp::CommitGrow`]) of a small write whose
    /// bytes travel in the command and stay with the metadata: `data` holds the bytes of each
    /// blob of `commit.blobs` named there, which then has no storage server (`stores` empty).
    /// Such blobs hold at most [`INLINE_BYTES_MAX`] in all and their slices lie within the
    /// first [`INLINE_BYTES_MAX`] bytes of the file, so a file keeps at most that much in the
    /// metadata. They are durable once the command is (on a majority of metadata nodes) and
    /// come back with the layout ([`MetaReply::Inlined`]): a small file is written and read
    /// without a storage server's round trip.
    CommitInline { commit: Commit, grow: bool, data: Vec<(BlobId, ByteBuf)> },
    /// Ask for the *delegation* of a directory for [`DELEGATION_LEASE_NS`] (asked again to
    /// renew): until it ends or is given back, no other session reads or changes the
    /// directory's entries (their requests get [`FsError::Delegated`]; the leader then calls
    /// the holder back with [`Invalidate::Recall`] and they retry once it returned the
    /// delegation or the lease ran out). The holder may then create files in it on its own,
    /// with inode numbers it reserved ([`MetaOp::ReserveInodes`]), and write them back later
    /// ([`MetaOp::CreateAt`]). Refused for a directory of more than
    /// [`DELEGATION_ENTRIES_MAX`] entries, without write permission, and (with `Delegated`)
    /// while another session holds it. Answered with [`MetaReply::Delegated`].
    Delegate { dir: FileHandle },
    /// Give a delegation back (once what was created under it is written back).
    ReturnDelegation { dir: FileHandle },
    /// Reserve `count` (at most [`RESERVED_INODES_MAX`]) inode numbers for this session's
    /// [`MetaOp::CreateAt`]; each is used once. Answered with [`MetaReply::Inodes`].
    ReserveInodes { count: u32 },
    /// Create a regular file (exclusively) with an inode number this session reserved and the
    /// timestamps `time` it was created at under a delegation; `open`: also open it, as
    /// `CreateOpen` does; `count`/`bytes`: also reserve blob ids, as `CreateOpenReserve` does.
    /// Answered with [`MetaReply::Created`].
    CreateAt { parent: FileHandle, name: String, inode: InodeId, mode: u32, time: TimeNs, open: bool, count: u32, bytes: u64 },
    /// [`MetaOp::CreateAt`] (without blob ids) of a file whose first version is `data` (at
    /// most [`INLINE_BYTES_MAX`]), held by the metadata service as `CommitInline` would: a
    /// small file created under a delegation and closed is written back in one command.
    /// Answered with [`MetaReply::Created`] (the attributes after that first version).
    CreateAtWith { parent: FileHandle, name: String, inode: InodeId, mode: u32, time: TimeNs, open: bool, data: ByteBuf },
    /// [`MetaOp::Open`] for reading, answered with the layout of the file's first
    /// [`OPEN_LAYOUT_CHUNKS`] chunks (its bytes too when the metadata service holds them): a
    /// small file is read with no other round trip. The leader answers from its state as soon
    /// as the open is sequenced in the log, before it commits, unless a change that may remove
    /// the file's last name is on its way (then after the commit, with [`MetaReply::Attr`]).
    OpenRead { handle: FileHandle },
    /// [`MetaOp::Readdir`] with each entry's attributes (a page of at most
    /// [`READDIR_PLUS_LIMIT_MAX`]). For a watching session the answer is promised as a lookup of
    /// every name in it would be: the directory and each child listed.
    ReaddirPlus { dir: FileHandle, cookie: u64, limit: u32 },
    /// [`MetaOp::Mkdir`], the new (empty) directory delegated to the session at once, as
    /// [`MetaOp::Delegate`] would: answered with [`MetaReply::Delegated`] (its attributes), or
    /// with [`MetaReply::Attr`] (made, not delegated) when its mode lets the maker not create
    /// in it.
    MkdirDelegated { parent: FileHandle, name: String, mode: u32 },
}

/// Most entries of one [`MetaOp::ReaddirPlus`] page.
pub const READDIR_PLUS_LIMIT_MAX: u32 = 1024;

/// Chunks of layout a [`MetaOp::OpenRead`] answers with (1 GiB of file).
pub const OPEN_LAYOUT_CHUNKS: u64 = 16;

/// How long a directory delegation lasts from when it is granted ([`MetaOp::Delegate`]).
pub const DELEGATION_LEASE_NS: TimeNs = 5_000_000_000;
/// Largest directory (in entries) that may be delegated: its holder keeps all its names.
pub const DELEGATION_ENTRIES_MAX: u64 = 10_000;
/// Most inode numbers one [`MetaOp::ReserveInodes`] reserves.
pub const RESERVED_INODES_MAX: u32 = 4096;

/// The most bytes of a file the metadata service holds itself ([`MetaOp::CommitInline`]).
pub const INLINE_BYTES_MAX: u64 = 64 << 10;

/// A registered user, as stored by the metadata service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRec {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub salt: Vec<u8>,
    pub kdf: KdfParams,
    /// argon2id(password, salt, kdf): the user's long-term key.
    pub key: [u8; 32],
}

/// Parameters of argon2id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

/// A registered user as anyone may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Longest extended attribute value.
pub const XATTR_VALUE_MAX: usize = 64 << 10;
/// Extended attributes per inode.
pub const XATTRS_PER_INODE_MAX: usize = 1024;

impl MetaOp {
    /// Reads are served without a log entry.
    /// The storage server a request speaks for, if it is one only storage servers send (without
    /// a ticket: their certificate says who they are).
    pub fn from_store(&self) -> Option<StoreId> {
        match self {
            MetaOp::RegisterStore { store, .. } | MetaOp::ReportCorrupt { store, .. } | MetaOp::StoreInventory { store, .. } => Some(*store),
            MetaOp::StoreHeartbeat(hb) => Some(hb.store),
            _ => None,
        }
    }

    /// Whether carrying it out may change a name or what a read of attributes answers (every
    /// request but reads and a few that only hold or reserve things).
    pub fn may_change_names_or_attrs(&self) -> bool {
        !self.is_read()
            && !matches!(
                self,
                MetaOp::OpenRead { .. }
                    | MetaOp::Release { .. }
                    | MetaOp::OpenSession { .. }
                    | MetaOp::RenewSession
                    | MetaOp::AllocBlobs { .. }
                    | MetaOp::AbandonBlobs { .. }
                    | MetaOp::ReserveInodes { .. }
            )
    }

    pub fn is_read(&self) -> bool {
        matches!(
            self,
            MetaOp::Lookup { .. }
                | MetaOp::GetAttr { .. }
                | MetaOp::Readdir { .. }
                | MetaOp::ReaddirPlus { .. }
                | MetaOp::Readlink { .. }
                | MetaOp::GetLayout { .. }
                | MetaOp::Statfs
                | MetaOp::Status
                | MetaOp::FragmentedChunks { .. }
                | MetaOp::GetXattr { .. }
                | MetaOp::ListXattr { .. }
                | MetaOp::WatchCallbacks { .. }
                | MetaOp::ListUsers
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub handle: FileHandle,
    /// The version the writer started from; `None` commits over whatever is current (last close
    /// wins). A fencing writer names it and gets `VersionConflict` if another commit came first.
    pub base_version: Option<VersionNo>,
    pub chunks: Vec<ChunkUpdate>,
    /// New file size (the writer's view after its writes).
    pub size: u64,
    pub mtime: TimeNs,
    /// Blobs written for this commit, with the servers holding a durable copy.
    pub blobs: Vec<NewBlob>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkUpdate {
    pub idx: ChunkIdx,
    /// Laid over the chunk's existing slices, in order.
    pub slices: Vec<Slice>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewBlob {
    pub blob: BlobId,
    pub len: u64,
    pub crc: u32,
    pub stores: Vec<StoreId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHeartbeat {
    pub store: StoreId,
    pub addr: String,
    pub capacity: u64,
    pub used: u64,
    /// Blobs deleted on the order of garbage collection since the last heartbeat.
    pub deleted: Vec<BlobId>,
    /// Blobs this server now holds durably after a repair order.
    pub repaired: Vec<BlobId>,
}

/// A storage server's scrubbing, as its `Stat` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStatus {
    /// The highest scrub request ([`MetaOp::RequestScrub`]) a finished pass covers.
    pub epoch_done: u64,
    pub passes_done: u64,
    pub running: bool,
    /// Progress of the running pass (or of the last one).
    pub blobs_checked: u64,
    pub blobs_total: u64,
    pub bytes_checked: u64,
    pub bytes_total: u64,
    /// Corrupt copies found since the server started (scrubbing or serving reads).
    pub corrupt_found: u64,
    /// Of those, copies that were the last of their blob (kept, reported as lost).
    pub unrepairable: u64,
    /// Corrupt copies found and not yet reported to the metadata service.
    pub unreported: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaReply {
    Ok,
    Session { session: SessionId, lease_ms: u64 },
    Attr(Attr),
    Dir { entries: Vec<DirEntry>, eof: bool },
    Target(String),
    Layout(Layout),
    Statfs(Statfs),
    Status(ClusterStatus),
    Intent(Intent),
    /// Answer to a storage heartbeat: orders for that server, fenced by `term`.
    StoreOrders(StoreOrders),
    Fragmented(Vec<(FileHandle, ChunkIdx)>),
    XattrValue(Vec<u8>),
    XattrNames(Vec<String>),
    /// Pending callbacks for the polling session. `term` names the leader that holds this
    /// session's promises: when it changes, every promise from before is void.
    Callbacks { term: u64, lease_ms: u64, callbacks: Vec<Callback> },
    /// A read answer that comes with a cache promise: until `lease_ms` after the request was
    /// sent, the session is told (by a callback) before anything it read here changes.
    Promised { lease_ms: u64, reply: Box<MetaReply> },
    Users(Vec<UserInfo>),
    /// A layout or an intent with the capability for its blobs (reading them, or putting them).
    Capable { cap: Capability, reply: Box<MetaReply> },
    /// Answer to [`MetaOp::ReportCorrupt`]: the blobs whose reported copy was their last
    /// healthy one (kept, since its other blocks still read; the data of the bad block is lost).
    Unrepairable(Vec<BlobId>),
    /// Answer to [`MetaOp::RequestScrub`].
    ScrubEpoch(u64),
    /// Answer to [`MetaOp::CreateOpenReserve`].
    Created { attr: Attr, intent: Option<Intent> },
    /// A layout with the bytes of its blobs that the metadata service holds itself
    /// ([`MetaOp::CommitInline`]); the client moves them into the layout's [`BlobLocation`]s.
    Inlined { data: Vec<(BlobId, ByteBuf)>, reply: Box<MetaReply> },
    /// Answer to [`MetaOp::Delegate`]: the directory's attributes when it was granted; the
    /// delegation ends [`DELEGATION_LEASE_NS`] after the request was sent, at the latest.
    Delegated { attr: Attr },
    /// Answer to [`MetaOp::ReserveInodes`]: `first` and the `count - 1` numbers after it.
    Inodes { first: InodeId, count: u32 },
    /// Answer to [`MetaOp::ReaddirPlus`].
    DirPlus { entries: Vec<DirPlusEntry>, eof: bool },
}

impl MetaReply {
    /// Move the capability of a [`MetaReply::Capable`] into the layout or intent it came with,
    /// and the bytes of a [`MetaReply::Inlined`] into the locations of its blobs.
    pub fn attach_capability(self) -> MetaReply {
        if let MetaReply::Inlined { data, reply } = self {
            return match reply.attach_capability() {
                MetaReply::Layout(mut l) => {
                    for (blob, bytes) in data {
                        if let Some(loc) = l.blobs.iter_mut().find(|b| b.blob == blob) {
                            loc.inline = Some(bytes::Bytes::from(bytes.into_vec()));
                        }
                    }
                    MetaReply::Layout(l)
                }
                other => other,
            };
        }
        let MetaReply::Capable { cap, reply } = self else { return self };
        let cap = std::sync::Arc::new(cap);
        match *reply {
            MetaReply::Layout(mut l) => {
                for b in &mut l.blobs {
                    b.cap = Some(cap.clone());
                }
                MetaReply::Layout(l)
            }
            MetaReply::Intent(mut i) => {
                i.cap = Some(cap);
                MetaReply::Intent(i)
            }
            MetaReply::Created { attr, intent: Some(mut i) } => {
                i.cap = Some(cap);
                MetaReply::Created { attr, intent: Some(i) }
            }
            other => other,
        }
    }
}

/// One callback to one session: what it must drop from its caches, acknowledged by `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    pub id: u64,
    pub items: Vec<Invalidate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Invalidate {
    /// Attributes and data of an inode changed.
    Inode(InodeId),
    /// The entry `name` of directory `parent` changed (created, removed or renamed over), and
    /// with it the directory's attributes.
    Entry { parent: InodeId, name: String },
    /// Not an invalidation: another session needs the delegated directory. Write back what
    /// was created in it, give the delegation back ([`MetaOp::ReturnDelegation`]), then
    /// acknowledge.
    Recall(InodeId),
}

impl Invalidate {
    /// The inode whose promise holders hear about this change.
    pub fn inode(&self) -> InodeId {
        match self {
            Invalidate::Inode(i) => *i,
            Invalidate::Entry { parent, .. } => *parent,
            Invalidate::Recall(dir) => *dir,
        }
    }
}

impl MetaOp {
    /// What a mutation changes, as the holders of cache promises must hear it.
    pub fn invalidates(&self) -> Vec<Invalidate> {
        let entry = |p: &FileHandle, n: &String| Invalidate::Entry { parent: p.inode, name: n.clone() };
        match self {
            MetaOp::SetAttr { handle, .. }
            | MetaOp::Commit(Commit { handle, .. })
            | MetaOp::CommitGrow(Commit { handle, .. })
            | MetaOp::CommitInline { commit: Commit { handle, .. }, .. } => {
                vec![Invalidate::Inode(handle.inode)]
            }
            MetaOp::SetXattr { handle, .. } | MetaOp::RemoveXattr { handle, .. } => vec![Invalidate::Inode(handle.inode)],
            MetaOp::Create { parent, name, .. }
            | MetaOp::CreateOpen { parent, name, .. }
            | MetaOp::CreateOpenReserve { parent, name, .. }
            | MetaOp::CreateAt { parent, name, .. }
            | MetaOp::CreateAtWith { parent, name, .. }
            | MetaOp::Mkdir { parent, name, .. }
            | MetaOp::MkdirDelegated { parent, name, .. }
            | MetaOp::Symlink { parent, name, .. }
            | MetaOp::Unlink { parent, name }
            | MetaOp::Rmdir { parent, name } => vec![entry(parent, name)],
            MetaOp::Link { handle, new_parent, new_name } => vec![Invalidate::Inode(handle.inode), entry(new_parent, new_name)],
            MetaOp::Rename { parent, name, new_parent, new_name, .. } => vec![entry(parent, name), entry(new_parent, new_name)],
            // From the grant on, the holder changes the directory's entries without telling
            // the leader: whoever may answer from a listing of it must drop that listing.
            MetaOp::Delegate { dir } => vec![Invalidate::Inode(dir.inode)],
            _ => Vec::new(),
        }
    }
}

pub type MetaResponse = Result<MetaReply, FsError>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub kind: FileKind,
    pub handle: FileHandle,
    /// Resume a listing after this entry by passing this cookie.
    pub cookie: u64,
}

/// An entry of [`MetaReply::DirPlus`]: a name with the attributes of what it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPlusEntry {
    pub name: String,
    pub attr: Attr,
    /// Resume a listing after this entry by passing this cookie.
    pub cookie: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub attr: Attr,
    pub chunks: Vec<(ChunkIdx, Vec<Slice>)>,
    pub blobs: Vec<BlobLocation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLocation {
    pub blob: BlobId,
    pub len: u64,
    pub crc: u32,
    pub stores: Vec<StoreAddr>,
    /// The capability to read it, set by the client from the reply that carried the layout
    /// ([`MetaReply::Capable`]); never encoded.
    #[serde(skip)]
    pub cap: Option<std::sync::Arc<Capability>>,
    /// The blob's bytes when the metadata service holds them (no storage server does), set by
    /// the client from [`MetaReply::Inlined`]; never encoded.
    #[serde(skip)]
    pub inline: Option<bytes::Bytes>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreAddr {
    pub store: StoreId,
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub blobs: Vec<BlobId>,
    /// Distinct servers to put every blob to, best first.
    pub targets: Vec<StoreAddr>,
    pub policy: Policy,
    /// Commit must happen before this time (ns, cluster clock) or it is refused.
    pub expires: TimeNs,
    /// The capability to put the blobs, set by the client from [`MetaReply::Capable`]; never
    /// encoded.
    #[serde(skip)]
    pub cap: Option<std::sync::Arc<Capability>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statfs {
    pub capacity: u64,
    pub used: u64,
    pub available: u64,
    pub files: u64,
    pub block_size: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreOrders {
    pub term: Term,
    pub delete: Vec<BlobId>,
    pub repair: Vec<RepairOrder>,
    /// The latest scrub request: a server that has not scrubbed for it starts a pass now.
    pub scrub_epoch: u64,
    /// The server is back after a failure or a restart: send [`MetaOp::StoreInventory`] from
    /// this blob id on. It is fenced out until the list is checked.
    pub inventory_from: Option<u64>,
}

/// Make a copy of `blob` on the receiving server, fetching it from one of `sources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairOrder {
    pub blob: BlobId,
    pub len: u64,
    pub crc: u32,
    pub sources: Vec<StoreAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: Option<MetaNodeId>,
    pub term: u64,
    pub last_applied: u64,
    pub members: Vec<MemberStatus>,
    pub stores: Vec<StoreStatus>,
    pub files: u64,
    pub blobs: u64,
    pub blobs_under_replicated: u64,
    pub blobs_awaiting_gc: u64,
    /// Blobs whose last copy was found corrupt (kept, not in the repair queue).
    pub blobs_damaged: u64,
    /// Queued repairs that no live server can serve: every copy is on a failed server.
    pub blobs_stranded: u64,
    pub sessions: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: MetaNodeId,
    pub addr: String,
    pub voter: bool,
    /// Log index this member is known to have matched (leader's view).
    pub matched: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub id: StoreId,
    pub addr: String,
    pub capacity: u64,
    pub used: u64,
    pub last_heartbeat: TimeNs,
    pub alive: bool,
    pub blobs: u64,
    /// Back after a failure or restart, its list of blobs not yet checked: fenced out meanwhile.
    pub checking: bool,
}

/// What travels on a metadata server's port: client requests, and Raft messages between metadata
/// nodes. A Raft message itself (an openraft type) is encoded in the frame's payload, so this
/// crate does not depend on openraft.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaWireReq {
    /// A request without a ticket: accepted only from storage servers (their registration and
    /// heartbeats, authenticated by their certificates).
    Client(MetaRequest),
    Raft(RaftRpc),
    /// A client request with its ticket and authenticator; the identity the metadata service
    /// acts for comes from the ticket.
    Authed { auth: RequestAuth, req: MetaRequest },
    /// The ticket exchanges (login, service ticket, renewal).
    Auth(AuthRequest),
}

/// Proof that a request comes from a ticket's holder: the ticket for the metadata service and an
/// authenticator (time and digest of the encoded `MetaRequest`, sealed with the ticket's
/// session key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAuth {
    pub ticket: Vec<u8>,
    pub authenticator: Vec<u8>,
}

/// The ticket exchanges; the opaque byte strings are `shoal-auth` formats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRequest {
    /// The salt and key parameters of `user`.
    Challenge { user: String },
    /// A proof of the user's key; answered with a ticket-granting ticket.
    Login { user: String, proof: Vec<u8> },
    /// A ticket for the metadata service, against a ticket-granting ticket.
    Service { tgt: Vec<u8>, authenticator: Vec<u8> },
    /// A new ticket-granting ticket for one about to expire (up to its renewal limit).
    Renew { tgt: Vec<u8>, authenticator: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthReply {
    Challenge { salt: Vec<u8>, kdf: KdfParams },
    /// A grant sealed for the client (with its key, or with the ticket-granting ticket's
    /// session key).
    Grant(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaWireResp {
    Client(MetaResponse),
    /// The Raft reply is in the payload.
    Raft,
    /// The request was refused before reaching Raft (for example: not from a metadata node).
    Refused(FsError),
    Auth(Result<AuthReply, FsError>),
}
