//! A storage server. It keeps no per-client state: every request names the blob it touches, so
//! any replica can serve it and a restarted server just carries on (NFS style). It registers
//! with the metadata leader, heartbeats with its capacity, and carries out the orders a
//! heartbeat returns: delete garbage blobs and copy under-replicated ones from a peer. Orders
//! carry the leader's term; orders from a term older than one already seen are refused, so a
//! deposed leader cannot destroy data.

use anyhow::Context;
use bytes::Bytes;
use shoal_blob_store::{BlobStore, RealDisk};
use shoal_client::Client;
use shoal_net::{PeerInfo, Service};
use shoal_pki::Role;
use shoal_types::config::{ClientConfig, StoreConfig};
use shoal_types::meta_msg::*;
use shoal_types::store_msg::{StoreReply, StoreRequest, StoreResponse};
use shoal_types::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod recent;
pub mod scrub;

/// The highest leader term seen, in the data directory.
pub const TERM_FILE: &str = "leader-term";

/// Repairs carried out at once.
pub const REPAIRS_IN_FLIGHT_MAX: usize = 4;

pub struct StoreService {
    pub id: StoreId,
    blobs: Arc<BlobStore<RealDisk>>,
    /// Highest leader term seen on an order (fencing of deposed leaders), kept in `term_file`
    /// so a restart does not forget it.
    term_seen: AtomicU64,
    term_file: std::path::PathBuf,
    term_writing: Mutex<()>,
    /// Checks clients' capabilities (`None`: no key configured, so clients are refused).
    caps: Option<shoal_auth::CapVerifier>,
    pub scrub: Arc<scrub::Scrubber>,
    /// Blobs put recently, served from memory.
    recent: recent::RecentBlobs,
}

fn blocking_err(e: tokio::task::JoinError) -> FsError {
    FsError::Internal(e.to_string())
}

impl StoreService {
    /// What a request may do: storage servers and metadata nodes are trusted by their
    /// certificates; a client needs a capability naming the blob and the right.
    fn admit(&self, peer: &PeerInfo, req: StoreRequest) -> Result<StoreRequest, FsError> {
        let role = peer.identity.as_ref().map(|i| i.role);
        // Only the cluster's own servers act without a capability; an admin or client
        // certificate names a machine, not a right to any blob.
        let trusted = matches!(role, Some(Role::Store | Role::Meta));
        let (cap, inner) = match req {
            StoreRequest::Capable { cap, req } => (cap, *req),
            StoreRequest::Stat => return Ok(StoreRequest::Stat),
            other if trusted => return Ok(other),
            _ => {
                tracing::warn!(peer = %peer.addr, "refused a client request without a capability");
                return Err(FsError::Unauthenticated("a capability from the metadata service is required".into()));
            }
        };
        let (blob, right) = match &inner {
            StoreRequest::Put { blob, .. } => (*blob, shoal_auth::WRITE),
            StoreRequest::Get { blob, .. } | StoreRequest::Verify { blob } => (*blob, shoal_auth::READ),
            _ if trusted => return Ok(inner),
            _ => return Err(FsError::PermissionDenied),
        };
        let checked = match &self.caps {
            Some(v) => v.check(&cap, blob, right, shoal_auth::now_ns()).map_err(|e| e.to_string()),
            None => Err("this server has no capability key".into()),
        };
        if let Err(why) = checked {
            tracing::warn!(peer = %peer.addr, blob = blob.0, "refused a capability: {why}");
            return Err(FsError::Unauthenticated(why));
        }
        Ok(inner)
    }

