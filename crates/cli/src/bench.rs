//! `shoal bench`: figures of a running cluster, side by side with a bare rustls stream on this
//! machine, printed as a table with ratios. A benchmark, not a test: nothing here asserts.

use crate::connect;
use anyhow::Result;
use shoal_types::meta_msg::MetaOp;
use shoal_types::FileHandle;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn run(dir: &Path, size_mib: u64, creates: u64, rounds: usize, files: u64) -> Result<()> {
    let client = connect(dir).await?;
    let bytes = size_mib << 20;
    let mut rows: Vec<(String, f64, String)> = Vec::new();

    // Bandwidth: each figure is the median of `rounds`, the rounds interleaved so that a busy
    // moment of this shared machine hits every figure alike.
    let data: Arc<Vec<u8>> = Arc::new((0..bytes).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect());
    let single = shoal_types::Policy::Replicas { copies: 1, write_quorum: 1 };
    let (mut tls1, mut tls3, mut put1, mut put3, mut get) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut disk, mut store_alone) = (vec![], vec![]);
    for round in 0..rounds.max(1) {
        disk.push(disk_write(dir, &data).await?);
        store_alone.push(blob_store_put(dir, &data).await?);
        tls1.push(bare_tls(dir, bytes, 1).await?);
        tls3.push(bare_tls(dir, bytes, 3).await?);
        for (copies, out) in [(1, &mut put1), (3, &mut put3)] {
            let name = format!("bench-{}-{round}-{copies}", std::process::id());
            let f = client.create(FileHandle::ROOT, &name, 0o644, true).await?;
            if copies == 1 {
                client.set_policy(f.handle, single).await?;
            }
            let t = Instant::now();
            client.write_stream(f.handle, &data[..], &|_| {}).await?;
            out.push(mbps(bytes, t.elapsed()));
            if copies == 3 {
                let t = Instant::now();
                let n = client.read_stream(f.handle, tokio::io::sink(), &|_| {}).await?;
                get.push(mbps(n, t.elapsed()));
            }
            client.unlink(FileHandle::ROOT, &name).await?;
        }
    }
    let (tls1, tls3, put1, put3, get) = (median(tls1), median(tls3), median(put1), median(put3), median(get));
    let (disk, store_alone) = (median(disk), median(store_alone));
    rows.push(("local disk, 16 MiB files, direct I/O + fsync, MB/s".into(), disk, "the bound of every durable write".into()));
    rows.push((
        "blob store alone, 16 MiB puts with fsync, MB/s".into(),
        store_alone,
        format!("{:.2}x of the local disk row: CRC table, header, data, fsync, rename, directory fsync", store_alone / disk),
    ));
    rows.push(("bare rustls stream, MB/s".into(), tls1, "1 stream".into()));
    rows.push(("bare rustls, 3 streams together, MB/s".into(), tls3, format!("{:.0} MB/s per stream", tls3 / 3.0)));
    rows.push(("put, 1 copy, MB/s".into(), put1, format!("{:.2}x of 1 bare stream, {:.2}x of the disk", put1 / tls1, put1 / disk)));
    rows.push((
        "put, 3 copies, MB/s".into(),
        put3,
        format!("{:.2}x of a stream among 3, {:.2}x of a third of the disk", put3 / (tls3 / 3.0), put3 / (disk / 3.0)),
    ));
    rows.push(("get, MB/s".into(), get, format!("{:.2}x of 1 bare stream (just written: from the servers' memory)", get / tls1)));

    // Metadata: creates/s with 16 clients (each its own session), every create committed on a
    // majority; then single-client create latency.
    let d = client.mkdir(FileHandle::ROOT, &format!("bench-meta-{}", std::process::id()), 0o755).await?;
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(connect(dir).await?);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (w, c) in clients.iter().enumerate() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w as u64..creates).step_by(16) {
                c.create(d.handle, &format!("f{i}"), 0o644, true).await?;
            }
            Ok::<_, shoal_types::FsError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = creates as f64 / t.elapsed().as_secs_f64();
    rows.push(("creates/s, 16 clients".into(), rate, format!("{creates} creates")));
    let mut lat = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        client.create(d.handle, &format!("lat{i}"), 0o644, true).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    rows.push(("create latency p50, ms".into(), lat[lat.len() / 2].as_secs_f64() * 1000.0, "1 client".into()));
    rows.push(("create latency p99, ms".into(), lat[lat.len() * 99 / 100].as_secs_f64() * 1000.0, "1 client".into()));
    // What a create on the mount sends: the create, its open and the intent for a first blob.
    let mut lat = Vec::new();
    for i in 0..500 {
        let op = MetaOp::CreateOpenReserve { parent: d.handle, name: format!("cor{i}"), mode: 0o644, exclusive: true, count: 1, bytes: 4 << 20 };
        let t = Instant::now();
        client.meta(op).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    rows.push(("create+open+intent latency p50, ms".into(), lat[lat.len() / 2].as_secs_f64() * 1000.0, "1 client (a create on the mount)".into()));
    // A read (linearizable: within the leader's read lease, or after a leadership check).
    let mut lat = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        client.lookup(d.handle, &format!("lat{i}")).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    rows.push(("lookup latency p50, ms".into(), lat[lat.len() / 2].as_secs_f64() * 1000.0, "1 client".into()));
    for c in &clients {
        let _ = c.close().await;
    }
    let _ = client.close().await;

    if files > 0 {
        let (rate, rss) = many_files(dir, files).await?;
        rows.push((format!("creates/s filling {files} files"), rate, "16 clients".into()));
        let cache: u64 = {
            let cfg: shoal_types::config::MetaConfig = crate::cluster::read_toml(&dir.join("meta-1").join("meta.toml"))?;
            cfg.cache_size_bytes
        };
        for (name, kib) in rss {
            rows.push((
                format!("{name} resident memory, MiB"),
                kib as f64 / 1024.0,
                format!("limit: cache {} MiB + 64 MiB", cache >> 20),
            ));
        }
    }

    let mut t = comfy_table::Table::new();
    t.set_header(vec!["figure", "value", "note"]);
    for (k, v, note) in rows {
        t.add_row(vec![k, if v < 10.0 { format!("{v:.2}") } else { format!("{v:.1}") }, note]);
    }
    println!("{t}");
    Ok(())
}

