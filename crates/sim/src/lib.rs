//! Deterministic simulation of a Shoal cluster in one process.
//!
//! Three metadata nodes (openraft around the real state machine of `shoal-meta-core`), four
//! storage servers (the real blob store of `shoal-blob-store` on a simulated disk) and clients run
//! as turmoil hosts: simulated time, a simulated network, one thread. A seeded schedule crashes
//! and restarts processes (a crash loses every write not synced), cuts hosts off (partitions,
//! including a 2|1 split of the metadata nodes), holds a host's messages and delivers them
//! late (a paused process), breaks links at random and flips bytes in stored blocks while the
//! clients write (small files of even length inline, in the metadata), rename, remove and read
//! files. Checked during the run: at most one leader per
//! term, every read consistent with the history (linearizable), every rename and unlink of an
//! existing name succeeding. Checked after healing: every blob back to full protection, every
//! recorded copy present and identical, every acknowledged write readable with its bytes, the
//! metadata replicas identical.
//!
//! The same seed replays the same run: every random choice (the schedule, the workload, the
//! network's latencies, the election timeouts) derives from it, and the outcome carries a digest
//! of the run's events to compare.

pub mod client;
pub mod meta;
pub mod observe;
pub mod store;
pub mod wire;

use client::{SharedHistory, SimClient};
use meta::SharedMetaDisk;
use observe::Observer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_blob_store::{MemDisk, HEADER_BYTES};
use shoal_meta_core::kv::{KvRead, Table};
use shoal_meta_core::records::StoreRec;
use shoal_types::codec;
use shoal_types::ids::BlobId;
use shoal_types::layout::BlobInfo;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

pub const METAS: u64 = 3;
pub const STORES: u64 = 4;
const TICK: Duration = Duration::from_millis(1);
/// After healing, how long the cluster has to reach full protection.
const HEAL_PATIENCE: Duration = Duration::from_secs(120);
/// Once writes stop, how long the metadata replicas have to become identical.
const CONVERGE_PATIENCE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub clients: u64,
    /// Simulated seconds of workload (faults happen during it).
    pub workload_secs: u64,
    pub faults: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            clients: 2,
            workload_secs: 20,
            faults: true,
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    /// Digest of the run's events and final state: equal for two runs of one seed.
    pub digest: u32,
    pub acked: u64,
    pub reads_checked: u64,
    /// Reads that found data unreadable for a moment (during a fault) and were tried again.
    pub unavailable: u64,
    pub faults: Vec<String>,
    /// Chance per message that its link breaks (what is in flight on it is lost).
    pub link_fail_rate: f64,
    pub sim_secs: f64,
    pub terms: usize,
}

/// A fault in force, healed at `until`.
enum Fault {
    Crash {
        host: String,
    },
    Cut {
        host: String,
    },
    /// Everything to and from the host is held, then delivered late: a paused process (or a
    /// very slow link) as its peers see it.
    Hold {
        host: String,
    },
}

fn all_hosts(clients: u64) -> Vec<String> {
    let mut h: Vec<String> = (1..=METAS).map(meta::host).collect();
    h.extend((1..=STORES).map(store::host));
    h.extend((1..=clients).map(|c| format!("client-{c}")));
    h
}

