//! `shoal cert rotate` and `shoal cert revoke NAME`: certificates of the local cluster.
//!
//! Revoked serial numbers are kept in `DIR/tls/revoked.txt` (one `serial name` per line) and
//! published as the CA-signed list `DIR/tls/ca.crl`, which every process loads at start: a
//! peer presenting a revoked certificate fails the handshake. Both commands restart the local
//! cluster so that every process loads the new files (mounts are unmounted).

use crate::cluster::{self, ClusterFile};
use anyhow::{bail, Context, Result};
use shoal_pki::Role;
use std::path::Path;
use std::time::Duration;

fn role_of(name: &str) -> Option<Role> {
    if name.starts_with("meta-") {
        Some(Role::Meta)
    } else if name.starts_with("store-") {
        Some(Role::Store)
    } else if name == "client" {
        Some(Role::Client)
    } else {
        None
    }
}

/// Add the certificate `DIR/tls/NAME.crt` to the revocation list and rewrite `ca.crl`.
fn revoke_file(dir: &Path, name: &str) -> Result<String> {
    let tls = dir.join("tls");
    let cert = tls.join(format!("{name}.crt"));
    let pem = std::fs::read_to_string(&cert).with_context(|| format!("no certificate {}", cert.display()))?;
    let serial = shoal_pki::cert_serial(&pem)?;
    let list = tls.join("revoked.txt");
    let mut lines = std::fs::read_to_string(&list).unwrap_or_default();
    if !lines.lines().any(|l| l.split_whitespace().next() == Some(serial.as_str())) {
        lines.push_str(&format!("{serial} {name}\n"));
    }
    std::fs::write(&list, lines)?;
    publish_crl(dir)?;
    Ok(serial)
}

/// Write `DIR/tls/ca.crl`, signed by the CA, from `revoked.txt` (an empty list if none): every
/// cluster has one from `init` on, so a process never starts without a revocation list.
pub fn publish_crl(dir: &Path) -> Result<()> {
    let tls = dir.join("tls");
    let lines = std::fs::read_to_string(tls.join("revoked.txt")).unwrap_or_default();
    let serials: Vec<String> = lines.lines().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect();
    let ca = shoal_pki::read_ca(&tls)?;
    let crl = ca.revocation_list(&serials, serials.len() as u64)?;
    Ok(shoal_pki::write_atomic(&tls.join(shoal_pki::CRL_FILE), crl.as_bytes(), 0o644)?)
}

async fn restart(dir: &Path, c: &ClusterFile) -> Result<()> {
    crate::mount::stop_all(dir)?;
    cluster::stop_procs(dir, c, Duration::from_secs(10))?;
    crate::up(dir, true, None).await
}

/// New keys and certificates for every process of the local cluster and its clients; the old
/// certificates are revoked.
pub async fn rotate(dir: &Path) -> Result<()> {
    let c: ClusterFile = cluster::read_toml(&dir.join("cluster.toml"))?;
    let tls = dir.join("tls");
    let ca = shoal_pki::read_ca(&tls)?;
    let mut names: Vec<String> = c.metas.iter().map(|m| format!("meta-{}", m.id)).collect();
    names.extend(c.stores.iter().map(|s| format!("store-{}", s.id)));
    names.push("client".into());
    for name in &names {
        let role = role_of(name).expect("a process of this cluster");
        revoke_file(dir, name)?;
        shoal_pki::write_files(&tls, name, &ca.issue(role, name, &[])?)?;
    }
    println!("issued {} new certificates and revoked the old ones; restarting the cluster", names.len());
    restart(dir, &c).await
}

/// Revoke one certificate. A storage server or metadata node named is also removed from the
/// local cluster (it is not started again).
pub async fn revoke(dir: &Path, name: &str) -> Result<()> {
    if role_of(name).is_none() {
        bail!("{name:?}: name a certificate of this cluster (meta-N, store-N or client)");
    }
    let mut c: ClusterFile = cluster::read_toml(&dir.join("cluster.toml"))?;
    let serial = revoke_file(dir, name)?;
    let old = c.clone();
    c.stores.retain(|s| format!("store-{}", s.id) != name);
    c.metas.retain(|m| format!("meta-{}", m.id) != name);
    if c.stores.len() != old.stores.len() || c.metas.len() != old.metas.len() {
        cluster::write_toml(&dir.join("cluster.toml"), &c)?;
        cluster::stop_procs(dir, &old, Duration::from_secs(10))?;
        println!("removed {name} from the local cluster");
    }
    println!("revoked {name} (serial {serial}); restarting the cluster");
    restart(dir, &c).await
}
