//! Directory delegations on the mount's side (see [`MetaOp::Delegate`]).
//!
//! After a create in a directory, the mount asks for the directory's delegation in the
//! background, with the directory's whole listing. While it holds it, nobody else reads or
//! changes the directory's entries without recalling it first, so the mount answers from here:
//! a name not in the listing does not exist, and a new regular file is created here at once,
//! with an inode number reserved beforehand ([`MetaOp::ReserveInodes`]) and this mount's
//! clock. Such files are written back ([`MetaOp::CreateAt`], many in one log entry) within
//! [`WRITE_BACK_AGE`], when the directory is recalled, before its lease ends, and before any
//! request that needs them at the metadata service (an open, a write's data, a rename...).
//!
//! A small file written from its start and closed before its write-back keeps its bytes here
//! and goes in the same batch as one command with them ([`MetaOp::CreateAtWith`]).
//!
//! What this gives up: a created file is durable once written back, not when `creat` or
//! `close` returns (as on a local disk, where only `fsync` makes it so). A mount killed in
//! between loses the files created in the last [`WRITE_BACK_AGE`] and not synced, with the
//! bytes they were closed with. A write-back the service refuses is reported at the file's
//! next `fsync` or close on this mount ([`Delegations::take_lost`]). Close-to-open consistency
//! holds: another client's lookup or listing recalls the directory, and the recall is
//! acknowledged only once everything created here is written back.

use shoal_client::data::now_ns;
use shoal_client::Client;
use shoal_types::meta_msg::{Intent, MetaOp, MetaReply, MetaResponse, DELEGATION_LEASE_NS};
use shoal_types::ByteBuf;
use shoal_types::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Local creates stop this long before the lease ends (counted from before the request).
const CREATE_MARGIN: Duration = Duration::from_millis(1500);
/// A delegation is renewed (in use) or given back (idle) this long before it ends.
const RENEW_BEFORE: Duration = Duration::from_millis(2500);
/// Files created here wait at most about this long to be written back ...
pub const WRITE_BACK_AGE: Duration = Duration::from_millis(20);
/// ... or until this many wait in one directory.
const WRITE_BACK_BATCH: usize = 256;
/// Inode numbers reserved at once, and asked for again below this many.
const RESERVE_COUNT: u32 = 1024;
const RESERVE_LOW: u64 = 256;
/// A directory that was recalled, or refused, is not asked for again for this long.
const BACK_OFF: Duration = Duration::from_secs(3);
/// Longest name (as the metadata service checks it).
const NAME_MAX: usize = 255;
/// How often the keeper looks for work.
const KEEPER_TICK: Duration = Duration::from_millis(5);

struct Pending {
    dir: u64,
    parent: FileHandle,
    name: String,
    attr: Attr,
    cred: Credentials,
    /// Open file handles of this mount on it.
    opens: u32,
    since: Instant,
    /// Being written back.
    sending: bool,
    /// Its first version, when it was written from its start and closed before being written
    /// back (a small file): sent with its create ([`MetaOp::CreateAtWith`]).
    data: Option<Vec<u8>>,
}

struct Dir {
    handle: FileHandle,
    /// The lease ends after this (as seen here: counted from before the request was sent).
    until: Instant,
    /// Its attributes as this mount's creates changed them (`None` after another change made
    /// here: then asked for again).
    attr: Option<Attr>,
    /// Every name in the directory, once the listing is in (`None` while it is read).
    names: Option<HashSet<String>>,
    /// Entries this mount changed while the listing was read: (name, present).
    changes: Vec<(String, bool)>,
    /// Created here since the delegation was granted or renewed.
    used: bool,
    /// Being recalled, renewed or given back: nothing more is created here.
    closing: bool,
}

impl Dir {
    fn usable(&self, now: Instant) -> bool {
        self.names.is_some() && !self.closing && now + CREATE_MARGIN < self.until
    }
}

