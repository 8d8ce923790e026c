//! Scrubbing and repair of corrupt copies, through the real binaries: bytes flipped in a blob
//! file on a storage server's disk are found (by `shoal scrub`, by the background scrubber, or
//! by a read) and the copy is rebuilt from a good one; a returning server is checked before its
//! copies count again.

use crate::harness::*;
use shoal_client::Client;
use shoal_types::meta_msg::*;
use shoal_types::store_msg::StoreRequest;
use shoal_types::{BlobId, FileHandle, FsError, StoreId};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first blob of `path` and the servers holding it.
async fn first_blob(client: &Client, path: &str) -> BlobLocation {
    let a = client.resolve(path).await.unwrap();
    match client.meta(MetaOp::GetLayout { handle: a.handle, first_chunk: 0, n_chunks: 1 }).await.unwrap().attach_capability() {
        MetaReply::Layout(l) => l.blobs[0].clone(),
        other => panic!("{other:?}"),
    }
}

/// Where `store` keeps `blob` on disk.
fn blob_file(c: &TestCluster, store: StoreId, blob: BlobId) -> PathBuf {
    let name = format!("{:016x}", blob.0);
    let blobs = c.path().join(format!("store-{}", store.0)).join("blobs");
    for d in std::fs::read_dir(&blobs).unwrap().flatten() {
        let p = d.path().join(&name);
        if p.exists() {
            return p;
        }
    }
    panic!("blob {name} not found under {}", blobs.display());
}

/// Flip one byte of the data of a stored blob file (near its end, so in the last block).
fn flip_byte(path: &PathBuf) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

