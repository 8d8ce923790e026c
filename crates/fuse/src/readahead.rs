//! The read path of one open file: the file's layout is fetched once and kept until a callback
//! or a commit from this mount may have changed it, and a sequential reader gets read-ahead
//! that doubles with the stream (up to [`READAHEAD_MAX`]) and is fetched in the background
//! while the kernel consumes what came before.

use bytes::{Bytes, BytesMut};
use shoal_client::Client;
use shoal_types::layout::CHUNK_SIZE;
use shoal_types::meta_msg::{Layout, MetaOp, MetaReply};
use shoal_types::*;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// First read-ahead window of a sequential stream.
pub const READAHEAD_MIN: u64 = 4 << 20;
/// Largest read-ahead window (memory per open file being streamed: about twice this).
pub const READAHEAD_MAX: u64 = 16 << 20;
/// How far from the furthest point read so far a read may start and still continue the stream
/// (a few of the kernel's read-ahead windows, whose requests arrive in any order) ...
const STREAM_SLACK: u64 = 16 << 20;
/// ... if it is at least this large (the kernel reads ahead in requests of up to 1 MiB; a
/// random reader's small reads never count).
const STREAM_REQUEST_MIN: u64 = 128 << 10;
/// A read-ahead window is fetched in pieces of this size, all at once.
const FETCH_PIECE: u64 = 4 << 20;
/// Chunks of layout asked for at once (1 GiB of file), as many as an open comes with.
const LAYOUT_CHUNKS: u64 = shoal_types::meta_msg::OPEN_LAYOUT_CHUNKS;

/// What may have changed since a cache was filled: (callback generation, commits of this mount).
pub type Stamp = (u64, u64);

struct CachedLayout {
    first: u64,
    end: u64,
    layout: Arc<Layout>,
}

struct Prefetch {
    offset: u64,
    len: u64,
    task: JoinHandle<FsResult<Vec<Bytes>>>,
}

/// Bytes of a file from `start` on, in the pieces they were fetched in (never copied into
/// one buffer).
#[derive(Default)]
struct Run {
    start: u64,
    parts: Vec<Bytes>,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.parts.iter().map(|p| p.len() as u64).sum::<u64>()
    }

    /// Up to `len` bytes at `offset`, as far as the piece holding `offset` goes.
    fn get(&self, offset: u64, len: u64) -> Option<Bytes> {
        let mut at = self.start;
        if offset < at {
            return None;
        }
        for p in &self.parts {
            let end = at + p.len() as u64;
            if offset < end {
                let from = (offset - at) as usize;
                let to = (offset + len).min(end) - at;
                return Some(p.slice(from..to as usize));
            }
            at = end;
        }
        None
    }
}

#[derive(Default)]
pub struct ReadState {
    stamp: Stamp,
    layout: Option<CachedLayout>,
    buf: Run,
    next: u64,
    window: u64,
    prefetch: Option<Prefetch>,
    /// Open-snapshot: the layout of the version opened, kept whatever commits later.
    pinned: bool,
    /// The layout of the version opened, with every byte of the file, when the service keeps
    /// no open record for this open: read from once the file is gone (unlinked since).
    held: Option<Arc<Layout>>,
}

impl Drop for ReadState {
    fn drop(&mut self) {
        if let Some(p) = self.prefetch.take() {
            p.task.abort();
        }
    }
}

impl ReadState {
    fn reset(&mut self, stamp: Stamp) {
        if let Some(p) = self.prefetch.take() {
            p.task.abort();
        }
        self.stamp = stamp;
        self.layout = None;
        self.buf = Run::default();
        self.window = 0;
    }

    /// Keep reading the version current now, whatever commits later (the metadata service holds
    /// its blobs while the file is open).
    pub async fn pin(&mut self, client: &Client, handle: FileHandle) -> FsResult<()> {
        let layout = Arc::new(layout_for(client, handle, 0, u64::MAX).await?);
        self.layout = Some(CachedLayout { first: 0, end: u64::MAX, layout });
        self.pinned = true;
        Ok(())
    }

    /// Start from the layout of the first [`LAYOUT_CHUNKS`] chunks that came with the open
    /// ([`MetaOp::OpenRead`]), valid while `stamp` holds. `held`: it brings every byte of the
    /// file and no open record keeps them at the service, so it is kept for when the file is gone.
    pub fn seed(&mut self, stamp: Stamp, layout: Layout, held: bool) {
        self.reset(stamp);
        let layout = Arc::new(layout);
        if held {
            self.held = Some(layout.clone());
        }
        self.layout = Some(CachedLayout { first: 0, end: LAYOUT_CHUNKS, layout });
    }

