//! The error vocabulary of the file system, shared by every service. Each variant is something a
//! caller acts on. It travels over the wire as is (serde), and is mapped to an errno in one place
//! (the FUSE crate) and to an exit code and message in another (the CLI).

use crate::ids::MetaNodeId;
use serde::{Deserialize, Serialize};

pub type FsResult<T> = Result<T, FsError>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("file name too long")]
    NameTooLong,
    #[error("stale file handle")]
    Stale,
    #[error("no space left on the cluster")]
    NoSpace,
    #[error("permission denied")]
    PermissionDenied,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("too many links")]
    TooManyLinks,
    #[error("cross-device link")]
    CrossDevice,
    #[error("not the metadata leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<MetaNodeId> },
    #[error("session expired; open a new session")]
    SessionExpired,
    #[error("write intent expired before commit")]
    IntentExpired,
    #[error("version conflict: file is at version {current}")]
    VersionConflict { current: u64 },
    #[error("blob not found on this server")]
    BlobNotFound,
    #[error("data corrupt: {0}")]
    Corrupt(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("fenced: request carries term {got}, server has seen {seen}")]
    Fenced { got: u64, seen: u64 },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("internal error: {0}")]
    Internal(String),
    // Added after format 1 (replies are stored in the reply table): append only.
    #[error("no such attribute")]
    NoAttribute,
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The request's ticket or authenticator was refused (the reason says which check failed).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The ticket ran out: get a new one (renew, or log in again).
    #[error("ticket expired; run `shoal login` again")]
    TicketExpired,
    /// The directory is delegated to another session until `until` (cluster time): the
    /// leader recalls it, then the request is sent again as a new one.
    #[error("directory delegated to session {holder:?}")]
    Delegated { dir: crate::ids::InodeId, holder: crate::ids::SessionId, until: crate::attr::TimeNs },
}

impl FsError {
    /// A stable code for logs and the CLI's `--json` output.
    pub fn code(&self) -> &'static str {
        match self {
            FsError::NotFound => "not_found",
            FsError::Exists => "exists",
            FsError::NotDir => "not_dir",
            FsError::IsDir => "is_dir",
            FsError::NotEmpty => "not_empty",
            FsError::Invalid(_) => "invalid",
            FsError::NameTooLong => "name_too_long",
            FsError::Stale => "stale",
            FsError::NoSpace => "no_space",
            FsError::PermissionDenied => "permission_denied",
            FsError::NotPermitted => "not_permitted",
            FsError::TooManyLinks => "too_many_links",
            FsError::CrossDevice => "cross_device",
            FsError::NotLeader { .. } => "not_leader",
            FsError::SessionExpired => "session_expired",
            FsError::IntentExpired => "intent_expired",
            FsError::VersionConflict { .. } => "version_conflict",
            FsError::BlobNotFound => "blob_not_found",
            FsError::Corrupt(_) => "corrupt",
            FsError::Unavailable(_) => "unavailable",
            FsError::Fenced { .. } => "fenced",
            FsError::Protocol(_) => "protocol",
            FsError::Io(_) => "io",
            FsError::Internal(_) => "internal",
            FsError::NoAttribute => "no_attribute",
            FsError::NotSupported(_) => "not_supported",
            FsError::Unauthenticated(_) => "unauthenticated",
            FsError::TicketExpired => "ticket_expired",
            FsError::Delegated { .. } => "delegated",
        }
    }

    /// Whether retrying the same request (after backoff, maybe elsewhere) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, FsError::NotLeader { .. } | FsError::Unavailable(_))
    }
}
