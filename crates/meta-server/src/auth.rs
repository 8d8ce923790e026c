//! The metadata port's ticket checks: the key distribution centre's exchanges, and who each
//! client request speaks for. Every refusal is logged with the peer and the reason, and mapped
//! to an error here, in one place.

use crate::store::ReadKv;
use shoal_auth::{AuthError, ClusterKeys, Identity, Kdc, Lifetimes, ReplayCache, REPLAY_CACHE_MAX};
use shoal_types::config::MetaConfig;
use shoal_types::meta_msg::{AuthReply, AuthRequest, MetaReply, RequestAuth};
use shoal_types::{BlobId, Credentials, FsError, SessionId};
use std::net::SocketAddr;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Auth {
    kdc: Kdc,
    replay: Mutex<ReplayCache>,
    db: Arc<redb::Database>,
    /// Principals of sessions already looked up (session ids are never reused), so the
    /// check that a request comes from its session's principal rarely reads the store.
    owners: Mutex<HashMap<SessionId, String>>,
}

/// Entries kept in the session-owner cache before it starts again empty.
const OWNERS_MAX: usize = 1 << 16;

const SEC: i64 = 1_000_000_000;

/// Read the cluster's key file named by the configuration.
pub fn load_keys(config: &MetaConfig) -> anyhow::Result<ClusterKeys> {
    use anyhow::Context;
    let path = config.auth_keys.as_ref().context("meta.toml names no auth_keys file (`shoal up` adds one to an older cluster)")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    ClusterKeys::from_text(&text).with_context(|| format!("parse {}", path.display()))
}

/// One mapping from ticket failures to the errors clients see.
fn refusal(e: AuthError) -> FsError {
    match e {
        AuthError::Expired => FsError::TicketExpired,
        other => FsError::Unauthenticated(other.to_string()),
    }
}

impl Auth {
    pub fn new(keys: ClusterKeys, config: &MetaConfig, db: Arc<redb::Database>) -> Auth {
        let life = Lifetimes {
            ticket_ns: config.ticket_lifetime_s as i64 * SEC,
            renew_ns: config.ticket_renew_s as i64 * SEC,
            skew_ns: config.clock_skew_s as i64 * SEC,
        };
        // Authenticators dated before now were made for another process (or are replays).
        let replay = ReplayCache::new(shoal_auth::now_ns(), life.skew_ns, REPLAY_CACHE_MAX);
        Auth { kdc: Kdc { keys, life }, replay: Mutex::new(replay), db, owners: Mutex::default() }
    }

    pub fn keys(&self) -> &ClusterKeys {
        &self.kdc.keys
    }