/// Run one seed. `Err` describes the violated invariant (or the simulation error).
pub fn run(o: &Options) -> Result<Outcome, String> {
    let mut rng = StdRng::seed_from_u64(o.seed);
    let workload = Duration::from_secs(o.workload_secs);
    let mut sim = turmoil::Builder::new()
        .rng_seed(o.seed)
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(workload + HEAL_PATIENCE + Duration::from_secs(120))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(8))
        .repair_rate(0.05)
        // Room for every connection attempt a held host's peers make (turmoil's default of 64
        // overflows, and it panics, when a long hold is released).
        .tcp_capacity(1 << 16)
        .build();
    // Message loss: a message breaks its link with this chance (dropping what is in flight on
    // it); each later message on a broken link mends it with a chance of 1 in 20.
    let loss = if o.faults {
        [0.0, 0.0002, 0.0005, 0.001][rng.gen_range(0..4)]
    } else {
        0.0
    };
    sim.set_fail_rate(loss);
    let observer = Observer::default();
    let meta_disks: Vec<SharedMetaDisk> = (0..METAS).map(|_| SharedMetaDisk::default()).collect();
    for id in 1..=METAS {
        // Distinct election timeouts per node, drawn from the seed.
        let timeout = 250 + 100 * (id - 1) + rng.gen_range(0..100);
        let (disk, obs) = (meta_disks[(id - 1) as usize].clone(), observer.clone());
        sim.host(meta::host(id), move || {
            meta::run(id, METAS, timeout, disk.clone(), obs.clone())
        });
    }
    let store_disks: Vec<MemDisk> = (0..STORES)
        .map(|_| MemDisk::with_total_bytes(store::CAPACITY * 2))
        .collect();
    for id in 1..=STORES {
        let (disk, obs, term) = (
            store_disks[(id - 1) as usize].clone(),
            observer.clone(),
            Arc::new(AtomicU64::new(0)),
        );
        sim.host(store::host(id), move || {
            store::run(id, METAS, disk.clone(), term.clone(), obs.clone())
        });
    }
    let hist = SharedHistory::default();
    for c in 1..=o.clients {
        sim.client(
            format!("client-{c}"),
            client::workload(
                c,
                METAS,
                o.clients,
                o.seed,
                workload,
                hist.clone(),
                observer.clone(),
            ),
        );
    }

    let hosts = all_hosts(o.clients);
    let watch = std::env::var_os("SHOAL_SIM_WATCH").is_some();
    let mut faults_done = Vec::new();
    let mut meta_fault: Option<(Fault, Duration)> = None;
    let mut store_fault: Option<(Fault, Duration)> = None;
    let mut next_fault = Duration::from_secs(3);
    let heal = |sim: &mut turmoil::Sim, f: Fault| match f {
        Fault::Crash { host } => sim.bounce(host),
        Fault::Cut { host } => each_link(&hosts, &host, |a, b| sim.repair(a, b)),
        Fault::Hold { host } => each_link(&hosts, &host, |a, b| sim.release(a, b)),
    };
    loop {
        let finished = sim.step().map_err(|e| format!("simulation error: {e}"))?;
        let now = sim.elapsed();
        let violation = observer.lock().violations.first().cloned();
        if let Some(v) = violation {
            return Err(format!(
                "{v} (at {:.3} s)\n  faults: {}",
                now.as_secs_f64(),
                faults_done.join("; ")
            ));
        }
        // `SHOAL_SIM_WATCH=1`: each metadata node's Raft state every half second, for replays.
        if watch && now.as_millis() % 500 == 0 {
            let seen = observer.lock();
            let v: Vec<String> = seen
                .metas
                .iter()
                .map(|(id, (_, m))| {
                    let m = m.borrow();
                    format!(
                        "{id}:{:?}/t{}/a{:?}/l{:?}",
                        m.state,
                        m.current_term,
                        m.last_applied.map(|l| l.index),
                        m.current_leader
                    )
                })
                .collect();
            let running: Vec<bool> = (1..=METAS)
                .map(|i| sim.is_host_running(meta::host(i)))
                .collect();
            eprintln!("{:?} {} running {running:?}", now, v.join(" "));
        }
        for slot in [&mut meta_fault, &mut store_fault] {
            if slot.as_ref().is_some_and(|(_, until)| now >= *until) {
                let (f, _) = slot.take().expect("checked");
                heal(&mut sim, f);
            }
        }
        if o.faults && now >= next_fault && now + Duration::from_secs(3) < workload {
            next_fault = now + Duration::from_millis(rng.gen_range(800..3000));
            let lasts = Duration::from_millis(rng.gen_range(300..5000));
            let kind = rng.gen_range(0..7);
            let what = match kind {
                4 => match corrupt_one(&observer, &store_disks, &mut rng) {
                    Some(what) => what,
                    None => continue,
                },
                0..=3 | 5 => {
                    // 0 crash, 1 cut off, 5 hold: a metadata node; 2 crash, 3 cut off, 5 hold:
                    // a storage server. At most one fault of each kind of node at a time.
                    let is_meta = match kind {
                        0 | 1 => true,
                        2 | 3 => false,
                        _ => rng.gen_bool(0.5),
                    };
                    let slot = if is_meta {
                        &mut meta_fault
                    } else {
                        &mut store_fault
                    };
                    if slot.is_some() && kind != 5 {
                        continue;
                    }
                    let id = rng.gen_range(1..=if is_meta { METAS } else { STORES });
                    if slot.is_some() {
                        continue;
                    }
                    let host = if is_meta {
                        meta::host(id)
                    } else {
                        store::host(id)
                    };
                    let (fault, what) = match kind {
                        0 | 2 => {
                            sim.crash(host.as_str());
                            if is_meta {
                                observer.lock().metas.remove(&id);
                            } else {
                                store_disks[(id - 1) as usize].crash();
                                observer.lock().stores.remove(&id);
                            }
                            (Fault::Crash { host: host.clone() }, format!("crash {host}"))
                        }
                        1 | 3 => {
                            each_link(&hosts, &host, |a, b| sim.partition(a, b));
                            (Fault::Cut { host: host.clone() }, format!("cut off {host}"))
                        }
                        _ => {
                            each_link(&hosts, &host, |a, b| sim.hold(a, b));
                            (
                                Fault::Hold { host: host.clone() },
                                format!("hold every message of {host}"),
                            )
                        }
                    };
                    *slot = Some((fault, now + lasts));
                    what
                }
                _ => continue,
            };
            observer.event(&what);
            faults_done.push(format!(
                "{:.3}s {what} for {:.1}s",
                now.as_secs_f64(),
                lasts.as_secs_f64()
            ));
        }
        if finished {
            break;
        }
    }
    // Heal: no more link breaks, every broken link mended, every fault ended.
    sim.set_fail_rate(0.0);
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            sim.repair(a.as_str(), b.as_str());
        }
    }
    for f in [meta_fault.take(), store_fault.take()]
        .into_iter()
        .flatten()
    {
        heal(&mut sim, f.0);
    }
    sim.client(
        "checker",
        final_check(o.clients, hist.clone(), observer.clone()),
    );
    loop {
        let finished = sim
            .step()
            .map_err(|e| format!("{e}\n  faults: {}", faults_done.join("; ")))?;
        if let Some(v) = observer.lock().violations.first() {
            return Err(v.clone());
        }
        if finished {
            break;
        }
    }
    let (acked, reads_checked, unavailable) = {
        let h = hist.0.lock().expect("history");
        (h.acked, h.reads_checked, h.unavailable)
    };
    let terms = observer.lock().leaders.len();
    Ok(Outcome {
        digest: observer.digest(),
        acked,
        reads_checked,
        unavailable,
        faults: faults_done,
        link_fail_rate: loss,
        sim_secs: sim.elapsed().as_secs_f64(),
        terms,
    })
}