#[derive(Default)]
struct State {
    dirs: HashMap<u64, Dir>,
    pending: HashMap<u64, Pending>,
    /// Reserved inode numbers: ranges `next..end`.
    ids: Vec<(u64, u64)>,
    reserving: bool,
    asking: HashSet<u64>,
    /// `MkdirDelegated` requests under way (a recall may come before their answer).
    mkdirs: usize,
    /// Recalled while the request for them was under way: given back as soon as granted.
    recalled_early: HashSet<u64>,
    no_ask: HashMap<u64, Instant>,
    /// Files whose write-back the service refused (lost), until a `fsync` or close hears it.
    lost: HashSet<u64>,
}

impl State {
    fn ids_left(&self) -> u64 {
        self.ids.iter().map(|(a, b)| b - a).sum()
    }
}

pub struct Delegations {
    rt: tokio::runtime::Handle,
    client: Arc<Client>,
    state: Mutex<State>,
    /// Signalled when a write-back ends (a request that needs files written back waits for
    /// those already being written by others).
    written: std::sync::Condvar,
    /// Open records to release (shared with the mount's release thread).
    releases: Arc<Mutex<Vec<FileHandle>>>,
}

impl Delegations {
    pub fn new(rt: tokio::runtime::Handle, client: Arc<Client>, releases: Arc<Mutex<Vec<FileHandle>>>) -> Delegations {
        Delegations { rt, client, state: Mutex::new(State::default()), written: std::sync::Condvar::new(), releases }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("delegations lock")
    }

    /// The attributes of a directory this mount holds (as its own creates changed them).
    pub fn dir_attr(&self, ino: u64) -> Option<Attr> {
        let st = self.lock();
        st.dirs.get(&ino).filter(|d| d.usable(Instant::now())).and_then(|d| d.attr.clone())
    }

    /// The attributes of a held directory, as the metadata service just gave them (kept only
    /// when nothing created here waits to be written back in it).
    pub fn fresh_dir_attr(&self, attr: &Attr) {
        let mut st = self.lock();
        let ino = attr.handle.inode.0;
        let waiting = st.pending.values().any(|p| p.dir == ino);
        if let Some(d) = st.dirs.get_mut(&ino).filter(|_| !waiting) {
            d.attr = Some(attr.clone());
        }
    }

    /// This mount changed a directory's attributes through the metadata service (`None`:
    /// maybe any held directory's, as a rename of a directory changes its own).
    pub fn dir_changed(&self, ino: Option<u64>) {
        for (i, d) in self.lock().dirs.iter_mut() {
            if ino.is_none_or(|ino| ino == *i) {
                d.attr = None;
            }
        }
    }

    /// A lookup answered here: `Some(Some(attr))` for a file created here and not written back,
    /// `Some(None)` for a name the delegated directory does not hold, `None` to ask.
    pub fn lookup(&self, parent: u64, name: &str) -> Option<Option<Attr>> {
        let st = self.lock();
        if let Some(p) = st.pending.values().find(|p| p.dir == parent && p.name == name) {
            return Some(Some(p.attr.clone()));
        }
        let d = st.dirs.get(&parent).filter(|d| d.usable(Instant::now()))?;
        // A name the service would refuse is left to it (for the right error).
        if name.len() > NAME_MAX || name.contains('/') || name == "." || name == ".." {
            return None;
        }
        (!d.names.as_ref()?.contains(name)).then_some(None)
    }

    /// The attributes of a file created here and not written back.
    pub fn pending_attr(&self, ino: u64) -> Option<Attr> {
        self.lock().pending.get(&ino).map(|p| p.attr.clone())
    }

    pub fn is_pending(&self, ino: u64) -> bool {
        self.lock().pending.contains_key(&ino)
    }

    /// Whether the write-back of `ino` was refused since this was last asked (then it is lost).
    pub fn take_lost(&self, ino: u64) -> bool {
        self.lock().lost.remove(&ino)
    }

