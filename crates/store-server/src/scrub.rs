//! The scrubber: re-reads every stored blob, block by block, and checks its checksums, at a
//! bounded rate in the background and at full speed when the admin asks (`shoal scrub`).
//! Corrupt copies it finds, and those a read hits, are reported to the metadata service, which
//! orders them deleted and rebuilt from a good copy.

use crate::{blocking_err, StoreService};
use shoal_types::meta_msg::ScrubStatus;
use shoal_types::BlobId;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the background scrubber paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Bytes per second read by a background pass; 0: no background passes.
    pub bytes_per_s: u64,
    /// Time from the end of one background pass to the start of the next.
    pub every: Duration,
}

/// What the scrubber knows and what it has found.
pub struct Scrubber {
    status: Mutex<ScrubStatus>,
    /// Corrupt copies not yet reported to the metadata service.
    found: Mutex<BTreeSet<BlobId>>,
    /// Copies in a report not answered yet.
    reporting: AtomicU64,
    /// Blobs whose last copy is the corrupt one here.
    lost: Mutex<BTreeSet<BlobId>>,
    /// Corrupt copies already reported (until deleted here): not reported again.
    reported: Mutex<BTreeSet<BlobId>>,
    /// The latest scrub request the metadata service told of.
    wanted: AtomicU64,
    wake: tokio::sync::Notify,
    /// Where the last covered request is kept across restarts.
    epoch_file: PathBuf,
}

impl Scrubber {
    pub fn new(data_dir: &std::path::Path) -> Scrubber {
        let epoch_file = data_dir.join("scrub-epoch");
        let done = std::fs::read_to_string(&epoch_file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Scrubber {
            status: Mutex::new(ScrubStatus { epoch_done: done, ..Default::default() }),
            found: Mutex::default(),
            reporting: AtomicU64::new(0),
            lost: Mutex::default(),
            reported: Mutex::default(),
            wanted: AtomicU64::new(done),
            wake: tokio::sync::Notify::new(),
            epoch_file,
        }
    }

    pub fn status(&self) -> ScrubStatus {
        let unreported = self.found.lock().expect("found").len() as u64 + self.reporting.load(Ordering::Acquire);
        ScrubStatus { unreported, ..self.status.lock().expect("scrub status").clone() }
    }

    /// The metadata service's latest scrub request (from a heartbeat): a newer one starts a
    /// full-speed pass.
    pub fn requested(&self, epoch: u64) {
        if self.wanted.fetch_max(epoch, Ordering::AcqRel) < epoch {
            self.wake.notify_one();
        }
    }

    /// A copy here failed its checksum: count it and report it at the next heartbeat.
    pub fn found_corrupt(&self, blob: BlobId) {
        if self.reported.lock().expect("reported").contains(&blob) {
            return;
        }
        if self.found.lock().expect("found").insert(blob) {
            self.status.lock().expect("scrub status").corrupt_found += 1;
        }
    }

    /// The reports to send (taken; end with [`Scrubber::sent`], or [`Scrubber::unsent`] to
    /// give them back after a failure).
    pub fn take_found(&self) -> Vec<BlobId> {
        let mut found = self.found.lock().expect("found");
        self.reporting.store(found.len() as u64, Ordering::Release);
        std::mem::take(&mut *found).into_iter().collect()
    }

    pub fn sent(&self, blobs: &[BlobId]) {
        self.reported.lock().expect("reported").extend(blobs.iter().copied());
        self.reporting.store(0, Ordering::Release);
    }

    /// `blob` was deleted here: a copy put again later is checked afresh.
    pub fn forget(&self, blob: BlobId) {
        self.reported.lock().expect("reported").remove(&blob);
    }

    pub fn unsent(&self, blobs: Vec<BlobId>) {
        self.found.lock().expect("found").extend(blobs);
        self.reporting.store(0, Ordering::Release);
    }

    /// The metadata service kept these copies: they were their blobs' last.
    pub fn unrepairable(&self, blobs: &[BlobId]) {
        let mut lost = self.lost.lock().expect("lost");
        lost.extend(blobs.iter().copied());
        self.status.lock().expect("scrub status").unrepairable = lost.len() as u64;
    }

    fn epoch_done(&self) -> u64 {
        self.status.lock().expect("scrub status").epoch_done
    }

    fn wanted(&self) -> u64 {
        self.wanted.load(Ordering::Acquire)
    }
}

/// Scrub forever: a pass when one is requested, or `pace.every` after the last.
pub async fn run(service: Arc<StoreService>, pace: Pace) {
    let scrub = service.scrub.clone();
    loop {
        let background = pace.bytes_per_s > 0 && !pace.every.is_zero();
        let timer = tokio::time::sleep(pace.every);
        tokio::pin!(timer);
        // Until a request not covered yet, or the background timer (a wake-up left over from a
        // request the last pass already covered starts nothing).
        while scrub.wanted() <= scrub.epoch_done() {
            tokio::select! {
                _ = scrub.wake.notified() => {}
                _ = &mut timer, if background => break,
            }
        }
        let epoch = scrub.wanted();
        pass(&service, &scrub, pace).await;
        let mut st = scrub.status.lock().expect("scrub status");
        st.passes_done += 1;
        st.running = false;
        if epoch > st.epoch_done {
            st.epoch_done = epoch;
            drop(st);
            if let Err(e) = std::fs::write(&scrub.epoch_file, epoch.to_string()) {
                tracing::warn!("could not record the scrub epoch in {}: {e}", scrub.epoch_file.display());
            }
        }
    }
}

/// One pass over every blob stored when it starts. At full speed while a request is not
/// covered yet, else at `pace.bytes_per_s`.
async fn pass(service: &StoreService, scrub: &Scrubber, pace: Pace) {
    let blobs = service.blobs.list_with_bytes();
    {
        let mut st = scrub.status.lock().expect("scrub status");
        st.running = true;
        st.blobs_checked = 0;
        st.bytes_checked = 0;
        st.blobs_total = blobs.len() as u64;
        st.bytes_total = blobs.iter().map(|(_, b)| b).sum();
    }
    let started = tokio::time::Instant::now();
    let mut read = 0u64;
    for (blob, bytes) in blobs {
        let store = service.blobs.clone();
        match tokio::task::spawn_blocking(move || store.verify(blob)).await.map_err(blocking_err) {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_corrupt() => {
                tracing::error!("scrub: blob {blob} is corrupt on this server: {e}");
                scrub.found_corrupt(blob);
            }
            // Deleted since the pass began.
            Ok(Err(_)) if !service.blobs.contains(blob) => {}
            Ok(Err(e)) => tracing::warn!("scrub: could not check blob {blob}: {e}"),
            Err(e) => tracing::warn!("scrub: {e}"),
        }
        read += bytes;
        {
            let mut st = scrub.status.lock().expect("scrub status");
            st.blobs_checked += 1;
            st.bytes_checked += bytes;
        }
        // A request not covered yet (this pass's, or one made meanwhile) goes at full speed.
        let urgent = scrub.wanted() > scrub.epoch_done();
        if !urgent && pace.bytes_per_s > 0 {
            let due = started + Duration::from_secs_f64(read as f64 / pace.bytes_per_s as f64);
            tokio::time::sleep_until(due).await;
        }
    }
}
