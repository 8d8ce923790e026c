//! Tickets, Kerberos style, with no I/O: the metadata service is the key distribution centre
//! (KDC), clients prove who they are without ever sending a password, and every request carries
//! a fresh authenticator that a replay cache refuses to see twice.
//!
//! The exchanges (types in `shoal_types::meta_msg`):
//!
//! 1. **Challenge.** The client names a user and gets the salt and argon2 parameters of that
//!    user's key (an unknown user gets a made-up salt, the same every time, so the answer does
//!    not tell who exists).
//! 2. **Login.** The client derives the key from the password and sends a *proof*: the time and
//!    a nonce sealed with that key. The KDC opens it with the stored key (a wrong password fails
//!    here), refuses an old or replayed proof, and answers with a ticket-granting ticket (TGT,
//!    sealed with the KDC's own key, unreadable to the client) and, sealed with the user's key,
//!    the TGT's session key.
//! 3. **Service ticket.** With the TGT and an authenticator sealed with its session key, the
//!    client gets a ticket for the metadata service, with a second session key.
//! 4. **Requests.** Each request carries the service ticket and an authenticator: the time in
//!    microseconds (strictly increasing per client) and a digest of the request, sealed with the
//!    service session key. The server refuses a ticket that is expired, from another cluster or
//!    altered, an authenticator outside the allowed clock skew or dated before the server
//!    started, and any (ticket, time) pair it has seen.
//!
//! Sealing is XChaCha20-Poly1305 with a random nonce and the purpose of the box as associated
//! data, so a box made for one use cannot be passed off as another.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use shoal_types::meta_msg::{KdfParams, UserRec};

mod capability;
mod replay;
pub use capability::{CapBody, CapVerifier, READ, WRITE};
pub use replay::{ReplayCache, REPLAY_CACHE_MAX};

#[cfg(test)]
mod tests;

/// A 256-bit secret key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn random() -> Key {
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        Key(k)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Result<Key, AuthError> {
        let b = unhex(s.trim()).ok_or(AuthError::Malformed("a key must be 64 hex digits"))?;
        Ok(Key(b.try_into().map_err(|_| AuthError::Malformed("a key must be 64 hex digits"))?))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("wrong password or unknown user")]
    BadLogin,
    #[error("ticket expired")]
    Expired,
    #[error("ticket was issued by another cluster")]
    OtherCluster,
    #[error("ticket or authenticator was altered or forged")]
    Forged,
    #[error("request replayed: this authenticator was already used")]
    Replayed,
    #[error("authenticator is outside the allowed clock skew (check the clocks)")]
    Skew,
    #[error("authenticator is dated before this server started (a replay from before a restart)")]
    BeforeStart,
    #[error("authenticator is older than the replay cache remembers; send a fresh one")]
    TooOld,
    #[error("authenticator does not match the request it came with")]
    WrongRequest,
    #[error("ticket can no longer be renewed; log in again")]
    NotRenewable,
    #[error("the user this ticket was issued to no longer exists")]
    UserRemoved,
    #[error("capability expired")]
    CapabilityExpired,
    #[error("{0}")]
    NotGranted(&'static str),
    #[error("wrong kind of ticket: {0}")]
    WrongKind(&'static str),
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// Recommended argon2id parameters (19 MiB, 2 passes, 1 lane).
pub const KDF_DEFAULT: KdfParams = KdfParams { memory_kib: 19 * 1024, iterations: 2, lanes: 1 };
/// Bytes of salt per user.
pub const SALT_BYTES: usize = 16;

/// Derive a user's key from the password (argon2id).
pub fn password_key(password: &[u8], salt: &[u8], p: &KdfParams) -> Result<Key, AuthError> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.lanes, Some(32)).map_err(|e| AuthError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon.hash_password_into(password, salt, &mut out).map_err(|e| AuthError::Kdf(e.to_string()))?;
    Ok(Key(out))
}

/// A new user's record: a random salt and the key derived from `password`.
pub fn new_user(name: &str, uid: u32, gid: u32, groups: Vec<u32>, password: &[u8]) -> Result<UserRec, AuthError> {
    let mut salt = vec![0u8; SALT_BYTES];
    rand::thread_rng().fill_bytes(&mut salt);
    let key = password_key(password, &salt, &KDF_DEFAULT)?;
    Ok(UserRec { name: name.into(), uid, gid, groups, salt, kdf: KDF_DEFAULT, key: key.0 })
}

const NONCE_BYTES: usize = 24;

fn seal(key: &Key, purpose: &str, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let body = cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: purpose.as_bytes() }).expect("sealing a short message");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&body);
    out
}

fn open(key: &Key, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
    if sealed.len() < NONCE_BYTES + 16 {
        return Err(AuthError::Forged);
    }
    let (nonce, body) = sealed.split_at(NONCE_BYTES);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: purpose.as_bytes() }).map_err(|_| AuthError::Forged)
}

