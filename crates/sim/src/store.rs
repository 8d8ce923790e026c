//! A simulated storage server: the real blob store (`shoal_blob_store::BlobStore`) on a
//! simulated disk that loses what was not synced when the host crashes, with the heartbeat,
//! order, inventory and scrub protocol of `shoal-store-server`.

use crate::client::MetaClient;
use crate::observe::Observer;
use crate::wire::{self, Msg, Reply};
use shoal_blob_store::{BlobError, BlobStore, MemDisk};
use shoal_types::ids::{BlobId, StoreId};
use shoal_types::meta_msg::{MetaOp, MetaReply, StoreHeartbeat};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const CAPACITY: u64 = 256 << 20;
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// Each server verifies every blob it holds this often (and reports corrupt copies).
pub const SCRUB_EVERY: Duration = Duration::from_secs(2);

pub fn host(id: u64) -> String {
    format!("store-{id}")
}

pub fn blob_dir() -> PathBuf {
    PathBuf::from("/blobs")
}

/// Run storage server `id` until the simulation crashes it. `term_seen`: the highest leader
/// term it has seen, kept across restarts like the server's `leader-term` file.
pub async fn run(
    id: u64,
    metas: u64,
    disk: MemDisk,
    term_seen: Arc<AtomicU64>,
    observer: Observer,
) -> turmoil::Result {
    let blobs = Arc::new(BlobStore::open(disk, blob_dir(), CAPACITY)?);
    observer.store_started(id, blobs.clone());
    tokio::spawn(heartbeat_loop(
        id,
        metas,
        blobs.clone(),
        term_seen,
        observer,
    ));
    wire::serve(move |msg| {
        let blobs = blobs.clone();
        async move {
            match msg {
                Msg::Put { blob, crc, data } => {
                    Reply::Put(blobs.put(blob, &data, crc).map_err(|e| e.to_string()))
                }
                Msg::Get { blob } => Reply::Get(
                    blobs
                        .len_of(blob)
                        .and_then(|len| blobs.get(blob, 0, len))
                        .map_err(|e| e.to_string()),
                ),
                _ => Reply::Put(Err("a storage server takes no metadata requests".into())),
            }
        }
    })
    .await?;
    Ok(())
}

async fn heartbeat_loop(
    id: u64,
    metas: u64,
    blobs: Arc<BlobStore<MemDisk>>,
    term_seen: Arc<AtomicU64>,
    observer: Observer,
) {
    let mut meta = MetaClient::new(metas, id);
    let store = StoreId(id);
    let (mut deleted, mut repaired): (Vec<BlobId>, Vec<BlobId>) = (Vec::new(), Vec::new());
    let mut registered = false;
    let mut last_scrub = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        if observer.quiet() {
            continue;
        }
        let (capacity, used) = (blobs.capacity_bytes(), blobs.used_bytes());
        if !registered {
            let op = MetaOp::RegisterStore {
                store,
                addr: host(id),
                capacity,
                used,
            };
            registered = matches!(meta.call(0, op, HEARTBEAT_EVERY * 2).await, Some(Ok(_)));
            continue;
        }
        let hb = StoreHeartbeat {
            store,
            addr: host(id),
            capacity,
            used,
            deleted: deleted.clone(),
            repaired: repaired.clone(),
        };
        let orders = match meta
            .call(0, MetaOp::StoreHeartbeat(hb), HEARTBEAT_EVERY * 2)
            .await
        {
            Some(Ok(MetaReply::StoreOrders(o))) => o,
            _ => continue, // Report again next time.
        };
        deleted.clear();
        repaired.clear();
        if orders.term.0 < term_seen.load(Ordering::SeqCst) {
            observer.event(&format!(
                "store {id} refused orders of term {}",
                orders.term.0
            ));
            continue;
        }
        term_seen.fetch_max(orders.term.0, Ordering::SeqCst);
        for b in orders.delete {
            if blobs.delete(b).is_ok() {
                deleted.push(b);
            }
        }
        if let Some(from) = orders.inventory_from {
            let held: Vec<BlobId> = blobs.list().into_iter().filter(|b| b.0 >= from).collect();
            let op = MetaOp::StoreInventory {
                store,
                from,
                blobs: held,
                done: true,
            };
            let _ = meta.call(0, op, HEARTBEAT_EVERY * 2).await;
        }
        for order in orders.repair {
            if blobs.contains(order.blob) {
                repaired.push(order.blob);
                continue;
            }
            for src in &order.sources {
                if let Ok(Reply::Get(Ok(data))) = wire::call(
                    &src.addr,
                    &Msg::Get { blob: order.blob },
                    Duration::from_secs(2),
                )
                .await
                {
                    if crc32c::crc32c(&data) == order.crc
                        && blobs.put(order.blob, &data, order.crc).is_ok()
                    {
                        repaired.push(order.blob);
                        break;
                    }
                }
            }
        }
        if last_scrub.elapsed() >= SCRUB_EVERY {
            last_scrub = tokio::time::Instant::now();
            let corrupt: Vec<BlobId> = blobs
                .list()
                .into_iter()
                .filter(|b| matches!(blobs.verify(*b), Err(BlobError::Corrupt { .. })))
                .collect();
            if !corrupt.is_empty() {
                observer.event(&format!("store {id} found {} corrupt", corrupt.len()));
                let _ = meta
                    .call(
                        0,
                        MetaOp::ReportCorrupt {
                            store,
                            blobs: corrupt,
                        },
                        HEARTBEAT_EVERY * 2,
                    )
                    .await;
            }
        }
    }
}
