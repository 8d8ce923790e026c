//! [`BlobStore`]: puts, ranged reads, deletes and space accounting over a [`Disk`].

use crate::disk::{Disk, DiskFile};
use crate::format::{self, BlobHeader, CrcCombiner, BLOCK_CRC_BYTES, HEADER_BYTES};
use crate::BlobError;
use shoal_types::layout::{BLOB_SIZE_MAX, BLOCK_SIZE};
use shoal_types::BlobId;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Subdirectories of `blobs/`, named by the low byte of the blob id in hex. Ids come from a
/// counter, so the low byte spreads blobs evenly and no directory grows past 1/256 of the store.
const FANOUT_DIRS: u64 = 256;
/// Puts and deletes of the same blob are serialized by one of these locks (blob id modulo).
const STRIPES: usize = 64;
/// `verify` reads this many bytes per call.
const VERIFY_READ_BYTES_MAX: u64 = 1 << 20;
/// Marks a file an interrupted put left behind: `<blob hex>.tmp.<seq>`.
const TMP_MARKER: &str = ".tmp.";

/// The on-disk store of immutable blobs: one checksummed file per blob (see the crate docs for
/// the format) under `<dir>/blobs/<low byte hex>/<blob id hex>`.
///
/// All methods take `&self` and may be called from several threads at once. Reads need no lock;
/// puts and deletes of the same blob are serialized.
pub struct BlobStore<D: Disk> {
    disk: D,
    blobs_dir: PathBuf,
    capacity_bytes: u64,
    /// File bytes of stored blobs plus reservations of puts in progress.
    used_bytes: AtomicU64,
    /// Stored blobs and the file bytes each occupies.
    index: Mutex<BTreeMap<BlobId, u64>>,
    stripes: Vec<Mutex<()>>,
    tmp_seq: AtomicU64,
}

/// A blob file opened for reading, its header checked.
struct OpenBlob<F> {
    file: F,
    header: BlobHeader,
}

/// What a put finds already stored under its blob id.
enum Existing {
    Absent,
    /// The same bytes, verified: nothing to write.
    Same,
    /// A damaged copy: the put replaces it.
    Damaged,
}

/// Space reserved for a put in progress; given back on drop unless kept.
struct Reservation<'a> {
    used_bytes: &'a AtomicU64,
    bytes: u64,
}

impl Reservation<'_> {
    fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.used_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic (single map operations), so go on.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn blob_file_name(blob: BlobId) -> String {
    format!("{:016x}", blob.0)
}

/// The blob a file name stands for, if it is a blob file name (16 lowercase hex digits).
fn parse_blob_file_name(name: &str) -> Option<BlobId> {
    let lower_hex = name.len() == 16 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    lower_hex.then(|| u64::from_str_radix(name, 16).ok().map(BlobId)).flatten()
}

fn fanout_dir_name(fanout_idx: u64) -> String {
    format!("{fanout_idx:02x}")
}

