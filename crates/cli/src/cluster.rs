//! A local cluster in one directory: `shoal init`, `up`, `down`.
//!
//! ```text
//! DIR/cluster.toml          name and layout of the local cluster
//! DIR/tls/                  ca.crt, ca.key, one certificate per process, client.crt
//! DIR/meta-N/meta.toml      metadata node N: config, redb database, snapshots
//! DIR/store-N/store.toml    storage server N: config, blobs
//! DIR/client.toml           how clients find and trust the cluster
//! DIR/secrets/              cluster.keys (ticket keys, for the metadata nodes) and admin.key
//!                           (the admin principal's key), both readable by the owner only
//! DIR/logs/, DIR/pids/      process logs and pid files
//! ```

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use shoal_pki::{Ca, Role};
use shoal_types::config::*;
use shoal_types::{MetaNodeId, StoreId};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub name: String,
    pub metas: Vec<MetaPeer>,
    pub stores: Vec<StoreEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreEntry {
    pub id: StoreId,
    pub addr: String,
}

/// Ports free right now on loopback, below the range the kernel hands to outgoing connections
/// (a port taken from that range can be the local end of some connection by the time the
/// server binds it); the kernel picks them if that range leaves no room below.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let mut listeners = Vec::new();
    if ephemeral_low > 20_000 {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new();
        for i in 0..n * 200 {
            if listeners.len() == n {
                break;
            }
            let mut h = seed.build_hasher();
            h.write_usize(i);
            let port = 10_000 + (h.finish() % u64::from(ephemeral_low - 10_000)) as u16;
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(l);
            }
        }
    }
    while listeners.len() < n {
        listeners.push(std::net::TcpListener::bind("127.0.0.1:0")?);
    }
    Ok(listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

pub fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    std::fs::write(path, toml::to_string_pretty(value)?).with_context(|| format!("write {}", path.display()))
}

pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

pub struct InitOptions {
    pub metas: usize,
    pub stores: usize,
    pub store_capacity_bytes: u64,
    pub snapshot_every_entries: u64,
    pub callback_lease_ms: u64,
    pub ticket_lifetime_s: u64,
    pub ticket_renew_s: u64,
    pub scrub_mib_per_s: u64,
    pub scrub_every_s: u64,
    pub repair_mib_per_s: u64,
    pub store_recent_cache_bytes: u64,
    /// Listening addresses (host:port) of the metadata nodes and storage servers; empty: free
    /// ports on 127.0.0.1.
    pub meta_addrs: Vec<String>,
    pub store_addrs: Vec<String>,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        InitOptions {
            metas: 3,
            stores: 4,
            store_capacity_bytes: 0,
            snapshot_every_entries: defaults::snapshot_every_entries(),
            callback_lease_ms: defaults::callback_lease_ms(),
            ticket_lifetime_s: defaults::ticket_lifetime_s(),
            ticket_renew_s: defaults::ticket_renew_s(),
            scrub_mib_per_s: defaults::scrub_mib_per_s(),
            scrub_every_s: defaults::scrub_every_s(),
            repair_mib_per_s: defaults::repair_mib_per_s(),
            store_recent_cache_bytes: defaults::recent_cache_bytes(),
            meta_addrs: Vec::new(),
            store_addrs: Vec::new(),
        }
    }
}

/// Write a secret file readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    Ok(shoal_pki::write_atomic(path, text.as_bytes(), 0o600)?)
}

/// Create the cluster's ticket keys and the admin's key under DIR/secrets; returns their paths
/// and the public key for capabilities.
fn write_secrets(dir: &Path) -> Result<(PathBuf, PathBuf, String)> {
    use std::os::unix::fs::DirBuilderExt;
    let secrets = dir.join("secrets");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&secrets)?;
    let keys = shoal_auth::ClusterKeys::generate();
    let (keys_file, admin_file) = (secrets.join("cluster.keys"), secrets.join("admin.key"));
    write_secret(&keys_file, &keys.to_text())?;
    write_secret(&admin_file, &format!("{}\n", keys.admin_key().to_hex()))?;
    Ok((keys_file, admin_file, shoal_auth::hex(&keys.cap_public_key())))
}

