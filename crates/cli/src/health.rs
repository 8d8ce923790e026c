//! `shoal scrub [--wait]` and `shoal repair [--wait]`: the admin's view of the cluster's own
//! checks. A scrub asks every storage server (through the metadata service) for a full pass
//! now; with `--wait` the command follows the passes on the servers, then the repairs of what
//! they found, and ends with a summary.

use crate::connect;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_client::Client;
use shoal_types::meta_msg::{ClusterStatus, MetaOp, MetaReply, ScrubStatus};
use shoal_types::store_msg::{StoreReply, StoreRequest};
use shoal_types::StoreId;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(300);
/// How long the servers' reports of what a finished pass found may take.
const REPORT_WAIT: Duration = Duration::from_secs(30);
/// How long a wait goes on without progress (a server silent, a repair with nowhere to go).
const STALL: Duration = Duration::from_secs(120);

fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template(template).expect("progress template").progress_chars("=> "));
    pb
}

async fn status(c: &Client) -> Result<ClusterStatus> {
    c.status().await.context("cluster status")
}

/// The scrub state of every live storage server (`None` for one that did not answer).
async fn scrub_states(c: &Client, s: &ClusterStatus) -> BTreeMap<StoreId, Option<ScrubStatus>> {
    let mut out = BTreeMap::new();
    for st in s.stores.iter().filter(|st| st.alive) {
        let state = match c.store_call(&st.addr, &StoreRequest::Stat, &[]).await {
            Ok((StoreReply::Stat { scrub, .. }, _)) => Some(scrub),
            _ => None,
        };
        out.insert(st.id, state);
    }
    out
}

pub async fn scrub(dir: &Path, wait: bool) -> Result<()> {
    let c = connect(dir).await?;
    let before = scrub_states(&c, &status(&c).await?).await;
    let epoch = match c.meta(MetaOp::RequestScrub).await.context("request a scrub")? {
        MetaReply::ScrubEpoch(e) => e,
        other => bail!("unexpected reply {other:?}"),
    };
    if !wait {
        println!("scrub {epoch} requested: every storage server starts a full pass at its next heartbeat");
        let _ = c.close().await;
        return Ok(());
    }
    let started = Instant::now();
    let pb = bar(0, "scrubbing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}");
    let mut unreported_since: Option<Instant> = None;
    let (mut last_checked, mut progressed) = (0u64, Instant::now());
    let after = loop {
        let states = scrub_states(&c, &status(&c).await?).await;
        let (mut checked, mut total, mut done) = (0, 0, true);
        let passes_done = states.values().all(|st| st.as_ref().is_some_and(|st| st.epoch_done >= epoch));
        for st in states.values() {
            match st {
                Some(st) if st.epoch_done >= epoch => {
                    checked += st.bytes_total;
                    total += st.bytes_total;
                    done &= st.unreported == 0;
                }
                Some(st) => {
                    checked += if st.running { st.bytes_checked } else { 0 };
                    total += st.bytes_total;
                    done = false;
                }
                None => done = false,
            }
        }
        pb.set_length(total);
        pb.set_position(checked);
        if done {
            break states;
        }
        if checked != last_checked {
            (last_checked, progressed) = (checked, Instant::now());
        } else if progressed.elapsed() > STALL {
            let silent: Vec<String> = states.iter().filter(|(_, st)| st.is_none()).map(|(id, _)| format!("store-{id}")).collect();
            bail!("no scrub progress for {} s (storage servers not answering: {})", STALL.as_secs(), if silent.is_empty() { "none".into() } else { silent.join(", ") });
        }
        // Passes over, but a server cannot get its findings to the metadata service.
        if passes_done {
            let since = *unreported_since.get_or_insert_with(Instant::now);
            if since.elapsed() > REPORT_WAIT {
                bail!("the scrub passes are done, but a storage server has not managed to report the corrupt copies it found (see its log)");
            }
        }
        tokio::time::sleep(POLL).await;
    };
    pb.finish_and_clear();
    let sum = |f: fn(&ScrubStatus) -> u64, m: &BTreeMap<StoreId, Option<ScrubStatus>>| -> u64 { m.values().flatten().map(f).sum() };
    let found = sum(|s| s.corrupt_found, &after).saturating_sub(sum(|s| s.corrupt_found, &before));
    let blobs = sum(|s| s.blobs_total, &after);
    let bytes = sum(|s| s.bytes_total, &after);
    let scrubbed = started.elapsed();
    let (repaired_in, s) = wait_for_repairs(&c, "rebuilding corrupt copies").await?;
    let _ = c.close().await;
    println!(
        "scrubbed {blobs} blob copies ({:.1} MiB) on {} storage servers in {:.1} s: {found} corrupt {} found",
        bytes as f64 / (1 << 20) as f64,
        after.len(),
        scrubbed.as_secs_f64(),
        if found == 1 { "copy" } else { "copies" },
    );
    if found > 0 {
        println!("repairs done {:.1} s later; every blob with a healthy copy is fully protected again", repaired_in.as_secs_f64());
    }
    if s.blobs_damaged > 0 {
        bail!("{} blobs have no healthy copy left: their damaged blocks are lost (see the storage servers' logs)", s.blobs_damaged);
    }
    Ok(())
}

/// Wait until every queued repair that a live server can serve is done.
async fn wait_for_repairs(c: &Client, what: &str) -> Result<(Duration, ClusterStatus)> {
    let started = Instant::now();
    let first = status(c).await?;
    let pb = bar(first.blobs_under_replicated, &format!("{what} [{{bar:30}}] {{pos}}/{{len}} blobs eta {{eta}}"));
    let (mut last_left, mut progressed) = (u64::MAX, Instant::now());
    loop {
        let s = status(c).await?;
        let left = s.blobs_under_replicated.saturating_sub(s.blobs_stranded);
        if left < last_left {
            (last_left, progressed) = (left, Instant::now());
        } else if progressed.elapsed() > STALL {
            pb.finish_and_clear();
            bail!(
                "{left} blobs still wait for repair after {} s without progress: is there a live server without a copy and with room for each?",
                STALL.as_secs()
            );
        }
        pb.set_length(pb.length().unwrap_or(0).max(left));
        pb.set_position(pb.length().unwrap_or(0) - left);
        if left == 0 {
            pb.finish_and_clear();
            return Ok((started.elapsed(), s));
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn repair(dir: &Path, wait: bool) -> Result<()> {
    let c = connect(dir).await?;
    let s = status(&c).await?;
    if !wait {
        println!(
            "{} blobs under-replicated ({} wait for a failed server), {} damaged",
            s.blobs_under_replicated, s.blobs_stranded, s.blobs_damaged
        );
        let _ = c.close().await;
        return Ok(());
    }
    let queued = s.blobs_under_replicated.saturating_sub(s.blobs_stranded);
    let (took, s) = wait_for_repairs(&c, "repairing").await?;
    let _ = c.close().await;
    println!("{queued} blobs re-protected in {:.1} s", took.as_secs_f64());
    if s.blobs_stranded > 0 {
        println!("{} blobs have every copy on a failed server: they are repaired once one comes back", s.blobs_stranded);
    }
    Ok(())
}
