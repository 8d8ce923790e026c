//! Applying commands. Every function here is deterministic in (state, command).

use crate::kv::{key, Kv, KvRead, Table};
use crate::perm::{self, W, X};
use crate::records::*;
use crate::{Command, CommandKind, Params};
use shoal_types::attr::TimeNs;
use shoal_types::codec;
use shoal_types::layout::{overlay, Slice, CHUNK_SIZE};
use shoal_types::meta_msg::*;
use shoal_types::*;

pub(crate) const COUNTERS_KEY: &[u8] = b"counters";
pub(crate) const PARAMS_KEY: &[u8] = b"params";
pub(crate) const PROMISE_HORIZON_KEY: &[u8] = b"promise_horizon";
/// The number of the latest scrub request (u64).
pub(crate) const SCRUB_EPOCH_KEY: &[u8] = b"scrub_epoch";
/// When the last tick was applied (cluster clock).
const LAST_TICK_KEY: &[u8] = b"last_tick";
/// When the current leader's first entry was applied. A heartbeat sent while the leaders
/// changed may have gone to the old one (or timed out on its way there), so silence is counted
/// from here at the earliest.
const LEADER_SINCE_KEY: &[u8] = b"leader_since";
/// Where the next heartbeat's look at the repair queue starts (a blob id).
const REPAIR_CURSOR_KEY: &[u8] = b"repair_cursor";

/// Apply one log entry and return the reply for its proposer.
pub fn apply<K: Kv>(kv: &mut K, cmd: &Command) -> MetaResponse {
    // Counters that exist but do not decode must stop every command: defaulting them would hand
    // out inode and blob ids again.
    let mut counters: Counters = match kv.get(Table::Meta, COUNTERS_KEY) {
        None => Counters::default(),
        Some(bytes) => match codec::decode(&bytes) {
            Ok(c) => c,
            Err(e) => return Err(FsError::Corrupt(format!("metadata counters do not decode: {e}"))),
        },
    };
    counters.now = counters.now.max(cmd.now);
    let now = counters.now;
    let params: Option<Params> = load(kv, Table::Meta, PARAMS_KEY);
    let mut sm = Sm { kv, now, counters, params: params.clone().unwrap_or_default() };
    let reply = match (&cmd.kind, params) {
        (CommandKind::Bootstrap(p), None) => sm.bootstrap(p.clone()),
        (CommandKind::Bootstrap(_), Some(_)) => {
            // Every new leader proposes it first: servers' silence is counted from here too.
            store(sm.kv, Table::Meta, LEADER_SINCE_KEY, &sm.now);
            Ok(MetaReply::Ok)
        }
        (_, None) => Err(FsError::Unavailable("cluster not bootstrapped".into())),
        (CommandKind::Tick, Some(_)) => sm.tick(),
        (CommandKind::PromiseHorizon(h), Some(_)) => {
            store(sm.kv, Table::Meta, PROMISE_HORIZON_KEY, h);
            Ok(MetaReply::Ok)
        }
        (CommandKind::Request(req), Some(_)) => sm.request(req),
    };
    let counters = sm.counters.clone();
    store(sm.kv, Table::Meta, COUNTERS_KEY, &counters);
    reply
}

pub(crate) fn load<T: serde::de::DeserializeOwned>(kv: &impl KvRead, t: Table, k: &[u8]) -> Option<T> {
    // A record that does not decode is treated as absent; the metadata store checksums its pages,
    // so this only happens across an incompatible format change, which the version byte refuses.
    kv.get(t, k).and_then(|v| codec::decode(&v).ok())
}

pub(crate) fn store<T: serde::Serialize>(kv: &mut impl Kv, t: Table, k: &[u8], v: &T) {
    kv.put(t, k, &codec::encode(v));
}

pub(crate) struct Sm<'a, K> {
    pub kv: &'a mut K,
    pub now: TimeNs,
    pub counters: Counters,
    pub params: Params,
}

pub(crate) fn attr_of(inode: InodeId, rec: &InodeRec) -> Attr {
    Attr {
        handle: FileHandle { volume: VolumeId(1), inode, generation: Generation(rec.generation) },
        kind: rec.kind,
        mode: rec.mode,
        uid: rec.uid,
        gid: rec.gid,
        size: rec.size,
        nlink: rec.nlink,
        rdev: rec.rdev,
        atime: rec.atime,
        mtime: rec.mtime,
        ctime: rec.ctime,
        crtime: rec.crtime,
        version: VersionNo(rec.version),
    }
}

/// Look up the inode a handle names; a missing inode or another generation is `Stale`.
pub(crate) fn inode_of(kv: &impl KvRead, h: &FileHandle) -> FsResult<InodeRec> {
    let rec: InodeRec = load(kv, Table::Inodes, &key::u64(h.inode.0)).ok_or(FsError::Stale)?;
    if rec.generation != h.generation.0 || h.volume != VolumeId(1) {
        return Err(FsError::Stale);
    }
    Ok(rec)
}

pub(crate) fn dir_of(kv: &impl KvRead, h: &FileHandle) -> FsResult<InodeRec> {
    let rec = inode_of(kv, h)?;
    if rec.kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    Ok(rec)
}

