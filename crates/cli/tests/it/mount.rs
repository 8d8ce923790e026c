//! The FUSE mount through the kernel: ordinary tools on a real mount of a real cluster.

use crate::harness::*;
use shoal_types::meta_msg::*;
use std::process::Command;

fn sh(cwd: &std::path::Path, script: &str) -> String {
    let out = Command::new("bash").arg("-ec").arg(script).current_dir(cwd).output().unwrap();
    assert!(out.status.success(), "{script}\nstdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tools_work_on_the_mount_and_a_killed_mount_remounts() {
    let c = TestCluster::start();
    let mnt = c.file("mnt");
    c.must_shoal(&["mount", mnt.to_str().unwrap()]);
    // Files, directories, rename, symlinks, hard links, append, truncate.
    let out = sh(&mnt, "echo hello > a; cat a; echo more >> a; wc -c < a; mkdir -p d/e; mv a d/e/b; ln -s e/b d/link; cat d/link; \
                        ln d/e/b d/hard; stat -c %h d/e/b; truncate -s 3 d/e/b; cat d/e/b; echo; ls d");
    assert_eq!(out, "hello\n11\nhello\nmore\n2\nhel\ne\nhard\nlink\n");
    // A file bigger than the write buffer, byte-identical through cp and cmp.
    let big = c.file("big");
    std::fs::write(&big, bytes(5, 40 << 20)).unwrap();
    sh(&mnt, &format!("cp {} big && cmp {} big", big.display(), big.display()));
    // The same bytes through the CLI (no mount).
    assert_eq!(c.must_shoal(&["cat", "/d/e/b"]), "hel");
    // git and a compiler.
    sh(&mnt, "mkdir proj && cd proj && git init -q . && printf 'int main(){return 7;}\\n' > m.c && gcc -o m m.c && (./m; test $? = 7) \
              && git add m.c && git -c user.email=t@t -c user.name=t commit -qm one && cd .. && git clone -q proj clone && test -f clone/m.c");
    // rm -r and df.
    sh(&mnt, "rm -rf proj clone d && test ! -e d && df . | tail -1");
    // Kill -9 the mount process: the mount point is dead (ENOTCONN); mounting again cleans it up.
    let pid_file = std::fs::read_dir(c.path().join("pids")).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("mount-")).unwrap();
    let pid: i32 = std::fs::read_to_string(pid_file.path()).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_dead(pid);
    c.must_shoal(&["mount", mnt.to_str().unwrap()]);
    sh(&mnt, "cmp big ../big");
    c.must_shoal(&["umount", mnt.to_str().unwrap()]);
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(mnt.to_str().unwrap()));
}

#[test]
fn extended_attributes_on_the_mount() {
    let c = TestCluster::start();
    let mnt = c.file("mnt");
    c.must_shoal(&["mount", mnt.to_str().unwrap()]);
    let script = r#"
import os, errno
p = 'x'
open(p, 'w').write('data')
os.setxattr(p, 'user.color', b'blue')
out = [os.getxattr(p, 'user.color').decode(), ','.join(os.listxattr(p))]
try:
    os.setxattr(p, 'user.color', b'red', os.XATTR_CREATE)
except OSError as e:
    out.append(errno.errorcode[e.errno])
os.setxattr(p, 'user.color', b'red', os.XATTR_REPLACE)
out.append(os.getxattr(p, 'user.color').decode())
os.removexattr(p, 'user.color')
try:
    os.getxattr(p, 'user.color')
except OSError as e:
    out.append(errno.errorcode[e.errno])
print(' '.join(out))
"#;
    let out = Command::new("python3").arg("-c").arg(script).current_dir(&mnt).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "blue user.color EEXIST red ENODATA", "{}", String::from_utf8_lossy(&out.stderr));
}