    fn replay(&self) -> std::sync::MutexGuard<'_, ReplayCache> {
        self.replay.lock().expect("replay cache lock")
    }

    /// Who sent `request` (its encoding), as its ticket says.
    pub fn verify(&self, peer: SocketAddr, auth: &RequestAuth, request: &[u8]) -> Result<Identity, FsError> {
        let now = shoal_auth::now_ns();
        self.kdc.verify(&auth.ticket, &auth.authenticator, request, now, &mut self.replay()).map_err(|e| {
            tracing::warn!(%peer, "refused a request: {e}");
            refusal(e)
        })
    }

    /// Bind `req` to `identity`: a new session records its principal (in its client name); any
    /// other request naming a session must come from that session's principal, so nobody can
    /// use, close or read the replies of another user's session. Then the credentials.
    pub async fn bind(&self, peer: SocketAddr, identity: &Identity, req: &mut shoal_types::meta_msg::MetaRequest) -> Result<(), FsError> {
        use shoal_types::meta_msg::MetaOp;
        let owner = format!("{}@", identity.principal);
        if let MetaOp::OpenSession { client } = &mut req.op {
            *client = format!("{owner}{client}");
        } else if req.session != SessionId(0) {
            let name = self.session_owner(req.session).await?;
            // A name without '@' is a session opened before sessions were bound (principal
            // names cannot contain '@'); one not found is left to the state machine, which
            // refuses a mutation on a session it does not know.
            if name.is_some_and(|n| n.contains('@') && !n.starts_with(&owner)) {
                tracing::warn!(%peer, principal = identity.principal, session = req.session.0, "refused a request on another user's session");
                return Err(FsError::Unauthenticated("the session belongs to another user".into()));
            }
        }
        req.cred = credentials(identity, &req.cred);
        Ok(())
    }

    /// The client name `session` was opened with, if it is alive (or was, when first looked up:
    /// a session's owner never changes, and an ended session refuses requests by itself).
    async fn session_owner(&self, session: SessionId) -> Result<Option<String>, FsError> {
        if let Some(name) = self.owners.lock().expect("owners lock").get(&session) {
            return Ok(Some(name.clone()));
        }
        let db = self.db.clone();
        let name = tokio::task::spawn_blocking(move || ReadKv::new(&db).ok().and_then(|kv| shoal_meta_core::session_client(&kv, session)))
            .await
            .map_err(|e| FsError::Internal(e.to_string()))?;
        if let Some(name) = &name {
            let mut owners = self.owners.lock().expect("owners lock");
            if owners.len() >= OWNERS_MAX {
                owners.clear();
            }
            owners.insert(session, name.clone());
        }
        Ok(name)
    }

    /// One ticket exchange.
    pub async fn exchange(&self, peer: SocketAddr, req: AuthRequest) -> Result<AuthReply, FsError> {
        let now = shoal_auth::now_ns();
        let result = match req {
            AuthRequest::Challenge { user } => {
                let rec = self.user(&user).await?;
                let (salt, kdf) = self.kdc.challenge(&user, rec.as_ref());
                return Ok(AuthReply::Challenge { salt, kdf });
            }
            AuthRequest::Login { user, proof } => {
                let rec = self.user(&user).await?;
                let r = self.kdc.login(&user, rec.as_ref(), &proof, now, &mut self.replay()).map(|(sealed, _)| sealed);
                if r.is_ok() {
                    tracing::info!(%peer, user, "logged in");
                }
                return r.map(AuthReply::Grant).map_err(|e| {
                    tracing::warn!(%peer, user, "refused a login: {e}");
                    refusal(e)
                });
            }
            AuthRequest::Service { tgt, authenticator } => match self.holder(&tgt, now).await? {
                Ok(rec) => self.kdc.service(&tgt, &authenticator, rec.as_ref(), now, &mut self.replay()),
                Err(e) => Err(e),
            },
            AuthRequest::Renew { tgt, authenticator } => match self.holder(&tgt, now).await? {
                Ok(rec) => self.kdc.renew(&tgt, &authenticator, rec.as_ref(), now, &mut self.replay()),
                Err(e) => Err(e),
            },
        };
        result.map(AuthReply::Grant).map_err(|e| {
            tracing::warn!(%peer, "refused a ticket exchange: {e}");
            refusal(e)
        })
    }

    /// The current record of the user a TGT names (outer error: the store failed).
    async fn holder(&self, tgt: &[u8], now: i64) -> Result<Result<Option<shoal_types::meta_msg::UserRec>, AuthError>, FsError> {
        match self.kdc.tgt_principal(tgt, now) {
            Ok(name) => Ok(Ok(self.user(&name).await?)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn user(&self, name: &str) -> Result<Option<shoal_types::meta_msg::UserRec>, FsError> {
        let (db, name) = (self.db.clone(), name.to_string());
        tokio::task::spawn_blocking(move || {
            let kv = ReadKv::new(&db).map_err(|e| FsError::Internal(e.to_string()))?;
            Ok(shoal_meta_core::user(&kv, &name))
        })
        .await
        .map_err(|e| FsError::Internal(e.to_string()))?
    }
}

/// How long a capability to read the blobs of a layout lasts.
pub const READ_CAPABILITY_NS: i64 = 12 * 3600 * SEC;

impl Auth {
    /// A layout or an intent goes out with the capability storage servers will ask for: to read
    /// the layout's blobs, or to put the intent's blobs until the intent ends.
    pub fn with_capability(&self, reply: MetaReply) -> MetaReply {
        self.with_capability_except(reply, &[])
    }

    /// `inline`: blobs whose bytes come with the reply, read from no storage server.
    fn with_capability_except(&self, reply: MetaReply, inline: &[BlobId]) -> MetaReply {
        if let MetaReply::Promised { lease_ms, reply } = reply {
            return MetaReply::Promised { lease_ms, reply: Box::new(self.with_capability_except(*reply, inline)) };
        }
        if let MetaReply::Inlined { data, reply } = reply {
            let inline: Vec<BlobId> = data.iter().map(|(b, _)| *b).collect();
            return MetaReply::Inlined { reply: Box::new(self.with_capability_except(*reply, &inline)), data };
        }
        let cap = match &reply {
            MetaReply::Layout(l) if l.blobs.iter().any(|b| !inline.contains(&b.blob)) => {
                let blobs = l.blobs.iter().map(|b| b.blob).filter(|b| !inline.contains(b));
                self.kdc.keys.sign_capability(shoal_auth::READ, blobs, shoal_auth::now_ns() + READ_CAPABILITY_NS)
            }
            MetaReply::Intent(i) | MetaReply::Created { intent: Some(i), .. } => {
                self.kdc.keys.sign_capability(shoal_auth::WRITE, i.blobs.iter().copied(), i.expires)
            }
            _ => return reply,
        };
        MetaReply::Capable { cap, reply: Box::new(reply) }
    }
}

/// The credentials a request acts with: its ticket's identity, except that the trusted admin
/// (a mount serving a machine's local users) acts for whoever it names.
pub fn credentials(identity: &Identity, claimed: &Credentials) -> Credentials {
    if identity.trusted {
        claimed.clone()
    } else {
        Credentials { uid: identity.uid, gid: identity.gid, groups: identity.groups.clone() }
    }
}
