//! Versioned encoding of every record and message.
//!
//! Compatibility rule: postcard numbers enum variants by position and writes struct fields in
//! order, so a change that old data must survive only appends enum variants; anything else
//! (a new field, a reordering) needs a new `FORMAT_VERSION` and a decoder for the old one. The
//! format-1 fixture test (`crates/cli/tests/fixtures`) fails when this is broken.
//! An encoded value is one format-version byte
//! followed by the postcard encoding of the value. Decoding checks the version and never panics
//! on bad bytes; length fields inside postcard are bounded by the input length.

use serde::{de::DeserializeOwned, Serialize};

/// Version of wire messages and on-disk records written by this build.
pub const FORMAT_VERSION: u8 = 1;
/// Oldest version this build can still read.
pub const FORMAT_VERSION_MIN: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("unsupported format version {0} (this build reads {FORMAT_VERSION_MIN}..={FORMAT_VERSION})")]
    Version(u8),
    #[error("malformed record: {0}")]
    Malformed(String),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Serializing our own types into a Vec cannot fail.
    let body = postcard::to_allocvec(value).expect("postcard encoding of an owned value");
    out.extend_from_slice(&body);
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
        return Err(CodecError::Version(version));
    }
    postcard::from_bytes(body).map_err(|e| CodecError::Malformed(e.to_string()))
}
