//! An in-memory [`Disk`] that models what survives a crash, for tests and the simulator.
//!
//! Every file keeps the bytes of its last sync besides its current bytes, and every directory
//! keeps the entries of its last sync besides its current entries. [`MemDisk::crash`] throws away
//! everything not synced: the pessimistic (and allowed) outcome of a power loss. One
//! simplification: creating a directory is durable at once.
//!
//! Faults: [`MemDisk::power_cut_after`] makes every mutating operation after the next `n` fail (the
//! one at the cut tears: a write lands half), [`MemDisk::corrupt`] flips a stored byte.

use crate::disk::{Disk, DiskFile, DiskSpace};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Simulated disk; clones share the same contents (so a test can reopen a store on it).
#[derive(Clone, Debug)]
pub struct MemDisk {
    state: Arc<Mutex<MemState>>,
}

type Dir = BTreeMap<String, Arc<MemInode>>;

#[derive(Debug)]
struct MemState {
    dirs: BTreeMap<PathBuf, Dir>,
    durable_dirs: BTreeMap<PathBuf, Dir>,
    total_bytes: u64,
    /// Mutating operations left before the power cut; `None`: no cut planned.
    ops_until_cut: Option<u64>,
    powered_off: bool,
}

#[derive(Debug, Default)]
struct MemInode {
    bytes: Mutex<InodeBytes>,
}

#[derive(Debug, Default)]
struct InodeBytes {
    data: Vec<u8>,
    /// The bytes of the last sync, kept only while they differ from `data` (copy on the first
    /// write after a sync, so writing a new file never copies it).
    durable: Option<Vec<u8>>,
}

impl InodeBytes {
    fn before_write(&mut self) {
        if self.durable.is_none() {
            self.durable = Some(self.data.clone());
        }
    }
}

/// What the cut does to the operation that hits it.
enum Tick {
    Run,
    /// This operation is interrupted by the cut: a write lands partly, then it fails.
    Cut,
}

fn powered_off() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file or directory", path.display()))
}

/// Splits a file path into its directory and UTF-8 name.
fn split(path: &Path) -> io::Result<(&Path, &str)> {
    let dir = path.parent().ok_or_else(|| not_found(path))?;
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| not_found(path))?;
    Ok((dir, name))
}

impl MemState {
    /// Counts one mutating operation against a planned power cut.
    fn tick(&mut self) -> io::Result<Tick> {
        if self.powered_off {
            return Err(powered_off());
        }
        match &mut self.ops_until_cut {
            Some(0) => {
                self.powered_off = true;
                Ok(Tick::Cut)
            }
            Some(n) => {
                *n -= 1;
                Ok(Tick::Run)
            }
            None => Ok(Tick::Run),
        }
    }

    /// Like `tick` for operations that cannot be torn: at the cut they simply fail.
    fn tick_whole(&mut self) -> io::Result<()> {
        match self.tick()? {
            Tick::Run => Ok(()),
            Tick::Cut => Err(powered_off()),
        }
    }

    fn check_powered(&self) -> io::Result<()> {
        if self.powered_off {
            Err(powered_off())
        } else {
            Ok(())
        }
    }

    fn lookup(&self, path: &Path) -> io::Result<Arc<MemInode>> {
        let (dir, name) = split(path)?;
        self.dirs.get(dir).and_then(|d| d.get(name)).cloned().ok_or_else(|| not_found(path))
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| not_found(dir))
    }
}

impl Default for MemDisk {
    fn default() -> Self {
        MemDisk::new()
    }
}

impl MemDisk {
    /// A disk of 1 TiB.
    pub fn new() -> MemDisk {
        MemDisk::with_total_bytes(1 << 40)
    }

