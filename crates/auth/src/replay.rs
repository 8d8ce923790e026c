//! The replay cache: every (ticket, time) pair seen within the allowed clock skew.

use crate::AuthError;
use std::collections::{BTreeSet, HashSet};

/// Remembers the authenticators of the last `skew` (and refuses older ones), so each is
/// accepted once. Empty after a restart, so it also refuses anything dated before `start`.
pub struct ReplayCache {
    start_us: u64,
    skew_us: u64,
    seen: HashSet<(u64, u64)>,
    by_time: BTreeSet<(u64, u64)>,
    cap: usize,
    /// Entries at or below this time were forgotten to stay within `cap`: refused.
    floor_us: u64,
}

/// Authenticators remembered at most (about 48 bytes each).
pub const REPLAY_CACHE_MAX: usize = 1 << 20;

impl ReplayCache {
    pub fn new(start_ns: i64, skew_ns: i64, cap: usize) -> ReplayCache {
        ReplayCache {
            start_us: (start_ns / 1000) as u64,
            skew_us: (skew_ns / 1000) as u64,
            seen: HashSet::new(),
            by_time: BTreeSet::new(),
            cap: cap.max(1),
            floor_us: 0,
        }
    }

    /// Accept `(tag, time_us)` once: `tag` names the ticket (or the user, for a login proof).
    pub fn check(&mut self, tag: u64, time_us: u64, now_ns: i64) -> Result<(), AuthError> {
        let now_us = (now_ns / 1000) as u64;
        if time_us < self.start_us && time_us.saturating_add(self.skew_us) >= now_us {
            return Err(AuthError::BeforeStart);
        }
        if time_us.saturating_add(self.skew_us) < now_us || time_us > now_us.saturating_add(self.skew_us) {
            return Err(AuthError::Skew);
        }
        if time_us <= self.floor_us {
            return Err(AuthError::TooOld);
        }
        while let Some(&(t, g)) = self.by_time.first() {
            if t + self.skew_us >= now_us {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&(g, t));
        }
        if !self.seen.insert((tag, time_us)) {
            return Err(AuthError::Replayed);
        }
        self.by_time.insert((time_us, tag));
        if self.by_time.len() > self.cap {
            if let Some((t, g)) = self.by_time.pop_first() {
                self.seen.remove(&(g, t));
                self.floor_us = self.floor_us.max(t);
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}