/// Write `data` into 16 MiB files beside the cluster's data, each synced, the way a storage
/// server writes (direct I/O where the filesystem has it, then fsync): the disk's bound for
/// durable writes.
async fn disk_write(dir: &Path, data: &Arc<Vec<u8>>) -> Result<f64> {
    use shoal_blob_store::Disk;
    let (dir, data) = (dir.join("bench-disk"), data.clone());
    tokio::task::spawn_blocking(move || -> Result<f64> {
        std::fs::create_dir_all(&dir)?;
        let t = Instant::now();
        for (i, piece) in data.chunks(16 << 20).enumerate() {
            shoal_blob_store::RealDisk.write_synced(&dir.join(format!("f{i}")), &[piece])?;
        }
        let rate = mbps(data.len() as u64, t.elapsed());
        std::fs::remove_dir_all(&dir)?;
        Ok(rate)
    })
    .await?
}

/// The storage server's durable put without the network: `BlobStore::put` of 16 MiB blobs
/// (the client's blob size) on the local disk, in a scratch store under `dir`.
async fn blob_store_put(dir: &Path, data: &Arc<Vec<u8>>) -> Result<f64> {
    let (dir, data) = (dir.join("bench-blob-store"), data.clone());
    tokio::task::spawn_blocking(move || -> Result<f64> {
        let store = shoal_blob_store::BlobStore::open(shoal_blob_store::RealDisk, dir.clone(), 0)?;
        let t = Instant::now();
        for (i, piece) in data.chunks(shoal_client::data::BLOB_BYTES as usize).enumerate() {
            store.put(shoal_types::BlobId(i as u64 + 1), piece, crc32c::crc32c(piece))?;
        }
        let rate = mbps(data.len() as u64, t.elapsed());
        drop(store);
        std::fs::remove_dir_all(&dir)?;
        Ok(rate)
    })
    .await?
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Stream `bytes` over `streams` concurrent mutual-TLS connections on loopback (1 MiB writes).
async fn bare_tls(dir: &Path, bytes: u64, streams: usize) -> Result<f64> {
    let tls_dir = dir.join("tls");
    let files = shoal_types::config::TlsFiles {
        ca_cert: tls_dir.join("ca.crt"),
        cert: tls_dir.join("meta-1.crt"),
        key: tls_dir.join("meta-1.key"),
    };
    let server = tokio_rustls::TlsAcceptor::from(shoal_pki::server_config(&files)?);
    let connector = tokio_rustls::TlsConnector::from(shoal_pki::client_config(&files)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio::spawn(async move {
        let mut sinks = Vec::new();
        for _ in 0..streams {
            let (tcp, _) = listener.accept().await?;
            let server = server.clone();
            sinks.push(tokio::spawn(async move {
                let mut s = server.accept(tcp).await?;
                let mut buf = vec![0u8; 1 << 20];
                while s.read(&mut buf).await? > 0 {}
                Ok::<_, std::io::Error>(())
            }));
        }
        for s in sinks {
            s.await??;
        }
        Ok::<_, std::io::Error>(())
    });
    let t = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..streams {
        let connector = connector.clone();
        senders.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let mut s = connector.connect(shoal_pki::server_name(), tcp).await?;
            let buf = vec![7u8; 1 << 20];
            for _ in 0..bytes >> 20 {
                s.write_all(&buf).await?;
            }
            s.shutdown().await?;
            // Drain what the server sent (session tickets) so closing does not reset the
            // connection under the server's last read.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            Ok::<_, std::io::Error>(())
        }));
    }
    for s in senders {
        s.await??;
    }
    acceptor.await??;
    Ok(mbps(bytes * streams as u64, t.elapsed()))
}