fn seal_value<T: Serialize>(key: &Key, purpose: &str, value: &T) -> Vec<u8> {
    seal(key, purpose, &postcard::to_allocvec(value).expect("encoding an owned value"))
}

fn open_value<T: DeserializeOwned>(key: &Key, purpose: &str, sealed: &[u8]) -> Result<T, AuthError> {
    postcard::from_bytes(&open(key, purpose, sealed)?).map_err(|_| AuthError::Malformed("sealed value"))
}

const PURPOSE_PROOF: &str = "shoal login proof v1";
const PURPOSE_TGT: &str = "shoal ticket-granting ticket v1";
const PURPOSE_META: &str = "shoal metadata ticket v1";
const PURPOSE_GRANT: &str = "shoal ticket grant v1";
const PURPOSE_AUTH: &str = "shoal authenticator v1";

/// Who a ticket speaks for. `trusted`: the cluster's admin, whose requests may act for any
/// local user of a machine it mounts on (a trusted host); everyone else acts as themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub principal: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub trusted: bool,
}

/// The name of the cluster's admin principal (uid 0, trusted).
pub const ADMIN: &str = "admin";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TicketKind {
    Tgt,
    Meta,
}

/// What a ticket says, readable only with the key of the service it is for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TicketBody {
    pub id: u64,
    pub identity: Identity,
    pub session_key: Key,
    pub issued_ns: i64,
    pub expires_ns: i64,
    pub renew_until_ns: i64,
}

#[derive(Serialize, Deserialize)]
struct TicketWire {
    cluster: [u8; 16],
    kind: TicketKind,
    sealed: Vec<u8>,
}

/// What the client learns with a ticket (sealed with the user's key or a session key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub ticket: Vec<u8>,
    pub session_key: Key,
    pub identity: Identity,
    pub expires_ns: i64,
    pub renew_until_ns: i64,
}

#[derive(Serialize, Deserialize)]
struct Proof {
    time_us: u64,
    nonce: u64,
}

#[derive(Serialize, Deserialize)]
struct AuthenticatorBody {
    time_us: u64,
    digest: [u8; 16],
}

/// The digest an authenticator binds: the first 16 bytes of BLAKE3 of the encoded request.
pub fn digest(request: &[u8]) -> [u8; 16] {
    blake3::hash(request).as_bytes()[..16].try_into().expect("16 of 32 bytes")
}

/// A login proof for the KDC: `time_us` sealed with the user's key.
pub fn login_proof(user_key: &Key, time_us: u64) -> Vec<u8> {
    seal_value(user_key, PURPOSE_PROOF, &Proof { time_us, nonce: rand::thread_rng().next_u64() })
}

/// Open what the KDC sealed for the client (with the user's key after a login, with the TGT's
/// session key after a service or renewal exchange).
pub fn open_grant(key: &Key, sealed: &[u8]) -> Result<Grant, AuthError> {
    open_value(key, PURPOSE_GRANT, sealed)
}

/// An authenticator for one request.
pub fn authenticator(session_key: &Key, time_us: u64, digest: [u8; 16]) -> Vec<u8> {
    seal_value(session_key, PURPOSE_AUTH, &AuthenticatorBody { time_us, digest })
}

/// The cluster's secrets, known to the metadata nodes only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterKeys {
    /// Names the cluster in every ticket (not secret).
    pub cluster: [u8; 16],
    /// Seals ticket-granting tickets.
    pub tgt: Key,
    /// Seals tickets for the metadata service.
    pub meta: Key,
}

/// Ticket lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub ticket_ns: i64,
    pub renew_ns: i64,
    /// Clock difference tolerated between a client and a server.
    pub skew_ns: i64,
}

