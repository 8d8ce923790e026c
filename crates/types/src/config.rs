//! Configuration files (TOML) written by `shoal init` and read by every process.

use crate::ids::{MetaNodeId, StoreId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Paths of the PEM files a process presents and trusts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaPeer {
    pub id: MetaNodeId,
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaConfig {
    pub id: MetaNodeId,
    pub listen: String,
    pub data_dir: PathBuf,
    pub peers: Vec<MetaPeer>,
    pub tls: TlsFiles,
    #[serde(default = "defaults::cache_size_bytes")]
    pub cache_size_bytes: u64,
    #[serde(default = "defaults::heartbeat_interval_ms")]
    pub raft_heartbeat_ms: u64,
    #[serde(default = "defaults::election_timeout_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "defaults::election_timeout_max_ms")]
    pub election_timeout_max_ms: u64,
    #[serde(default = "defaults::session_lease_ms")]
    pub session_lease_ms: u64,
    #[serde(default = "defaults::intent_lease_ms")]
    pub intent_lease_ms: u64,
    /// A storage server silent this long is declared failed.
    #[serde(default = "defaults::store_dead_after_ms")]
    pub store_dead_after_ms: u64,
    #[serde(default = "defaults::snapshot_every_entries")]
    pub snapshot_every_entries: u64,
    /// How long a cache promise (callback) given to a client lasts.
    #[serde(default = "defaults::callback_lease_ms")]
    pub callback_lease_ms: u64,
    /// The cluster's ticket keys (`shoal-auth` key file); required to serve clients.
    #[serde(default)]
    pub auth_keys: Option<PathBuf>,
    /// Lifetime of a ticket, and how long after login a ticket-granting ticket may be renewed.
    #[serde(default = "defaults::ticket_lifetime_s")]
    pub ticket_lifetime_s: u64,
    #[serde(default = "defaults::ticket_renew_s")]
    pub ticket_renew_s: u64,
    /// Largest clock difference tolerated between a client and a metadata node.
    #[serde(default = "defaults::clock_skew_s")]
    pub clock_skew_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub id: StoreId,
    pub listen: String,
    pub data_dir: PathBuf,
    pub meta: Vec<MetaPeer>,
    pub tls: TlsFiles,
    /// Bytes this server may use; 0 means the free space of its disk.
    #[serde(default)]
    pub capacity_bytes: u64,
    #[serde(default = "defaults::store_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// The metadata service's public key for capabilities (64 hex digits).
    #[serde(default)]
    pub capability_key: Option<String>,
    /// Background scrubbing: MiB/s read by a pass (0: none; `shoal scrub` still works).
    #[serde(default = "defaults::scrub_mib_per_s")]
    pub scrub_mib_per_s: u64,
    /// Seconds from the end of one background scrub pass to the start of the next.
    #[serde(default = "defaults::scrub_every_s")]
    pub scrub_every_s: u64,
    /// MiB/s this server copies for repairs at most (0: no limit), so clients keep their speed.
    #[serde(default = "defaults::repair_mib_per_s")]
    pub repair_mib_per_s: u64,
    /// Bytes of recently put blobs kept in memory for reads (blobs are written past the page
    /// cache); 0 keeps none.
    #[serde(default = "defaults::recent_cache_bytes")]
    pub recent_cache_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    pub meta: Vec<MetaPeer>,
    pub tls: TlsFiles,
    /// The admin principal's key file, for whoever can read it (the cluster's owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<PathBuf>,
}

pub mod defaults {
    pub fn recent_cache_bytes() -> u64 {
        1 << 30
    }
    pub fn cache_size_bytes() -> u64 {
        256 << 20
    }
    pub fn heartbeat_interval_ms() -> u64 {
        100
    }
    pub fn election_timeout_min_ms() -> u64 {
        200
    }
    pub fn election_timeout_max_ms() -> u64 {
        400
    }
    pub fn session_lease_ms() -> u64 {
        60_000
    }
    pub fn intent_lease_ms() -> u64 {
        600_000
    }
    pub fn store_dead_after_ms() -> u64 {
        5_000
    }
    pub fn snapshot_every_entries() -> u64 {
        20_000
    }
    pub fn callback_lease_ms() -> u64 {
        5_000
    }
    pub fn ticket_lifetime_s() -> u64 {
        10 * 3600
    }
    pub fn ticket_renew_s() -> u64 {
        7 * 24 * 3600
    }
    pub fn clock_skew_s() -> u64 {
        120
    }
    pub fn scrub_mib_per_s() -> u64 {
        4
    }

    /// Per storage server: a cluster repairs with all its servers at once (3 survivors of 4
    /// copy 120 MiB/s), and clients keep most of their speed meanwhile.
    pub fn repair_mib_per_s() -> u64 {
        40
    }

    pub fn scrub_every_s() -> u64 {
        24 * 3600
    }

    pub fn store_heartbeat_ms() -> u64 {
        1_000
    }
}