    pub fn any_pending(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// Create a regular file here, if `parent` is delegated to this mount and `name` is free.
    /// The file counts as opened once.
    pub fn create(&self, parent: u64, name: &str, mode: u32, cred: &Credentials) -> Option<Attr> {
        let mut st = self.lock();
        let now = Instant::now();
        let d = st.dirs.get(&parent).filter(|d| d.usable(now))?;
        // Its attributes are needed (for the group); after another change, once asked again.
        let dattr = d.attr.clone()?;
        if d.names.as_ref()?.contains(name) || name.len() > NAME_MAX || name.contains('/') || name == "." || name == ".." {
            return None;
        }
        let ino = {
            let range = st.ids.iter_mut().find(|(a, b)| a < b)?;
            range.0 += 1;
            range.0 - 1
        };
        st.ids.retain(|(a, b)| a < b);
        let t = now_ns();
        let d = st.dirs.get_mut(&parent).expect("checked");
        // As the metadata service does it: a setgid directory passes its group on.
        let gid = if dattr.mode & 0o2000 != 0 { dattr.gid } else { cred.gid };
        let attr = Attr {
            handle: FileHandle { volume: VolumeId(1), inode: InodeId(ino), generation: Generation(1) },
            kind: FileKind::File,
            mode: mode & 0o7777,
            uid: cred.uid,
            gid,
            size: 0,
            nlink: 1,
            rdev: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            version: VersionNo(1),
        };
        d.names.as_mut().expect("usable").insert(name.to_string());
        if let Some(a) = d.attr.as_mut() {
            a.mtime = t;
            a.ctime = t;
        }
        d.used = true;
        let parent_handle = d.handle;
        st.pending.insert(ino, Pending { dir: parent, parent: parent_handle, name: name.to_string(), attr: attr.clone(), cred: cred.clone(), opens: 1, since: now, sending: false, data: None });
        Some(attr)
    }

    /// A file handle on `ino` was closed: true if the file is created here and not written
    /// back (it has no open record to release).
    pub fn closed(&self, ino: u64) -> bool {
        self.lock().pending.get_mut(&ino).map(|p| p.opens = p.opens.saturating_sub(1)).is_some()
    }

    /// This mount changed an entry of `dir` through the metadata service: keep the listing true.
    pub fn note_entry(&self, dir: u64, name: &str, present: bool) {
        let mut st = self.lock();
        let Some(d) = st.dirs.get_mut(&dir) else { return };
        d.attr = None;
        match &mut d.names {
            Some(names) if present => {
                names.insert(name.to_string());
            }
            Some(names) => {
                names.remove(name);
            }
            None => d.changes.push((name.to_string(), present)),
        }
    }

    /// After a create in `dir` through the metadata service: ask for its delegation in the
    /// background, unless held, asked or refused lately.
    pub fn maybe_ask(self: &Arc<Self>, dir: FileHandle) {
        {
            let mut st = self.lock();
            let now = Instant::now();
            if st.dirs.contains_key(&dir.inode.0) || st.asking.contains(&dir.inode.0) || st.no_ask.get(&dir.inode.0).is_some_and(|t| *t > now) {
                return;
            }
            st.no_ask.retain(|_, t| *t > now);
            st.asking.insert(dir.inode.0);
        }
        let this = self.clone();
        self.rt.spawn(async move {
            let ok = this.ask(dir).await;
            let mut st = this.lock();
            st.asking.remove(&dir.inode.0);
            if !ok {
                st.dirs.remove(&dir.inode.0);
                st.no_ask.insert(dir.inode.0, Instant::now() + BACK_OFF);
            }
        });
    }

    /// Before a `mkdir`: whether to ask for the new directory's delegation with it
    /// ([`MetaOp::MkdirDelegated`]; then call [`Delegations::end_mkdir`] after the answer).
    pub fn begin_mkdir(&self) -> bool {
        let mut st = self.lock();
        if st.ids_left() == 0 {
            return false;
        }
        st.mkdirs += 1;
        true
    }

    /// The answer to a `MkdirDelegated` sent at `sent` came: hold the new directory (empty,
    /// its whole listing known) if it was granted and not recalled meanwhile.
    pub fn end_mkdir(&self, granted: Option<&Attr>, sent: Instant) {
        let mut st = self.lock();
        st.mkdirs -= 1;
        let early = granted.is_some_and(|a| st.recalled_early.remove(&a.handle.inode.0));
        if st.mkdirs == 0 {
            // Recalls noted for mkdirs: none is under way any more.
            let asking = std::mem::take(&mut st.asking);
            st.recalled_early.retain(|d| asking.contains(d));
            st.asking = asking;
        }
        let Some(attr) = granted else { return };
        if early {
            // Given back already, by the recall.
            return;
        }
        let dir = attr.handle.inode.0;
        let until = sent + Duration::from_nanos(DELEGATION_LEASE_NS as u64);
        st.dirs.insert(dir, Dir { handle: attr.handle, until, attr: Some(attr.clone()), names: Some(HashSet::new()), changes: Vec::new(), used: false, closing: false });
    }

    async fn ask(&self, dir: FileHandle) -> bool {
        if !self.reserve_ids().await {
            return false;
        }
        let sent = Instant::now();
        let attr = match self.client.meta(MetaOp::Delegate { dir }).await {
            Ok(MetaReply::Delegated { attr }) => attr,
            Ok(other) => {
                tracing::debug!("unexpected answer to a delegation: {other:?}");
                return false;
            }
            Err(e) => {
                tracing::debug!(dir = dir.inode.0, "no delegation: {e}");
                return false;
            }
        };
        let until = sent + Duration::from_nanos(DELEGATION_LEASE_NS as u64);
        // Checked and held under one lock: a recall sees either no directory (and notes it as
        // recalled early) or the directory held.
        let recalled = {
            let mut st = self.lock();
            let recalled = st.recalled_early.remove(&dir.inode.0);
            if !recalled {
                st.dirs.insert(dir.inode.0, Dir { handle: dir, until, attr: Some(attr), names: None, changes: Vec::new(), used: false, closing: false });
            }
            recalled
        };
        if recalled {
            let _ = self.client.meta(MetaOp::ReturnDelegation { dir }).await;
            return false;
        }
        // Nobody else changes the directory now: its listing stays true, with this mount's own
        // changes (noted meanwhile) on top.
        match self.client.readdir_all(dir).await {
            Ok(entries) => {
                let mut st = self.lock();
                let Some(d) = st.dirs.get_mut(&dir.inode.0) else { return true };
                let mut names: HashSet<String> = entries.into_iter().map(|e| e.name).collect();
                for (name, present) in std::mem::take(&mut d.changes) {
                    if present {
                        names.insert(name);
                    } else {
                        names.remove(&name);
                    }
                }
                d.names = Some(names);
                true
            }
            Err(e) => {
                tracing::debug!(dir = dir.inode.0, "no listing for a delegation: {e}");
                let _ = self.client.meta(MetaOp::ReturnDelegation { dir }).await;
                false
            }
        }
    }

    /// Keep inode numbers in reserve; false if none are left and none could be had.
    async fn reserve_ids(&self) -> bool {
        {
            let mut st = self.lock();
            if st.ids_left() >= RESERVE_LOW || st.reserving {
                return st.ids_left() > 0;
            }
            st.reserving = true;
        }
        let r = self.client.meta(MetaOp::ReserveInodes { count: RESERVE_COUNT }).await;
        let mut st = self.lock();
        st.reserving = false;
        match r {
            Ok(MetaReply::Inodes { first, count }) => {
                st.ids.push((first.0, first.0 + u64::from(count)));
                true
            }
            other => {
                tracing::debug!("no inode numbers reserved: {other:?}");
                st.ids_left() > 0
            }
        }
    }

    /// Write back the files created here (in `dir` only, or everywhere). `intent_for`: write
    /// back only this file, about to be written, with blob ids reserved at once (its intent is
    /// returned).
    pub fn write_back(&self, dir: Option<u64>, intent_for: Option<u64>) -> Option<Intent> {
        let batch: Vec<(u64, MetaOp, Credentials, bool)> = {
            let mut st = self.lock();
            st.pending
                .iter_mut()
                .filter(|(ino, p)| dir.is_none_or(|d| p.dir == d) && intent_for.is_none_or(|f| f == **ino) && !p.sending)
                .map(|(ino, p)| {
                    p.sending = true;
                    let parent = p.parent;
                    let open = p.opens > 0;
                    if let Some(data) = &p.data {
                        let op = MetaOp::CreateAtWith { parent, name: p.name.clone(), inode: InodeId(*ino), mode: p.attr.mode, time: p.attr.crtime, open, data: ByteBuf::from(data.clone()) };
                        return (*ino, op, p.cred.clone(), open);
                    }
                    let reserve = intent_for == Some(*ino);
                    let op = MetaOp::CreateAt {
                        parent,
                        name: p.name.clone(),
                        inode: InodeId(*ino),
                        mode: p.attr.mode,
                        time: p.attr.crtime,
                        open,
                        count: u32::from(reserve),
                        bytes: if reserve { shoal_client::data::BLOB_BYTES } else { 0 },
                    };
                    (*ino, op, p.cred.clone(), open)
                })
                .collect()
        };
        if batch.is_empty() {
            self.wait_written(dir);
            return None;
        }
        let results = self.rt.block_on(futures::future::join_all(batch.iter().map(|(_, op, cred, _)| self.client.meta_as(cred, op.clone()))));
        let mut intent = None;
        let mut st = self.lock();
        for ((ino, _, _, sent_open), r) in batch.into_iter().zip(results) {
            if matches!(&r, Err(e) if e.is_retryable()) {
                // The service is out of reach for now: kept, and written back later.
                tracing::warn!(ino, "a file created here is not written back yet: {:?}", r.as_ref().err());
                if let Some(p) = st.pending.get_mut(&ino) {
                    p.sending = false;
                }
                continue;
            }
            if let Some(i) = self.written_back(&mut st, ino, sent_open, r) {
                if intent_for == Some(ino) {
                    intent = i;
                }
            }
        }
        drop(st);
        self.written.notify_all();
        self.wait_written(dir);
        intent
    }

    /// Keep `data` as the first version of a file created here and not written back (a small
    /// file written from its start, being closed): it goes with the file's create, within
    /// [`WRITE_BACK_AGE`], at once on `fsync`, or before anything needs it. `data` comes back
    /// if the file is not waiting here, or `data` would not cover what an earlier close left.
    pub fn hold_data(&self, ino: u64, data: Vec<u8>) -> Result<(), Vec<u8>> {
        let mut st = self.lock();
        let Some(p) = st.pending.get_mut(&ino).filter(|p| !p.sending) else { return Err(data) };
        if p.data.as_ref().is_some_and(|d| d.len() > data.len()) {
            return Err(data);
        }
        let t = now_ns();
        p.attr.size = data.len() as u64;
        p.attr.mtime = t;
        p.attr.ctime = t;
        p.data = Some(data);
        Ok(())
    }

    /// The answer to a file's write-back: it no longer waits here. `Some(intent)` when it was
    /// created; `None` when it could not be, and is lost (said loudly: the application was told
    /// it exists).
    fn written_back(&self, st: &mut State, ino: u64, sent_open: bool, r: MetaResponse) -> Option<Option<Intent>> {
        let p = st.pending.remove(&ino)?;
        match r {
            Ok(MetaReply::Created { attr, intent }) => {
                if sent_open && p.opens == 0 {
                    // Closed while it was written back: its open record goes too.
                    self.releases.lock().expect("releases").push(attr.handle);
                }
                Some(intent)
            }
            other => {
                tracing::error!(dir = p.dir, name = p.name, "a file created under a delegation could not be written back and is lost: {other:?}");
                st.lost.insert(ino);
                if let Some(names) = st.dirs.get_mut(&p.dir).and_then(|d| d.names.as_mut()) {
                    names.remove(&p.name);
                }
                None
            }
        }
    }

    /// Wait until no file (of `dir`, or anywhere) is being written back by another thread.
    fn wait_written(&self, dir: Option<u64>) {
        let mut st = self.lock();
        while st.pending.values().any(|p| p.sending && dir.is_none_or(|d| p.dir == d)) {
            st = self.written.wait(st).expect("delegations lock");
        }
    }

    /// The directory is recalled: write back what was created in it and give it back.
    pub fn recall(&self, dir: u64) {
        let handle = {
            let mut st = self.lock();
            st.no_ask.insert(dir, Instant::now() + BACK_OFF);
            match st.dirs.get_mut(&dir) {
                Some(d) => {
                    d.closing = true;
                    d.handle
                }
                None => {
                    // Not held as far as this mount knows: granted to a request still under
                    // way, or renewed just as it was given back. Give it back anyway.
                    if st.asking.contains(&dir) || st.mkdirs > 0 {
                        st.recalled_early.insert(dir);
                    }
                    drop(st);
                    let handle = FileHandle { volume: VolumeId(1), inode: InodeId(dir), generation: Generation(1) };
                    if let Err(e) = self.rt.block_on(self.client.meta(MetaOp::ReturnDelegation { dir: handle })) {
                        tracing::debug!(dir, "delegation not given back (it runs out by itself): {e}");
                    }
                    return;
                }
            }
        };
        self.give_back(dir, handle);
    }

    fn give_back(&self, dir: u64, handle: FileHandle) {
        self.write_back(Some(dir), None);
        tracing::info!(dir, "gave a delegated directory back");
        if let Err(e) = self.rt.block_on(self.client.meta(MetaOp::ReturnDelegation { dir: handle })) {
            tracing::debug!(dir, "delegation not given back (it runs out by itself): {e}");
        }
        self.lock().dirs.remove(&dir);
    }

    /// Write everything back and give every delegation back (the mount is going away).
    pub fn give_all_back(&self) {
        let dirs: Vec<(u64, FileHandle)> = {
            let mut st = self.lock();
            st.dirs.values_mut().for_each(|d| d.closing = true);
            st.dirs.iter().map(|(i, d)| (*i, d.handle)).collect()
        };
        for (dir, handle) in dirs {
            self.give_back(dir, handle);
        }
    }

    /// One round of the keeper: write back what waited long enough, renew delegations in use
    /// before they end and give idle ones back, keep inode numbers in reserve.
    fn keep(&self) {
        let now = Instant::now();
        let (due, ending): (Vec<u64>, Vec<(u64, FileHandle, bool)>) = {
            let mut st = self.lock();
            let mut per_dir: HashMap<u64, (usize, Instant)> = HashMap::new();
            for p in st.pending.values() {
                let e = per_dir.entry(p.dir).or_insert((0, p.since));
                e.0 += 1;
                e.1 = e.1.min(p.since);
            }
            let due = per_dir.into_iter().filter(|(_, (n, since))| *n >= WRITE_BACK_BATCH || now.duration_since(*since) >= WRITE_BACK_AGE).map(|(d, _)| d).collect();
            let mut ending = Vec::new();
            for (ino, d) in st.dirs.iter_mut() {
                if d.names.is_some() && !d.closing && now + RENEW_BEFORE >= d.until {
                    d.closing = true;
                    ending.push((*ino, d.handle, d.used));
                }
            }
            (due, ending)
        };
        if !due.is_empty() {
            // All at once: one log entry for many directories.
            self.write_back(None, None);
        }
        for (dir, handle, used) in ending {
            if !used {
                self.give_back(dir, handle);
                continue;
            }
            self.write_back(Some(dir), None);
            let sent = Instant::now();
            match self.rt.block_on(self.client.meta(MetaOp::Delegate { dir: handle })) {
                Ok(MetaReply::Delegated { .. }) => {
                    if let Some(d) = self.lock().dirs.get_mut(&dir) {
                        d.until = sent + Duration::from_nanos(DELEGATION_LEASE_NS as u64);
                        d.used = false;
                        d.closing = false;
                    }
                }
                other => {
                    tracing::debug!(dir, "delegation not renewed: {other:?}");
                    self.lock().dirs.remove(&dir);
                }
            }
        }
        let low = {
            let st = self.lock();
            st.ids_left() < RESERVE_LOW && !st.dirs.is_empty()
        };
        if low {
            self.rt.block_on(self.reserve_ids());
        }
    }
}

/// Run the keeper for as long as the mount lives.
pub fn keeper(delegations: Arc<Delegations>) {
    loop {
        std::thread::sleep(KEEPER_TICK);
        delegations.keep();
    }
}
