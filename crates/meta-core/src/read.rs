//! Read-only operations, served from the state after a leadership check, without a log entry.

use crate::apply::{attr_of, check_delegation, check_name, dir_of, inode_of, load, touched_dirs};
use crate::kv::{key, KvRead, Table};
use crate::perm::{self, X};
use crate::records::*;
use shoal_types::attr::TimeNs;
use shoal_types::codec;
use shoal_types::layout::Slice;
use shoal_types::meta_msg::*;
use shoal_types::*;

/// Answer a read request. `now` is the server's view of the cluster clock (for liveness only).
pub fn read(kv: &impl KvRead, req: &MetaRequest, now: TimeNs) -> MetaResponse {
    if !req.op.is_read() {
        return Err(FsError::Invalid("not a read".into()));
    }
    for dir in touched_dirs(kv, &req.op) {
        check_delegation(kv, dir, req.session, now)?;
    }
    read_op(kv, &req.cred, &req.op, now)
}

pub(crate) fn read_op(kv: &impl KvRead, cred: &Credentials, op: &MetaOp, now: TimeNs) -> MetaResponse {
    match op {
        MetaOp::Lookup { parent, name } => {
            let dir = dir_of(kv, parent)?;
            perm::check(&dir, cred, X)?;
            if name == "." {
                return Ok(MetaReply::Attr(attr_of(parent.inode, &dir)));
            }
            if name == ".." {
                let p = dir.parent.unwrap_or(InodeId::ROOT);
                let rec: InodeRec = load(kv, Table::Inodes, &key::u64(p.0)).ok_or(FsError::Stale)?;
                return Ok(MetaReply::Attr(attr_of(p, &rec)));
            }
            check_name(name)?;
            let entry: DirentRec = load(kv, Table::Dirents, &key::u64_name(parent.inode.0, name)).ok_or(FsError::NotFound)?;
            let rec: InodeRec = load(kv, Table::Inodes, &key::u64(entry.inode.0))
                .ok_or_else(|| FsError::Internal("dangling entry".into()))?;
            Ok(MetaReply::Attr(attr_of(entry.inode, &rec)))
        }
        MetaOp::GetAttr { handle } => Ok(MetaReply::Attr(attr_of(handle.inode, &inode_of(kv, handle)?))),
        MetaOp::Readlink { handle } => {
            let rec = inode_of(kv, handle)?;
            rec.symlink_target.map(MetaReply::Target).ok_or_else(|| FsError::Invalid("not a symlink".into()))
        }
        MetaOp::Readdir { dir, cookie, limit } => {
            let (rows, eof) = listing(kv, cred, perm::R, dir, *cookie, (*limit).clamp(1, READDIR_LIMIT_MAX))?;
            let mut entries = Vec::with_capacity(rows.len());
            for (name, cookie, entry, rec) in rows {
                let generation = rec.map_or(0, |r| r.generation);
                entries.push(DirEntry {
                    name,
                    kind: entry.kind,
                    handle: FileHandle { volume: VolumeId(1), inode: entry.inode, generation: Generation(generation) },
                    cookie,
                });
            }
            Ok(MetaReply::Dir { entries, eof })
        }
        MetaOp::ReaddirPlus { dir, cookie, limit } => {
            // What it answers is what a lookup of each name would: search permission too.
            let (rows, eof) = listing(kv, cred, perm::R | X, dir, *cookie, (*limit).clamp(1, READDIR_PLUS_LIMIT_MAX))?;
            let mut entries = Vec::with_capacity(rows.len());
            for (name, cookie, entry, rec) in rows {
                let rec = rec.ok_or_else(|| FsError::Internal("dangling entry".into()))?;
                entries.push(DirPlusEntry { name, attr: attr_of(entry.inode, &rec), cookie });
            }
            Ok(MetaReply::DirPlus { entries, eof })
        }
        MetaOp::GetLayout { handle, first_chunk, n_chunks } => {
            let rec = inode_of(kv, handle)?;
            perm::check(&rec, cred, perm::R)?;
            let end = first_chunk.saturating_add((*n_chunks).max(1));
            let rows = kv.scan(Table::Chunks, &key::u64_u64(handle.inode.0, *first_chunk), &key::u64_u64(handle.inode.0, end), usize::MAX);
            let mut chunks = Vec::with_capacity(rows.len());
            let mut blob_ids: Vec<BlobId> = Vec::new();
            for (k, v) in rows {
                let slices: Vec<Slice> = codec::decode(&v).map_err(|e| FsError::Corrupt(e.to_string()))?;
                blob_ids.extend(slices.iter().filter_map(|s| s.blob));
                chunks.push((key::read_u64(&k, 8), slices));
            }
            blob_ids.sort();
            blob_ids.dedup();
            let mut blobs = Vec::with_capacity(blob_ids.len());
            let mut inline = Vec::new();
            for b in blob_ids {
                let info: BlobInfo = load(kv, Table::Blobs, &key::u64(b.0)).ok_or_else(|| FsError::Internal(format!("blob {b} unknown")))?;
                if info.policy == Policy::Inline {
                    let bytes = kv.get(Table::Inline, &key::u64(b.0)).ok_or_else(|| FsError::Internal(format!("inline blob {b} has no bytes")))?;
                    inline.push((b, ByteBuf::from(bytes)));
                }
                let mut stores = Vec::new();
                let mut dead = Vec::new();
                for s in &info.stores {
                    // A returning server is not read from until its blobs are checked.
                    if kv.get(Table::Returning, &key::u64(s.0)).is_some() {
                        continue;
                    }
                    if let Some(r) = load::<StoreRec>(kv, Table::Stores, &key::u64(s.0)) {
                        // Live servers first; failed ones last, as a last resort.
                        if r.alive { stores.push(StoreAddr { store: *s, addr: r.addr }) } else { dead.push(StoreAddr { store: *s, addr: r.addr }) }
                    }
                }
                stores.extend(dead);
                blobs.push(BlobLocation { blob: b, len: info.len, crc: info.crc, stores, cap: None, inline: None });
            }
            let layout = MetaReply::Layout(Layout { attr: attr_of(handle.inode, &rec), chunks, blobs });
            if inline.is_empty() {
                Ok(layout)
            } else {
                Ok(MetaReply::Inlined { data: inline, reply: Box::new(layout) })
            }
        }
        MetaOp::Statfs => {
            let (capacity, used) = stores(kv).iter().filter(|(_, r)| r.alive).fold((0u64, 0u64), |(c, u), (_, r)| (c + r.capacity, u + r.used));
            let counters: Counters = load(kv, Table::Meta, crate::apply::COUNTERS_KEY).unwrap_or_default();
            // Figures are in logical bytes: raw bytes divided by the default number of copies.
            // Used is exact (bytes of the blobs files reference), not the servers' last report.
            let copies = Policy::DEFAULT.copies() as u64;
            let available = capacity.saturating_sub(used) / copies;
            Ok(MetaReply::Statfs(Statfs {
                capacity: counters.blob_bytes + available,
                used: counters.blob_bytes,
                available,
                files: counters.files,
                block_size: 4096,
            }))
        }
        MetaOp::Status => Ok(MetaReply::Status(status(kv))),
        MetaOp::ListUsers => {
            let rows = kv.scan(Table::Users, &[], &[0xff], usize::MAX);
            let users = rows
                .iter()
                .filter_map(|(_, v)| codec::decode::<UserRec>(v).ok())
                .map(|u| UserInfo { name: u.name, uid: u.uid, gid: u.gid, groups: u.groups })
                .collect();
            Ok(MetaReply::Users(users))
        }
        MetaOp::GetXattr { handle, name } => {
            let rec = inode_of(kv, handle)?;
            perm::check_xattr(&rec, cred, name, false)?;
            kv.get(Table::Xattrs, &key::u64_name(handle.inode.0, name)).map(MetaReply::XattrValue).ok_or(FsError::NoAttribute)
        }
        MetaOp::ListXattr { handle } => {
            inode_of(kv, handle)?;
            let names = kv
                .scan(Table::Xattrs, &key::u64(handle.inode.0), &key::prefix_end(handle.inode.0), XATTRS_PER_INODE_MAX)
                .into_iter()
                .map(|(k, _)| String::from_utf8_lossy(&k[8..]).into_owned())
                // Others' trusted attributes are not listed to them.
                .filter(|n| cred.uid == 0 || n.starts_with("user."))
                .collect();
            Ok(MetaReply::XattrNames(names))
        }
        MetaOp::FragmentedChunks { limit } => {
            // The compactor's work list names files anywhere in the tree: for the admin only.
            if cred.uid != 0 {
                return Err(FsError::NotPermitted);
            }
            let limit = (*limit).clamp(1, 1024) as usize;
            // Chunks still being written are skipped: look well past them.
            let rows = kv.scan(Table::Fragmented, &[], &[0xff; 17], limit * 64);
            let mut out = Vec::with_capacity(limit);
            for (k, v) in rows {
                // Written lately: later (an empty value is a record of format 1: at once).
                let written: TimeNs = codec::decode(&v).unwrap_or(TimeNs::MIN);
                if now.saturating_sub(written) < crate::COMPACT_QUIET_NS || out.len() == limit {
                    continue;
                }
                let ino = InodeId(key::read_u64(&k, 0));
                let Some(rec) = load::<InodeRec>(kv, Table::Inodes, &key::u64(ino.0)) else { continue };
                let handle = FileHandle { volume: VolumeId(1), inode: ino, generation: Generation(rec.generation) };
                out.push((handle, key::read_u64(&k, 8)));
            }
            Ok(MetaReply::Fragmented(out))
        }
        other => Err(FsError::Invalid(format!("not a read: {other:?}"))),
    }
}

