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
    fn space(&self, dir: &Path) -> io::Result<DiskSpace> {
        let stat = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
        let fragment_bytes = stat.fragment_size() as u64;
        Ok(DiskSpace {
            free_bytes: (stat.blocks_available() as u64).saturating_mul(fragment_bytes),
            total_bytes: (stat.blocks() as u64).saturating_mul(fragment_bytes),
        })
    }
}
