//! File commands without a mount, and `status`.

use crate::{connect, Cmd};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_client::Client;
use shoal_types::{Attr, FileKind, FsError, SetAttr};
use std::path::Path;
use std::sync::Arc;

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn fs_err(path: &str) -> impl Fn(FsError) -> anyhow::Error + '_ {
    move |e| anyhow::Error::new(e.clone()).context(path.to_string())
}

pub async fn run(dir: &Path, cmd: Cmd) -> Result<()> {
    let client = connect(dir).await?;
    let result = run_with(&client, cmd).await;
    let _ = client.close().await;
    result
}

async fn run_with(c: &Arc<Client>, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Put { local, remote } => put(c, &local, &remote, true).await.map(|_| ()),
        Cmd::Get { remote, local } => get(c, &remote, &local, true).await.map(|_| ()),
        Cmd::Cp { recursive, src, dst } => {
            if let Some(remote) = src.strip_prefix("shoal:") {
                copy_down(c, remote, Path::new(&dst), recursive).await
            } else {
                copy_up(c, Path::new(&src), &dst, recursive).await
            }
        }
        Cmd::Ls { long, path } => {
            let attr = c.resolve(&path).await.map_err(fs_err(&path))?;
            if attr.kind != FileKind::Dir {
                print_entry(&attr, &path, long);
                return Ok(());
            }
            for e in c.readdir_all(attr.handle).await.map_err(fs_err(&path))? {
                if long {
                    let a = c.getattr(e.handle).await.map_err(fs_err(&e.name))?;
                    print_entry(&a, &e.name, true);
                } else {
                    println!("{}", e.name);
                }
            }
            Ok(())
        }
        Cmd::Mkdir { parents, path } => mkdir(c, &path, parents).await,
        Cmd::Mv { src, dst } => {
            let (sp, sname) = c.resolve_parent(&src).await.map_err(fs_err(&src))?;
            // Moving into an existing directory keeps the name, as mv does.
            let (dp, dname) = match c.resolve(&dst).await {
                Ok(a) if a.kind == FileKind::Dir => (a, sname.to_string()),
                _ => {
                    let (p, n) = c.resolve_parent(&dst).await.map_err(fs_err(&dst))?;
                    (p, n.to_string())
                }
            };
            c.rename(sp.handle, sname, dp.handle, &dname).await.map_err(fs_err(&src))
        }
        Cmd::Rm { recursive, path } => {
            let (parent, name) = c.resolve_parent(&path).await.map_err(fs_err(&path))?;
            let attr = c.lookup(parent.handle, name).await.map_err(fs_err(&path))?;
            if attr.kind == FileKind::Dir {
                if !recursive {
                    bail!("{path}: is a directory (use rm -r)");
                }
                remove_tree(c, attr.handle).await?;
                c.rmdir(parent.handle, name).await.map_err(fs_err(&path))
            } else {
                c.unlink(parent.handle, name).await.map_err(fs_err(&path))
            }
        }
        Cmd::Stat { path } => {
            let a = c.resolve(&path).await.map_err(fs_err(&path))?;
            println!("  File: {path}");
            println!("  Size: {}\tType: {:?}\tVersion: {}", a.size, a.kind, a.version);
            println!("Handle: {}\tLinks: {}", a.handle, a.nlink);
            println!("Access: {:04o}\tUid: {}\tGid: {}", a.mode, a.uid, a.gid);
            println!("Modify: {}\nChange: {}", fmt_time(a.mtime), fmt_time(a.ctime));
            Ok(())
        }
        Cmd::Cat { path } => {
            let a = c.resolve(&path).await.map_err(fs_err(&path))?;
            if a.kind == FileKind::Dir {
                bail!("{path}: is a directory");
            }
            c.read_stream(a.handle, tokio::io::stdout(), &|_| {}).await.map_err(fs_err(&path))?;
            Ok(())
        }
        Cmd::Chmod { mode, path } => {
            let mode = u32::from_str_radix(&mode, 8).with_context(|| format!("bad mode {mode:?} (octal, like 640)"))?;
            let a = c.resolve(&path).await.map_err(fs_err(&path))?;
            c.setattr(a.handle, SetAttr { mode: Some(mode), ..Default::default() }).await.map_err(fs_err(&path))?;
            Ok(())
        }
        Cmd::Chown { owner, path } => {
            let (u, g) = owner.split_once(':').unwrap_or((&owner, ""));
            let uid = if u.is_empty() { None } else { Some(u.parse().context("uid must be a number")?) };
            let gid = if g.is_empty() { None } else { Some(g.parse().context("gid must be a number")?) };
            let a = c.resolve(&path).await.map_err(fs_err(&path))?;
            c.setattr(a.handle, SetAttr { uid, gid, ..Default::default() }).await.map_err(fs_err(&path))?;
            Ok(())
        }
        Cmd::Ln { symbolic, target, path } => {
            if !symbolic {
                let t = c.resolve(&target).await.map_err(fs_err(&target))?;
                let (p, name) = c.resolve_parent(&path).await.map_err(fs_err(&path))?;
                c.meta(shoal_types::meta_msg::MetaOp::Link { handle: t.handle, new_parent: p.handle, new_name: name.into() })
                    .await
                    .map_err(fs_err(&path))?;
                return Ok(());
            }
            let (p, name) = c.resolve_parent(&path).await.map_err(fs_err(&path))?;
            c.symlink(p.handle, name, &target).await.map_err(fs_err(&path))?;
            Ok(())
        }
        Cmd::Df => {
            let s = c.statfs().await.map_err(fs_err("/"))?;
            println!("{:>16} {:>16} {:>16} {:>5} {:>10}", "Size", "Used", "Avail", "Use%", "Files");
            let pct = if s.capacity > 0 { s.used * 100 / s.capacity } else { 0 };
            println!("{:>16} {:>16} {:>16} {:>4}% {:>10}", s.capacity, s.used, s.available, pct, s.files);
            Ok(())
        }
        _ => unreachable!("handled by main"),
    }
}

