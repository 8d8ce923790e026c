//! The Raft log's entries on disk: appended to segment files, one `fdatasync` per batch.
//!
//! A transactional database commit rewrites several scattered pages and costs about four times
//! a plain append and `fdatasync` here; openraft 0.9 waits for the leader's flush before it
//! replicates an entry, and each follower flushes before it answers, so a commit pays for two
//! flushes in a row. Hence this log.
//!
//! Layout: `raft-log/SSSSSSSSSSSSSSSSSSSS.seg` (S: the segment's sequence number), each segment a
//! header (magic, format version) followed by records `[length u32][crc32c u32][entry]`, entries
//! in index order. A segment is closed once it passes [`SEGMENT_BYTES`] and a new one begun.
//! Truncating cuts the segment holding the first removed entry and deletes later ones; purging
//! deletes the segments whose entries are all purged (the caller records the purge point first).
//!
//! Opening scans every segment. A torn record at the end of the last segment (a crash in the
//! middle of an append, which was never acknowledged) is cut off; a bad record anywhere else is
//! corruption and refuses the start.
//!
//! Records are opaque bytes here: the caller gives each entry's index and an id to remember
//! (the Raft log id), so this module knows nothing of openraft.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

const MAGIC: &[u8; 8] = b"SHOALWAL";
/// Format version of a segment (in its header).
pub const WAL_FORMAT: u32 = 1;
const HEADER_LEN: u64 = 12;
const RECORD_HEADER: usize = 8;
/// A segment is closed once it holds this much.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// No single entry is larger (a batch of commands is far smaller).
const RECORD_MAX: u32 = 256 << 20;

/// Where an entry is, and the id its writer gave it.
#[derive(Clone, Copy, Debug)]
struct Loc<I> {
    seg: u64,
    off: u64,
    len: u32,
    id: I,
}

struct Index<I> {
    entries: BTreeMap<u64, Loc<I>>,
    /// Open segment files by sequence number (readers use them; deleting a segment while a
    /// reader holds its file is fine).
    files: BTreeMap<u64, Arc<File>>,
}

/// Readers' handle: shared with the writer, cheap to clone.
pub struct WalReader<I> {
    index: Arc<Mutex<Index<I>>>,
    /// Held shared by a read from finding its entries until it has read them, and exclusively
    /// by a truncation, which cuts bytes that later appends overwrite.
    io: Arc<RwLock<()>>,
}

impl<I> Clone for WalReader<I> {
    fn clone(&self) -> Self {
        WalReader { index: self.index.clone(), io: self.io.clone() }
    }
}

/// The only writer (the log writer thread owns it).
pub struct WalWriter<I> {
    dir: PathBuf,
    index: Arc<Mutex<Index<I>>>,
    io: Arc<RwLock<()>>,
    tail_seq: u64,
    tail: Arc<File>,
    tail_len: u64,
    buf: Vec<u8>,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn new_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(seg_path(dir, seq))?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&WAL_FORMAT.to_be_bytes());
    file.write_all_at(&header, 0)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Open (or create) the log in `dir`. `id_of` reads an entry's index and id from its bytes;