impl ClusterKeys {
    pub fn generate() -> ClusterKeys {
        let mut cluster = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut cluster);
        ClusterKeys { cluster, tgt: Key::random(), meta: Key::random() }
    }

    /// The key file's text: one `name = hex` line per value.
    pub fn to_text(&self) -> String {
        format!("# Shoal cluster ticket keys: secret, for the metadata nodes only.\ncluster = {}\ntgt = {}\nmeta = {}\n", hex(&self.cluster), self.tgt.to_hex(), self.meta.to_hex())
    }

    pub fn from_text(text: &str) -> Result<ClusterKeys, AuthError> {
        let field = |name: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
                .ok_or(AuthError::Malformed("key file lacks a field"))
        };
        let cluster = unhex(&field("cluster")?).and_then(|b| b.try_into().ok()).ok_or(AuthError::Malformed("cluster id must be 32 hex digits"))?;
        Ok(ClusterKeys { cluster, tgt: Key::from_hex(&field("tgt")?)?, meta: Key::from_hex(&field("meta")?)? })
    }

    /// The admin principal's key, derived from the cluster's secrets.
    pub fn admin_key(&self) -> Key {
        Key(blake3::keyed_hash(&self.tgt.0, b"shoal admin principal key v1").into())
    }

    fn key_of(&self, kind: TicketKind) -> (&Key, &'static str) {
        match kind {
            TicketKind::Tgt => (&self.tgt, PURPOSE_TGT),
            TicketKind::Meta => (&self.meta, PURPOSE_META),
        }
    }

    fn issue(&self, kind: TicketKind, identity: Identity, now_ns: i64, expires_ns: i64, renew_until_ns: i64) -> Grant {
        let (key, purpose) = self.key_of(kind);
        let body = TicketBody {
            id: rand::thread_rng().next_u64(),
            identity: identity.clone(),
            session_key: Key::random(),
            issued_ns: now_ns,
            expires_ns,
            renew_until_ns,
        };
        let sealed = seal_value(key, purpose, &body);
        let ticket = postcard::to_allocvec(&TicketWire { cluster: self.cluster, kind, sealed }).expect("encoding a ticket");
        Grant { ticket, session_key: body.session_key, identity, expires_ns, renew_until_ns }
    }

    /// Open a ticket of `kind`: issued by this cluster, unaltered and, unless `allow_expired`,
    /// not expired.
    pub fn open_ticket(&self, kind: TicketKind, ticket: &[u8], now_ns: i64, allow_expired: bool) -> Result<TicketBody, AuthError> {
        let wire: TicketWire = postcard::from_bytes(ticket).map_err(|_| AuthError::Forged)?;
        if wire.cluster != self.cluster {
            return Err(AuthError::OtherCluster);
        }
        if wire.kind != kind {
            return Err(AuthError::WrongKind(match kind {
                TicketKind::Tgt => "expected a ticket-granting ticket",
                TicketKind::Meta => "expected a ticket for the metadata service",
            }));
        }
        let (key, purpose) = self.key_of(kind);
        let body: TicketBody = open_value(key, purpose, &wire.sealed)?;
        if !allow_expired && now_ns >= body.expires_ns {
            return Err(AuthError::Expired);
        }
        Ok(body)
    }
}

/// The salt an unknown user gets: the same every time, unrelated to any real one.
fn decoy_salt(keys: &ClusterKeys, user: &str) -> Vec<u8> {
    let mut h = blake3::Hasher::new_keyed(&keys.tgt.0);
    h.update(b"shoal decoy salt v1");
    h.update(user.as_bytes());
    h.finalize().as_bytes()[..SALT_BYTES].to_vec()
}

/// The key distribution centre's decisions. The caller supplies the user records, the time and
/// the replay cache; nothing here does I/O.
pub struct Kdc {
    pub keys: ClusterKeys,
    pub life: Lifetimes,
}

impl Kdc {
    /// A user record for `user` as the KDC knows it (the admin is built in).
    fn admin_record(&self) -> UserRec {
        UserRec { name: ADMIN.into(), uid: 0, gid: 0, groups: Vec::new(), salt: Vec::new(), kdf: KDF_DEFAULT, key: self.keys.admin_key().0 }
    }

    /// Step 1: the salt and parameters to derive `user`'s key with.
    pub fn challenge(&self, user: &str, rec: Option<&UserRec>) -> (Vec<u8>, KdfParams) {
        match rec {
            Some(r) if user != ADMIN => (r.salt.clone(), r.kdf),
            _ => (decoy_salt(&self.keys, user), KDF_DEFAULT),
        }
    }

    /// Step 2: check a login proof; answer with a TGT and, sealed with the user's key, its
    /// session key. `rec`: the user's record (ignored for the admin).
    pub fn login(&self, user: &str, rec: Option<&UserRec>, proof: &[u8], now_ns: i64, replay: &mut ReplayCache) -> Result<(Vec<u8>, Grant), AuthError> {
        let admin;
        let rec = if user == ADMIN {
            admin = self.admin_record();
            &admin
        } else {
            rec.ok_or(AuthError::BadLogin)?
        };
        let key = Key(rec.key);
        let p: Proof = open_value(&key, PURPOSE_PROOF, proof).map_err(|_| AuthError::BadLogin)?;
        replay.check(login_tag(user), p.time_us, now_ns)?;
        let identity = Identity { principal: rec.name.clone(), uid: rec.uid, gid: rec.gid, groups: rec.groups.clone(), trusted: user == ADMIN };
        let grant = self.keys.issue(TicketKind::Tgt, identity, now_ns, now_ns + self.life.ticket_ns, now_ns + self.life.renew_ns);
        Ok((seal_value(&key, PURPOSE_GRANT, &grant), grant))
    }

