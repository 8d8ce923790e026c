use super::*;
use proptest::prelude::*;

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_800_000_000 * SEC;

fn kdc() -> Kdc {
    Kdc { keys: ClusterKeys::generate(), life: Lifetimes { ticket_ns: 3600 * SEC, renew_ns: 7 * 24 * 3600 * SEC, skew_ns: 120 * SEC } }
}

fn cache(start: i64) -> ReplayCache {
    ReplayCache::new(start, 120 * SEC, REPLAY_CACHE_MAX)
}

/// Log in as `rec` with `password` at `now`; returns the grant the client opened.
fn login(kdc: &Kdc, rec: &UserRec, password: &[u8], now: i64, rc: &mut ReplayCache) -> Result<Grant, AuthError> {
    let (salt, kdf) = kdc.challenge(&rec.name, Some(rec));
    let key = password_key(password, &salt, &kdf)?;
    let (sealed, _) = kdc.login(&rec.name, Some(rec), &login_proof(&key, (now / 1000) as u64), now, rc)?;
    open_grant(&key, &sealed)
}

fn service(kdc: &Kdc, tgt: &Grant, rec: &UserRec, now: i64, rc: &mut ReplayCache) -> Grant {
    let auth = authenticator(&tgt.session_key, (now / 1000) as u64, digest(b"service"));
    open_grant(&tgt.session_key, &kdc.service(&tgt.ticket, &auth, Some(rec), now, rc).unwrap()).unwrap()
}

#[test]
fn login_service_ticket_and_request_then_each_forgery_is_refused() {
    let kdc = kdc();
    let mut rc = cache(T0 - SEC);
    let alice = new_user("alice", 1000, 1000, vec![20], b"correct horse").unwrap();
    assert_eq!(login(&kdc, &alice, b"wrong horse", T0, &mut rc).unwrap_err(), AuthError::BadLogin);
    let tgt = login(&kdc, &alice, b"correct horse", T0, &mut rc).unwrap();
    assert_eq!((tgt.identity.uid, tgt.identity.trusted), (1000, false));
    let st = service(&kdc, &tgt, &alice, T0 + 1000, &mut rc);
    let req = b"encoded request";
    let t = (T0 / 1000) as u64 + 10;
    let auth = authenticator(&st.session_key, t, digest(req));
    assert_eq!(kdc.verify(&st.ticket, &auth, req, T0 + 20_000, &mut rc).unwrap().principal, "alice");
    assert_eq!(kdc.verify(&st.ticket, &auth, req, T0 + 30_000, &mut rc).unwrap_err(), AuthError::Replayed);
    // The same authenticator with another request.
    let auth2 = authenticator(&st.session_key, t + 1, digest(req));
    assert_eq!(kdc.verify(&st.ticket, &auth2, b"another request", T0 + 30_000, &mut rc).unwrap_err(), AuthError::WrongRequest);
    // A TGT where a service ticket is expected, and the reverse.
    let auth3 = authenticator(&tgt.session_key, t + 2, digest(req));
    assert!(matches!(kdc.verify(&tgt.ticket, &auth3, req, T0 + 30_000, &mut rc), Err(AuthError::WrongKind(_))));
    // Expired.
    let later = T0 + 3601 * SEC;
    let auth4 = authenticator(&st.session_key, (later / 1000) as u64, digest(req));
    assert_eq!(kdc.verify(&st.ticket, &auth4, req, later, &mut rc).unwrap_err(), AuthError::Expired);
    // Another cluster's ticket.
    let other = self::kdc();
    let auth5 = authenticator(&st.session_key, t + 3, digest(req));
    assert_eq!(other.verify(&st.ticket, &auth5, req, T0 + 30_000, &mut rc).unwrap_err(), AuthError::OtherCluster);
    // An authenticator sealed with a guessed key.
    let auth6 = authenticator(&Key::random(), t + 4, digest(req));
    assert_eq!(kdc.verify(&st.ticket, &auth6, req, T0 + 30_000, &mut rc).unwrap_err(), AuthError::Forged);
}

#[test]
fn key_files_round_trip() {
    let k = ClusterKeys::generate();
    assert_eq!(ClusterKeys::from_text(&k.to_text()).unwrap(), k);
    assert!(ClusterKeys::from_text("cluster = 00\n").is_err());
}