    async fn handle(&self, peer: &PeerInfo, req: StoreRequest, payload: Bytes) -> Result<(StoreReply, Bytes), FsError> {
        let role = peer.identity.as_ref().map(|i| i.role);
        match self.admit(peer, req)? {
            StoreRequest::Put { blob, crc } => {
                let blobs = self.blobs.clone();
                let data = payload.clone();
                tokio::task::spawn_blocking(move || blobs.put(blob, &data, crc)).await.map_err(blocking_err)??;
                self.recent.insert(blob, payload);
                // A delete that ran between the put and the insert: keep nothing of it.
                if !self.blobs.contains(blob) {
                    self.recent.remove(blob);
                }
                Ok((StoreReply::Ok, Bytes::new()))
            }
            StoreRequest::Get { blob, offset, len } => {
                if let Some(data) = self.recent.get(blob, offset, len) {
                    return Ok((StoreReply::Data { len: data.len() as u64 }, data));
                }
                let blobs = self.blobs.clone();
                let data = tokio::task::spawn_blocking(move || blobs.get(blob, offset, len)).await.map_err(blocking_err)?;
                let data = match data {
                    Ok(d) => d,
                    Err(e) => {
                        if e.is_corrupt() {
                            tracing::error!("blob {blob} is corrupt on this server: {e}");
                            self.scrub.found_corrupt(blob);
                        }
                        return Err(e.into());
                    }
                };
                Ok((StoreReply::Data { len: data.len() as u64 }, Bytes::from(data)))
            }
            StoreRequest::Delete { blob, term } => {
                if role != Some(Role::Meta) {
                    tracing::warn!(peer = %peer.addr, blob = blob.0, "refused a delete from a peer that is not a metadata server");
                    return Err(FsError::PermissionDenied);
                }
                self.check_term(term)?;
                let blobs = self.blobs.clone();
                tokio::task::spawn_blocking(move || blobs.delete(blob)).await.map_err(blocking_err)??;
                // After the deletion: a put finishing meanwhile may have kept it.
                self.recent.remove(blob);
                Ok((StoreReply::Ok, Bytes::new()))
            }
            StoreRequest::Stat => Ok((
                StoreReply::Stat {
                    capacity: self.blobs.capacity_bytes(),
                    used: self.blobs.used_bytes(),
                    blobs: self.blobs.blob_count(),
                    scrub: self.scrub.status(),
                },
                Bytes::new(),
            )),
            StoreRequest::Verify { blob } => {
                let blobs = self.blobs.clone();
                tokio::task::spawn_blocking(move || blobs.verify(blob)).await.map_err(blocking_err)??;
                Ok((StoreReply::Ok, Bytes::new()))
            }
            StoreRequest::Capable { .. } => Err(FsError::Invalid("a capability inside a capability".into())),
        }
    }

    fn check_term(&self, term: Term) -> Result<(), FsError> {
        let seen = self.term_seen.fetch_max(term.0, Ordering::AcqRel);
        if term.0 < seen {
            return Err(FsError::Fenced { got: term.0, seen });
        }
        if term.0 > seen {
            // Once per leader change: small enough to write in line. One writer at a time, and
            // it writes the highest term seen by then.
            let _one = self.term_writing.lock().expect("term lock");
            let highest = self.term_seen.load(Ordering::Acquire);
            if let Err(e) = shoal_pki::write_atomic(&self.term_file, highest.to_string().as_bytes(), 0o644) {
                tracing::warn!("could not record leader term {highest}: {e}");
            }
        }
        Ok(())
    }
}

impl Service for StoreService {
    type Req = StoreRequest;
    type Resp = StoreResponse;

    async fn call(self: Arc<Self>, peer: Arc<PeerInfo>, req: StoreRequest, payload: Bytes) -> (StoreResponse, Bytes) {
        match self.handle(&peer, req, payload).await {
            Ok((reply, body)) => (Ok(reply), body),
            Err(e) => (Err(e), Bytes::new()),
        }
    }
}

pub async fn run(cfg: StoreConfig) -> anyhow::Result<()> {
    let (service, task) = start(cfg).await?;
    let _ = service;
    task.await?;
    Ok(())
}

