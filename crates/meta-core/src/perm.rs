//! POSIX permission checks, from the identity the request carries.

use crate::records::InodeRec;
use shoal_types::{Credentials, FsError, FsResult};

pub const R: u32 = 4;
pub const W: u32 = 2;
pub const X: u32 = 1;

/// Check that `cred` may access `inode` for every bit in `want` (R, W, X).
pub fn check(inode: &InodeRec, cred: &Credentials, want: u32) -> FsResult<()> {
    if cred.uid == 0 {
        // Root passes read and write; execute needs some execute bit (or a directory).
        if want & X != 0 && inode.kind != shoal_types::FileKind::Dir && inode.mode & 0o111 == 0 {
            return Err(FsError::PermissionDenied);
        }
        return Ok(());
    }
    let bits = if cred.uid == inode.uid {
        (inode.mode >> 6) & 7
    } else if cred.in_group(inode.gid) {
        (inode.mode >> 3) & 7
    } else {
        inode.mode & 7
    };
    if bits & want == want {
        Ok(())
    } else {
        Err(FsError::PermissionDenied)
    }
}

/// Sticky directories: only the owner of the entry, of the directory, or root may remove or
/// rename an entry.
pub fn check_sticky(dir: &InodeRec, victim: &InodeRec, cred: &Credentials) -> FsResult<()> {
    if dir.mode & 0o1000 != 0 && cred.uid != 0 && cred.uid != dir.uid && cred.uid != victim.uid {
        return Err(FsError::NotPermitted);
    }
    Ok(())
}

/// Who may touch an extended attribute: `user.*` follows the file's read (get) or write (set)
/// permission, `trusted.*` and `security.*` are root's, `system.*` (ACLs) is not supported.
pub fn check_xattr(inode: &InodeRec, cred: &Credentials, name: &str, write: bool) -> FsResult<()> {
    if name.starts_with("user.") {
        if write && !matches!(inode.kind, shoal_types::FileKind::File | shoal_types::FileKind::Dir) {
            return Err(FsError::NotPermitted);
        }
        return check(inode, cred, if write { W } else { R });
    }
    if name.starts_with("trusted.") || name.starts_with("security.") {
        return if cred.uid == 0 { Ok(()) } else { Err(FsError::NotPermitted) };
    }
    Err(FsError::NotSupported(format!("extended attribute namespace of {name:?}")))
}
