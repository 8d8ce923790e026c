//! Consistency between two mounts of one cluster (two `shoal mount` processes, as on two
//! machines): close-to-open with the reader's cache primed, with and without the callback
//! channel, concurrent writers, and a mount killed in the middle of a write.

use crate::harness::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Rounds of close on one mount then open on the other, per kind of change.
fn rounds(full: usize) -> usize {
    if std::env::var_os("SHOAL_SMALL").is_some() {
        full / 5
    } else {
        full
    }
}

fn mount(c: &TestCluster, name: &str, envs: &[(&str, &str)]) -> PathBuf {
    mount_with(c, name, envs, &[])
}

fn mount_with(c: &TestCluster, name: &str, envs: &[(&str, &str)], args: &[&str]) -> PathBuf {
    let mnt = c.file(name);
    let out = Command::new(SHOAL).arg("--dir").arg(c.path()).arg("mount").args(args).arg(&mnt).envs(envs.iter().copied()).output().unwrap();
    assert!(out.status.success(), "mount {name}: {}", String::from_utf8_lossy(&out.stderr));
    mnt
}

/// What a change on mount A leaves in the file, applied through A; `content` is the expected
/// file afterwards.
fn change(a: &Path, round: usize, content: &mut Vec<u8>) {
    let f = a.join("f");
    match round % 3 {
        0 => {
            // In-place overwrite (same inode), with a length that changes from round to round.
            *content = format!("overwrite {round} {}\n", "x".repeat(round % 97)).into_bytes();
            std::fs::write(&f, &*content).unwrap();
        }
        1 => {
            let line = format!("append {round}\n");
            let mut h = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
            h.write_all(line.as_bytes()).unwrap();
            content.extend_from_slice(line.as_bytes());
        }
        _ => {
            // Save by rename, as editors do: a new inode replaces the name.
            *content = format!("renamed over {round}\n").into_bytes();
            let tmp = a.join(format!("f.tmp{round}"));
            std::fs::write(&tmp, &*content).unwrap();
            std::fs::rename(&tmp, &f).unwrap();
        }
    }
}

fn close_to_open(c: &TestCluster, b: &Path, a: &Path, n: usize) {
    let mut content = b"first\n".to_vec();
    std::fs::write(a.join("f"), &content).unwrap();
    let mut stale = Vec::new();
    for round in 0..n {
        // Prime B's caches (entry, attributes, pages) with the current version.
        assert_eq!(std::fs::read(b.join("f")).unwrap(), content, "round {round}: B before the change");
        let _ = std::fs::metadata(b.join("f")).unwrap();
        // Every other round, B also keeps the file open across the change (a rename-over then
        // leaves B holding the replaced inode, still alive as an orphan).
        let held = (round % 2 == 1).then(|| std::fs::File::open(b.join("f")).unwrap());
        change(a, round, &mut content);
        let seen = std::fs::read(b.join("f")).unwrap();
        drop(held);
        if seen != content {
            stale.push((round, String::from_utf8_lossy(&seen).into_owned()));
        }
    }
    assert!(stale.is_empty(), "{} of {n} opens on B after a close on A read stale bytes, first: {:?}\n{}", stale.len(), stale.first(), c.logs_tail());
}

#[test]
fn close_to_open_across_two_mounts() {
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    close_to_open(&c, &b, &a, rounds(1000));
}