impl<D: Disk> BlobStore<D> {
    /// Opens (or creates) the store in `dir`. Removes temporary files of interrupted puts and
    /// counts the bytes of stored blobs. `capacity_bytes == 0` means all the space the store may
    /// use: what it uses now plus what the filesystem has free.
    pub fn open(disk: D, dir: PathBuf, capacity_bytes: u64) -> Result<Self, BlobError> {
        let blobs_dir = dir.join("blobs");
        let mut index = BTreeMap::new();
        let mut used_bytes = 0u64;
        for fanout_idx in 0..FANOUT_DIRS {
            let fanout_dir = blobs_dir.join(fanout_dir_name(fanout_idx));
            disk.create_dir_all(&fanout_dir)?;
            let mut removed_tmp = false;
            for name in disk.list_dir(&fanout_dir)? {
                let path = fanout_dir.join(&name);
                if name.contains(TMP_MARKER) {
                    // A put that never reached its rename: never acknowledged, safe to drop.
                    match disk.remove(&path) {
                        Ok(()) => removed_tmp = true,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                    continue;
                }
                // Other names (not ours, or a blob in the wrong directory) are left alone: the
                // store never reads them.
                let Some(blob) = parse_blob_file_name(&name).filter(|b| b.0 % FANOUT_DIRS == fanout_idx) else {
                    continue;
                };
                let file_bytes = disk.file_len(&path)?;
                used_bytes += file_bytes;
                index.insert(blob, file_bytes);
            }
            if removed_tmp {
                disk.sync_dir(&fanout_dir)?;
            }
        }
        // Make the directory tree itself durable (a no-op after the first open, but cheap).
        disk.sync_dir(&blobs_dir)?;
        disk.sync_dir(&dir)?;
        let capacity_bytes = match capacity_bytes {
            0 => disk.space(&blobs_dir)?.free_bytes.saturating_add(used_bytes),
            n => n,
        };
        Ok(BlobStore {
            disk,
            blobs_dir,
            capacity_bytes,
            used_bytes: AtomicU64::new(used_bytes),
            index: Mutex::new(index),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// Stores `data` as `blob`, durably, before returning `Ok`. `crc` is the crc32c of `data` as
    /// the writer computed it; bytes damaged on the way are refused with `ChecksumMismatch`.
    ///
    /// Idempotent: if `blob` is already stored with the same length and checksum (and its stored
    /// bytes verify), returns `Ok` without rewriting. Other content under the same id is a
    /// `Conflict`. A damaged stored copy is replaced.
    ///
    /// Steps: write `<blob>.tmp.<seq>`, sync it, rename it over `<blob>`, sync the directory. A
    /// crash at any point leaves either no blob or the whole blob visible.
    pub fn put(&self, blob: BlobId, data: &[u8], crc: u32) -> Result<(), BlobError> {
        let data_len = data.len() as u64;
        if data_len > BLOB_SIZE_MAX {
            return Err(BlobError::Invalid(format!("blob {blob}: {data_len} bytes exceeds {BLOB_SIZE_MAX}")));
        }
        let (table, actual_crc) = format::block_crcs(data);
        if actual_crc != crc {
            return Err(BlobError::ChecksumMismatch { blob, expected: crc, actual: actual_crc });
        }
        let fanout_dir = self.fanout_dir(blob);
        // A retry of a put that already succeeded: skip the write.
        if self.contains(blob) {
            if let Existing::Same = self.existing(blob, data_len, crc)? {
                // The earlier put may have failed after its rename, at the directory sync.
                self.disk.sync_dir(&fanout_dir)?;
                return Ok(());
            }
        }

        let file_bytes = format::file_bytes_for(data_len);
        let reservation = self.reserve(file_bytes)?;
        let header = BlobHeader { blob, data_len, data_crc: crc, block_bytes: BLOCK_SIZE as u32 };
        let tmp_path = fanout_dir.join(format!(
            "{}{TMP_MARKER}{}",
            blob_file_name(blob),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.write_tmp(&tmp_path, &header, &table, data).and_then(|()| {
            let _stripe = lock(&self.stripes[blob.0 as usize % STRIPES]);
            // Another put of the same blob may have won the race while we wrote.
            if let Existing::Same = self.existing(blob, data_len, crc)? {
                self.disk.sync_dir(&fanout_dir)?;
                return Ok(false);
            }
            self.disk.rename(&tmp_path, &self.blob_path(blob))?;
            if let Some(old_bytes) = lock(&self.index).insert(blob, file_bytes) {
                // Replaced a damaged copy.
                self.used_bytes.fetch_sub(old_bytes, Ordering::Relaxed);
            }
            reservation.keep();
            // Once renamed the blob is visible (and indexed) even if this sync fails; a retry
            // then finds it and syncs the directory again before acknowledging.
            self.disk.sync_dir(&fanout_dir)?;
            Ok(true)
        });
        match result {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => {
                // Best effort: the next open removes what is left.
                let _ = self.disk.remove(&tmp_path);
                result.map(drop)
            }
        }
    }

    /// Reads up to `len` bytes of `blob` at `offset` (fewer at the end of the blob), verifying
    /// every block it touches. An `offset` past the end is `Invalid`.
    pub fn get(&self, blob: BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        let opened = self.open_blob(blob)?;
        let n = len.min(opened.header.data_len.saturating_sub(offset));
        let mut buf = vec![0u8; n as usize];
        let read = self.read_opened(&opened, offset, &mut buf)?;
        debug_assert_eq!(read, buf.len());
        Ok(buf)
    }

    /// Reads `blob` at `offset` into `buf`, verifying every block it touches; returns the bytes
    /// read (`buf.len()` unless the blob ends first). Whole blocks go straight from the disk into
    /// `buf`; only partly covered blocks at either end pass through a scratch buffer.
    pub fn read_into(&self, blob: BlobId, offset: u64, buf: &mut [u8]) -> Result<usize, BlobError> {
        let opened = self.open_blob(blob)?;
        self.read_opened(&opened, offset, buf)
    }

    /// Removes `blob` durably; `Ok(false)` if it was not stored.
    pub fn delete(&self, blob: BlobId) -> Result<bool, BlobError> {
        let _stripe = lock(&self.stripes[blob.0 as usize % STRIPES]);
        let existed = match self.disk.remove(&self.blob_path(blob)) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        if let Some(file_bytes) = lock(&self.index).remove(&blob) {
            self.used_bytes.fetch_sub(file_bytes, Ordering::Relaxed);
        }
        if existed {
            // Without this a crash could bring the blob back (its id is never reused, so it
            // would only waste space until the next garbage collection).
            self.disk.sync_dir(&self.fanout_dir(blob))?;
        }
        Ok(existed)
    }

    pub fn contains(&self, blob: BlobId) -> bool {
        lock(&self.index).contains_key(&blob)
    }

    /// Data length of `blob` (from its checked header).
    pub fn len_of(&self, blob: BlobId) -> Result<u64, BlobError> {
        Ok(self.open_blob(blob)?.header.data_len)
    }

    /// Reads every block of `blob` and checks it, and the whole-blob checksum.
    pub fn verify(&self, blob: BlobId) -> Result<(), BlobError> {
        let opened = self.open_blob(blob)?;
        self.verify_opened(&opened)
    }

    /// Stored blobs, in id order.
    pub fn list(&self) -> Vec<BlobId> {
        lock(&self.index).keys().copied().collect()
    }

    /// Stored blobs with their file sizes, in id order.
    pub fn list_with_bytes(&self) -> Vec<(BlobId, u64)> {
        lock(&self.index).iter().map(|(b, n)| (*b, *n)).collect()
    }

    /// File bytes of the stored blobs (headers and block tables included) plus space reserved by
    /// puts in progress.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    pub fn blob_count(&self) -> u64 {
        lock(&self.index).len() as u64
    }

    /// Where `blob` is (or would be) stored.
    pub fn blob_path(&self, blob: BlobId) -> PathBuf {
        self.fanout_dir(blob).join(blob_file_name(blob))
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    fn fanout_dir(&self, blob: BlobId) -> PathBuf {
        self.blobs_dir.join(fanout_dir_name(blob.0 % FANOUT_DIRS))
    }

    fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, BlobError> {
        let capacity = self.capacity_bytes;
        self.used_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= capacity)
            })
            .map_err(|used| BlobError::NoSpace {
                needed_bytes: bytes,
                available_bytes: capacity.saturating_sub(used),
            })?;
        Ok(Reservation { used_bytes: &self.used_bytes, bytes })
    }

    /// Writes and syncs a complete blob file: header and block table in one write, the data in
    /// another.
    fn write_tmp(&self, path: &Path, header: &BlobHeader, table: &[u8], data: &[u8]) -> Result<(), BlobError> {
        let head = header.encode();
        debug_assert_eq!(head.len() as u64 + table.len() as u64, header.data_offset());
        self.disk.write_synced(path, &[&head, table, data])?;
        Ok(())
    }

    fn existing(&self, blob: BlobId, data_len: u64, crc: u32) -> Result<Existing, BlobError> {
        let opened = match self.open_blob(blob) {
            Ok(opened) => opened,
            Err(BlobError::NotFound { .. }) => return Ok(Existing::Absent),
            Err(BlobError::Corrupt { .. }) => return Ok(Existing::Damaged),
            Err(e) => return Err(e),
        };
        if opened.header.data_len != data_len || opened.header.data_crc != crc {
            return Err(BlobError::Conflict { blob });
        }
        // Acknowledging a put promises a good copy, so check the one we already have.
        match self.verify_opened(&opened) {
            Ok(()) => Ok(Existing::Same),
            Err(BlobError::Corrupt { .. }) => Ok(Existing::Damaged),
            Err(e) => Err(e),
        }
    }

    fn open_blob(&self, blob: BlobId) -> Result<OpenBlob<D::File>, BlobError> {
        let file = self.disk.open(&self.blob_path(blob)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BlobError::NotFound { blob },
            _ => e.into(),
        })?;
        let mut raw = [0u8; HEADER_BYTES as usize];
        file.read_exact_at(&mut raw, 0).map_err(|e| eof_is_corrupt(e, blob, None))?;
        let header = BlobHeader::decode(blob, &raw)?;
        // A truncated (or extended) file would otherwise pass until a read reaches its end.
        if file.len_bytes()? != header.file_bytes() {
            return Err(BlobError::Corrupt { blob, block: None });
        }
        Ok(OpenBlob { file, header })
    }

    /// Block table entries `first..=last`.
    fn read_table(&self, opened: &OpenBlob<D::File>, first: u64, last: u64) -> Result<Vec<u32>, BlobError> {
        let blob = opened.header.blob;
        let mut raw = vec![0u8; ((last - first + 1) * BLOCK_CRC_BYTES) as usize];
        let at = opened.header.table_offset() + first * BLOCK_CRC_BYTES;
        opened.file.read_exact_at(&mut raw, at).map_err(|e| eof_is_corrupt(e, blob, None))?;
        Ok(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Reads whole block `block_idx` into `scratch` and checks it.
    fn read_block<'s>(
        &self,
        opened: &OpenBlob<D::File>,
        block_idx: u64,
        expected_crc: u32,
        scratch: &'s mut Vec<u8>,
    ) -> Result<&'s [u8], BlobError> {
        let header = &opened.header;
        scratch.resize(header.block_len(block_idx) as usize, 0);
        let at = header.data_offset() + block_idx * header.block_bytes as u64;
        read_checked(&opened.file, header.blob, block_idx, scratch, at, &[expected_crc], header.block_bytes)?;
        Ok(scratch)
    }

    fn read_opened(&self, opened: &OpenBlob<D::File>, offset: u64, buf: &mut [u8]) -> Result<usize, BlobError> {
        let header = &opened.header;
        let blob = header.blob;
        if offset > header.data_len {
            let len = header.data_len;
            return Err(BlobError::Invalid(format!("blob {blob}: offset {offset} beyond its end {len}")));
        }
        let n = (buf.len() as u64).min(header.data_len - offset);
        if n == 0 {
            return Ok(0);
        }
        let buf = &mut buf[..n as usize];
        let block_bytes = header.block_bytes as u64;
        let end = offset + n;
        let (first, last) = (offset / block_bytes, (end - 1) / block_bytes);
        let crcs = self.read_table(opened, first, last)?;
        let crc_of = |block_idx: u64| crcs[(block_idx - first) as usize];
        let mut scratch = Vec::new();
        let mut pos = offset;

        // Head: a first block covered only in part.
        let head_start = first * block_bytes;
        let head_end = head_start + header.block_len(first);
        if offset != head_start || end < head_end {
            let block = self.read_block(opened, first, crc_of(first), &mut scratch)?;
            let upto = end.min(head_end);
            buf[..(upto - offset) as usize]
                .copy_from_slice(&block[(offset - head_start) as usize..(upto - head_start) as usize]);
            pos = upto;
        }
        // Middle: whole blocks, read straight into `buf` with one call. From here `pos` is at a
        // block start (or at `end`).
        let whole_end = if end == header.data_len { end } else { end / block_bytes * block_bytes };
        if pos < whole_end {
            let dst = &mut buf[(pos - offset) as usize..(whole_end - offset) as usize];
            let (first_whole, last_whole) = (pos / block_bytes, (whole_end - 1) / block_bytes);
            let expected = &crcs[(first_whole - first) as usize..=(last_whole - first) as usize];
            read_checked(
                &opened.file,
                blob,
                first_whole,
                dst,
                header.data_offset() + pos,
                expected,
                header.block_bytes,
            )?;
            pos = whole_end;
        }
        // Tail: a last block covered only in part.
        if pos < end {
            let tail_idx = pos / block_bytes;
            let block = self.read_block(opened, tail_idx, crc_of(tail_idx), &mut scratch)?;
            buf[(pos - offset) as usize..].copy_from_slice(&block[..(end - pos) as usize]);
        }
        Ok(n as usize)
    }

    fn verify_opened(&self, opened: &OpenBlob<D::File>) -> Result<(), BlobError> {
        let header = &opened.header;
        let n_blocks = header.n_blocks();
        if n_blocks == 0 {
            return Ok(());
        }
        let crcs = self.read_table(opened, 0, n_blocks - 1)?;
        let block_bytes = header.block_bytes as u64;
        let blocks_per_read = (VERIFY_READ_BYTES_MAX / block_bytes).max(1);
        let mut scratch = Vec::new();
        let mut whole = CrcCombiner::new();
        let mut block_idx = 0;
        while block_idx < n_blocks {
            let n = blocks_per_read.min(n_blocks - block_idx);
            let start = block_idx * block_bytes;
            let len = ((block_idx + n) * block_bytes).min(header.data_len) - start;
            scratch.resize(len as usize, 0);
            let expected = &crcs[block_idx as usize..(block_idx + n) as usize];
            let at = header.data_offset() + start;
            read_checked(&opened.file, header.blob, block_idx, &mut scratch, at, expected, header.block_bytes)?;
            for (block, &crc) in scratch.chunks(block_bytes as usize).zip(expected) {
                whole.push(crc, block.len());
            }
            block_idx += n;
        }
        // Every block matched its table entry; a whole-blob mismatch means the table itself was
        // rewritten consistently, which only a bug does.
        if whole.finish() != header.data_crc {
            return Err(BlobError::Corrupt { blob: header.blob, block: None });
        }
        Ok(())
    }
}

/// Reads consecutive blocks starting at block `first_block` (file offset `at`) into `dst` and
/// checks each against `expected`.
fn read_checked<F: DiskFile>(
    file: &F,
    blob: BlobId,
    first_block: u64,
    dst: &mut [u8],
    at: u64,
    expected: &[u32],
    block_bytes: u32,
) -> Result<(), BlobError> {
    file.read_exact_at(dst, at).map_err(|e| eof_is_corrupt(e, blob, Some(first_block)))?;
    debug_assert_eq!(dst.len().div_ceil(block_bytes as usize), expected.len());
    for (i, (block, &crc)) in dst.chunks(block_bytes as usize).zip(expected).enumerate() {
        if crc32c::crc32c(block) != crc {
            return Err(BlobError::Corrupt { blob, block: Some(first_block + i as u64) });
        }
    }
    Ok(())
}

/// A file shorter than its header says is a damaged copy, not an I/O failure.
fn eof_is_corrupt(e: io::Error, blob: BlobId, block: Option<u64>) -> BlobError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => BlobError::Corrupt { blob, block },
        _ => e.into(),
    }
}