/// Apply `f` to the link between `host` and every other host.
fn each_link(hosts: &[String], host: &str, mut f: impl FnMut(&str, &str)) {
    for other in hosts {
        if other != host {
            f(host, other.as_str());
        }
    }
}

/// Flip a byte of a blob on a running storage server, only where at least two other running
/// servers hold a good copy (so the blob stays recoverable whatever else happens).
fn corrupt_one(observer: &Observer, disks: &[MemDisk], rng: &mut StdRng) -> Option<String> {
    let seen = observer.lock();
    let ids: Vec<u64> = seen.stores.keys().copied().collect();
    let id = *ids.get(rng.gen_range(0..ids.len().max(1)))?;
    let store = seen.stores.get(&id)?;
    let blobs = store.list();
    let blob = *blobs.get(rng.gen_range(0..blobs.len().max(1)))?;
    let good_elsewhere = seen
        .stores
        .iter()
        .filter(|(other, s)| **other != id && s.contains(blob) && s.verify(blob).is_ok())
        .count();
    if good_elsewhere < 2 {
        return None;
    }
    let len = store.len_of(blob).ok()?;
    let offset = HEADER_BYTES + rng.gen_range(0..len.max(1));
    disks[(id - 1) as usize]
        .corrupt(&store.blob_path(blob), offset)
        .ok()?;
    Some(format!("flip a byte of blob {blob} on store-{id}"))
}

/// Why the cluster is not at full protection yet (`None`: it is).
fn protection_gap(observer: &Observer) -> Option<String> {
    let Some((_, state, _)) = observer.leader() else {
        return Some("no leader".into());
    };
    let s = state.lock().expect("state");
    let kv = &s.kv;
    let stores = kv.scan(Table::Stores, &[], &[0xff; 9], 64);
    let alive = stores
        .iter()
        .filter(|(_, v)| codec::decode::<StoreRec>(v).is_ok_and(|r| r.alive))
        .count();
    if alive < STORES as usize {
        return Some(format!("{alive} of {STORES} storage servers alive"));
    }
    for (t, what) in [
        (Table::Returning, "storage servers being checked"),
        (Table::Repair, "blobs waiting for repair"),
    ] {
        let n = kv.scan(t, &[], &[0xff; 9], 1 << 20).len();
        if n > 0 {
            return Some(format!("{n} {what}"));
        }
    }
    for (k, v) in kv.scan(Table::Blobs, &[], &[0xff; 9], 1 << 20) {
        let info: BlobInfo = codec::decode(&v).ok()?;
        if info.refs > 0 && info.stores.len() < info.policy.copies() {
            return Some(format!(
                "blob {} has {} of {} copies",
                shoal_meta_core::kv::key::read_u64(&k, 0),
                info.stores.len(),
                info.policy.copies()
            ));
        }
    }
    None
}

