//! Shoal's shared vocabulary and API boundary: identifiers, attributes, file layouts, the wire
//! messages of every service, configuration files and error codes. This crate knows nothing about
//! tokio, disks or sockets; it is serde only, so every other crate (servers, client, simulator)
//! speaks the same types. Everything that is written to disk or sent over a socket carries a
//! format version (see [`codec`]).

pub mod attr;
pub mod codec;
pub mod config;
pub mod error;
pub mod ids;
pub mod layout;
pub mod meta_msg;
pub mod store_msg;

pub use attr::{Attr, Credentials, FileKind, SetAttr};
pub use error::{FsError, FsResult};
/// Byte strings in messages encoded as one run, not byte by byte (file bytes in commits).
pub use serde_bytes::ByteBuf;
pub use ids::*;
pub use layout::{BlobInfo, ChunkIdx, Policy, Slice, CHUNK_SIZE};