/// Small writes at scattered places are buffered together and go out as one blob at fsync:
/// the file reads back exactly as written (later writes over earlier ones), through the CLI
/// too, and its layout names a single blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_writes_go_out_as_one_blob() {
    let c = TestCluster::start();
    let mnt = c.file("mnt");
    c.must_shoal(&["mount", mnt.to_str().unwrap()]);
    let model = c.file("model");
    let script = format!(
        r#"
import os
size = 4 << 20
model = bytearray(size)
fd = os.open('r', os.O_CREAT | os.O_WRONLY, 0o644)
os.ftruncate(fd, size)
for i in range(300):
    off = (i * 7919 * 4096 + i * 13) % (size - 5000)
    data = bytes([(i * 31 + j) % 251 for j in range(4096)])
    os.pwrite(fd, data, off)
    model[off:off + len(data)] = data
os.fsync(fd)
os.close(fd)
open('{}', 'wb').write(model)
"#,
        model.display()
    );
    let out = Command::new("python3").arg("-c").arg(&script).current_dir(&mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = std::fs::read(&model).unwrap();
    assert!(std::fs::read(mnt.join("r")).unwrap() == want, "the mount reads back what was written");
    assert!(c.must_shoal_bytes(&["cat", "/r"]) == want, "another client reads back what was written");
    let client = c.client().await;
    let a = client.resolve("/r").await.unwrap();
    let layout = match client.meta(MetaOp::GetLayout { handle: a.handle, first_chunk: 0, n_chunks: 1 }).await.unwrap() {
        MetaReply::Layout(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(layout.blobs.len(), 1, "300 scattered writes went out as one blob");
    c.must_shoal(&["umount", mnt.to_str().unwrap()]);
}

/// A small file written through the mount goes to the metadata service with its commit: its
/// layout carries the bytes and names no storage server; a file past the limit goes to the
/// servers. Another client reads every one back, also after the whole cluster restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_live_in_the_metadata() {
    let c = TestCluster::start();
    let mnt = c.file("mnt");
    c.must_shoal(&["mount", mnt.to_str().unwrap()]);
    let limit = INLINE_BYTES_MAX as usize;
    let files = [("one", 1), ("ten-k", 10 << 10), ("at-limit", limit), ("past-limit", limit + 1)];
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(mnt.join(name), bytes(i as u64, *len)).unwrap();
    }
    // Rewritten in place within the first bytes: the file stays inline, with the new bytes.
    sh(&mnt, "printf XY | dd of=ten-k bs=1 seek=100 conv=notrunc status=none");
    let mut ten_k = bytes(1, 10 << 10);
    ten_k[100..102].copy_from_slice(b"XY");
    // `shoal put` of a small file does the same.
    let local = c.file("cli-small");
    std::fs::write(&local, bytes(9, 3000)).unwrap();
    c.must_shoal(&["put", local.to_str().unwrap(), "/cli-small"]);
    let client = c.client().await;
    for (name, len) in files.iter().copied().chain([("cli-small", 3000)]) {
        let a = client.resolve(&format!("/{name}")).await.unwrap();
        let layout = match client.meta(MetaOp::GetLayout { handle: a.handle, first_chunk: 0, n_chunks: 1 }).await.unwrap() {
            MetaReply::Layout(l) => l,
            other => panic!("{other:?}"),
        };
        let inline = layout.blobs.iter().all(|b| b.inline.is_some() && b.stores.is_empty());
        assert_eq!(inline, len <= limit, "{name}: {layout:?}");
    }
    c.must_shoal(&["umount", mnt.to_str().unwrap()]);
    for round in ["before", "after"] {
        for (i, (name, len)) in files.iter().enumerate() {
            let want = if *name == "ten-k" { ten_k.clone() } else { bytes(i as u64, *len) };
            assert!(c.must_shoal_bytes(&["cat", &format!("/{name}")]) == want, "{name} reads back {round} a restart");
        }
        assert!(c.must_shoal_bytes(&["cat", "/cli-small"]) == bytes(9, 3000), "cli-small reads back {round} a restart");
        c.must_shoal(&["down"]);
        c.up();
    }
}

/// The kernel reads `security.capability` before every write; a mount remembers that a file
/// has none while it holds a promise on it. A capability set from another mount calls that
/// back: the next write through the first mount finds it and clears it, as on a local disk.
#[test]
fn a_capability_set_elsewhere_is_cleared_by_the_next_write() {
    let c = TestCluster::start();
    let (a, b) = (c.file("mnt-a"), c.file("mnt-b"));
    c.must_shoal(&["mount", a.to_str().unwrap()]);
    c.must_shoal(&["mount", b.to_str().unwrap()]);
    let py = |dir: &std::path::Path, code: &str| {
        let out = Command::new("python3").arg("-c").arg(code).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "{code}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Writes through mount A: the kernel asks for the capability each time, A learns there is none.
    py(&a, "f = open('f', 'wb'); f.write(b'one'); f.flush(); f.write(b'two'); f.close()");
    // Mount B gives the file a capability (version 2: CAP_NET_RAW permitted).
    let cap = "bytes([0, 0, 0, 2]) + (1 << 13).to_bytes(4, 'little') + bytes(12)";
    let set = format!("import os; os.setxattr('f', 'security.capability', {cap}); print(len(os.getxattr('f', 'security.capability')))");
    assert_eq!(py(&b, &set), "20");
    // A write through A clears it.
    py(&a, "f = open('f', 'ab'); f.write(b'three'); f.close()");
    let check = "import os, errno\ntry:\n    os.getxattr('f', 'security.capability'); print('kept')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])";
    assert_eq!(py(&b, check), "ENODATA", "the capability survived a write");
    assert_eq!(std::fs::read(b.join("f")).unwrap(), b"onetwothree");
}
