//! `shoal mount` and `shoal umount`. A background mount is this binary re-run with
//! `--foreground` in its own session, logging to `DIR/logs/mount-*.log`, with a pid file in
//! `DIR/pids/` so `shoal down` unmounts it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn tag(mountpoint: &Path) -> String {
    mountpoint.to_string_lossy().trim_matches('/').replace('/', "_")
}

/// Whether `mountpoint` is a FUSE mount of Shoal right now.
pub fn is_mounted(mountpoint: &Path) -> bool {
    let target = mountpoint.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            // "... MOUNTPOINT OPTIONS - FSTYPE SOURCE ...": ours is a fuse mount named "shoal".
            let fields: Vec<&str> = l.split(' ').collect();
            let after_dash = fields.iter().position(|f| *f == "-").map_or(&[][..], |i| &fields[i + 1..]);
            fields.get(4) == Some(&target.as_str())
                && after_dash.first().is_some_and(|t| t.starts_with("fuse"))
                && after_dash.get(1) == Some(&"shoal")
        })
}

/// A mount point left by a killed client answers ENOTCONN (ECONNABORTED for a request caught
/// by the abort): detach it so it can be mounted again.
fn clean_dead_mount(mountpoint: &Path) {
    if let Err(e) = std::fs::metadata(mountpoint) {
        let listed = || std::path::absolute(mountpoint).is_ok_and(|p| is_mounted(&p));
        let dead = matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) || (e.kind() != std::io::ErrorKind::NotFound && listed());
        if dead {
            let _ = std::process::Command::new("fusermount3").arg("-uz").arg(mountpoint).status();
        }
    }
}

/// FUSE request threads of a mount: each waits for its request's answer, so this bounds how
/// many requests (and so how many commands per log entry) a mount has in flight.
pub const MOUNT_THREADS: usize = 32;

/// Cache sizes of a mount.
#[derive(clap::Args, Clone, Debug)]
pub struct MountOptions {
    /// Where the block cache keeps blobs' blocks on disk (default: DIR/cache/<mount point>).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Memory for cached blocks, MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_mem_mib: u64,
    /// Local disk for cached blocks, MiB (0: no disk cache).
    #[arg(long, default_value_t = 1024)]
    pub cache_disk_mib: u64,
    /// Files up to this size are fetched whole at their first read (AFS style), MiB.
    #[arg(long, default_value_t = 4)]
    pub whole_file_mib: u64,
    /// Bytes within a file's first KiB up to this go to the metadata service with their commit
    /// instead of to storage servers (small files: one round trip less to write and to read),
    /// KiB, at most 64 (0: never).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=64))]
    pub inline_kib: u64,
    /// close-to-open: an open sees every close that finished before it. open-snapshot: also,
    /// a file opened read-only keeps reading the version it opened until it is closed.
    #[arg(long, value_enum, default_value_t = Consistency::CloseToOpen)]
    pub consistency: Consistency,
    /// Never hold directory delegations: every create goes to the metadata service before it
    /// returns (by default, files created in a directory this mount holds are created at once
    /// and written back within milliseconds, or when another client needs the directory).
    #[arg(long)]
    pub no_delegations: bool,
    /// Local root acts as nobody (65534) in the cluster (a mount with the admin key; a user's
    /// mount always acts as that user).
    #[arg(long)]
    pub root_squash: bool,
    /// Map a local uid to a cluster uid, LOCAL:CLUSTER (repeatable).
    #[arg(long, value_parser = id_pair)]
    pub map_uid: Vec<(u32, u32)>,
    /// Map a local gid to a cluster gid, LOCAL:CLUSTER (repeatable).
    #[arg(long, value_parser = id_pair)]
    pub map_gid: Vec<(u32, u32)>,
}

fn id_pair(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected LOCAL:CLUSTER"))?;
    let id = |x: &str| x.trim().parse::<u32>().map_err(|e| format!("{x:?}: {e}"));
    Ok((id(a)?, id(b)?))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    CloseToOpen,
    OpenSnapshot,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            cache_dir: None,
            cache_mem_mib: 256,
            cache_disk_mib: 1024,
            whole_file_mib: 4,
            inline_kib: 64,
            consistency: Consistency::CloseToOpen,
            no_delegations: false,
            root_squash: false,
            map_uid: Vec::new(),
            map_gid: Vec::new(),
        }
    }
}

