//! Cache promises and callbacks (AFS style), kept in the leader's memory.
//!
//! A session that polls the callback channel ([`MetaOp::WatchCallbacks`]) is a *watcher*. When a
//! watcher looks an inode up, the leader records a promise on it (and on the directory looked
//! in) that lasts one lease. Every mutation that changes a promised inode within the lease
//! sends the holder a callback, and the mutation's reply waits until the holder acknowledged it or
//! its lease ran out, so a client that opens a file after another client's close never reads
//! from a cache the close made stale, even when a callback is lost.
//!
//! Ordering against reads: a promise on what a read names is recorded before the read runs, so a
//! mutation either is seen by the read or finds the promise. What the read only discovers (the
//! child of a lookup) is promised afterwards, unless a mutation touched it since the read began
//! ([`Promises::begin`] and the break counters).
//!
//! Across leader changes: a leader gives promises only to watchers named in a *promise horizon*
//! it recorded in the log, and only while that horizon covers them. A new leader reads the last
//! horizon and, before a change may skip callbacks, waits until each watcher named there has
//! polled it (a mount drops its promises before it polls a new leader) or the horizon passed.
//!
//! Time is an argument everywhere, so this module is tested without a clock.

use shoal_types::meta_msg::{Callback, Invalidate};
use shoal_types::{InodeId, SessionId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Counters of breaks, striped by inode: a read that began at counter `c` may promise an inode
/// only if its stripe did not move past `c`.
const STRIPES: usize = 4096;
/// Promises held per session at most; beyond it, reads are answered without a promise.
pub const PROMISES_PER_SESSION_MAX: usize = 1 << 20;

/// A mutation waits for these: one per holder whose promise it broke, until that holder
/// acknowledges or its promise expires.
pub struct AckWait {
    pub holder: SessionId,
    pub callback: u64,
    pub acked: oneshot::Receiver<()>,
    pub expiry: Instant,
}

pub struct Promises {
    lease: Duration,
    state: Mutex<State>,
}

struct State {
    holders: HashMap<InodeId, HashMap<SessionId, Instant>>,
    watchers: HashMap<SessionId, Watcher>,
    next_callback: u64,
    breaks: u64,
    stripes: Vec<u64>,
    grants_since_sweep: u64,
    /// The horizon this leader recorded: promises end before `until`, only to these watchers.
    recorded: Option<(Instant, HashSet<SessionId>)>,
    /// Promises a previous leader may have given, for the term this node leads.
    inherited: Option<Inherited>,
    /// Sessions closed lately (oldest first, at most `ENDED_MAX`): a poll still in flight when
    /// the session closed must not make it a watcher again.
    ended: std::collections::VecDeque<SessionId>,
    /// Sessions waiting for the recall of a delegated directory, with how many of their
    /// requests wait for each (see [`Promises::recall_waiting`]).
    recalling: HashMap<(SessionId, InodeId), usize>,
}

/// Closed sessions remembered, so a late poll is refused.
const ENDED_MAX: usize = 4096;

struct Inherited {
    term: u64,
    waiting: HashSet<SessionId>,
    until: Instant,
    done: Arc<Notify>,
}

struct Watcher {
    queue: Vec<Callback>,
    unacked: HashMap<u64, oneshot::Sender<()>>,
    wake: Arc<Notify>,
    last_poll: Instant,
    promises: usize,
}

fn stripe(ino: InodeId) -> usize {
    (ino.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize % STRIPES
}

impl Promises {
    pub fn new(lease: Duration) -> Promises {
        Promises {
            lease,
            state: Mutex::new(State {
                holders: HashMap::new(),
                watchers: HashMap::new(),
                next_callback: 1,
                breaks: 0,
                stripes: vec![0; STRIPES],
                grants_since_sweep: 0,
                recorded: None,
                inherited: None,
                ended: std::collections::VecDeque::new(),
                recalling: HashMap::new(),
            }),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("promises lock")
    }

    /// Start a read for `session`: promise `inodes` now (before the read runs). Returns the
    /// counter to pass to [`Promises::grant_after`], or `None` when the session does not watch
    /// (or holds too many promises) and gets no promise.
    pub fn begin(&self, session: SessionId, inodes: &[InodeId], now: Instant) -> Option<u64> {
        let mut st = self.lock();
        let watcher = st.watchers.get(&session)?;
        if now.duration_since(watcher.last_poll) > self.lease || watcher.promises >= PROMISES_PER_SESSION_MAX {
            return None;
        }
        if !st.covers(session, now, self.lease) {
            return None;
        }
        let at = st.breaks;
        for &ino in inodes {
            st.grant(session, ino, now + self.lease);
        }
        st.sweep_now_and_then(now);
        Some(at)
    }

    /// Promise `inodes`, found by a read that began at `since`, unless a mutation touched one of
    /// them since (then none is promised).
    pub fn grant_after(&self, session: SessionId, inodes: &[InodeId], since: u64, now: Instant) -> bool {
        let mut st = self.lock();
        if inodes.iter().any(|ino| st.stripes[stripe(*ino)] > since) || !st.watchers.contains_key(&session) {
            return false;
        }
        for &ino in inodes {
            st.grant(session, ino, now + self.lease);
        }
        true
    }

    /// A mutation by `writer` changed what `items` name: break the promises of every other
    /// holder and return what to wait for.
    pub fn break_promises(&self, writer: SessionId, items: &[Invalidate], now: Instant) -> Vec<AckWait> {
        if items.is_empty() {
            return Vec::new();
        }
        let mut st = self.lock();
        st.breaks += 1;
        let counter = st.breaks;
        let mut per_holder: HashMap<SessionId, (Vec<Invalidate>, Instant)> = HashMap::new();
        // A promise holds for its whole lease: a holder hears of every change until it ends,
        // not only of the first (its other cached entries of that directory stay cached).
        for item in items {
            let ino = item.inode();
            st.stripes[stripe(ino)] = counter;
            let Some(holders) = st.holders.get(&ino) else { continue };
            for (s, exp) in holders.iter().filter(|(s, exp)| **s != writer && **exp > now) {
                let e = per_holder.entry(*s).or_insert_with(|| (Vec::new(), *exp));
                e.0.push(item.clone());
                e.1 = e.1.max(*exp);
            }
        }
        let mut waits = Vec::new();
        for (session, (items, expiry)) in per_holder {
            // A session with a request waiting for the recall of a directory these changes are
            // in is told, but not waited for: its mount may be unable to carry the callback
            // out before that request ends (the kernel holds the directory's lock for it), and
            // the recall waits for these changes, so waiting here would wait for the lease.
            let blocked = items.iter().any(|i| st.recalling.contains_key(&(session, i.inode())));
            let id = st.next_callback;
            st.next_callback += 1;
            let Some(w) = st.watchers.get_mut(&session) else { continue };
            let (tx, rx) = oneshot::channel();
            w.queue.push(Callback { id, items });
            w.unacked.insert(id, tx);
            w.wake.notify_one();
            if !blocked {
                waits.push(AckWait { holder: session, callback: id, acked: rx, expiry });
            }
        }
        waits
    }

    /// `session` starts (`true`) or stops waiting for the recall of `dir`.
    pub fn recall_waiting(&self, session: SessionId, dir: InodeId, waiting: bool) {
        let mut st = self.lock();
        let n = st.recalling.entry((session, dir)).or_default();
        if waiting {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.recalling.remove(&(session, dir));
            }
        }
    }

    /// Ask `holder` to give back its delegation of `dir` (a callback with
    /// [`Invalidate::Recall`]). `None` when it does not poll this leader: then only the end of
    /// its lease, `expiry`, frees the directory.
    pub fn recall(&self, holder: SessionId, dir: InodeId, expiry: Instant) -> Option<AckWait> {
        let mut st = self.lock();
        let id = st.next_callback;
        st.next_callback += 1;
        let w = st.watchers.get_mut(&holder)?;
        let (tx, rx) = oneshot::channel();
        w.queue.push(Callback { id, items: vec![Invalidate::Recall(dir)] });
        w.unacked.insert(id, tx);
        w.wake.notify_one();
        Some(AckWait { holder, callback: id, acked: rx, expiry })
    }

    /// A poll of the callback channel: take the acknowledgements, return what is queued (maybe
    /// nothing) and what to wait on when nothing is. `fresh`: the session holds no promise from
    /// another leader (it dropped them, or never had any).
    pub fn poll(&self, session: SessionId, acks: &[u64], fresh: bool, now: Instant) -> (Vec<Callback>, Arc<Notify>) {
        let mut st = self.lock();
        if st.ended.contains(&session) {
            return (Vec::new(), Arc::new(Notify::new()));
        }
        if fresh {
            if let Some(inh) = &mut st.inherited {
                if inh.waiting.remove(&session) && inh.waiting.is_empty() {
                    inh.done.notify_waiters();
                }
            }
        }
        let w = st.watchers.entry(session).or_insert_with(|| Watcher {
            queue: Vec::new(),
            unacked: HashMap::new(),
            wake: Arc::new(Notify::new()),
            last_poll: now,
            promises: 0,
        });
        w.last_poll = now;
        for id in acks {
            if let Some(tx) = w.unacked.remove(id) {
                let _ = tx.send(());
            }
        }
        (std::mem::take(&mut w.queue), w.wake.clone())
    }

    /// A session closed (its mount unmounted first): it holds no promise any more, so no
    /// change waits for it, and writers waiting on its acknowledgements go ahead now instead of
    /// at the end of its lease.
    pub fn end_session(&self, session: SessionId) {
        let mut st = self.lock();
        // Dropping the unacknowledged senders releases the writers waiting on them.
        st.watchers.remove(&session);
        st.holders.retain(|_, hs| {
            hs.remove(&session);
            !hs.is_empty()
        });
        if let Some(inh) = &mut st.inherited {
            if inh.waiting.remove(&session) && inh.waiting.is_empty() {
                inh.done.notify_waiters();
            }
        }
        if st.ended.len() == ENDED_MAX {
            st.ended.pop_front();
        }
        st.ended.push_back(session);
    }

    /// Whether `session` closed lately (its polls are refused).
    pub fn has_ended(&self, session: SessionId) -> bool {
        self.lock().ended.contains(&session)
    }

    /// Forget every promise and watcher (this node is no longer the leader).
    pub fn clear(&self) {
        let mut st = self.lock();
        st.holders.clear();
        st.watchers.clear();
        st.recorded = None;
        st.inherited = None;
    }

    /// The term whose inherited promises are known, if any.
    pub fn inherited_term(&self) -> Option<u64> {
        self.lock().inherited.as_ref().map(|i| i.term)
    }

    /// Take over the promises of earlier leaders as their last horizon describes them
    /// (`until_in`: how long from `now` until that horizon ends).
    pub fn inherit(&self, term: u64, watchers: Vec<SessionId>, until_in: Duration, now: Instant) {
        let mut st = self.lock();
        if st.inherited.as_ref().is_some_and(|i| i.term == term) {
            return;
        }
        st.inherited = Some(Inherited { term, waiting: watchers.into_iter().collect(), until: now + until_in, done: Arc::new(Notify::new()) });
    }

    /// What a change must wait for before it may skip callbacks to earlier leaders' watchers.
    pub fn inherited_wait(&self, now: Instant) -> Option<(Arc<Notify>, Instant)> {
        let st = self.lock();
        let inh = st.inherited.as_ref()?;
        (!inh.waiting.is_empty() && inh.until > now).then(|| (inh.done.clone(), inh.until))
    }

    /// Whether a new horizon should be recorded: watchers exist that the recorded one does not
    /// name, or it ends within `margin` of the lease. Returns who the next one names.
    pub fn horizon_due(&self, now: Instant, margin: Duration) -> Option<Vec<SessionId>> {
        let st = self.lock();
        if st.watchers.is_empty() {
            return None;
        }
        let due = match &st.recorded {
            None => true,
            Some((until, who)) => *until < now + self.lease + margin || st.watchers.keys().any(|s| !who.contains(s)),
        };
        let mut who: Vec<SessionId> = st.watchers.keys().copied().collect();
        who.sort();
        due.then_some(who)
    }

    /// Whether the recorded horizon lets `session` be promised anything now (see `begin`).
    pub fn covers(&self, session: SessionId, now: Instant) -> bool {
        self.lock().covers(session, now, self.lease)
    }

    /// A horizon was committed to the log.
    pub fn horizon_recorded(&self, until: Instant, watchers: Vec<SessionId>) {
        self.lock().recorded = Some((until, watchers.into_iter().collect()));
    }

    #[cfg(test)]
    fn holders_of(&self, ino: InodeId) -> usize {
        self.lock().holders.get(&ino).map_or(0, HashMap::len)
    }
}

impl State {
    fn covers(&self, session: SessionId, now: Instant, lease: Duration) -> bool {
        self.recorded.as_ref().is_some_and(|(until, who)| *until >= now + lease && who.contains(&session))
    }

    fn grant(&mut self, session: SessionId, ino: InodeId, expiry: Instant) {
        let fresh = self.holders.entry(ino).or_default().insert(session, expiry).is_none();
        if fresh {
            if let Some(w) = self.watchers.get_mut(&session) {
                w.promises += 1;
            }
        }
        self.grants_since_sweep += 1;
    }

    /// Drop expired promises and watchers that stopped polling, every so many grants.
    fn sweep_now_and_then(&mut self, now: Instant) {
        if self.grants_since_sweep < 4096 {
            return;
        }
        self.grants_since_sweep = 0;
        let mut lost: HashMap<SessionId, usize> = HashMap::new();
        self.holders.retain(|_, hs| {
            hs.retain(|s, exp| {
                let keep = *exp > now;
                if !keep {
                    *lost.entry(*s).or_default() += 1;
                }
                keep
            });
            !hs.is_empty()
        });
        for (s, n) in lost {
            if let Some(w) = self.watchers.get_mut(&s) {
                w.promises = w.promises.saturating_sub(n);
            }
        }
    }
}

/// Watchers silent for this many leases are forgotten.
pub fn watcher_expired(last_poll: Instant, lease: Duration, now: Instant) -> bool {
    now.duration_since(last_poll) > lease * 4
}

impl Promises {
    /// Forget watchers that stopped polling (their promises stay until they expire).
    pub fn forget_silent(&self, now: Instant) {
        let lease = self.lease;
        self.lock().watchers.retain(|_, w| !watcher_expired(w.last_poll, lease, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SessionId = SessionId(1);
    const B: SessionId = SessionId(2);

    fn p() -> Promises {
        Promises::new(Duration::from_secs(5))
    }

    /// Record a horizon naming A and B, as the leader does before it promises anything.
    fn covered(p: &Promises, now: Instant) {
        p.horizon_recorded(now + Duration::from_secs(6), vec![A, B]);
    }

    #[tokio::test]
    async fn a_non_watcher_gets_no_promise() {
        let p = p();
        let now = Instant::now();
        assert_eq!(p.begin(A, &[InodeId(5)], now), None);
        assert!(p.break_promises(B, &[Invalidate::Inode(InodeId(5))], now).is_empty());
    }

    #[tokio::test]
    async fn a_break_queues_a_callback_and_the_ack_releases_the_writer() {
        let p = p();
        let now = Instant::now();
        covered(&p, now);
        p.poll(A, &[], true, now);
        assert!(p.begin(A, &[InodeId(5)], now).is_some());
        let waits = p.break_promises(B, &[Invalidate::Inode(InodeId(5))], now);
        assert_eq!(waits.len(), 1);
        assert_eq!(p.holders_of(InodeId(5)), 1, "a promise lasts its lease: later changes are called back too");
        let (cbs, _) = p.poll(A, &[], true, now);
        assert_eq!(cbs.len(), 1);
        assert_eq!(cbs[0].items, vec![Invalidate::Inode(InodeId(5))]);
        let mut wait = waits.into_iter().next().unwrap();
        assert_eq!((wait.holder, wait.callback, wait.expiry), (A, cbs[0].id, now + Duration::from_secs(5)));
        assert!(wait.acked.try_recv().is_err(), "not acknowledged yet");
        p.poll(A, &[cbs[0].id], true, now);
        assert!(wait.acked.try_recv().is_ok());
    }

    #[tokio::test]
    async fn a_closed_session_holds_no_writer() {
        let p = p();
        let now = Instant::now();
        covered(&p, now);
        p.poll(A, &[], true, now);
        p.begin(A, &[InodeId(5), InodeId(6)], now);
        let mut waiting = p.break_promises(B, &[Invalidate::Inode(InodeId(5))], now).pop().unwrap().acked;
        p.end_session(A);
        // The writer already waiting goes ahead (not at the end of A's lease) ...
        assert!(matches!(waiting.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        // ... later changes find nothing to call back ...
        assert!(p.break_promises(B, &[Invalidate::Inode(InodeId(6))], now).is_empty());
        assert_eq!(p.holders_of(InodeId(6)), 0);
        // ... and A gets no promise again, even from a poll that was under way.
        assert!(p.has_ended(A) && !p.has_ended(B));
        p.poll(A, &[], true, now);
        assert_eq!(p.begin(A, &[InodeId(5)], now), None);
    }

    #[tokio::test]
    async fn the_writer_does_not_call_itself_back_and_expired_promises_need_no_wait() {
        let p = p();
        let now = Instant::now();
        covered(&p, now);
        p.poll(A, &[], true, now);
        p.poll(B, &[], true, now);
        p.begin(A, &[InodeId(5)], now);
        p.begin(B, &[InodeId(7)], now);
        assert!(p.break_promises(A, &[Invalidate::Inode(InodeId(5))], now).is_empty());
        let later = now + Duration::from_secs(6);
        assert!(p.break_promises(A, &[Invalidate::Inode(InodeId(7))], later).is_empty());
    }

    #[tokio::test]
    async fn entries_reach_the_holders_of_the_directory_in_one_callback() {
        let p = p();
        let now = Instant::now();
        covered(&p, now);
        p.poll(A, &[], true, now);
        p.begin(A, &[InodeId(1), InodeId(9)], now);
        let items = vec![
            Invalidate::Entry { parent: InodeId(1), name: "x".into() },
            Invalidate::Entry { parent: InodeId(9), name: "y".into() },
            // A rename within one directory names two of its entries: both must arrive.
            Invalidate::Entry { parent: InodeId(1), name: "z".into() },
        ];
        assert_eq!(p.break_promises(B, &items, now).len(), 1);
        let (cbs, _) = p.poll(A, &[], true, now);
        assert_eq!(cbs.len(), 1);
        assert_eq!(cbs[0].items, items);
    }

    #[tokio::test]
    async fn a_child_touched_during_the_read_is_not_promised() {
        let p = p();
        let now = Instant::now();
        covered(&p, now);
        p.poll(A, &[], true, now);
        let at = p.begin(A, &[InodeId(1)], now).unwrap();
        p.break_promises(B, &[Invalidate::Inode(InodeId(42))], now);
        assert!(!p.grant_after(A, &[InodeId(42)], at, now));
        let at = p.begin(A, &[InodeId(1)], now).unwrap();
        assert!(p.grant_after(A, &[InodeId(42)], at, now));
        assert_eq!(p.holders_of(InodeId(42)), 1);
    }

    #[tokio::test]
    async fn no_promise_without_a_horizon_naming_the_watcher() {
        let p = p();
        let now = Instant::now();
        p.poll(A, &[], true, now);
        assert_eq!(p.begin(A, &[InodeId(1)], now), None, "no horizon recorded yet");
        assert_eq!(p.horizon_due(now, Duration::from_millis(500)), Some(vec![A]));
        p.horizon_recorded(now + Duration::from_secs(6), vec![B]);
        assert_eq!(p.begin(A, &[InodeId(1)], now), None, "the horizon does not name A");
        assert!(!p.covers(A, now) && p.covers(B, now));
        p.horizon_recorded(now + Duration::from_secs(6), vec![A]);
        assert!(p.covers(A, now) && !p.covers(A, now + Duration::from_secs(2)), "covered while a whole lease fits before its end");
        assert!(p.begin(A, &[InodeId(1)], now).is_some());
        assert_eq!(p.horizon_due(now, Duration::from_millis(500)), None);
        assert!(p.horizon_due(now + Duration::from_millis(600), Duration::from_millis(500)).is_some(), "renewed before it runs out");
    }

    #[tokio::test]
    async fn a_recall_reaches_the_holder_and_its_ack_frees_the_waiter() {
        let p = p();
        let now = Instant::now();
        let expiry = now + Duration::from_secs(5);
        assert!(p.recall(A, InodeId(9), expiry).is_none(), "A does not poll: only the lease's end frees the directory");
        p.poll(A, &[], true, now);
        let mut wait = p.recall(A, InodeId(9), expiry).expect("queued");
        assert_eq!(wait.expiry, expiry);
        let (cbs, _) = p.poll(A, &[], true, now);
        assert_eq!(cbs.len(), 1);
        assert_eq!(cbs[0].items, vec![Invalidate::Recall(InodeId(9))]);
        assert!(wait.acked.try_recv().is_err());
        p.poll(A, &[cbs[0].id], true, now);
        assert!(wait.acked.try_recv().is_ok());
    }

    #[tokio::test]
    async fn a_new_leader_waits_for_the_old_watchers_to_come_back() {
        let p = p();
        let now = Instant::now();
        p.inherit(7, vec![A, B], Duration::from_secs(3), now);
        let (done, until) = p.inherited_wait(now).expect("must wait");
        assert_eq!(until, now + Duration::from_secs(3));
        p.poll(A, &[], false, now);
        assert!(p.inherited_wait(now).is_some(), "a poll from a session still holding old promises proves nothing");
        p.poll(A, &[], true, now);
        assert!(p.inherited_wait(now).is_some(), "B has not come back");
        let waiter = tokio::spawn(async move { done.notified().await });
        tokio::task::yield_now().await;
        p.poll(B, &[], true, now);
        assert!(p.inherited_wait(now).is_none());
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("woken").unwrap();
        p.inherit(8, vec![A], Duration::from_secs(3), now);
        assert!(p.inherited_wait(now + Duration::from_secs(4)).is_none(), "the horizon passed");
    }
}
