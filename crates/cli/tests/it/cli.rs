//! The CLI end to end: file commands, errors and exit codes, restart of the whole cluster.

use crate::harness::*;

#[test]
fn put_get_round_trip_and_file_commands() {
    let c = TestCluster::start();
    // 1 GiB and a few bytes (crosses chunk and blob boundaries); SHOAL_SMALL=1 makes it 96 MiB.
    let len: usize = if std::env::var("SHOAL_SMALL").is_ok() { (96 << 20) + 12345 } else { (1 << 30) + 12345 };
    let data = bytes(1, len);
    let local = c.file("big.bin");
    std::fs::write(&local, &data).unwrap();
    c.must_shoal(&["mkdir", "-p", "/isos/x"]);
    c.must_shoal(&["put", local.to_str().unwrap(), "/isos/big.iso"]);
    let back = c.file("back.bin");
    c.must_shoal(&["get", "/isos/big.iso", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "get returns the bytes put");

    // Three copies of every blob on distinct servers.
    let status = c.status_json();
    let copies: u64 = status["stores"].as_array().unwrap().iter().map(|s| s["blobs"].as_u64().unwrap()).sum();
    assert_eq!(copies, 3 * status["blobs"].as_u64().unwrap(), "{status}");

    let ls = c.must_shoal(&["ls", "-l", "/isos"]);
    assert!(ls.contains("big.iso") && ls.contains(&len.to_string()), "{ls}");
    c.must_shoal(&["mv", "/isos", "/moved"]);
    assert!(c.must_shoal(&["ls", "/moved"]).contains("big.iso"));
    c.must_shoal(&["chmod", "600", "/moved/big.iso"]);
    c.must_shoal(&["chown", "1000:1000", "/moved/big.iso"]);
    let stat = c.must_shoal(&["stat", "/moved/big.iso"]);
    assert!(stat.contains("Access: 0600") && stat.contains("Uid: 1000"), "{stat}");

    // cp -r up and down.
    let src = c.file("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"hello").unwrap();
    std::fs::write(src.join("sub/b.txt"), b"world").unwrap();
    c.must_shoal(&["cp", "-r", src.to_str().unwrap(), "/src"]);
    assert_eq!(c.must_shoal(&["cat", "/src/sub/b.txt"]), "world");
    let down = c.file("down");
    c.must_shoal(&["cp", "-r", "shoal:/src", down.to_str().unwrap()]);
    assert_eq!(std::fs::read(down.join("a.txt")).unwrap(), b"hello");

    // Deleting frees space: every blob is garbage collected from every server.
    c.must_shoal(&["rm", "-r", "/moved"]);
    c.must_shoal(&["rm", "-r", "/src"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = c.status_json();
        let held: u64 = s["stores"].as_array().unwrap().iter().map(|s| s["blobs"].as_u64().unwrap()).sum();
        if s["blobs"] == 0 && s["blobs_awaiting_gc"] == 0 && held == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "space not freed: {s}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn errors_have_messages_and_exit_codes() {
    let c = TestCluster::start();
    let out = c.shoal(&["stat", "/no/such/file"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such file or directory") && err.contains("/no/such/file"), "{err}");
    c.must_shoal(&["mkdir", "/d"]);
    let out = c.shoal(&["mkdir", "/d"]);
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    let out = c.shoal(&["rm", "/d"]);
    assert!(!out.status.success());
    // A directory without a cluster.
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(SHOAL).arg("--dir").arg(empty.path()).arg("ls").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cluster found"));
}

#[test]
fn whole_cluster_restart_keeps_everything() {
    let c = TestCluster::start();
    c.must_shoal(&["mkdir", "-p", "/a/b/c"]);
    let f = c.file("f");
    std::fs::write(&f, bytes(7, 3_000_000)).unwrap();
    c.must_shoal(&["put", f.to_str().unwrap(), "/a/b/c/f"]);
    c.must_shoal(&["ln", "-s", "/a/b", "/link"]);
    c.must_shoal(&["down"]);
    c.must_shoal(&["up", "--detach"]);
    let back = c.file("back");
    c.must_shoal(&["get", "/a/b/c/f", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&f).unwrap());
    let ls = c.must_shoal(&["ls", "-l", "/"]);
    assert!(ls.contains("link") && ls.contains("a"), "{ls}");
}

#[test]
fn get_to_a_device_writes_through_it() {
    let c = TestCluster::start();
    let f = c.file("f");
    std::fs::write(&f, b"to a pipe").unwrap();
    c.must_shoal(&["put", f.to_str().unwrap(), "/f"]);
    // A device is written in place, never replaced by a renamed file.
    c.must_shoal(&["get", "/f", "/dev/null"]);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    let out = std::process::Command::new(SHOAL).arg("--dir").arg(c.path()).args(["get", "/f", "/dev/stdout"]).output().unwrap();
    assert_eq!(out.stdout, b"to a pipe");
}

#[test]
fn foreground_up_stops_everything_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = std::process::Command::new(SHOAL)
        .arg("--dir")
        .arg(dir.path())
        .arg("up")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let c = TestCluster { dir };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !c.shoal(&["status"]).status.success() {
        assert!(std::time::Instant::now() < deadline, "foreground cluster never became healthy");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let pids: Vec<i32> = std::fs::read_dir(c.path().join("pids"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 7);
    unsafe { libc::kill(up.id() as i32, libc::SIGINT) };
    let status = up.wait().unwrap();
    assert!(status.success(), "shoal up exits cleanly on Ctrl-C: {status}");
    for pid in pids {
        assert!(unsafe { libc::kill(pid, 0) } != 0, "process {pid} still runs after Ctrl-C");
    }
}