/// entries at or below `purged` are not indexed (they wait for their segment to go).
pub fn open<I: Copy>(dir: &Path, purged: Option<u64>, id_of: impl Fn(&[u8]) -> io::Result<(u64, I)>) -> io::Result<(WalWriter<I>, WalReader<I>)> {
    std::fs::create_dir_all(dir)?;
    let mut seqs = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_suffix(".seg").and_then(|s| s.parse::<u64>().ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let mut index = Index { entries: BTreeMap::new(), files: BTreeMap::new() };
    let mut tail = None;
    for (n, &seq) in seqs.iter().enumerate() {
        let last = n + 1 == seqs.len();
        let path = seg_path(dir, seq);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let bytes = std::fs::read(&path)?;
        if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
            if last && bytes.len() < HEADER_LEN as usize {
                // Created and not yet synced when the process stopped: start it again.
                drop(file);
                std::fs::remove_file(&path)?;
                continue;
            }
            return Err(corrupt(format!("{}: not a Shoal log segment", path.display())));
        }
        let version = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != WAL_FORMAT {
            return Err(corrupt(format!("{}: log segment format {version}, this build reads {WAL_FORMAT}", path.display())));
        }
        let mut off = HEADER_LEN as usize;
        while off < bytes.len() {
            let torn = |what: &str| corrupt(format!("{}: {what} at offset {off}", path.display()));
            if bytes.len() - off < RECORD_HEADER {
                if last {
                    break;
                }
                return Err(torn("a cut record header"));
            }
            let len = u32::from_be_bytes(bytes[off..off + 4].try_into().expect("4 bytes"));
            let crc = u32::from_be_bytes(bytes[off + 4..off + 8].try_into().expect("4 bytes"));
            let start = off + RECORD_HEADER;
            // No entry is empty: a zero length is a tail of zeros left by a crash.
            let whole = len > 0 && len <= RECORD_MAX && bytes.len() - start >= len as usize;
            if !whole || crc32c::crc32c(&bytes[start..start + len as usize]) != crc {
                if last {
                    break;
                }
                return Err(torn("a damaged record"));
            }
            let (i, id) = id_of(&bytes[start..start + len as usize])?;
            if purged.is_none_or(|p| i > p) {
                // A later record at an index replaces an earlier one (a truncation that was
                // cut short by a crash before its segment was cut).
                index.entries.split_off(&i);
                index.entries.insert(i, Loc { seg: seq, off: start as u64, len, id });
            }
            off = start + len as usize;
        }
        if off < bytes.len() {
            // Taken for an append cut by a crash (never acknowledged): within the last batch,
            // pages may reach the disk in any order, so records after a bad one prove nothing.
            tracing::warn!(segment = %path.display(), kept = off, dropped = bytes.len() - off, "cut a torn record off the end of the Raft log");
            file.set_len(off as u64)?;
            file.sync_all()?;
        }
        let file = Arc::new(file);
        index.files.insert(seq, file.clone());
        if last {
            tail = Some((seq, file, off as u64));
        }
    }
    let (tail_seq, tail, tail_len) = match tail {
        Some(t) => t,
        None => {
            let seq = seqs.last().map_or(1, |s| s + 1);
            let file = Arc::new(new_segment(dir, seq)?);
            index.files.insert(seq, file.clone());
            (seq, file, HEADER_LEN)
        }
    };
    let (index, io) = (Arc::new(Mutex::new(index)), Arc::new(RwLock::new(())));
    let writer = WalWriter { dir: dir.to_path_buf(), index: index.clone(), io: io.clone(), tail_seq, tail, tail_len, buf: Vec::new() };
    Ok((writer, WalReader { index, io }))
}

