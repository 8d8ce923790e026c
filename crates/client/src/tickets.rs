//! The client's tickets: log in, get a ticket for the metadata service, seal an authenticator
//! for every request, and renew before expiry.

use crate::Client;
use shoal_auth::{AuthClock, Grant, Key};
use shoal_types::codec;
use shoal_types::meta_msg::*;
use shoal_types::*;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// How a client gets its tickets.
#[derive(Clone, Debug)]
pub enum Login {
    /// A principal's key (the admin's, from its key file): a new login whenever needed.
    Key { user: String, key: Key },
    /// A ticket-granting ticket from `shoal login`, renewed up to its limit.
    Tgt(Grant),
}

/// Tickets are refreshed this long before they expire.
pub const REFRESH_BEFORE_NS: i64 = 60_000_000_000;

pub(crate) struct Tickets {
    login: Login,
    tgt: Mutex<Grant>,
    service: Mutex<Grant>,
    clock: AuthClock,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

impl Tickets {
    /// The request with its ticket and a fresh authenticator.
    pub(crate) fn wrap(&self, req: MetaRequest) -> MetaWireReq {
        let (ticket, key) = {
            let s = self.service.lock().expect("ticket lock");
            (s.ticket.clone(), s.session_key.clone())
        };
        let authenticator = shoal_auth::authenticator(&key, self.clock.next(), shoal_auth::digest(&codec::encode(&req)));
        MetaWireReq::Authed { auth: RequestAuth { ticket, authenticator }, req }
    }

    fn expires_ns(&self) -> i64 {
        self.service.lock().expect("ticket lock").expires_ns
    }

    pub(crate) fn identity(&self) -> shoal_auth::Identity {
        self.service.lock().expect("ticket lock").identity.clone()
    }
}

fn unexpected(what: &str, got: impl std::fmt::Debug) -> FsError {
    FsError::Protocol(format!("expected {what}, got {got:?}"))
}

fn sealed_grant(reply: AuthReply) -> FsResult<Vec<u8>> {
    match reply {
        AuthReply::Grant(g) => Ok(g),
        other => Err(unexpected("a ticket", other)),
    }
}

fn open(key: &Key, sealed: &[u8]) -> FsResult<Grant> {
    shoal_auth::open_grant(key, sealed).map_err(|e| FsError::Unauthenticated(format!("the ticket reply does not open: {e}")))
}

impl Client {
    /// One ticket exchange with any metadata node that answers.
    pub async fn auth_call(&self, req: AuthRequest) -> FsResult<AuthReply> {
        let wire = MetaWireReq::Auth(req);
        let mut last = FsError::Unavailable("no metadata server answered".into());
        for attempt in 0..self.meta.len() as u32 * 3 {
            let idx = (self.leader.load(Ordering::Relaxed) + attempt as usize) % self.meta.len();
            match self.meta[idx].1.call::<_, MetaWireResp>(&wire, &[]).await {
                Ok((MetaWireResp::Auth(r), _)) => {
                    // A node that answers: where the next request starts too.
                    self.leader.store(idx, Ordering::Relaxed);
                    return r;
                }
                Ok((other, _)) => return Err(unexpected("a ticket reply", other)),
                // Our certificate was refused: another node will not think otherwise.
                Err(e @ shoal_net::NetError::Handshake { .. }) => return Err(e.into()),
                Err(e) => {
                    last = e.into();
                    tokio::time::sleep(crate::backoff(attempt)).await;
                }
            }
        }
        Err(last)
    }

    /// Log in as `user` with a password: the ticket-granting ticket (what `shoal login` caches).
    pub async fn login_password(&self, user: &str, password: &[u8]) -> FsResult<Grant> {
        let (salt, kdf) = match self.auth_call(AuthRequest::Challenge { user: user.into() }).await? {
            AuthReply::Challenge { salt, kdf } => (salt, kdf),
            other => return Err(unexpected("a challenge", other)),
        };
        let key = shoal_auth::password_key(password, &salt, &kdf).map_err(|e| FsError::Invalid(e.to_string()))?;
        self.login_key(user, &key).await
    }

    /// A ticket exchange, made afresh once if a node answers that its proof was used already:
    /// `auth_call` retries the same bytes on every node in turn, so a retry can reach a node
    /// that served an earlier try whose answer was lost.
    async fn exchange(&self, make: impl Fn() -> AuthRequest) -> FsResult<AuthReply> {
        match self.auth_call(make()).await {
            Err(FsError::Unauthenticated(m)) if m.contains("replayed") => self.auth_call(make()).await,
            r => r,
        }
    }