    fn buffered(&self, offset: u64, len: u64) -> Option<Bytes> {
        self.buf.get(offset, len)
    }

    /// Whether the service holds an open record for this open (released at close): every open
    /// but one seeded with `held`, until it takes its record later.
    pub fn recorded(&self) -> bool {
        self.held.is_none()
    }

    fn file_size(&self) -> Option<u64> {
        self.layout.as_ref().map(|l| l.layout.attr.size)
    }
}

/// Whether a layout brings every byte of its file: a small file whose blobs the metadata
/// service holds (their bytes come with the reply), or an empty one.
pub fn holds_whole(l: &Layout) -> bool {
    let inline = |b: BlobId| l.blobs.iter().any(|loc| loc.blob == b && loc.inline.is_some());
    l.attr.kind == FileKind::File
        && l.attr.size <= shoal_types::meta_msg::INLINE_BYTES_MAX
        && l.chunks.iter().all(|(idx, slices)| *idx == 0 && slices.iter().all(|s| s.blob.is_none_or(inline)))
}

async fn layout_for(client: &Client, handle: FileHandle, first: u64, n: u64) -> FsResult<Layout> {
    match client.meta(MetaOp::GetLayout { handle, first_chunk: first, n_chunks: n }).await? {
        MetaReply::Layout(l) => Ok(l),
        other => Err(FsError::Protocol(format!("expected a layout, got {other:?}"))),
    }
}

/// A layout covering `[offset, offset + len)`, from the cache or fetched.
async fn covering(client: &Client, handle: FileHandle, st: &mut ReadState, offset: u64, len: u64) -> FsResult<Arc<Layout>> {
    let first = offset / CHUNK_SIZE;
    let last = (offset + len.max(1) - 1) / CHUNK_SIZE;
    if let Some(c) = &st.layout {
        if c.first <= first && last < c.end {
            return Ok(c.layout.clone());
        }
    }
    let n = (last - first + 1).max(LAYOUT_CHUNKS);
    let layout = match layout_for(client, handle, first, n).await {
        // Unlinked and freed since it was opened: the bytes it last read from are still here.
        Err(FsError::Stale) if st.held.is_some() => st.held.clone().expect("held"),
        // An open with no record at the service reads a newer version only if that too comes
        // whole; a version on storage servers needs the record first (nothing would keep its
        // blobs), and the file gone meanwhile reads as last held, never a mix.
        Ok(l) if st.held.is_some() => {
            if holds_whole(&l) {
                let l = Arc::new(l);
                st.held = Some(l.clone());
                l
            } else {
                match client.meta(MetaOp::OpenRead { handle }).await {
                    Ok(_) => {
                        st.held = None;
                        Arc::new(layout_for(client, handle, first, n).await?)
                    }
                    Err(FsError::Stale) => st.held.clone().expect("held"),
                    Err(e) => return Err(e),
                }
            }
        }
        other => Arc::new(other?),
    };
    st.layout = Some(CachedLayout { first, end: first + n, layout: layout.clone() });
    Ok(layout)
}

async fn fetch(client: &Client, layout: &Layout, offset: u64, len: u64, stream: bool) -> FsResult<Vec<Bytes>> {
    // A large window is fetched in pieces at once, spread over the copies.
    let pieces = (offset..offset + len).step_by(FETCH_PIECE as usize).map(|at| {
        let n = FETCH_PIECE.min(offset + len - at);
        async move {
            if stream {
                client.read_segments_streaming(layout, at, n).await
            } else {
                client.read_segments(layout, at, n).await
            }
        }
    });
    Ok(futures::future::try_join_all(pieces).await?.into_iter().flatten().collect())
}

/// Pieces as one buffer (a copy only when there are several).
fn joined(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().expect("one part"),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in &parts {
                out.extend_from_slice(p);
            }
            out.freeze()
        }
    }
}

