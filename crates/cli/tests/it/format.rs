//! Data written by an earlier format version is read by this build (checked-in fixture).

use crate::harness::*;
use std::process::Command;

#[test]
fn cluster_written_by_format_v1_starts_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cluster-format-v1.tar.gz");
    let st = Command::new("tar").arg("xzf").arg(fixture).arg("-C").arg(dir.path()).status().unwrap();
    assert!(st.success());
    for sub in ["client.toml", "meta-1/meta.toml", "meta-2/meta.toml", "meta-3/meta.toml", "store-1/store.toml", "store-2/store.toml", "store-3/store.toml", "store-4/store.toml"] {
        let p = dir.path().join(sub);
        let text = std::fs::read_to_string(&p).unwrap().replace("@DIR@", dir.path().to_str().unwrap());
        std::fs::write(&p, text).unwrap();
    }
    keep_fixture_ports_free();
    let c = TestCluster { dir };
    c.must_shoal(&["up", "--detach"]);
    let data = c.file("data.back");
    c.must_shoal(&["get", "/docs/deep/data.bin", data.to_str().unwrap()]);
    assert!(std::fs::read(&data).unwrap() == bytes(42, 3_000_000)[..300_000], "v1 blob data reads back");
    assert_eq!(c.must_shoal(&["cat", "/docs/small.txt"]), "hello from format v1");
    assert!(c.must_shoal(&["stat", "/docs/small.txt"]).contains("Access: 0640"));
    assert!(c.must_shoal(&["ls", "-l", "/"]).contains("link"));
    // And it takes new writes.
    c.must_shoal(&["mkdir", "/new"]);
}

/// The loopback ports the fixture's nodes were made with (its Raft membership names the
/// metadata nodes' addresses, so they cannot simply be rewritten).
const FIXTURE_PORTS: std::ops::RangeInclusive<u16> = 47311..=47317;

/// The fixture's ports lie in the kernel's range for outgoing connections, so another test's
/// connection may hold one: where allowed (root), take them out of that range for later
/// connections, then wait until each is free to listen on.
fn keep_fixture_ports_free() {
    let reserved = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    if let Ok(now) = std::fs::read_to_string(reserved) {
        let range = format!("{}-{}", FIXTURE_PORTS.start(), FIXTURE_PORTS.end());
        if !now.contains(&range) {
            let merged = if now.trim().is_empty() { range } else { format!("{},{range}", now.trim()) };
            let _ = std::fs::write(reserved, merged);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for port in FIXTURE_PORTS {
        while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "port {port} of the fixture stayed in use for a minute");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}
