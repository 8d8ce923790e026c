//! Directory listings kept by the mount (AFS style), to answer lookups without a round trip.
//!
//! The kernel asks for each name it has not cached, one round trip each: a `stat` of every file
//! of a directory the mount has not seen costs as many round trips as there are files, and so
//! does each name a compiler or `git` probes and does not find. After [`LOOKUPS_BEFORE_LISTING`]
//! lookups in one directory went to the metadata service, the mount fetches the directory's
//! whole listing with each entry's attributes ([`MetaOp::ReaddirPlus`], in the background) and
//! answers the lookups that follow from it, a name it does not hold with `ENOENT`.
//!
//! A listing is used only while all of this holds, else it is dropped:
//! - the leader promised it (the directory and every entry listed, as it promises a lookup's
//!   answer) and the promise has not ended: another client's change to the directory or to an
//!   entry's attributes calls this mount back first;
//! - no callback arrived since it was fetched (any callback: [`Promises::generation`]) and the
//!   mount did not lose contact with the leader (that bumps the generation too);
//! - this mount sent no request that may change names or attributes since it was fetched
//!   ([`Client::changes`]; the writer of a change gets no callback for it);
//! - the lookup acts as the user who fetched it (the service checks permissions per user).
//!
//! A listing fetched across such an event is not kept. Bounded: a directory of more than
//! [`LISTING_ENTRIES_MAX`] names is not kept; over [`LISTINGS_ENTRIES_MAX`] names in all, the
//! listings held are dropped.

use crate::promises::Promises;
use shoal_client::Client;
use shoal_types::meta_msg::{MetaOp, MetaReply, READDIR_PLUS_LIMIT_MAX};
use shoal_types::{Attr, Credentials, FileHandle};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lookups in a directory sent to the service (with nothing changed meanwhile) before its
/// listing is fetched.
pub const LOOKUPS_BEFORE_LISTING: u32 = 4;
/// Largest directory whose listing is kept, in names.
pub const LISTING_ENTRIES_MAX: usize = 16_384;
/// Names kept in all listings together (a listing counts one more than its names).
pub const LISTINGS_ENTRIES_MAX: usize = 131_072;
/// A directory whose listing could not be fetched or kept (too large, not readable) is not
/// asked for again for this long ...
const BACK_OFF: Duration = Duration::from_secs(30);
/// ... and this long when a page came without a promise.
const UNPROMISED_BACK_OFF: Duration = Duration::from_millis(200);
/// Directories whose misses are counted at most (beyond it the counts start again).
const COUNTED_MAX: usize = 4096;

/// What a listing's validity hangs on: the callback generation and this client's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub callbacks: u64,
    pub changes: u64,
}

impl Stamp {
    pub fn now(promises: &Promises, client: &Client) -> Stamp {
        Stamp { callbacks: promises.generation(), changes: client.changes() }
    }
}

struct Listing {
    stamp: Stamp,
    until: Instant,
    cred: Credentials,
    names: HashMap<String, Attr>,
}

#[derive(Default)]
struct State {
    dirs: HashMap<u64, Listing>,
    entries: usize,
    /// Lookups sent to the service per directory, counted under one stamp.
    misses: HashMap<u64, (Stamp, u32)>,
    fetching: HashSet<u64>,
    backing_off: HashMap<u64, Instant>,
}

#[derive(Default)]
pub struct Listings {
    state: Mutex<State>,
}

/// A lookup answered from a listing: the attributes (`None`: no such name) and the end of the
/// promise that covers them.
pub struct Hit {
    pub attr: Option<Attr>,
    pub until: Instant,
}

