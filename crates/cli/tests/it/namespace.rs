//! The namespace through the client library against a real cluster.

use crate::harness::*;
use shoal_types::*;
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_small_files() {
    let c = TestCluster::start();
    let client = c.client().await;
    let root = FileHandle::ROOT;
    let dir = client.mkdir(root, "many", 0o755).await.unwrap();
    let n = 10_000u64;
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                let a = client.create(dir.handle, &format!("f{i:05}"), 0o644, true).await.unwrap();
                if i % 10 == 0 {
                    client.write_at(a.handle, 0, format!("content {i}").as_bytes()).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let listed = client.readdir_all(dir.handle).await.unwrap();
    assert_eq!(listed.len() as u64, n);
    let names: BTreeSet<_> = listed.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names.len() as u64, n, "no duplicates");
    for i in (0..n).step_by(370) {
        let a = client.lookup(dir.handle, &format!("f{i:05}")).await.unwrap();
        let data = client.read_range(a.handle, 0, 100).await.unwrap();
        if i % 10 == 0 {
            assert_eq!(data, format!("content {i}").as_bytes());
        } else {
            assert!(data.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_during_mass_delete_neither_skips_nor_repeats() {
    let c = TestCluster::start();
    let client = c.client().await;
    let n: u64 = if std::env::var("SHOAL_SMALL").is_ok() { 6_000 } else { 100_000 };
    let dir = client.mkdir(FileHandle::ROOT, "d", 0o755).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                client.create(dir.handle, &format!("e{i:06}"), 0o644, true).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Survivors: every name ending in 7 is never deleted. Eight deleters work through the rest
    // (like `rm -rf` run in parallel) while one client lists page by page.
    let mut deleters = Vec::new();
    for w in 0..8u64 {
        let client = c.client().await;
        deleters.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                if i % 10 != 7 {
                    client.unlink(dir.handle, &format!("e{i:06}")).await.unwrap();
                }
            }
        }));
    }
    let lister = c.client().await;
    let mut seen = Vec::new();
    let mut cookie = 0;
    loop {
        let (entries, eof) = lister.readdir(dir.handle, cookie, 100).await.unwrap();
        for e in &entries {
            cookie = e.cookie;
            seen.push(e.name.clone());
        }
        if eof {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for d in deleters {
        d.await.unwrap();
    }
    let survivors: Vec<String> = (0..n).filter(|i| i % 10 == 7).map(|i| format!("e{i:06}")).collect();
    let seen_set: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), seen_set.len(), "an entry was listed twice");
    for s in &survivors {
        assert!(seen_set.contains(s), "survivor {s} was skipped");
    }
    let left = client.readdir_all(dir.handle).await.unwrap();
    assert_eq!(left.len(), survivors.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_handles_and_orphans() {
    let c = TestCluster::start();
    let client = c.client().await;
    let f = client.create(FileHandle::ROOT, "f", 0o644, true).await.unwrap();
    client.open(f.handle).await.unwrap();
    client.write_at(f.handle, 0, b"still here").await.unwrap();
    client.unlink(FileHandle::ROOT, "f").await.unwrap();
    // Open before the unlink: still readable and writable.
    assert_eq!(client.read_range(f.handle, 0, 100).await.unwrap(), b"still here");
    client.write_at(f.handle, 0, b"STILL").await.unwrap();
    assert_eq!(client.read_range(f.handle, 0, 100).await.unwrap(), b"STILL here");
    client.release(f.handle).await.unwrap();
    assert_eq!(client.getattr(f.handle).await, Err(FsError::Stale));
    assert_eq!(client.read_range(f.handle, 0, 10).await, Err(FsError::Stale));
    // A handle with a wrong generation is stale too.
    let g = client.create(FileHandle::ROOT, "g", 0o644, true).await.unwrap();
    let forged = FileHandle { generation: Generation(g.handle.generation.0 + 1), ..g.handle };
    assert_eq!(client.getattr(forged).await, Err(FsError::Stale));
}

/// An open for reading is answered by the leader before its log entry commits (with the
/// file's layout and, for a small file, its bytes); it still counts: a file unlinked by another
/// client after that answer stays readable through it until it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_for_reading_answered_early_keeps_the_file_through_an_unlink() {
    use shoal_types::meta_msg::{MetaOp, MetaReply, INLINE_BYTES_MAX as INLINE};
    let c = TestCluster::start();
    let (writer, reader) = (c.client().await, c.client().await);
    for (name, len) in [("small", 3_000usize), ("large", 300_000)] {
        let f = writer.create(FileHandle::ROOT, name, 0o644, true).await.unwrap();
        let data = bytes(len as u64, len);
        // The small one is held by the metadata service, as a mount writes it.
        let room = if len as u64 <= INLINE { (INLINE, INLINE) } else { (0, 0) };
        let written = writer.put_pieces_with(f.handle, &[(0, &data)], &mut Default::default(), room).await.unwrap();
        writer.commit_at(f.handle, written, len as u64).await.unwrap();
        let layout = match reader.meta(MetaOp::OpenRead { handle: f.handle }).await.unwrap() {
            MetaReply::Layout(l) => l,
            other => panic!("{name}: an open for reading with nothing in the way comes with the layout, got {other:?}"),
        };
        assert_eq!(layout.attr.size, len as u64);
        if len as u64 <= INLINE {
            assert!(layout.blobs.iter().all(|b| b.inline.is_some()), "{name}: a small file's bytes come with the open");
        }
        writer.unlink(FileHandle::ROOT, name).await.unwrap();
        assert_eq!(reader.read_with_layout(&layout, 0, len as u64).await.unwrap(), data, "{name}: read through the layout of the open");
        assert_eq!(reader.read_range(f.handle, 0, len as u64).await.unwrap(), data, "{name}: read after the unlink");
        // The unlinked file is opened again only through the log (an orphan may go at any
        // release): the answer is the attributes, after the commit.
        match reader.meta(MetaOp::OpenRead { handle: f.handle }).await.unwrap() {
            MetaReply::Attr(a) => assert_eq!(a.nlink, 0),
            other => panic!("{name}: expected attributes for an orphan, got {other:?}"),
        }
        reader.release(f.handle).await.unwrap();
        reader.release(f.handle).await.unwrap();
        assert_eq!(reader.getattr(f.handle).await, Err(FsError::Stale), "{name}: gone after the last release");
    }
}

/// Slices in a chunk from which the compactor merges them (`shoal_meta_core::COMPACT_SLICES_MIN`).
const COMPACT_SLICES_MIN: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_written_in_many_pieces_is_compacted() {
    let c = TestCluster::start();
    let client = c.client().await;
    let f = client.create(FileHandle::ROOT, "pieces", 0o644, true).await.unwrap();
    let mut expect = Vec::new();
    for i in 0..40u64 {
        let piece = bytes(i, 1000 + i as usize);
        client.write_at(f.handle, expect.len() as u64, &piece).await.unwrap();
        expect.extend_from_slice(&piece);
    }
    // Overwrite a range in the middle too.
    let patch = bytes(99, 5000);
    client.write_at(f.handle, 10_000, &patch).await.unwrap();
    expect[10_000..15_000].copy_from_slice(&patch);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let layout = match client.meta(shoal_types::meta_msg::MetaOp::GetLayout { handle: f.handle, first_chunk: 0, n_chunks: 1 }).await.unwrap() {
            shoal_types::meta_msg::MetaReply::Layout(l) => l,
            other => panic!("{other:?}"),
        };
        // 42 pieces were laid; the compactor may run between the writes, leaving a short tail
        // of slices after its last pass (fewer than it compacts).
        if layout.chunks[0].1.len() < COMPACT_SLICES_MIN {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not compacted: {} slices", layout.chunks[0].1.len());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(client.read_range(f.handle, 0, expect.len() as u64).await.unwrap() == expect, "same bytes after compaction");
}