    /// Check a TGT and its authenticator (bound to `bound`: what the exchange asks for).
    fn tgt_holder(&self, tgt: &[u8], auth: &[u8], bound: &[u8], now_ns: i64, allow_expired: bool, replay: &mut ReplayCache) -> Result<TicketBody, AuthError> {
        let body = self.keys.open_ticket(TicketKind::Tgt, tgt, now_ns, allow_expired)?;
        check_authenticator(&body, auth, digest(bound), now_ns, replay)?;
        Ok(body)
    }

    /// The principal a TGT was issued to (expired or not), so the caller can look up its
    /// current record before an exchange. Nothing is checked but the seal.
    pub fn tgt_principal(&self, tgt: &[u8], now_ns: i64) -> Result<String, AuthError> {
        Ok(self.keys.open_ticket(TicketKind::Tgt, tgt, now_ns, true)?.identity.principal)
    }

    /// The identity a new ticket carries: the user's current record (`rec`), so a removed
    /// user's TGT buys nothing more and a changed uid or group list takes effect at the next
    /// exchange. The admin is built in.
    fn current(&self, held: Identity, rec: Option<&UserRec>) -> Result<Identity, AuthError> {
        if held.trusted && held.principal == ADMIN {
            return Ok(held);
        }
        match rec {
            Some(r) if r.name == held.principal => {
                Ok(Identity { principal: r.name.clone(), uid: r.uid, gid: r.gid, groups: r.groups.clone(), trusted: false })
            }
            _ => Err(AuthError::UserRemoved),
        }
    }

    /// Step 3: a ticket for the metadata service, sealed for the client with the TGT's session
    /// key. It ends when the TGT does. `rec`: the TGT principal's current record.
    pub fn service(&self, tgt: &[u8], auth: &[u8], rec: Option<&UserRec>, now_ns: i64, replay: &mut ReplayCache) -> Result<Vec<u8>, AuthError> {
        let body = self.tgt_holder(tgt, auth, b"service", now_ns, false, replay)?;
        let identity = self.current(body.identity, rec)?;
        let grant = self.keys.issue(TicketKind::Meta, identity, now_ns, body.expires_ns, body.expires_ns);
        Ok(seal_value(&body.session_key, PURPOSE_GRANT, &grant))
    }

    /// Renew a TGT (expired or not) before its renewal limit: a new TGT for another lifetime,
    /// capped by that limit. `rec`: the TGT principal's current record.
    pub fn renew(&self, tgt: &[u8], auth: &[u8], rec: Option<&UserRec>, now_ns: i64, replay: &mut ReplayCache) -> Result<Vec<u8>, AuthError> {
        let body = self.tgt_holder(tgt, auth, b"renew", now_ns, true, replay)?;
        if now_ns >= body.renew_until_ns {
            return Err(AuthError::NotRenewable);
        }
        let identity = self.current(body.identity, rec)?;
        let expires = (now_ns + self.life.ticket_ns).min(body.renew_until_ns);
        let grant = self.keys.issue(TicketKind::Tgt, identity, now_ns, expires, body.renew_until_ns);
        Ok(seal_value(&body.session_key, PURPOSE_GRANT, &grant))
    }

    /// Step 4: who sent a request that came with `ticket` and `auth`; `request` is the encoded
    /// request.
    pub fn verify(&self, ticket: &[u8], auth: &[u8], request: &[u8], now_ns: i64, replay: &mut ReplayCache) -> Result<Identity, AuthError> {
        let body = self.keys.open_ticket(TicketKind::Meta, ticket, now_ns, false)?;
        check_authenticator(&body, auth, digest(request), now_ns, replay)?;
        Ok(body.identity)
    }
}

fn login_tag(user: &str) -> u64 {
    u64::from_le_bytes(blake3::hash(user.as_bytes()).as_bytes()[..8].try_into().expect("8 bytes"))
}

fn check_authenticator(ticket: &TicketBody, auth: &[u8], want: [u8; 16], now_ns: i64, replay: &mut ReplayCache) -> Result<(), AuthError> {
    let a: AuthenticatorBody = open_value(&ticket.session_key, PURPOSE_AUTH, auth)?;
    if a.digest != want {
        return Err(AuthError::WrongRequest);
    }
    replay.check(ticket.id, a.time_us, now_ns)
}

/// A client's clock for authenticators: microseconds since the epoch, strictly increasing.
#[derive(Default)]
pub struct AuthClock {
    last: std::sync::atomic::AtomicU64,
}

impl AuthClock {
    pub fn next(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now = now_us();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let t = now.max(last + 1);
            match self.last.compare_exchange_weak(last, t, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return t,
                Err(seen) => last = seen,
            }
        }
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

pub fn now_us() -> u64 {
    (now_ns() / 1000) as u64
}
