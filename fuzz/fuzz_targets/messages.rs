//! Every message and record decoded from the network or the disk: decoding never panics, and
//! whatever decodes encodes back to something that decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_types::codec;
use shoal_types::meta_msg::{MetaReply, MetaWireReq, MetaWireResp, UserRec};
use shoal_types::store_msg::{StoreRequest, StoreResponse};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = codec::decode::<T>(data) {
        let again: T = codec::decode(&codec::encode(&v)).expect("a decoded value re-encodes");
        assert_eq!(again, v);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<MetaWireReq>(data);
    round_trip::<MetaWireResp>(data);
    round_trip::<MetaReply>(data);
    round_trip::<StoreRequest>(data);
    round_trip::<StoreResponse>(data);
    round_trip::<UserRec>(data);
    round_trip::<shoal_auth::Grant>(data);
    // The metadata log's commands (Raft entries carry these).
    let _ = codec::decode::<shoal_meta_core::Command>(data);
});