pub(crate) fn check_name(name: &str) -> FsResult<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(FsError::Invalid(format!("bad name {name:?}")));
    }
    if name.len() > NAME_LEN_MAX {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

impl<K: Kv> Sm<'_, K> {
    fn bootstrap(&mut self, p: Params) -> MetaResponse {
        store(self.kv, Table::Meta, PARAMS_KEY, &p);
        self.params = p;
        self.counters.next_inode = InodeId::ROOT.0 + 1;
        self.counters.next_blob = 1;
        self.counters.next_session = 1;
        let root = InodeRec {
            generation: 1,
            kind: FileKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            rdev: 0,
            atime: self.now,
            mtime: self.now,
            ctime: self.now,
            crtime: self.now,
            version: 1,
            parent: Some(InodeId::ROOT),
            symlink_target: None,
            next_cookie: 1,
            entries: 0,
            policy: Policy::DEFAULT,
        };
        self.put_inode(InodeId::ROOT, &root);
        Ok(MetaReply::Ok)
    }

    fn put_inode(&mut self, ino: InodeId, rec: &InodeRec) {
        store(self.kv, Table::Inodes, &key::u64(ino.0), rec);
    }

    fn request(&mut self, req: &MetaRequest) -> MetaResponse {
        match &req.op {
            MetaOp::OpenSession { client } => return self.open_session(client),
            MetaOp::RegisterStore { store, addr, capacity, used } => {
                return self.register_store(*store, addr, *capacity, *used)
            }
            MetaOp::StoreHeartbeat(hb) => return self.store_heartbeat(hb),
            MetaOp::ReportCorrupt { store, blobs } => return self.report_corrupt(*store, blobs),
            MetaOp::StoreInventory { store, from, blobs, done } => return self.store_inventory(*store, *from, blobs, *done),
            op if op.is_read() => {
                for dir in touched_dirs(self.kv, op) {
                    check_delegation(self.kv, dir, req.session, self.now)?;
                }
                return crate::read::read_op(self.kv, &req.cred, op, self.now);
            }
            _ => {}
        }
        // Everything else is exactly-once on a live session.
        let session_key = key::u64(req.session.0);
        let Some(mut session) = load::<SessionRec>(self.kv, Table::Sessions, &session_key) else {
            return Err(FsError::SessionExpired);
        };
        let reply_key = key::u64_u64(req.session.0, req.seq);
        if let Some(reply) = load::<MetaResponse>(self.kv, Table::Replies, &reply_key) {
            return reply;
        }
        if req.seq < session.pruned_below {
            return Err(FsError::Invalid(format!("request sequence {} is older than the reply window", req.seq)));
        }
        let reply = self.mutate(req);
        session.expires = self.now + self.params.session_lease_ns;
        if matches!(req.op, MetaOp::CloseSession) {
            self.end_session(req.session);
            return reply;
        }
        store(self.kv, Table::Replies, &reply_key, &reply);
        if req.seq >= crate::REPLIES_PER_SESSION_MAX {
            let below = req.seq - crate::REPLIES_PER_SESSION_MAX;
            if below > session.pruned_below {
                for (k, _) in self.kv.scan(
                    Table::Replies,
                    &key::u64_u64(req.session.0, session.pruned_below),
                    &key::u64_u64(req.session.0, below),
                    usize::MAX,
                ) {
                    self.kv.delete(Table::Replies, &k);
                }
                session.pruned_below = below;
            }
        }
        store(self.kv, Table::Sessions, &session_key, &session);
        reply
    }

    fn mutate(&mut self, req: &MetaRequest) -> MetaResponse {
        let cred = &req.cred;
        for dir in touched_dirs(self.kv, &req.op) {
            check_delegation(self.kv, dir, req.session, self.now)?;
        }
        match &req.op {
            MetaOp::Delegate { dir } => self.delegate(req.session, cred, dir),
            MetaOp::ReturnDelegation { dir } => {
                let dkey = key::u64(dir.inode.0);
                if load::<DelegationRec>(self.kv, Table::Delegations, &dkey).is_some_and(|d| d.session == req.session) {
                    self.kv.delete(Table::Delegations, &dkey);
                }
                Ok(MetaReply::Ok)
            }
            MetaOp::ReserveInodes { count } => {
                if *count == 0 || *count > RESERVED_INODES_MAX {
                    return Err(FsError::Invalid(format!("reserve 1 to {RESERVED_INODES_MAX} inode numbers")));
                }
                let first = self.counters.next_inode;
                self.counters.next_inode += u64::from(*count);
                store(self.kv, Table::InodeGrants, &key::u64_u64(req.session.0, self.counters.next_inode), &first);
                Ok(MetaReply::Inodes { first: InodeId(first), count: *count })
            }
            MetaOp::CreateAtWith { parent, name, inode, mode, time, open, data } => {
                if data.len() as u64 > INLINE_BYTES_MAX {
                    return Err(FsError::Invalid(format!("{} bytes, more than {INLINE_BYTES_MAX} inline", data.len())));
                }
                let op = MetaOp::CreateAt { parent: *parent, name: name.clone(), inode: *inode, mode: *mode, time: *time, open: *open, count: 0, bytes: 0 };
                let attr = match self.mutate(&MetaRequest { op, ..req.clone() })? {
                    MetaReply::Created { attr, .. } => attr,
                    other => return Ok(other),
                };
                if data.is_empty() {
                    return Ok(MetaReply::Created { attr, intent: None });
                }
                // The first version, as a commit of one inline blob under an intent made here.
                // Its creator writes it whatever the file's mode (as open(O_CREAT) would).
                let blob = BlobId(self.counters.next_blob);
                self.counters.next_blob += 1;
                let policy = inode_of(self.kv, &attr.handle)?.policy;
                let expires = self.now + self.params.intent_lease_ns;
                store(self.kv, Table::Intents, &key::u64(blob.0), &IntentRec { inode: *inode, session: req.session, expires, policy });
                let len = data.len() as u64;
                let commit = Commit {
                    handle: attr.handle,
                    base_version: None,
                    chunks: vec![ChunkUpdate { idx: 0, slices: vec![Slice { blob: Some(blob), blob_offset: 0, offset_in_chunk: 0, len }] }],
                    size: len,
                    mtime: *time,
                    blobs: vec![NewBlob { blob, len, crc: crc32c::crc32c(data), stores: Vec::new() }],
                };
                match self.commit(&Credentials::ROOT, &commit, false, &[(blob, data.clone())])? {
                    MetaReply::Attr(attr) => Ok(MetaReply::Created { attr, intent: None }),
                    other => Ok(other),
                }
            }
            MetaOp::CreateAt { parent, name, inode, mode, time, open, count, bytes } => {
                // The number must be one this session reserved and has not used.
                let grant = self.kv.scan(Table::InodeGrants, &key::u64_u64(req.session.0, inode.0 + 1), &key::prefix_end(req.session.0), 1);
                let Some((gkey, first)) = grant.into_iter().next().and_then(|(k, v)| Some((k, codec::decode::<u64>(&v).ok()?))) else {
                    return Err(FsError::Invalid(format!("inode number {} was not reserved by this session", inode.0)));
                };
                if first > inode.0 {
                    return Err(FsError::Invalid(format!("inode number {} was not reserved by this session", inode.0)));
                }
                let attr = match self.create(cred, parent, name, FileKind::File, *mode, 0, true, None, Some((*inode, *time)))? {
                    MetaReply::Attr(a) => a,
                    other => return Ok(other),
                };
                // Used once: the grant is split around it.
                let end = key::read_u64(&gkey, 8);
                self.kv.delete(Table::InodeGrants, &gkey);
                if first < inode.0 {
                    store(self.kv, Table::InodeGrants, &key::u64_u64(req.session.0, inode.0), &first);
                }
                if inode.0 + 1 < end {
                    store(self.kv, Table::InodeGrants, &gkey, &(inode.0 + 1));
                }
                if *open {
                    self.open(req.session, &attr.handle)?;
                }
                let intent = match *count > 0 {
                    true => match self.alloc_blobs(req.session, cred, &attr.handle, *count, *bytes) {
                        Ok(MetaReply::Intent(i)) => Some(i),
                        _ => None,
                    },
                    false => None,
                };
                Ok(MetaReply::Created { attr, intent })
            }
            MetaOp::RenewSession | MetaOp::CloseSession => Ok(MetaReply::Ok),
            MetaOp::SetAttr { handle, set } => self.setattr(cred, handle, set),
            MetaOp::Create { parent, name, kind, mode, rdev, exclusive } => {
                self.create(cred, parent, name, *kind, *mode, *rdev, *exclusive, None, None)
            }
            MetaOp::CreateOpen { parent, name, mode, exclusive } => {
                let reply = self.create(cred, parent, name, FileKind::File, *mode, 0, *exclusive, None, None)?;
                match reply {
                    MetaReply::Attr(a) => self.open(req.session, &a.handle),
                    other => Ok(other),
                }
            }
            MetaOp::CreateOpenReserve { parent, name, mode, exclusive, count, bytes } => {
                let attr = match self.create(cred, parent, name, FileKind::File, *mode, 0, *exclusive, None, None)? {
                    MetaReply::Attr(a) => a,
                    other => return Ok(other),
                };
                self.open(req.session, &attr.handle)?;
                // Refused reservations change nothing: they fail before they write.
                let intent = match self.alloc_blobs(req.session, cred, &attr.handle, *count, *bytes) {
                    Ok(MetaReply::Intent(i)) => Some(i),
                    _ => None,
                };
                Ok(MetaReply::Created { attr, intent })
            }
            MetaOp::Mkdir { parent, name, mode } => {
                self.create(cred, parent, name, FileKind::Dir, *mode, 0, true, None, None)
            }
            MetaOp::MkdirDelegated { parent, name, mode } => {
                let attr = match self.create(cred, parent, name, FileKind::Dir, *mode, 0, true, None, None)? {
                    MetaReply::Attr(a) => a,
                    other => return Err(FsError::Internal(format!("mkdir answered {other:?}"))),
                };
                // Delegated only to who may create in it, as `Delegate` checks.
                let rec = dir_of(self.kv, &attr.handle)?;
                if perm::check(&rec, cred, W | X).is_err() {
                    return Ok(MetaReply::Attr(attr));
                }
                let until = self.now + DELEGATION_LEASE_NS;
                store(self.kv, Table::Delegations, &key::u64(attr.handle.inode.0), &DelegationRec { session: req.session, until });
                Ok(MetaReply::Delegated { attr })
            }
            MetaOp::Symlink { parent, name, target } => {
                if target.is_empty() || target.len() > 4096 {
                    return Err(FsError::Invalid("bad symlink target".into()));
                }
                self.create(cred, parent, name, FileKind::Symlink, 0o777, 0, true, Some(target.clone()), None)
            }
            MetaOp::Link { handle, new_parent, new_name } => self.link(cred, handle, new_parent, new_name),
            MetaOp::Unlink { parent, name } => self.remove(cred, parent, name, false),
            MetaOp::Rmdir { parent, name } => self.remove(cred, parent, name, true),
            MetaOp::Rename { parent, name, new_parent, new_name, no_replace } => {
                self.rename(cred, parent, name, new_parent, new_name, *no_replace)
            }
            MetaOp::SetPolicy { handle, policy } => self.set_policy(cred, handle, *policy),
            MetaOp::CompactChunk { handle, idx, replaces, blob } => self.compact_chunk(cred, handle, *idx, replaces, blob),
            MetaOp::SetXattr { handle, name, value, flags } => self.set_xattr(cred, handle, name, value, *flags),
            MetaOp::RemoveXattr { handle, name } => self.remove_xattr(cred, handle, name),
            MetaOp::Open { handle } | MetaOp::OpenRead { handle } => self.open(req.session, handle),
            MetaOp::Release { handle } => self.release(req.session, handle),
            MetaOp::AllocBlobs { handle, count, bytes } => self.alloc_blobs(req.session, cred, handle, *count, *bytes),
            MetaOp::Commit(c) => self.commit(cred, c, false, &[]),
            MetaOp::CommitGrow(c) => self.commit(cred, c, true, &[]),
            MetaOp::CommitInline { commit, grow, data } => self.commit(cred, commit, *grow, data),
            MetaOp::AbandonBlobs { blobs } => {
                for b in blobs {
                    let ikey = key::u64(b.0);
                    // Only the session that holds the intent, and only while it does.
                    if load::<IntentRec>(self.kv, Table::Intents, &ikey).is_some_and(|i| i.session == req.session) {
                        self.drop_intent(&ikey);
                    }
                }
                Ok(MetaReply::Ok)
            }
            MetaOp::AddUser(rec) => self.add_user(cred, rec),
            MetaOp::RemoveUser { name } => self.remove_user(cred, name),
            MetaOp::RequestScrub => self.request_scrub(cred),
            other => Err(FsError::Invalid(format!("not a mutation: {other:?}"))),
        }
    }

    // ---- users ----

    fn add_user(&mut self, cred: &Credentials, rec: &UserRec) -> MetaResponse {
        if cred.uid != 0 {
            return Err(FsError::NotPermitted);
        }
        check_user_name(&rec.name)?;
        if rec.salt.is_empty() || rec.salt.len() > 64 || rec.groups.len() > 64 {
            return Err(FsError::Invalid("bad user record".into()));
        }
        if crate::user(self.kv, &rec.name).is_some() {
            return Err(FsError::Exists);
        }
        store(self.kv, Table::Users, rec.name.as_bytes(), rec);
        Ok(MetaReply::Ok)
    }

    fn remove_user(&mut self, cred: &Credentials, name: &str) -> MetaResponse {
        if cred.uid != 0 {
            return Err(FsError::NotPermitted);
        }
        if crate::user(self.kv, name).is_none() {
            return Err(FsError::NotFound);
        }
        self.kv.delete(Table::Users, name.as_bytes());
        Ok(MetaReply::Ok)
    }

    // ---- sessions ----

    fn open_session(&mut self, client: &str) -> MetaResponse {
        let id = self.counters.next_session;
        self.counters.next_session += 1;
        let rec = SessionRec { client: client.to_string(), expires: self.now + self.params.session_lease_ns, pruned_below: 0 };
        store(self.kv, Table::Sessions, &key::u64(id), &rec);
        Ok(MetaReply::Session { session: SessionId(id), lease_ms: (self.params.session_lease_ns / 1_000_000) as u64 })
    }

    fn end_session(&mut self, session: SessionId) {
        self.kv.delete(Table::Sessions, &key::u64(session.0));
        for (k, _) in self.kv.scan(Table::InodeGrants, &key::u64(session.0), &key::prefix_end(session.0), usize::MAX) {
            self.kv.delete(Table::InodeGrants, &k);
        }
        for (k, _) in self.kv.scan(Table::Replies, &key::u64(session.0), &key::prefix_end(session.0), usize::MAX) {
            self.kv.delete(Table::Replies, &k);
        }
        let opens = self.kv.scan(Table::SessionOpens, &key::u64(session.0), &key::prefix_end(session.0), usize::MAX);
        for (k, _) in opens {
            let ino = InodeId(key::read_u64(&k, 8));
            self.kv.delete(Table::SessionOpens, &k);
            self.kv.delete(Table::Opens, &key::u64_u64(ino.0, session.0));
            self.release_held(ino);
            self.maybe_free_inode(ino);
        }
    }

    fn tick(&mut self) -> MetaResponse {
        let now = self.now;
        // Expire sessions.
        let sessions = self.kv.scan(Table::Sessions, &[], &[0xff; 9], usize::MAX);
        let mut expired = 0;
        for (k, v) in sessions {
            if expired >= crate::EXPIRE_PER_TICK_MAX {
                break;
            }
            if let Ok(rec) = codec::decode::<SessionRec>(&v) {
                if rec.expires < now {
                    self.end_session(SessionId(key::read_u64(&k, 0)));
                    expired += 1;
                }
            }
        }
        // Expire intents: blobs never committed are garbage.
        let intents = self.kv.scan(Table::Intents, &[], &[0xff; 9], usize::MAX);
        let mut expired = 0;
        for (k, v) in intents {
            if expired >= crate::EXPIRE_PER_TICK_MAX {
                break;
            }
            if let Ok(rec) = codec::decode::<IntentRec>(&v) {
                if rec.expires < now {
                    self.drop_intent(&k);
                    expired += 1;
                }
            }
        }
        // Delegations that ran out.
        for (k, v) in self.kv.scan(Table::Delegations, &[], &[0xff; 9], crate::EXPIRE_PER_TICK_MAX) {
            if codec::decode::<DelegationRec>(&v).is_ok_and(|d| d.until < now) {
                self.kv.delete(Table::Delegations, &k);
            }
        }
        // Declare silent servers failed and queue their blobs for repair. Not right after a gap
        // in the ticks (no leader, or a stalled one): the servers' heartbeats could not be
        // applied meanwhile, so their silence says nothing.
        let last_tick = load::<TimeNs>(self.kv, Table::Meta, LAST_TICK_KEY);
        store(self.kv, Table::Meta, LAST_TICK_KEY, &now);
        if last_tick.is_none_or(|t| now - t > self.params.store_dead_after_ns) {
            return Ok(MetaReply::Ok);
        }
        let leader_since = load::<TimeNs>(self.kv, Table::Meta, LEADER_SINCE_KEY).unwrap_or(0);
        for (k, v) in self.kv.scan(Table::Stores, &[], &[0xff; 9], usize::MAX) {
            let Ok(mut rec) = codec::decode::<StoreRec>(&v) else { continue };
            if now - rec.last_heartbeat.max(leader_since) <= self.params.store_dead_after_ns {
                continue;
            }
            let id = key::read_u64(&k, 0);
            let rkey = key::u64(id);
            // A server being checked that goes silent is failed too, once.
            let returning = load::<ReturningRec>(self.kv, Table::Returning, &rkey);
            if rec.alive {
                rec.alive = false;
                store(self.kv, Table::Stores, &k, &rec);
            } else if let Some(mut ret) = returning.filter(|r| !r.failed) {
                ret.failed = true;
                store(self.kv, Table::Returning, &rkey, &ret);
            } else {
                continue;
            }
            for (bk, _) in self.kv.scan(Table::StoreBlobs, &key::u64(id), &key::prefix_end(id), usize::MAX) {
                let blob = key::read_u64(&bk, 8);
                if self.kv.get(Table::Repair, &key::u64(blob)).is_none() {
                    store(self.kv, Table::Repair, &key::u64(blob), &RepairRec { assigned: None });
                }
            }
        }
        Ok(MetaReply::Ok)
    }

    // ---- namespace ----

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        cred: &Credentials,
        parent: &FileHandle,
        name: &str,
        kind: FileKind,
        mode: u32,
        rdev: u32,
        exclusive: bool,
        target: Option<String>,
        at: Option<(InodeId, TimeNs)>,
    ) -> MetaResponse {
        check_name(name)?;
        let mut dir = dir_of(self.kv, parent)?;
        perm::check(&dir, cred, W | X)?;
        let dkey = key::u64_name(parent.inode.0, name);
        if let Some(existing) = load::<DirentRec>(self.kv, Table::Dirents, &dkey) {
            if exclusive || kind != FileKind::File {
                return Err(FsError::Exists);
            }
            let rec: InodeRec = load(self.kv, Table::Inodes, &key::u64(existing.inode.0))
                .ok_or_else(|| FsError::Internal("dangling entry".into()))?;
            return Ok(MetaReply::Attr(attr_of(existing.inode, &rec)));
        }
        if kind == FileKind::Dir && dir.nlink >= crate::LINKS_MAX {
            return Err(FsError::TooManyLinks);
        }
        let (ino, time) = match at {
            Some(at) => at,
            None => {
                self.counters.next_inode += 1;
                (InodeId(self.counters.next_inode - 1), self.now)
            }
        };
        // setgid directories pass their group on, and setgid on to subdirectories.
        let (gid, mut mode) = if dir.mode & 0o2000 != 0 { (dir.gid, mode) } else { (cred.gid, mode) };
        if dir.mode & 0o2000 != 0 && kind == FileKind::Dir {
            mode |= 0o2000;
        }
        let rec = InodeRec {
            generation: 1,
            kind,
            mode: mode & 0o7777,
            uid: cred.uid,
            gid,
            size: target.as_ref().map_or(0, |t| t.len() as u64),
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            rdev,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            version: 1,
            parent: (kind == FileKind::Dir).then_some(parent.inode),
            symlink_target: target,
            next_cookie: 1,
            entries: 0,
            policy: dir.policy,
        };
        self.put_inode(ino, &rec);
        self.add_entry(parent.inode, &mut dir, name, ino, kind);
        if kind == FileKind::Dir {
            dir.nlink += 1;
        }
        self.put_inode(parent.inode, &dir);
        self.counters.files += 1;
        Ok(MetaReply::Attr(attr_of(ino, &rec)))
    }

    fn delegate(&mut self, session: SessionId, cred: &Credentials, dir: &FileHandle) -> MetaResponse {
        let rec = dir_of(self.kv, dir)?;
        perm::check(&rec, cred, W | X)?;
        if rec.entries > DELEGATION_ENTRIES_MAX {
            return Err(FsError::NotSupported(format!("delegation of a directory of more than {DELEGATION_ENTRIES_MAX} entries")));
        }
        let until = self.now + DELEGATION_LEASE_NS;
        store(self.kv, Table::Delegations, &key::u64(dir.inode.0), &DelegationRec { session, until });
        Ok(MetaReply::Delegated { attr: attr_of(dir.inode, &rec) })
    }

    fn add_entry(&mut self, parent: InodeId, dir: &mut InodeRec, name: &str, ino: InodeId, kind: FileKind) {
        let cookie = dir.next_cookie;
        dir.next_cookie += 1;
        dir.entries += 1;
        dir.mtime = self.now;
        dir.ctime = self.now;
        dir.version += 1;
        store(self.kv, Table::Dirents, &key::u64_name(parent.0, name), &DirentRec { inode: ino, kind, cookie });
        self.kv.put(Table::DirCookies, &key::u64_u64(parent.0, cookie), name.as_bytes());
    }

    fn remove_entry(&mut self, parent: InodeId, dir: &mut InodeRec, name: &str, entry: &DirentRec) {
        self.kv.delete(Table::Dirents, &key::u64_name(parent.0, name));
        self.kv.delete(Table::DirCookies, &key::u64_u64(parent.0, entry.cookie));
        dir.entries -= 1;
        dir.mtime = self.now;
        dir.ctime = self.now;
        dir.version += 1;
    }

    fn link(&mut self, cred: &Credentials, handle: &FileHandle, new_parent: &FileHandle, name: &str) -> MetaResponse {
        check_name(name)?;
        let mut rec = inode_of(self.kv, handle)?;
        if rec.kind == FileKind::Dir {
            return Err(FsError::NotPermitted);
        }
        if rec.nlink >= crate::LINKS_MAX {
            return Err(FsError::TooManyLinks);
        }
        let mut dir = dir_of(self.kv, new_parent)?;
        perm::check(&dir, cred, W | X)?;
        if self.kv.get(Table::Dirents, &key::u64_name(new_parent.inode.0, name)).is_some() {
            return Err(FsError::Exists);
        }
        rec.nlink += 1;
        rec.ctime = self.now;
        self.put_inode(handle.inode, &rec);
        self.add_entry(new_parent.inode, &mut dir, name, handle.inode, rec.kind);
        self.put_inode(new_parent.inode, &dir);
        Ok(MetaReply::Attr(attr_of(handle.inode, &rec)))
    }

    fn remove(&mut self, cred: &Credentials, parent: &FileHandle, name: &str, want_dir: bool) -> MetaResponse {
        if name == "." {
            return Err(FsError::Invalid("cannot remove '.'".into()));
        }
        if name == ".." {
            return Err(FsError::NotEmpty);
        }
        check_name(name)?;
        let mut dir = dir_of(self.kv, parent)?;
        perm::check(&dir, cred, W | X)?;
        let dkey = key::u64_name(parent.inode.0, name);
        let entry: DirentRec = load(self.kv, Table::Dirents, &dkey).ok_or(FsError::NotFound)?;
        self.drop_name(cred, parent.inode, &mut dir, name, &entry, want_dir)?;
        self.put_inode(parent.inode, &dir);
        self.maybe_free_inode(entry.inode);
        Ok(MetaReply::Ok)
    }

    /// Remove the name `name` (entry `entry`) from `dir`, which the caller writes back: checks
    /// the sticky bit and the kind (`want_dir`), and drops one link of the victim.
    fn drop_name(&mut self, cred: &Credentials, parent: InodeId, dir: &mut InodeRec, name: &str, entry: &DirentRec, want_dir: bool) -> FsResult<()> {
        let mut victim: InodeRec = load(self.kv, Table::Inodes, &key::u64(entry.inode.0))
            .ok_or_else(|| FsError::Internal("dangling entry".into()))?;
        perm::check_sticky(dir, &victim, cred)?;
        match (want_dir, victim.kind == FileKind::Dir) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            (true, true) if victim.entries > 0 => return Err(FsError::NotEmpty),
            _ => {}
        }
        self.remove_entry(parent, dir, name, entry);
        if victim.kind == FileKind::Dir {
            dir.nlink -= 1;
            victim.nlink = 0;
        } else {
            victim.nlink -= 1;
        }
        victim.ctime = self.now;
        self.put_inode(entry.inode, &victim);
        Ok(())
    }

    /// Free an inode with no names left and no open handles: its chunks, then the record.
    /// End the intent of one blob (key `k`); if it was never committed, a writer may have put
    /// copies anywhere: every known server is told to delete it.
    fn drop_intent(&mut self, k: &[u8]) {
        self.kv.delete(Table::Intents, k);
        let blob = BlobId(key::read_u64(k, 0));
        if load::<BlobInfo>(self.kv, Table::Blobs, k).is_none() {
            for (sk, _) in self.kv.scan(Table::Stores, &[], &[0xff; 9], usize::MAX) {
                self.kv.put(Table::GcOrders, &key::u64_u64(key::read_u64(&sk, 0), blob.0), &[]);
            }
        }
    }

    fn maybe_free_inode(&mut self, ino: InodeId) {
        let Some(rec) = load::<InodeRec>(self.kv, Table::Inodes, &key::u64(ino.0)) else { return };
        if rec.nlink > 0 && !(rec.kind == FileKind::Dir && rec.nlink == 0) {
            return;
        }
        if !self.kv.scan(Table::Opens, &key::u64(ino.0), &key::prefix_end(ino.0), 1).is_empty() {
            return; // An orphan: still open somewhere.
        }
        for (k, v) in self.kv.scan(Table::Chunks, &key::u64(ino.0), &key::prefix_end(ino.0), usize::MAX) {
            let slices: Vec<Slice> = codec::decode(&v).unwrap_or_default();
            for s in &slices {
                self.unref_blob(s.blob);
            }
            self.kv.delete(Table::Chunks, &k);
            self.kv.delete(Table::Fragmented, &k);
        }
        for (k, _) in self.kv.scan(Table::Xattrs, &key::u64(ino.0), &key::prefix_end(ino.0), usize::MAX) {
            self.kv.delete(Table::Xattrs, &k);
        }
        self.kv.delete(Table::Inodes, &key::u64(ino.0));
        self.counters.files = self.counters.files.saturating_sub(1);
    }

    fn rename(
        &mut self,
        cred: &Credentials,
        parent: &FileHandle,
        name: &str,
        new_parent: &FileHandle,
        new_name: &str,
        no_replace: bool,
    ) -> MetaResponse {
        check_name(name)?;
        check_name(new_name)?;
        let mut src_dir = dir_of(self.kv, parent)?;
        let mut dst_dir = dir_of(self.kv, new_parent)?;
        perm::check(&src_dir, cred, W | X)?;
        perm::check(&dst_dir, cred, W | X)?;
        let entry: DirentRec =
            load(self.kv, Table::Dirents, &key::u64_name(parent.inode.0, name)).ok_or(FsError::NotFound)?;
        let mut moved: InodeRec = load(self.kv, Table::Inodes, &key::u64(entry.inode.0))
            .ok_or_else(|| FsError::Internal("dangling entry".into()))?;
        perm::check_sticky(&src_dir, &moved, cred)?;
        let same_dir = parent.inode == new_parent.inode;
        if same_dir && name == new_name {
            return Ok(MetaReply::Ok);
        }
        let is_dir = moved.kind == FileKind::Dir;
        if is_dir {
            // No directory moves into its own subtree: walk up from the destination.
            let mut cur = new_parent.inode;
            loop {
                if cur == entry.inode {
                    return Err(FsError::Invalid("cannot move a directory into itself".into()));
                }
                if cur == InodeId::ROOT {
                    break;
                }
                let rec: InodeRec = load(self.kv, Table::Inodes, &key::u64(cur.0))
                    .ok_or_else(|| FsError::Internal("broken parent chain".into()))?;
                cur = rec.parent.unwrap_or(InodeId::ROOT);
            }
            // Moving a directory to another parent rewrites its "..": needs write permission.
            if !same_dir {
                perm::check(&moved, cred, W)?;
            }
        }
        let dst_key = key::u64_name(new_parent.inode.0, new_name);
        if let Some(target) = load::<DirentRec>(self.kv, Table::Dirents, &dst_key) {
            if no_replace {
                return Err(FsError::Exists);
            }
            if target.inode == entry.inode {
                return Ok(MetaReply::Ok); // Two names of one file: POSIX says do nothing.
            }
            self.drop_name(cred, new_parent.inode, &mut dst_dir, new_name, &target, is_dir)?;
            if same_dir {
                src_dir = dst_dir.clone();
            }
            self.put_inode(new_parent.inode, &dst_dir);
            self.maybe_free_inode(target.inode);
        }
        if same_dir {
            self.remove_entry(parent.inode, &mut src_dir, name, &entry);
            self.add_entry(parent.inode, &mut src_dir, new_name, entry.inode, entry.kind);
            self.put_inode(parent.inode, &src_dir);
        } else {
            self.remove_entry(parent.inode, &mut src_dir, name, &entry);
            self.add_entry(new_parent.inode, &mut dst_dir, new_name, entry.inode, entry.kind);
            if is_dir {
                src_dir.nlink -= 1;
                dst_dir.nlink += 1;
                moved.parent = Some(new_parent.inode);
            }
            self.put_inode(parent.inode, &src_dir);
            self.put_inode(new_parent.inode, &dst_dir);
        }
        moved.ctime = self.now;
        self.put_inode(entry.inode, &moved);
        Ok(MetaReply::Ok)
    }

    fn setattr(&mut self, cred: &Credentials, handle: &FileHandle, set: &SetAttr) -> MetaResponse {
        let mut rec = inode_of(self.kv, handle)?;
        let owner = cred.uid == 0 || cred.uid == rec.uid;
        if let Some(mode) = set.mode {
            if !owner {
                return Err(FsError::NotPermitted);
            }
            let mut mode = mode & 0o7777;
            // A non-root owner outside the file's group cannot set setgid on a file.
            if cred.uid != 0 && rec.kind != FileKind::Dir && !cred.in_group(rec.gid) {
                mode &= !0o2000;
            }
            if cred.uid != 0 && rec.kind != FileKind::Dir {
                mode &= !0o1000;
            }
            rec.mode = mode;
        }
        if set.uid.is_some() || set.gid.is_some() {
            let uid_change = set.uid.is_some_and(|u| u != rec.uid);
            let gid_ok = set.gid.is_none_or(|g| g == rec.gid || cred.in_group(g));
            if cred.uid != 0 && (uid_change || !owner || !gid_ok) {
                return Err(FsError::NotPermitted);
            }
            if let Some(uid) = set.uid {
                rec.uid = uid;
            }
            if let Some(gid) = set.gid {
                rec.gid = gid;
            }
            // Changing owner clears setuid/setgid of non-directories.
            if rec.kind != FileKind::Dir {
                rec.mode &= !0o6000;
            }
        }
        if let Some(size) = set.size {
            if rec.kind == FileKind::Dir {
                return Err(FsError::IsDir);
            }
            if rec.kind != FileKind::File {
                return Err(FsError::Invalid("truncate of a special file".into()));
            }
            perm::check(&rec, cred, W)?;
            if cred.uid != 0 {
                rec.mode &= !0o6000;
            }
            self.truncate(handle.inode, &mut rec, size);
            rec.version += 1;
            rec.mtime = self.now;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            // Setting explicit times needs ownership; "now" needs write permission. The client
            // sends explicit times, so ownership or write access is required.
            if !owner && perm::check(&rec, cred, W).is_err() {
                return Err(FsError::PermissionDenied);
            }
            if let Some(t) = set.atime {
                rec.atime = t;
            }
            if let Some(t) = set.mtime {
                rec.mtime = t;
            }
        }
        rec.ctime = self.now;
        self.put_inode(handle.inode, &rec);
        Ok(MetaReply::Attr(attr_of(handle.inode, &rec)))
    }

    /// Cut or extend a file. Chunks wholly past the new end are dropped; the chunk holding the
    /// new end gets a hole slice over its tail, so a later extension reads zeros.
    fn truncate(&mut self, ino: InodeId, rec: &mut InodeRec, size: u64) {
        if size < rec.size {
            let first_dead = size.div_ceil(CHUNK_SIZE);
            for (k, v) in self.kv.scan(Table::Chunks, &key::u64_u64(ino.0, first_dead), &key::prefix_end(ino.0), usize::MAX) {
                let slices: Vec<Slice> = codec::decode(&v).unwrap_or_default();
                for s in &slices {
                    self.unref_blob_of(ino, s.blob);
                }
                self.kv.delete(Table::Chunks, &k);
                self.kv.delete(Table::Fragmented, &k);
            }
            if size % CHUNK_SIZE != 0 {
                let idx = size / CHUNK_SIZE;
                let cut = size % CHUNK_SIZE;
                let hole = Slice { blob: None, blob_offset: 0, offset_in_chunk: cut, len: CHUNK_SIZE - cut };
                self.lay_slices(ino, idx, std::slice::from_ref(&hole));
            }
        }
        rec.size = size;
    }

    /// Lay `new` over chunk `idx`. The chunk keeps its flat list (`layout::overlay`): what is
    /// visible, sorted, each piece one slice. A blob's count of references is the number of
    /// slices naming it, so this settles the difference: the caller counted each of `new`,
    /// a slice cut in two by a write in its middle counts twice, one no longer visible not at all.
    fn lay_slices(&mut self, ino: InodeId, idx: u64, new: &[Slice]) {
        let ckey = key::u64_u64(ino.0, idx);
        let old: Vec<Slice> = load(self.kv, Table::Chunks, &ckey).unwrap_or_default();
        let kept = overlay(&old, new, CHUNK_SIZE);
        // Per blob: slices naming it now, less those counted already. A BTreeMap, so that the
        // order of the updates below is the same on every replica.
        let mut delta: std::collections::BTreeMap<BlobId, i64> = std::collections::BTreeMap::new();
        for (list, sign) in [(&kept[..], 1), (&old[..], -1), (new, -1)] {
            for b in list.iter().filter_map(|s| s.blob) {
                *delta.entry(b).or_default() += sign;
            }
        }
        for (b, d) in delta {
            if d > 0 {
                self.add_refs(b, d as u64);
            }
            for _ in d..0 {
                self.unref_blob_of(ino, Some(b));
            }
        }
        if kept.len() >= crate::COMPACT_SLICES_MIN {
            // When it was last written (the compactor waits until it is quiet).
            store(self.kv, Table::Fragmented, &ckey, &self.now);
        } else {
            self.kv.delete(Table::Fragmented, &ckey);
        }
        if kept.is_empty() {
            self.kv.delete(Table::Chunks, &ckey);
        } else {
            store(self.kv, Table::Chunks, &ckey, &kept);
        }
    }

    /// `n` more slices name blob `b`.
    fn add_refs(&mut self, b: BlobId, n: u64) {
        let bkey = key::u64(b.0);
        if let Some(mut info) = load::<BlobInfo>(self.kv, Table::Blobs, &bkey) {
            info.refs += n;
            store(self.kv, Table::Blobs, &bkey, &info);
        }
    }

    /// Turn a reserved blob into a committed one: drop its intent, record where its durable
    /// copies are (queueing a repair when there are fewer than its policy asks) and count it.
    fn publish_blob(&mut self, nb: &NewBlob, intent: &IntentRec, refs: u64) {
        let ikey = key::u64(nb.blob.0);
        self.kv.delete(Table::Intents, &ikey);
        let mut stores = nb.stores.clone();
        stores.sort();
        stores.dedup();
        for s in &stores {
            self.kv.put(Table::StoreBlobs, &key::u64_u64(s.0, nb.blob.0), &[]);
        }
        self.counters.blob_bytes += nb.len;
        let info = BlobInfo { len: nb.len, policy: intent.policy, stores, refs, crc: nb.crc };
        // A copy put on a server that failed or was fenced meanwhile does not count yet.
        if self.healthy_copies(nb.blob, &info) < intent.policy.copies() {
            store(self.kv, Table::Repair, &ikey, &RepairRec { assigned: None });
        }
        store(self.kv, Table::Blobs, &ikey, &info);
    }

    fn is_open(&self, ino: InodeId) -> bool {
        !self.kv.scan(Table::Opens, &key::u64(ino.0), &key::prefix_end(ino.0), 1).is_empty()
    }

    /// Drop a reference of file `ino` to a blob. While the file is open anywhere, a blob that
    /// loses its last reference is held instead (a reader may still read the version it
    /// opened) and freed at the last close ([`Sm::release_held`]).
    fn unref_blob_of(&mut self, ino: InodeId, blob: Option<BlobId>) {
        if let Some(b) = blob {
            let last = load::<BlobInfo>(self.kv, Table::Blobs, &key::u64(b.0)).is_some_and(|i| i.refs == 1);
            if last && self.is_open(ino) {
                self.kv.put(Table::HeldBlobs, &key::u64_u64(ino.0, b.0), &[]);
                return;
            }
        }
        self.unref_blob(blob);
    }

    /// Free the blobs held for file `ino` once nobody has it open.
    fn release_held(&mut self, ino: InodeId) {
        if self.is_open(ino) {
            return;
        }
        for (k, _) in self.kv.scan(Table::HeldBlobs, &key::u64(ino.0), &key::prefix_end(ino.0), usize::MAX) {
            self.kv.delete(Table::HeldBlobs, &k);
            self.unref_blob(Some(BlobId(key::read_u64(&k, 8))));
        }
    }

    fn unref_blob(&mut self, blob: Option<BlobId>) {
        let Some(blob) = blob else { return };
        let bkey = key::u64(blob.0);
        let Some(mut info) = load::<BlobInfo>(self.kv, Table::Blobs, &bkey) else { return };
        info.refs = info.refs.saturating_sub(1);
        if info.refs > 0 {
            store(self.kv, Table::Blobs, &bkey, &info);
            return;
        }
        // No file references it any more: order every holder to delete it.
        self.counters.blob_bytes = self.counters.blob_bytes.saturating_sub(info.len);
        self.kv.delete(Table::Blobs, &bkey);
        if info.policy == Policy::Inline {
            self.kv.delete(Table::Inline, &bkey);
        }
        self.kv.delete(Table::Repair, &bkey);
        for (k, _) in self.kv.scan(Table::Damaged, &bkey, &key::prefix_end(blob.0), usize::MAX) {
            self.kv.delete(Table::Damaged, &k);
            let holder = StoreId(key::read_u64(&k, 8));
            if !info.stores.contains(&holder) {
                self.kv.put(Table::GcOrders, &key::u64_u64(holder.0, blob.0), &[]);
            }
        }
        for s in &info.stores {
            self.kv.put(Table::GcOrders, &key::u64_u64(s.0, blob.0), &[]);
        }
    }

    fn set_policy(&mut self, cred: &Credentials, handle: &FileHandle, policy: Policy) -> MetaResponse {
        let mut rec = inode_of(self.kv, handle)?;
        if cred.uid != 0 && cred.uid != rec.uid {
            return Err(FsError::NotPermitted);
        }
        match policy {
            Policy::Replicas { copies, write_quorum } if (1..=8).contains(&copies) && (1..=copies).contains(&write_quorum) => {}
            Policy::Replicas { .. } => return Err(FsError::Invalid("copies must be 1..=8 and the write quorum 1..=copies".into())),
            Policy::Erasure { .. } => return Err(FsError::Invalid("erasure coding is not supported yet".into())),
            Policy::Inline => return Err(FsError::Invalid("inline is a blob's policy, not a file's".into())),
        }
        match rec.kind {
            FileKind::Dir => {}
            FileKind::File => {
                let has_data = !self.kv.scan(Table::Chunks, &key::u64(handle.inode.0), &key::prefix_end(handle.inode.0), 1).is_empty();
                if has_data {
                    return Err(FsError::Invalid("a file's policy can only be set while it holds no data".into()));
                }
            }
            _ => return Err(FsError::Invalid("policies apply to files and directories".into())),
        }
        rec.policy = policy;
        rec.ctime = self.now;
        self.put_inode(handle.inode, &rec);
        Ok(MetaReply::Attr(attr_of(handle.inode, &rec)))
    }

    /// Swap a fragmented chunk for one slice of a blob holding the same bytes. The writer read
    /// the chunk while it had the slices `replaces`; if anything changed since, the new blob is
    /// dropped (garbage) and the answer is a conflict.
    fn compact_chunk(&mut self, cred: &Credentials, handle: &FileHandle, idx: u64, replaces: &[Slice], nb: &NewBlob) -> MetaResponse {
        if cred.uid != 0 {
            return Err(FsError::NotPermitted);
        }
        let ckey = key::u64_u64(handle.inode.0, idx);
        let ikey = key::u64(nb.blob.0);
        let intent: IntentRec = load(self.kv, Table::Intents, &ikey).ok_or(FsError::IntentExpired)?;
        if intent.inode != handle.inode || nb.len > CHUNK_SIZE {
            return Err(FsError::Invalid("compaction blob does not fit this chunk".into()));
        }
        let current: Vec<Slice> = load(self.kv, Table::Chunks, &ckey).unwrap_or_default();
        let rec = inode_of(self.kv, handle);
        self.publish_blob(nb, &intent, 1);
        let rec = match rec {
            Ok(rec) if current == replaces && !current.is_empty() => rec,
            other => {
                // Changed or gone: the new copy is garbage; the chunk is left as it is.
                self.unref_blob(Some(nb.blob));
                if current.len() < crate::COMPACT_SLICES_MIN {
                    self.kv.delete(Table::Fragmented, &ckey);
                }
                return match other {
                    Ok(rec) => Err(FsError::VersionConflict { current: rec.version }),
                    Err(e) => Err(e),
                };
            }
        };
        for s in &current {
            self.unref_blob_of(handle.inode, s.blob);
        }
        let slice = Slice { blob: Some(nb.blob), blob_offset: 0, offset_in_chunk: 0, len: nb.len };
        store(self.kv, Table::Chunks, &ckey, &vec![slice]);
        self.kv.delete(Table::Fragmented, &ckey);
        // Same bytes: no new version, no new mtime.
        Ok(MetaReply::Attr(attr_of(handle.inode, &rec)))
    }

    fn set_xattr(&mut self, cred: &Credentials, handle: &FileHandle, name: &str, value: &[u8], flags: u32) -> MetaResponse {
        let mut rec = inode_of(self.kv, handle)?;
        if name.is_empty() || name.len() > NAME_LEN_MAX {
            return Err(FsError::NameTooLong);
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(FsError::Invalid("extended attribute value too long".into()));
        }
        perm::check_xattr(&rec, cred, name, true)?;
        let xkey = key::u64_name(handle.inode.0, name);
        let exists = self.kv.get(Table::Xattrs, &xkey).is_some();
        match flags {
            1 if exists => return Err(FsError::Exists),
            2 if !exists => return Err(FsError::NoAttribute),
            0..=2 => {}
            _ => return Err(FsError::Invalid(format!("bad xattr flags {flags}"))),
        }
        if !exists
            && self.kv.scan(Table::Xattrs, &key::u64(handle.inode.0), &key::prefix_end(handle.inode.0), XATTRS_PER_INODE_MAX).len()
                >= XATTRS_PER_INODE_MAX
        {
            return Err(FsError::NoSpace);
        }
        self.kv.put(Table::Xattrs, &xkey, value);
        rec.ctime = self.now;
        self.put_inode(handle.inode, &rec);
        Ok(MetaReply::Ok)
    }

    fn remove_xattr(&mut self, cred: &Credentials, handle: &FileHandle, name: &str) -> MetaResponse {
        let mut rec = inode_of(self.kv, handle)?;
        perm::check_xattr(&rec, cred, name, true)?;
        let xkey = key::u64_name(handle.inode.0, name);
        if self.kv.get(Table::Xattrs, &xkey).is_none() {
            return Err(FsError::NoAttribute);
        }
        self.kv.delete(Table::Xattrs, &xkey);
        rec.ctime = self.now;
        self.put_inode(handle.inode, &rec);
        Ok(MetaReply::Ok)
    }

    fn open(&mut self, session: SessionId, handle: &FileHandle) -> MetaResponse {
        let rec = inode_of(self.kv, handle)?;
        let okey = key::u64_u64(handle.inode.0, session.0);
        let count: u64 = load(self.kv, Table::Opens, &okey).unwrap_or(0);
        store(self.kv, Table::Opens, &okey, &(count + 1));
        self.kv.put(Table::SessionOpens, &key::u64_u64(session.0, handle.inode.0), &[]);
        Ok(MetaReply::Attr(attr_of(handle.inode, &rec)))
    }

    fn release(&mut self, session: SessionId, handle: &FileHandle) -> MetaResponse {
        let okey = key::u64_u64(handle.inode.0, session.0);
        let count: u64 = load(self.kv, Table::Opens, &okey).unwrap_or(0);
        if count <= 1 {
            self.kv.delete(Table::Opens, &okey);
            self.kv.delete(Table::SessionOpens, &key::u64_u64(session.0, handle.inode.0));
            self.release_held(handle.inode);
            self.maybe_free_inode(handle.inode);
        } else {
            store(self.kv, Table::Opens, &okey, &(count - 1));
        }
        Ok(MetaReply::Ok)
    }

    // ---- data ----

    fn alloc_blobs(&mut self, session: SessionId, cred: &Credentials, handle: &FileHandle, count: u32, bytes: u64) -> MetaResponse {
        let rec = inode_of(self.kv, handle)?;
        if rec.kind != FileKind::File {
            return Err(FsError::Invalid("not a regular file".into()));
        }
        perm::check(&rec, cred, W)?;
        if count == 0 || count as usize > crate::BLOBS_PER_COMMIT_MAX {
            return Err(FsError::Invalid(format!("blob count {count} out of range")));
        }
        let policy = rec.policy;
        let targets = self.placement(bytes, policy)?;
        let expires = self.now + self.params.intent_lease_ns;
        let mut blobs = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let id = BlobId(self.counters.next_blob);
            self.counters.next_blob += 1;
            store(self.kv, Table::Intents, &key::u64(id.0), &IntentRec { inode: handle.inode, session, expires, policy });
            blobs.push(id);
        }
        Ok(MetaReply::Intent(Intent { blobs, targets, policy, expires, cap: None }))
    }

    /// Live servers with room for `bytes`, most free space first. Ties break by id.
    fn placement(&self, bytes: u64, policy: Policy) -> FsResult<Vec<StoreAddr>> {
        let mut candidates: Vec<(u64, u64, String)> = Vec::new();
        for (k, v) in self.kv.scan(Table::Stores, &[], &[0xff; 9], usize::MAX) {
            let Ok(rec) = codec::decode::<StoreRec>(&v) else { continue };
            let free = rec.capacity.saturating_sub(rec.used);
            if rec.alive && free >= bytes {
                candidates.push((free, key::read_u64(&k, 0), rec.addr));
            }
        }
        if candidates.len() < policy.write_quorum() {
            return Err(FsError::NoSpace);
        }
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        Ok(candidates.into_iter().map(|(_, id, addr)| StoreAddr { store: StoreId(id), addr }).collect())
    }

    /// `grow`: `c.size` is a floor (the file never shrinks), as [`MetaOp::CommitGrow`] asks.
    /// `inline`: the bytes of the blobs the metadata holds itself ([`MetaOp::CommitInline`]).
    fn commit(&mut self, cred: &Credentials, c: &Commit, grow: bool, inline: &[(BlobId, ByteBuf)]) -> MetaResponse {
        let mut rec = inode_of(self.kv, &c.handle)?;
        let size = if grow { rec.size.max(c.size) } else { c.size };
        if rec.kind != FileKind::File {
            return Err(FsError::Invalid("not a regular file".into()));
        }
        perm::check(&rec, cred, W)?;
        if let Some(base) = c.base_version {
            if base.0 != rec.version {
                return Err(FsError::VersionConflict { current: rec.version });
            }
        }
        if c.blobs.len() > crate::BLOBS_PER_COMMIT_MAX {
            return Err(FsError::Invalid("too many blobs in one commit".into()));
        }
        let mut ids: Vec<BlobId> = c.blobs.iter().map(|b| b.blob).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != c.blobs.len() {
            return Err(FsError::Invalid("a blob is named twice in one commit".into()));
        }
        check_inline(c, inline)?;
        let is_inline = |b: BlobId| inline.iter().any(|(i, _)| *i == b);
        // Every new blob must be covered by a live intent for this inode, with a write quorum
        // (or its bytes in the command).
        for nb in &c.blobs {
            let ikey = key::u64(nb.blob.0);
            let intent: IntentRec = load(self.kv, Table::Intents, &ikey).ok_or(FsError::IntentExpired)?;
            if intent.inode != c.handle.inode {
                return Err(FsError::Invalid(format!("blob {} was reserved for another file", nb.blob)));
            }
            let mut distinct = nb.stores.clone();
            distinct.sort();
            distinct.dedup();
            if !is_inline(nb.blob) && distinct.len() < intent.policy.write_quorum() {
                return Err(FsError::Invalid(format!("blob {} has {} durable copies, fewer than the write quorum", nb.blob, distinct.len())));
            }
        }
        for s in c.chunks.iter().flat_map(|u| &u.slices) {
            if s.offset_in_chunk + s.len > CHUNK_SIZE {
                return Err(FsError::Invalid("slice crosses a chunk boundary".into()));
            }
            if let Some(b) = s.blob {
                let named = c.blobs.iter().find(|nb| nb.blob == b).map(|nb| nb.len);
                let len = match named {
                    Some(len) => len,
                    None => load::<BlobInfo>(self.kv, Table::Blobs, &key::u64(b.0)).map(|i| i.len).ok_or(FsError::IntentExpired)?,
                };
                if s.blob_offset + s.len > len {
                    return Err(FsError::Invalid("slice beyond its blob".into()));
                }
            }
        }
        // Publish the blobs, then reference them from the slices.
        for nb in &c.blobs {
            let mut intent: IntentRec = load(self.kv, Table::Intents, &key::u64(nb.blob.0)).ok_or(FsError::IntentExpired)?;
            if let Some((_, bytes)) = inline.iter().find(|(b, _)| *b == nb.blob) {
                intent.policy = Policy::Inline;
                self.kv.put(Table::Inline, &key::u64(nb.blob.0), bytes);
            }
            self.publish_blob(nb, &intent, 0);
        }
        // Every new slice counts before any chunk is laid: a blob whose slices in one chunk
        // are all hidden by later ones of this commit must not be freed while another chunk
        // still takes slices of it.
        // One update per blob, however many of its slices (thousands after scattered writes).
        let mut counts: std::collections::BTreeMap<BlobId, u64> = std::collections::BTreeMap::new();
        for b in c.chunks.iter().flat_map(|u| &u.slices).filter_map(|s| s.blob) {
            *counts.entry(b).or_default() += 1;
        }
        for (b, n) in counts {
            self.add_refs(b, n);
        }
        for u in &c.chunks {
            self.lay_slices(c.handle.inode, u.idx, &u.slices);
        }
        // A blob committed but referenced by no slice is garbage at once.
        for nb in &c.blobs {
            if let Some(info) = load::<BlobInfo>(self.kv, Table::Blobs, &key::u64(nb.blob.0)) {
                if info.refs == 0 {
                    let mut info = info;
                    info.refs = 1;
                    store(self.kv, Table::Blobs, &key::u64(nb.blob.0), &info);
                    self.unref_blob(Some(nb.blob));
                }
            }
        }
        // A commit that shrinks the file cuts what lies past the new end, so a later extension
        // reads zeros and the space is freed.
        if size < rec.size {
            self.truncate(c.handle.inode, &mut rec, size);
        }
        rec.size = size;
        rec.mtime = c.mtime;
        rec.ctime = self.now;
        rec.version += 1;
        // Writing clears setuid/setgid, as local file systems do.
        if cred.uid != 0 {
            rec.mode &= !0o6000;
        }
        self.put_inode(c.handle.inode, &rec);
        Ok(MetaReply::Attr(attr_of(c.handle.inode, &rec)))
    }

    // ---- storage servers ----

    /// A new server is alive at once. A known one (restarted, or back after a failure) is
    /// fenced out until its list of blobs is checked ([`Sm::store_inventory`]): its disk may
    /// have lost copies, or kept ones deleted meanwhile.
    fn register_store(&mut self, id: StoreId, addr: &str, capacity: u64, used: u64) -> MetaResponse {
        let skey = key::u64(id.0);
        let prev = load::<StoreRec>(self.kv, Table::Stores, &skey);
        let returning = prev.is_some();
        if returning {
            self.fence_returning(id);
        }
        let blobs = prev.map_or(0, |r| r.blobs);
        let rec = StoreRec { addr: addr.to_string(), capacity, used, last_heartbeat: self.now, alive: !returning, blobs };
        store(self.kv, Table::Stores, &skey, &rec);
        Ok(MetaReply::Ok)
    }

    /// Start (over) the check of `id`'s blobs; it holds no copy that counts until it ends.
    fn fence_returning(&mut self, id: StoreId) {
        store(self.kv, Table::Returning, &key::u64(id.0), &ReturningRec::default());
    }

    /// One part of a returning server's list of blobs: ids `from..=last listed` (to the end when
    /// `done`). A copy the metadata records there but the server lacks stops counting (the blob
    /// is queued for repair); a blob it holds that nothing records there, and that no writer,
    /// deletion or corrupt-copy record accounts for, is ordered deleted. After the last part the
    /// server is alive again.
    fn store_inventory(&mut self, id: StoreId, from: u64, blobs: &[BlobId], done: bool) -> MetaResponse {
        let rkey = key::u64(id.0);
        let Some(mut ret) = load::<ReturningRec>(self.kv, Table::Returning, &rkey) else {
            return Ok(MetaReply::Ok); // Already checked (a part sent twice).
        };
        if from != ret.next {
            return Err(FsError::Invalid(format!("inventory of store {} out of step: part from {from}, expected from {}", id.0, ret.next)));
        }
        if blobs.first().is_some_and(|b| b.0 < from) || blobs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(FsError::Invalid("inventory part not in increasing id order from its start".into()));
        }
        let last = match (done, blobs.last()) {
            (true, _) => u64::MAX,
            (false, Some(b)) => b.0,
            (false, None) => return Err(FsError::Invalid("an empty inventory part that is not the last".into())),
        };
        let recorded: Vec<u64> = self
            .kv
            .scan(Table::StoreBlobs, &key::u64_u64(id.0, from), &range_end(id.0, last), usize::MAX)
            .into_iter()
            .map(|(k, _)| key::read_u64(&k, 8))
            .collect();
        let held: std::collections::BTreeSet<u64> = blobs.iter().map(|b| b.0).collect();
        for &b in recorded.iter().filter(|b| !held.contains(b)) {
            self.lose_copy(id, BlobId(b));
        }
        let recorded: std::collections::BTreeSet<u64> = recorded.into_iter().collect();
        for &b in held.iter().filter(|b| !recorded.contains(b)) {
            let accounted = self.kv.get(Table::GcOrders, &key::u64_u64(id.0, b)).is_some()
                || self.kv.get(Table::Intents, &key::u64(b)).is_some()
                || self.kv.get(Table::Damaged, &key::u64_u64(b, id.0)).is_some();
            if accounted {
                continue;
            }
            let bkey = key::u64(b);
            match load::<BlobInfo>(self.kv, Table::Blobs, &bkey) {
                // A copy of a live blob not recorded here (its write or repair was reported in
                // a way this check missed): adopted, not deleted. Its checksums guard its reads.
                Some(mut info) => {
                    info.stores.push(id);
                    info.stores.sort();
                    info.stores.dedup();
                    store(self.kv, Table::Blobs, &bkey, &info);
                    self.kv.put(Table::StoreBlobs, &key::u64_u64(id.0, b), &[]);
                }
                None => self.kv.put(Table::GcOrders, &key::u64_u64(id.0, b), &[]),
            }
        }
        if let Some(mut rec) = load::<StoreRec>(self.kv, Table::Stores, &rkey) {
            rec.last_heartbeat = self.now; // It is talking.
            store(self.kv, Table::Stores, &rkey, &rec);
        }
        if !done {
            ret.next = last + 1;
            store(self.kv, Table::Returning, &rkey, &ret);
            return Ok(MetaReply::Ok);
        }
        self.kv.delete(Table::Returning, &rkey);
        if let Some(mut rec) = load::<StoreRec>(self.kv, Table::Stores, &rkey) {
            rec.alive = true;
            rec.last_heartbeat = self.now;
            rec.blobs = self.kv.scan(Table::StoreBlobs, &rkey, &key::prefix_end(id.0), usize::MAX).len() as u64;
            store(self.kv, Table::Stores, &rkey, &rec);
        }
        Ok(MetaReply::Ok)
    }

    /// `id` no longer holds `blob`: forget the copy, and queue a repair if the blob needs one.
    /// The last recorded copy of a live blob is never forgotten (if the server's list was taken
    /// just before a put there landed, the copy exists; if not, nothing else holds the blob).
    fn lose_copy(&mut self, id: StoreId, blob: BlobId) {
        let bkey = key::u64(blob.0);
        let info = load::<BlobInfo>(self.kv, Table::Blobs, &bkey);
        if info.as_ref().is_some_and(|i| i.stores == [id]) {
            return;
        }
        self.kv.delete(Table::StoreBlobs, &key::u64_u64(id.0, blob.0));
        self.kv.delete(Table::GcOrders, &key::u64_u64(id.0, blob.0));
        self.kv.delete(Table::Damaged, &key::u64_u64(blob.0, id.0));
        let Some(mut info) = info else { return };
        info.stores.retain(|&s| s != id);
        store(self.kv, Table::Blobs, &bkey, &info);
        if self.healthy_copies(blob, &info) < info.policy.copies() && self.kv.get(Table::Repair, &bkey).is_none() {
            store(self.kv, Table::Repair, &bkey, &RepairRec { assigned: None });
        }
    }

    fn store_heartbeat(&mut self, hb: &StoreHeartbeat) -> MetaResponse {
        let skey = key::u64(hb.store.0);
        let prev: Option<StoreRec> = load(self.kv, Table::Stores, &skey);
        for b in &hb.deleted {
            self.kv.delete(Table::GcOrders, &key::u64_u64(hb.store.0, b.0));
            self.kv.delete(Table::StoreBlobs, &key::u64_u64(hb.store.0, b.0));
        }
        for b in &hb.repaired {
            let bkey = key::u64(b.0);
            if let Some(mut info) = load::<BlobInfo>(self.kv, Table::Blobs, &bkey) {
                if !info.stores.contains(&hb.store) {
                    info.stores.push(hb.store);
                    info.stores.sort();
                }
                self.kv.put(Table::StoreBlobs, &key::u64_u64(hb.store.0, b.0), &[]);
                store(self.kv, Table::Blobs, &bkey, &info);
                if self.healthy_copies(*b, &info) >= info.policy.copies() {
                    self.kv.delete(Table::Repair, &bkey);
                    self.drop_damaged(*b);
                }
            } else {
                // Freed while it was being repaired: the new copy is garbage.
                self.kv.put(Table::GcOrders, &key::u64_u64(hb.store.0, b.0), &[]);
            }
        }
        // Back after being declared failed (it was cut off or paused, not restarted): checked
        // before it counts again, like a restarted one.
        if prev.as_ref().is_some_and(|p| !p.alive) && self.kv.get(Table::Returning, &skey).is_none() {
            self.fence_returning(hb.store);
        }
        let returning = load::<ReturningRec>(self.kv, Table::Returning, &skey);
        let n_blobs = self.kv.scan(Table::StoreBlobs, &skey, &key::prefix_end(hb.store.0), usize::MAX).len() as u64;
        let rec = StoreRec {
            addr: hb.addr.clone(),
            capacity: hb.capacity,
            used: hb.used,
            last_heartbeat: self.now,
            alive: returning.is_none(),
            blobs: n_blobs,
        };
        store(self.kv, Table::Stores, &skey, &rec);

        // Orders: deletions, then repairs this server can take.
        let delete: Vec<BlobId> = self
            .kv
            .scan(Table::GcOrders, &skey, &key::prefix_end(hb.store.0), crate::ORDERS_PER_HEARTBEAT_MAX)
            .into_iter()
            .map(|(k, _)| BlobId(key::read_u64(&k, 8)))
            .collect();
        let mut repair = Vec::new();
        let free = hb.capacity.saturating_sub(hb.used);
        let mut budget = free;
        // Repairs: a window of the queue, from a cursor that goes round it (so blobs that cannot
        // be repaired yet do not hide the others), most endangered (fewest healthy copies)
        // first. A fenced server gets none until it is checked.
        let mut rows = Vec::new();
        if returning.is_none() {
            let cursor = load::<u64>(self.kv, Table::Meta, REPAIR_CURSOR_KEY).unwrap_or(0);
            rows = self.kv.scan(Table::Repair, &key::u64(cursor), &[0xff; 9], crate::REPAIR_SCAN_MAX);
            if rows.len() < crate::REPAIR_SCAN_MAX {
                rows.extend(self.kv.scan(Table::Repair, &[], &key::u64(cursor), crate::REPAIR_SCAN_MAX - rows.len()));
            }
            if let Some((k, _)) = rows.last() {
                store(self.kv, Table::Meta, REPAIR_CURSOR_KEY, &key::read_u64(k, 0).wrapping_add(1));
            }
        }
        let mut candidates = Vec::new();
        for (k, v) in rows {
            let Ok(rr) = codec::decode::<RepairRec>(&v) else { continue };
            let blob_id = key::read_u64(&k, 0);
            let Some(info) = load::<BlobInfo>(self.kv, Table::Blobs, &k) else {
                self.kv.delete(Table::Repair, &k);
                continue;
            };
            let healthy = self.healthy_copies(BlobId(blob_id), &info);
            if healthy >= info.policy.copies() {
                self.kv.delete(Table::Repair, &k);
                self.drop_damaged(BlobId(blob_id));
                continue;
            }
            // A server still holding a corrupt or condemned copy would think it has the blob.
            let deleting = self.kv.get(Table::GcOrders, &key::u64_u64(hb.store.0, blob_id)).is_some()
                || self.kv.get(Table::Damaged, &key::u64_u64(blob_id, hb.store.0)).is_some();
            if info.stores.contains(&hb.store) || deleting {
                continue;
            }
            if let Some((who, at)) = rr.assigned {
                if who != hb.store.0 && self.now - at < crate::REPAIR_REASSIGN_NS {
                    continue;
                }
            }
            candidates.push((healthy, blob_id, k, rr, info));
        }
        candidates.sort_by_key(|c| (c.0, c.1));
        for (_, blob_id, k, mut rr, info) in candidates {
            if repair.len() >= crate::REPAIRS_PER_HEARTBEAT_MAX {
                break;
            }
            if info.len > budget {
                continue;
            }
            let sources: Vec<StoreAddr> = info
                .stores
                .iter()
                .filter(|s| self.kv.get(Table::Damaged, &key::u64_u64(blob_id, s.0)).is_none())
                .filter_map(|s| {
                    let r: StoreRec = load(self.kv, Table::Stores, &key::u64(s.0))?;
                    r.alive.then(|| StoreAddr { store: *s, addr: r.addr })
                })
                .collect();
            if sources.is_empty() {
                continue; // Every good copy is on a failed server: wait for one to come back.
            }
            rr.assigned = Some((hb.store.0, self.now));
            store(self.kv, Table::Repair, &k, &rr);
            budget -= info.len;
            repair.push(RepairOrder { blob: BlobId(blob_id), len: info.len, crc: info.crc, sources });
        }
        let scrub_epoch = load::<u64>(self.kv, Table::Meta, SCRUB_EPOCH_KEY).unwrap_or(0);
        let inventory_from = returning.map(|r| r.next);
        Ok(MetaReply::StoreOrders(StoreOrders { term: Term(0), delete, repair, scrub_epoch, inventory_from }))
    }

    /// `store` found its copies of `blobs` corrupt; each gets a `Damaged` row. A copy with
    /// another copy beside it (on a live server or not) stops counting: it leaves the blob's
    /// copies, so reads and repairs avoid it, and the blob is queued for repair; the copy itself
    /// is deleted only once the blob is fully protected again (two copies bad in different
    /// blocks are both kept until then). The last copy of a blob stays listed (its other blocks
    /// still read), the blob leaves the repair queue, and the reply names it.
    fn report_corrupt(&mut self, store_id: StoreId, blobs: &[BlobId]) -> MetaResponse {
        let mut unrepairable = Vec::new();
        for &blob in blobs {
            let bkey = key::u64(blob.0);
            let Some(mut info) = load::<BlobInfo>(self.kv, Table::Blobs, &bkey) else { continue };
            if !info.stores.contains(&store_id) {
                continue; // Not a copy that counts (any more).
            }
            let dkey = key::u64_u64(blob.0, store_id.0);
            let known = self.kv.get(Table::Damaged, &dkey).is_some();
            self.kv.put(Table::Damaged, &dkey, &[]);
            if info.stores.len() == 1 {
                self.kv.delete(Table::Repair, &bkey);
                unrepairable.push(blob);
                continue;
            }
            if known {
                continue;
            }
            info.stores.retain(|&s| s != store_id);
            store(self.kv, Table::Blobs, &bkey, &info);
            self.kv.delete(Table::StoreBlobs, &key::u64_u64(store_id.0, blob.0));
            if self.kv.get(Table::Repair, &bkey).is_none() {
                store(self.kv, Table::Repair, &bkey, &RepairRec { assigned: None });
            }
        }
        Ok(MetaReply::Unrepairable(unrepairable))
    }

    /// Once `blob` is fully protected again, order its corrupt copies deleted.
    fn drop_damaged(&mut self, blob: BlobId) {
        for (k, _) in self.kv.scan(Table::Damaged, &key::u64(blob.0), &key::prefix_end(blob.0), usize::MAX) {
            self.kv.delete(Table::Damaged, &k);
            self.kv.put(Table::GcOrders, &key::u64_u64(key::read_u64(&k, 8), blob.0), &[]);
        }
    }

    fn request_scrub(&mut self, cred: &Credentials) -> MetaResponse {
        if cred.uid != 0 {
            return Err(FsError::NotPermitted);
        }
        let epoch = load::<u64>(self.kv, Table::Meta, SCRUB_EPOCH_KEY).unwrap_or(0) + 1;
        store(self.kv, Table::Meta, SCRUB_EPOCH_KEY, &epoch);
        Ok(MetaReply::ScrubEpoch(epoch))
    }

    /// Copies of `blob` on live servers, not known corrupt.
    fn healthy_copies(&self, blob: BlobId, info: &BlobInfo) -> usize {
        info.stores
            .iter()
            .filter(|s| self.kv.get(Table::Damaged, &key::u64_u64(blob.0, s.0)).is_none())
            .filter(|s| load::<StoreRec>(self.kv, Table::Stores, &key::u64(s.0)).is_some_and(|r| r.alive))
            .count()
    }
}