/// Create `n` files (1,000 per directory) with 16 clients; then the resident memory of every
/// metadata process, in KiB.
async fn many_files(dir: &Path, n: u64) -> Result<(f64, Vec<(String, u64)>)> {
    let client = connect(dir).await?;
    let top = client.mkdir(FileHandle::ROOT, &format!("bench-million-{}", std::process::id()), 0o755).await?;
    let dirs = n.div_ceil(1000);
    let mut handles = Vec::new();
    for d in 0..dirs {
        handles.push(client.mkdir(top.handle, &format!("d{d}"), 0o755).await?.handle);
    }
    let handles = Arc::new(handles);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let c = connect(dir).await?;
        let handles = handles.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                c.create(handles[(i / 1000) as usize], &format!("f{i}"), 0o644, true).await?;
            }
            let _ = c.close().await;
            Ok::<_, shoal_types::FsError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let mut rss = Vec::new();
    for i in 1..=9 {
        let name = format!("meta-{i}");
        let Ok(pid) = std::fs::read_to_string(dir.join("pids").join(format!("{name}.pid"))) else { continue };
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
        if let Some(kib) = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()) {
            rss.push((name, kib));
        }
    }
    let _ = client.close().await;
    Ok((rate, rss))
}

/// `shoal bench --failover-kills N`: kill -9 the metadata leader N times while a client keeps
/// asking for a mkdir, and time each kill to the first mkdir committed after it (the client
/// finds the new leader by itself). The killed node is restarted and caught up before the next
/// round, so each round starts from a healthy cluster of three.
pub async fn failover(dir: &Path, kills: usize) -> Result<()> {
    use anyhow::Context;
    let dir = dir.canonicalize()?;
    let cluster: crate::cluster::ClusterFile = crate::cluster::read_toml(&dir.join("cluster.toml"))?;
    let client = connect(&dir).await?;
    let top = client.mkdir(FileHandle::ROOT, &format!("bench-failover-{}", std::process::id()), 0o755).await?;
    let mut times = Vec::new();
    for round in 0..kills {
        let s = client.status().await?;
        let leader = s.leader.context("no leader")?;
        let proc = crate::cluster::procs(&dir, &cluster).into_iter().find(|p| p.name == format!("meta-{leader}")).context("the leader's process")?;
        let pid = crate::cluster::running_pid(&dir, &proc).context("the leader is not running")?;
        let killed = Instant::now();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        client.mkdir(top.handle, &format!("r{round}"), 0o755).await.with_context(|| format!("round {round}: first mkdir after the kill"))?;
        let took = killed.elapsed();
        let after = client.status().await?.leader;
        println!("round {:>2}: killed meta-{leader}; a mkdir committed {:.0} ms later (leader now {})", round + 1, took.as_secs_f64() * 1e3, after.map_or("?".into(), |l| format!("meta-{l}")));
        times.push(took.as_secs_f64());
        // Back to three: restart it (once it is really gone) and wait until it has caught up.
        let gone_by = Instant::now() + Duration::from_secs(20);
        while crate::cluster::is_alive(pid) && Instant::now() < gone_by {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        crate::cluster::start_procs(&dir, &cluster, true)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = client.status().await?;
            let caught_up = s.members.iter().all(|m| m.matched.is_some_and(|x| x + 2 >= s.last_applied));
            if s.leader.is_some() && caught_up && s.members.len() == cluster.metas.len() {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "meta-{leader} did not catch up after its restart: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mut t = comfy_table::Table::new();
    t.set_header(vec!["failover (kill -9 of the leader to the first committed mkdir)", "seconds"]);
    t.add_row(vec![format!("median of {kills}"), format!("{:.2}", median(times.clone()))]);
    t.add_row(vec!["best".to_string(), format!("{:.2}", sorted[0])]);
    t.add_row(vec!["worst".to_string(), format!("{:.2}", sorted[sorted.len() - 1])]);
    println!("{t}");
    println!("for comparison: CephFS waits a 15 s MDS beacon grace, HDFS 5-10 s, an NFSv4 server a 90 s grace period");

    // Cold standby: a follower down while many commits happen catches up (from the entries it
    // missed, or from a snapshot when the leader has purged them).
    let s = client.status().await?;
    let follower = s.members.iter().map(|m| m.id.0).find(|id| Some(*id) != s.leader.map(|l| l.0)).context("no follower")?;
    let proc = crate::cluster::procs(&dir, &cluster).into_iter().find(|p| p.name == format!("meta-{follower}")).context("the follower's process")?;
    let pid = crate::cluster::running_pid(&dir, &proc).context("the follower is not running")?;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let creates = 25_000u64;
    let cold = client.mkdir(top.handle, "cold", 0o755).await?.handle;
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..creates).step_by(8) {
                c.create(cold, &format!("f{i}"), 0o644, true).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let target = client.status().await?.last_applied;
    let gone_by = Instant::now() + Duration::from_secs(20);
    while crate::cluster::is_alive(pid) && Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restarted = Instant::now();
    crate::cluster::start_procs(&dir, &cluster, true)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = client.status().await?;
        if s.members.iter().any(|m| m.id.0 == follower && m.matched.is_some_and(|x| x >= target)) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "meta-{follower} did not catch up in 5 min: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "cold standby: meta-{follower} was down while {creates} creates committed; restarted, it matched the leader's log {:.2} s later (sent the entries it missed, or a snapshot if they were purged)",
        restarted.elapsed().as_secs_f64()
    );
    let _ = client.close().await;
    Ok(())
}

/// Files a writer puts, as (end time, bytes): what it achieved in any window.
type Completions = Arc<std::sync::Mutex<Vec<(Instant, u64)>>>;

/// Put `file_mib` MiB files under `dir` one after another until `stop`, recording each.
async fn keep_writing(client: Arc<shoal_client::Client>, dir: FileHandle, data: Arc<Vec<u8>>, prefix: String, done: Completions, stop: Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let f = client.create(dir, &format!("{prefix}-{n}"), 0o644, true).await?;
        client.write_stream(f.handle, &data[..], &|_| {}).await?;
        done.lock().expect("lock").push((Instant::now(), data.len() as u64));
    }
    Ok(())
}

/// MB/s of the completions that ended within [from, to].
fn rate_between(done: &Completions, from: Instant, to: Instant) -> f64 {
    let bytes: u64 = done.lock().expect("lock").iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, b)| b).sum();
    mbps(bytes, to.saturating_duration_since(from))
}

