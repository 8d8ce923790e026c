//! Writing certificates and keys to disk, and reading the CA back.

use crate::{Ca, IssuedCert, PkiError, Result, TlsFiles};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

/// Where [`write_ca`] put the CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `dir/ca.crt` (mode 0644) and `dir/ca.key` (mode 0600), creating `dir` if needed.
pub fn write_ca(dir: &Path, ca: &Ca) -> Result<CaFiles> {
    let files = CaFiles {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    write_atomic(&files.cert, ca.cert_pem().as_bytes(), 0o644)?;
    write_atomic(&files.key, ca.key_pem().as_bytes(), 0o600)?;
    Ok(files)
}

/// Reads back what [`write_ca`] wrote in `dir`.
pub fn read_ca(dir: &Path) -> Result<Ca> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let cert_pem = read_to_string(&cert_path)?;
    let key_pem = read_to_string(&key_path)?;
    Ca::load_from(
        &cert_pem,
        &cert_path.display().to_string(),
        &key_pem,
        &key_path.display().to_string(),
    )
}

/// Writes `dir/<stem>.crt` (mode 0644) and `dir/<stem>.key` (mode 0600), creating `dir` if
/// needed. The returned [`TlsFiles`] names `dir/ca.crt` as the CA certificate, where
/// [`write_ca`] puts it; callers that keep the CA elsewhere overwrite `ca_cert`.
pub fn write_files(dir: &Path, stem: &str, cert: &IssuedCert) -> Result<TlsFiles> {
    let files = TlsFiles {
        ca_cert: dir.join(CA_CERT_FILE),
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    write_atomic(&files.cert, cert.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&files.key, cert.key_pem.as_bytes(), 0o600)?;
    Ok(files)
}

pub(crate) fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes through a temporary file created with `mode` and renamed over `path`, so a key is never
/// readable by others, not even for a moment, and a crash leaves the old file or the new one.
/// Every secret and certificate file of a cluster is written this way.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp_path = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp_path);

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp_path)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp_path, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result.map_err(err)
}
