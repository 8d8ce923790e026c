//! The frame: the unit every Shoal connection carries.
//!
//! ```text
//! offset size field
//!      0    2 magic "SH"
//!      2    1 frame format version (1)
//!      3    1 kind: 0 request, 1 response
//!      4    8 request id (big-endian), echoed by the response
//!     12    4 header length (big-endian), at most HEADER_LEN_MAX
//!     16    4 payload length (big-endian), at most PAYLOAD_LEN_MAX
//!     20    . header: a versioned message (shoal_types::codec)
//!      .    . payload: raw bytes (blob data), never passed through the serializer
//! ```
//! TLS protects integrity, so frames carry no checksum of their own; blob data carries its own
//! end-to-end CRC32C inside the messages.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: [u8; 2] = *b"SH";
pub const FRAME_VERSION: u8 = 1;
pub const PREFIX_LEN: usize = 20;
pub const HEADER_LEN_MAX: u32 = 16 << 20;
pub const PAYLOAD_LEN_MAX: u32 = (64 << 20) + (1 << 20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request = 0,
    Response = 1,
}

#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub header: Bytes,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("bad magic {0:02x?}: not a Shoal peer")]
    BadMagic([u8; 2]),
    #[error("unsupported frame version {0}")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("{what} length {len} exceeds the limit {max}")]
    TooLong { what: &'static str, len: u32, max: u32 },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Read one frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut prefix = [0u8; PREFIX_LEN];
    // Distinguish a clean close (no byte of a new frame) from a truncated frame.
    let n = r.read(&mut prefix).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut prefix[n..]).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(e),
    })?;
    if prefix[0..2] != MAGIC {
        return Err(FrameError::BadMagic([prefix[0], prefix[1]]));
    }
    if prefix[2] != FRAME_VERSION {
        return Err(FrameError::BadVersion(prefix[2]));
    }
    let kind = match prefix[3] {
        0 => Kind::Request,
        1 => Kind::Response,
        k => return Err(FrameError::BadKind(k)),
    };
    let id = u64::from_be_bytes(prefix[4..12].try_into().expect("8 bytes"));
    let header_len = u32::from_be_bytes(prefix[12..16].try_into().expect("4 bytes"));
    let payload_len = u32::from_be_bytes(prefix[16..20].try_into().expect("4 bytes"));
    if header_len > HEADER_LEN_MAX {
        return Err(FrameError::TooLong { what: "header", len: header_len, max: HEADER_LEN_MAX });
    }
    if payload_len > PAYLOAD_LEN_MAX {
        return Err(FrameError::TooLong { what: "payload", len: payload_len, max: PAYLOAD_LEN_MAX });
    }
    let header = read_exact_bytes(r, header_len as usize).await?;
    let payload = read_exact_bytes(r, payload_len as usize).await?;
    Ok(Some(Frame { kind, id, header, payload }))
}

async fn read_exact_bytes<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Bytes, FrameError> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // Read into uninitialized capacity (no memset of a buffer about to be overwritten), never
    // past this frame.
    let mut buf = BytesMut::with_capacity(len);
    let mut limited = r.take(len as u64);
    while buf.len() < len {
        if limited.read_buf(&mut buf).await? == 0 {
            return Err(FrameError::Closed);
        }
    }
    Ok(buf.freeze())
}

/// Write one frame. The caller flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    id: u64,
    header: &[u8],
    payload: &[u8],
) -> Result<(), FrameError> {
    assert!(header.len() as u64 <= HEADER_LEN_MAX as u64, "header too long");
    assert!(payload.len() as u64 <= PAYLOAD_LEN_MAX as u64, "payload too long");
    let mut prefix = Vec::with_capacity(PREFIX_LEN + header.len());
    prefix.extend_from_slice(&MAGIC);
    prefix.push(FRAME_VERSION);
    prefix.push(kind as u8);
    prefix.extend_from_slice(&id.to_be_bytes());
    prefix.extend_from_slice(&(header.len() as u32).to_be_bytes());
    prefix.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    prefix.extend_from_slice(header);
    w.write_all(&prefix).await?;
    if !payload.is_empty() {
        w.write_all(payload).await?;
    }
    Ok(())
}
