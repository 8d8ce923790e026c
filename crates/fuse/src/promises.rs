//! The mount's side of cache promises: what the kernel was allowed to cache and until when,
//! and the callback channel that takes it back.
//!
//! The kernel caches an entry or attributes only as long as the metadata leader promised to call
//! back before they change (the reply's timeout is what is left of the promise; without a
//! promise it is zero). A callback invalidates the kernel's entry, attributes and pages, and is
//! acknowledged only after that. When contact with the leader is lost, or the leader changes,
//! everything the kernel holds under a promise is invalidated before the next poll.
//!
//! A reply racing with a callback must not re-install what the callback took away: replies are
//! sent under a shared lock together with a check of the callback generation, and a callback
//! bumps the generation under the exclusive lock before it invalidates anything.

use fuser::{INodeNo, Notifier};
use shoal_client::Client;
use shoal_types::meta_msg::Invalidate;
use shoal_types::InodeId;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Longest timeout given to the kernel, whatever the promise.
pub const KERNEL_TTL_MAX: Duration = Duration::from_secs(60);
/// Pause after a failed poll of the callback channel.
const POLL_RETRY: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Promises {
    /// Bumped (under the write lock) by every callback and every loss of contact.
    generation: RwLock<u64>,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    inodes: HashMap<u64, Instant>,
    entries: HashMap<(u64, String), Instant>,
    /// Inodes found without `security.capability`, until their promise ends: the kernel asks
    /// for it before every write (to clear file capabilities), and a change to any extended
    /// attribute calls the inode back.
    no_caps: HashMap<u64, Instant>,
}

/// A reply to the kernel prepared under a promise: the timeout to give, valid only while the
/// guard lives.
pub struct Granted<'a> {
    pub ttl: Duration,
    _guard: std::sync::RwLockReadGuard<'a, u64>,
}

impl Promises {
    pub fn generation(&self) -> u64 {
        *self.generation.read().expect("generation lock")
    }

    /// The kernel timeout for an answer obtained at callback generation `since` with a promise
    /// ending at `until`: zero if a callback arrived meanwhile or nothing was promised. Hold the
    /// returned guard until the reply is sent.
    pub fn grant(&self, since: u64, until: Option<Instant>, inode: u64, entry: Option<(u64, &str)>) -> Granted<'_> {
        let guard = self.generation.read().expect("generation lock");
        let now = Instant::now();
        let ttl = match until {
            Some(until) if *guard == since && until > now => {
                let mut held = self.held.lock().expect("held lock");
                held.inodes.insert(inode, until);
                if let Some((parent, name)) = entry {
                    held.entries.insert((parent, name.to_string()), until);
                }
                (until - now).min(KERNEL_TTL_MAX)
            }
            _ => Duration::ZERO,
        };
        Granted { ttl, _guard: guard }
    }

    /// Whether `security.capability` is known absent on `ino` (under a promise).
    pub fn caps_absent(&self, ino: u64) -> bool {
        self.held.lock().expect("held lock").no_caps.get(&ino).is_some_and(|until| *until > Instant::now())
    }

    /// `security.capability` was found absent on `ino` by a request begun at callback
    /// generation `since`: remember it while the inode's promise lasts.
    pub fn note_caps_absent(&self, since: u64, ino: u64) {
        let guard = self.generation.read().expect("generation lock");
        if *guard != since {
            return;
        }
        let mut held = self.held.lock().expect("held lock");
        if let Some(until) = held.inodes.get(&ino).copied().filter(|u| *u > Instant::now()) {
            held.no_caps.insert(ino, until);
        }
    }

    /// This mount changed the extended attributes of `ino` (call after the change): forget what
    /// is known of them, and let no answer already under way teach it again (the writer gets no
    /// callback).
    pub fn forget_caps(&self, ino: u64) {
        *self.generation.write().expect("generation lock") += 1;
        self.held.lock().expect("held lock").no_caps.remove(&ino);
    }

    /// Carry out a callback.
    pub fn invalidate(&self, notifier: &Notifier, items: &[Invalidate]) {
        *self.generation.write().expect("generation lock") += 1;
        for item in items {
            match item {
                Invalidate::Inode(ino) => {
                    {
                        let mut held = self.held.lock().expect("held lock");
                        held.inodes.remove(&ino.0);
                        held.no_caps.remove(&ino.0);
                    }
                    inval_inode(notifier, ino.0);
                }
                Invalidate::Recall(_) => {}
                Invalidate::Entry { parent, name } => {
                    {
                        let mut held = self.held.lock().expect("held lock");
                        held.entries.remove(&(parent.0, name.clone()));
                        held.inodes.remove(&parent.0);
                    }
                    inval_entry(notifier, parent.0, name);
                    inval_inode(notifier, parent.0);
                }
            }
        }
    }

    /// Contact with the leader is lost: take back everything the kernel holds under a promise.
    pub fn drop_all(&self, notifier: &Notifier) {
        *self.generation.write().expect("generation lock") += 1;
        let held = std::mem::take(&mut *self.held.lock().expect("held lock"));
        let now = Instant::now();
        for ((parent, name), until) in held.entries {
            if until > now {
                inval_entry(notifier, parent, &name);
            }
        }
        for (ino, until) in held.inodes {
            if until > now {
                inval_inode(notifier, ino);
            }
        }
    }
}

fn inval_inode(notifier: &Notifier, ino: u64) {
    if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
        tracing::debug!(ino, "kernel inode invalidation: {e}");
    }
}

fn inval_entry(notifier: &Notifier, parent: u64, name: &str) {
    if let Err(e) = notifier.inval_entry(INodeNo(parent), OsStr::new(name)) {
        tracing::debug!(parent, name, "kernel entry invalidation: {e}");
    }
}

/// Poll the callback channel for as long as the mount lives. With `ignore` (fault injection for
/// tests: a mount whose callback channel is cut) callbacks are neither carried out nor
/// acknowledged, so the leader has to wait for their leases to end.
pub fn callback_loop(rt: tokio::runtime::Handle, client: Arc<Client>, promises: Arc<Promises>, notifier: Notifier, ignore: bool, recall: impl Fn(InodeId)) {
    let mut acks = Vec::new();
    let mut term = None;
    loop {
        // A poll tells the leader the term of the promises still held; after a drop, none.
        match rt.block_on(client.watch(std::mem::take(&mut acks), term.unwrap_or(0))) {
            Ok((t, _lease, callbacks)) => {
                if term.is_some_and(|old| old != t) {
                    tracing::info!(term = t, "the metadata leader changed: dropping cached entries and attributes");
                    promises.drop_all(&notifier);
                }
                term = Some(t);
                if ignore {
                    continue;
                }
                for cb in callbacks {
                    // A recalled directory is given back (after what was created in it is
                    // written back) before the callback is acknowledged.
                    for item in &cb.items {
                        if let Invalidate::Recall(dir) = item {
                            recall(*dir);
                        }
                    }
                    promises.invalidate(&notifier, &cb.items);
                    acks.push(cb.id);
                }
            }
            Err(e) => {
                if term.is_some() {
                    tracing::info!("lost the callback channel ({e}): dropping cached entries and attributes");
                }
                term = None;
                promises.drop_all(&notifier);
                std::thread::sleep(POLL_RETRY);
            }
        }
    }
}
