//! Tickets, authenticators, grants and capabilities as an attacker would send them: every
//! check refuses or accepts, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_auth::*;

fuzz_target!(|data: &[u8]| {
    let keys = ClusterKeys { cluster: [1; 16], tgt: Key([2; 32]), meta: Key([3; 32]) };
    let now = 1_800_000_000_000_000_000;
    let _ = keys.open_ticket(TicketKind::Meta, data, now, false);
    let _ = keys.open_ticket(TicketKind::Tgt, data, now, true);
    let _ = open_grant(&Key([4; 32]), data);
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let (a, b) = data.split_at(split);
    let kdc = Kdc { keys: keys.clone(), life: Lifetimes { ticket_ns: 1 << 40, renew_ns: 1 << 41, skew_ns: 1 << 37 } };
    let mut replay = ReplayCache::new(now - (1 << 30), 1 << 37, 1024);
    let _ = kdc.verify(a, b, data, now, &mut replay);
    // With the record the server would look up for the TGT's principal, or none.
    let rec = shoal_types::meta_msg::UserRec {
        name: kdc.tgt_principal(a, now).unwrap_or_default(),
        uid: 1000,
        gid: 1000,
        groups: vec![],
        salt: vec![0; 16],
        kdf: KDF_DEFAULT,
        key: [5; 32],
    };
    let _ = kdc.service(a, b, Some(&rec), now, &mut replay);
    let _ = kdc.renew(a, b, None, now, &mut replay);
    let _ = kdc.login("alice", None, data, now, &mut replay);
    let verifier = CapVerifier::new(&keys.cap_public_key()).expect("public key");
    let cap = shoal_types::store_msg::Capability { body: a.to_vec(), sig: b.to_vec() };
    let _ = verifier.check(&cap, shoal_types::BlobId(1), READ, now);
});
