//! The FUSE mount through the kernel: ordinary tools on a real mount of a real cluster.

use crate::harness::*;
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