pub async fn start(cfg: StoreConfig) -> anyhow::Result<(Arc<StoreService>, tokio::task::JoinHandle<()>)> {
    // The blob store lays out its own `blobs/` directory under this one.
    let dir = cfg.data_dir.clone();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let capacity = cfg.capacity_bytes;
    let blobs = tokio::task::spawn_blocking(move || BlobStore::open(RealDisk, dir, capacity)).await??;
    let caps = match &cfg.capability_key {
        Some(hex) => {
            let key: [u8; 32] = shoal_auth::unhex(hex.trim()).and_then(|b| b.try_into().ok()).context("capability_key must be 64 hex digits")?;
            Some(shoal_auth::CapVerifier::new(&key)?)
        }
        None => {
            tracing::warn!("store.toml names no capability_key: every client request will be refused");
            None
        }
    };
    let scrub = Arc::new(scrub::Scrubber::new(&cfg.data_dir));
    let term_file = cfg.data_dir.join(TERM_FILE);
    let term_seen = match std::fs::read_to_string(&term_file) {
        Ok(t) => t.trim().parse::<u64>().with_context(|| format!("{} is not a term", term_file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("read {}", term_file.display())),
    };
    let service = Arc::new(StoreService { id: cfg.id, blobs: Arc::new(blobs), term_seen: AtomicU64::new(term_seen), term_file, term_writing: Mutex::new(()), caps, scrub, recent: recent::RecentBlobs::new(cfg.recent_cache_bytes) });
    let server_tls = shoal_pki::server_config(&cfg.tls).context("load TLS files")?;
    let client_tls = shoal_pki::client_config(&cfg.tls).context("load TLS files")?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await.with_context(|| format!("listen on {}", cfg.listen))?;
    tracing::info!(id = cfg.id.0, addr = %listener.local_addr()?, blobs = service.blobs.blob_count(), "storage server serving");
    let task = tokio::spawn(shoal_net::rpc::serve(listener, server_tls, service.clone()));
    let client = Arc::new(Client::without_session(
        &ClientConfig { meta: cfg.meta.clone(), tls: cfg.tls.clone(), admin_key: None },
        client_tls,
        Credentials::ROOT,
    )?);
    let pace = scrub::Pace { bytes_per_s: cfg.scrub_mib_per_s << 20, every: Duration::from_secs(cfg.scrub_every_s) };
    tokio::spawn(scrub::run(service.clone(), pace));
    tokio::spawn(heartbeat_loop(service.clone(), client, cfg));
    Ok((service, task))
}

/// Spaces repair copies out to a rate (`None`: no limit): each copy takes the next free slot of
/// the time line, so copies start at most `bytes_per_s` apart on average.
struct Pacer {
    bytes_per_s: Option<f64>,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(mib_per_s: u64) -> Pacer {
        Pacer { bytes_per_s: (mib_per_s > 0).then(|| (mib_per_s << 20) as f64), next: Mutex::new(tokio::time::Instant::now()) }
    }

    async fn take(&self, bytes: u64) {
        let Some(rate) = self.bytes_per_s else { return };
        let start = {
            let mut next = self.next.lock().expect("pacer lock");
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / rate);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Register, then heartbeat forever; carry out the orders each heartbeat returns. A finished
/// repair brings the next heartbeat forward, to report it and take the next order at once.
async fn heartbeat_loop(service: Arc<StoreService>, client: Arc<Client>, cfg: StoreConfig) {
    let every = Duration::from_millis(cfg.heartbeat_ms);
    let pacer = Arc::new(Pacer::new(cfg.repair_mib_per_s));
    let wake = Arc::new(tokio::sync::Notify::new());
    let deleted: Arc<Mutex<Vec<BlobId>>> = Arc::default();
    let repaired: Arc<Mutex<Vec<BlobId>>> = Arc::default();
    let repairing = Arc::new(tokio::sync::Semaphore::new(REPAIRS_IN_FLIGHT_MAX));
    let in_repair: Arc<Mutex<std::collections::BTreeSet<BlobId>>> = Arc::default();
    let mut registered = false;
    loop {
        let (capacity, used) = (service.blobs.capacity_bytes(), service.blobs.used_bytes());
        if !registered {
            let op = MetaOp::RegisterStore { store: service.id, addr: cfg.listen.clone(), capacity, used };
            match client.meta(op).await {
                Ok(_) => {
                    registered = true;
                    tracing::info!("registered with the metadata service");
                }
                Err(e) => tracing::warn!("failed to register: {e}"),
            }
            tokio::time::sleep(every).await;
            continue;
        }
        let sent_deleted = std::mem::take(&mut *deleted.lock().expect("lock"));
        let sent_repaired = std::mem::take(&mut *repaired.lock().expect("lock"));
        let hb = StoreHeartbeat {
            store: service.id,
            addr: cfg.listen.clone(),
            capacity,
            used,
            deleted: sent_deleted.clone(),
            repaired: sent_repaired.clone(),
        };
        match client.meta(MetaOp::StoreHeartbeat(hb)).await {
            Ok(MetaReply::StoreOrders(orders)) => {
                if let Err(e) = service.check_term(orders.term) {
                    tracing::warn!("ignored orders from a deposed leader: {e}");
                } else {
                    service.scrub.requested(orders.scrub_epoch);
                    // Deletions.
                    let blobs = service.blobs.clone();
                    let del = deleted.clone();
                    let scrub = service.scrub.clone();
                    let to_delete = orders.delete.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        for b in to_delete {
                            match blobs.delete(b) {
                                Ok(_) => {
                                    scrub.forget(b);
                                    del.lock().expect("lock").push(b)
                                }
                                Err(e) => tracing::warn!("failed to delete blob {b}: {e}"),
                            }
                        }
                    })
                    .await;
                    for b in &orders.delete {
                        service.recent.remove(*b);
                    }
                    if let Some(from) = orders.inventory_from {
                        send_inventory(&service, &client, from).await;
                    }
                    // Repairs, in the background, bounded.
                    for order in orders.repair {
                        if !in_repair.lock().expect("lock").insert(order.blob) {
                            continue;
                        }
                        let Ok(permit) = repairing.clone().try_acquire_owned() else {
                            in_repair.lock().expect("lock").remove(&order.blob);
                            break;
                        };
                        let (service, client, repaired, in_repair) = (service.clone(), client.clone(), repaired.clone(), in_repair.clone());
                        let (pacer, wake) = (pacer.clone(), wake.clone());
                        tokio::spawn(async move {
                            pacer.take(order.len).await;
                            let done = repair(&service, &client, &order).await;
                            in_repair.lock().expect("lock").remove(&order.blob);
                            drop(permit);
                            match done {
                                Ok(()) => {
                                    repaired.lock().expect("lock").push(order.blob);
                                    // (Not after a failure: that would retry at once, in a loop.)
                                    wake.notify_one();
                                }
                                Err(e) => tracing::warn!("failed to repair blob {}: {e}", order.blob),
                            }
                        });
                    }
                }
            }
            Ok(other) => tracing::warn!("unexpected heartbeat reply {other:?}"),
            Err(e) => {
                tracing::warn!("heartbeat failed: {e}");
                // Report again next time.
                deleted.lock().expect("lock").extend(sent_deleted);
                repaired.lock().expect("lock").extend(sent_repaired);
            }
        }
        report_corrupt(&service, &client).await;
        let sent = tokio::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // Early, but at most four times a heartbeat period (each one is a log entry).
            _ = wake.notified() => tokio::time::sleep_until(sent + every / 4).await,
        }
    }
}