impl<I: Copy> WalWriter<I> {
    /// Append entries (`(index, id, bytes)`, in index order, each after the last one held or
    /// replacing a truncated suffix) and make them durable: one write and one `fdatasync`.
    pub fn append<'a>(&mut self, entries: impl IntoIterator<Item = (u64, I, &'a [u8])>) -> io::Result<()> {
        self.buf.clear();
        let mut locs = Vec::new();
        for (i, id, bytes) in entries {
            let len = u32::try_from(bytes.len()).ok().filter(|l| *l <= RECORD_MAX).ok_or_else(|| corrupt(format!("log entry {i} too large")))?;
            self.buf.extend_from_slice(&len.to_be_bytes());
            self.buf.extend_from_slice(&crc32c::crc32c(bytes).to_be_bytes());
            let off = self.tail_len + self.buf.len() as u64;
            self.buf.extend_from_slice(bytes);
            locs.push((i, Loc { seg: self.tail_seq, off, len, id }));
        }
        if locs.is_empty() {
            return Ok(());
        }
        self.tail.write_all_at(&self.buf, self.tail_len)?;
        self.tail.sync_data()?;
        self.tail_len += self.buf.len() as u64;
        {
            let mut ix = self.index.lock().expect("wal index");
            for (i, loc) in locs {
                ix.entries.split_off(&i);
                ix.entries.insert(i, loc);
            }
        }
        if self.tail_len >= SEGMENT_BYTES {
            self.roll()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        let seq = self.tail_seq + 1;
        let file = Arc::new(new_segment(&self.dir, seq)?);
        self.index.lock().expect("wal index").files.insert(seq, file.clone());
        (self.tail_seq, self.tail, self.tail_len) = (seq, file, HEADER_LEN);
        Ok(())
    }

    /// Remove every entry at index `from` and above, durably.
    pub fn truncate(&mut self, from: u64) -> io::Result<()> {
        let io = self.io.clone();
        let _no_reads = io.write().expect("wal io lock");
        let (cut, file, later) = {
            let mut ix = self.index.lock().expect("wal index");
            let Some(first) = ix.entries.range(from..).next().map(|(_, l)| *l) else { return Ok(()) };
            ix.entries.split_off(&from);
            let later: Vec<u64> = ix.files.range(first.seg + 1..).map(|(s, _)| *s).collect();
            for s in &later {
                ix.files.remove(s);
            }
            let file = ix.files.get(&first.seg).cloned().ok_or_else(|| corrupt("truncated segment missing".into()))?;
            (first, file, later)
        };
        // Later segments go first, newest first, so a crash in between leaves a prefix of the
        // log, never a gap.
        for s in later.iter().rev() {
            std::fs::remove_file(seg_path(&self.dir, *s))?;
        }
        if !later.is_empty() {
            sync_dir(&self.dir)?;
        }
        let start = cut.off - RECORD_HEADER as u64;
        file.set_len(start)?;
        file.sync_all()?;
        (self.tail_seq, self.tail, self.tail_len) = (cut.seg, file, start);
        Ok(())
    }

    /// Forget every entry at or below `upto` and delete the segments that held only those. The
    /// caller has recorded durably that the log starts after `upto`.
    pub fn purge(&mut self, upto: u64) -> io::Result<()> {
        let gone: Vec<u64> = {
            let mut ix = self.index.lock().expect("wal index");
            let kept = ix.entries.split_off(&(upto + 1));
            ix.entries = kept;
            // A segment may go when no kept entry lies in it or after the start of it, and it is
            // not the one being written.
            let first_kept_seg = ix.entries.values().next().map_or(self.tail_seq, |l| l.seg);
            let gone: Vec<u64> = ix.files.range(..first_kept_seg.min(self.tail_seq)).map(|(s, _)| *s).collect();
            for s in &gone {
                ix.files.remove(s);
            }
            gone
        };
        for s in &gone {
            std::fs::remove_file(seg_path(&self.dir, *s))?;
        }
        if !gone.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl<I: Copy> WalReader<I> {
    /// The entries with an index in `range`, as bytes, each checked against its CRC.
    pub fn read(&self, range: Range<u64>) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let _reading = self.io.read().expect("wal io lock");
        let wanted: Vec<(u64, Loc<I>, Arc<File>)> = {
            let ix = self.index.lock().expect("wal index");
            ix.entries
                .range(range)
                .map(|(i, l)| Ok((*i, *l, ix.files.get(&l.seg).cloned().ok_or_else(|| corrupt(format!("segment {} missing", l.seg)))?)))
                .collect::<io::Result<_>>()?
        };
        let mut out = Vec::with_capacity(wanted.len());
        for (i, loc, file) in wanted {
            let mut rec = vec![0u8; RECORD_HEADER + loc.len as usize];
            file.read_exact_at(&mut rec, loc.off - RECORD_HEADER as u64)?;
            let crc = u32::from_be_bytes(rec[4..8].try_into().expect("4 bytes"));
            rec.drain(..RECORD_HEADER);
            if crc32c::crc32c(&rec) != crc {
                return Err(corrupt(format!("log entry {i}: checksum mismatch")));
            }
            out.push((i, rec));
        }
        Ok(out)
    }

    /// The index and id of the last entry held.
    pub fn last(&self) -> Option<(u64, I)> {
        self.index.lock().expect("wal index").entries.last_key_value().map(|(i, l)| (*i, l.id))
    }

    pub fn is_empty(&self) -> bool {
        self.index.lock().expect("wal index").entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test records: the index in 8 bytes, then filler; the id is the index times 10.
    fn rec(i: u64, fill: usize) -> Vec<u8> {
        let mut v = i.to_be_bytes().to_vec();
        v.resize(8 + fill, i as u8);
        v
    }
    fn id_of(b: &[u8]) -> io::Result<(u64, u64)> {
        let i = u64::from_be_bytes(b[..8].try_into().map_err(|_| corrupt("short".into()))?);
        Ok((i, i * 10))
    }
    fn append(w: &mut WalWriter<u64>, range: Range<u64>, fill: usize) {
        let recs: Vec<(u64, Vec<u8>)> = range.map(|i| (i, rec(i, fill))).collect();
        w.append(recs.iter().map(|(i, b)| (*i, *i * 10, &b[..]))).unwrap();
    }
    fn indexes(r: &WalReader<u64>, range: Range<u64>) -> Vec<u64> {
        r.read(range).unwrap().into_iter().map(|(i, b)| {
            assert_eq!(b, rec(i, b.len() - 8), "entry {i} read back whole");
            i
        }).collect()
    }
    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    /// A log holding entries 1 and 2 (50 bytes of filler each): its one segment and its length.
    fn two_entries(dir: &Path) -> (PathBuf, u64) {
        let (mut w, _) = open(dir, None, id_of).unwrap();
        append(&mut w, 1..3, 50);
        let seg = seg_path(dir, 1);
        let len = std::fs::metadata(&seg).unwrap().len();
        (seg, len)
    }

    #[test]
    fn entries_survive_a_reopen_and_read_back_whole() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, r) = open(d.path(), None, id_of).unwrap();
        assert!(r.is_empty());
        append(&mut w, 1..4, 100);
        append(&mut w, 4..5, 3);
        assert_eq!(r.last(), Some((4, 40)));
        drop((w, r));
        let (_, r) = open(d.path(), None, id_of).unwrap();
        assert_eq!(indexes(&r, 0..100), vec![1, 2, 3, 4]);
        assert_eq!(indexes(&r, 2..4), vec![2, 3]);
        assert_eq!(r.last(), Some((4, 40)));
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_appends_go_on() {
        let d = tempfile::tempdir().unwrap();
        let (seg, full) = two_entries(d.path());
        // A crash in the middle of appending entry 3: half of it reached the disk.
        let f = OpenOptions::new().append(true).open(&seg).unwrap();
        let r3 = rec(3, 50);
        let mut torn = (r3.len() as u32).to_be_bytes().to_vec();
        torn.extend_from_slice(&crc32c::crc32c(&r3).to_be_bytes());
        torn.extend_from_slice(&r3[..20]);
        f.write_all_at(&torn, full).unwrap();
        drop(f);
        let (mut w, r) = open(d.path(), None, id_of).unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), full, "the torn record is cut off");
        assert_eq!(r.last(), Some((2, 20)));
        append(&mut w, 3..4, 50);
        drop((w, r));
        let (_, r) = open(d.path(), None, id_of).unwrap();
        assert_eq!(indexes(&r, 0..10), vec![1, 2, 3]);
    }

    #[test]
    fn a_tail_of_zeros_is_cut_off() {
        let d = tempfile::tempdir().unwrap();
        // A crash after the file grew and before its bytes were written: zeros.
        let (seg, full) = two_entries(d.path());
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(full + 4096).unwrap();
        let (mut w, r) = open(d.path(), None, id_of).unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), full);
        assert_eq!(r.last(), Some((2, 20)));
        append(&mut w, 3..4, 50);
        assert_eq!(indexes(&r, 0..10), vec![1, 2, 3]);
    }

    #[test]
    fn a_read_during_a_truncation_sees_whole_entries() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, r) = open(d.path(), None, id_of).unwrap();
        append(&mut w, 1..200, 300);
        let reader = {
            let r = r.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    // Every read succeeds and returns a prefix of whole entries, old or new.
                    let got = r.read(1..200).unwrap();
                    for (n, (i, b)) in got.iter().enumerate() {
                        assert_eq!(*i, n as u64 + 1);
                        assert_eq!(&b[..8], &i.to_be_bytes());
                    }
                }
            })
        };
        for round in 0..50u64 {
            w.truncate(100 + round).unwrap();
            append(&mut w, 100 + round..200, 7 + round as usize);
        }
        reader.join().unwrap();
    }

    #[test]
    fn a_damaged_record_before_the_end_refuses_the_start() {
        let d = tempfile::tempdir().unwrap();
        let (seg, _) = two_entries(d.path());
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(b"X", HEADER_LEN + RECORD_HEADER as u64 + 20).unwrap();
        drop(f);
        // In the last segment a bad record is taken for an append cut by a crash (within the
        // last batch pages reach the disk in any order) and ends the log ...
        let (mut w, r) = open(d.path(), None, id_of).unwrap();
        assert_eq!(r.last(), None);
        // ... in an earlier one it is corruption.
        append(&mut w, 1..3, 50);
        drop((w, r));
        let (mut w, _) = open(d.path(), None, id_of).unwrap();
        w.roll().unwrap();
        append(&mut w, 3..4, 50);
        drop(w);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(b"Y", HEADER_LEN + RECORD_HEADER as u64 + 20).unwrap();
        drop(f);
        let err = open(d.path(), None, id_of).err().expect("corruption refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("damaged record"), "{err}");
    }

    #[test]
    fn truncate_removes_the_suffix_across_segments() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, r) = open(d.path(), None, id_of).unwrap();
        append(&mut w, 1..4, 10);
        w.roll().unwrap();
        append(&mut w, 4..7, 10);
        assert_eq!(segments(d.path()), 2);
        w.truncate(3).unwrap();
        assert_eq!(segments(d.path()), 1, "the later segment is deleted");
        assert_eq!(r.last(), Some((2, 20)));
        // New entries at the truncated indexes replace the old ones, also after a reopen.
        append(&mut w, 3..5, 77);
        drop((w, r));
        let (_, r) = open(d.path(), None, id_of).unwrap();
        let got = r.read(0..10).unwrap();
        assert_eq!(got.iter().map(|(i, b)| (*i, b.len())).collect::<Vec<_>>(), vec![(1, 18), (2, 18), (3, 85), (4, 85)]);
        w_truncate_past_the_end_is_a_no_op(d.path());
    }

    fn w_truncate_past_the_end_is_a_no_op(dir: &Path) {
        let (mut w, r) = open(dir, None, id_of).unwrap();
        w.truncate(100).unwrap();
        assert_eq!(r.last(), Some((4, 40)));
    }

    #[test]
    fn purge_deletes_whole_segments_only_and_reopen_skips_purged_entries() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, r) = open(d.path(), None, id_of).unwrap();
        append(&mut w, 1..4, 10);
        w.roll().unwrap();
        append(&mut w, 4..7, 10);
        w.roll().unwrap();
        append(&mut w, 7..8, 10);
        w.purge(2).unwrap();
        assert_eq!(segments(d.path()), 3, "segment 1 still holds entry 3");
        assert_eq!(indexes(&r, 0..100), vec![3, 4, 5, 6, 7]);
        w.purge(6).unwrap();
        assert_eq!(segments(d.path()), 1);
        assert_eq!(indexes(&r, 0..100), vec![7]);
        // Everything purged: the segment being written stays.
        w.purge(7).unwrap();
        assert_eq!(segments(d.path()), 1);
        assert!(r.is_empty());
        append(&mut w, 8..9, 10);
        drop((w, r));
        let (_, r) = open(d.path(), Some(7), id_of).unwrap();
        assert_eq!(indexes(&r, 0..100), vec![8]);
    }

    #[test]
    fn a_full_segment_rolls_over() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, r) = open(d.path(), None, id_of).unwrap();
        let big = (SEGMENT_BYTES / 4) as usize;
        for i in 1..6 {
            append(&mut w, i..i + 1, big);
        }
        assert_eq!(segments(d.path()), 2);
        drop((w, r));
        let (_, r) = open(d.path(), None, id_of).unwrap();
        assert_eq!(indexes(&r, 0..10), vec![1, 2, 3, 4, 5]);
    }
}
