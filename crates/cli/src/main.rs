//! `shoal`: one binary for every role (`meta`, `store`), for running a local cluster (`init`,
//! `up`, `down`, `status`) and for file commands without a mount (`put`, `get`, `cp`, `ls`, ...).
//! Errors are turned into a message and an exit code in one place, [`exit_code`].

mod bench;
mod certs;
mod cluster;
mod files;
mod health;
mod mount;
mod users;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shoal_client::Client;
use shoal_types::config::{ClientConfig, MetaConfig, StoreConfig};
use shoal_types::{Credentials, FsError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "shoal", version, about = "Shoal: a distributed file system")]
struct Cli {
    /// The local cluster's directory (default: $SHOAL_DIR, else ~/shoal-dev).
    #[arg(long, global = true, env = "SHOAL_DIR")]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a local cluster: CA, certificates and configuration.
    Init {
        #[arg(long, default_value_t = 3)]
        metas: usize,
        #[arg(long, default_value_t = 4)]
        stores: usize,
        /// Bytes each storage server may use (0: its disk's free space).
        #[arg(long, default_value_t = 0)]
        store_capacity: u64,
        /// Log entries between metadata snapshots (older entries are then purged).
        #[arg(long, default_value_t = shoal_types::config::defaults::snapshot_every_entries())]
        snapshot_every: u64,
        /// How long a cache promise to a mount lasts (ms); a change waits at most this long for
        /// an unreachable mount.
        #[arg(long, default_value_t = shoal_types::config::defaults::callback_lease_ms())]
        callback_lease_ms: u64,
        /// How long a ticket lasts (s).
        #[arg(long, default_value_t = shoal_types::config::defaults::ticket_lifetime_s())]
        ticket_lifetime_s: u64,
        /// How long after a login its ticket may be renewed (s).
        #[arg(long, default_value_t = shoal_types::config::defaults::ticket_renew_s())]
        ticket_renew_s: u64,
        /// Background scrubbing rate of each storage server (MiB/s; 0: none).
        #[arg(long, default_value_t = shoal_types::config::defaults::scrub_mib_per_s())]
        scrub_mib_per_s: u64,
        /// Seconds between background scrub passes.
        #[arg(long, default_value_t = shoal_types::config::defaults::scrub_every_s())]
        scrub_every_s: u64,
        /// Repair copying rate of each storage server at most (MiB/s; 0: no limit).
        #[arg(long, default_value_t = shoal_types::config::defaults::repair_mib_per_s())]
        repair_mib_per_s: u64,
        /// Memory of each storage server for recently put blobs, served to reads (MiB; 0: none).
        #[arg(long, default_value_t = shoal_types::config::defaults::recent_cache_bytes() >> 20)]
        store_recent_cache_mib: u64,
        /// Where the metadata nodes listen (host:port, comma-separated; sets their number), for
        /// a cluster spread over several hosts. Default: free ports on 127.0.0.1.
        #[arg(long, value_delimiter = ',')]
        meta_addrs: Vec<String>,
        /// Where the storage servers listen (host:port, comma-separated; sets their number).
        #[arg(long, value_delimiter = ',')]
        store_addrs: Vec<String>,
    },
    /// Start the local cluster (initializing it first if needed); returns once healthy with
    /// --detach, else stays in the foreground and stops everything on Ctrl-C.
    Up {
        #[arg(long)]
        detach: bool,
        /// Also mount the cluster here once it is healthy.
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Stop the local cluster (and unmount its mounts).
    Down,
    /// Mount the cluster; returns once mounted (--foreground stays attached).
    Mount {
        mountpoint: PathBuf,
        #[arg(long)]
        foreground: bool,
        #[command(flatten)]
        opts: mount::MountOptions,
    },
    /// Unmount, after what is buffered is written.
    Umount { mountpoint: PathBuf },
    /// Ask every storage server to re-read and check all it stores now; --wait follows the
    /// passes and the repair of what they find, then prints a summary.
    Scrub {
        #[arg(long)]
        wait: bool,
    },
    /// How many blobs wait for repair; --wait follows the repairs until every blob a live
    /// server can copy is fully protected.
    Repair {
        #[arg(long)]
        wait: bool,
    },
    /// Leader, term, members, storage servers, capacity and health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a metadata node.
    Meta {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a storage server.
    Store {
        #[arg(long)]
        config: PathBuf,
    },
    /// Upload a local file.
    Put { local: PathBuf, remote: String },
    /// Download a file.
    Get { remote: String, local: PathBuf },
    /// Copy local to cluster (`shoal cp -r ./src /src`), or cluster to local with a `shoal:` prefix
    /// on the source (`shoal cp shoal:/x ./x`).
    Cp {
        #[arg(short = 'r', long)]
        recursive: bool,
        src: String,
        dst: String,
    },
    Ls {
        #[arg(short = 'l')]
        long: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    Mkdir {
        #[arg(short = 'p')]
        parents: bool,
        path: String,
    },
    Mv { src: String, dst: String },
    Rm {
        #[arg(short = 'r', long)]
        recursive: bool,
        path: String,
    },
    Stat { path: String },
    Cat { path: String },
    Chmod { mode: String, path: String },
    Chown { owner: String, path: String },
    Ln {
        #[arg(short = 's')]
        symbolic: bool,
        target: String,
        path: String,
    },
    Df,
    /// Manage the users who can log in (the admin only).
    User {
        #[command(subcommand)]
        cmd: users::UserCmd,
    },
    /// Log in: cache a ticket-granting ticket that later commands and mounts act with.
    Login {
        user: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Who commands act as.
    Whoami,
    /// Forget the cached ticket.
    Logout,
    /// Certificates of the local cluster (both restart it so every process loads them).
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
    /// Measure a running cluster: bare rustls streams, 3-copy put and get, creates/s with 16
    /// clients, create latency. Prints a table; asserts nothing.
    Bench {
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        #[arg(long, default_value_t = 20_000)]
        creates: u64,
        /// Rounds of the bandwidth figures (medians are printed).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Also fill the namespace with this many files, then report the metadata processes'
        /// resident memory (the figure uses 1000000).
        #[arg(long, default_value_t = 0)]
        files: u64,
        /// Instead: kill -9 the metadata leader this many times and time each failover.
        #[arg(long, default_value_t = 0)]
        failover_kills: usize,
        /// Instead: fill until each storage server holds this many GiB, kill -9 the fullest
        /// and time its repair while 2 clients write.
        #[arg(long, default_value_t = 0.0)]
        repair_gib: f64,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// New keys and certificates for every process and the client; the old ones are revoked.
    Rotate,
    /// Revoke one certificate (meta-N, store-N or client); a revoked node leaves the cluster.
    Revoke { name: String },
}

fn cluster_dir(cli_dir: &Option<PathBuf>) -> PathBuf {
    cli_dir.clone().unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        home.join("shoal-dev")
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| "info,openraft=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Keep large buffers (blobs up to 16 MiB, frames) on the heap and reuse freed memory, instead
/// of a fresh mmap per buffer that the kernel must fault in and zero each time.
fn tune_allocator() {
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(run(cli));
    if let Err(e) = result {
        let (code, msg) = exit_code(&e);
        eprintln!("shoal: {msg}");
        std::process::exit(code);
    }
}

/// The one place errors become an exit code and a message.
fn exit_code(e: &anyhow::Error) -> (i32, String) {
    let msg = format!("{e:#}");
    let code = match e.downcast_ref::<FsError>() {
        Some(FsError::NotFound) => 2,
        Some(FsError::Stale) => 3,
        Some(FsError::PermissionDenied | FsError::NotPermitted | FsError::Unauthenticated(_) | FsError::TicketExpired) => 4,
        Some(FsError::NoSpace) => 5,
        Some(FsError::Exists) => 6,
        Some(FsError::Unavailable(_) | FsError::NotLeader { .. }) => 7,
        _ => 1,
    };
    (code, msg)
}

pub fn local_credentials() -> Credentials {
    let groups = nix::unistd::getgroups().map(|g| g.into_iter().map(|g| g.as_raw()).collect()).unwrap_or_default();
    Credentials { uid: nix::unistd::getuid().as_raw(), gid: nix::unistd::getgid().as_raw(), groups }
}

pub async fn connect(dir: &Path) -> Result<Arc<Client>> {
    let config: ClientConfig = cluster::read_toml(&dir.join("client.toml"))
        .with_context(|| format!("no cluster found in {} (run `shoal up --dir {}` first)", dir.display(), dir.display()))?;
    let name = format!("cli-{}", std::process::id());
    let login = users::login_for(dir, &config)?;
    Ok(Client::connect_as(&config, login, local_credentials(), &name).await.context("connect to the cluster")?)
}

async fn run(cli: Cli) -> Result<()> {
    let dir = cluster_dir(&cli.dir);
    match cli.cmd {
        Cmd::Meta { config } => {
            init_tracing();
            let cfg: MetaConfig = cluster::read_toml(&config)?;
            shoal_meta_server::run(cfg).await
        }
        Cmd::Store { config } => {
            init_tracing();
            let cfg: StoreConfig = cluster::read_toml(&config)?;
            shoal_store_server::run(cfg).await
        }
        Cmd::Init {
            metas,
            stores,
            store_capacity,
            snapshot_every,
            callback_lease_ms,
            ticket_lifetime_s,
            ticket_renew_s,
            scrub_mib_per_s,
            scrub_every_s,
            repair_mib_per_s,
            store_recent_cache_mib,
            meta_addrs,
            store_addrs,
        } => {
            let opts = cluster::InitOptions {
                metas: if meta_addrs.is_empty() { metas } else { meta_addrs.len() },
                stores: if store_addrs.is_empty() { stores } else { store_addrs.len() },
                meta_addrs,
                store_addrs,
                store_capacity_bytes: store_capacity,
                snapshot_every_entries: snapshot_every,
                callback_lease_ms,
                ticket_lifetime_s,
                ticket_renew_s,
                scrub_mib_per_s,
                scrub_every_s,
                repair_mib_per_s,
                store_recent_cache_bytes: store_recent_cache_mib << 20,
            };
            let c = cluster::init(&dir, &opts)?;
            println!("initialized cluster {} in {}: {} metadata nodes, {} storage servers", c.name, dir.display(), c.metas.len(), c.stores.len());
            Ok(())
        }
        Cmd::Up { detach, mount } => up(&dir, detach, mount).await,
        Cmd::Mount { mountpoint, foreground: true, opts } => mount::foreground(&dir, &mountpoint, &opts).await,
        Cmd::Mount { mountpoint, foreground: false, opts } => mount::background(&dir, &mountpoint, &opts).await,
        Cmd::Umount { mountpoint } => mount::umount(&mountpoint),
        Cmd::Down => {
            let c: cluster::ClusterFile = cluster::read_toml(&dir.join("cluster.toml"))?;
            mount::stop_all(&dir)?;
            let n = cluster::stop_procs(&dir, &c, Duration::from_secs(10))?;
            println!("stopped {n} processes");
            Ok(())
        }
        Cmd::Status { json } => files::status(&dir, json).await,
        Cmd::Scrub { wait } => health::scrub(&dir, wait).await,
        Cmd::Repair { wait } => health::repair(&dir, wait).await,
        Cmd::User { cmd } => users::user(&dir, cmd).await,
        Cmd::Login { user, password_stdin } => users::login(&dir, &user, password_stdin).await,
        Cmd::Whoami => users::whoami(&dir),
        Cmd::Logout => users::logout(&dir),
        Cmd::Cert { cmd: CertCmd::Rotate } => certs::rotate(&dir).await,
        Cmd::Cert { cmd: CertCmd::Revoke { name } } => certs::revoke(&dir, &name).await,
        Cmd::Bench { failover_kills, .. } if failover_kills > 0 => bench::failover(&dir, failover_kills).await,
        Cmd::Bench { repair_gib, .. } if repair_gib > 0.0 => bench::repair(&dir, repair_gib).await,
        Cmd::Bench { size_mib, creates, rounds, files, .. } => bench::run(&dir, size_mib, creates, rounds, files).await,
        other => files::run(&dir, other).await,
    }
}

pub async fn up(dir: &Path, detach: bool, mountpoint: Option<PathBuf>) -> Result<()> {
    if !dir.join("cluster.toml").exists() {
        let c = cluster::init(dir, &cluster::InitOptions::default())?;
        println!("initialized cluster {} in {}", c.name, dir.display());
    }
    let dir = dir.canonicalize()?;
    let c: cluster::ClusterFile = cluster::read_toml(&dir.join("cluster.toml"))?;
    cluster::add_missing_secrets(&dir, &c)?;
    // Listen for Ctrl-C and SIGTERM before anything starts, so a signal at any moment stops the
    // cluster cleanly instead of killing only this process.
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // (Cluster clock: the metadata leader's, on this machine.)
    let started_ns = shoal_auth::now_ns();
    let mut children = cluster::start_procs(&dir, &c, detach)?;
    let started = Instant::now();
    let stop = |children: &mut Vec<std::process::Child>| -> Result<()> {
        mount::stop_all(&dir)?;
        cluster::stop_procs(&dir, &c, Duration::from_secs(10))?;
        for ch in children.iter_mut() {
            let _ = ch.wait();
        }
        println!("stopped");
        Ok(())
    };
    tokio::select! {
        r = wait_healthy(&dir, &c, started_ns, Duration::from_secs(60)) => r?,
        _ = interrupt.recv(), if !detach => return stop(&mut children),
        _ = terminate.recv(), if !detach => return stop(&mut children),
    }
    println!(
        "cluster up in {:.1}s: {} metadata nodes, {} storage servers, data in {}",
        started.elapsed().as_secs_f64(),
        c.metas.len(),
        c.stores.len(),
        dir.display()
    );
    if let Some(m) = &mountpoint {
        mount::background(&dir, m, &mount::MountOptions::default()).await?;
    }
    if detach {
        return Ok(());
    }
    println!("running in the foreground; Ctrl-C stops the cluster");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    stop(&mut children)
}

/// Wait until a leader serves reads and every storage server is alive, checked and heard from
/// since `since_ns` (a server just restarted is still listed alive from before until it
/// registers again, and then fenced until its blobs are checked).
async fn wait_healthy(dir: &Path, c: &cluster::ClusterFile, since_ns: i64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), async {
            let client = connect(dir).await?;
            let s = client.status().await?;
            let _ = client.close().await;
            Ok::<_, anyhow::Error>(s)
        })
        .await
        {
            Ok(Ok(s)) => {
                let alive = s.stores.iter().filter(|s| s.alive && !s.checking && s.last_heartbeat >= since_ns).count();
                if s.leader.is_some() && alive >= c.stores.len() {
                    return Ok(());
                }
                last = format!("leader {:?}, {alive} of {} storage servers registered", s.leader, c.stores.len());
            }
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = "status timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("cluster not healthy after {timeout:?}: {last} (logs in {})", dir.join("logs").display())
}