/// Give a cluster made before tickets and revocation lists existed its keys and an empty
/// revocation list (run by `up`).
pub fn add_missing_secrets(dir: &Path, c: &ClusterFile) -> Result<()> {
    if !dir.join("tls").join(shoal_pki::CRL_FILE).exists() {
        crate::certs::publish_crl(dir)?;
        println!("wrote the certificate revocation list {}", dir.join("tls").join(shoal_pki::CRL_FILE).display());
    }
    if dir.join("secrets").join("cluster.keys").exists() {
        return Ok(());
    }
    let (keys_file, admin_file, cap_key) = write_secrets(dir)?;
    for s in &c.stores {
        let path = dir.join(format!("store-{}", s.id)).join("store.toml");
        let mut cfg: StoreConfig = read_toml(&path)?;
        cfg.capability_key = Some(cap_key.clone());
        write_toml(&path, &cfg)?;
    }
    for m in &c.metas {
        let path = dir.join(format!("meta-{}", m.id)).join("meta.toml");
        let mut cfg: MetaConfig = read_toml(&path)?;
        cfg.auth_keys = Some(keys_file.clone());
        write_toml(&path, &cfg)?;
    }
    let mut client: ClientConfig = read_toml(&dir.join("client.toml"))?;
    client.admin_key = Some(admin_file);
    write_toml(&dir.join("client.toml"), &client)?;
    println!("created ticket keys in {}", dir.join("secrets").display());
    Ok(())
}

/// Create the CA, certificates and configuration of a local cluster under `dir`.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<ClusterFile> {
    if dir.join("cluster.toml").exists() {
        bail!("{} already holds a cluster (cluster.toml exists)", dir.display());
    }
    std::fs::create_dir_all(dir.join("tls"))?;
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::create_dir_all(dir.join("pids"))?;
    let dir = dir.canonicalize()?;
    let tls_dir = dir.join("tls");
    let (keys_file, admin_file, cap_key) = write_secrets(&dir)?;
    let name = format!("shoal-{:08x}", rand_u32());
    let ca = Ca::generate(&name)?;
    shoal_pki::write_ca(&tls_dir, &ca)?;
    crate::certs::publish_crl(&dir)?;
    let addrs = |given: &[String], n: usize| -> Result<Vec<String>> {
        if given.is_empty() {
            return Ok(free_ports(n)?.into_iter().map(|p| format!("127.0.0.1:{p}")).collect());
        }
        for a in given {
            a.parse::<std::net::SocketAddr>().with_context(|| format!("{a:?} is not an address (host:port, host as an IP)"))?;
        }
        Ok(given.to_vec())
    };
    let meta_addrs = addrs(&opts.meta_addrs, opts.metas)?;
    let store_addrs = addrs(&opts.store_addrs, opts.stores)?;
    let metas: Vec<MetaPeer> = meta_addrs.into_iter().enumerate().map(|(i, addr)| MetaPeer { id: MetaNodeId(i as u64 + 1), addr }).collect();
    let stores: Vec<StoreEntry> = store_addrs.into_iter().enumerate().map(|(i, addr)| StoreEntry { id: StoreId(i as u64 + 1), addr }).collect();
    for m in &metas {
        let node = format!("meta-{}", m.id);
        let tls = shoal_pki::write_files(&tls_dir, &node, &ca.issue(Role::Meta, &node, &[])?)?;
        let data_dir = dir.join(&node);
        std::fs::create_dir_all(&data_dir)?;
        let cfg = MetaConfig {
            id: m.id,
            listen: m.addr.clone(),
            data_dir: data_dir.clone(),
            peers: metas.clone(),
            tls,
            cache_size_bytes: defaults::cache_size_bytes(),
            raft_heartbeat_ms: defaults::heartbeat_interval_ms(),
            election_timeout_min_ms: defaults::election_timeout_min_ms(),
            election_timeout_max_ms: defaults::election_timeout_max_ms(),
            session_lease_ms: defaults::session_lease_ms(),
            intent_lease_ms: defaults::intent_lease_ms(),
            store_dead_after_ms: defaults::store_dead_after_ms(),
            snapshot_every_entries: opts.snapshot_every_entries,
            callback_lease_ms: opts.callback_lease_ms,
            auth_keys: Some(keys_file.clone()),
            ticket_lifetime_s: opts.ticket_lifetime_s,
            ticket_renew_s: opts.ticket_renew_s,
            clock_skew_s: defaults::clock_skew_s(),
        };
        write_toml(&data_dir.join("meta.toml"), &cfg)?;
    }
    for s in &stores {
        let node = format!("store-{}", s.id);
        let tls = shoal_pki::write_files(&tls_dir, &node, &ca.issue(Role::Store, &node, &[])?)?;
        let data_dir = dir.join(&node);
        std::fs::create_dir_all(&data_dir)?;
        let cfg = StoreConfig {
            id: s.id,
            listen: s.addr.clone(),
            data_dir: data_dir.clone(),
            meta: metas.clone(),
            tls,
            capacity_bytes: opts.store_capacity_bytes,
            heartbeat_ms: defaults::store_heartbeat_ms(),
            capability_key: Some(cap_key.clone()),
            scrub_mib_per_s: opts.scrub_mib_per_s,
            scrub_every_s: opts.scrub_every_s,
            repair_mib_per_s: opts.repair_mib_per_s,
            recent_cache_bytes: opts.store_recent_cache_bytes,
        };
        write_toml(&data_dir.join("store.toml"), &cfg)?;
    }
    let tls = shoal_pki::write_files(&tls_dir, "client", &ca.issue(Role::Client, "client", &[])?)?;
    write_toml(&dir.join("client.toml"), &ClientConfig { meta: metas.clone(), tls, admin_key: Some(admin_file) })?;
    let cluster = ClusterFile { name, metas, stores };
    write_toml(&dir.join("cluster.toml"), &cluster)?;
    Ok(cluster)
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u32) ^ std::process::id().rotate_left(16)
}