fn stores(kv: &impl KvRead) -> Vec<(StoreId, StoreRec)> {
    kv.scan(Table::Stores, &[], &[0xff; 9], usize::MAX)
        .into_iter()
        .filter_map(|(k, v)| Some((StoreId(key::read_u64(&k, 0)), codec::decode::<StoreRec>(&v).ok()?)))
        .collect()
}

/// Blobs whose last copy is damaged (a damaged copy still listed among the blob's copies).
fn damaged(kv: &impl KvRead) -> u64 {
    let mut blobs: Vec<u64> = kv
        .scan(Table::Damaged, &[], &[0xff; 17], usize::MAX)
        .iter()
        .filter(|(k, _)| {
            let (blob, holder) = (key::read_u64(k, 0), StoreId(key::read_u64(k, 8)));
            load::<BlobInfo>(kv, Table::Blobs, &key::u64(blob)).is_some_and(|i| i.stores.contains(&holder))
        })
        .map(|(k, _)| key::read_u64(k, 0))
        .collect();
    blobs.dedup();
    blobs.len() as u64
}

/// Queued repairs with no good copy on a live server to copy from.
fn stranded(kv: &impl KvRead) -> u64 {
    let good = |blob: u64, s: &StoreId| {
        kv.get(Table::Damaged, &key::u64_u64(blob, s.0)).is_none()
            && load::<StoreRec>(kv, Table::Stores, &key::u64(s.0)).is_some_and(|r| r.alive)
    };
    kv.scan(Table::Repair, &[], &[0xff; 9], usize::MAX)
        .iter()
        .filter(|(k, _)| {
            let blob = key::read_u64(k, 0);
            load::<BlobInfo>(kv, Table::Blobs, k).is_some_and(|i| !i.stores.iter().any(|s| good(blob, s)))
        })
        .count() as u64
}