/// The rules of [`MetaOp::CommitInline`]: each inline blob is one of the commit's new blobs,
/// once, with no storage server, its length and CRC32C those of its bytes; at most
/// [`INLINE_BYTES_MAX`] in all; its slices within the file's first [`INLINE_BYTES_MAX`] bytes.
fn check_inline(c: &Commit, inline: &[(BlobId, ByteBuf)]) -> Result<(), FsError> {
    if inline.is_empty() {
        return Ok(());
    }
    let total: u64 = inline.iter().map(|(_, d)| d.len() as u64).sum();
    if total > INLINE_BYTES_MAX {
        return Err(FsError::Invalid(format!("{total} inline bytes, more than {INLINE_BYTES_MAX}")));
    }
    for (i, (blob, bytes)) in inline.iter().enumerate() {
        if inline[..i].iter().any(|(b, _)| b == blob) {
            return Err(FsError::Invalid(format!("blob {blob} is inlined twice")));
        }
        let nb = c.blobs.iter().find(|nb| nb.blob == *blob).ok_or_else(|| FsError::Invalid(format!("inline blob {blob} is not a new blob of the commit")))?;
        if !nb.stores.is_empty() || nb.len != bytes.len() as u64 || nb.crc != crc32c::crc32c(bytes) {
            return Err(FsError::Invalid(format!("inline blob {blob} does not match its bytes")));
        }
    }
    for u in &c.chunks {
        for s in u.slices.iter().filter(|s| s.blob.is_some_and(|b| inline.iter().any(|(i, _)| *i == b))) {
            if u.idx.saturating_mul(CHUNK_SIZE).saturating_add(s.offset_in_chunk).saturating_add(s.len) > INLINE_BYTES_MAX {
                return Err(FsError::Invalid(format!("inline bytes only within a file's first {INLINE_BYTES_MAX} bytes")));
            }
        }
    }
    Ok(())
}

