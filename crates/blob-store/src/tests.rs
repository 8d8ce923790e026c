//! A conformance suite run against both [`RealDisk`] (in a temp dir) and [`MemDisk`], then tests
//! of crashes and power cuts that only the simulated disk can stage.

use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shoal_types::layout::BLOCK_SIZE;
use shoal_types::{BlobId, FsError};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const BS: u64 = BLOCK_SIZE;
const SIZES: [u64; 6] = [0, 1, BS - 1, BS, BS + 1, (3 << 20) + 7];

/// Where a conformance test runs: a disk, a store directory on it, and a way to damage bytes.
trait Env {
    type D: Disk + Clone;
    fn disk(&self) -> Self::D;
    fn dir(&self) -> PathBuf;
    /// Flips the byte at `offset` of the file at `path`.
    fn corrupt(&self, path: &Path, offset: u64);

    fn open(&self, capacity_bytes: u64) -> BlobStore<Self::D> {
        BlobStore::open(self.disk(), self.dir(), capacity_bytes).expect("open the blob store")
    }
    fn fanout_dir(&self, blob: BlobId) -> PathBuf {
        self.dir().join("blobs").join(format!("{:02x}", blob.0 % 256))
    }
}

struct RealEnv {
    tmp: tempfile::TempDir,
}

impl RealEnv {
    fn new() -> RealEnv {
        RealEnv { tmp: tempfile::tempdir().expect("create a temp dir") }
    }
}

impl Env for RealEnv {
    type D = RealDisk;
    fn disk(&self) -> RealDisk {
        RealDisk
    }
    fn dir(&self) -> PathBuf {
        self.tmp.path().join("store")
    }
    fn corrupt(&self, path: &Path, offset: u64) {
        let file = fs::OpenOptions::new().read(true).write(true).open(path).expect("open blob file");
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).expect("read byte");
        file.write_all_at(&[byte[0] ^ 0xff], offset).expect("write byte");
    }
}

struct MemEnv {
    disk: MemDisk,
}

impl MemEnv {
    fn new() -> MemEnv {
        MemEnv { disk: MemDisk::new() }
    }
}