fn fmt_time(ns: i64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

fn print_entry(a: &Attr, name: &str, long: bool) {
    if !long {
        println!("{name}");
        return;
    }
    let t = match a.kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        _ => '-',
    };
    let mut perms = String::new();
    for shift in [6, 3, 0] {
        let b = (a.mode >> shift) & 7;
        perms.push(if b & 4 != 0 { 'r' } else { '-' });
        perms.push(if b & 2 != 0 { 'w' } else { '-' });
        perms.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    println!("{t}{perms} {:>3} {:>5} {:>5} {:>12} {}", a.nlink, a.uid, a.gid, a.size, name);
}

async fn mkdir(c: &Arc<Client>, path: &str, parents: bool) -> Result<()> {
    if !parents {
        let (p, name) = c.resolve_parent(path).await.map_err(fs_err(path))?;
        c.mkdir(p.handle, name, 0o755).await.map_err(fs_err(path))?;
        return Ok(());
    }
    let mut cur = c.getattr(shoal_types::FileHandle::ROOT).await.map_err(fs_err("/"))?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur = match c.lookup(cur.handle, part).await {
            Ok(a) if a.kind == FileKind::Dir => a,
            Ok(_) => bail!("{path}: {part} is not a directory"),
            Err(FsError::NotFound) => match c.mkdir(cur.handle, part, 0o755).await {
                Ok(a) => a,
                Err(FsError::Exists) => c.lookup(cur.handle, part).await.map_err(fs_err(path))?,
                Err(e) => return Err(fs_err(path)(e)),
            },
            Err(e) => return Err(fs_err(path)(e)),
        };
    }
    Ok(())
}

/// Upload one file; `remote` names the file (created or replaced).
pub async fn put(c: &Arc<Client>, local: &Path, remote: &str, progress: bool) -> Result<Attr> {
    let file = tokio::fs::File::open(local).await.with_context(|| format!("open {}", local.display()))?;
    let len = file.metadata().await?.len();
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        file.metadata().await?.permissions().mode() & 0o7777
    };
    let (parent, name) = c.resolve_parent(remote).await.map_err(fs_err(remote))?;
    let attr = c.create(parent.handle, name, mode, false).await.map_err(fs_err(remote))?;
    if attr.kind != FileKind::File {
        bail!("{remote}: not a regular file");
    }
    let pb = if progress { bar(len, name) } else { ProgressBar::hidden() };
    let reader = tokio::io::BufReader::with_capacity(1 << 20, file);
    let pb2 = pb.clone();
    let attr = c.write_stream(attr.handle, reader, &move |n| pb2.set_position(n)).await.map_err(fs_err(remote))?;
    pb.finish_and_clear();
    Ok(attr)
}

