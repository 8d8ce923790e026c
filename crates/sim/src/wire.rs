//! Messages between simulated processes, over turmoil's TCP: one request and one reply per
//! connection, each a length-prefixed [`codec`] record. The real transport (mutual TLS, framed
//! payloads) has its own tests; what the simulation exercises is what the messages say and what
//! happens when they are lost, late or cut off.

use crate::meta::SimConfig;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use shoal_types::codec;
use shoal_types::ids::BlobId;
use shoal_types::meta_msg::{MetaRequest, MetaResponse};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::TcpStream;

/// Every simulated process listens on this port.
pub const PORT: u16 = 7000;
/// Largest message: a blob plus its envelope.
const MESSAGE_MAX: usize = 8 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    Append(AppendEntriesRequest<SimConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<SimConfig>),
    Meta(MetaRequest),
    Put {
        blob: BlobId,
        crc: u32,
        data: Vec<u8>,
    },
    Get {
        blob: BlobId,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Meta(MetaResponse),
    /// A storage server's answer; `Err` carries the reason.
    Put(Result<(), String>),
    Get(Result<Vec<u8>, String>),
}

async fn write_record(s: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    s.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    s.write_all(bytes).await?;
    s.flush().await
}

async fn read_record(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MESSAGE_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

fn bad(e: codec::CodecError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Send `msg` to `host` and wait at most `ttl` for the reply.
pub async fn call(host: &str, msg: &Msg, ttl: Duration) -> io::Result<Reply> {
    let exchange = async {
        let mut s = TcpStream::connect((host, PORT)).await?;
        write_record(&mut s, &codec::encode(msg)).await?;
        codec::decode(&read_record(&mut s).await?).map_err(bad)
    };
    match tokio::time::timeout(ttl, exchange).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{host} did not answer within {ttl:?}"),
        )),
    }
}

/// Accept connections on [`PORT`] and answer each request with `handle`.
pub async fn serve<H, F>(handle: H) -> io::Result<()>
where
    H: Fn(Msg) -> F + Clone + 'static,
    F: std::future::Future<Output = Reply> + 'static,
{
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        let handle = handle.clone();
        tokio::task::spawn_local(async move {
            let Ok(bytes) = read_record(&mut s).await else {
                return;
            };
            let Ok(msg) = codec::decode::<Msg>(&bytes) else {
                return;
            };
            let reply = handle(msg).await;
            let _ = write_record(&mut s, &codec::encode(&reply)).await;
        });
    }
}