impl MountOptions {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--cache-mem-mib={}", self.cache_mem_mib),
            format!("--cache-disk-mib={}", self.cache_disk_mib),
            format!("--whole-file-mib={}", self.whole_file_mib),
            format!("--inline-kib={}", self.inline_kib),
        ];
        if self.consistency == Consistency::OpenSnapshot {
            a.push("--consistency=open-snapshot".into());
        }
        if self.no_delegations {
            a.push("--no-delegations".into());
        }
        if self.root_squash {
            a.push("--root-squash".into());
        }
        a.extend(self.map_uid.iter().map(|(l, c)| format!("--map-uid={l}:{c}")));
        a.extend(self.map_gid.iter().map(|(l, c)| format!("--map-gid={l}:{c}")));
        if let Some(d) = &self.cache_dir {
            a.push(format!("--cache-dir={}", d.display()));
        }
        a
    }
}

pub async fn background(dir: &Path, mountpoint: &Path, opts: &MountOptions) -> Result<()> {
    clean_dead_mount(mountpoint);
    std::fs::create_dir_all(mountpoint).with_context(|| format!("create {}", mountpoint.display()))?;
    let mountpoint = mountpoint.canonicalize()?;
    if is_mounted(&mountpoint) {
        bail!("{} is already mounted", mountpoint.display());
    }
    let dir = dir.canonicalize().with_context(|| format!("no cluster in {}", dir.display()))?;
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::create_dir_all(dir.join("pids"))?;
    let log_path = dir.join("logs").join(format!("mount-{}.log", tag(&mountpoint)));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--dir").arg(&dir).arg("mount").arg("--foreground").args(opts.args()).arg(&mountpoint);
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the mount process")?;
    std::fs::write(dir.join("pids").join(format!("mount-{}.pid", tag(&mountpoint))), child.id().to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mounted(&mountpoint) {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("mount process exited ({status}): {}", log.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
        }
        if Instant::now() > deadline {
            bail!("{} not mounted after 30 s (log: {})", mountpoint.display(), log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("mounted at {}", mountpoint.display());
    Ok(())
}

pub async fn foreground(dir: &Path, mountpoint: &Path, opts: &MountOptions) -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
    ).with_writer(std::io::stderr).init();
    clean_dead_mount(mountpoint);
    std::fs::create_dir_all(mountpoint)?;
    let mountpoint: PathBuf = mountpoint.canonicalize()?;
    let client = crate::connect(dir).await?;
    let cache_dir = match (&opts.cache_dir, opts.cache_disk_mib) {
        (_, 0) => None,
        (Some(d), _) => Some(d.clone()),
        (None, _) => Some(dir.canonicalize()?.join("cache").join(tag(&mountpoint))),
    };
    let cache = shoal_client::cache::BlockCache::open(shoal_client::cache::CacheConfig {
        dir: cache_dir.clone(),
        mem_bytes: opts.cache_mem_mib << 20,
        disk_bytes: opts.cache_disk_mib << 20,
    })
    .with_context(|| format!("open the block cache in {cache_dir:?}"))?;
    client.set_block_cache(cache);
    // Unmount on SIGTERM or Ctrl-C: the kernel then flushes and releases every open file.
    let mp = mountpoint.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else { return };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = std::process::Command::new("fusermount3").arg("-u").arg(&mp).status();
        // Busy (files still open): detach lazily so the process can end.
        if is_mounted(&mp) {
            let _ = std::process::Command::new("fusermount3").arg("-uz").arg(&mp).status();
        }
    });
    tracing::info!(mountpoint = %mountpoint.display(), "mounting");
    let rt = tokio::runtime::Handle::current();
    let c = client.clone();
    let mp = mountpoint.clone();
    let fuse_opts = shoal_fuse::MountOptions {
        threads: MOUNT_THREADS,
        whole_file_bytes: opts.whole_file_mib << 20,
        inline_bytes: opts.inline_kib << 10,
        open_snapshot: opts.consistency == Consistency::OpenSnapshot,
        delegations: !opts.no_delegations,
        ids: shoal_fuse::IdMap { uids: opts.map_uid.clone(), gids: opts.map_gid.clone(), root_squash: opts.root_squash },
    };
    tokio::task::spawn_blocking(move || shoal_fuse::mount(rt, c, &mp, &fuse_opts)).await?.context("FUSE mount")?;
    let _ = client.close().await;
    tracing::info!("unmounted");
    Ok(())
}

pub fn umount(mountpoint: &Path) -> Result<()> {
    let st = std::process::Command::new("fusermount3").arg("-u").arg(mountpoint).status().context("run fusermount3")?;
    if !st.success() {
        bail!("fusermount3 -u {} failed (files still open?)", mountpoint.display());
    }
    Ok(())
}

/// Stop every mount process of this cluster directory (each unmounts on SIGTERM).
pub fn stop_all(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir.join("pids")) else { return Ok(()) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("mount-") {
            continue;
        }
        if let Ok(pid) = std::fs::read_to_string(e.path()).unwrap_or_default().trim().parse::<i32>() {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while crate::cluster::is_alive(pid) && Instant::now() < deadline {
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
    Ok(())
}