    pub fn with_total_bytes(total_bytes: u64) -> MemDisk {
        let state = MemState {
            dirs: BTreeMap::new(),
            durable_dirs: BTreeMap::new(),
            total_bytes,
            ops_until_cut: None,
            powered_off: false,
        };
        MemDisk { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panicking test thread must not hide the disk from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Power loss and reboot: every file goes back to its last synced bytes, every directory to
    /// its last synced entries; files no durable entry names are gone. Clears a power cut.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.dirs = state.durable_dirs.clone();
        for dir in state.dirs.values() {
            for inode in dir.values() {
                let mut bytes = inode.bytes.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(durable) = bytes.durable.take() {
                    bytes.data = durable;
                }
            }
        }
        state.ops_until_cut = None;
        state.powered_off = false;
    }

    /// Lets the next `ops` mutating operations (create, write, sync, rename, remove) succeed, then
    /// cuts the power: that operation and every later one fails until [`MemDisk::crash`].
    pub fn power_cut_after(&self, ops: u64) {
        self.lock().ops_until_cut = Some(ops);
    }

    /// Media corruption: flips every bit of the byte at `offset` of `path`, in its current and in
    /// its durable contents.
    pub fn corrupt(&self, path: &Path, offset: u64) -> io::Result<()> {
        let inode = self.lock().lookup(path)?;
        let mut bytes = inode.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = &mut *bytes;
        let idx = usize::try_from(offset).ok().filter(|&i| i < bytes.data.len());
        let idx = idx.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset beyond end of file"))?;
        bytes.data[idx] ^= 0xff;
        if let Some(durable) = bytes.durable.as_mut().filter(|d| idx < d.len()) {
            durable[idx] ^= 0xff;
        }
        Ok(())
    }

    /// Whether `path` names a file (in the current, not necessarily durable, state).
    pub fn exists(&self, path: &Path) -> bool {
        self.lock().lookup(path).is_ok()
    }
}

/// A handle on a [`MemDisk`] file. It keeps working after the file is removed, as on Unix.
#[derive(Debug)]
pub struct MemFile {
    disk: MemDisk,
    inode: Arc<MemInode>,
}

impl MemFile {
    fn bytes(&self) -> MutexGuard<'_, InodeBytes> {
        self.inode.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DiskFile for MemFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let tick = self.disk.lock().tick()?;
        let offset = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let landed = match tick {
            Tick::Run => buf,
            Tick::Cut => &buf[..buf.len() / 2],
        };
        let mut bytes = self.bytes();
        bytes.before_write();
        let end = offset + landed.len();
        if bytes.data.len() < end {
            bytes.data.resize(end, 0);
        }
        bytes.data[offset..end].copy_from_slice(landed);
        match tick {
            Tick::Run => Ok(()),
            Tick::Cut => Err(powered_off()),
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.lock().check_powered()?;
        let bytes = self.bytes();
        let start = usize::try_from(offset).ok().filter(|&s| s <= bytes.data.len());
        match start.and_then(|s| Some(s..s.checked_add(buf.len())?)) {
            Some(range) if range.end <= bytes.data.len() => {
                buf.copy_from_slice(&bytes.data[range]);
                Ok(())
            }
            _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read beyond end of file")),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.disk.lock().tick_whole()?;
        self.bytes().durable = None;
        Ok(())
    }

    fn len_bytes(&self) -> io::Result<u64> {
        self.disk.lock().check_powered()?;
        Ok(self.bytes().data.len() as u64)
    }
}

impl Disk for MemDisk {
    type File = MemFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick_whole()?;
        for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            state.dirs.entry(ancestor.to_path_buf()).or_default();
            state.durable_dirs.entry(ancestor.to_path_buf()).or_default();
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<MemFile> {
        let mut state = self.lock();
        state.tick_whole()?;
        let (dir, name) = split(path)?;
        let dir = state.dir_mut(dir)?;
        let inode = match dir.get(name) {
            Some(inode) => {
                let mut bytes = inode.bytes.lock().unwrap_or_else(|e| e.into_inner());
                bytes.before_write();
                bytes.data.clear();
                drop(bytes);
                Arc::clone(inode)
            }
            None => {
                // A new file's durable contents are empty: `durable: None` means "same as data".
                let inode = Arc::new(MemInode::default());
                dir.insert(name.to_string(), Arc::clone(&inode));
                inode
            }
        };
        Ok(MemFile { disk: self.clone(), inode })
    }

    fn open(&self, path: &Path) -> io::Result<MemFile> {
        let state = self.lock();
        state.check_powered()?;
        Ok(MemFile { disk: self.clone(), inode: state.lookup(path)? })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick_whole()?;
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        // Check the target directory first so a failed rename changes nothing.
        state.dir_mut(to_dir)?;
        let inode = state.dir_mut(from_dir)?.remove(from_name).ok_or_else(|| not_found(from))?;
        state.dir_mut(to_dir)?.insert(to_name.to_string(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick_whole()?;
        let (dir, name) = split(path)?;
        state.dir_mut(dir)?.remove(name).map(drop).ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick_whole()?;
        let entries = state.dirs.get(dir).cloned().ok_or_else(|| not_found(dir))?;
        state.durable_dirs.insert(dir.to_path_buf(), entries);
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        state.check_powered()?;
        let files = state.dirs.get(dir).ok_or_else(|| not_found(dir))?;
        let mut names: Vec<String> = files.keys().cloned().collect();
        let subdirs = state.dirs.keys().filter(|d| d.parent() == Some(dir));
        names.extend(subdirs.filter_map(|d| d.file_name()?.to_str().map(str::to_string)));
        Ok(names)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let state = self.lock();
        state.check_powered()?;
        let inode = state.lookup(path)?;
        let len = inode.bytes.lock().unwrap_or_else(|e| e.into_inner()).data.len() as u64;
        Ok(len)
    }

    fn space(&self, _dir: &Path) -> io::Result<DiskSpace> {
        let state = self.lock();
        state.check_powered()?;
        let used_bytes: u64 = state
            .dirs
            .values()
            .flat_map(|d| d.values())
            .map(|i| i.bytes.lock().unwrap_or_else(|e| e.into_inner()).data.len() as u64)
            .sum();
        Ok(DiskSpace { free_bytes: state.total_bytes.saturating_sub(used_bytes), total_bytes: state.total_bytes })
    }
}