async fn wait_status(client: &Client, what: &str, ok: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = client.status().await.unwrap();
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn put_file(c: &TestCluster, name: &str, seed: u64, len: usize) -> Vec<u8> {
    let data = bytes(seed, len);
    let local = c.file(name.trim_start_matches('/'));
    std::fs::write(&local, &data).unwrap();
    c.must_shoal(&["put", local.to_str().unwrap(), name]);
    data
}

/// Every listed copy of `loc` reads back whole (each server checks every block it sends).
async fn all_copies_read(client: &Arc<Client>, loc: &BlobLocation) {
    for s in &loc.stores {
        let get = StoreRequest::Get { blob: loc.blob, offset: 0, len: loc.len }.with_cap(loc.cap.as_deref());
        let r = client.store_call(&s.addr, &get, &[]).await;
        assert!(r.is_ok(), "copy on store-{}: {:?}", s.store.0, r.map(|(r, _)| r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_scrub_finds_a_flipped_byte_and_the_copy_is_rebuilt() {
    // No background scrubbing: a pass of its own could find the damage and have the copy
    // replaced before this test looks at it.
    let c = TestCluster::start_with(&["--scrub-mib-per-s", "0"]);
    let data = put_file(&c, "/a", 7, 1_500_000);
    put_file(&c, "/b", 8, 200_000);
    let client = c.client().await;
    let loc = first_blob(&client, "/a").await;
    assert_eq!(loc.stores.len(), 3);
    let victim = &loc.stores[1];
    flip_byte(&blob_file(&c, victim.store, loc.blob));
    // The server still holds the blob as it was put, in memory, and serves that: the right
    // bytes. The scrubber reads the disk, and finds the damage.
    let get = StoreRequest::Get { blob: loc.blob, offset: 0, len: loc.len }.with_cap(loc.cap.as_deref());
    let (_, served) = client.store_call(&victim.addr, &get, &[]).await.expect("served from memory");
    assert!(served[..] == data[..loc.len as usize], "the bytes kept in memory are the ones put");

    let out = c.must_shoal(&["scrub", "--wait"]);
    assert!(out.contains("1 corrupt copy found"), "{out}");
    assert!(out.contains("fully protected again"), "{out}");
    let s = client.status().await.unwrap();
    assert_eq!((s.blobs_under_replicated, s.blobs_damaged), (0, 0), "{s:?}");
    // Three good copies again, and the next scrub finds nothing.
    let now = first_blob(&client, "/a").await;
    assert_eq!(now.stores.len(), 3, "{now:?}");
    all_copies_read(&client, &now).await;
    // The bad copy's file goes with the deletion order its server gets at a heartbeat: until
    // then a scrub may still meet it (a copy no longer counted). Within a few seconds, none.
    let mut out = String::new();
    for _ in 0..10 {
        out = c.must_shoal(&["scrub", "--wait"]);
        if out.contains(" 0 corrupt copies found") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(out.contains(" 0 corrupt copies found"), "{out}");
    assert_eq!(c.must_shoal_bytes(&["cat", "/a"]), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_hits_a_corrupt_copy_gets_it_repaired() {
    // No copy kept in memory: this read must reach the damaged copy on disk.
    let c = TestCluster::start_with(&["--store-recent-cache-mib", "0"]);
    let data = put_file(&c, "/a", 9, 800_000);
    let client = c.client().await;
    let loc = first_blob(&client, "/a").await;
    let victim = &loc.stores[0];
    flip_byte(&blob_file(&c, victim.store, loc.blob));
    // A read of the damaged block from that server is refused (never served wrong)...
    let get = StoreRequest::Get { blob: loc.blob, offset: 0, len: loc.len }.with_cap(loc.cap.as_deref());
    let r = client.store_call(&victim.addr, &get, &[]).await.map(|(r, _)| r);
    assert!(matches!(r, Err(FsError::Corrupt(_))), "{r:?}");
    // ...the whole file still reads, from the other copies...
    assert_eq!(c.must_shoal_bytes(&["cat", "/a"]), data);
    // ...and the server reports its copy (at its next heartbeat), which is rebuilt.
    let log = c.path().join("logs").join(format!("store-{}.log", victim.store.0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("reported corrupt copies") {
        assert!(Instant::now() < deadline, "store-{} did not report its corrupt copy", victim.store.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = c.must_shoal(&["repair", "--wait"]);
    assert!(out.contains("re-protected"), "{out}");
    wait_status(&client, "the corrupt copy is deleted", |s| s.blobs_under_replicated == 0 && s.blobs_awaiting_gc == 0).await;
    let now = first_blob(&client, "/a").await;
    assert_eq!(now.stores.len(), 3, "{now:?}");
    all_copies_read(&client, &now).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scrubber_finds_corruption_by_itself() {
    let c = TestCluster::start_with(&["--scrub-every-s", "1", "--scrub-mib-per-s", "64"]);
    let data = put_file(&c, "/a", 11, 600_000);
    let client = c.client().await;
    let loc = first_blob(&client, "/a").await;
    let victim = loc.stores[2].store;
    flip_byte(&blob_file(&c, victim, loc.blob));
    // Nobody asks and nobody reads: the background scrubber finds it by itself...
    let log = c.path().join("logs").join(format!("store-{}.log", victim.0));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("scrub: blob") {
        assert!(Instant::now() < deadline, "the background scrubber did not find the corrupt copy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and the copy is rebuilt (elsewhere, or on the same server once the bad one is deleted).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = client.status().await.unwrap();
        let now = first_blob(&client, "/a").await;
        if s.blobs_under_replicated == 0 && s.blobs_awaiting_gc == 0 && now.stores.len() == 3 && all_good(&client, &now).await {
            break;
        }
        assert!(Instant::now() < deadline, "not repaired after the background scrub: {s:?} {now:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(c.must_shoal_bytes(&["cat", "/a"]), data);
}

async fn all_good(client: &Arc<Client>, loc: &BlobLocation) -> bool {
    for s in &loc.stores {
        let get = StoreRequest::Get { blob: loc.blob, offset: 0, len: loc.len }.with_cap(loc.cap.as_deref());
        if client.store_call(&s.addr, &get, &[]).await.is_err() {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_last_copy_is_kept_and_reported_as_damaged() {
    // No copy kept in memory: this read must reach the damaged copy on disk.
    let c = TestCluster::start_with(&["--store-recent-cache-mib", "0"]);
    let client = c.client().await;
    let dir = client.mkdir(FileHandle::ROOT, "single", 0o755).await.unwrap();
    client.meta(MetaOp::SetPolicy { handle: dir.handle, policy: shoal_types::layout::Policy::Replicas { copies: 1, write_quorum: 1 } }).await.unwrap();
    let f = client.create(dir.handle, "one", 0o644, true).await.unwrap();
    let data = bytes(12, 700_000);
    client.write_at(f.handle, 0, &data).await.unwrap();
    let loc = first_blob(&client, "/single/one").await;
    assert_eq!(loc.stores.len(), 1);
    flip_byte(&blob_file(&c, loc.stores[0].store, loc.blob));

    let out = c.shoal(&["scrub", "--wait"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a lost block is an error: {stdout}");
    assert!(stderr.contains("1 blobs have no healthy copy left"), "{stderr}");
    let s = client.status().await.unwrap();
    assert_eq!((s.blobs_damaged, s.blobs_under_replicated), (1, 0), "{s:?}");
    // The copy is kept: the blocks before the damaged one still read.
    let now = first_blob(&client, "/single/one").await;
    assert_eq!(now.stores.len(), 1);
    assert_eq!(client.read_range(f.handle, 0, 65536).await.unwrap(), data[..65536]);
    assert!(matches!(client.read_range(f.handle, 0, data.len() as u64).await, Err(FsError::Corrupt(_))), "the damaged block is never served");
    // Deleting the file clears the record.
    client.unlink(dir.handle, "one").await.unwrap();
    wait_status(&client, "the damaged record goes with its blob", |s| s.blobs_damaged == 0).await;
}

/// A storage server that comes back (here: restarted after being declared failed) is fenced out
/// until the metadata service has checked its list of blobs: a copy its disk lost meanwhile is
/// forgotten rather than served, and a blob it holds that nothing records is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_storage_server_is_checked_before_it_counts_again() {
    let c = TestCluster::start();
    let data = put_file(&c, "/a", 21, 1_000_000);
    let client = c.client().await;
    let loc = first_blob(&client, "/a").await;
    let back = loc.stores[0].store;
    let copy = blob_file(&c, back, loc.blob);
    // The leader term it has seen (from its first heartbeat's orders) is on disk.
    let term_file = c.path().join(format!("store-{}", back.0)).join("leader-term");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !term_file.exists() {
        assert!(Instant::now() < deadline, "no {}", term_file.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(std::fs::read_to_string(&term_file).unwrap().trim().parse::<u64>().unwrap() >= 1);

    c.kill9(&format!("store-{}", back.0));
    wait_status(&client, "declared failed, /a re-protected", |s| {
        s.stores.iter().any(|st| st.id == back && !st.alive) && s.blobs_under_replicated == 0
    })
    .await;
    // While it is down its disk loses the copy of /a and gains a blob nobody wrote.
    // (Same fan-out directory: 256 of them, by id.)
    let stray = copy.with_file_name(format!("{:016x}", loc.blob.0 + 256 * 4096));
    std::fs::rename(&copy, &stray).unwrap();
    c.up();
    let s = wait_status(&client, "back and checked", |s| s.stores.iter().all(|st| st.alive && !st.checking)).await;
    assert!(s.stores.iter().all(|st| st.alive));

    let now = first_blob(&client, "/a").await;
    assert!(now.stores.iter().all(|s| s.store != back), "the lost copy is forgotten: {now:?}");
    assert_eq!(now.stores.len(), 3);
    all_copies_read(&client, &now).await;
    assert_eq!(client.read_range(client.resolve("/a").await.unwrap().handle, 0, data.len() as u64).await.unwrap(), data);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stray.exists() {
        assert!(Instant::now() < deadline, "the stray blob {} was not deleted", stray.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