/// The state machine's part of `shoal status`; the server adds Raft's part.
pub fn status(kv: &impl KvRead) -> ClusterStatus {
    let counters: Counters = load(kv, Table::Meta, crate::apply::COUNTERS_KEY).unwrap_or_default();
    let count = |t: Table| kv.scan(t, &[], &[0xff; 17], usize::MAX).len() as u64;
    ClusterStatus {
        stores: stores(kv)
            .into_iter()
            .map(|(id, r)| {
                let blobs = kv.scan(Table::StoreBlobs, &key::u64(id.0), &key::prefix_end(id.0), usize::MAX).len() as u64;
                let checking = kv.get(Table::Returning, &key::u64(id.0)).is_some();
                StoreStatus { id, addr: r.addr, capacity: r.capacity, used: r.used, last_heartbeat: r.last_heartbeat, alive: r.alive, blobs, checking }
            })
            .collect(),
        files: counters.files,
        blobs: count(Table::Blobs),
        blobs_under_replicated: count(Table::Repair),
        blobs_awaiting_gc: count(Table::GcOrders),
        blobs_damaged: damaged(kv),
        blobs_stranded: stranded(kv),
        sessions: count(Table::Sessions),
        ..Default::default()
    }
}

/// A page of directory `dir` after `cookie` (at most `limit` entries, `cred` holding `access`
/// on it): each name with its cookie, entry and inode record, and whether the listing ends there.
#[allow(clippy::type_complexity)]
fn listing(kv: &impl KvRead, cred: &Credentials, access: u32, dir: &FileHandle, cookie: u64, limit: u32) -> FsResult<(Vec<(String, u64, DirentRec, Option<InodeRec>)>, bool)> {
    let rec = dir_of(kv, dir)?;
    perm::check(&rec, cred, access)?;
    let limit = limit as usize;
    let start = key::u64_u64(dir.inode.0, cookie.saturating_add(1));
    let rows = kv.scan(Table::DirCookies, &start, &key::prefix_end(dir.inode.0), limit + 1);
    let eof = rows.len() <= limit;
    let mut out = Vec::with_capacity(rows.len().min(limit));
    for (k, v) in rows.into_iter().take(limit) {
        let name = String::from_utf8_lossy(&v).into_owned();
        let Some(entry) = load::<DirentRec>(kv, Table::Dirents, &key::u64_name(dir.inode.0, &name)) else { continue };
        let rec = load::<InodeRec>(kv, Table::Inodes, &key::u64(entry.inode.0));
        out.push((name, key::read_u64(&k, 8), entry, rec));
    }
    Ok((out, eof))
}
