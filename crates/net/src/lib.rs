//! Shoal's transport. Every connection is mutual TLS (certificates from the cluster CA, see
//! `shoal-pki`) carrying [`frame`]s: a fixed prefix, a versioned message header and a raw payload.
//! [`rpc`] multiplexes many concurrent requests over one connection, matched by request id, so
//! bulk data moves at close to the speed of the bare TLS stream.

pub mod frame;
pub mod rpc;

pub use rpc::{NetError, PeerInfo, RpcClient, Service};
