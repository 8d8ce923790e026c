//! The metadata state machine of Shoal: `apply(command) -> reply` over an ordered key-value
//! store ([`kv::Kv`]). It owns the namespace (inodes, directory entries, file layouts), sessions
//! and their exactly-once reply table, write intents, the storage-server registry, garbage
//! collection and repair queues.
//!
//! Architecture invariant: this crate does no I/O, reads no clock and iterates no hash map. Time
//! enters only as [`Command::now`], chosen by the leader when it proposes the entry, so every
//! replica that applies the same log reaches the same state, byte for byte.

pub mod kv;
pub mod perm;
pub mod records;

mod apply;
mod read;

pub use apply::apply;
pub use read::read;

use serde::{Deserialize, Serialize};
use shoal_types::attr::TimeNs;
use shoal_types::meta_msg::MetaRequest;

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's clock when it proposed the entry (ns since the epoch).
    pub now: TimeNs,
    pub kind: CommandKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommandKind {
    /// Create the root directory and fix the cluster parameters. A no-op once done.
    Bootstrap(Params),
    /// A client's or storage server's request that changes state.
    Request(MetaRequest),
    /// Periodic housekeeping: expire sessions and intents, declare silent servers failed.
    Tick,
    /// (Added after format 1.) The leader's record of the cache promises it may have given:
    /// none lasts past `until`, and only `watchers` hold any. A new leader waits for these
    /// sessions to come back to it (or for `until`) before a change may skip their callbacks.
    PromiseHorizon(PromiseHorizon),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromiseHorizon {
    pub until: TimeNs,
    pub watchers: Vec<shoal_types::SessionId>,
}

/// The client name a session was opened with (the metadata service prefixes it with the
/// principal that opened it), if the session is alive.
pub fn session_client(kv: &impl kv::KvRead, session: shoal_types::SessionId) -> Option<String> {
    apply::load::<records::SessionRec>(kv, kv::Table::Sessions, &kv::key::u64(session.0)).map(|s| s.client)
}

/// A registered user's record (with the key: for the key distribution centre only).
pub fn user(kv: &impl kv::KvRead, name: &str) -> Option<shoal_types::meta_msg::UserRec> {
    apply::load(kv, kv::Table::Users, name.as_bytes())
}

/// The last promise horizon recorded in the log, if any.
pub fn promise_horizon(kv: &impl kv::KvRead) -> Option<PromiseHorizon> {
    apply::load(kv, kv::Table::Meta, apply::PROMISE_HORIZON_KEY)
}

/// Cluster parameters, fixed at bootstrap so that every replica applies the same rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub session_lease_ns: i64,
    pub intent_lease_ns: i64,
    pub store_dead_after_ns: i64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            session_lease_ns: 60_000_000_000,
            intent_lease_ns: 600_000_000_000,
            store_dead_after_ns: 5_000_000_000,
        }
    }
}

/// Replies kept per session for retries.
pub const REPLIES_PER_SESSION_MAX: u64 = 4096;
/// New blobs named by one commit (or reserved by one intent).
pub const BLOBS_PER_COMMIT_MAX: usize = 4096;
/// Orders handed to a storage server per heartbeat.
pub const ORDERS_PER_HEARTBEAT_MAX: usize = 256;
/// Repairs given to one server per heartbeat: as many as it carries out at once (its unfinished
/// ones count, they are given again), so none sit assigned to it while others idle. A finished
/// repair brings its next heartbeat forward.
pub const REPAIRS_PER_HEARTBEAT_MAX: usize = 4;
/// Rows of the repair queue one heartbeat looks at (the most endangered of them go first).
pub const REPAIR_SCAN_MAX: usize = 4096;
/// A repair order not completed after this long is given to another server.
pub const REPAIR_REASSIGN_NS: TimeNs = 30_000_000_000;
/// Sessions or intents expired by one tick (the rest wait for the next).
pub const EXPIRE_PER_TICK_MAX: usize = 1024;
/// A chunk with at least this many slices is queued for the compactor.
pub const COMPACT_SLICES_MIN: usize = 16;
/// A fragmented chunk is compacted only once no write laid slices on it for this long: a chunk
/// still being written would be rewritten (all of it) again and again.
pub const COMPACT_QUIET_NS: i64 = 5_000_000_000;
/// Hard links to one file.
pub const LINKS_MAX: u32 = 32_000;

#[cfg(test)]
mod tests;