/// After healing: full protection, every recorded copy present and identical, every
/// acknowledged write readable, the metadata replicas identical.
async fn final_check(clients: u64, hist: SharedHistory, observer: Observer) -> turmoil::Result {
    let deadline = turmoil::elapsed() + HEAL_PATIENCE;
    // Full protection, then a whole scrub pass on every server (a copy corrupted just before
    // the end is found by it, as `shoal scrub --wait` would), then full protection again.
    let mut scrubbed = false;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match protection_gap(&observer) {
            None if scrubbed => break,
            None => {
                tokio::time::sleep(store::SCRUB_EVERY * 2 + Duration::from_secs(1)).await;
                scrubbed = true;
            }
            Some(why) if turmoil::elapsed() > deadline => {
                return Err(format!(
                    "not back to full protection {HEAL_PATIENCE:?} after healing: {why}"
                )
                .into());
            }
            Some(_) => {}
        }
    }
    observer.event("full protection");
    // Every recorded copy is on its server and identical to what the writer put.
    {
        let (_, state, _) = observer.leader().ok_or("no leader")?;
        let blobs = state
            .lock()
            .expect("state")
            .kv
            .scan(Table::Blobs, &[], &[0xff; 9], 1 << 20);
        for (k, v) in blobs {
            let blob = BlobId(shoal_meta_core::kv::key::read_u64(&k, 0));
            let info: BlobInfo = codec::decode(&v)?;
            if info.refs == 0 {
                continue; // Being collected: its copies may already be gone.
            }
            for s in &info.stores {
                let store = observer
                    .lock()
                    .stores
                    .get(&s.0)
                    .cloned()
                    .ok_or(format!("store {} not running", s.0))?;
                match store.get(blob, 0, info.len) {
                    Ok(d) if crc32c::crc32c(&d) == info.crc => {}
                    Ok(_) => {
                        return Err(format!(
                            "the copy of blob {blob} on store-{} differs from what was written",
                            s.0
                        )
                        .into())
                    }
                    Err(e) => {
                        return Err(format!(
                            "the recorded copy of blob {blob} on store-{} is missing: {e}",
                            s.0
                        )
                        .into())
                    }
                }
            }
        }
    }
    // Every acknowledged write is there with its bytes.
    let mut c = SimClient::connect(clients + 1, METAS).await?;
    for (name, want) in hist.final_states() {
        let seen = c.observe(&name, true).await?;
        if seen != want {
            return Err(format!("{name}: acknowledged state {want:?}, found {seen:?}").into());
        }
    }
    observer.event("acknowledged writes all read back");
    // The replicas converge: stop the ticks and heartbeats, let the followers catch up.
    observer.lock().quiet = true;
    let deadline = turmoil::elapsed() + CONVERGE_PATIENCE;
    let first = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let states: Vec<(u64, meta::SmState)> = observer
            .lock()
            .metas
            .iter()
            .map(|(id, (s, _))| (*id, s.lock().expect("state").clone()))
            .collect();
        let differ = states.len() != METAS as usize
            || states[1..].iter().any(|(_, s)| {
                s.last_applied != states[0].1.last_applied || !s.kv.rows().eq(states[0].1.kv.rows())
            });
        if !differ {
            break states[0].1.clone();
        }
        if turmoil::elapsed() > deadline {
            let applied: Vec<String> = states
                .iter()
                .map(|(id, s)| format!("meta-{id} at {:?}", s.last_applied.map(|l| l.index)))
                .collect();
            return Err(format!(
                "the metadata replicas differ {CONVERGE_PATIENCE:?} after the writes stopped: {}",
                applied.join(", ")
            )
            .into());
        }
    };
    let rows: Vec<u8> = first
        .kv
        .rows()
        .flat_map(|(_, k, v)| k.iter().chain(v.iter()).copied().collect::<Vec<u8>>())
        .collect();
    observer.event(&format!("final state {:08x}", crc32c::crc32c(&rows)));
    Ok(())
}
