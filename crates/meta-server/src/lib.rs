//! The metadata service: the pure state machine of `shoal-meta-core` replicated by `openraft`.
//!
//! - [`store`]: the Raft log and the state machine, persisted in one redb database; snapshots
//!   streamed through files.
//! - [`network`]: Raft messages between metadata nodes over the framed mutual-TLS transport.
//! - [`service`]: the port's request handler, with group commit of writes (concurrent commands
//!   share one log entry) and batched linearizable reads (one leadership check serves every
//!   read waiting at that moment); the leader's housekeeping (ticks) and compactor.
//!
//! Architecture invariant: the only clock read here is the leader's, when it stamps a batch of
//! commands before proposing it; replicas never read a clock while applying.

pub mod auth;
pub mod callbacks;
pub mod network;
pub mod service;
pub mod store;
pub mod wal;

use openraft::{BasicNode, Config, Raft};
use shoal_types::config::MetaConfig;
use shoal_types::meta_msg::MetaResponse;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

openraft::declare_raft_types!(
    /// Shoal's Raft types: a log entry carries a batch of commands; its reply is one reply per
    /// command.
    pub TypeConfig:
        D = store::Batch,
        R = Vec<MetaResponse>,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = tokio::fs::File,
);

pub type MetaRaft = Raft<TypeConfig>;

/// Most log entries in one AppendEntries (openraft's default is 300): entries carry up to
/// [`service::BATCH_INLINE_BYTES_MAX`] of file bytes, and a message must fit one frame.
pub const APPEND_ENTRIES_MAX: u64 = 64;

/// Start a metadata node and serve until the process ends.
pub async fn run(config: MetaConfig) -> anyhow::Result<()> {
    let node = start(config).await?;
    node.serve_task.await?;
    Ok(())
}

/// A running metadata node.
pub struct MetaNode {
    pub raft: MetaRaft,
    pub service: Arc<service::MetaService>,
    pub serve_task: tokio::task::JoinHandle<()>,
    pub addr: std::net::SocketAddr,
}

pub async fn start(config: MetaConfig) -> anyhow::Result<MetaNode> {
    use anyhow::Context;
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("create {}", config.data_dir.display()))?;
    let dbs = store::open_dbs(&config.data_dir, config.cache_size_bytes).context("open the metadata databases")?;
    let db = dbs.sm.clone();
    let log_store = store::LogStore::new(dbs.log, dbs.sm, &config.data_dir.join("raft-log")).context("open the Raft log")?;
    let state_machine = store::StateMachine::new(db.clone(), config.data_dir.join("snapshots"))?;
    let server_tls = shoal_pki::server_config(&config.tls).context("load TLS files")?;
    let client_tls = shoal_pki::client_config(&config.tls).context("load TLS files")?;

    let raft_config = Config {
        cluster_name: "shoal".into(),
        heartbeat_interval: config.raft_heartbeat_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
        max_in_snapshot_log_to_keep: 1000,
        install_snapshot_timeout: 10_000,
        max_payload_entries: APPEND_ENTRIES_MAX,
        ..Default::default()
    };
    let raft_config = Arc::new(raft_config.validate()?);
    let network = network::Network::new(client_tls);
    let raft = Raft::new(config.id.0, raft_config, network, log_store, state_machine).await?;

    let members: BTreeMap<u64, BasicNode> = config.peers.iter().map(|p| (p.id.0, BasicNode { addr: p.addr.clone() })).collect();
    if !raft.is_initialized().await? {
        // Every node of a new cluster proposes the same initial membership; openraft accepts
        // identical proposals, so the nodes may start in any order.
        if let Err(e) = raft.initialize(members.clone()).await {
            tracing::info!("cluster already initialized: {e}");
        }
    }

    let keys = auth::load_keys(&config)?;
    let service = service::MetaService::new(raft.clone(), db, &config, keys);
    let listener = tokio::net::TcpListener::bind(&config.listen).await.with_context(|| format!("listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(id = config.id.0, %addr, "metadata node serving");
    let serve_task = tokio::spawn(shoal_net::rpc::serve(listener, server_tls, service.clone()));
    tokio::spawn(service::housekeeping(service.clone(), Duration::from_millis(500)));
    tokio::spawn(service::horizon_keeper(service.clone(), Duration::from_millis(500)));
    tokio::spawn(service::compactor(
        service.clone(),
        shoal_types::config::ClientConfig { meta: config.peers.clone(), tls: config.tls.clone(), admin_key: None },
        Duration::from_secs(2),
    ));
    Ok(MetaNode { raft, service, serve_task, addr })
}