/// One process of the local cluster.
#[derive(Clone, Debug)]
pub struct Proc {
    pub name: String,
    pub role: &'static str,
    pub config: PathBuf,
}

pub fn procs(dir: &Path, cluster: &ClusterFile) -> Vec<Proc> {
    let mut out = Vec::new();
    for m in &cluster.metas {
        let name = format!("meta-{}", m.id);
        out.push(Proc { config: dir.join(&name).join("meta.toml"), name, role: "meta" });
    }
    for s in &cluster.stores {
        let name = format!("store-{}", s.id);
        out.push(Proc { config: dir.join(&name).join("store.toml"), name, role: "store" });
    }
    out
}

fn pid_path(dir: &Path, p: &Proc) -> PathBuf {
    dir.join("pids").join(format!("{}.pid", p.name))
}

pub fn running_pid(dir: &Path, p: &Proc) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_path(dir, p)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // The pid could have been reused by another program.
    (is_alive(pid) && cmdline.contains("shoal")).then_some(pid)
}

/// Whether `pid` is a live process: not gone, and not a zombie (dead, waiting to be reaped).
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) S ...": the state follows the last ')' (comm may hold one).
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X' | 'x'))
}

/// Start every process not already running. `detach` puts them in their own session so they
/// outlive this command.
pub fn start_procs(dir: &Path, cluster: &ClusterFile, detach: bool) -> Result<Vec<std::process::Child>> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("find the shoal binary")?;
    let mut children = Vec::new();
    for p in procs(dir, cluster) {
        if running_pid(dir, &p).is_some() {
            continue;
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("logs").join(format!("{}.log", p.name)))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg(p.role).arg("--config").arg(&p.config).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if detach {
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().with_context(|| format!("start {}", p.name))?;
        std::fs::write(pid_path(dir, &p), child.id().to_string())?;
        children.push(child);
    }
    Ok(children)
}

/// Stop every process of the cluster: SIGTERM, then SIGKILL after `grace`.
pub fn stop_procs(dir: &Path, cluster: &ClusterFile, grace: Duration) -> Result<usize> {
    let mut pids = Vec::new();
    for p in procs(dir, cluster) {
        if let Some(pid) = running_pid(dir, &p) {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            pids.push((p, pid));
        }
    }
    let deadline = Instant::now() + grace;
    for (p, pid) in &pids {
        while is_alive(*pid) && Instant::now() < deadline {
            reap(*pid);
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_alive(*pid) {
            unsafe { libc::kill(*pid, libc::SIGKILL) };
            reap(*pid);
        }
        let _ = std::fs::remove_file(pid_path(dir, p));
    }
    Ok(pids.len())
}

fn reap(pid: i32) {
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}