/// `shoal bench --repair-gib N`: fill the cluster until each storage server holds about N GiB
/// (3 copies over the servers), measure what 2 clients write, kill -9 the fullest server and
/// time the repair back to full protection while the clients keep writing. Prints the repair
/// rate and the clients' rate during the repair against before. The server is restarted at the
/// end and the files deleted.
pub async fn repair(dir: &Path, gib: f64) -> Result<()> {
    use anyhow::Context;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = dir.canonicalize()?;
    let cluster: crate::cluster::ClusterFile = crate::cluster::read_toml(&dir.join("cluster.toml"))?;
    let client = connect(&dir).await?;
    let top = client.mkdir(FileHandle::ROOT, &format!("bench-repair-{}", std::process::id()), 0o755).await?;
    let file_bytes = 16u64 << 20;
    let data: Arc<Vec<u8>> = Arc::new((0..file_bytes).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect());
    let n_stores = cluster.stores.len().max(1) as f64;
    let logical = (gib * (1u64 << 30) as f64 * n_stores / 3.0) as u64;
    let n_files = logical.div_ceil(file_bytes);
    println!("filling: {n_files} files of 16 MiB ({:.2} GiB, 3 copies over {} servers)", (n_files * file_bytes) as f64 / (1u64 << 30) as f64, cluster.stores.len());
    let bar = indicatif::ProgressBar::new(n_files);
    let t = Instant::now();
    for i in 0..n_files {
        let f = client.create(top.handle, &format!("fill-{i}"), 0o644, true).await?;
        client.write_stream(f.handle, &data[..], &|_| {}).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("filled in {:.1} s ({:.0} MB/s)", t.elapsed().as_secs_f64(), mbps(n_files * file_bytes, t.elapsed()));

    // The fill's dirty pages go to disk first, or their write-back would slow the baseline.
    tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await?;
    // Two clients (own sessions) write throughout.
    let done: Completions = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let c = connect(&dir).await?;
        writers.push(tokio::spawn(keep_writing(c, top.handle, data.clone(), format!("w{w}"), done.clone(), stop.clone())));
    }
    let base_from = Instant::now() + Duration::from_secs(2);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let base = rate_between(&done, base_from, Instant::now());
    println!("clients writing {base:.0} MB/s with every server up");

    let s = client.status().await?;
    let victim = s.stores.iter().max_by_key(|st| st.used).context("no storage server")?.clone();
    let proc = crate::cluster::procs(&dir, &cluster).into_iter().find(|p| p.name == format!("store-{}", victim.id)).context("the server's process")?;
    let pid = crate::cluster::running_pid(&dir, &proc).context("the server is not running")?;
    let killed = Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    println!("killed store-{} holding {:.2} GiB ({} blobs)", victim.id, victim.used as f64 / (1u64 << 30) as f64, victim.blobs);
    let (mut declared, mut queued) = (None, 0u64);
    let deadline = Instant::now() + Duration::from_secs(1800);
    let bar = indicatif::ProgressBar::new(victim.blobs);
    let finished = loop {
        let s = client.status().await?;
        let dead = s.stores.iter().any(|st| st.id == victim.id && !st.alive);
        if dead && declared.is_none() {
            declared = Some(Instant::now());
        }
        queued = queued.max(s.blobs_under_replicated);
        bar.set_position(victim.blobs.saturating_sub(s.blobs_under_replicated));
        if declared.is_some() && s.blobs_under_replicated == 0 {
            break Instant::now();
        }
        anyhow::ensure!(Instant::now() < deadline, "not back to full protection after 30 min: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();
    let declared = declared.expect("declared before the loop ends");
    let during = rate_between(&done, declared, finished);
    let repair_s = finished.duration_since(declared).as_secs_f64();
    let repair_rate = victim.used as f64 / repair_s / 1e6;

    // The server returns (and is checked); the clients' rate once all is back is measured too.
    crate::cluster::start_procs(&dir, &cluster, true)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !client.status().await?.stores.iter().all(|st| st.alive) {
        anyhow::ensure!(Instant::now() < deadline, "store-{} did not come back", victim.id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rate_between(&done, after_from, Instant::now());
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let base = base.min(after);
    let mut t = comfy_table::Table::new();
    t.set_header(vec!["repair after losing one storage server", "figure"]);
    t.add_row(vec!["data it held".to_string(), format!("{:.2} GiB in {} blobs ({queued} queued)", victim.used as f64 / (1u64 << 30) as f64, victim.blobs)]);
    t.add_row(vec!["kill -9 to declared failed, s".to_string(), format!("{:.1}", declared.duration_since(killed).as_secs_f64())]);
    t.add_row(vec!["declared failed to full protection, s".to_string(), format!("{repair_s:.1}")]);
    t.add_row(vec!["repair rate, MB/s".to_string(), format!("{repair_rate:.0} ({:.0} MiB/s; must 100 MiB/s)", repair_rate * 1e6 / (1u64 << 20) as f64)]);
    t.add_row(vec!["2 clients writing with every server up, MB/s".to_string(), format!("{base:.0} (the lower of before the kill and after the return)")]);
    t.add_row(vec!["2 clients writing during the repair, MB/s".to_string(), format!("{during:.0} ({:.2}x; must 0.70x)", during / base)]);
    println!("{t}");
    for entry in client.readdir_all(top.handle).await? {
        client.unlink(top.handle, &entry.name).await?;
    }
    client.rmdir(FileHandle::ROOT, &format!("bench-repair-{}", std::process::id())).await?;
    let _ = client.close().await;
    Ok(())
}