/// Names of users: 1 to 32 of `a-z 0-9 _ . -`, starting with a letter; "admin" is built in.
fn check_user_name(name: &str) -> Result<(), FsError> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
    if !ok {
        return Err(FsError::Invalid(format!("bad user name {name:?}: use 1 to 32 of a-z, 0-9, _ . - starting with a letter")));
    }
    if name == "admin" {
        return Err(FsError::Invalid("\"admin\" is the built-in administrator".into()));
    }
    Ok(())
}

/// End (exclusive) of the keys `(a, 0..=last)`.
fn range_end(a: u64, last: u64) -> Vec<u8> {
    match last.checked_add(1) {
        Some(next) => key::u64_u64(a, next),
        None => key::prefix_end(a),
    }
}

/// Refuse a request of `session` that touches directory `dir` while another session holds its
/// delegation.
pub(crate) fn check_delegation(kv: &impl KvRead, dir: InodeId, session: SessionId, now: TimeNs) -> FsResult<()> {
    match load::<DelegationRec>(kv, Table::Delegations, &key::u64(dir.0)) {
        Some(d) if d.session != session && d.until >= now => Err(FsError::Delegated { dir, holder: d.session, until: d.until }),
        _ => Ok(()),
    }
}

/// The directories whose entries a request reads or changes (a directory removed or replaced
/// by a rename counts: what its holder created in it would be lost).
pub(crate) fn touched_dirs(kv: &impl KvRead, op: &MetaOp) -> Vec<InodeId> {
    let dir_named = |parent: &FileHandle, name: &str| {
        load::<DirentRec>(kv, Table::Dirents, &key::u64_name(parent.inode.0, name)).filter(|e| e.kind == FileKind::Dir).map(|e| e.inode)
    };
    match op {
        MetaOp::Lookup { parent, .. } => vec![parent.inode],
        // Its mode and owner decide who may create in it.
        MetaOp::GetAttr { handle } | MetaOp::SetAttr { handle, .. } => vec![handle.inode],
        MetaOp::Readdir { dir, .. } | MetaOp::ReaddirPlus { dir, .. } | MetaOp::Delegate { dir } => vec![dir.inode],
        MetaOp::Create { parent, .. }
        | MetaOp::CreateOpen { parent, .. }
        | MetaOp::CreateOpenReserve { parent, .. }
        | MetaOp::CreateAt { parent, .. }
        | MetaOp::CreateAtWith { parent, .. }
        | MetaOp::Mkdir { parent, .. }
        | MetaOp::MkdirDelegated { parent, .. }
        | MetaOp::Symlink { parent, .. }
        | MetaOp::Unlink { parent, .. } => vec![parent.inode],
        MetaOp::Link { new_parent, .. } => vec![new_parent.inode],
        MetaOp::Rmdir { parent, name } => std::iter::once(parent.inode).chain(dir_named(parent, name)).collect(),
        MetaOp::Rename { parent, new_parent, new_name, .. } => {
            [parent.inode, new_parent.inode].into_iter().chain(dir_named(new_parent, new_name)).collect()
        }
        _ => Vec::new(),
    }
}
