//! Raft messages between metadata nodes, over the same framed mutual-TLS transport as clients.
//! The openraft message is encoded in the frame payload; the header names its kind.

use crate::TypeConfig;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Serialize};
use shoal_net::RpcClient;
use shoal_types::codec;
use shoal_types::meta_msg::{MetaWireReq, MetaWireResp, RaftRpc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Network {
    tls: Arc<rustls::ClientConfig>,
    clients: Arc<Mutex<HashMap<String, Arc<RpcClient>>>>,
}

impl Network {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Network {
        Network { tls, clients: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        let client = self
            .clients
            .lock()
            .expect("clients lock")
            .entry(node.addr.clone())
            .or_insert_with(|| Arc::new(RpcClient::new(node.addr.clone(), self.tls.clone(), 1, Duration::from_secs(5))))
            .clone();
        Peer { target, client }
    }
}

pub struct Peer {
    target: u64,
    client: Arc<RpcClient>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl Peer {
    async fn send<Req, Resp, E>(&self, kind: RaftRpc, req: &Req, ttl: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = codec::encode(req);
        let (resp, body): (MetaWireResp, _) = self
            .client
            .call_timeout(&MetaWireReq::Raft(kind), &payload, ttl)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match resp {
            MetaWireResp::Raft => {}
            other => {
                let e = std::io::Error::other(format!("peer refused Raft message: {other:?}"));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        }
        let result: Result<Resp, RaftError<u64, E>> =
            codec::decode(&body).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.send(RaftRpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.send(RaftRpc::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.send(RaftRpc::Vote, &rpc, option.hard_ttl()).await
    }
}
