//! The filesystem operations the blob store needs, behind a trait so that the simulator can run
//! the same store over a simulated disk. [`RealDisk`] is the production implementation.
//!
//! Durability contract (POSIX as used by careful databases): bytes written to a file survive a
//! crash only once the file is synced; a created, renamed or removed directory entry survives
//! only once its directory is synced.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Free and total bytes of the filesystem holding a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still allocate.
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// An open file. Positioned I/O only, so one handle may serve concurrent readers.
pub trait DiskFile: Send + Sync {
    /// Write all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Fill all of `buf` from `offset`; a file too short gives `ErrorKind::UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Make the file's data (and the metadata needed to read it back, like its length) durable.
    fn sync_data(&self) -> io::Result<()>;
    fn len_bytes(&self) -> io::Result<u64>;
}

pub trait Disk: Send + Sync + 'static {
    type File: DiskFile;

    /// Create `dir` and its missing ancestors. Not a durability point on its own.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Create (or truncate) `path` for writing and reading.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Open an existing file for reading; a missing file gives `ErrorKind::NotFound`.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Atomically replace `to` by `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Remove a file; a missing file gives `ErrorKind::NotFound`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Make the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of `dir` (files and directories, in no particular order). Names that
    /// are not UTF-8 are skipped: the store never creates them.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    fn space(&self, dir: &Path) -> io::Result<DiskSpace>;

    /// Create (or truncate) `path`, write `parts` one after another from offset 0, and sync
    /// the file's data: on return the whole file is durable (its directory entry is not).
    fn write_synced(&self, path: &Path, parts: &[&[u8]]) -> io::Result<()> {
        write_buffered(self, path, parts)
    }
}

/// [`Disk::write_synced`] through `create`, `write_all_at` and `sync_data`.
pub fn write_buffered<D: Disk + ?Sized>(disk: &D, path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let file = disk.create(path)?;
    let mut at = 0u64;
    for part in parts {
        file.write_all_at(part, at)?;
        at += part.len() as u64;
    }
    file.sync_data()
}

/// Alignment of direct I/O: file offsets, lengths and buffer addresses (a multiple of every
/// logical block size in use, 512 or 4096).
const DIRECT_ALIGN: usize = 4096;
/// Buffers kept for direct writes (each as large as the largest blob written so far).
const DIRECT_BUFFERS_KEPT: usize = 4;

/// Buffers for direct writes, reused so that their memory stays mapped: touching fresh pages
/// for every blob costs more than the copy into them.
static DIRECT_BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Write `parts` as a new file with `O_DIRECT`: one copy into an aligned buffer, then straight
/// to the device, no page cache. The padding of the last block is cut off by a truncate before
/// the sync. `Ok(false)`: the filesystem does not do direct I/O, refusing it at the open
/// (tmpfs) or at the write (a logical block larger than the alignment).
fn write_direct(path: &Path, parts: &[&[u8]]) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
        Err(e) => return Err(e),
    };
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let padded = len.next_multiple_of(DIRECT_ALIGN);
    let mut buf = DIRECT_BUFFERS.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
    if buf.len() < padded + DIRECT_ALIGN {
        buf.resize(padded + DIRECT_ALIGN, 0);
    }
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let result = (|| {
        let aligned = &mut buf[start..start + padded];
        let mut at = 0;
        for part in parts {
            aligned[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        aligned[len..].fill(0);
        FileExt::write_all_at(&file, aligned, 0)?;
        if padded != len {
            file.set_len(len as u64)?;
        }
        file.sync_data()
    })();
    let result = match result {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        other => other.map(|()| true),
    };
    let mut pool = DIRECT_BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < DIRECT_BUFFERS_KEPT {
        pool.push(buf);
    }
    result
}

/// The local filesystem through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

/// A file of the local filesystem.
#[derive(Debug)]
pub struct RealFile(fs::File);

impl DiskFile for RealFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Disk for RealDisk {
    type File = RealFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<RealFile> {
        let file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(RealFile(file))
    }
    fn open(&self, path: &Path) -> io::Result<RealFile> {
        Ok(RealFile(fs::File::open(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }
    fn write_synced(&self, path: &Path, parts: &[&[u8]]) -> io::Result<()> {
        if write_direct(path, parts)? {
            return Ok(());
        }
        // No direct I/O on this filesystem: through the page cache (`create` truncates what a
        // refused direct write may have left).
        write_buffered(self, path, parts)
    }
    fn space(&self, dir: &Path) -> io::Result<DiskSpace> {
        let stat = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
        let fragment_bytes = stat.fragment_size() as u64;
        Ok(DiskSpace {
            free_bytes: (stat.blocks_available() as u64).saturating_mul(fragment_bytes),
            total_bytes: (stat.blocks() as u64).saturating_mul(fragment_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct writes of any length give exactly the bytes asked for: the padding of the last
    /// block is cut off, and a reused (larger, dirty) buffer leaks nothing into the file.
    #[test]
    fn direct_writes_are_exact() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, len) in [20_000usize, 0, 1, 4095, 4096, 4097, 3 << 20, 5].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let head = [i as u8; 64];
            let path = dir.path().join(format!("f{i}"));
            RealDisk.write_synced(&path, &[&head, &data]).expect("write");
            let back = fs::read(&path).expect("read back");
            assert_eq!(back.len(), 64 + len, "length {len}");
            assert_eq!(&back[..64], &head[..]);
            assert!(back[64..] == data[..], "bytes of length {len}");
        }
    }

    /// On a filesystem that does direct I/O (ext4 and xfs do, tmpfs does not), the direct path
    /// is the one taken.
    #[test]
    fn direct_path_taken_where_supported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let supported = write_direct(&path, &[b"abc"]).expect("write");
        let fs_type = nix::sys::statfs::statfs(dir.path()).expect("statfs").filesystem_type();
        if fs_type == nix::sys::statfs::EXT4_SUPER_MAGIC {
            assert!(supported, "ext4 refused O_DIRECT");
            assert_eq!(fs::read(&path).unwrap(), b"abc");
        }
    }
}