#[test]
fn unknown_users_get_a_stable_decoy_salt_and_fail_like_a_wrong_password() {
    let kdc = kdc();
    let (s1, _) = kdc.challenge("nobody-here", None);
    let (s2, _) = kdc.challenge("nobody-here", None);
    let (s3, _) = kdc.challenge("someone-else", None);
    assert_eq!(s1, s2);
    assert_ne!(s1, s3);
    let mut rc = cache(T0 - SEC);
    let key = password_key(b"pw", &s1, &KDF_DEFAULT).unwrap();
    let err = kdc.login("nobody-here", None, &login_proof(&key, (T0 / 1000) as u64), T0, &mut rc).unwrap_err();
    assert_eq!(err, AuthError::BadLogin);
}

#[test]
fn the_admin_logs_in_with_the_derived_key_and_is_trusted() {
    let kdc = kdc();
    let mut rc = cache(T0 - SEC);
    let key = kdc.keys.admin_key();
    let (sealed, _) = kdc.login(ADMIN, None, &login_proof(&key, (T0 / 1000) as u64), T0, &mut rc).unwrap();
    let g = open_grant(&key, &sealed).unwrap();
    assert_eq!((g.identity.uid, g.identity.trusted), (0, true));
    // A user record named "admin" cannot take over the admin's key.
    let fake = new_user(ADMIN, 0, 0, vec![], b"pw").unwrap();
    let k = password_key(b"pw", &fake.salt, &fake.kdf).unwrap();
    assert_eq!(kdc.login(ADMIN, Some(&fake), &login_proof(&k, (T0 / 1000) as u64 + 1), T0, &mut rc).unwrap_err(), AuthError::BadLogin);
}

#[test]
fn login_proofs_and_authenticators_are_dated() {
    let kdc = kdc();
    let start = T0;
    let mut rc = cache(start);
    let alice = new_user("alice", 1000, 1000, vec![], b"pw").unwrap();
    let key = password_key(b"pw", &alice.salt, &alice.kdf).unwrap();
    let proof = login_proof(&key, (T0 / 1000) as u64 + 5);
    kdc.login("alice", Some(&alice), &proof, T0 + SEC, &mut rc).unwrap();
    assert_eq!(kdc.login("alice", Some(&alice), &proof, T0 + SEC, &mut rc).unwrap_err(), AuthError::Replayed);
    // Captured before a restart, replayed after it (within the skew): refused.
    let old = login_proof(&key, (T0 / 1000) as u64 - 1_000_000);
    assert_eq!(kdc.login("alice", Some(&alice), &old, T0 + SEC, &mut rc).unwrap_err(), AuthError::BeforeStart);
    // Too far from the server's clock.
    let future = login_proof(&key, (T0 / 1000) as u64 + 600_000_000);
    assert_eq!(kdc.login("alice", Some(&alice), &future, T0 + SEC, &mut rc).unwrap_err(), AuthError::Skew);
}

#[test]
fn renewal_extends_a_tgt_up_to_its_limit_only() {
    let mut kdc = kdc();
    kdc.life.renew_ns = 2 * 3600 * SEC;
    let mut rc = cache(T0 - SEC);
    let alice = new_user("alice", 1000, 1000, vec![], b"pw").unwrap();
    let tgt = login(&kdc, &alice, b"pw", T0, &mut rc).unwrap();
    let now = T0 + 3599 * SEC;
    let mut rc = cache(now - SEC);
    let auth = authenticator(&tgt.session_key, (now / 1000) as u64, digest(b"renew"));
    let renewed = open_grant(&tgt.session_key, &kdc.renew(&tgt.ticket, &auth, Some(&alice), now, &mut rc).unwrap()).unwrap();
    assert_eq!(renewed.expires_ns, now + 3600 * SEC, "another lifetime");
    let now = T0 + 5000 * SEC;
    let auth = authenticator(&renewed.session_key, (now / 1000) as u64, digest(b"renew"));
    let renewed = open_grant(&renewed.session_key, &kdc.renew(&renewed.ticket, &auth, Some(&alice), now, &mut rc).unwrap()).unwrap();
    assert_eq!(renewed.expires_ns, T0 + 2 * 3600 * SEC, "capped by the renewal limit");
    let past = T0 + 2 * 3600 * SEC + 1;
    let mut rc = cache(past - SEC);
    let auth = authenticator(&renewed.session_key, (past / 1000) as u64, digest(b"renew"));
    assert_eq!(kdc.renew(&renewed.ticket, &auth, Some(&alice), past, &mut rc).unwrap_err(), AuthError::NotRenewable);
}