/// Blob ids per inventory part (8 bytes each on the wire and in the metadata log).
pub const INVENTORY_PART_MAX: usize = 32 * 1024;

/// List the blobs held here, from id `from` on, for the check that ends this server's fencing
/// (after a restart or a failure). On an error the next heartbeat asks again where it stopped.
async fn send_inventory(service: &StoreService, client: &Client, from: u64) {
    let held: Vec<BlobId> = service.blobs.list().into_iter().filter(|b| b.0 >= from).collect();
    let mut parts = held.chunks(INVENTORY_PART_MAX).peekable();
    let mut next = from;
    tracing::info!(from, blobs = held.len(), "sending the list of blobs held here for checking");
    loop {
        let part = parts.next().unwrap_or(&[]);
        let done = parts.peek().is_none();
        let op = MetaOp::StoreInventory { store: service.id, from: next, blobs: part.to_vec(), done };
        if let Err(e) = client.meta(op).await {
            tracing::warn!("could not send the list of blobs held here: {e}");
            return;
        }
        if done {
            tracing::info!("the list of blobs held here is sent");
            return;
        }
        next = part.last().map_or(next, |b| b.0 + 1);
    }
}

/// Tell the metadata service of the corrupt copies found since the last report.
async fn report_corrupt(service: &StoreService, client: &Client) {
    let found = service.scrub.take_found();
    if found.is_empty() {
        return;
    }
    match client.meta(MetaOp::ReportCorrupt { store: service.id, blobs: found.clone() }).await {
        Ok(MetaReply::Unrepairable(lost)) => {
            for b in &lost {
                tracing::error!("blob {b}: the corrupt copy here is the last one; its damaged blocks are lost");
            }
            service.scrub.unrepairable(&lost);
            service.scrub.sent(&found);
            tracing::info!(reported = found.len(), unrepairable = lost.len(), "reported corrupt copies");
        }
        Ok(other) => {
            tracing::warn!("unexpected reply to a corruption report: {other:?}");
            service.scrub.unsent(found);
        }
        Err(e) => {
            tracing::warn!("could not report corrupt copies: {e}");
            service.scrub.unsent(found);
        }
    }
}

/// Copy one blob from a peer holding it, verify it end to end, store it durably.
async fn repair(service: &StoreService, client: &Client, order: &RepairOrder) -> Result<(), FsError> {
    if service.blobs.contains(order.blob) {
        return Ok(());
    }
    let mut last = FsError::Unavailable("no source".into());
    for src in &order.sources {
        let req = StoreRequest::Get { blob: order.blob, offset: 0, len: order.len };
        match client.store_call(&src.addr, &req, &[]).await {
            Ok((StoreReply::Data { .. }, data)) if crc32c::crc32c(&data) == order.crc => {
                let blobs = service.blobs.clone();
                let (blob, crc) = (order.blob, order.crc);
                tokio::task::spawn_blocking(move || blobs.put(blob, &data, crc)).await.map_err(blocking_err)??;
                return Ok(());
            }
            Ok(_) => last = FsError::Corrupt(format!("copy on {} does not match its checksum", src.addr)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::Pacer;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn the_pacer_spaces_copies_to_its_rate_and_no_limit_waits_for_nothing() {
        let pacer = Pacer::new(64);
        let t = Instant::now();
        // 4 MiB at 64 MiB/s: each takes 62.5 ms of the time line; the first starts at once.
        for _ in 0..5 {
            pacer.take(4 << 20).await;
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(245), "5 copies of 4 MiB at 64 MiB/s started within {took:?}");
        let free = Pacer::new(0);
        let t = Instant::now();
        for _ in 0..1000 {
            free.take(64 << 20).await;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "no limit, no waiting");
    }
}