#[test]
fn a_mount_that_created_a_file_sees_the_other_mount_change_it() {
    // The creating mount is promised the new file's attributes (the kernel caches them without
    // asking): a change from another mount must be called back, never hidden by that cache.
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    for round in 0..rounds(50) {
        let name = format!("new{round}");
        let created = std::fs::OpenOptions::new().write(true).create_new(true).open(a.join(&name)).unwrap();
        drop(created);
        assert_eq!(std::fs::metadata(a.join(&name)).unwrap().len(), 0);
        let body = vec![b'x'; 100 + round];
        std::fs::OpenOptions::new().append(true).open(b.join(&name)).unwrap().write_all(&body).unwrap();
        let (meta, read) = (std::fs::metadata(a.join(&name)).unwrap(), std::fs::read(a.join(&name)).unwrap());
        assert_eq!((meta.len(), read), (body.len() as u64, body), "round {round}: the creating mount missed the other's write");
        if round % 2 == 0 {
            std::fs::remove_file(b.join(&name)).unwrap();
            assert!(!a.join(&name).exists(), "round {round}: the creating mount still sees a removed file");
        }
    }
    assert_eq!(lease_waits(&c), 0, "every callback was acknowledged");
}

/// How many times the metadata leaders let a change through only once an unacknowledged
/// callback's promise ran out (their warning, counted in the servers' logs).
fn lease_waits(c: &TestCluster) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(c.path().join("logs")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("meta") {
            n += std::fs::read_to_string(e.path()).unwrap_or_default().matches("did not acknowledge a callback").count();
        }
    }
    n
}

#[test]
fn close_to_open_holds_when_the_callback_channel_is_cut() {
    // B polls for callbacks but neither acknowledges nor carries them out: every change that
    // breaks B's promises must wait for the lease (1 s here) instead.
    let c = TestCluster::start_with(&["--callback-lease-ms", "1000"]);
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[("SHOAL_TEST_CUT_CALLBACKS", "1")]);
    // B gets promises once a promise horizon in the log names it (within a second or so of
    // its first poll); until then its caches expire at once and there is nothing to wait for.
    std::fs::write(a.join("warm"), b"0").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while lease_waits(&c) == 0 {
        assert!(std::time::Instant::now() < deadline, "B never held a promise\n{}", c.logs_tail());
        let _ = std::fs::metadata(b.join("warm")).unwrap();
        std::fs::write(a.join("warm"), b"1").unwrap();
    }
    let before = lease_waits(&c);
    let n = rounds(30);
    close_to_open(&c, &b, &a, n);
    // The rounds were served from promises that the changes waited out: one wait per round,
    // give or take a round whose lookup raced a renewal of the horizon.
    let waited = lease_waits(&c) - before;
    assert!(waited >= n / 2, "only {waited} of {n} changes waited for B's lease\n{}", c.logs_tail());
}

#[test]
fn concurrent_writers_last_close_wins_never_a_mix() {
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    const LEN: usize = 3 << 20;
    for round in 0..rounds(20) as u64 {
        let ours = [bytes(round * 2 + 1, LEN), bytes(round * 2 + 2, LEN)];
        std::thread::scope(|s| {
            for (mnt, data) in [(&a, &ours[0]), (&b, &ours[1])] {
                s.spawn(move || {
                    // Written in many small pieces, so a close-time commit is the only one.
                    let mut h = std::fs::File::create(mnt.join("shared")).unwrap();
                    for piece in data.chunks(64 << 10) {
                        h.write_all(piece).unwrap();
                    }
                });
            }
        });
        let on_a = std::fs::read(a.join("shared")).unwrap();
        let on_b = std::fs::read(b.join("shared")).unwrap();
        assert!(on_a == ours[0] || on_a == ours[1], "round {round}: A reads a mix of two versions");
        assert!(on_a == on_b, "round {round}: the two mounts disagree");
    }
}