/// `[offset, offset + len)` (a small file whole, up to `whole_file` bytes) through the cached
/// layout, fetched again if a blob it names is gone (garbage collected after a commit).
async fn fetch_current(client: &Arc<Client>, handle: FileHandle, st: &mut ReadState, offset: u64, len: u64, whole_file: u64) -> FsResult<Vec<Bytes>> {
    let layout = covering(client, handle, st, offset, len).await?;
    // A small file is fetched whole (and so cached whole) at its first read.
    let size = layout.attr.size;
    let len = if size <= whole_file { len.max(size.saturating_sub(offset)) } else { len };
    let stream = st.window > 0;
    match fetch(client, &layout, offset, len, stream).await {
        Err(FsError::BlobNotFound | FsError::Corrupt(_)) if !st.pinned => {
            st.layout = None;
            let layout = covering(client, handle, st, offset, len).await?;
            fetch(client, &layout, offset, len, stream).await
        }
        other => other,
    }
}

/// Refill the buffer at `offset` with at least `len` bytes (fewer at the end of the file): from
/// the read-ahead when it starts there, else fetched now.
async fn refill(client: &Arc<Client>, handle: FileHandle, st: &mut ReadState, offset: u64, mut len: u64, whole_file: u64) -> FsResult<()> {
    let prefetched = match st.prefetch.take() {
        // The read-ahead holds this offset: it becomes the buffer (the read goes on from it
        // for whatever lies past it).
        Some(p) if p.offset <= offset && offset < p.offset + p.len => {
            let start = p.offset;
            p.task.await.map_err(|e| FsError::Internal(e.to_string()))?.ok().map(|b| (start, b))
        }
        // Still ahead of this read (the kernel's requests arrive in any order): kept.
        Some(p) if p.offset > offset && p.offset - offset <= STREAM_SLACK => {
            // Fetched now: only up to where it starts.
            len = len.min(p.offset - offset);
            st.prefetch = Some(p);
            None
        }
        Some(p) => {
            p.task.abort();
            None
        }
        None => None,
    };
    st.buf = match prefetched.map(|(start, parts)| Run { start, parts }) {
        Some(run) if run.end() > offset => run,
        _ => Run { start: offset, parts: fetch_current(client, handle, st, offset, len, whole_file).await? },
    };
    Ok(())
}

/// Read `[offset, offset + size)` of an open file: all of it, or up to the end of the file (the
/// kernel takes a short read for the end).
pub async fn read(
    client: &Arc<Client>,
    handle: FileHandle,
    st: &mut ReadState,
    stamp: Stamp,
    offset: u64,
    size: u64,
    whole_file: u64,
) -> FsResult<Bytes> {
    if st.stamp != stamp && !st.pinned {
        st.reset(stamp);
    }
    // The kernel reads ahead itself, several requests at once, which reach here in any order:
    // a large read near the furthest point read so far continues the stream.
    let sequential = offset == st.next || (size >= STREAM_REQUEST_MIN && offset.abs_diff(st.next) <= STREAM_SLACK);
    st.window = if sequential { (st.window * 2).clamp(READAHEAD_MIN, READAHEAD_MAX) } else { 0 };
    if sequential && offset < st.buf.start {
        // Behind the stream's buffer (sent earlier, served later): on its own, from the block
        // cache where the stream has been, leaving the stream as it is.
        return fetch_current(client, handle, st, offset, size, 0).await.map(joined);
    }
    st.next = if sequential { st.next.max(offset + size) } else { offset + size };
    let end = offset + size;
    let mut parts: Vec<Bytes> = Vec::new();
    let mut pos = offset;
    while pos < end {
        if let Some(d) = st.buffered(pos, end - pos).filter(|d| !d.is_empty()) {
            pos += d.len() as u64;
            parts.push(d);
            continue;
        }
        refill(client, handle, st, pos, (end - pos).max(st.window), whole_file).await?;
        if st.buf.end() <= pos {
            break; // The end of the file.
        }
    }
    // Start fetching the next window while the kernel consumes this one.
    let buf_end = st.buf.end();
    let want_more = st.window > 0 && st.prefetch.is_none() && buf_end.saturating_sub(end) <= st.window;
    if want_more && st.file_size().is_some_and(|s| buf_end < s) {
        let layout = covering(client, handle, st, buf_end, st.window).await?;
        let (client, len) = (client.clone(), st.window);
        let task = tokio::spawn(async move { fetch(&client, &layout, buf_end, len, true).await });
        st.prefetch = Some(Prefetch { offset: buf_end, len, task });
    }
    Ok(joined(parts))
}