    async fn login_key(&self, user: &str, key: &Key) -> FsResult<Grant> {
        let login = || AuthRequest::Login { user: user.into(), proof: shoal_auth::login_proof(key, shoal_auth::now_us()) };
        let sealed = sealed_grant(self.exchange(login).await?)?;
        open(key, &sealed)
    }

    /// A ticket-granting ticket renewed for another lifetime (up to its renewal limit).
    pub async fn renew(&self, tgt: &Grant) -> FsResult<Grant> {
        let renew = || AuthRequest::Renew {
            tgt: tgt.ticket.clone(),
            authenticator: shoal_auth::authenticator(&tgt.session_key, shoal_auth::now_us(), shoal_auth::digest(b"renew")),
        };
        let sealed = sealed_grant(self.exchange(renew).await?)?;
        open(&tgt.session_key, &sealed)
    }

    async fn service_ticket(&self, tgt: &Grant) -> FsResult<Grant> {
        let service = || AuthRequest::Service {
            tgt: tgt.ticket.clone(),
            authenticator: shoal_auth::authenticator(&tgt.session_key, shoal_auth::now_us(), shoal_auth::digest(b"service")),
        };
        let sealed = sealed_grant(self.exchange(service).await?)?;
        open(&tgt.session_key, &sealed)
    }

    /// A usable ticket-granting ticket from `login`: logged in, renewed, or as it is.
    async fn fresh_tgt(&self, login: &Login, current: Option<&Grant>) -> FsResult<Grant> {
        let now = shoal_auth::now_ns();
        match (login, current) {
            (_, Some(g)) if g.expires_ns - now > REFRESH_BEFORE_NS => Ok(g.clone()),
            (Login::Key { user, key }, _) => self.login_key(user, key).await,
            (Login::Tgt(first), current) => {
                let g = current.unwrap_or(first);
                if g.expires_ns - now > REFRESH_BEFORE_NS {
                    Ok(g.clone())
                } else if now < g.renew_until_ns {
                    self.renew(g).await
                } else if now < g.expires_ns {
                    Ok(g.clone())
                } else {
                    Err(FsError::TicketExpired)
                }
            }
        }
    }

    /// Get tickets as `login` says; requests carry them from then on.
    pub(crate) async fn log_in(&mut self, login: Login) -> FsResult<()> {
        let tgt = self.fresh_tgt(&login, None).await?;
        let service = self.service_ticket(&tgt).await?;
        self.tickets = Some(Tickets {
            login,
            tgt: Mutex::new(tgt),
            service: Mutex::new(service),
            clock: AuthClock::default(),
            refreshing: tokio::sync::Mutex::new(()),
        });
        Ok(())
    }

    /// Renew the tickets if they expire soon (or `force`).
    pub(crate) async fn refresh_tickets(&self, force: bool) -> FsResult<()> {
        let Some(t) = &self.tickets else { return Ok(()) };
        if !force && t.expires_ns() - shoal_auth::now_ns() > REFRESH_BEFORE_NS {
            return Ok(());
        }
        let seen = t.expires_ns();
        let _one = t.refreshing.lock().await;
        if t.expires_ns() != seen {
            return Ok(()); // Another request refreshed them meanwhile.
        }
        let current = t.tgt.lock().expect("ticket lock").clone();
        let tgt = self.fresh_tgt(&t.login, Some(&current)).await?;
        let service = self.service_ticket(&tgt).await?;
        tracing::debug!(expires_ns = service.expires_ns, "renewed the tickets");
        *t.tgt.lock().expect("ticket lock") = tgt;
        *t.service.lock().expect("ticket lock") = service;
        Ok(())
    }

    /// Who this client's requests speak for (`None`: no tickets, as for a storage server).
    pub fn identity(&self) -> Option<shoal_auth::Identity> {
        self.tickets.as_ref().map(Tickets::identity)
    }

    /// The request as sent: with a ticket and authenticator, when this client has tickets.
    pub(crate) fn wire(&self, req: MetaRequest) -> MetaWireReq {
        match &self.tickets {
            Some(t) => t.wrap(req),
            None => MetaWireReq::Client(req),
        }
    }
}