#[test]
fn a_mount_killed_mid_write_leaves_the_old_or_the_new_version() {
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let old = bytes(1, 8 << 20);
    std::fs::write(a.join("f"), &old).unwrap();
    // A writer that puts well past one write buffer, killed (with its mount) before it closes.
    let new = bytes(2, 160 << 20);
    let src = c.file("new");
    std::fs::write(&src, &new).unwrap();
    let mut dd = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", a.join("f").display()))
        .args(["bs=1M", "conv=notrunc"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    kill9_mount(&c, &a);
    let _ = dd.wait();
    let got = c.must_shoal_bytes(&["cat", "/f"]);
    assert!(got == old || got == new, "a killed writer left a torn file ({} bytes)", got.len());
    // Remounting the dead mount point works.
    let a = mount(&c, "a", &[]);
    assert_eq!(std::fs::read(a.join("f")).unwrap(), got);
}

/// Every regular file under `root`: relative path -> [sha256, size], as the stress workers print.
fn walk(root: &Path) -> serde_json::Value {
    let script = r#"
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        b = open(p, 'rb').read()
        out[os.path.relpath(p, root)] = [hashlib.sha256(b).hexdigest(), len(b)]
print(json.dumps(out))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(root).output().unwrap();
    assert!(out.status.success(), "walk: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn four_processes_stress_one_tree_and_a_walk_matches_their_model() {
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    let root = a.join("tree");
    for d in 0..8 {
        std::fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/stress/tree_ops.py");
    let ops = rounds(600).to_string();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            Command::new("python3")
                .arg(&script)
                .arg(&root)
                .arg(w.to_string())
                .arg(&ops)
                .arg("7")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut model = serde_json::Map::new();
    for (w, child) in workers.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "worker {w}: {}\n{}", String::from_utf8_lossy(&out.stderr), c.logs_tail());
        let part: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        model.extend(part.as_object().unwrap().clone());
    }
    assert!(model.len() > 20, "the workers left too few files to check ({})", model.len());
    let model = serde_json::Value::Object(model);
    for (name, mnt) in [("the writers' mount", &a), ("another mount", &b)] {
        let seen = walk(&mnt.join("tree"));
        if seen != model {
            let (m, s) = (model.as_object().unwrap(), seen.as_object().unwrap());
            let missing: Vec<_> = m.keys().filter(|k| !s.contains_key(*k)).take(5).collect();
            let extra: Vec<_> = s.keys().filter(|k| !m.contains_key(*k)).take(5).collect();
            let differ: Vec<_> = m.keys().filter(|k| s.get(*k).is_some_and(|v| v != &m[*k])).take(5).collect();
            panic!("walk on {name} differs from the model: missing {missing:?}, extra {extra:?}, different {differ:?}");
        }
    }
}

#[test]
fn close_to_open_holds_across_leader_kills() {
    // The new leader knows nothing of its predecessor's promises but their horizon in the log:
    // a change waits until the mounts that held them came back (dropping them) or they ended.
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    let mut content = b"first\n".to_vec();
    std::fs::write(a.join("f"), &content).unwrap();
    for round in 0..3 {
        // Prime B, and give the leader time to record a horizon naming B.
        assert_eq!(std::fs::read(b.join("f")).unwrap(), content);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert_eq!(std::fs::read(b.join("f")).unwrap(), content);
        let leader = c.leader();
        c.kill9(&format!("meta-{leader}"));
        change(&a, round, &mut content);
        assert_eq!(std::fs::read(b.join("f")).unwrap(), content, "round {round}: B reads stale bytes after a leader kill");
        c.up();
    }
}

#[test]
fn the_disk_block_cache_survives_a_remount_and_is_verified() {
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let data = bytes(9, (3 << 20) + 12345);
    std::fs::write(a.join("f"), &data).unwrap();
    // A mount killed without a clean unmount leaves the cache behind; so does a clean one.
    let remount = |c: &TestCluster| {
        c.must_shoal(&["umount", a.to_str().unwrap()]);
        mount(c, "a", &[])
    };
    let a = remount(&c);
    assert_eq!(std::fs::read(a.join("f")).unwrap(), data, "first read, from the storage servers");
    // With every storage server stopped, a fresh mount reads the file from its disk cache.
    for s in 1..=4 {
        c.kill9(&format!("store-{s}"));
    }
    let a = remount(&c);
    assert_eq!(std::fs::read(a.join("f")).unwrap(), data, "read from the disk cache");
    // A damaged cached block is noticed and fetched again.
    let cache = c.path().join("cache").join(a.to_string_lossy().trim_matches('/').replace('/', "_"));
    let victim = std::fs::read_dir(&cache).unwrap().flatten().next().unwrap().path();
    let mut raw = std::fs::read(&victim).unwrap();
    raw[1000] ^= 0xff;
    std::fs::write(&victim, raw).unwrap();
    c.up();
    let a = remount(&c);
    assert_eq!(std::fs::read(a.join("f")).unwrap(), data, "a damaged block is fetched again");
}

#[test]
fn a_long_stream_is_not_written_to_the_disk_cache() {
    // With an 8 MiB disk cache, a 6 MiB file read from start to end (more than a quarter of
    // it) stays in memory only; a 1 MiB file read the same way is kept on disk.
    let c = TestCluster::start();
    let args = ["--cache-disk-mib=8"];
    let a = mount_with(&c, "a", &[], &args);
    let (big, small) = (bytes(3, 6 << 20), bytes(4, 1 << 20));
    std::fs::write(a.join("big"), &big).unwrap();
    std::fs::write(a.join("small"), &small).unwrap();
    c.must_shoal(&["umount", a.to_str().unwrap()]);
    let a = mount_with(&c, "a", &[], &args);
    let cache = c.path().join("cache").join(a.to_string_lossy().trim_matches('/').replace('/', "_"));
    let on_disk = || std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum::<u64>();
    assert_eq!(std::fs::read(a.join("big")).unwrap(), big);
    assert_eq!(std::fs::read(a.join("small")).unwrap(), small);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while on_disk() < 1 << 20 {
        assert!(std::time::Instant::now() < deadline, "the small file never reached the disk cache ({} bytes)", on_disk());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(on_disk() < 2 << 20, "the long stream went to the disk cache: {} bytes there", on_disk());
}

#[test]
fn open_snapshot_keeps_reading_the_version_it_opened() {
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount_with(&c, "b", &[], &["--consistency", "open-snapshot"]);
    // Bigger than the whole-file fetch and the read-ahead, so the rest comes from the servers.
    let (v1, v2) = (bytes(1, 40 << 20), bytes(2, 5 << 20));
    std::fs::write(a.join("f"), &v1).unwrap();
    let mut h = std::fs::File::open(b.join("f")).unwrap();
    let mut seen = vec![0u8; 1 << 20];
    h.read_exact(&mut seen).unwrap();
    // Overwrite in place (same inode) on the other mount, and give garbage collection time to
    // delete what no version references any more.
    std::fs::write(a.join("f"), &v2).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    h.read_to_end(&mut seen).unwrap();
    assert!(seen == v1, "an open-snapshot reader saw {} bytes that are not the version it opened", seen.len());
    drop(h);
    assert_eq!(std::fs::read(b.join("f")).unwrap(), v2, "a new open reads the new version");
    // After the last close, the old version's blobs are freed: the cluster converges to one blob.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = c.status_json();
        if st["blobs"].as_u64() == Some(1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "old blobs not freed after the last close: {st}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// How many times a mount gave a delegated directory back (its log).
fn delegations_given_back(c: &TestCluster, mount: &str) -> usize {
    mount_log_count(c, mount, "gave a delegated directory back")
}

/// How many lines of a mount's log say `what`.
fn mount_log_count(c: &TestCluster, mount: &str, what: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(c.path().join("logs")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("mount-") && name.ends_with(&format!("_{mount}.log")) {
            n += std::fs::read_to_string(e.path()).unwrap_or_default().matches(what).count();
        }
    }
    n
}

/// Wait until mount "b" said it kept `n` directory listings.
fn wait_for_listings(c: &TestCluster, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mount_log_count(c, "b", "kept the listing of a directory") < n {
        assert!(std::time::Instant::now() < deadline, "B kept no listing: the test proves nothing\n{}", c.logs_tail());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn lookups_answered_from_a_directory_listing_follow_every_change() {
    // Mount B looks up a few names of a directory A filled: B fetches the directory's listing
    // and answers its next lookups from it, unknown names included. Each change made after
    // that, by A (create, chmod, append, unlink, rename) or by B itself (an append through
    // another name of a file), is seen by B's next lookup of the name.
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    let (da, db) = (a.join("d"), b.join("d"));
    std::fs::create_dir(&da).unwrap();
    std::fs::create_dir(a.join("e")).unwrap();
    let n = 100;
    for i in 0..n {
        std::fs::write(da.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    std::fs::hard_link(da.join("f93"), a.join("e").join("l93")).unwrap();
    // A few lookups go to the service; then the listing is fetched (in the background).
    for i in 0..8 {
        assert_eq!(std::fs::metadata(db.join(format!("f{i}"))).unwrap().len(), format!("file {i}").len() as u64);
    }
    wait_for_listings(&c, 1);
    for i in 8..60 {
        assert_eq!(std::fs::metadata(db.join(format!("f{i}"))).unwrap().len(), format!("file {i}").len() as u64, "f{i} from the listing");
    }
    assert!(!db.join("absent").exists());
    // Changes by A: each calls B back before it returns.
    std::fs::write(da.join("new"), b"new file").unwrap();
    assert_eq!(std::fs::read(db.join("new")).unwrap(), b"new file", "a file A created after the listing");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(da.join("f60"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(db.join("f60")).unwrap().permissions().mode() & 0o777, 0o600, "a chmod by A");
    std::fs::OpenOptions::new().append(true).open(da.join("f70")).unwrap().write_all(b" more").unwrap();
    assert_eq!(std::fs::read(db.join("f70")).unwrap(), b"file 70 more", "an append by A");
    std::fs::remove_file(da.join("f80")).unwrap();
    assert!(!db.join("f80").exists(), "an unlink by A");
    std::fs::rename(da.join("f81"), da.join("f81r")).unwrap();
    assert!(!db.join("f81").exists(), "a rename by A: old name");
    assert_eq!(std::fs::read(db.join("f81r")).unwrap(), b"file 81", "a rename by A: new name");
    // A change by B itself, through another name: B gets no callback for it.
    for i in 0..8 {
        let _ = std::fs::metadata(db.join(format!("absent{i}")));
    }
    wait_for_listings(&c, 2);
    std::fs::OpenOptions::new().append(true).open(b.join("e").join("l93")).unwrap().write_all(b" from b").unwrap();
    assert_eq!(std::fs::metadata(db.join("f93")).unwrap().len(), b"file 93 from b".len() as u64, "B's own append through a link");
    assert_eq!(std::fs::read(db.join("f93")).unwrap(), b"file 93 from b");
    assert_eq!(lease_waits(&c), 0, "every callback was acknowledged");
}

#[test]
fn files_created_under_a_delegation_are_seen_at_once_by_another_mount() {
    // Mount A creates files in a directory it holds the delegation of: they exist only on A
    // until written back. B's listing and lookups recall the directory, so B sees every file A
    // created (with its bytes), never a directory without them; B's own create there works.
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    for round in 0..rounds(10) {
        let d = format!("d{round}");
        std::fs::create_dir(a.join(&d)).unwrap();
        // The first create asks for the delegation in the background.
        std::fs::write(a.join(&d).join("first"), b"1").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let n = 100;
        for i in 0..n {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(a.join(&d).join(format!("f{i}"))).unwrap();
            if i % 10 == 0 {
                (&f).write_all(format!("body {i}").as_bytes()).unwrap();
            }
        }
        let mut names: Vec<String> = std::fs::read_dir(b.join(&d)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let mut want: Vec<String> = (0..n).map(|i| format!("f{i}")).chain(["first".to_string()]).collect();
        want.sort();
        assert_eq!(names, want, "round {round}: B's listing right after A's creates");
        assert_eq!(std::fs::read(b.join(&d).join("f50")).unwrap(), b"body 50");
        assert_eq!(std::fs::metadata(b.join(&d).join("f51")).unwrap().len(), 0);
        std::fs::write(b.join(&d).join("from-b"), b"b").unwrap();
        assert_eq!(std::fs::read(a.join(&d).join("from-b")).unwrap(), b"b", "round {round}: A sees B's file");
        let err = std::fs::OpenOptions::new().write(true).create_new(true).open(a.join(&d).join("from-b")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    }
    assert!(delegations_given_back(&c, "a") > 0, "A never held a delegation: the test proves nothing\n{}", c.logs_tail());
    assert_eq!(lease_waits(&c), 0, "every callback was acknowledged");
}

#[test]
fn a_directory_made_by_a_mount_is_delegated_to_it_and_seen_by_another_at_once() {
    // A makes directories and fills them at once (each new directory comes delegated with the
    // mkdir): B, looking in right after, sees every file with its bytes; a directory B looks
    // into before A filled it is recalled, and A's creates there still all land.
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    // The first directory asks for inode numbers; the next ones come delegated.
    std::fs::create_dir(a.join("warm")).unwrap();
    std::fs::write(a.join("warm").join("x"), b"x").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    for round in 0..rounds(20) {
        let d = format!("d{round}");
        std::fs::create_dir_all(a.join(&d).join("sub")).unwrap();
        if round % 2 == 1 {
            // B looks first: the delegation is recalled before B's listing is answered.
            assert_eq!(std::fs::read_dir(b.join(&d).join("sub")).unwrap().count(), 0);
        }
        for i in 0..20 {
            std::fs::write(a.join(&d).join("sub").join(format!("f{i}")), format!("{round} {i}")).unwrap();
        }
        let mut want: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        want.sort();
        assert_eq!(names_in(&b.join(&d).join("sub")), want, "round {round}: B's listing right after A's creates");
        assert_eq!(std::fs::read(b.join(&d).join("sub").join("f7")).unwrap(), format!("{round} 7").into_bytes());
        std::fs::write(b.join(&d).join("sub").join("from-b"), b"b").unwrap();
        assert_eq!(std::fs::read(a.join(&d).join("sub").join("from-b")).unwrap(), b"b", "round {round}: A sees B's file");
    }
    assert!(delegations_given_back(&c, "a") > 0, "A never held a delegation: the test proves nothing\n{}", c.logs_tail());
    assert_eq!(lease_waits(&c), 0, "every callback was acknowledged");
}

/// The names in directory `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// Kill -9 the process serving a mount, and wait until it is gone.
fn kill9_mount(c: &TestCluster, mnt: &Path) {
    let pid_file = c.path().join("pids").join(format!("mount-{}.pid", mnt.to_string_lossy().trim_matches('/').replace('/', "_")));
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_dead(pid);
}

#[test]
fn a_killed_holder_keeps_what_it_synced_and_frees_its_directory() {
    // Mount A holds a directory's delegation and is killed -9: every file it fsynced is there
    // with its bytes, and B's listing waits at most the delegation's lease, then works.
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    std::fs::create_dir(a.join("d")).unwrap();
    std::fs::write(a.join("d").join("first"), b"1").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Kept open: the kill comes before any close.
    let mut open = Vec::new();
    for i in 0..30 {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(a.join("d").join(format!("f{i}"))).unwrap();
        f.write_all(format!("synced {i}").as_bytes()).unwrap();
        f.sync_all().unwrap();
        open.push(f);
    }
    kill9_mount(&c, &a);
    drop(open);
    let mut names: Vec<String> = std::fs::read_dir(b.join("d")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("f{i}")).chain(["first".to_string()]).collect();
    want.sort();
    assert_eq!(names, want);
    for i in 0..30 {
        assert_eq!(std::fs::read(b.join("d").join(format!("f{i}"))).unwrap(), format!("synced {i}").into_bytes());
    }
    std::fs::write(b.join("d").join("from-b"), b"b").unwrap();
    let waited = std::fs::read_dir(c.path().join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("meta"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default().matches("did not give a delegated directory back").count())
        .sum::<usize>();
    assert!(waited > 0, "A held no delegation when it was killed: the test proves nothing\n{}", c.logs_tail());
    // The killed mount's mount point is left dead (ENOTCONN): not left behind on the machine.
    let out = Command::new(SHOAL).arg("umount").arg(&a).output().unwrap();
    assert!(out.status.success(), "umount of a dead mount: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_small_file_opened_for_reading_stays_readable_after_another_mount_removes_it() {
    // A read-only open of a small file whose bytes the metadata service holds keeps no open
    // record there: the open brings the whole file. Removed by another mount (and the inode
    // freed), it must still read as it was opened; a larger file keeps its record and its blobs.
    use std::os::unix::fs::FileExt;
    let c = TestCluster::start();
    let a = mount(&c, "a", &[]);
    let b = mount(&c, "b", &[]);
    for round in 0..rounds(20) {
        let small: Vec<u8> = (0..10_000 + round * 100).map(|i| (i * 7 + round) as u8).collect();
        let large: Vec<u8> = (0..3_000_000 + round).map(|i| (i * 13 + round) as u8).collect();
        std::fs::write(a.join("small"), &small).unwrap();
        std::fs::write(a.join("large"), &large).unwrap();
        // B sees both (its lookups learn their sizes), opens them and reads a little.
        assert_eq!(std::fs::metadata(b.join("small")).unwrap().len(), small.len() as u64);
        // O_DIRECT: every read reaches B's mount, past the kernel's page cache.
        let open = |name: &str| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(b.join(name)).unwrap()
        };
        let (fs, fl) = (open("small"), open("large"));
        let mut head = [0u8; 100];
        fs.read_exact_at(&mut head, 0).unwrap();
        fl.read_exact_at(&mut head, 0).unwrap();
        // A removes both and puts other bytes under the same names; its removals return once
        // B's kernel caches for them were called back, so B's next reads reach its mount.
        std::fs::remove_file(a.join("small")).unwrap();
        std::fs::remove_file(a.join("large")).unwrap();
        std::fs::write(a.join("small"), b"another file").unwrap();
        std::fs::write(a.join("large"), b"another file").unwrap();
        for (f, want, what) in [(&fs, &small, "small"), (&fl, &large, "large")] {
            let mut got = vec![0u8; want.len()];
            f.read_exact_at(&mut got, 0).unwrap_or_else(|e| panic!("round {round}: reading the removed {what} file: {e}"));
            assert!(got == *want, "round {round}: the removed {what} file does not read as it was opened");
        }
        drop((fs, fl));
        assert_eq!(std::fs::read(b.join("small")).unwrap(), b"another file", "round {round}");
        // Opened small, then grown by A onto storage servers: B reads the new version (its
        // open takes a record then), and that version stays readable once A removes the file.
        std::fs::write(a.join("grows"), &small).unwrap();
        let fg = open("grows");
        fg.read_exact_at(&mut head, 0).unwrap();
        std::fs::write(a.join("grows"), &large).unwrap();
        let mut got = vec![0u8; 200_000];
        fg.read_exact_at(&mut got, 0).unwrap();
        assert!(got[..] == large[..200_000], "round {round}: the grown file does not read as A wrote it");
        std::fs::remove_file(a.join("grows")).unwrap();
        let mut got = vec![0u8; large.len()];
        fg.read_exact_at(&mut got, 0).unwrap_or_else(|e| panic!("round {round}: reading the grown file after its removal: {e}"));
        assert!(got == large, "round {round}: the grown and removed file does not read as its last version");
    }
}