impl Listings {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("listings lock")
    }

    /// Look `name` up in the listing of `dir`, if one is held and valid at `stamp` for `cred`.
    pub fn lookup(&self, dir: u64, name: &str, cred: &Credentials, stamp: Stamp, now: Instant) -> Option<Hit> {
        let mut st = self.lock();
        let l = st.dirs.get(&dir)?;
        if l.stamp != stamp || l.until <= now {
            let l = st.dirs.remove(&dir).expect("listing");
            st.entries -= weight(&l);
            return None;
        }
        if l.cred != *cred {
            return None;
        }
        Some(Hit { attr: l.names.get(name).cloned(), until: l.until })
    }

    /// A lookup in `dir` went to the service at `stamp`: whether to fetch the listing now (the
    /// caller then calls [`Listings::fetch`]).
    pub fn missed(&self, dir: u64, stamp: Stamp, now: Instant) -> bool {
        let mut st = self.lock();
        if st.fetching.contains(&dir) || st.backing_off.get(&dir).is_some_and(|t| *t > now) {
            return false;
        }
        if st.misses.len() >= COUNTED_MAX && !st.misses.contains_key(&dir) {
            st.misses.clear();
        }
        if st.backing_off.len() >= COUNTED_MAX {
            st.backing_off.retain(|_, t| *t > now);
        }
        let count = st.misses.entry(dir).or_insert((stamp, 0));
        if count.0 != stamp {
            *count = (stamp, 0);
        }
        count.1 += 1;
        if count.1 < LOOKUPS_BEFORE_LISTING {
            return false;
        }
        st.misses.remove(&dir);
        st.fetching.insert(dir);
        true
    }

    /// Fetch the listing of `dir` as `cred` and keep it if nothing invalidated it meanwhile.
    pub async fn fetch(&self, client: &Client, promises: &Promises, dir: FileHandle, cred: Credentials) {
        let stamp = Stamp::now(promises, client);
        let fetched = fetch_all(client, dir, &cred).await;
        let mut st = self.lock();
        st.fetching.remove(&dir.inode.0);
        let (names, until) = match fetched {
            Ok(Some(f)) => f,
            Ok(None) => {
                // No promise yet (a mount's first half second) or a change raced with a page.
                st.backing_off.insert(dir.inode.0, Instant::now() + UNPROMISED_BACK_OFF);
                return;
            }
            Err(why) => {
                tracing::debug!(dir = dir.inode.0, "directory listing not kept: {why}");
                st.backing_off.insert(dir.inode.0, Instant::now() + BACK_OFF);
                return;
            }
        };
        let now = Instant::now();
        if Stamp::now(promises, client) != stamp || until <= now {
            return;
        }
        // Listings of an older stamp or promise are of no use any more.
        st.dirs.retain(|_, l| l.stamp == stamp && l.until > now);
        st.entries = st.dirs.values().map(weight).sum();
        if st.entries + names.len() + 1 > LISTINGS_ENTRIES_MAX {
            st.dirs.clear();
            st.entries = 0;
        }
        tracing::info!(dir = dir.inode.0, names = names.len(), "kept the listing of a directory");
        let listing = Listing { stamp, until, cred, names };
        st.entries += weight(&listing);
        if let Some(old) = st.dirs.insert(dir.inode.0, listing) {
            st.entries -= weight(&old);
        }
    }

    /// Names held in all listings (for tests).
    pub fn held(&self) -> usize {
        self.lock().entries
    }
}

/// What a listing counts toward [`LISTINGS_ENTRIES_MAX`].
fn weight(l: &Listing) -> usize {
    l.names.len() + 1
}