impl Env for MemEnv {
    type D = MemDisk;
    fn disk(&self) -> MemDisk {
        self.disk.clone()
    }
    fn dir(&self) -> PathBuf {
        PathBuf::from("/srv/shoal/store")
    }
    fn corrupt(&self, path: &Path, offset: u64) {
        self.disk.corrupt(path, offset).expect("corrupt byte");
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), eight at a time.
fn pattern(seed: u64, len: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

#[track_caller]
fn must_put<D: Disk>(store: &BlobStore<D>, blob: BlobId, data: &[u8]) {
    store.put(blob, data, crc32c::crc32c(data)).expect("put");
}

#[track_caller]
fn must_get_all<D: Disk>(store: &BlobStore<D>, blob: BlobId) -> Vec<u8> {
    store.get(blob, 0, u64::MAX).expect("get")
}

#[track_caller]
fn check_corrupt(result: Result<impl std::fmt::Debug, BlobError>, blob: BlobId, block: Option<u64>) {
    match result {
        Err(BlobError::Corrupt { blob: b, block: k }) if b == blob && k == block => {}
        other => panic!("expected Corrupt {{ blob: {blob}, block: {block:?} }}, got {other:?}"),
    }
}

/// Data offset inside the file of a blob of `len` bytes written by this build.
fn data_offset(len: u64) -> u64 {
    HEADER_BYTES + len.div_ceil(BS) * 4
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod real_disk {
            $( #[test] fn $name() { super::$name(&super::RealEnv::new()); } )*
        }
        mod mem_disk {
            $( #[test] fn $name() { super::$name(&super::MemEnv::new()); } )*
        }
    };
}

conformance!(
    round_trip,
    ranged_reads_across_blocks,
    idempotent_put,
    conflicting_put_refused,
    wrong_crc_refused,
    corrupt_data_detected,
    corrupt_header_detected,
    damaged_copy_replaced_by_put,
    no_space_and_delete_frees,
    reopen_counts_and_reads,
    reopen_removes_temp_files,
    random_ranges,
    concurrent_puts_and_gets,
);

fn round_trip(env: &impl Env) {
    let store = env.open(0);
    assert!(store.capacity_bytes() > 0);
    for (i, &size) in SIZES.iter().enumerate() {
        let blob = BlobId(i as u64 + 1);
        let data = pattern(i as u64, size);
        must_put(&store, blob, &data);
        assert_eq!(must_get_all(&store, blob), data, "size {size}");
        assert_eq!(store.len_of(blob).unwrap(), size);
        store.verify(blob).unwrap();
        assert!(store.contains(blob));
        assert_eq!(env.disk().file_len(&store.blob_path(blob)).unwrap(), file_bytes_for(size));
        // Reading at the very end gives nothing; past it is invalid.
        assert_eq!(store.get(blob, size, 10).unwrap(), Vec::<u8>::new());
        assert!(matches!(store.get(blob, size + 1, 1), Err(BlobError::Invalid(_))));
    }
    let expected_used: u64 = SIZES.iter().map(|&s| file_bytes_for(s)).sum();
    assert_eq!(store.used_bytes(), expected_used);
    assert_eq!(store.blob_count(), SIZES.len() as u64);
    assert_eq!(store.list(), (1..=SIZES.len() as u64).map(BlobId).collect::<Vec<_>>());
    assert!(matches!(store.get(BlobId(99), 0, 1), Err(BlobError::NotFound { blob: BlobId(99) })));
    assert!(matches!(store.len_of(BlobId(99)), Err(BlobError::NotFound { .. })));
    assert!(matches!(store.verify(BlobId(99)), Err(BlobError::NotFound { .. })));
}

fn ranged_reads_across_blocks(env: &impl Env) {
    let store = env.open(0);
    let blob = BlobId(7);
    let size = 3 * BS + 100;
    let data = pattern(7, size);
    must_put(&store, blob, &data);
    let ranges = [
        (0, 1),
        (0, BS),
        (0, BS + 1),
        (1, BS),
        (BS - 1, 2),
        (BS - 1, BS + 2),
        (BS, BS),
        (BS, 2 * BS),
        (BS + 5, 10),
        (100, 2 * BS),
        (BS - 3, 2 * BS + 6),
        (3 * BS, 100),
        (3 * BS, 1000),
        (3 * BS + 99, 1000),
        (2 * BS + 7, u64::MAX),
        (0, size),
    ];
    for (offset, len) in ranges {
        let end = offset.saturating_add(len).min(size);
        let expected = &data[offset as usize..end as usize];
        assert_eq!(store.get(blob, offset, len).unwrap(), expected, "get({offset}, {len})");
        // read_into with a buffer larger than what is left gets what is left.
        let mut buf = vec![0xaau8; (end - offset) as usize + 3];
        let n = store.read_into(blob, offset, &mut buf).unwrap();
        let expected = &data[offset as usize..(end + 3).min(size) as usize];
        assert_eq!(&buf[..n], expected, "read_into({offset}, {len})");
    }
    let mut empty = [];
    assert_eq!(store.read_into(blob, 5, &mut empty).unwrap(), 0);
}

fn idempotent_put(env: &impl Env) {
    let store = env.open(0);
    let blob = BlobId(300);
    let data = pattern(3, BS + 17);
    must_put(&store, blob, &data);
    let used = store.used_bytes();
    must_put(&store, blob, &data);
    must_put(&store, blob, &data);
    assert_eq!(store.used_bytes(), used);
    assert_eq!(store.blob_count(), 1);
    assert_eq!(must_get_all(&store, blob), data);
    // No temp files are left behind.
    assert_eq!(env.disk().list_dir(&env.fanout_dir(blob)).unwrap(), vec![format!("{:016x}", blob.0)]);
}

fn conflicting_put_refused(env: &impl Env) {
    let store = env.open(0);
    let blob = BlobId(4);
    let data = pattern(4, 1000);
    must_put(&store, blob, &data);
    let same_len = pattern(5, 1000);
    let other_len = pattern(4, 1001);
    for other in [&same_len, &other_len] {
        let result = store.put(blob, other, crc32c::crc32c(other));
        assert!(matches!(result, Err(BlobError::Conflict { blob: BlobId(4) })), "{result:?}");
    }
    assert_eq!(must_get_all(&store, blob), data);
    assert_eq!(store.used_bytes(), file_bytes_for(1000));
    assert_eq!(env.disk().list_dir(&env.fanout_dir(blob)).unwrap().len(), 1);
}

fn wrong_crc_refused(env: &impl Env) {
    let store = env.open(0);
    let blob = BlobId(5);
    let data = pattern(5, 3 * BS);
    let crc = crc32c::crc32c(&data);
    let result = store.put(blob, &data, crc ^ 1);
    match result {
        Err(BlobError::ChecksumMismatch { blob: b, expected, actual }) => {
            assert_eq!((b, expected, actual), (blob, crc ^ 1, crc));
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert!(!store.contains(blob));
    assert_eq!(store.used_bytes(), 0);
    assert!(env.disk().list_dir(&env.fanout_dir(blob)).unwrap().is_empty());
    // Too large a blob is refused before anything is written.
    let huge = vec![0u8; (shoal_types::layout::BLOB_SIZE_MAX + 1) as usize];
    assert!(matches!(store.put(blob, &huge, crc32c::crc32c(&huge)), Err(BlobError::Invalid(_))));
}

fn corrupt_data_detected(env: &impl Env) {
    let store = env.open(0);
    let blob = BlobId(6);
    let size = 3 * BS + 100;
    let data = pattern(6, size);
    must_put(&store, blob, &data);
    env.corrupt(&store.blob_path(blob), data_offset(size) + BS + 5);

    check_corrupt(store.get(blob, 0, u64::MAX), blob, Some(1));
    check_corrupt(store.verify(blob), blob, Some(1));
    // Every range that touches block 1 fails: a partial head, the middle and a partial tail.
    check_corrupt(store.get(blob, BS + 4, 2), blob, Some(1));
    check_corrupt(store.get(blob, 10, BS), blob, Some(1));
    check_corrupt(store.get(blob, BS, BS), blob, Some(1));
    check_corrupt(store.get(blob, BS - 1, BS + 2), blob, Some(1));
    // Ranges that do not touch it still read.
    assert_eq!(store.get(blob, 0, BS).unwrap(), &data[..BS as usize]);
    assert_eq!(store.get(blob, 2 * BS, u64::MAX).unwrap(), &data[2 * BS as usize..]);

    // Damage in the last (short) block, and in a block table entry.
    let blob = BlobId(16);
    must_put(&store, blob, &data);
    env.corrupt(&store.blob_path(blob), data_offset(size) + size - 1);
    check_corrupt(store.get(blob, size - 1, 1), blob, Some(3));
    check_corrupt(store.verify(blob), blob, Some(3));
    let blob = BlobId(26);
    must_put(&store, blob, &data);
    env.corrupt(&store.blob_path(blob), HEADER_BYTES + 2 * 4 + 1);
    check_corrupt(store.get(blob, 2 * BS, 1), blob, Some(2));
    check_corrupt(store.verify(blob), blob, Some(2));
    assert_eq!(store.get(blob, 0, 2 * BS).unwrap(), &data[..2 * BS as usize]);
}

fn corrupt_header_detected(env: &impl Env) {
    let store = env.open(0);
    let data = pattern(8, BS + 3);
    // Magic, version, blob id, data length, crc, block size, reserved, header crc.
    for (i, offset) in [0u64, 8, 16, 24, 32, 36, 50, 61].into_iter().enumerate() {
        let blob = BlobId(100 + i as u64);
        must_put(&store, blob, &data);
        env.corrupt(&store.blob_path(blob), offset);
        check_corrupt(store.get(blob, 0, 1), blob, None);
        check_corrupt(store.len_of(blob), blob, None);
        check_corrupt(store.verify(blob), blob, None);
        let mut buf = [0u8; 10];
        check_corrupt(store.read_into(blob, 0, &mut buf), blob, None);
    }
    // A blob file holding another blob's header (misplaced or renamed) is not served.
    let (a, b) = (BlobId(1), BlobId(2));
    must_put(&store, a, &data);
    must_put(&store, b, &data);
    env.disk().rename(&store.blob_path(a), &store.blob_path(b)).unwrap();
    check_corrupt(store.get(b, 0, 1), b, None);
}

fn damaged_copy_replaced_by_put(env: &impl Env) {
    let store = env.open(0);
    let blob = BlobId(9);
    let data = pattern(9, 2 * BS);
    must_put(&store, blob, &data);
    let used = store.used_bytes();
    env.corrupt(&store.blob_path(blob), data_offset(2 * BS) + 3);
    check_corrupt(store.verify(blob), blob, Some(0));
    // The idempotent put notices the damage and rewrites the copy.
    must_put(&store, blob, &data);
    store.verify(blob).unwrap();
    assert_eq!(must_get_all(&store, blob), data);
    assert_eq!(store.used_bytes(), used);
    assert_eq!(store.blob_count(), 1);
}

fn no_space_and_delete_frees(env: &impl Env) {
    let file_bytes = file_bytes_for(1000);
    let store = env.open(2 * file_bytes + 10);
    assert_eq!(store.capacity_bytes(), 2 * file_bytes + 10);
    let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(i, 1000)).collect();
    must_put(&store, BlobId(1), &data[1]);
    must_put(&store, BlobId(2), &data[2]);
    assert_eq!(store.used_bytes(), 2 * file_bytes);
    match store.put(BlobId(3), &data[0], crc32c::crc32c(&data[0])) {
        Err(BlobError::NoSpace { needed_bytes, available_bytes }) => {
            assert_eq!((needed_bytes, available_bytes), (file_bytes, 10));
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(store.used_bytes(), 2 * file_bytes, "a refused put reserves nothing");
    assert!(!store.contains(BlobId(3)));
    // Idempotent puts of stored blobs need no space.
    must_put(&store, BlobId(2), &data[2]);

    assert!(store.delete(BlobId(1)).unwrap());
    assert!(!store.delete(BlobId(1)).unwrap());
    assert!(!store.delete(BlobId(77)).unwrap());
    assert_eq!(store.used_bytes(), file_bytes);
    assert!(matches!(store.get(BlobId(1), 0, 1), Err(BlobError::NotFound { .. })));
    must_put(&store, BlobId(3), &data[0]);
    assert_eq!(store.used_bytes(), 2 * file_bytes);
    assert_eq!(store.list(), vec![BlobId(2), BlobId(3)]);
    drop(store);
    // Deletes are durable and counted after a reopen.
    let store = env.open(2 * file_bytes + 10);
    assert_eq!(store.used_bytes(), 2 * file_bytes);
    assert_eq!(store.list(), vec![BlobId(2), BlobId(3)]);
}

fn reopen_counts_and_reads(env: &impl Env) {
    let store = env.open(0);
    let blobs: Vec<(BlobId, Vec<u8>)> =
        SIZES.iter().enumerate().map(|(i, &s)| (BlobId(1000 + i as u64 * 255), pattern(i as u64, s))).collect();
    for (blob, data) in &blobs {
        must_put(&store, *blob, data);
    }
    let used = store.used_bytes();
    drop(store);
    let store = env.open(0);
    assert_eq!(store.used_bytes(), used);
    assert_eq!(store.blob_count(), blobs.len() as u64);
    for (blob, data) in &blobs {
        assert_eq!(&must_get_all(&store, *blob), data);
    }
}

fn reopen_removes_temp_files(env: &impl Env) {
    let store = env.open(0);
    let blob = BlobId(0x1234);
    let data = pattern(1, 5000);
    must_put(&store, blob, &data);
    let used = store.used_bytes();
    drop(store);
    // What an interrupted put leaves: a partial temp file, here even with a durable name.
    let disk = env.disk();
    let fanout_dir = env.fanout_dir(BlobId(0x1334));
    let tmp_path = fanout_dir.join(format!("{:016x}.tmp.3", 0x1334));
    let tmp = disk.create(&tmp_path).unwrap();
    tmp.write_all_at(&[1, 2, 3], 0).unwrap();
    drop(tmp);
    disk.sync_dir(&fanout_dir).unwrap();
    // A stranger's file is left alone and not counted.
    let foreign = fanout_dir.join("README");
    drop(disk.create(&foreign).unwrap());

    let store = env.open(0);
    // Same fan-out directory as `blob`: the temp file is gone, the blob and the stranger stay.
    let mut names = disk.list_dir(&fanout_dir).unwrap();
    names.sort();
    assert_eq!(names, vec![format!("{:016x}", blob.0), "README".to_string()]);
    assert_eq!(store.used_bytes(), used);
    assert_eq!(store.list(), vec![blob]);
}

fn random_ranges(env: &impl Env) {
    let store = env.open(0);
    let next_blob = std::cell::Cell::new(0u64);
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let strategy = (0u64..5 * BS, any::<u64>(), prop::collection::vec((any::<u64>(), 0u64..3 * BS), 1..8));
    runner
        .run(&strategy, |(size, seed, ranges)| {
            next_blob.set(next_blob.get() + 1);
            let blob = BlobId(next_blob.get());
            let data = pattern(seed, size);
            must_put(&store, blob, &data);
            for (offset, len) in ranges {
                let offset = offset % (size + 1);
                let end = offset.saturating_add(len).min(size);
                let expected = &data[offset as usize..end as usize];
                prop_assert_eq!(&store.get(blob, offset, len).unwrap()[..], expected);
                let mut buf = vec![0u8; len as usize];
                let n = store.read_into(blob, offset, &mut buf).unwrap();
                prop_assert_eq!(&buf[..n], expected);
            }
            prop_assert!(store.delete(blob).unwrap());
            Ok(())
        })
        .unwrap();
    assert_eq!(store.used_bytes(), 0);
}

fn concurrent_puts_and_gets(env: &impl Env) {
    let store = env.open(0);
    let data: Vec<Vec<u8>> = (0..8).map(|i| pattern(i, i * 20_000 + 3)).collect();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (store, data) = (&store, &data);
            s.spawn(move || {
                // Every thread puts every blob: the same ids race, all must succeed.
                for i in 0..8 {
                    let idx = (i + t as usize) % 8;
                    // 257 apart: the blobs share a fan-out directory, so its syncs race too.
                    let blob = BlobId(idx as u64 * 257);
                    must_put(store, blob, &data[idx]);
                    assert_eq!(must_get_all(store, blob), data[idx]);
                }
            });
        }
    });
    let expected: u64 = data.iter().map(|d| file_bytes_for(d.len() as u64)).sum();
    assert_eq!(store.used_bytes(), expected);
    assert_eq!(store.blob_count(), 8);
    for blob in store.list() {
        assert_eq!(env.disk().list_dir(&env.fanout_dir(blob)).unwrap().len(), 1, "no temp files left");
    }
}

// Crashes and power cuts: only the simulated disk can stage them.

/// Cuts the power after every possible number of disk operations of a put, crashes, reopens:
/// the blob is either absent or whole, is present if the put was acknowledged, no temp file
/// survives, and a blob stored before is untouched.
#[test]
fn crash_during_put_never_leaves_a_half_blob() {
    let (before, blob) = (BlobId(1), BlobId(257));
    let before_data = pattern(1, 2 * BS + 1);
    let data = pattern(2, 2 * BS + 5);
    // A put takes seven mutating operations (create, three writes: header, block table and data;
    // sync, rename, directory sync).
    let mut survived = Vec::new();
    for cut in 0..10 {
        let disk = MemDisk::new();
        let env = MemEnv { disk: disk.clone() };
        let store = env.open(0);
        must_put(&store, before, &before_data);
        disk.power_cut_after(cut);
        let acked = store.put(blob, &data, crc32c::crc32c(&data)).is_ok();
        drop(store);
        disk.crash();

        let store = env.open(0);
        assert_eq!(must_get_all(&store, before), before_data, "cut {cut}");
        if acked {
            assert!(store.contains(blob), "cut {cut}: acknowledged put lost");
        }
        if store.contains(blob) {
            assert_eq!(must_get_all(&store, blob), data, "cut {cut}");
            store.verify(blob).unwrap();
        } else {
            assert!(matches!(store.get(blob, 0, 1), Err(BlobError::NotFound { .. })));
        }
        let names = disk.list_dir(&env.fanout_dir(blob)).unwrap();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "cut {cut}: temp file left: {names:?}");
        let expected_used: u64 = store.list().iter().map(|b| file_bytes_for(store.len_of(*b).unwrap())).sum();
        assert_eq!(store.used_bytes(), expected_used, "cut {cut}");
        survived.push(store.contains(blob));
    }
    // Cuts before the directory sync lose the put; later ones keep it.
    assert_eq!(survived, [false, false, false, false, false, false, false, true, true, true]);
}

/// Bytes written but not synced are lost in a crash; the directory entry of a file created but
/// not synced is lost too.
#[test]
fn mem_disk_crash_keeps_only_synced_state() {
    let disk = MemDisk::new();
    let dir = Path::new("/d");
    disk.create_dir_all(dir).unwrap();
    let (synced, unsynced) = (dir.join("synced"), dir.join("unsynced"));
    let file = disk.create(&synced).unwrap();
    file.write_all_at(b"hello", 0).unwrap();
    file.sync_data().unwrap();
    disk.sync_dir(dir).unwrap();
    file.write_all_at(b"J", 0).unwrap();
    file.write_all_at(b" world", 5).unwrap();
    drop(disk.create(&unsynced).unwrap());
    assert_eq!(disk.file_len(&synced).unwrap(), 11);
    disk.crash();
    let file = disk.open(&synced).unwrap();
    let mut buf = [0u8; 5];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(file.len_bytes().unwrap(), 5);
    assert!(!disk.exists(&unsynced));
    // A rename not followed by a directory sync is undone.
    disk.rename(&synced, &dir.join("renamed")).unwrap();
    disk.crash();
    assert!(disk.exists(&synced));
    assert!(!disk.exists(&dir.join("renamed")));
}

/// A put cut off before its first sync leaves nothing, even if its temp file's name became
/// durable through another put's directory sync.
#[test]
fn crash_before_fsync_loses_put_in_progress() {
    let disk = MemDisk::new();
    let env = MemEnv { disk: disk.clone() };
    let store = env.open(0);
    let blob = BlobId(3);
    let data = pattern(3, 3 * BS);
    // create, header write, then the data write tears.
    disk.power_cut_after(2);
    assert!(store.put(blob, &data, crc32c::crc32c(&data)).is_err());
    assert!(!store.contains(blob));
    drop(store);
    disk.crash();
    let store = env.open(0);
    assert!(!store.contains(blob));
    assert_eq!(store.used_bytes(), 0);
    assert!(disk.list_dir(&env.fanout_dir(blob)).unwrap().is_empty());
}

#[test]
fn fs_error_mapping() {
    let blob = BlobId(1);
    let cases = [
        (BlobError::NotFound { blob }, "blob_not_found"),
        (BlobError::ChecksumMismatch { blob, expected: 1, actual: 2 }, "corrupt"),
        (BlobError::Corrupt { blob, block: Some(3) }, "corrupt"),
        (BlobError::NoSpace { needed_bytes: 1, available_bytes: 0 }, "no_space"),
        (BlobError::Conflict { blob }, "internal"),
        (BlobError::Invalid("x".into()), "invalid"),
        (BlobError::Io(std::io::Error::other("boom")), "io"),
    ];
    for (e, code) in cases {
        assert_eq!(FsError::from(e).code(), code);
    }
    let enospc = BlobError::from(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
    assert!(matches!(enospc, BlobError::NoSpace { .. }));
    assert_eq!(
        FsError::from(BlobError::Corrupt { blob, block: Some(3) }),
        FsError::Corrupt("blob 1 is corrupt (block 3)".into())
    );
}

#[test]
fn combined_crc_matches_one_pass() {
    for size in [0, 1, BS - 1, BS, BS + 1, 5 * BS, 5 * BS + 77] {
        let data = pattern(size, size);
        let (table, whole) = format::block_crcs(&data);
        assert_eq!(whole, crc32c::crc32c(&data), "size {size}");
        assert_eq!(table.len() as u64, size.div_ceil(BS) * 4);
    }
}

proptest! {
    #[test]
    fn header_decode_never_panics(bytes in prop::array::uniform32(any::<u8>()), tail in prop::array::uniform32(any::<u8>()), id in any::<u64>()) {
        let mut raw = [0u8; HEADER_BYTES as usize];
        raw[..32].copy_from_slice(&bytes);
        raw[32..].copy_from_slice(&tail);
        let _ = BlobHeader::decode(BlobId(id), &raw);
    }

    #[test]
    fn header_round_trip(id in any::<u64>(), len in 0..=shoal_types::layout::BLOB_SIZE_MAX, crc in any::<u32>(), flip in 0usize..64) {
        let header = BlobHeader { blob: BlobId(id), data_len: len, data_crc: crc, block_bytes: BS as u32 };
        let mut raw = header.encode();
        prop_assert_eq!(BlobHeader::decode(BlobId(id), &raw).unwrap(), header);
        raw[flip] ^= 0x10;
        prop_assert!(BlobHeader::decode(BlobId(id), &raw).is_err());
    }
}