#[test]
fn a_removed_user_gets_no_new_ticket_and_a_changed_one_gets_the_new_ids() {
    let kdc = kdc();
    let mut rc = cache(T0 - SEC);
    let alice = new_user("alice", 1000, 1000, vec![], b"pw").unwrap();
    let tgt = login(&kdc, &alice, b"pw", T0, &mut rc).unwrap();
    assert_eq!(kdc.tgt_principal(&tgt.ticket, T0).unwrap(), "alice");
    let now = T0 + SEC;
    let auth = authenticator(&tgt.session_key, (now / 1000) as u64, digest(b"service"));
    assert_eq!(kdc.service(&tgt.ticket, &auth, None, now, &mut rc).unwrap_err(), AuthError::UserRemoved);
    let auth = authenticator(&tgt.session_key, (now / 1000) as u64 + 1, digest(b"renew"));
    assert_eq!(kdc.renew(&tgt.ticket, &auth, None, now, &mut rc).unwrap_err(), AuthError::UserRemoved);
    // Another user's record does not stand in for the holder's.
    let bob = new_user("bob", 1001, 1001, vec![], b"pw").unwrap();
    let auth = authenticator(&tgt.session_key, (now / 1000) as u64 + 2, digest(b"service"));
    assert_eq!(kdc.service(&tgt.ticket, &auth, Some(&bob), now, &mut rc).unwrap_err(), AuthError::UserRemoved);
    let moved = UserRec { uid: 2000, groups: vec![7], ..alice.clone() };
    let st = service(&kdc, &tgt, &moved, now + SEC, &mut rc);
    assert_eq!((st.identity.uid, st.identity.groups.clone()), (2000, vec![7]));
}

#[test]
fn a_full_replay_cache_refuses_what_it_forgot() {
    let mut rc = ReplayCache::new(T0, 120 * SEC, 3);
    let base = (T0 / 1000) as u64;
    for i in 1..=4 {
        rc.check(7, base + i, T0 + SEC).unwrap();
    }
    assert_eq!(rc.len(), 3);
    assert_eq!(rc.check(7, base + 1, T0 + SEC).unwrap_err(), AuthError::TooOld);
    assert_eq!(rc.check(7, base + 4, T0 + SEC).unwrap_err(), AuthError::Replayed);
    rc.check(7, base + 5, T0 + SEC).unwrap();
}

proptest! {
    #[test]
    fn any_altered_byte_of_a_ticket_is_refused(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let kdc = kdc();
        let g = kdc.keys.issue(TicketKind::Meta, Identity { principal: "p".into(), uid: 1, gid: 1, groups: vec![], trusted: false }, T0, T0 + SEC, T0 + SEC);
        let mut t = g.ticket.clone();
        let i = pos.index(t.len());
        t[i] ^= flip;
        prop_assert!(kdc.keys.open_ticket(TicketKind::Meta, &t, T0, false).is_err());
    }

    #[test]
    fn the_replay_cache_accepts_each_pair_once(pairs in prop::collection::vec((0u64..4, 0u64..50), 1..200)) {
        let mut rc = ReplayCache::new(T0, 120 * SEC, REPLAY_CACHE_MAX);
        let mut seen = std::collections::HashSet::new();
        let base = (T0 / 1000) as u64;
        for (tag, t) in pairs {
            let fresh = seen.insert((tag, t));
            prop_assert_eq!(rc.check(tag, base + t, T0).is_ok(), fresh);
        }
    }
}

#[test]
fn capabilities_grant_only_their_blobs_rights_and_time() {
    use shoal_types::BlobId;
    let keys = ClusterKeys::generate();
    let v = CapVerifier::new(&keys.cap_public_key()).unwrap();
    let cap = keys.sign_capability(READ, [BlobId(7), BlobId(3)], T0 + SEC);
    v.check(&cap, BlobId(3), READ, T0).unwrap();
    v.check(&cap, BlobId(7), READ, T0).unwrap();
    assert!(matches!(v.check(&cap, BlobId(4), READ, T0), Err(AuthError::NotGranted(_))));
    assert!(matches!(v.check(&cap, BlobId(3), WRITE, T0), Err(AuthError::NotGranted(_))));
    assert_eq!(v.check(&cap, BlobId(3), READ, T0 + SEC), Err(AuthError::CapabilityExpired));
    // Altered, or signed by another cluster.
    let mut bad = cap.clone();
    let last = bad.body.len() - 1;
    bad.body[last] ^= 1;
    assert_eq!(v.check(&bad, BlobId(3), READ, T0), Err(AuthError::Forged));
    let other = ClusterKeys::generate().sign_capability(READ, [BlobId(3)], T0 + SEC);
    assert_eq!(v.check(&other, BlobId(3), READ, T0), Err(AuthError::Forged));
}