/// Every page of the listing of `dir`, with the end of the promise covering them all. `Ok(None)`:
/// a page came without a promise (a change raced with it, or this session is not promised
/// anything).
async fn fetch_all(client: &Client, dir: FileHandle, cred: &Credentials) -> Result<Option<(HashMap<String, Attr>, Instant)>, String> {
    let mut names = HashMap::new();
    let mut until: Option<Instant> = None;
    let mut cookie = 0;
    loop {
        let op = MetaOp::ReaddirPlus { dir, cookie, limit: READDIR_PLUS_LIMIT_MAX };
        let (reply, promised) = client.meta_promised(cred, op).await;
        let (entries, eof) = match reply {
            Ok(MetaReply::DirPlus { entries, eof }) => (entries, eof),
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let Some(promised) = promised else { return Ok(None) };
        until = Some(until.map_or(promised, |u| u.min(promised)));
        for e in entries {
            cookie = e.cookie;
            names.insert(e.name, e.attr);
        }
        if names.len() > LISTING_ENTRIES_MAX {
            return Err(format!("more than {LISTING_ENTRIES_MAX} names"));
        }
        if eof {
            return Ok(Some((names, until.expect("a page was read"))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::{FileKind, Generation, InodeId, VersionNo, VolumeId};

    fn stamp(callbacks: u64, changes: u64) -> Stamp {
        Stamp { callbacks, changes }
    }

    #[test]
    fn a_listing_is_fetched_after_enough_misses_under_one_stamp() {
        let l = Listings::default();
        let now = Instant::now();
        for _ in 1..LOOKUPS_BEFORE_LISTING {
            assert!(!l.missed(7, stamp(1, 1), now));
        }
        // A change in between starts the count again.
        assert!(!l.missed(7, stamp(1, 2), now));
        for _ in 2..LOOKUPS_BEFORE_LISTING {
            assert!(!l.missed(7, stamp(1, 2), now));
        }
        assert!(l.missed(7, stamp(1, 2), now));
        // Once: the fetch is under way.
        for _ in 0..LOOKUPS_BEFORE_LISTING {
            assert!(!l.missed(7, stamp(1, 2), now));
        }
    }

    #[test]
    fn a_listing_answers_only_at_its_stamp_for_its_user_within_its_promise() {
        let l = Listings::default();
        let now = Instant::now();
        let cred = Credentials { uid: 1000, gid: 1000, groups: Vec::new() };
        let other = Credentials { uid: 1001, gid: 1000, groups: Vec::new() };
        let mut names = HashMap::new();
        let attr = Attr {
            handle: FileHandle { volume: VolumeId(1), inode: InodeId(42), generation: Generation(1) },
            kind: FileKind::File,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            size: 5,
            nlink: 1,
            rdev: 0,
            atime: 0,
            mtime: 0,
            ctime: 0,
            crtime: 0,
            version: VersionNo(1),
        };
        names.insert("a".to_string(), attr.clone());
        {
            let mut st = l.lock();
            st.entries = 2;
            st.dirs.insert(7, Listing { stamp: stamp(3, 4), until: now + Duration::from_secs(1), cred: cred.clone(), names });
        }
        let hit = l.lookup(7, "a", &cred, stamp(3, 4), now).expect("held");
        assert_eq!(hit.attr, Some(attr));
        assert!(l.lookup(7, "b", &cred, stamp(3, 4), now).expect("held").attr.is_none());
        assert!(l.lookup(7, "a", &other, stamp(3, 4), now).is_none());
        assert!(l.lookup(8, "a", &cred, stamp(3, 4), now).is_none());
        // Expired: dropped.
        assert!(l.lookup(7, "a", &cred, stamp(3, 4), now + Duration::from_secs(2)).is_none());
        assert_eq!(l.held(), 0);
        assert!(l.lookup(7, "a", &cred, stamp(3, 4), now).is_none());
    }

    #[test]
    fn a_listing_is_dropped_when_its_stamp_moves() {
        let l = Listings::default();
        let now = Instant::now();
        let cred = Credentials { uid: 0, gid: 0, groups: Vec::new() };
        {
            let mut st = l.lock();
            st.entries = 1;
            st.dirs.insert(7, Listing { stamp: stamp(3, 4), until: now + Duration::from_secs(1), cred: cred.clone(), names: HashMap::new() });
        }
        assert!(l.lookup(7, "a", &cred, stamp(3, 5), now).is_none());
        assert!(l.lookup(7, "a", &cred, stamp(3, 4), now).is_none());
        assert_eq!(l.held(), 0);
    }
}
