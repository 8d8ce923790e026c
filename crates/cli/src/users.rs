//! Users and tickets at the command line: `shoal user add|remove|list`, `login`, `whoami`,
//! `logout`, and which identity every other command acts as (the cached ticket of `login`,
//! else the cluster admin's key when this user can read it).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use shoal_auth::Grant;
use shoal_client::{Client, Login};
use shoal_types::codec;
use shoal_types::config::ClientConfig;
use shoal_types::meta_msg::{MetaOp, MetaReply};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Register a user who can log in (asks for the password, or reads it from stdin).
    Add {
        name: String,
        #[arg(long)]
        uid: u32,
        #[arg(long)]
        gid: u32,
        /// Supplementary groups, comma separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<u32>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user (tickets already issued run until they expire).
    Remove { name: String },
    /// List the registered users.
    List,
}

/// Where `login` caches the ticket-granting ticket for the cluster in `dir`:
/// `$SHOAL_TICKET_CACHE`, else `~/.cache/shoal/tgt-<cluster dir digest>`.
pub fn ticket_cache(dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_TICKET_CACHE") {
        return PathBuf::from(p);
    }
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let tag = shoal_auth::hex(&shoal_auth::digest(canonical.as_os_str().as_encoded_bytes())[..8]);
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("shoal").join(format!("tgt-{tag}"))
}

fn load_cached(path: &Path) -> Result<Option<Grant>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(codec::decode(&bytes).with_context(|| format!("damaged ticket cache {} (run `shoal logout`)", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn save_cached(path: &Path, grant: &Grant) -> Result<()> {
    Ok(shoal_pki::write_atomic(path, &codec::encode(grant), 0o600)?)
}

/// The identity commands act as: the cached ticket, else the admin key.
pub fn login_for(dir: &Path, config: &ClientConfig) -> Result<Login> {
    if let Some(g) = load_cached(&ticket_cache(dir))? {
        return Ok(Login::Tgt(g));
    }
    Ok(Client::admin_login(config)?)
}

fn read_password(from_stdin: bool, prompt: &str, confirm: bool) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        if pw.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(pw);
    }
    let pw = rpassword::prompt_password(prompt).context("read the password (or pass --password-stdin)")?;
    if confirm && rpassword::prompt_password("Again: ")? != pw {
        bail!("the passwords differ");
    }
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

fn when(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let left = secs - shoal_auth::now_ns() / 1_000_000_000;
    format!("in {}h{:02}m (unix time {secs})", left.max(0) / 3600, (left.max(0) % 3600) / 60)
}

pub async fn user(dir: &Path, cmd: UserCmd) -> Result<()> {
    let client = crate::connect(dir).await?;
    let result = match cmd {
        UserCmd::Add { name, uid, gid, groups, password_stdin } => {
            let pw = read_password(password_stdin, &format!("Password for {name}: "), true)?;
            let rec = shoal_auth::new_user(&name, uid, gid, groups, pw.as_bytes())?;
            client.meta(MetaOp::AddUser(rec)).await.with_context(|| format!("add user {name}"))?;
            println!("added user {name} (uid {uid}, gid {gid})");
            Ok(())
        }
        UserCmd::Remove { name } => {
            client.meta(MetaOp::RemoveUser { name: name.clone() }).await.with_context(|| format!("remove user {name}"))?;
            println!("removed user {name}");
            Ok(())
        }
        UserCmd::List => match client.meta(MetaOp::ListUsers).await? {
            MetaReply::Users(users) => {
                for u in users {
                    let groups: Vec<String> = u.groups.iter().map(u32::to_string).collect();
                    println!("{}\tuid={}\tgid={}\tgroups={}", u.name, u.uid, u.gid, groups.join(","));
                }
                Ok(())
            }
            other => bail!("unexpected reply {other:?}"),
        },
    };
    let _ = client.close().await;
    result
}

pub async fn login(dir: &Path, user: &str, password_stdin: bool) -> Result<()> {
    let config: ClientConfig = crate::cluster::read_toml(&dir.join("client.toml"))?;
    let tls = shoal_pki::client_config(&config.tls)?;
    let client = Client::without_session(&config, tls, crate::local_credentials())?;
    let pw = read_password(password_stdin, &format!("Password for {user}: "), false)?;
    let grant = client.login_password(user, pw.as_bytes()).await.context("log in")?;
    let path = ticket_cache(dir);
    save_cached(&path, &grant)?;
    println!("logged in as {} (uid {}, gid {}); ticket expires {}", grant.identity.principal, grant.identity.uid, grant.identity.gid, when(grant.expires_ns));
    Ok(())
}

pub fn whoami(dir: &Path) -> Result<()> {
    let path = ticket_cache(dir);
    if let Some(g) = load_cached(&path)? {
        let i = &g.identity;
        let state = if g.expires_ns > shoal_auth::now_ns() { format!("expires {}", when(g.expires_ns)) } else { "expired".into() };
        println!("{} uid={} gid={} groups={:?}; ticket {state}, renewable until {}", i.principal, i.uid, i.gid, i.groups, when(g.renew_until_ns));
        return Ok(());
    }
    let config: ClientConfig = crate::cluster::read_toml(&dir.join("client.toml"))?;
    match Client::admin_login(&config) {
        Ok(_) => println!("{} uid=0 (the cluster admin key in {})", shoal_auth::ADMIN, dir.display()),
        Err(_) => bail!("not logged in: run `shoal login USER`"),
    }
    Ok(())
}

pub fn logout(dir: &Path) -> Result<()> {
    let path = ticket_cache(dir);
    match std::fs::remove_file(&path) {
        Ok(()) => println!("logged out (removed {})", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("not logged in"),
        Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
    }
    Ok(())
}
