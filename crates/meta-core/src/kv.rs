//! The ordered key-value interface the state machine runs on. The server implements it over a
//! redb transaction; [`MemKv`] implements it over B-trees for unit tests and the simulator.
//! Keys are big-endian so that byte order is numeric order.

use std::collections::BTreeMap;

/// The tables of the metadata state. Adding a table is a format change only if old data must
/// move; a new empty table reads as empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Singletons: counters and the cluster clock.
    Meta,
    /// inode -> `InodeRec`
    Inodes,
    /// (parent, name) -> `DirentRec`
    Dirents,
    /// (parent, cookie) -> name: readdir order, stable while entries come and go.
    DirCookies,
    /// (inode, chunk index) -> slices
    Chunks,
    /// blob -> `BlobInfo`
    Blobs,
    /// session -> `SessionRec`
    Sessions,
    /// (session, seq) -> reply
    Replies,
    /// blob -> `IntentRec`: reserved ids a writer may still be putting.
    Intents,
    /// store -> `StoreRec`
    Stores,
    /// (store, blob) -> (): which blobs a server holds.
    StoreBlobs,
    /// (store, blob) -> (): deletions ordered by garbage collection, not yet confirmed.
    GcOrders,
    /// blob -> `RepairRec`: blobs with fewer healthy copies than their policy asks.
    Repair,
    /// (inode, session) -> open count
    Opens,
    /// (session, inode) -> (): index of `Opens` by session.
    SessionOpens,
    /// (inode, chunk index) -> (): chunks with many slices, for the compactor. (Added after
    /// format 1: tables are only appended, since snapshots tag rows with the table's index.)
    Fragmented,
    /// (inode, name) -> value: extended attributes.
    Xattrs,
    /// (inode, blob) -> (): blobs no version of an open file references any more, kept until
    /// its last close, since a reader may still read the version it opened.
    HeldBlobs,
    /// name -> `UserRec`: who can log in (with their derived keys).
    Users,
    /// (blob, store) -> (): a copy reported corrupt that was its blob's last one. It stays
    /// listed (its other blocks still read), the blob leaves the repair queue, and `status`
    /// counts it as unrepairable.
    Damaged,
    /// store -> `ReturningRec`: a server back after a failure or a restart whose list of blobs
    /// is being checked; fenced out (not alive) until the check ends.
    Returning,
    /// blob -> bytes: blobs the metadata holds itself ([`shoal_types::Policy::Inline`]).
    Inline,
    /// directory -> `DelegationRec`: directories delegated to a session ([`MetaOp::Delegate`]).
    Delegations,
    /// (session, end) -> first: inode numbers `first..end` reserved by a session and not used yet.
    InodeGrants,
}

pub const TABLES: [Table; 24] = [
    Table::Meta,
    Table::Inodes,
    Table::Dirents,
    Table::DirCookies,
    Table::Chunks,
    Table::Blobs,
    Table::Sessions,
    Table::Replies,
    Table::Intents,
    Table::Stores,
    Table::StoreBlobs,
    Table::GcOrders,
    Table::Repair,
    Table::Opens,
    Table::SessionOpens,
    Table::Fragmented,
    Table::Xattrs,
    Table::HeldBlobs,
    Table::Users,
    Table::Damaged,
    Table::Returning,
    Table::Inline,
    Table::Delegations,
    Table::InodeGrants,
];

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Inodes => "inodes",
            Table::Dirents => "dirents",
            Table::DirCookies => "dir_cookies",
            Table::Chunks => "chunks",
            Table::Blobs => "blobs",
            Table::Sessions => "sessions",
            Table::Replies => "replies",
            Table::Intents => "intents",
            Table::Stores => "stores",
            Table::StoreBlobs => "store_blobs",
            Table::GcOrders => "gc_orders",
            Table::Repair => "repair",
            Table::Opens => "opens",
            Table::SessionOpens => "session_opens",
            Table::Fragmented => "fragmented",
            Table::Xattrs => "xattrs",
            Table::HeldBlobs => "held_blobs",
            Table::Users => "users",
            Table::Damaged => "damaged",
            Table::Returning => "returning",
            Table::Inline => "inline",
            Table::Delegations => "delegations",
            Table::InodeGrants => "inode_grants",
        }
    }
}

pub type KvPair = (Vec<u8>, Vec<u8>);

pub trait KvRead {
    fn get(&self, table: Table, key: &[u8]) -> Option<Vec<u8>>;
    /// Entries with `start <= key < end` in key order, at most `limit`.
    fn scan(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Vec<KvPair>;
}

pub trait Kv: KvRead {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]);
    fn delete(&mut self, table: Table, key: &[u8]);
}

/// In-memory implementation for tests and the simulator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemKv {
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl KvRead for MemKv {
    fn get(&self, table: Table, key: &[u8]) -> Option<Vec<u8>> {
        self.tables.get(&table)?.get(key).cloned()
    }
    fn scan(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Vec<KvPair> {
        let Some(t) = self.tables.get(&table) else { return Vec::new() };
        if start >= end {
            return Vec::new();
        }
        t.range(start.to_vec()..end.to_vec()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl Kv for MemKv {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.tables.entry(table).or_default().insert(key.to_vec(), value.to_vec());
    }
    fn delete(&mut self, table: Table, key: &[u8]) {
        if let Some(t) = self.tables.get_mut(&table) {
            t.remove(key);
        }
    }
}

impl MemKv {
    pub fn len(&self, table: Table) -> usize {
        self.tables.get(&table).map_or(0, |t| t.len())
    }
    pub fn is_empty(&self) -> bool {
        self.tables.values().all(|t| t.is_empty())
    }
    /// Every row, tables in [`TABLES`] order, keys in order: what a snapshot holds.
    pub fn rows(&self) -> impl Iterator<Item = (Table, &[u8], &[u8])> {
        self.tables.iter().flat_map(|(t, rows)| rows.iter().map(move |(k, v)| (*t, k.as_slice(), v.as_slice())))
    }
}

/// Key builders. Every key is a concatenation of big-endian integers and raw name bytes.
pub mod key {
    pub fn u64(a: u64) -> Vec<u8> {
        a.to_be_bytes().to_vec()
    }
    pub fn u64_u64(a: u64, b: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(16);
        k.extend_from_slice(&a.to_be_bytes());
        k.extend_from_slice(&b.to_be_bytes());
        k
    }
    pub fn u64_name(a: u64, name: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + name.len());
        k.extend_from_slice(&a.to_be_bytes());
        k.extend_from_slice(name.as_bytes());
        k
    }
    /// First key after every key starting with `a`.
    pub fn prefix_end(a: u64) -> Vec<u8> {
        match a.checked_add(1) {
            Some(b) => b.to_be_bytes().to_vec(),
            None => vec![0xff; 9],
        }
    }
    pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
        let mut b = [0u8; 8];
        if let Some(s) = bytes.get(at..at + 8) {
            b.copy_from_slice(s);
        }
        u64::from_be_bytes(b)
    }
}