pub async fn get(c: &Arc<Client>, remote: &str, local: &Path, progress: bool) -> Result<u64> {
    let a = c.resolve(remote).await.map_err(fs_err(remote))?;
    if a.kind != FileKind::File {
        bail!("{remote}: not a regular file");
    }
    // A regular file is written beside its final name and renamed into place when complete; a
    // device or pipe (`/dev/null`, `/dev/stdout`) is written directly.
    let special = std::fs::metadata(local).map(|m| !m.is_file() && !m.is_dir()).unwrap_or(false);
    let tmp = if special { local.to_path_buf() } else { local.with_extension("shoal-partial") };
    let file = if special {
        tokio::fs::OpenOptions::new().write(true).open(&tmp).await
    } else {
        tokio::fs::File::create(&tmp).await
    }
    .with_context(|| format!("create {}", tmp.display()))?;
    let pb = if progress { bar(a.size, remote) } else { ProgressBar::hidden() };
    let pb2 = pb.clone();
    let n = c.read_stream(a.handle, tokio::io::BufWriter::with_capacity(1 << 20, file), &move |n| pb2.set_position(n)).await;
    pb.finish_and_clear();
    let n = match n {
        Ok(n) => n,
        Err(e) => {
            if !special {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            return Err(fs_err(remote)(e));
        }
    };
    if !special {
        tokio::fs::rename(&tmp, local).await?;
    }
    Ok(n)
}

async fn copy_up(c: &Arc<Client>, src: &Path, dst: &str, recursive: bool) -> Result<()> {
    let meta = tokio::fs::symlink_metadata(src).await.with_context(|| format!("{}", src.display()))?;
    if !meta.is_dir() {
        // Into an existing directory: keep the file name.
        let target = match c.resolve(dst).await {
            Ok(a) if a.kind == FileKind::Dir => {
                format!("{}/{}", dst.trim_end_matches('/'), src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            }
            _ => dst.to_string(),
        };
        put(c, src, &target, true).await?;
        return Ok(());
    }
    if !recursive {
        bail!("{}: is a directory (use cp -r)", src.display());
    }
    mkdir(c, dst, true).await?;
    let mut stack = vec![(src.to_path_buf(), dst.trim_end_matches('/').to_string())];
    let mut files = 0u64;
    while let Some((local, remote)) = stack.pop() {
        let mut rd = tokio::fs::read_dir(&local).await?;
        while let Some(e) = rd.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = format!("{remote}/{name}");
            let ft = e.file_type().await?;
            if ft.is_dir() {
                let (p, n) = c.resolve_parent(&r).await.map_err(fs_err(&r))?;
                match c.mkdir(p.handle, n, 0o755).await {
                    Ok(_) | Err(FsError::Exists) => {}
                    Err(e) => return Err(fs_err(&r)(e)),
                }
                stack.push((e.path(), r));
            } else if ft.is_symlink() {
                let target = tokio::fs::read_link(e.path()).await?;
                let (p, n) = c.resolve_parent(&r).await.map_err(fs_err(&r))?;
                c.symlink(p.handle, n, &target.to_string_lossy()).await.map_err(fs_err(&r))?;
            } else if ft.is_file() {
                put(c, &e.path(), &r, false).await?;
                files += 1;
            }
        }
    }
    println!("copied {files} files");
    Ok(())
}

async fn copy_down(c: &Arc<Client>, src: &str, dst: &Path, recursive: bool) -> Result<()> {
    let a = c.resolve(src).await.map_err(fs_err(src))?;
    if a.kind != FileKind::Dir {
        get(c, src, dst, true).await?;
        return Ok(());
    }
    if !recursive {
        bail!("{src}: is a directory (use cp -r)");
    }
    let mut stack = vec![(a.handle, src.trim_end_matches('/').to_string(), dst.to_path_buf())];
    while let Some((h, remote, local)) = stack.pop() {
        tokio::fs::create_dir_all(&local).await?;
        for e in c.readdir_all(h).await.map_err(fs_err(&remote))? {
            let r = format!("{remote}/{}", e.name);
            let l = local.join(&e.name);
            match e.kind {
                FileKind::Dir => stack.push((e.handle, r, l)),
                FileKind::File => {
                    get(c, &r, &l, false).await?;
                }
                FileKind::Symlink => {
                    let t = c.readlink(e.handle).await.map_err(fs_err(&r))?;
                    let _ = tokio::fs::symlink(t, l).await;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Remove everything below a directory, depth first.
async fn remove_tree(c: &Arc<Client>, dir: shoal_types::FileHandle) -> Result<()> {
    loop {
        let (entries, _) = c.readdir(dir, 0, shoal_types::meta_msg::READDIR_LIMIT_MAX).await.map_err(fs_err("rm"))?;
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            let r = if e.kind == FileKind::Dir {
                Box::pin(remove_tree(c, e.handle)).await?;
                c.rmdir(dir, &e.name).await
            } else {
                c.unlink(dir, &e.name).await
            };
            match r {
                Ok(()) | Err(FsError::NotFound) => {}
                Err(err) => return Err(fs_err(&e.name)(err)),
            }
        }
    }
}

pub async fn status(dir: &Path, json: bool) -> Result<()> {
    let c = connect(dir).await?;
    let s = c.status().await.map_err(fs_err("status"))?;
    let _ = c.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
        return Ok(());
    }
    println!("leader: {}   term: {}   applied: {}", s.leader.map_or("none".into(), |l| format!("meta-{l}")), s.term, s.last_applied);
    let mut t = comfy_table::Table::new();
    t.set_header(vec!["member", "address", "role", "matched"]);
    for m in &s.members {
        let role = if Some(m.id) == s.leader { "leader" } else if m.voter { "voter" } else { "learner" };
        t.add_row(vec![format!("meta-{}", m.id), m.addr.clone(), role.into(), m.matched.map_or("-".into(), |x| x.to_string())]);
    }
    println!("{t}");
    let mut t = comfy_table::Table::new();
    t.set_header(vec!["store", "address", "health", "capacity", "used", "blobs"]);
    for st in &s.stores {
        t.add_row(vec![
            format!("store-{}", st.id),
            st.addr.clone(),
            if st.alive {
                "alive".into()
            } else if st.checking {
                "CHECKING (fenced)".into()
            } else {
                "FAILED".into()
            },
            st.capacity.to_string(),
            st.used.to_string(),
            st.blobs.to_string(),
        ]);
    }
    println!("{t}");
    println!(
        "files: {}   blobs: {}   under-replicated: {}   awaiting gc: {}   sessions: {}",
        s.files, s.blobs, s.blobs_under_replicated, s.blobs_awaiting_gc, s.sessions
    );
    if s.blobs_stranded + s.blobs_damaged > 0 {
        println!(
            "waiting for a failed server: {}   damaged (last copy corrupt): {}",
            s.blobs_stranded, s.blobs_damaged
        );
    }
    Ok(())
}

fn status_json(s: &shoal_types::meta_msg::ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "leader": s.leader.map(|l| l.0),
        "term": s.term,
        "last_applied": s.last_applied,
        "members": s.members.iter().map(|m| serde_json::json!({"id": m.id.0, "addr": m.addr, "voter": m.voter, "matched": m.matched})).collect::<Vec<_>>(),
        "stores": s.stores.iter().map(|st| serde_json::json!({"id": st.id.0, "addr": st.addr, "alive": st.alive, "checking": st.checking, "capacity": st.capacity, "used": st.used, "blobs": st.blobs})).collect::<Vec<_>>(),
        "files": s.files,
        "blobs": s.blobs,
        "blobs_under_replicated": s.blobs_under_replicated,
        "blobs_awaiting_gc": s.blobs_awaiting_gc,
        "blobs_stranded": s.blobs_stranded,
        "blobs_damaged": s.blobs_damaged,
        "sessions": s.sessions,
    })
}
